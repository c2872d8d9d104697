"""Slot attention (Locatello et al. 2020) as used by DINOSAUR / SAVi.

Inputs are per-position features ``(B, N, C)``; outputs are ``K`` slots ``(B, K, D)`` and the
attention of the last iteration ``(B, K, N)`` (softmax over slots, i.e. a soft partition of the
positions). The input path is: LayerNorm -> MLP -> (optional learned positional embedding, F04).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    """Plain ReLU MLP with ``layers`` linear layers (>= 1)."""
    if layers < 1:
        raise ValueError(f"mlp needs >= 1 layer, got {layers}")
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden), nn.ReLU(inplace=True)]
        dim = hidden
    mods.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*mods)


def fourier_grid(grid: tuple[int, int], dim: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """(h*w, dim) smooth 2-D position code: sin/cos of random low frequencies of the (y, x) coordinates.

    Used to *initialise* learned position embeddings: neighbouring positions start similar, so slots
    and masks are spatially coherent from the first step instead of after the table is learned.
    """
    h, w = grid
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()], -1)  # (N, 2)
    g = torch.Generator().manual_seed(seed)
    freqs = torch.randn(2, (dim + 1) // 2, generator=g) * 1.5
    ang = torch.pi * coords @ freqs
    return torch.cat([ang.sin(), ang.cos()], -1)[:, :dim] * scale


class LearnedPositionalEmbedding(nn.Module):
    """A learned ``(N, D)`` table added to a ``(B, N, D)`` sequence (F04).

    With ``grid=(h, w)`` it starts as a smooth Fourier code of the position, else small random values.
    """

    def __init__(
        self, num_positions: int, dim: int, grid: tuple[int, int] | None = None, scale: float = 1.0
    ) -> None:
        super().__init__()
        if grid is not None and grid[0] * grid[1] == num_positions:
            init = fourier_grid(grid, dim, scale)
        else:
            init = torch.randn(num_positions, dim) * 0.02
        self.weight = nn.Parameter(init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] != self.weight.shape[0]:
            raise ValueError(
                f"positional embedding built for {self.weight.shape[0]} positions, input has {x.shape[-2]}; "
                "set num_positions to the feature grid size (grid_h * grid_w)"
            )
        return x + self.weight


class SlotInit(nn.Module):
    """Initial slots: ``gaussian`` (learned mu / log-sigma, sampled) or ``learned`` (one vector per slot)."""

    def __init__(self, num_slots: int, dim: int, mode: str = "gaussian") -> None:
        super().__init__()
        if mode not in ("gaussian", "learned"):
            raise ValueError(f"slot init must be 'gaussian' or 'learned', got {mode!r}")
        self.mode, self.num_slots, self.dim = mode, num_slots, dim
        if mode == "gaussian":
            self.mu = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)
            self.log_sigma = nn.Parameter(torch.full((1, 1, dim), math.log(dim**-0.5)))
        else:
            self.slots = nn.Parameter(torch.randn(1, num_slots, dim) * dim**-0.5)

    def forward(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.mode == "learned":
            return self.slots.expand(batch_size, -1, -1)
        noise = torch.randn(
            batch_size, self.num_slots, self.dim, device=self.mu.device, dtype=self.mu.dtype, generator=generator
        )
        return self.mu + self.log_sigma.exp() * noise


@dataclass
class SlotAttentionOutput:
    """``slots`` (B,K,D) after the last iteration; ``attn`` (B,K,N) softmax over slots of the last
    iteration (the grouping); ``sa_input`` (B,N,D) the processed input actually attended over."""

    slots: torch.Tensor
    attn: torch.Tensor
    sa_input: torch.Tensor


class SlotAttention(nn.Module):
    """Iterative slot attention with softmax over slots at temperature ``tau``.

    Args:
        in_dim: feature channels C of the input.
        slot_dim: slot size D (also the key / value size).
        num_slots: K.
        iters: default number of iterations.
        tau: softmax temperature (seed: 0.5); logits are ``q.k / sqrt(D) / tau``.
        eps: added to the attention before the weighted mean.
        mlp_hidden: hidden size of the residual MLP and of the input MLP.
        num_positions: if given, a learned positional embedding of this many positions is added to
            the slot-attention input (F04).
        init: ``gaussian`` or ``learned`` slot initialisation.
        grid: (h, w) of the N positions; initialises the positional embedding as a smooth code.
        pos_scale: size of that initial code relative to the (LayerNorm-ed, MLP-ed) features.
        bilevel: BO-QSA (Jia et al., ICLR 2023): all iterations but the last run on detached slots and
            the initial slots get the gradient of the last iteration straight through. With ``learned``
            init this makes the slot queries converge faster and more stably.
    """

    def __init__(
        self,
        in_dim: int,
        slot_dim: int = 128,
        num_slots: int = 7,
        iters: int = 3,
        tau: float = 0.5,
        eps: float = 1e-8,
        mlp_hidden: int = 256,
        num_positions: int | None = None,
        init: str = "gaussian",
        grid: tuple[int, int] | None = None,
        pos_scale: float = 1.0,
        bilevel: bool = False,
    ) -> None:
        super().__init__()
        self.bilevel = bilevel
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        self.num_slots, self.slot_dim, self.iters, self.tau, self.eps = num_slots, slot_dim, iters, tau, eps
        self.input_norm = nn.LayerNorm(in_dim)
        self.input_mlp = mlp(in_dim, mlp_hidden, slot_dim)
        self.pos_emb = (
            LearnedPositionalEmbedding(num_positions, slot_dim, grid, pos_scale) if num_positions else None
        )
        self.norm_kv = nn.LayerNorm(slot_dim)
        self.to_k = nn.Linear(slot_dim, slot_dim, bias=False)
        self.to_v = nn.Linear(slot_dim, slot_dim, bias=False)
        self.norm_slots = nn.LayerNorm(slot_dim)
        self.to_q = nn.Linear(slot_dim, slot_dim, bias=False)
        self.gru = nn.GRUCell(slot_dim, slot_dim)
        self.norm_mlp = nn.LayerNorm(slot_dim)
        self.mlp = mlp(slot_dim, mlp_hidden, slot_dim)
        self.init = SlotInit(num_slots, slot_dim, init)

    def prepare_input(self, features: torch.Tensor) -> torch.Tensor:
        """LayerNorm + MLP (+ positional embedding): the sequence slot attention attends over."""
        x = self.input_mlp(self.input_norm(features))
        if self.pos_emb is not None:
            x = self.pos_emb(x)
        return x

    def forward(
        self, features: torch.Tensor, slots: torch.Tensor | None = None, iters: int | None = None
    ) -> SlotAttentionOutput:
        if features.dim() != 3:
            raise ValueError(f"slot attention expects (B, N, C) features, got shape {tuple(features.shape)}")
        b = features.shape[0]
        x = self.prepare_input(features)
        kv = self.norm_kv(x)
        k, v = self.to_k(kv), self.to_v(kv)
        if slots is None:
            slots = self.init(b)
        scale = self.slot_dim**-0.5 / self.tau
        attn = features.new_zeros(b, self.num_slots, x.shape[1])
        n_iters = iters or self.iters
        init = slots
        for i in range(n_iters):
            if self.bilevel:
                # BO-QSA: no gradient through the first iterations; the init gets the last one's straight through
                slots = slots.detach() + init - init.detach() if i == n_iters - 1 else slots.detach()
            prev = slots
            q = self.to_q(self.norm_slots(slots))
            logits = torch.einsum("bkd,bnd->bkn", q, k) * scale
            attn = logits.softmax(dim=1)  # softmax over slots: slots compete for positions
            weights = attn + self.eps
            weights = weights / weights.sum(dim=-1, keepdim=True)  # weighted mean over positions
            updates = torch.einsum("bkn,bnd->bkd", weights, v)
            slots = self.gru(updates.reshape(-1, self.slot_dim), prev.reshape(-1, self.slot_dim)).view_as(prev)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return SlotAttentionOutput(slots=slots, attn=attn, sa_input=x)
