"""The slot model: encode -> slot attention (SAVi over frames) -> decode; no Lightning here.

The parts come in built or unbuilt; :meth:`SlotModel.build` creates their data-shaped layers from one
batch, in a fixed order (encoder projection, slot attention, decoder, predictor), so a seed gives the
same weights whatever the config composition. Sizes flow from the data and between parts: slot
attention's input channels and grid from the encoder, the decoder's slot size from the grouper and its
output channels / positions from the target, the predictor's slot size from the grouper.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .decoders import SlotDecoder
from .encoders import Encoded, SlotEncoder
from .predictor import TransformerPredictor
from .slot_attention import SlotAttention

__all__ = ["Encoded", "SlotModel", "SlotOutput"]


@dataclass
class SlotOutput:
    """``target`` (B,T,N,C) detached reconstruction target; ``recon`` (B,T,N,C); ``masks`` (B,T,K,N)
    decoder masks (softmax over slots); ``attn`` (B,T,K,N) slot-attention grouping of the last
    iteration; ``slots`` (B,T,K,D); ``grid`` (h, w) of the N positions."""

    target: torch.Tensor
    recon: torch.Tensor
    masks: torch.Tensor
    attn: torch.Tensor
    slots: torch.Tensor
    grid: tuple[int, int]
    sa_grid: tuple[int, int] | None = None  # (h, w) of ``attn``; differs from ``grid`` on the pixel path

    def __post_init__(self) -> None:
        if self.sa_grid is None:
            self.sa_grid = self.grid


class SlotModel(nn.Module):
    """Encoder -> grouper (slot attention per frame) -> decoder, with an optional SAVi predictor that
    carries the slots of frame t to frame t+1 (None: every frame is grouped on its own, DINOSAUR)."""

    def __init__(self, encoder: SlotEncoder, grouper: SlotAttention, decoder: SlotDecoder,
                 predictor: TransformerPredictor | None = None) -> None:
        super().__init__()
        self.encoder, self.grouper, self.decoder, self.predictor = encoder, grouper, decoder, predictor

    # ------------------------------------------------------------------ building
    @property
    def built(self) -> bool:
        return self.grouper.built and self.decoder.built

    def build(self, batch: dict) -> None:
        """Create the data-shaped layers of every part from one batch (idempotent)."""
        if self.built:
            return
        self.encoder.build(batch)
        with torch.no_grad():
            enc = self.encoder(batch)
        b, t, n, c_in = enc.sa_input.shape
        assert enc.sa_grid is not None
        if enc.sa_grid[0] * enc.sa_grid[1] != n:
            raise ValueError(f"slot-attention grid {enc.sa_grid} does not match the input's {n} positions")
        self.grouper.build(c_in, enc.sa_grid)
        self.decoder.build(self.grouper.dim, enc.target.shape[-1], enc.target.shape[-2], enc.grid)
        if self.predictor is not None and t > 1:  # an image model never calls it (and must not own idle weights)
            self.predictor.build(self.grouper.dim)
        self.to(enc.sa_input.device)

    # ------------------------------------------------------------------ forward
    def encode(self, batch: dict) -> Encoded:
        return self.encoder(batch)

    def group(self, sa_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SAVi over frames: ``iters`` on frame 0, ``iters_video`` after, the predictor between frames.

        Without a predictor every frame is grouped on its own from the slot init (DINOSAUR).
        """
        sa = self.grouper
        slots, all_slots, all_attn = None, [], []
        for t in range(sa_input.shape[1]):
            carried = t > 0 and self.predictor is not None
            if carried:
                if not self.predictor.built:
                    raise RuntimeError("the predictor was not built (the first batch had one frame); build on video")
                slots = self.predictor(slots)
            else:  # first frame, or per-frame grouping (DINOSAUR, no predictor)
                slots = None
            out = sa(sa_input[:, t], slots=slots, iters=sa.iters_video if carried else None)
            slots = out.slots
            all_slots.append(out.slots)
            all_attn.append(out.attn)
        return torch.stack(all_slots, 1), torch.stack(all_attn, 1)

    def forward(self, batch: dict) -> SlotOutput:
        self.build(batch)
        enc = self.encode(batch)
        slots, attn = self.group(enc.sa_input)
        b, t, k, d = slots.shape
        dec = self.decoder(slots.reshape(b * t, k, d))
        recon = dec.recon.view(b, t, *dec.recon.shape[1:])
        masks = dec.masks.view(b, t, *dec.masks.shape[1:])
        return SlotOutput(
            target=enc.target, recon=recon, masks=masks, attn=attn, slots=slots, grid=enc.grid, sa_grid=enc.sa_grid
        )
