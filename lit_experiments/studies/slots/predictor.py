"""SAVi predictor: one transformer block over the slots of frame t gives the initial slots of t+1."""
from __future__ import annotations

import torch
from torch import nn


class TransformerPredictor(nn.Module):
    """Pre-norm 1-block transformer (self-attention among slots + MLP), shape-preserving (B,K,D)."""

    def __init__(self, slot_dim: int, heads: int = 4, hidden: int = 256, depth: int = 1) -> None:
        super().__init__()
        if slot_dim % heads:
            raise ValueError(f"slot_dim {slot_dim} must be divisible by heads {heads}")
        layer = nn.TransformerEncoderLayer(
            slot_dim, heads, dim_feedforward=hidden, dropout=0.0, batch_first=True, norm_first=True
        )
        self.net = nn.TransformerEncoder(layer, num_layers=depth, enable_nested_tensor=False)

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        if slots.dim() != 3:
            raise ValueError(f"predictor expects (B, K, D) slots, got {tuple(slots.shape)}")
        return self.net(slots)
