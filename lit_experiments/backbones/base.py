"""FrozenBackbone: one interface for frozen feature extractors (F01).

A frozen backbone never trains: every parameter has ``requires_grad=False``, the module stays in eval
mode whatever ``.train()`` is asked, and ``features`` runs under ``torch.no_grad()`` and returns a
detached tensor, so its output can be used as a reconstruction / distillation target safely.

``features(x)``
    ``x``: float images in ``[0, 1]``, (B,3,H,W) or a video batch (B,T,3,H,W) (uint8 is accepted and
    divided by 255). The model's own normalisation (``mean``/``std``) is applied inside.
    Returns patch tokens (B, N, C) or (B, T, N, C) with ``N = gh * gw`` in row-major order
    (``grid_size``); CLS / register tokens are dropped. With several ``layers`` the per-layer tokens
    are concatenated along channels (``layer_reduce="concat"``, ``out_dim = C * len(layers)``) or
    averaged (``layer_reduce="mean"``, ``out_dim = C``).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lit_experiments.core.errors import LitExpError


class BackboneWeightsError(LitExpError, RuntimeError):
    """Pretrained weights for a backbone could not be found or loaded (one block naming the path, no traceback)."""

    exit_code = 2


def load_error_summary(err: BaseException, shown: int = 3) -> str:
    """A ``load_state_dict`` error in a few words: how many keys are missing / unexpected / of another shape, with
    the first names (the library's own message lists every key)."""
    import re

    text = str(err)
    parts = []
    for label, pattern in (("missing", r'Missing key\(s\) in state_dict: (.*?)\.\s*(?:\n|$)'),
                           ("unexpected", r'Unexpected key\(s\) in state_dict: (.*?)\.\s*(?:\n|$)')):
        match = re.search(pattern, text)
        if match:
            keys = re.findall(r'"([^"]+)"', match.group(1))
            parts.append(f"{len(keys)} {label} key(s) ({', '.join(keys[:shown])}{', ...' if len(keys) > shown else ''})")
    shapes = re.findall(r"size mismatch for ([^:]+): copying a param with shape (\S+ \S+|\S+) from checkpoint, the "
                        r"shape in current model is (\S+ \S+|\S+)\.", text)
    if shapes:
        first = "; ".join(f"{k}: file {a}, model {b}" for k, a, b in shapes[:shown])
        parts.append(f"{len(shapes)} shape mismatch(es) ({first}{'; ...' if len(shapes) > shown else ''})")
    if parts:
        return ", ".join(parts)
    line = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(err).__name__}: {line[:300]}"


