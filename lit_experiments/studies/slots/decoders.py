"""Slot decoders: each returns a reconstruction of the per-position target and masks over slots.

* ``MLPDecoder`` (DINOSAUR): every slot is broadcast to the N positions, a learned position
  embedding is added, a shared MLP outputs C feature channels + 1 alpha logit; the alpha softmax
  over slots gives the masks and the reconstruction is the mask-weighted sum.
* ``TransformerDecoder``: N learned position queries cross-attend to the slots; the attention of the
  last block (averaged over heads) gives the masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .slot_attention import LearnedPositionalEmbedding, mlp


@dataclass
class DecoderOutput:
    """``recon`` (B,N,C) reconstruction; ``masks`` (B,K,N) per-slot masks summing to 1 over K;
    ``per_slot`` (B,K,N,C) per-slot reconstructions or None."""

    recon: torch.Tensor
    masks: torch.Tensor
    per_slot: torch.Tensor | None = None


class SlotDecoder(nn.Module):
    """Base of the decoder parts: ``build(slot_dim, out_dim, num_positions, grid)`` from the first batch
    (slot size from the grouper, channels and positions from the reconstruction target), then
    ``forward(slots (B,K,D)) -> DecoderOutput``. The constructor takes only the decoder's own choices."""

    built = False

    def build(self, slot_dim: int, out_dim: int, num_positions: int, grid: tuple[int, int] | None = None) -> None:
        raise NotImplementedError


class MLPDecoder(SlotDecoder):
    """Broadcast MLP decoder (DINOSAUR). The first layer is applied to slot and position separately and
    summed (``W(s + p) = Ws + Wp``), which is exact and avoids materialising the (B,K,N,D) input.

    Args:
        hidden: hidden width; layers: linear layers (>= 2). Sizes come from :meth:`build`.
    """

    def __init__(self, hidden: int = 256, layers: int = 3) -> None:
        super().__init__()
        if layers < 2:
            raise ValueError(f"MLPDecoder needs >= 2 layers, got {layers}")
        self.hidden, self.layers = hidden, layers

    def build(self, slot_dim: int, out_dim: int, num_positions: int, grid: tuple[int, int] | None = None) -> None:
        if self.built:
            return
        self.num_positions, self.out_dim = num_positions, out_dim
        self.pos_emb = LearnedPositionalEmbedding(num_positions, slot_dim, grid).weight
        self.first = nn.Linear(slot_dim, self.hidden)
        self.rest = nn.Sequential(nn.ReLU(inplace=False), mlp(self.hidden, self.hidden, out_dim + 1, self.layers - 1))
        self.built = True

    def forward(self, slots: torch.Tensor) -> DecoderOutput:
        h_slot = self.first(slots).unsqueeze(2)  # (B,K,1,H), includes the bias
        h_pos = F.linear(self.pos_emb, self.first.weight)  # (N,H)
        out = self.rest(h_slot + h_pos)  # (B,K,N,C+1)
        per_slot, alpha = out[..., : self.out_dim], out[..., self.out_dim]
        masks = alpha.softmax(dim=1)  # (B,K,N): softmax over slots
        recon = (per_slot * masks.unsqueeze(-1)).sum(dim=1)
        return DecoderOutput(recon=recon, masks=masks, per_slot=per_slot)


class _CrossBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_c = nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_m = nn.LayerNorm(dim)
        self.mlp = mlp(dim, hidden, dim)

    def forward(self, q: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm_q(q)
        q = q + self.self_attn(h, h, h, need_weights=False)[0]
        h = self.norm_c(q)
        upd, attn = self.cross(h, slots, slots, need_weights=True, average_attn_weights=True)
        q = q + upd
        q = q + self.mlp(self.norm_m(q))
        return q, attn  # attn (B,N,K): softmax over slots per position


class TransformerDecoder(SlotDecoder):
    """N learned position queries cross-attend to the slots; the last block's attention (mean over heads)
    gives the masks. Args: ``depth`` blocks, ``heads``, MLP ``hidden``; sizes as in :class:`MLPDecoder`."""

    def __init__(self, depth: int = 2, heads: int = 4, hidden: int = 256) -> None:
        super().__init__()
        self.depth, self.heads, self.hidden = depth, heads, hidden

    def build(self, slot_dim: int, out_dim: int, num_positions: int, grid: tuple[int, int] | None = None) -> None:
        if self.built:
            return
        if slot_dim % self.heads:
            raise ValueError(f"TransformerDecoder: slot_dim {slot_dim} must be divisible by heads {self.heads}")
        self.queries = nn.Parameter(LearnedPositionalEmbedding(num_positions, slot_dim, grid).weight.data[None])
        self.blocks = nn.ModuleList([_CrossBlock(slot_dim, self.heads, self.hidden) for _ in range(self.depth)])
        self.norm = nn.LayerNorm(slot_dim)
        self.head = nn.Linear(slot_dim, out_dim)
        self.built = True

    def forward(self, slots: torch.Tensor) -> DecoderOutput:
        q = self.queries.expand(slots.shape[0], -1, -1)
        attn = None
        for block in self.blocks:
            q, attn = block(q, slots)
        assert attn is not None
        return DecoderOutput(recon=self.head(self.norm(q)), masks=attn.transpose(1, 2))
