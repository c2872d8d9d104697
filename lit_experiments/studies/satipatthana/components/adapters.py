"""Adapters: raw input -> latent ``z`` (B, dim). No batch-wise normalisation anywhere (F11).

An adapter owns the state size ``dim`` of the study (Vitakka, Vicara, Vipassana and the decoders read it); its
input size comes from the data: :meth:`build` takes the per-sample input shape (``SatipatthanaModule.dry_run``
calls it first, F09), or the first forward builds it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import MLP


class MLPAdapter(nn.Module):
    """Flattened input -> MLP -> ``z``.

    Args:
        dim: size of ``z`` (the Samatha state dimension D).
        hidden_dim: width of the hidden layers.
        num_layers: number of hidden layers (>= 1).
    """

    def __init__(self, dim: int, hidden_dim: int = 64, num_layers: int = 2) -> None:
        super().__init__()
        if dim < 1 or hidden_dim < 1 or num_layers < 1:
            raise ValueError(f"MLPAdapter: dim={dim}, hidden_dim={hidden_dim}, num_layers={num_layers} must all be >= 1")
        self.dim, self.hidden_dim, self.num_layers = dim, hidden_dim, num_layers
        self.in_dim: int | None = None
        self.net: nn.Module | None = None

    def build(self, input_shape: tuple[int, ...], device: torch.device | None = None) -> MLPAdapter:
        """Create the MLP for inputs of per-sample shape ``input_shape`` (once)."""
        if self.net is None:
            self.in_dim = math.prod(input_shape)
            self.net = MLP(self.in_dim, [self.hidden_dim] * self.num_layers + [self.dim]).to(device)  # Linear-ReLU x n, Linear
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.build(tuple(x.shape[1:]), x.device)
        return self.net(x.reshape(x.shape[0], -1))


class CNNAdapter(nn.Module):
    """Image (B, C, H, W) -> strided convolutions -> linear -> ``z``.

    Args:
        dim: size of ``z`` (the Samatha state dimension D).
        channels: output channels of each stride-2 convolution; the image side must be divisible by
            ``2 ** len(channels)``.
        standardize_input: standardise each image on its own (per-channel mean, per-image std) first. Images
            that are mostly one background colour otherwise give nearly identical ``z`` at initialisation
            (batch collapse, which the health guard flags). Per sample, so no batch statistics (F11).
    """

    def __init__(self, dim: int, channels: tuple[int, ...] | list[int] = (16, 32),
                 standardize_input: bool = True) -> None:
        super().__init__()
        self.channels = list(channels)
        if not self.channels:
            raise ValueError("CNNAdapter: channels must name at least one convolution")
        if dim < 1:
            raise ValueError(f"CNNAdapter: dim={dim} must be >= 1")
        self.dim = dim
        self.standardize_input = standardize_input
        self.image_shape: tuple[int, int, int] | None = None
        self.in_dim: int | None = None
        self.conv: nn.Module | None = None
        self.proj: nn.Module | None = None

    def build(self, input_shape: tuple[int, ...], device: torch.device | None = None) -> CNNAdapter:
        """Create the layers for images of shape ``(C, H, W)`` (once)."""
        if self.conv is not None:
            return self
        if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
            raise ValueError(f"CNNAdapter needs square images (C, H, H), got per-sample shape {tuple(input_shape)}")
        in_channels, image_size = int(input_shape[0]), int(input_shape[1])
        factor = 2 ** len(self.channels)
        if image_size % factor:
            raise ValueError(f"CNNAdapter: image side {image_size} must be divisible by 2**len(channels)={factor}")
        layers: list[nn.Module] = []
        width = in_channels
        for out in self.channels:
            layers += [nn.Conv2d(width, out, kernel_size=3, stride=2, padding=1), nn.GELU()]
            width = out
        self.conv = nn.Sequential(*layers).to(device)
        side = image_size // factor
        self.proj = nn.Linear(width * side * side, self.dim).to(device)
        self.in_dim = in_channels * image_size * image_size
        self.image_shape = (in_channels, image_size, image_size)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            if self.image_shape is None:
                raise ValueError("CNNAdapter: flat inputs before the adapter was built (build it with the image shape)")
            x = x.reshape(x.shape[0], *self.image_shape)
        self.build(tuple(x.shape[1:]), x.device)
        if self.standardize_input:
            x = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-3)
        return self.proj(self.conv(x).flatten(1))
