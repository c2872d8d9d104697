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
from torchvision.ops import MLP

from lit_experiments.core.seeding import run_seed


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2) -> MLP:
    """ReLU MLP with ``layers`` linear layers (>= 1): ``torchvision.ops.MLP`` (its p=0 dropouts are no-ops)."""
    if layers < 1:
        raise ValueError(f"mlp needs >= 1 layer, got {layers}")
    return MLP(in_dim, [hidden] * (layers - 1) + [out_dim])


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

    With ``grid=(h, w)`` it starts as a smooth Fourier code of the position, else small random values. The
    Fourier code's random frequencies come from ``seed``, by default derived from the run's ``seed_everything``
    (``core.seeding.run_seed``, F50), so a sweep over seeds varies them like every other initial weight.
    """

    def __init__(
        self, num_positions: int, dim: int, grid: tuple[int, int] | None = None, scale: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if grid is not None and grid[0] * grid[1] == num_positions:
            init = fourier_grid(grid, dim, scale, seed=run_seed(seed, "slots/pos_emb"))
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
    """Base of the initial-slot parts; sizes (``num_slots``, ``dim``) come from the slot attention at build."""

    num_slots: int
    dim: int

    def build(self, num_slots: int, dim: int) -> None:
        raise NotImplementedError

    def forward(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError


class GaussianSlotInit(SlotInit):
    """Slots sampled from a learned Gaussian (shared mu / log-sigma; Locatello et al.), new noise every call."""

    def build(self, num_slots: int, dim: int) -> None:
        self.num_slots, self.dim = num_slots, dim
        self.mu = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)
        self.log_sigma = nn.Parameter(torch.full((1, 1, dim), math.log(dim**-0.5)))

    def forward(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(
            batch_size, self.num_slots, self.dim, device=self.mu.device, dtype=self.mu.dtype, generator=generator
        )
        return self.mu + self.log_sigma.exp() * noise


class LearnedSlotInit(SlotInit):
    """One learned query vector per slot (deterministic init; pairs well with ``bilevel``, BO-QSA)."""

    def build(self, num_slots: int, dim: int) -> None:
        self.num_slots, self.dim = num_slots, dim
        self.slots = nn.Parameter(torch.randn(1, num_slots, dim) * dim**-0.5)

    def forward(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.slots.expand(batch_size, -1, -1)


@dataclass
class SlotAttentionOutput:
    """``slots`` (B,K,D) after the last iteration; ``attn`` (B,K,N) softmax over slots of the last
    iteration (the grouping); ``sa_input`` (B,N,D) the processed input actually attended over."""

    slots: torch.Tensor
    attn: torch.Tensor
    sa_input: torch.Tensor


class SlotAttention(nn.Module):
    """Iterative slot attention with softmax over slots at temperature ``tau`` (the study's grouper).

    Sizes that follow from the data are built lazily: ``in_dim`` (channels of the input) and ``grid``
    (h, w of the positions, sizing the positional embedding) are ``None`` in a config and filled by
    :meth:`build` from the first batch (the module's dry run). Given here, the part is built at once.

    Args:
        dim: slot size D (also the key / value size); decoders and predictors read it from here.
        num_slots: K.
        iters: iterations on a frame grouped from the initial slots.
        iters_video: iterations on later frames whose slots a predictor carried over (None: ``iters``).
        tau: softmax temperature (seed: 0.5); logits are ``q.k / sqrt(D) / tau``.
        mlp_hidden: hidden size of the residual MLP and of the input MLP.
        pos_emb: add a learned positional embedding of the ``grid`` positions to the input (F04).
        pos_scale: size of that embedding's initial smooth code relative to the (LayerNorm-ed, MLP-ed) features.
        bilevel: BO-QSA (Jia et al., ICLR 2023): all iterations but the last run on detached slots and
            the initial slots get the gradient of the last iteration straight through. With a learned
            init this makes the slot queries converge faster and more stably.
        init: the initial-slot part (default :class:`GaussianSlotInit`).
        eps: added to the attention before the weighted mean.
        in_dim / grid: the data-shaped sizes (see above).
    """

    def __init__(
        self,
        dim: int = 128,
        num_slots: int = 7,
        iters: int = 3,
        iters_video: int | None = None,
        tau: float = 0.5,
        mlp_hidden: int = 256,
        pos_emb: bool = True,
        pos_scale: float = 1.0,
        bilevel: bool = False,
        init: SlotInit | None = None,
        eps: float = 1e-8,
        in_dim: int | None = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if iters < 1 or (iters_video is not None and iters_video < 1):
            raise ValueError(f"iters / iters_video must be >= 1, got {iters} / {iters_video}")
        self.num_slots, self.dim, self.iters, self.tau, self.eps = num_slots, dim, iters, tau, eps
        self.iters_video = iters_video or iters
        self.mlp_hidden, self.use_pos_emb, self.pos_scale, self.bilevel = mlp_hidden, pos_emb, pos_scale, bilevel
        self.init = init if init is not None else GaussianSlotInit()
        self.pos_emb: LearnedPositionalEmbedding | None = None
        self.built = False
        if in_dim is not None:
            self.build(in_dim, grid)

    def build(self, in_dim: int, grid: tuple[int, int] | None = None) -> None:
        """Create the layers for ``in_dim`` input channels on a ``grid`` of positions (idempotent).

        Layers are created in the order of the original (eager) module, so a seed gives the same weights.
        """
        if self.built:
            return
        if self.use_pos_emb and grid is None:
            raise ValueError("SlotAttention(pos_emb=True) needs the grid (h, w) of the input positions")
        d = self.dim
        self.input_norm = nn.LayerNorm(in_dim)
        self.input_mlp = mlp(in_dim, self.mlp_hidden, d)
        if self.use_pos_emb:
            assert grid is not None
            self.pos_emb = LearnedPositionalEmbedding(grid[0] * grid[1], d, tuple(grid), self.pos_scale)
        self.norm_kv = nn.LayerNorm(d)
        self.to_k = nn.Linear(d, d, bias=False)
        self.to_v = nn.Linear(d, d, bias=False)
        self.norm_slots = nn.LayerNorm(d)
        self.to_q = nn.Linear(d, d, bias=False)
        self.gru = nn.GRUCell(d, d)
        self.norm_mlp = nn.LayerNorm(d)
        self.mlp = mlp(d, self.mlp_hidden, d)
        self.init.build(self.num_slots, d)
        self.built = True

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
        if not self.built:
            raise RuntimeError("SlotAttention is not built: call build(in_dim, grid) (the module's dry run does)")
        b = features.shape[0]
        x = self.prepare_input(features)
        kv = self.norm_kv(x)
        k, v = self.to_k(kv), self.to_v(kv)
        if slots is None:
            slots = self.init(b)
        scale = self.dim**-0.5 / self.tau
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
            slots = self.gru(updates.reshape(-1, self.dim), prev.reshape(-1, self.dim)).view_as(prev)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return SlotAttentionOutput(slots=slots, attn=attn, sa_input=x)
