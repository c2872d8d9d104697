"""A plain MLP (or CNN) baseline, trained on the same train split as the curriculum, for the same results.json."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class BaselineSpec:
    """Attributes:
        kind: ``mlp`` (any input, flattened) or ``cnn`` (images).
        hidden_dim: MLP width / CNN channels of the last conv.
        epochs: passes over the train split.
        lr: Adam learning rate.
        batch_size: minibatch size.
        seed: seed of its initialisation and shuffling (independent of the global RNG).
    """

    kind: str = "mlp"
    hidden_dim: int = 64
    epochs: int = 100
    lr: float = 1e-2
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("mlp", "cnn"):
            raise ValueError(f"BaselineSpec.kind={self.kind!r}; expected 'mlp' or 'cnn'")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.hidden_dim < 1:
            raise ValueError(f"BaselineSpec: epochs, batch_size, hidden_dim >= 1 and lr > 0 required, got {self}")


def build_baseline(spec: BaselineSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if spec.kind == "cnn":
        if len(input_shape) != 3:
            raise ValueError(f"a cnn baseline needs image inputs (C, H, W), got shape {input_shape}")
        c, h = input_shape[0], spec.hidden_dim
        return nn.Sequential(nn.Conv2d(c, h // 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(h // 2, h, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                             nn.Flatten(), nn.Linear(4 * h, num_classes))
    in_dim = int(torch.tensor(input_shape).prod())
    h = spec.hidden_dim
    return nn.Sequential(nn.Flatten(), nn.Linear(in_dim, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                         nn.Linear(h, num_classes))


def train_baseline(spec: BaselineSpec, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                   num_classes: int) -> torch.Tensor:
    """Train the baseline and return its test predictions (int64). Works inside ``inference_mode`` test loops."""
    with torch.inference_mode(False), torch.enable_grad():
        gen = torch.Generator().manual_seed(spec.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = build_baseline(spec, tuple(x_train.shape[1:]), num_classes)
        x_train, y_train = x_train.clone().float(), y_train.clone().long()
        opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=spec.epochs * ((len(x_train) + spec.batch_size - 1) // spec.batch_size))
        model.train()
        for _ in range(spec.epochs):
            perm = torch.randperm(len(x_train), generator=gen)
            for i in range(0, len(perm), spec.batch_size):
                idx = perm[i:i + spec.batch_size]
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        with torch.no_grad():
            return model(x_test.clone().float()).argmax(dim=1)
