"""Multi-label classification metrics checked against scikit-learn (F30).

Conventions:

* ``scores`` (N, C) are any real numbers, higher = more likely (probabilities or logits). Ranking
  metrics (``map``, ``auc_macro``, ``lrap``) only use their order; ``thresholds`` are applied to the
  scores *as given* (predict 1 when ``score >= threshold``), so pass probabilities with a 0.5 threshold.
* AP, AUC and LRAP are computed here, exactly and in float64, from one sort per column (row for
  LRAP) with tie groups: torchmetrics' functional versions agree with sklearn only to float32
  precision (~1e-8) and apply an automatic sigmoid to scores outside [0, 1], which saturates large
  logits into ties. The thresholded metrics are plain counts.
* ``targets`` (N, C) are {0, 1}.
* ``map``: mean over classes of sklearn-style AP (``average_precision_score``); classes without a
  positive have no AP and are excluded and counted in ``map_excluded_classes`` (sklearn would average
  in a 0 for them).
* ``auc_macro``: mean per-class ROC AUC over classes with at least one positive *and* one negative;
  the rest are excluded and counted in ``auc_excluded_classes`` (F30; sklearn raises, torchmetrics
  scores such a class 0). ``NaN`` when no class qualifies.
* ``f1_macro`` / ``precision_macro`` / ``recall_macro``: unweighted means over *all* classes, with
  ``zero_division=0`` exactly as sklearn (a class with no predicted and no true positive scores 0).
* ``hamming``: fraction of wrong (sample, class) decisions (``sklearn.metrics.hamming_loss``).
* ``lrap``: ``sklearn.metrics.label_ranking_average_precision_score`` (samples with no or all labels
  score 1, as sklearn).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


def _check(scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    if scores.dim() != 2 or targets.shape != scores.shape:
        raise ValueError(f"scores and targets must both be (N, C): got {tuple(scores.shape)} and {tuple(targets.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    t = targets.long()
    if not bool(((t == 0) | (t == 1)).all()):
        raise ValueError("targets must be 0/1")
    return scores, t


def _ap_auc(scores: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class AP and ROC AUC in float64, exact with ties (sklearn semantics), one sort per column.

    AP: sum over positives of the precision at the end of the positive's tie group / #positives.
    AUC: Mann-Whitney, a tied (positive, negative) pair counts 1/2. Undefined classes give NaN.
    (torchmetrics' versions agree only to float32 precision.)
    """
    n = scores.shape[0]
    vals, order = torch.sort(scores, dim=0, descending=True)
    rel = t.gather(0, order).double()
    cum, neg_cum = rel.cumsum(0), (1 - rel).cumsum(0)
    pos = torch.arange(n, device=scores.device)[:, None].expand_as(vals)
    is_last = torch.ones_like(vals, dtype=torch.bool)
    is_last[:-1] = vals[1:] != vals[:-1]
    end = torch.where(is_last, pos, torch.full_like(pos, n)).flip(0).cummin(0).values.flip(0)
    is_first = torch.ones_like(is_last)
    is_first[1:] = is_last[:-1]
    start = torch.where(is_first, pos, torch.full_like(pos, -1)).cummax(0).values
    n_pos, n_neg = cum[-1], neg_cum[-1]
    ap = (cum.gather(0, end) / (end + 1).double() * rel).sum(0) / n_pos
    neg_end = neg_cum.gather(0, end)
    neg_before = torch.where(start > 0, neg_cum.gather(0, (start - 1).clamp_min(0)), torch.zeros_like(neg_end))
    wins = ((n_neg - neg_end) + 0.5 * (neg_end - neg_before)) * rel
    auc = wins.sum(0) / (n_pos * n_neg)
    return ap, auc


def _lrap(scores: Tensor, t: Tensor) -> Tensor:
    """Label ranking AP = per-sample AP over labels (tie groups = sklearn's max rank); a sample with no
    or with every label relevant scores 1, as sklearn."""
    ap, _ = _ap_auc(scores.t(), t.t())
    k = t.sum(1)
    return torch.where((k == 0) | (k == t.shape[1]), torch.ones_like(ap), ap).mean()


