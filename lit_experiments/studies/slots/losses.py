"""Reconstruction losses for slot models (F02, F03) and the slot-diversity term.

All reconstruction losses act on per-position feature vectors ``(..., N, C)``. Scale is removed,
when wanted, per position over the C channels (``channel_norm``, ``cosine``), never over the N
positions: normalising over space removes the position-to-position differences that slot
attention groups by (F02), so no spatial option exists and asking for one raises.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSSES = ("mse", "cosine", "channel_norm")
_SPATIAL = ("spatial", "spatial_norm", "instance_norm", "space", "hw")


def check_loss_name(name: str) -> str:
    if name in _SPATIAL or "spatial" in name:
        raise ValueError(
            f"loss {name!r}: normalising features over space (H, W) removes the differences between "
            "positions that slot attention needs (LESSONS F02). Use 'channel_norm' (per position over "
            "channels) to remove the backbone's feature scale."
        )
    if name not in LOSSES:
        raise ValueError(f"unknown reconstruction loss {name!r}; choose one of {LOSSES}")
    return name


def to_loss_space(x: torch.Tensor, name: str) -> torch.Tensor:
    """The representation the loss compares: raw (mse), unit vectors (cosine) or layer-normed (channel_norm)."""
    if name == "mse":
        return x
    if name == "cosine":
        return F.normalize(x, dim=-1)
    if name == "channel_norm":
        return F.layer_norm(x, x.shape[-1:])
    raise ValueError(check_loss_name(name))


@dataclass
class ReconLoss:
    """``loss`` (with grad) for the optimizer; ``relative`` (detached): per frame, the squared error as a
    fraction of the loss-space target's variance over positions (1.0 = no better than predicting the mean feature),
    comparable across backbones with different feature scales (F03)."""

    loss: torch.Tensor
    relative: torch.Tensor


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, name: str = "mse") -> ReconLoss:
    check_loss_name(name)
    if recon.shape != target.shape:
        raise ValueError(f"recon {tuple(recon.shape)} and target {tuple(target.shape)} differ")
    target = target.detach()  # F01: the target never receives gradient
    if name == "cosine":
        loss = (1.0 - F.cosine_similarity(recon, target, dim=-1)).mean()
        # relative: squared distance of unit vectors, over their spread
        r, t = to_loss_space(recon, name), to_loss_space(target, name)
    else:
        r, t = to_loss_space(recon, name), to_loss_space(target, name)
        loss = F.mse_loss(r, t)
    with torch.no_grad():
        # per frame (error over the frame's own spread), then the mean over frames: a batch's value is the
        # mean of its frames' values, so batch-size-weighted means over batches / ranks are exact (DDP)
        flat_r = r.detach().reshape(-1, r.shape[-2], r.shape[-1])
        flat_t = t.reshape(-1, t.shape[-2], t.shape[-1])  # (B', N, C)
        var = flat_t.var(dim=1, unbiased=False).sum(-1).clamp_min(1e-12)
        relative = ((flat_r - flat_t).pow(2).sum(-1).mean(-1) / var).mean()
    return ReconLoss(loss=loss, relative=relative)


class ReconstructionLoss:
    """The reconstruction-loss part: ``kind`` ``mse`` | ``cosine`` | ``channel_norm`` (per position over
    channels; F02, F03). Asking for a spatial normalisation raises (F02). Called as ``loss(recon, target)``."""

    def __init__(self, kind: str = "mse") -> None:
        self.kind = check_loss_name(kind)

    def __call__(self, recon: torch.Tensor, target: torch.Tensor) -> ReconLoss:
        return reconstruction_loss(recon, target, self.kind)

    def __repr__(self) -> str:
        return f"ReconstructionLoss(kind={self.kind!r})"


def slot_diversity_loss(slots: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine similarity between different slots of a sample, in [0, 1] (0 = orthogonal)."""
    if slots.shape[-2] < 2:
        return slots.new_zeros(())
    s = F.normalize(slots, dim=-1)
    sim = s @ s.transpose(-1, -2)
    k = sim.shape[-1]
    off = ~torch.eye(k, dtype=torch.bool, device=sim.device)
    return sim[..., off].pow(2).mean()
