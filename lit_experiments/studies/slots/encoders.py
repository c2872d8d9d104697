"""Encoder parts of the slot model, and the fixed encoder the study registers as a frozen backbone.

An encoder part turns a batch into :class:`Encoded` (what slot attention groups, and the reconstruction
target); its data-shaped layers are built from the first batch by :meth:`SlotEncoder.build`.

* ``FeatureInput`` (feature path, DINOSAUR): the batch carries frozen backbone features (B,T,N,C),
  cached or computed under ``no_grad``. The reconstruction target is that frozen feature, detached at the
  source (F01). An optional trainable projection (the seed's CLIP ``Conv2d(768, 384, 1)`` as a per-position
  Linear) acts only on the slot-attention input.
* ``PixelEncoder`` (pixel path, Slot Attention): a small trainable CNN encodes the frames; the target is
  the RGB frame.
* ``ColourEdgeEncoder``: a *fixed* (never trained), hand-designed frozen feature extractor for CPU
  demos: per patch the mean colour and colour spread, lifted by fixed random Fourier features.
  Unlike a random conv net its features separate objects of different colours from each other and
  from a plain background, which is the grouping signal a CPU-sized run can learn from in minutes.
  It has the frozen-backbone interface (``features``, ``grid_size``, ``out_dim``, ``name``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Encoded:
    """``sa_input`` (B,T,N,C_in) what slot attention groups (may carry grad through a projection);
    ``target`` (B,T,N_t,C_t) the reconstruction target, never requiring grad; ``grid`` (h, w) of the
    target positions; ``sa_grid`` (h, w) of the slot-attention positions (differs on the pixel path)."""

    sa_input: torch.Tensor
    target: torch.Tensor
    grid: tuple[int, int]
    sa_grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.sa_grid is None:
            self.sa_grid = self.grid


def frames_of(x: torch.Tensor, frame_dims: int) -> torch.Tensor:
    """Add a T=1 axis to image-shaped tensors so images and videos share one code path."""
    return x.unsqueeze(1) if x.dim() == frame_dims + 1 else x


def square_grid(n: int) -> tuple[int, int]:
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"cannot infer the feature grid from N={n} positions; give FeatureInput(grid_size=[h, w])")
    return side, side


def batch_grid(batch: dict) -> tuple[int, int] | None:
    """``feature_grid`` (h, w) of a batch (the datamodule adds it), or None."""
    g = batch.get("feature_grid")
    if g is None:
        return None
    g = torch.as_tensor(g)
    g = g[0] if g.dim() > 1 else g
    return int(g[0]), int(g[1])


class SlotEncoder(nn.Module):
    """Base of the encoder parts: ``build(batch)`` creates data-shaped layers; ``forward(batch) -> Encoded``."""

    def build(self, batch: dict) -> None:
        """Create layers whose sizes follow from the data (default: none)."""

    def forward(self, batch: dict) -> Encoded:
        raise NotImplementedError


class FeatureInput(SlotEncoder):
    """Frozen features in, frozen features as the target (F01).

    Args:
        projection_dim: if set, a trainable per-position Linear (input channels from the first batch)
            maps the features to this size for slot attention only; the target stays the frozen feature.
        grid_size: (h, w) of the N positions when the batch has no ``feature_grid`` and N is not square.
    """

    def __init__(self, projection_dim: int | None = None, grid_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.projection_dim = projection_dim
        self.grid_size = tuple(grid_size) if grid_size else None
        self.projection: nn.Linear | None = None

    def build(self, batch: dict) -> None:
        if self.projection_dim and self.projection is None:
            self.projection = nn.Linear(self._features(batch).shape[-1], self.projection_dim)

    @staticmethod
    def _features(batch: dict) -> torch.Tensor:
        if "features" not in batch:
            raise KeyError("FeatureInput needs batch['features'] (frozen backbone features): give the datamodule a "
                           "frozen: part, or use the PixelEncoder part for pixels")
        return frames_of(batch["features"], 2)

    def forward(self, batch: dict) -> Encoded:
        feats = self._features(batch).float()
        with torch.no_grad():
            target = feats.detach()  # F01: the frozen feature is the target, detached at the source
        sa_input = self.projection(feats) if self.projection is not None else feats
        grid = self.grid_size or batch_grid(batch) or square_grid(feats.shape[-2])
        return Encoded(sa_input=sa_input, target=target, grid=grid)


class PixelEncoder(SlotEncoder):
    """Conv(5x5)-ReLU stack; ``downsample`` halvings by stride-2 convs. Frames (B,T,3,H,W) -> tokens on the
    (h, w) grid for slot attention; the target is the RGB frame in [0, 1] on the pixel grid."""

    def __init__(self, channels: int = 32, layers: int = 3, downsample: int = 0) -> None:
        super().__init__()
        if downsample > layers:
            raise ValueError(f"downsample={downsample} needs at least as many layers, got {layers}")
        mods: list[nn.Module] = []
        c_in = 3
        for i in range(layers):
            stride = 2 if i < downsample else 1
            mods += [nn.Conv2d(c_in, channels, 5, stride=stride, padding=2), nn.ReLU(inplace=True)]
            c_in = channels
        self.net = nn.Sequential(*mods)
        self.out_dim = channels
        self.downsample = downsample

    def grid_size(self, h: int, w: int) -> tuple[int, int]:
        f = 2**self.downsample
        return math.ceil(h / f), math.ceil(w / f)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> (B, h*w, channels)."""
        return self.net(images * 2.0 - 1.0).flatten(2).transpose(1, 2)

    def forward(self, batch: dict) -> Encoded:
        video = frames_of(batch["video"] if "video" in batch else batch["image"], 3)
        video = video.float() / 255.0 if not video.is_floating_point() else video
        b, t, _, h, w = video.shape
        tokens = self.tokens(video.flatten(0, 1))
        gh, gw = self.grid_size(h, w)
        sa_input = tokens.view(b, t, gh * gw, -1)
        target = video.permute(0, 1, 3, 4, 2).reshape(b, t, h * w, 3).detach()
        return Encoded(sa_input=sa_input, target=target, grid=(h, w), sa_grid=(gh, gw))