def _thresholds(thresholds: float | Tensor, c: int, device: torch.device) -> Tensor:
    th = torch.as_tensor(thresholds, dtype=torch.float64, device=device)
    if th.dim() == 0:
        return th.expand(c)
    if th.shape != (c,):
        raise ValueError(f"thresholds must be a float or a ({c},) tensor, got shape {tuple(th.shape)}")
    return th


def multilabel_metrics(scores: Tensor, targets: Tensor, thresholds: float | Tensor = 0.5) -> dict[str, Tensor | int]:
    """All metrics of the module docstring; float64 scalars plus excluded-class counts (ints)."""
    scores, t = _check(scores, targets)
    n, c = scores.shape
    th = _thresholds(thresholds, c, scores.device)
    pred = (scores.double() >= th).long()
    tp = (pred * t).sum(0).double()
    fp = (pred * (1 - t)).sum(0).double()
    fn = ((1 - pred) * t).sum(0).double()
    zero = torch.zeros_like(tp)
    prec = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), zero)
    rec = torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1), zero)
    f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), zero)
    n_pos = t.sum(0)
    has_pos = n_pos > 0
    both = has_pos & (n_pos < n)
    nan = torch.tensor(math.nan, dtype=torch.float64)
    ap, auc = _ap_auc(scores.double(), t)
    return {
        "map": ap[has_pos].mean() if has_pos.any() else nan,
        "map_excluded_classes": int((~has_pos).sum()),
        "auc_macro": auc[both].mean() if both.any() else nan,
        "auc_excluded_classes": int((~both).sum()),
        "f1_macro": f1.mean(),
        "precision_macro": prec.mean(),
        "recall_macro": rec.mean(),
        "hamming": (pred != t).double().mean(),
        "lrap": _lrap(scores.double(), t),
    }


def tune_thresholds(scores: Tensor, targets: Tensor, default: float = 0.5) -> Tensor:
    """Per-class threshold maximising that class's F1 on (validation) data; float64 ``(C,)``.

    Candidate cuts are between consecutive distinct scores (ties never split). The returned threshold
    is the midpoint between the lowest included and the highest excluded score (the lowest score when
    every sample is included), used as ``score >= threshold``. Among equal best F1 the highest threshold
    wins. Classes without positives (F1 is 0 for every cut) get ``default``.
    """
    scores, t = _check(scores, targets)
    n, c = scores.shape
    s = scores.double()
    vals, order = torch.sort(s, dim=0, descending=True, stable=True)
    tp = t.gather(0, order).cumsum(0).double()  # (N, C) hits among the top i+1
    is_last = torch.ones_like(vals, dtype=torch.bool)
    is_last[:-1] = vals[1:] != vals[:-1]
    k = torch.arange(1, n + 1, dtype=torch.float64, device=s.device)[:, None]
    n_pos = t.sum(0).double()[None, :]
    f1 = torch.where(is_last, 2 * tp / (k + n_pos), torch.full_like(tp, -1.0))
    best = f1.argmax(0)  # first maximum = highest threshold
    cols = torch.arange(c, device=s.device)
    lo = vals[best, cols]
    nxt = vals[(best + 1).clamp_max(n - 1), cols]
    th = torch.where(best + 1 < n, (lo + nxt) / 2, lo)
    th = torch.where(th == nxt, lo, th)  # adjacent floats: midpoint rounds onto the excluded score
    return torch.where(n_pos[0] > 0, th, torch.full_like(th, default))


class MultilabelMetrics(Metric):
    """Accumulates ``scores`` and ``targets`` (all ranks) and returns :func:`multilabel_metrics`."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, thresholds: float | Tensor = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.thresholds = thresholds
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, targets: Tensor) -> None:
        """Add a batch of ``scores`` (N, C) and 0/1 ``targets`` (N, C)."""
        _check(scores, targets)
        self.scores.append(scores.detach().double())
        self.targets.append(targets.detach().long())

    def compute(self) -> dict[str, Tensor | int]:
        if isinstance(self.scores, list) and not self.scores:
            raise RuntimeError("MultilabelMetrics.compute() called before any update()")
        s = torch.cat(self.scores) if isinstance(self.scores, list) else self.scores
        t = torch.cat(self.targets) if isinstance(self.targets, list) else self.targets
        return multilabel_metrics(s, t, self.thresholds)
