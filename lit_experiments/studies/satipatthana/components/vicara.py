"""Vicara: one refinement step ``s_{t+1} = b s_t + (1 - b) Phi(s_t)``."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import MLP


def refiner(dim: int, hidden_dim: int, zero_bias: bool = True, out_init_scale: float = 1.0) -> nn.Sequential:
    """Phi = Linear - LayerNorm - ReLU - Linear - Tanh (LayerNorm is per sample, never over the batch).

    With ``zero_bias`` the linear biases start at 0: a random bias that dominates a small state makes the
    LayerNorm output, hence Phi, nearly constant, and every trajectory then falls into one attractor at
    initialisation (s* identical across the batch, which the collapse guard flags). ``out_init_scale``
    scales the last layer's initial weights (1: PyTorch's default). Note: 0 is *not* safer under Adam: the
    first update moves every output weight the same way, Phi becomes a near-constant map and, with
    ``b^T`` ~ 0, every s* lands on its fixed point.
    """
    net = nn.Sequential(MLP(dim, [hidden_dim, dim], norm_layer=nn.LayerNorm), nn.Tanh())
    first, last = (m for m in net.modules() if isinstance(m, nn.Linear))
    if zero_bias:
        nn.init.zeros_(first.bias)
        nn.init.zeros_(last.bias)
    with torch.no_grad():
        last.weight.mul_(out_init_scale)
    return net


class Vicara(nn.Module):
    """Refiner with inertia ``beta``; one shared Phi or one Phi per probe (mixed with Vitakka's ``probs``).

    The state size D (the adapter's ``dim``) and, per probe, the number of probes (Vitakka's ``num_probes``) come
    from the other parts: :meth:`build` creates the refiners (the module's dry run calls it, F09).

    Args:
        hidden_dim: width of Phi.
        beta: inertia b in ``s_{t+1} = b s_t + (1 - b) Phi(s_t)``, in [0, 1).
        per_probe: one refiner per probe instead of a shared one.
        zero_bias_init: start Phi's biases at 0 (see :func:`refiner`).
        out_init_scale: factor on the initial weights of Phi's last layer (see :func:`refiner`).
    """

    def __init__(self, hidden_dim: int = 64, beta: float = 0.5, per_probe: bool = False,
                 zero_bias_init: bool = True, out_init_scale: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Vicara: beta={beta} must lie in [0, 1)")
        if out_init_scale < 0:
            raise ValueError(f"Vicara: out_init_scale={out_init_scale} must be >= 0")
        self.hidden_dim, self.beta, self.per_probe = hidden_dim, beta, per_probe
        self.zero_bias_init, self.out_init_scale = zero_bias_init, out_init_scale
        self.refiners = nn.ModuleList()

    def build(self, dim: int, num_probes: int = 1, device: torch.device | None = None) -> Vicara:
        """Create Phi (one, or one per probe of ``num_probes``) for states of size ``dim`` (once)."""
        if len(self.refiners) == 0:
            if self.per_probe and num_probes < 1:
                raise ValueError(f"Vicara: per_probe needs num_probes >= 1, got {num_probes}")
            count = num_probes if self.per_probe else 1
            for _ in range(count):
                self.refiners.append(refiner(dim, self.hidden_dim, self.zero_bias_init, self.out_init_scale).to(device))
        return self

    def phi(self, s: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
        if not self.per_probe:
            return self.refiners[0](s)
        if probs is None or probs.shape[1] != len(self.refiners):
            raise ValueError(f"Vicara(per_probe) needs probs of shape (B, {len(self.refiners)})")
        outs = torch.stack([r(s) for r in self.refiners], dim=1)  # (B, K, D)
        return (probs.unsqueeze(2) * outs).sum(dim=1)

    def forward(self, s: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
        self.build(s.shape[1], probs.shape[1] if probs is not None else 1, s.device)
        return self.beta * s + (1.0 - self.beta) * self.phi(s, probs)
