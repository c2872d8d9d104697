"""Parts of the retrieval study, each a constructor argument of :class:`~.module.RetrievalModule`.

* :class:`TimmBackbone`: any timm image model as a pooled-feature encoder (``resnet18`` by default), trainable in
  the SimSiam stage and frozen after it; ``fresh()`` rebuilds it at random initialisation (the kNN baseline).
* :class:`Projector`: SimSiam's projection MLP (``layers`` linear layers, BN + ReLU between them, the last BN
  without affine parameters); its input width is the backbone's, filled in by the module.
* :class:`Predictor`: SimSiam's bottleneck MLP (``out -> hidden -> out``).
* :class:`FrozenCopy`: a frozen copy of a part taken at one moment (SimSiam's projector when FastAP starts), so
  SimSiam's own embedding is still measurable after FastAP has fine-tuned the projector.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.ops import MLP

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.seeding import isolated_rng, run_seed


class TimmBackbone(nn.Module):
    """A timm model without its classifier: ``forward(x in [0, 1], (B,3,H,W)) -> (B, num_features)``.

    Args:
        name: a timm model name (``resnet18``, ``resnet10t``, ``mobilenetv3_small_100``...).
        pretrained: load timm's pretrained weights (from the local hub cache; nothing is downloaded in tests).
        checkpoint: a local file with a state dict of this model (a SimSiam run's backbone, or any other).
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``channels: [16, 32, 64, 128]`` for a CPU demo).
        mean / std: input normalisation applied inside, so every caller passes [0, 1] images.
        init_seed: seed of the random initialisation (``fresh()`` reproduces the same network); default: derived
            from the run's ``seed_everything`` (``core.seeding.run_seed(None, "backbone_init")``, F50).
    """

    def __init__(self, name: str = "resnet18", pretrained: bool = False, checkpoint: str | None = None,
                 model_kwargs: dict[str, Any] | None = None, mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
                 std: tuple[float, float, float] = (0.229, 0.224, 0.225), init_seed: int | None = None) -> None:
        super().__init__()
        import timm

        self.name, self.pretrained, self.checkpoint = name, pretrained, checkpoint
        self.model_kwargs, self.init_seed = dict(model_kwargs or {}), run_seed(init_seed, "backbone_init")
        if not timm.is_model(name):
            raise ConfigError(f"model.init_args.backbone.init_args.name={name!r} is not a timm model "
                              "(see timm.list_models())")
        with isolated_rng():  # the same network for the same init_seed, whatever ran before
            torch.manual_seed(self.init_seed)
            self.model = timm.create_model(name, pretrained=pretrained, num_classes=0, **self.model_kwargs)
        if checkpoint:
            self._load_checkpoint(Path(checkpoint))
        self.num_features = int(self.model.num_features)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def _load_checkpoint(self, path: Path) -> None:
        """Load a state dict file of this model: a run's backbone (``model.`` prefixes, a ``state_dict`` wrapper) or
        timm's own weight file (``model.safetensors`` / ``pytorch_model.bin``; its classifier is dropped, as the
        backbone is built without one). A missing file or another architecture is a one-block ConfigError."""
        expected = (f"expected a state dict of timm model {self.name!r} (timm.create_model({self.name!r}).state_dict() "
                    "saved as .safetensors / .pth / .bin)")
        if not path.is_file():
            raise ConfigError(f"backbone checkpoint {str(path)!r}: weight file not found; {expected}")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
                state = state.get("state_dict", state)
        except Exception as err:  # noqa: BLE001 - re-raised as a one-block config error
            raise ConfigError(f"backbone checkpoint {str(path)!r} cannot be read: {type(err).__name__}: "
                              f"{str(err).splitlines()[0][:160] if str(err) else ''}; {expected}") from err
        state = {k.removeprefix("model."): v for k, v in state.items()}
        own = self.model.state_dict()
        classifier = (getattr(self.model, "pretrained_cfg", None) or {}).get("classifier")
        if classifier:  # timm's weight files keep the classifier the backbone is built without (num_classes=0)
            state = {k: v for k, v in state.items() if k in own or not k.startswith(f"{classifier}.")}
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
        if missing or unexpected or shapes:
            raise ConfigError(f"backbone checkpoint {str(path)!r} is not this architecture: {len(missing)} keys "
                              f"missing {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(shapes)} "
                              f"of another shape {shapes[:3]}; {expected}")
        self.model.load_state_dict(state)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)

    def fresh(self) -> TimmBackbone:
        """The same architecture at its random initialisation (no pretrained weights, no checkpoint)."""
        return TimmBackbone(self.name, False, None, self.model_kwargs, tuple(self.mean.flatten().tolist()),
                            tuple(self.std.flatten().tolist()), self.init_seed).to(self.mean.device)

    @torch.no_grad()
    def calibrate_norm_stats(self, batches: Any) -> int:
        """Re-measure every BatchNorm's running statistics on ``batches`` of [0, 1] images (cumulative average,
        weights untouched), so a random-init baseline is not judged with the default statistics. Returns the
        number of images seen."""
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        was, seen = self.training, 0
        self.train()
        for images in batches:
            self(images.to(self.mean.device).float())
            seen += len(images)
        self.train(was)
        return seen

    def weights_digest(self) -> str:
        """SHA-1 of the current weights: the frozen-feature cache key of this backbone's features."""
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, buf)
        return hashlib.sha1(buf.getvalue()).hexdigest()[:16]


