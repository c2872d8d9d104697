"""Plain baselines (an MLP, a small CNN) trained on the same train split as the curriculum.

A baseline is a part of :class:`SatipatthanaModule` (``baseline:`` in the YAML) and trains in its own
curriculum stage (``name: baseline, trainable: [baseline]``) through the same Trainer, loader, optimizer
spec and health guards as every other stage; the test scores it with a torchmetrics ``Metric``, so
``test/baseline_acc`` is reduced across ranks like every other test number (F44). Nothing trains inside
a test hook. Its layers are built on the first forward (the input size comes from the data) under their
own seed, so adding a baseline never shifts the initialisation of the other parts. That seed is derived from the
run's ``seed_everything`` (``core.seeding.run_seed``, F50) unless ``seed`` pins it, so a sweep over seeds varies
the baseline as it varies the model.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import MLP

from lit_experiments.core.seeding import run_seed


class _SeededLazyPart(nn.Module):
    """Builds ``self.net`` on the first forward from the input's shape, under its own seed."""

    def __init__(self, num_classes: int | None, seed: int | None) -> None:
        super().__init__()
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"{type(self).__name__}: num_classes={num_classes} must be >= 2")
        self.num_classes = num_classes
        self.seed = seed
        self.net: nn.Module | None = None
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))  # 0: never trained

    def make(self, input_shape: tuple[int, ...]) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            if self.num_classes is None:
                raise ValueError(f"{type(self).__name__}: num_classes unknown (the module sets it from its own)")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(run_seed(self.seed, "satipatthana/baseline"))
                self.net = self.make(tuple(x.shape[1:])).to(x.device)
        return self.net(x)


class MLPBaseline(_SeededLazyPart):
    """Flattened input -> MLP (``num_layers`` hidden layers of ``hidden_dim``, ReLU) -> class logits.

    Args:
        hidden_dim: width of the hidden layers.
        num_layers: number of hidden layers.
        num_classes: classes (None: taken from ``SatipatthanaModule.num_classes``).
        seed: seed of its initialisation (independent of the global RNG); None: from the run's seed (F50).
    """

    def __init__(self, hidden_dim: int = 64, num_layers: int = 2, num_classes: int | None = None,
                 seed: int | None = None) -> None:
        super().__init__(num_classes, seed)
        if hidden_dim < 1 or num_layers < 1:
            raise ValueError(f"MLPBaseline: hidden_dim={hidden_dim}, num_layers={num_layers} must be >= 1")
        self.hidden_dim, self.num_layers = hidden_dim, num_layers

    def make(self, input_shape: tuple[int, ...]) -> nn.Module:
        in_dim = int(torch.tensor(input_shape).prod())
        return nn.Sequential(nn.Flatten(), MLP(in_dim, [self.hidden_dim] * self.num_layers + [self.num_classes]))


class CNNBaseline(_SeededLazyPart):
    """Image (C, H, W) -> two 3x3 conv blocks -> 2x2 average pool -> linear class logits.

    Args:
        hidden_dim: channels of the last convolution (the first has half).
        num_classes: classes (None: taken from ``SatipatthanaModule.num_classes``).
        seed: seed of its initialisation (independent of the global RNG); None: from the run's seed (F50).
    """

    def __init__(self, hidden_dim: int = 64, num_classes: int | None = None, seed: int | None = None) -> None:
        super().__init__(num_classes, seed)
        if hidden_dim < 2:
            raise ValueError(f"CNNBaseline: hidden_dim={hidden_dim} must be >= 2")
        self.hidden_dim = hidden_dim

    def make(self, input_shape: tuple[int, ...]) -> nn.Module:
        if len(input_shape) != 3:
            raise ValueError(f"CNNBaseline needs image inputs (C, H, W), got per-sample shape {input_shape}")
        c, h = input_shape[0], self.hidden_dim
        return nn.Sequential(nn.Conv2d(c, h // 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(h // 2, h, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                             nn.Flatten(), nn.Linear(4 * h, self.num_classes))
