"""Encoders the study owns (the pretrained ones come from ``lit_experiments.backbones``).

* ``PixelEncoder``: small trainable CNN of the original Slot Attention, for the pixel-reconstruction
  path on data without a pretrained backbone.
* ``ColourEdgeEncoder``: a *fixed* (never trained), hand-designed frozen feature extractor for CPU
  demos: per patch the mean colour and colour spread, lifted by fixed random Fourier features.
  Unlike a random conv net its features separate objects of different colours from each other and
  from a plain background, which is the grouping signal a CPU-sized run can learn from in minutes.
  It has the frozen-backbone interface (``features``, ``grid_size``, ``out_dim``, ``name``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PixelEncoder(nn.Module):
    """Conv(5x5)-ReLU stack; ``downsample`` halvings by stride-2 convs. (B,3,H,W) -> (B, h*w, channels)."""

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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.net(images * 2.0 - 1.0)
        return x.flatten(2).transpose(1, 2)


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
