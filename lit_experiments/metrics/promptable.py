"""Promptable (concept) segmentation metrics with SA-Co definitions (F26).

Unit = one (image, prompt) pair. A unit is *positive* when its ground truth has at least one mask and
*negative* when it has none (a negative prompt, or an image with no object at all). Only predictions
with ``score >= score_threshold`` (0.5) exist for every metric below; float masks are binarised at
``mask_threshold`` (0.5, i.e. pass probabilities, not logits).

Per unit (:func:`unit_stats`):

* image-level decision: predicted present = at least one kept prediction; GT present = positive unit.
* instance matching, for each IoU threshold ``tau`` in 0.50, 0.55, ..., 0.95: Hungarian assignment
  (``scipy.optimize.linear_sum_assignment``, maximising total IoU) between kept predictions and GT
  masks on the mask-IoU matrix with entries below ``tau`` set to 0; matched pairs with IoU >= tau are
  TP, other predictions FP, other GT masks FN.
* semantic IoU: IoU of the union of kept predicted masks with the union of GT masks.

Aggregates (:func:`promptable_metrics` and the single functions):

* ``presence_*``: image-level binary classification over all units. TP = positive unit with a
  prediction, FP = negative unit with a prediction, TN = negative unit without, FN = positive unit
  without. A negative unit with no prediction is a *correct* TN (the F26 bug scored it as a failure);
  precision / recall / F1 are about the "present" class and TNs do not enter them, so they are
  complemented by ``presence_accuracy`` and ``il_mcc``.
* ``il_mcc``: Matthews correlation of those four counts.
* ``pmf1``: positive micro F1 = 2 TP / (2 TP + FP + FN) with TP / FP / FN summed over *positive units
  only* (FPs on negative units count only at image level), averaged over the IoU thresholds;
  ``pmf1@0.5`` and ``pmf1@0.75`` at single thresholds.
* ``cgf1`` = ``pmf1 * il_mcc`` (a fraction; SA-Co reports 100x this).
* ``miou``: mean over units of the semantic IoU; for a negative unit the IoU is 1.0 when nothing is
  predicted and 0.0 otherwise (the gRefCOCO "no-target" convention); ``miou_pos``: positive units only.
* Undefined values (a zero denominator: no positive unit, no predicted-present unit, a constant
  decision for MCC) are ``NaN``, never 0, so an empty evaluation cannot pass for a bad score. Counts
  (``n_units``, ``n_positive``, ``n_negative``, ``presence_tp`` ...) are returned alongside.

``prompt_sensitivity``: for one image and P different prompts (e.g. paraphrases of one concept) the
mean over prompt pairs of ``1 - IoU`` of their predicted masks (two empty masks have IoU 1); averaged
over images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics import Metric

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


@dataclass
class UnitStats:
    """Per-unit statistics of U units (T IoU thresholds)."""

    has_gt: Tensor  # (U,) bool
    has_pred: Tensor  # (U,) bool
    tp: Tensor  # (U, T) int64
    fp: Tensor  # (U, T) int64
    fn: Tensor  # (U, T) int64
    iou: Tensor  # (U,) float64 semantic IoU (negative-unit convention applied)
    iou_thresholds: tuple[float, ...] = IOU_THRESHOLDS

    @staticmethod
    def cat(items: Sequence[UnitStats]) -> UnitStats:
        """Concatenate several ``UnitStats`` (same thresholds)."""
        if not items:
            raise ValueError("no units to concatenate")
        f = [items[0].iou_thresholds == it.iou_thresholds for it in items]
        if not all(f):
            raise ValueError("UnitStats with different iou_thresholds")
        return UnitStats(*(torch.cat([getattr(it, k) for it in items]) for k in ("has_gt", "has_pred", "tp", "fp", "fn", "iou")),
                         iou_thresholds=items[0].iou_thresholds)


def _binary(masks: Tensor, name: str, mask_threshold: float) -> Tensor:
    if masks.dim() < 2:
        raise ValueError(f"{name} must be (N, *spatial) masks, got shape {tuple(masks.shape)}")
    m = masks > mask_threshold if masks.is_floating_point() else masks.bool()
    return m.reshape(m.shape[0], math.prod(m.shape[1:]))


def _iou_matrix(a: Tensor, b: Tensor) -> Tensor:
    """IoU between every row of ``a`` (N, P) and of ``b`` (M, P) boolean masks, float64 (N, M)."""
    af, bf = a.double(), b.double()
    inter = af @ bf.t()
    union = af.sum(1, keepdim=True) + bf.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))


def unit_stats(
    pred_masks: Tensor,
    pred_scores: Tensor,
    gt_masks: Tensor,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> UnitStats:
    """Statistics of one unit: ``pred_masks`` (P, *spatial) with ``pred_scores`` (P,), ``gt_masks``
    (G, *spatial); P or G may be 0. See the module docstring."""
    if pred_scores.shape != (pred_masks.shape[0],):
        raise ValueError(f"pred_scores must be ({pred_masks.shape[0]},) for pred_masks {tuple(pred_masks.shape)}, "
                         f"got {tuple(pred_scores.shape)}")
    if pred_masks.shape[1:] != gt_masks.shape[1:]:
        raise ValueError(f"spatial shapes differ: pred_masks {tuple(pred_masks.shape)}, gt_masks {tuple(gt_masks.shape)}")
    pm = _binary(pred_masks, "pred_masks", mask_threshold)[pred_scores >= score_threshold]
    gm = _binary(gt_masks, "gt_masks", mask_threshold)
    n_p, n_g = pm.shape[0], gm.shape[0]
    taus = tuple(float(x) for x in iou_thresholds)
    tp = torch.zeros(len(taus), dtype=torch.long)
    if n_p and n_g:
        iou = _iou_matrix(pm, gm).cpu().numpy()
        for i, tau in enumerate(taus):
            w = np.where(iou >= tau, iou, 0.0)
            rows, cols = linear_sum_assignment(w, maximize=True)
            tp[i] = int((w[rows, cols] >= tau).sum())
    pu, gu = pm.any(0), gm.any(0)
    union = int((pu | gu).sum())
    if n_g == 0:
        sem = 1.0 if n_p == 0 or not bool(pu.any()) else 0.0
    else:
        sem = int((pu & gu).sum()) / union if union else 1.0
    return UnitStats(
        has_gt=torch.tensor([n_g > 0]),
        has_pred=torch.tensor([n_p > 0]),
        tp=tp[None],
        fp=(n_p - tp)[None],
        fn=(n_g - tp)[None],
        iou=torch.tensor([sem], dtype=torch.float64),
        iou_thresholds=taus,
    )


def _div(num: float, den: float) -> float:
    return num / den if den else math.nan


def presence_counts(stats: UnitStats) -> dict[str, int]:
    """Image-level TP / FP / TN / FN over units."""
    g, p = stats.has_gt.bool(), stats.has_pred.bool()
    return {"tp": int((g & p).sum()), "fp": int((~g & p).sum()), "tn": int((~g & ~p).sum()), "fn": int((g & ~p).sum())}


def presence_scores(stats: UnitStats) -> dict[str, float]:
    """Presence precision / recall / F1 / accuracy (NaN when undefined)."""
    c = presence_counts(stats)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    return {
        "presence_precision": _div(tp, tp + fp),
        "presence_recall": _div(tp, tp + fn),
        "presence_f1": _div(2 * tp, 2 * tp + fp + fn),
        "presence_accuracy": _div(tp + tn, tp + fp + tn + fn),
    }


def il_mcc(stats: UnitStats) -> float:
    """Image-level Matthews correlation coefficient (NaN when a marginal is empty)."""
    c = presence_counts(stats)
    tp, fp, tn, fn = (float(c[k]) for k in ("tp", "fp", "tn", "fn"))
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return _div(tp * tn - fp * fn, den)


def pmf1_per_threshold(stats: UnitStats) -> Tensor:
    """Positive micro F1 at each IoU threshold (float64 (T,); NaN without positive units)."""
    pos = stats.has_gt.bool()
    tp, fp, fn = (x[pos].sum(0).double() for x in (stats.tp, stats.fp, stats.fn))
    den = 2 * tp + fp + fn
    return torch.where(den > 0, 2 * tp / den.clamp_min(1), torch.full_like(den, math.nan))


def pmf1(stats: UnitStats) -> float:
    """Positive micro F1 averaged over the IoU thresholds."""
    return float(pmf1_per_threshold(stats).mean())


def cgf1(stats: UnitStats) -> float:
    """Classification-gated F1 = pmF1 * IL_MCC (fraction, not percent)."""
    return pmf1(stats) * il_mcc(stats)


def miou(stats: UnitStats, positives_only: bool = False) -> float:
    """Mean semantic IoU over units (negative units: 1 if nothing predicted, else 0)."""
    v = stats.iou[stats.has_gt.bool()] if positives_only else stats.iou
    return float(v.mean()) if v.numel() else math.nan


def promptable_metrics(stats: UnitStats) -> dict[str, float]:
    """Every aggregate of the module docstring in one flat dict (plus counts)."""
    per_tau = pmf1_per_threshold(stats)
    taus = stats.iou_thresholds
    out: dict[str, float] = {"miou": miou(stats), "miou_pos": miou(stats, positives_only=True)}
    out.update(presence_scores(stats))
    out["il_mcc"] = il_mcc(stats)
    out["pmf1"] = float(per_tau.mean())
    for t in (0.5, 0.75):
        if t in taus:
            out[f"pmf1@{t}"] = float(per_tau[taus.index(t)])
    out["cgf1"] = out["pmf1"] * out["il_mcc"]
    out.update({f"presence_{k}": v for k, v in presence_counts(stats).items()})
    pos = int(stats.has_gt.sum())
    out.update({"n_units": int(stats.has_gt.numel()), "n_positive": pos, "n_negative": int(stats.has_gt.numel()) - pos})
    return out


def prompt_sensitivity(masks: Tensor | Sequence[Tensor], mask_threshold: float = 0.5) -> float:
    """Mean pairwise ``1 - IoU`` between the masks one image gets for different prompts.

    Args:
        masks: ``(P, *spatial)`` for one image (P >= 2 prompts; each mask is that prompt's union of kept
            predictions), or a sequence of such tensors, one per image (images are averaged).
    """
    items = [masks] if isinstance(masks, Tensor) else list(masks)
    vals = []
    for m in items:
        b = _binary(m, "masks", mask_threshold)
        if b.shape[0] < 2:
            raise ValueError(f"prompt_sensitivity needs >= 2 prompts per image, got masks of shape {tuple(m.shape)}")
        iou = _iou_matrix(b, b)
        empty = ~b.any(1)
        iou = torch.where(empty[:, None] & empty[None, :], torch.ones_like(iou), iou)
        iu = torch.triu_indices(b.shape[0], b.shape[0], offset=1)
        vals.append(float((1 - iou[iu[0], iu[1]]).mean()))
    return float(np.mean(vals)) if vals else math.nan


class PromptableSegMetric(Metric):
    """Accumulates :class:`UnitStats` per (image, prompt) unit; DDP-synced; :meth:`compute` returns
    :func:`promptable_metrics` as float64 tensors."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, score_threshold: float = 0.5, mask_threshold: float = 0.5,
                 iou_thresholds: Sequence[float] = IOU_THRESHOLDS, **kwargs) -> None:
        super().__init__(**kwargs)
        self.score_threshold, self.mask_threshold = score_threshold, mask_threshold
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        for name in ("has_gt", "has_pred", "tp", "fp", "fn", "iou"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, pred_masks: Sequence[Tensor], pred_scores: Sequence[Tensor], gt_masks: Sequence[Tensor]) -> None:
        """One list entry per unit: ``pred_masks[i]`` (P_i, H, W), ``pred_scores[i]`` (P_i,), ``gt_masks[i]`` (G_i, H, W)."""
        if not (len(pred_masks) == len(pred_scores) == len(gt_masks)):
            raise ValueError(f"pred_masks, pred_scores, gt_masks lengths differ: {len(pred_masks)}, "
                             f"{len(pred_scores)}, {len(gt_masks)}")
        for pm, ps, gm in zip(pred_masks, pred_scores, gt_masks):
            st = unit_stats(pm, ps, gm, self.score_threshold, self.mask_threshold, self.iou_thresholds)
            self.has_gt.append(st.has_gt.long().to(self.device))
            self.has_pred.append(st.has_pred.long().to(self.device))
            self.tp.append(st.tp.to(self.device))
            self.fp.append(st.fp.to(self.device))
            self.fn.append(st.fn.to(self.device))
            self.iou.append(st.iou.to(self.device))

    def stats(self) -> UnitStats:
        """The accumulated (and, inside :meth:`compute`, synced) unit statistics."""
        def cat(x: Tensor | list[Tensor]) -> Tensor:
            return torch.cat(x) if isinstance(x, list) else x
        t = len(self.iou_thresholds)
        return UnitStats(cat(self.has_gt).bool(), cat(self.has_pred).bool(), cat(self.tp).reshape(-1, t),
                         cat(self.fp).reshape(-1, t), cat(self.fn).reshape(-1, t), cat(self.iou).double(),
                         self.iou_thresholds)

    def compute(self) -> dict[str, Tensor]:
        if isinstance(self.iou, list) and not self.iou:
            raise RuntimeError("PromptableSegMetric.compute() called before any update()")
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in promptable_metrics(self.stats()).items()}
