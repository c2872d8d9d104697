"""Adapters: raw input -> latent ``z`` (B, latent_dim). No batch-wise normalisation anywhere (F11)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import MLP


class MLPAdapter(nn.Module):
    """Flattened input -> MLP -> ``z``.

    Args:
        in_dim: number of input features (after flattening).
        latent_dim: size of ``z`` (the Samatha state dimension).
        hidden_dim: width of the hidden layers.
        num_layers: number of hidden layers (>= 1).
    """

    def __init__(self, in_dim: int, latent_dim: int = 32, hidden_dim: int = 64, num_layers: int = 2) -> None:
        super().__init__()
        if in_dim < 1 or latent_dim < 1 or hidden_dim < 1 or num_layers < 1:
            raise ValueError(
                f"MLPAdapter: in_dim={in_dim}, latent_dim={latent_dim}, hidden_dim={hidden_dim}, "
                f"num_layers={num_layers} must all be >= 1"
            )
        self.in_dim = in_dim
        self.latent_dim = latent_dim
        self.net = MLP(in_dim, [hidden_dim] * num_layers + [latent_dim])  # Linear-ReLU x num_layers, Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1))


class CNNAdapter(nn.Module):
    """Image (B, C, H, W) -> strided convolutions -> linear -> ``z``.

    Args:
        in_channels: image channels.
        image_size: square image side; must be divisible by ``2 ** len(channels)``.
        latent_dim: size of ``z``.
        channels: output channels of each stride-2 convolution.
        standardize_input: standardise each image on its own (per-channel mean, per-image std) first. Images
            that are mostly one background colour otherwise give nearly identical ``z`` at initialisation
            (batch collapse, which the health guard flags). Per sample, so no batch statistics (F11).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 16, latent_dim: int = 32,
                 channels: tuple[int, ...] | list[int] = (16, 32), standardize_input: bool = True) -> None:
        super().__init__()
        channels = list(channels)
        if not channels:
            raise ValueError("CNNAdapter: channels must name at least one convolution")
        factor = 2 ** len(channels)
        if image_size % factor:
            raise ValueError(f"CNNAdapter: image_size={image_size} must be divisible by 2**len(channels)={factor}")
        layers: list[nn.Module] = []
        width = in_channels
        for out in channels:
            layers += [nn.Conv2d(width, out, kernel_size=3, stride=2, padding=1), nn.GELU()]
            width = out
        self.conv = nn.Sequential(*layers)
        side = image_size // factor
        self.proj = nn.Linear(width * side * side, latent_dim)
        self.latent_dim = latent_dim
        self.in_dim = in_channels * image_size * image_size
        self.image_shape = (in_channels, image_size, image_size)
        self.standardize_input = standardize_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.reshape(x.shape[0], *self.image_shape)
        if self.standardize_input:
            x = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-3)
        return self.proj(self.conv(x).flatten(1))

