"""Decoders: reconstruction heads (MLP, Upsample + Conv2d image decoder) and the task decoder.

Their sizes follow from other parts and from the data: the state size from the adapter, the reconstruction's
shape from the input, the task decoder's input from the state size plus ``vipassana.context_dim`` and its classes
from the module. ``SatipatthanaModule.dry_run`` passes them to each part's :meth:`build` (F09); none is typed.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import MLP


class ReconMLPDecoder(nn.Module):
    """State (B, D) -> MLP -> reconstruction of the input (B, *input shape).

    Args:
        hidden_dim: hidden width (two hidden layers).
    """

    def __init__(self, hidden_dim: int = 64) -> None:
        super().__init__()
        if hidden_dim < 1:
            raise ValueError(f"ReconMLPDecoder: hidden_dim={hidden_dim} must be >= 1")
        self.hidden_dim = hidden_dim
        self.out_shape: tuple[int, ...] | None = None
        self.net: nn.Module | None = None

    def build(self, dim: int, out_shape: tuple[int, ...], device: torch.device | None = None) -> ReconMLPDecoder:
        """Create the MLP from states of size ``dim`` to outputs of per-sample shape ``out_shape`` (once)."""
        if self.net is None:
            self.out_shape = tuple(int(s) for s in out_shape)
            self.net = MLP(dim, [self.hidden_dim, self.hidden_dim, math.prod(self.out_shape)]).to(device)
        return self

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            raise ValueError("ReconMLPDecoder: not built (the module's dry run builds it with the input's shape)")
        return self.net(s).reshape(s.shape[0], *self.out_shape)


class ConvDecoder(nn.Module):
    """State -> (C, h, h) grid -> [nearest Upsample x2 + Conv2d 3x3] per level -> image.

    Upsample + Conv2d instead of ``ConvTranspose2d(stride=2)``, whose uneven kernel overlap paints
    checkerboards (F15).

    Args:
        channels: feature channels of the grid and of each upsampling level (coarse to fine); the image side
            must be divisible by ``2 ** len(channels)``.
        output: ``sigmoid`` (images in [0, 1]) or ``linear``.
    """

    def __init__(self, channels: list[int] | tuple[int, ...] = (32, 16), output: str = "sigmoid") -> None:
        super().__init__()
        self.channels = list(channels)
        if not self.channels:
            raise ValueError("ConvDecoder: channels must name at least one level")
        if output not in ("sigmoid", "linear"):
            raise ValueError(f"ConvDecoder: output={output!r}; expected 'sigmoid' or 'linear'")
        self.output = output
        self.base: int | None = None
        self.first = self.channels[0]
        self.proj: nn.Module | None = None
        self.net: nn.Module | None = None

    def build(self, dim: int, out_shape: tuple[int, ...], device: torch.device | None = None) -> ConvDecoder:
        """Create the layers from states of size ``dim`` to images of shape ``(C, H, H)`` (once)."""
        if self.net is not None:
            return self
        if len(out_shape) != 3 or out_shape[1] != out_shape[2]:
            raise ValueError(f"ConvDecoder needs square images (C, H, H), got per-sample shape {tuple(out_shape)}")
        out_channels, image_size = int(out_shape[0]), int(out_shape[1])
        factor = 2 ** len(self.channels)
        if image_size % factor:
            raise ValueError(f"ConvDecoder: image side {image_size} must be divisible by {factor}")
        self.base = image_size // factor
        self.proj = nn.Linear(dim, self.first * self.base * self.base).to(device)
        layers: list[nn.Module] = []
        widths = self.channels + [self.channels[-1]]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1), nn.GELU()]
        layers.append(nn.Conv2d(widths[-1], out_channels, 3, padding=1))
        if self.output == "sigmoid":
            layers.append(nn.Sigmoid())
        self.net = nn.Sequential(*layers).to(device)
        return self

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            raise ValueError("ConvDecoder: not built (the module's dry run builds it with the input's shape)")
        grid = self.proj(s).reshape(s.shape[0], self.first, self.base, self.base)
        return self.net(grid)


class TaskDecoder(nn.Module):
    """``[s*; v_ctx]`` -> MLP -> class logits. The last layer is linear: logits are never squashed (F18).

    Its input size ``D + context_dim`` follows from the adapter and Vipassana: ``SatipatthanaModule`` passes it to
    :meth:`build` in its dry run (or the first forward builds it from its input), so it is never typed.

    Args:
        num_classes: number of classes; None: ``SatipatthanaModule.num_classes`` (said once, in the module).
        hidden_dim: hidden width (0: a single linear layer).
        use_context: concatenate ``v_ctx`` (False: decode from ``s*`` alone).
    """

    def __init__(self, num_classes: int | None = None, hidden_dim: int = 64, use_context: bool = True) -> None:
        super().__init__()
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"TaskDecoder: num_classes={num_classes} must be >= 2")
        if hidden_dim < 0:
            raise ValueError(f"TaskDecoder: hidden_dim={hidden_dim} must be >= 0")
        self.use_context = use_context
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.in_dim: int | None = None
        self.net: nn.Module | None = None

    def build(self, in_dim: int, num_classes: int | None = None, device: torch.device | None = None) -> TaskDecoder:
        """Create the MLP for ``in_dim`` input features (once); ``num_classes`` fills in an unset class count."""
        if self.net is not None:
            return self
        if in_dim < 1:
            raise ValueError(f"TaskDecoder: in_dim={in_dim} must be >= 1")
        if self.num_classes is None:
            if num_classes is None:
                raise ValueError("TaskDecoder: num_classes unknown (the module sets it from its own)")
            self.num_classes = num_classes
        self.in_dim = in_dim
        dims = [self.hidden_dim, self.num_classes] if self.hidden_dim else [self.num_classes]
        self.net = MLP(in_dim, dims).to(device)
        return self

    def forward(self, s_star: torch.Tensor, v_ctx: torch.Tensor | None = None) -> torch.Tensor:
        feats = torch.cat([s_star, v_ctx], dim=1) if (self.use_context and v_ctx is not None) else s_star
        self.build(feats.shape[1], device=feats.device)  # a no-op once built (the dry run builds it, F09)
        return self.net(feats)
