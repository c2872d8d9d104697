"""Losses of the retrieval study: SimSiam (self-supervised pre-training) and FastAP (He et al., CVPR 2018).

* :class:`SimSiamLoss`: ``-cos(p1, sg(z2))/2 - cos(p2, sg(z1))/2``, floor -1. The stop-gradient ``sg`` lives in
  one place, :func:`stop_gradient`; without it the two branches collapse to a constant (F19).
  :meth:`SimSiamLoss.with_targets` also returns the two targets ``sg(z)``, which the module declares to the
  TrainingHealth guard (``track(targets=...)``): a target that carries a gradient stops the run at its first step.
* :class:`FastAPLoss`: ``1 - mean FastAP`` over the queries of a batch that have a positive. The soft
  distance histogram is built with a scatter (each pair touches only the few bins its kernel reaches),
  not with a dense ``(bins + 1, B, B)`` kernel tensor. Every pair adds total weight 1 to its query's
  histogram, which keeps FastAP in [0, 1] for any kernel width (F20); queries without a positive and
  empty bins are counted in ``last_stats`` (F39).
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_experiments.core.errors import ConfigError, LitExpError

#: FastAP values outside [-RANGE_TOL, 1 + RANGE_TOL] are refused (F20)
RANGE_TOL = 1e-6
#: squared distance of unit vectors lies in [0, D_MAX]
D_MAX = 4.0


class FastAPError(LitExpError, RuntimeError):
    """A FastAP batch that cannot give a valid loss."""


class FastAPRangeError(FastAPError):
    """A per-query FastAP outside [0, 1]: the histogram is mis-normalised (F20)."""


class FastAPNoPositiveError(FastAPError):
    """No query of the batch has a positive: the batch sampler does not give m samples per class (F39)."""


# ----------------------------------------------------------------------------------------------- SimSiam
def stop_gradient(z: Tensor) -> Tensor:
    """SimSiam's stop-gradient: the projector output ``z`` as a constant target (F19). The only place it happens;
    its output is the target the module declares to the TrainingHealth guard."""
    return z.detach()


def negative_cosine(p: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of ``-cos(p, target)``; ``target`` is :func:`stop_gradient` of a projector output."""
    return -F.cosine_similarity(p, target, dim=-1).mean()


