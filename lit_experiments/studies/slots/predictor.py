"""SAVi predictor: one transformer block over the slots of frame t gives the initial slots of t+1."""
from __future__ import annotations

import torch
from torch import nn


class TransformerPredictor(nn.Module):
    """Pre-norm transformer (self-attention among slots + MLP), shape-preserving (B,K,D).

    ``slot_dim`` is read from the grouper when the module builds (``None`` in a config); ``heads``
    ``None`` means 4 when ``slot_dim`` is divisible by 4, else 1.
    """

    def __init__(self, hidden: int = 256, heads: int | None = None, depth: int = 1, slot_dim: int | None = None) -> None:
        super().__init__()
        self.hidden, self.heads, self.depth = hidden, heads, depth
        self.built = False
        if slot_dim is not None:
            self.build(slot_dim)

    def build(self, slot_dim: int) -> None:
        if self.built:
            return
        heads = self.heads or (4 if slot_dim % 4 == 0 else 1)
        if slot_dim % heads:
            raise ValueError(f"TransformerPredictor: slot_dim {slot_dim} must be divisible by heads {heads}")
        layer = nn.TransformerEncoderLayer(
            slot_dim, heads, dim_feedforward=self.hidden, dropout=0.0, batch_first=True, norm_first=True
        )
        self.net = nn.TransformerEncoder(layer, num_layers=self.depth, enable_nested_tensor=False)
        self.built = True

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        if slots.dim() != 3:
            raise ValueError(f"predictor expects (B, K, D) slots, got {tuple(slots.shape)}")
        return self.net(slots)
