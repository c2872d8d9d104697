"""Decoders: reconstruction heads (MLP, Upsample + Conv2d image decoder) and the task decoder."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import MLP


class MLPDecoder(nn.Module):
    """State (B, D) -> flat reconstruction (B, out_dim), reshaped to ``out_shape`` when given.

    Args:
        latent_dim: input state dimension.
        out_dim: number of output features.
        hidden_dim: hidden width.
        out_shape: optional per-sample output shape (e.g. ``[1, 16, 16]``).
    """

    def __init__(self, latent_dim: int, out_dim: int, hidden_dim: int = 64,
                 out_shape: list[int] | tuple[int, ...] | None = None) -> None:
        super().__init__()
        if out_shape is not None and int(torch.tensor(list(out_shape)).prod()) != out_dim:
            raise ValueError(f"MLPDecoder: out_shape={out_shape} does not hold out_dim={out_dim} values")
        self.out_shape = tuple(out_shape) if out_shape is not None else None
        self.net = MLP(latent_dim, [hidden_dim, hidden_dim, out_dim])

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        out = self.net(s)
        return out.reshape(s.shape[0], *self.out_shape) if self.out_shape else out


class ConvDecoder(nn.Module):
    """State -> (C, h, h) grid -> [nearest Upsample x2 + Conv2d 3x3] per level -> image.

    Upsample + Conv2d instead of ``ConvTranspose2d(stride=2)``, whose uneven kernel overlap paints
    checkerboards (F15).

    Args:
        latent_dim: input state dimension.
        out_channels: image channels.
        image_size: output side; must be divisible by ``2 ** len(channels)``.
        channels: feature channels of the grid and of each upsampling level (coarse to fine).
        output: ``sigmoid`` (images in [0, 1]) or ``linear``.
    """

    def __init__(self, latent_dim: int, out_channels: int = 1, image_size: int = 16,
                 channels: list[int] | tuple[int, ...] = (32, 16), output: str = "sigmoid") -> None:
        super().__init__()
        channels = list(channels)
        if not channels:
            raise ValueError("ConvDecoder: channels must name at least one level")
        factor = 2 ** len(channels)
        if image_size % factor:
            raise ValueError(f"ConvDecoder: image_size={image_size} must be divisible by {factor}")
        if output not in ("sigmoid", "linear"):
            raise ValueError(f"ConvDecoder: output={output!r}; expected 'sigmoid' or 'linear'")
        self.base = image_size // factor
        self.first = channels[0]
        self.proj = nn.Linear(latent_dim, channels[0] * self.base * self.base)
        layers: list[nn.Module] = []
        widths = channels + [channels[-1]]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1), nn.GELU()]
        layers.append(nn.Conv2d(widths[-1], out_channels, 3, padding=1))
        if output == "sigmoid":
            layers.append(nn.Sigmoid())
        self.net = nn.Sequential(*layers)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        grid = self.proj(s).reshape(s.shape[0], self.first, self.base, self.base)
        return self.net(grid)


class TaskDecoder(nn.Module):
    """``[s*; v_ctx]`` -> MLP -> class logits. The last layer is linear: logits are never squashed (F18).

    Args:
        num_classes: number of classes.
        in_dim: ``D + context_dim``; None: ``SatipatthanaModule`` fills it in from its Vitakka and Vipassana
            parts at construction (:meth:`build`), so it is never typed by hand.
        hidden_dim: hidden width (0: a single linear layer).
        use_context: concatenate ``v_ctx`` (False: decode from ``s*`` alone).
    """

    def __init__(self, num_classes: int, in_dim: int | None = None, hidden_dim: int = 64,
                 use_context: bool = True) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"TaskDecoder: num_classes={num_classes} must be >= 2")
        if hidden_dim < 0:
            raise ValueError(f"TaskDecoder: hidden_dim={hidden_dim} must be >= 0")
        self.use_context = use_context
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.in_dim: int | None = None
        self.net: nn.Module | None = None
        if in_dim is not None:
            self.build(in_dim)

    def build(self, in_dim: int) -> None:
        """Create the MLP for ``in_dim`` input features (once)."""
        if in_dim < 1:
            raise ValueError(f"TaskDecoder: in_dim={in_dim} must be >= 1")
        self.in_dim = in_dim
        self.net = MLP(in_dim, [self.hidden_dim, self.num_classes] if self.hidden_dim else [self.num_classes])

    def forward(self, s_star: torch.Tensor, v_ctx: torch.Tensor | None = None) -> torch.Tensor:
        feats = torch.cat([s_star, v_ctx], dim=1) if (self.use_context and v_ctx is not None) else s_star
        if self.net is None:  # built lazily on the first forward (LazyBuild's dry run, F09)
            self.build(feats.shape[1])
            self.net.to(feats.device)
        return self.net(feats)