class ColourEdgeEncoder(nn.Module):
    """Fixed structured features: RFF(mean RGB, sharpness * std RGB) per ``patch x patch`` cell.

    Args:
        patch: cell size in pixels (grid = image / patch).
        dim: number of random Fourier features (the output channels).
        bandwidth: frequency scale of the features; larger separates similar colours more.
        edge_weight: weight of the per-cell colour spread (boundary) channels.
        seed: seed of the fixed projection, so features are identical across processes and runs.
    """

    def __init__(
        self, patch: int = 4, dim: int = 64, bandwidth: float = 6.0, edge_weight: float = 1.0, seed: int = 0
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.patch, self.dim, self.edge_weight = patch, dim, edge_weight
        self.register_buffer("proj", torch.randn(6, dim, generator=g) * bandwidth)
        self.register_buffer("phase", torch.rand(dim, generator=g) * 2 * math.pi)
        self.requires_grad_(False)
        self.eval()
        self.name = f"colour_edge_p{patch}_d{dim}_b{bandwidth:g}_e{edge_weight:g}_s{seed}"

    @property
    def out_dim(self) -> int:
        return self.dim

    def grid_size(self, h: int, w: int) -> tuple[int, int]:
        if h % self.patch or w % self.patch:
            raise ValueError(f"image size {h}x{w} is not divisible by patch {self.patch}")
        return h // self.patch, w // self.patch

    def train(self, mode: bool = True) -> ColourEdgeEncoder:  # always frozen
        return super().train(False)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> (B, N, dim), computed without grad (frozen, F01)."""
        self.grid_size(images.shape[-2], images.shape[-1])
        mean = F.avg_pool2d(images, self.patch)
        sq = F.avg_pool2d(images * images, self.patch)
        std = (sq - mean * mean).clamp_min(0).sqrt()
        cell = torch.cat([mean, self.edge_weight * std], dim=1).flatten(2).transpose(1, 2)  # (B,N,6)
        return torch.cos(cell @ self.proj + self.phase) * math.sqrt(2.0)  # ~unit variance per channel

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)