def _as_tokens(t: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> (B,H*W,C); (B,N,C) unchanged."""
    if t.ndim == 4:
        return t.flatten(2).transpose(1, 2)
    return t


class FrozenBackbone(nn.Module):
    """Base class: wraps ``model`` and implements freezing, normalisation, layer reduction and cache keys.

    Subclasses implement :meth:`_layer_tokens` (normalised images -> one (B, N_l, C_l) tensor or
    (B, C_l, h_l, w_l) map per chosen layer) and :meth:`grid_size`.
    """

    #: StageFreeze never makes this module's parameters trainable, whatever the stage's globs say.
    always_frozen = True

    def __init__(
        self,
        name: str,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        layers: Sequence[int],
        layer_dims: Sequence[int],
        layer_reduce: str = "concat",
        img_size: int | None = None,
        weights: str = "random",
        config: dict | None = None,
    ) -> None:
        super().__init__()
        if layer_reduce not in ("concat", "mean"):
            raise ValueError(f"{name}: layer_reduce={layer_reduce!r}; expected 'concat' or 'mean'")
        if layer_reduce == "mean" and len(set(layer_dims)) > 1:
            raise ValueError(f"{name}: layer_reduce='mean' needs equal widths, got {list(layer_dims)}")
        self.name = name
        self.model = model
        self.layers = list(layers)
        self.layer_dims = list(layer_dims)
        self.layer_reduce = layer_reduce
        self.img_size = img_size
        self.weights = weights
        self.config = dict(config or {})
        self.register_buffer("_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._fingerprint: str | None = None
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    # ------------------------------------------------------------------ frozen behaviour
    def train(self, mode: bool = True) -> FrozenBackbone:
        """Frozen backbones stay in eval mode (dropout / batch-norm statistics never change)."""
        return super().train(False)

    def requires_grad_(self, requires_grad: bool = True) -> FrozenBackbone:
        """Refuse to unfreeze: a frozen backbone is frozen by construction (F01)."""
        if requires_grad:
            raise RuntimeError(f"{self.name}: FrozenBackbone parameters cannot be made trainable")
        return self

    def _refreeze(self) -> None:
        """Undo outside unfreezing (e.g. a trainable glob '*' or LightningModule.unfreeze) and say so (F01)."""
        thawed = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if thawed:
            warnings.warn(
                f"{self.name}: {len(thawed)} FrozenBackbone parameters (e.g. {thawed[0]}) were set trainable "
                "from outside; they are frozen again (a frozen backbone is never trained; exclude it from "
                "trainable globs)", stacklevel=3,
            )
            for p in self.model.parameters():
                p.requires_grad_(False)
        if self.model.training:
            super().train(False)

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self._mean.flatten())

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self._std.flatten())

    @property
    def out_dim(self) -> int:
        return sum(self.layer_dims) if self.layer_reduce == "concat" else self.layer_dims[0]

    def grid_size(self, h: int, w: int) -> tuple[int, int]:
        """Patch grid (gh, gw) of the tokens returned for an (h, w) input."""
        raise NotImplementedError

    def _layer_tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------ features
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0,1] images -> the model's normalised input (checks the range to catch double normalisation)."""
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        if not torch.is_floating_point(x):
            raise TypeError(f"{self.name}.features expects float images in [0,1], got dtype {x.dtype}")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise ValueError(
                f"{self.name}.features expects images in [0,1] (normalisation is applied inside), "
                f"got values in [{lo:.3f}, {hi:.3f}]; were they normalised already?"
            )
        x = x.to(self._mean.device, self._param_dtype())
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    def _param_dtype(self) -> torch.dtype:
        p = next(self.model.parameters(), None)
        return p.dtype if p is not None else torch.float32

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, C) of images (B,3,H,W), or (B, T, N, C) of videos (B,T,3,H,W)."""
        if x.ndim == 5:
            b, t = x.shape[:2]
            return self.features(x.reshape(b * t, *x.shape[2:])).reshape(b, t, -1, self.out_dim)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}.features expects (B,3,H,W) or (B,T,3,H,W), got {tuple(x.shape)}")
        self._refreeze()
        outs = self._layer_tokens(self.normalize(x))
        gh, gw = self.grid_size(x.shape[-2], x.shape[-1])
        toks = []
        for o in outs:
            if o.ndim == 4 and o.shape[-2:] != (gh, gw):  # CNN stages of different strides
                o = F.adaptive_avg_pool2d(o, (gh, gw))
            toks.append(_as_tokens(o))
        out = torch.cat(toks, dim=-1) if self.layer_reduce == "concat" else torch.stack(toks).mean(0)
        return out.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`features`."""
        return self.features(x)

    # ------------------------------------------------------------------ identity
    def weights_fingerprint(self) -> str:
        """Hash of every parameter and buffer (so random-init backbones get distinct cache keys)."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=12)
            for key, t in sorted(self.model.state_dict().items()):
                h.update(key.encode())
                h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def cache_key(self) -> str:
        """String identifying backbone, weights, layers, reduction, resolution and config overrides."""
        cfg = json.dumps(self.config, sort_keys=True, default=str)
        return (
            f"{self.name}|weights={self.weights}#{self.weights_fingerprint()}|layers={self.layers}"
            f"|reduce={self.layer_reduce}|img_size={self.img_size}|cfg={cfg}"
        )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, layers={self.layers}, out_dim={self.out_dim}, weights={self.weights!r}"


def resolve_layers(layers: Sequence[int] | None, depth: int, name: str) -> list[int]:
    """Absolute block indices from ``layers`` (negative counts from the end; default: last block)."""
    chosen = [-1] if layers is None else list(layers)
    if not chosen:
        raise ValueError(f"{name}: layers must not be empty")
    out = []
    for idx in chosen:
        a = idx + depth if idx < 0 else idx
        if not 0 <= a < depth:
            raise ValueError(f"{name}: layer {idx} out of range for a model with {depth} blocks")
        out.append(int(a))
    return out