class SimSiamLoss(nn.Module):
    """Symmetric SimSiam loss ``0.5 * D(p1, sg(z2)) + 0.5 * D(p2, sg(z1))`` with ``D = negative_cosine`` and
    ``sg = stop_gradient``.

    ``p*`` are predictor outputs, ``z*`` projector outputs of the two views; ``z`` gets no gradient.
    The floor is -1 (``p`` parallel to ``z`` for every sample); a loss at the floor with a small spread of
    the L2-normalised ``z`` is collapse (F19), not success.
    """

    floor: ClassVar[float] = -1.0

    def forward(self, p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        return self.with_targets(p1, p2, z1, z2)[0]

    def with_targets(self, p1: Tensor, p2: Tensor, z1: Tensor,
                     z2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss and its targets ``{"stop_gradient(z1)": sg(z1), "stop_gradient(z2)": sg(z2)}``, the tensors the
        loss regresses to (for ``StudyModule.track(targets=...)``: one that requires grad is an error, F01/F19)."""
        # looked up in the module namespace at call time, so tests can mutate the product's stop-gradient
        t1, t2 = stop_gradient(z1), stop_gradient(z2)
        loss = 0.5 * negative_cosine(p1, t2) + 0.5 * negative_cosine(p2, t1)
        return loss, {"stop_gradient(z1)": t1, "stop_gradient(z2)": t2}


# ------------------------------------------------------------------------------------------------ FastAP
def normalise_pair_weights(w: Tensor) -> Tensor:
    """Scale each pair's soft bin assignments ``w (..., J)`` to sum 1 (F20: keeps FastAP in [0, 1])."""
    return w / w.sum(dim=-1, keepdim=True)


class FastAPLoss(nn.Module):
    """FastAP loss (He et al., CVPR 2018): ``1 - mean FastAP`` over queries with at least one positive.

    Embeddings are L2-normalised; the squared distance ``d = 2 - 2 x.y`` lies in [0, 4]. The histogram
    has ``bins + 1`` centres ``linspace(0, 4, bins + 1)`` (spacing ``delta = 4 / bins``) and a triangular
    kernel of half-width ``sigma`` (default ``delta``). With ``sigma = delta`` each pair's soft assignments
    sum to exactly 1 (the paper's maths). Any other ``sigma`` would make a pair add ``~sigma / delta`` to
    the histogram, so FastAP could exceed 1 and the loss go negative (F20): the assignments of each pair
    are normalised to sum 1 instead. ``sigma`` must exceed ``delta / 2``, else distances between two
    centres reach no bin at all. A per-query FastAP outside [0, 1] (beyond 1e-6) raises
    :class:`FastAPRangeError`.

    Positives: same label (``labels``) or ``pos_mask[i, j]`` (e.g. two views of a frame plus temporal
    neighbours); the diagonal is ignored, a query is never its own positive. Every other sample is a
    negative. Queries without a positive are left out of the mean and counted (F39); a batch where no
    query has a positive raises :class:`FastAPNoPositiveError` (use ``MPerClassBatchSampler``).

    ``last_stats`` after each forward: ``n_queries``, ``n_no_positive``, ``n_empty_bins`` (of the
    ``bins + 1`` centres, with no mass from any pair of the batch), ``fastap_mean``.

    Equals ``pytorch_metric_learning.losses.FastAPLoss(num_bins=bins)`` for the default ``sigma``: PML's
    ``num_bins`` is our ``bins`` (it uses ``num_bins + 1`` centres on [0, 4] and kernel width
    ``4 / num_bins``, squared L2 distance of normalised embeddings, mean over queries with positives).
    """

    floor: ClassVar[float] = 0.0

    def __init__(self, bins: int = 100, sigma: float | None = None) -> None:
        super().__init__()
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ConfigError(f"FastAPLoss bins = {bins!r}: expected an int >= 2 (number of histogram bins)")
        delta = D_MAX / bins
        if sigma is not None and (not isinstance(sigma, (int, float)) or isinstance(sigma, bool)
                                  or not math.isfinite(sigma) or sigma <= 0):
            raise ConfigError(f"FastAPLoss sigma = {sigma!r}: expected a kernel width > 0 "
                              f"(or null for the bin spacing 4/bins = {delta:g})")
        if sigma is not None and sigma <= delta / 2:
            raise ConfigError(f"FastAPLoss sigma = {sigma!r} with bins = {bins}: expected sigma > half the bin "
                              f"spacing ({delta / 2:g}), else distances between two bin centres reach no bin")
        self.bins = bins
        self.delta = delta
        self.sigma = float(delta if sigma is None else sigma)
        self.normalise = not math.isclose(self.sigma, delta, rel_tol=1e-12)
        # offsets j (relative to floor(d / delta)) of the centres a kernel of half-width sigma can reach
        reach = math.ceil(self.sigma / delta - 1e-9)
        self.register_buffer("offsets", torch.arange(1 - reach, reach + 1), persistent=False)
        self.last_stats: dict[str, float | int] = {}

    def extra_repr(self) -> str:
        return f"bins={self.bins}, sigma={self.sigma:g}"

    def _positives(self, n: int, labels: Tensor | None, pos_mask: Tensor | None, device: torch.device) -> Tensor:
        if (labels is None) == (pos_mask is None):
            raise ValueError("FastAPLoss: pass exactly one of labels (B,) or pos_mask (B, B)")
        if labels is not None:
            if labels.shape != (n,):
                raise ValueError(f"FastAPLoss: labels have shape {tuple(labels.shape)}, expected ({n},)")
            pos = labels.to(device)[:, None] == labels.to(device)[None, :]
        else:
            assert pos_mask is not None
            if pos_mask.shape != (n, n) or pos_mask.dtype != torch.bool:
                raise ValueError(f"FastAPLoss: pos_mask is {tuple(pos_mask.shape)} {pos_mask.dtype}, "
                                 f"expected ({n}, {n}) torch.bool")
            pos = pos_mask.to(device).clone()
        pos.fill_diagonal_(False)
        return pos

    def forward(self, embeddings: Tensor, labels: Tensor | None = None, pos_mask: Tensor | None = None) -> Tensor:
        if embeddings.dim() != 2:
            raise ValueError(f"FastAPLoss: embeddings have shape {tuple(embeddings.shape)}, expected (B, D)")
        pos = self._positives(embeddings.shape[0], labels, pos_mask, embeddings.device)
        # distances and histograms in float32 at least, also under mixed precision (bins of 0.04 need it)
        with torch.autocast(embeddings.device.type, enabled=False):
            return self._loss(embeddings.to(torch.promote_types(embeddings.dtype, torch.float32)), pos)

    def _loss(self, embeddings: Tensor, pos: Tensor) -> Tensor:
        n, nb = embeddings.shape[0], self.bins + 1
        x = F.normalize(embeddings, dim=1)
        d = (2.0 - 2.0 * (x @ x.T)).clamp(0.0, D_MAX)  # (B, B) squared distances
        # soft assignment of each pair to the centres its kernel reaches: (B, B, J)
        k = torch.floor(d.detach() / self.delta).long()[..., None] + self.offsets.to(d.device)
        valid = (k >= 0) & (k < nb)
        k = k.clamp(0, nb - 1)
        w = F.relu(1.0 - (d[..., None] - k.to(d.dtype) * self.delta).abs() / self.sigma)
        if self.normalise:
            w = normalise_pair_weights(w * valid)
        # one scatter into [positives | negatives | dropped (self pair, centre out of range)] histograms
        group = torch.where(pos, 0, 1)
        group.fill_diagonal_(2)
        idx = k + nb * torch.where(valid, group[..., None], 2)
        hist = d.new_zeros(n, 3 * nb).scatter_add(1, idx.reshape(n, -1), w.reshape(n, -1))
        h_pos = hist[:, :nb]
        h_all = h_pos + hist[:, nb : 2 * nb]
        cum_pos, cum_all = h_pos.cumsum(1), h_all.cumsum(1)
        safe = torch.where(cum_all > 0, cum_all, torch.ones_like(cum_all))
        n_pos = pos.sum(1)
        has_pos = n_pos > 0
        fastap = (h_pos * cum_pos / safe).sum(1) / n_pos.clamp_min(1).to(d.dtype)  # (B,)
        n_valid = has_pos.sum()
        mean = (fastap * has_pos).sum() / n_valid.clamp_min(1)  # no boolean indexing: no device sync
        with torch.no_grad():  # one device-to-host transfer for every statistic and the range check
            empty = (h_all.sum(0) == 0).sum()
            lo = torch.where(has_pos, fastap, math.inf).min()
            hi = torch.where(has_pos, fastap, -math.inf).max()
            s = torch.stack([n_valid.to(d.dtype), empty.to(d.dtype), lo, hi, mean]).tolist()
        n_valid_i = int(s[0])
        self.last_stats = {"n_queries": n, "n_no_positive": n - n_valid_i, "n_empty_bins": int(s[1]),
                           "fastap_mean": float(s[4])}
        if n_valid_i == 0:
            raise FastAPNoPositiveError(
                f"FastAPLoss: no query of the batch of {n} has a positive (every label / pos_mask row is "
                "alone): build the train DataLoader with batch_sampler=MPerClassBatchSampler(labels, m >= 2, "
                "batch_size) (retrieval config: sampler MPerClassBatches, positives: {use_labels: true}) so every "
                "batch holds m samples per class (F39)")
        if s[2] < -RANGE_TOL or s[3] > 1.0 + RANGE_TOL:
            bad = s[3] if s[3] > 1.0 + RANGE_TOL else s[2]
            raise FastAPRangeError(
                f"FastAPLoss: a query's FastAP is {bad:.6g}, outside [0, 1] (bins = {self.bins}, "
                f"sigma = {self.sigma:g}, bin spacing {self.delta:g}): each pair must add total weight 1 to the "
                "histogram (F20)")
        return 1.0 - mean