class FrozenFeatures:
    """The trained backbone seen by the frozen-feature cache: ``features(x) -> (B, 1, C)``, ``cache_key()``
    = architecture + a digest of its current weights (a retrained backbone selects a new cache)."""

    def __init__(self, backbone: TimmBackbone, device: torch.device | str = "cpu") -> None:
        import copy

        self.net = copy.deepcopy(backbone).to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.name = f"retrieval-{backbone.name}"
        self._key = f"{backbone.name}:{backbone.model_kwargs}:{backbone.weights_digest()}"

    def cache_key(self) -> str:
        return self._key

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        out = self.net(images.to(self.device).float())
        return out.unsqueeze(1).cpu()


class Projector(nn.Module):
    """SimSiam projector: ``layers`` linear layers (no bias), BN + ReLU after all but the last, then a BN without
    affine parameters. ``hidden`` defaults to the input width (the backbone's)."""

    def __init__(self, out_dim: int = 2048, hidden: int | None = None, layers: int = 3) -> None:
        super().__init__()
        if layers < 1 or out_dim < 1:
            raise ConfigError(f"Projector: layers={layers}, out_dim={out_dim}; expected both >= 1")
        self.out_dim, self.hidden, self.layers = int(out_dim), hidden, int(layers)
        self.net: nn.Module | None = None
        self.in_dim: int | None = None

    def build(self, in_dim: int) -> None:
        """Create the layers for an input of width ``in_dim`` (called once by the module)."""
        if self.net is not None:
            return
        hidden = self.hidden or in_dim
        self.in_dim = in_dim
        widths = [hidden] * (self.layers - 1) + [self.out_dim]
        self.net = nn.Sequential(MLP(in_dim, widths, norm_layer=nn.BatchNorm1d, bias=False, inplace=None),
                                 nn.BatchNorm1d(self.out_dim, affine=False))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            raise RuntimeError("Projector.build(in_dim) was not called")
        return self.net(features)


class Predictor(nn.Module):
    """SimSiam predictor: ``dim -> hidden (BN, ReLU) -> dim``; ``dim`` is the projector's output width."""

    def __init__(self, hidden: int = 512) -> None:
        super().__init__()
        if hidden < 1:
            raise ConfigError(f"Predictor: hidden={hidden}; expected >= 1")
        self.hidden = int(hidden)
        self.net: nn.Module | None = None

    def build(self, dim: int) -> None:
        if self.net is None:
            self.net = MLP(dim, [self.hidden, dim], norm_layer=nn.BatchNorm1d, inplace=None)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            raise RuntimeError("Predictor.build(dim) was not called")
        return self.net(z)


class FrozenCopy(nn.Module):
    """A frozen copy of ``part`` (same architecture), filled by :meth:`take` once; ``taken`` says whether it was.

    ``always_frozen``: no stage glob trains it (core.freezing), and it is saved in every checkpoint."""

    always_frozen = True

    def __init__(self, part: nn.Module) -> None:
        super().__init__()
        import copy

        self.part = copy.deepcopy(part).requires_grad_(False)
        self.register_buffer("taken", torch.zeros((), dtype=torch.bool))

    def take(self, part: nn.Module) -> None:
        self.part.load_state_dict(part.state_dict())
        self.taken.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.part(x)
