"""The slot model: encode -> slot attention (SAVi over frames) -> decode; no Lightning here.

Two input paths:

* ``features``: the batch carries frozen backbone features (B,T,N,C) (cached or computed under
  ``no_grad``). The reconstruction target is that frozen feature, detached at the source (F01). An
  optional trainable projection (the seed's CLIP ``Conv2d(768, 384, 1)`` as a per-position Linear)
  acts only on the slot-attention input.
* ``pixels``: a small trainable CNN encodes the frames; the target is the RGB frame (Slot Attention).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .decoders import build_decoder
from .encoders import PixelEncoder
from .predictor import TransformerPredictor
from .slot_attention import SlotAttention


@dataclass
class Encoded:
    """``sa_input`` (B,T,N,C_in) what slot attention groups (may carry grad through a projection);
    ``target`` (B,T,N_t,C_t) the reconstruction target, never requiring grad; ``grid`` (h, w) of the
    target positions; ``sa_grid`` (h, w) of the slot-attention positions (differs on the pixel path)."""

    sa_input: torch.Tensor
    target: torch.Tensor
    grid: tuple[int, int]
    sa_grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.sa_grid is None:
            self.sa_grid = self.grid


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


def frames_of(x: torch.Tensor, frame_dims: int) -> torch.Tensor:
    """Add a T=1 axis to image-shaped tensors so images and videos share one code path."""
    return x.unsqueeze(1) if x.dim() == frame_dims + 1 else x


def square_grid(n: int) -> tuple[int, int]:
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"cannot infer the feature grid from N={n} positions; give grid_size=[h, w]")
    return side, side


class SlotModel(nn.Module):
    """Args are the model hyper-parameters; sizes that depend on the data are taken from the first
    batch by :meth:`build` (called by the module's ``dry_run``)."""

    def __init__(
        self,
        input: str = "features",
        num_slots: int = 7,
        slot_dim: int = 128,
        mlp_hidden: int = 256,
        iters: int = 3,
        iters_video: int = 2,
        tau: float = 0.5,
        slot_init: str = "gaussian",
        pos_emb: bool = True,
        pos_scale: float = 1.0,
        bilevel: bool = False,
        projection_dim: int | None = None,
        decoder: str = "mlp",
        decoder_hidden: int = 256,
        decoder_layers: int = 3,
        predictor: bool = True,
        pixel_channels: int = 32,
        pixel_downsample: int = 1,
        grid_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if input not in ("features", "pixels"):
            raise ValueError(f"input must be 'features' or 'pixels', got {input!r}")
        if projection_dim is not None and input != "features":
            raise ValueError("projection_dim applies to the frozen-feature path (input='features') only")
        self.cfg = dict(
            num_slots=num_slots, slot_dim=slot_dim, mlp_hidden=mlp_hidden, iters=iters, tau=tau,
            slot_init=slot_init, pos_emb=pos_emb, pos_scale=pos_scale, bilevel=bilevel, decoder=decoder,
            decoder_hidden=decoder_hidden, decoder_layers=decoder_layers,
        )
        self.input, self.iters_video, self.use_predictor = input, iters_video, predictor
        self.projection_dim, self.grid_size = projection_dim, tuple(grid_size) if grid_size else None
        self.pixel_encoder = PixelEncoder(pixel_channels, downsample=pixel_downsample) if input == "pixels" else None
        self.projection: nn.Module | None = None
        self.slot_attention: SlotAttention | None = None
        self.decoder: nn.Module | None = None
        self.predictor: TransformerPredictor | None = None

    # ------------------------------------------------------------------ building
    @property
    def built(self) -> bool:
        return self.slot_attention is not None

    def build(self, batch: dict) -> None:
        """Create the data-shaped parts from one batch (idempotent)."""
        if self.built:
            return
        c = self.cfg
        if self.input == "features":
            feats = frames_of(batch["features"], 2)
            if self.projection_dim:
                self.projection = nn.Linear(feats.shape[-1], self.projection_dim)
        with torch.no_grad():
            enc = self.encode(batch)
        b, t, n, c_in = enc.sa_input.shape
        self.slot_attention = SlotAttention(
            c_in, c["slot_dim"], c["num_slots"], c["iters"], c["tau"], mlp_hidden=c["mlp_hidden"],
            num_positions=n if c["pos_emb"] else None, init=c["slot_init"], grid=enc.sa_grid,
            pos_scale=c["pos_scale"], bilevel=c["bilevel"],
        )
        self.decoder = build_decoder(
            c["decoder"], c["slot_dim"], enc.target.shape[-1], enc.target.shape[-2],
            hidden=c["decoder_hidden"], layers=c["decoder_layers"], grid=enc.grid,
        )
        if self.use_predictor and t > 1:
            heads = 4 if c["slot_dim"] % 4 == 0 else 1
            self.predictor = TransformerPredictor(c["slot_dim"], heads=heads, hidden=c["mlp_hidden"])
        device = enc.sa_input.device
        self.to(device)

    # ------------------------------------------------------------------ forward
    def encode(self, batch: dict) -> Encoded:
        if self.input == "features":
            feats = frames_of(batch["features"], 2).float()
            with torch.no_grad():
                target = feats.detach()  # F01: the frozen feature is the target, detached at the source
            sa_input = self.projection(feats) if self.projection is not None else feats
            grid = self.grid_size or _batch_grid(batch) or square_grid(feats.shape[-2])
            return Encoded(sa_input=sa_input, target=target, grid=grid)
        assert self.pixel_encoder is not None
        video = frames_of(batch["video"] if "video" in batch else batch["image"], 3)
        video = video.float() / 255.0 if not video.is_floating_point() else video
        b, t, _, h, w = video.shape
        tokens = self.pixel_encoder(video.flatten(0, 1))
        gh, gw = self.pixel_encoder.grid_size(h, w)
        sa_input = tokens.view(b, t, gh * gw, -1)
        target = video.permute(0, 1, 3, 4, 2).reshape(b, t, h * w, 3).detach()
        return Encoded(sa_input=sa_input, target=target, grid=(h, w), sa_grid=(gh, gw))

    def group(self, sa_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SAVi over frames: ``iters`` on frame 0, ``iters_video`` after, predictor between frames.

        With ``predictor=False`` every frame is grouped on its own from the slot init (DINOSAUR).
        """
        assert self.slot_attention is not None
        slots, all_slots, all_attn = None, [], []
        for t in range(sa_input.shape[1]):
            carried = t > 0 and self.use_predictor
            if carried:
                slots = self.predictor(slots) if self.predictor is not None else slots
            else:  # first frame, or per-frame grouping (DINOSAUR, predictor=False)
                slots = None
            out = self.slot_attention(sa_input[:, t], slots=slots, iters=self.iters_video if carried else None)
            slots = out.slots
            all_slots.append(out.slots)
            all_attn.append(out.attn)
        return torch.stack(all_slots, 1), torch.stack(all_attn, 1)

    def forward(self, batch: dict) -> SlotOutput:
        self.build(batch)
        assert self.decoder is not None
        enc = self.encode(batch)
        slots, attn = self.group(enc.sa_input)
        b, t, k, d = slots.shape
        dec = self.decoder(slots.reshape(b * t, k, d))
        recon = dec.recon.view(b, t, *dec.recon.shape[1:])
        masks = dec.masks.view(b, t, *dec.masks.shape[1:])
        return SlotOutput(
            target=enc.target, recon=recon, masks=masks, attn=attn, slots=slots, grid=enc.grid, sa_grid=enc.sa_grid
        )


def _batch_grid(batch: dict) -> tuple[int, int] | None:
    g = batch.get("feature_grid")
    if g is None:
        return None
    g = torch.as_tensor(g)
    g = g[0] if g.dim() > 1 else g
    return int(g[0]), int(g[1])
