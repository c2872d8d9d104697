"""Calibration of the distill study's scores (LESSONS F42: the student "finds nothing" at the teacher's 0.5).

A student's scores can be calibrated differently from its teacher's (EfficientSAM3 #45: ~0.5 lower), so a fixed
threshold of 0.5 silently turns a usable student into one that predicts nothing. This module measures that and
fits the fix on *validation* data only:

* :func:`reliability_bins` / :func:`ece`: expected calibration error of the positive-class probability,
  ``sum_b |B_b| / n * |mean(labels in b) - mean(probs in b)|`` over ``n_bins`` equal-width bins of [0, 1]
  (bin ``b`` = ``[b / n_bins, (b + 1) / n_bins)``, the last bin closed at 1.0). This is torchmetrics'
  ``BinaryCalibrationError(norm="l1")`` except that torchmetrics puts a probability of exactly 1.0 in a bin of
  its own; here it joins the last bin.
* :func:`fit_temperature`: the ``T > 0`` minimising the NLL of ``sigmoid(logit / T)`` (scipy
  ``minimize_scalar`` on ``log T`` in ``[log 0.01, log 100]``).
* :func:`fit_threshold`: the score threshold maximising F1 (or MCC) of ``probs >= threshold``.
* :func:`calibration_records`: per unit the query and presence logits with their labels. A query's label is 1
  when it is matched (Hungarian on mask IoU, scipy) to a ground-truth mask with IoU >= ``iou_threshold``; a
  unit's presence label is 1 when it has ground truth (the image-level class of SA-Co, F26).
* :func:`fit_calibration`: one temperature for the query logits, one for the presence logits, then the threshold
  of the calibrated unit score ``max_q sigmoid(logit_q / T) * sigmoid(presence / Tp)`` maximising the
  image-level presence F1 (the decision the F42 student got wrong). A fit needs both classes; otherwise the
  temperature stays 1.0 and :attr:`Calibration.notes` says why (as it does when a temperature ends at a bound).
* :class:`Calibration`: ``temperature``, ``presence_temperature``, ``threshold``, ``metric``, ``fitted_on``,
  ``n``; ``state_dict`` / ``load_state_dict`` so the module stores it with the checkpoint.
* :func:`reliability_plot`: one PNG with every model's reliability curve, ECE in the legend, and a note under it
  (:func:`ece_note`) when calibration raised an ECE (fitted on validation by NLL and presence F1, not ECE on test).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment, minimize_scalar
from torch import Tensor

from .matching import presence_of

ThresholdMetric = Literal["f1", "mcc"]
TEMPERATURE_BOUNDS: tuple[float, float] = (0.01, 100.0)


def _flat(x: Tensor | np.ndarray | Sequence[float], name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach().cpu().double().reshape(-1)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains non-finite values")
    return t


def _pair(probs: Any, labels: Any, name: str = "probs") -> tuple[Tensor, Tensor]:
    p, y = _flat(probs, name), _flat(labels, "labels")
    if p.shape != y.shape:
        raise ValueError(f"{name} ({p.numel()} values) and labels ({y.numel()} values) differ in length")
    if p.numel() == 0:
        raise ValueError(f"{name} is empty: nothing to calibrate")
    if not ((y == 0) | (y == 1)).all():
        raise ValueError("labels must be 0 or 1")
    return p, y


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, Tensor]:
    """Per equal-width bin: ``count``, ``confidence`` (mean prob) and ``frequency`` (mean label), float64
    ``(n_bins,)``; empty bins have count 0 and NaN means. See the module docstring for the bin edges."""
    p, y = _pair(probs, labels)
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins}; expected >= 1")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probs must lie in [0, 1] (pass probabilities, not logits)")
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    idx = (torch.bucketize(p, edges, right=True) - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, torch.ones_like(p))
    conf = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, p) / count
    freq = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, y) / count
    return {"count": count, "confidence": conf, "frequency": freq, "edges": edges}


def ece(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error (L1, equal-width bins) of positive-class probabilities ``probs`` against
    binary ``labels``."""
    b = reliability_bins(probs, labels, n_bins)
    keep = b["count"] > 0
    w = b["count"][keep] / b["count"].sum()
    return float((w * (b["frequency"][keep] - b["confidence"][keep]).abs()).sum())


def _nll(logits: Tensor, labels: Tensor, temperature: float) -> float:
    return float(F.binary_cross_entropy_with_logits(logits / temperature, labels))


def fit_temperature(logits: Any, labels: Any) -> float:
    """The temperature ``T`` in :data:`TEMPERATURE_BOUNDS` minimising the mean NLL of ``sigmoid(logits / T)``.

    Raises ``ValueError`` when ``labels`` hold one class only (the NLL then decreases without bound)."""
    z, y = _pair(logits, labels, "logits")
    if y.min() == y.max():
        raise ValueError(f"fit_temperature needs both classes; all {y.numel()} labels are {int(y[0])}")
    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    res = minimize_scalar(lambda s: _nll(z, y, math.exp(s)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-5})
    return float(math.exp(res.x))


def _counts_at_thresholds(probs: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
    """Candidate thresholds (the distinct probs, descending) with TP / FP / FN / TN of ``probs >= t``."""
    order = torch.argsort(probs, descending=True, stable=True)
    p, y = probs[order], labels[order]
    last = torch.ones_like(p, dtype=torch.bool)
    last[:-1] = p[1:] != p[:-1]  # the last position of each run of equal values
    tp = torch.cumsum(y, 0)[last]
    fp = torch.cumsum(1 - y, 0)[last]
    pos = labels.sum()
    return p[last], tp, fp, pos - tp, (labels.numel() - pos) - fp


def fit_threshold(probs: Any, labels: Any, metric: ThresholdMetric = "f1") -> float:
    """The threshold maximising ``metric`` ("f1" of the positive class or "mcc") of ``probs >= threshold``.

    Candidates are the distinct values of ``probs``; the returned threshold is the midpoint between the best
    candidate and the next lower distinct value (the best candidate itself when it is the lowest), so the same
    decisions are made on these data and a value a hair off does not flip. Ties go to the higher threshold."""
    p, y = _pair(probs, labels)
    if metric not in ("f1", "mcc"):
        raise ValueError(f"fit_threshold: metric={metric!r}; expected 'f1' or 'mcc'")
    t, tp, fp, fn, tn = _counts_at_thresholds(p, y)
    if metric == "f1":
        den = 2 * tp + fp + fn
        score = torch.where(den > 0, 2 * tp / den.clamp_min(1), torch.zeros_like(den))
    else:
        den = ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)).sqrt()
        score = torch.where(den > 0, (tp * tn - fp * fn) / den.clamp_min(1e-300), torch.zeros_like(den))
    best = int(torch.argmax(score))  # first maximum = highest threshold among ties
    return float((t[best] + t[best + 1]) / 2) if best + 1 < len(t) else float(t[best])


@dataclass
class Calibration:
    """Score calibration fitted on validation data and stored with the checkpoint (F42).

    ``temperature`` divides the query logits and ``presence_temperature`` the presence logits before the
    sigmoid; ``threshold`` is the score threshold of the calibrated unit score (see :func:`fit_calibration`).
    The defaults (1, 1, 0.5, ``fitted_on=""``, ``n=0``) are the uncalibrated SAM3 decision."""

    temperature: float = 1.0
    presence_temperature: float = 1.0
    threshold: float = 0.5
    metric: str = "f1"
    fitted_on: str = ""
    n: int = 0
    notes: str = ""

    @property
    def fitted(self) -> bool:
        """Whether this calibration was fitted on data (``n > 0``)."""
        return self.n > 0

    def postprocess_kwargs(self) -> dict[str, float]:
        """Keyword arguments of :func:`~.evaluation.postprocess` that apply this calibration."""
        return {"score_threshold": self.threshold, "temperature": self.temperature,
                "presence_temperature": self.presence_temperature}

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values (a checkpoint entry)."""
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; unknown or missing keys are an error naming them."""
        names = {f.name for f in fields(self)}
        unknown, missing = sorted(set(state) - names), sorted(names - set(state))
        if unknown or missing:
            raise KeyError(f"Calibration.load_state_dict: unknown keys {unknown}, missing keys {missing}")
        for key in ("temperature", "presence_temperature"):
            if not float(state[key]) > 0:
                raise ValueError(f"Calibration.load_state_dict: {key}={state[key]!r}; expected > 0")
        for f in fields(self):
            setattr(self, f.name, type(getattr(self, f.name))(state[f.name]))


def _mask_iou(a: Tensor, b: Tensor) -> Tensor:
    af, bf = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    inter = af @ bf.t()
    union = af.sum(1, keepdim=True) + bf.sum(1)[None] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))


@torch.no_grad()
def calibration_records(outputs: Mapping[str, Tensor | None], targets: Sequence[Mapping[str, Tensor] | Tensor],
                        iou_threshold: float = 0.5, mask_threshold: float = 0.5) -> dict[str, Tensor]:
    """Logits and labels of one batch for calibration (see the module docstring).

    ``outputs``: the output contract (B units); ``targets[b]``: ``{"masks": (n, H, W)}`` or the masks tensor.
    Predicted mask logits are resized bilinearly to the target size and binarised at ``mask_threshold``.
    Returns ``query_logits`` / ``query_labels`` (B, Q) and ``presence_logits`` / ``presence_labels`` (B,)
    (``presence_logits`` absent when the model has no presence head). Concatenate batches with
    :func:`cat_records`."""
    masks, logits = outputs["pred_masks"], outputs["pred_logits"]
    if len(targets) != logits.shape[0]:
        raise ValueError(f"calibration_records: {len(targets)} targets for a batch of {logits.shape[0]} units")
    labels = torch.zeros(logits.shape, dtype=torch.float64)
    has_gt = torch.zeros(logits.shape[0], dtype=torch.float64)
    for b, tgt in enumerate(targets):
        gt = (tgt["masks"] if isinstance(tgt, Mapping) else tgt).cpu()
        if gt.dim() != 3:
            raise ValueError(f"calibration_records: target {b} masks {tuple(gt.shape)}; expected (n, H, W)")
        if gt.shape[0] == 0:
            continue
        has_gt[b] = 1.0
        m = masks[b].float()
        if m.shape[-2:] != gt.shape[-2:]:
            m = F.interpolate(m[None], size=gt.shape[-2:], mode="bilinear", align_corners=False)[0]
        iou = _mask_iou(m.sigmoid().cpu() > mask_threshold, gt > 0.5 if gt.is_floating_point() else gt.bool())
        rows, cols = linear_sum_assignment(iou.numpy(), maximize=True)
        ok = iou[rows, cols] >= iou_threshold
        labels[b, torch.as_tensor(rows)[ok]] = 1.0
    out = {"query_logits": logits.detach().cpu().double(), "query_labels": labels, "presence_labels": has_gt}
    presence = presence_of(outputs)
    if presence is not None:
        out["presence_logits"] = presence.detach().cpu().double()
    return out


def cat_records(records: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate :func:`calibration_records` of several batches along the unit dim."""
    if not records:
        raise ValueError("cat_records: no records")
    keys = set(records[0])
    if any(set(r) != keys for r in records):
        raise ValueError("cat_records: batches differ in keys (presence head in some batches only)")
    return {k: torch.cat([r[k] for r in records]) for k in sorted(keys)}


def unit_scores(records: Mapping[str, Tensor], temperature: float = 1.0, presence_temperature: float = 1.0) -> Tensor:
    """(U,) unit score ``max_q sigmoid(logit_q / T) * sigmoid(presence / Tp)`` (no presence head: factor 1)."""
    q = (records["query_logits"] / temperature).sigmoid().amax(1)
    pres = records.get("presence_logits")
    return q if pres is None else q * (pres / presence_temperature).sigmoid()


def _temperature_or_note(logits: Tensor, labels: Tensor, what: str, notes: list[str]) -> float:
    if labels.min() == labels.max():
        notes.append(f"{what} temperature kept at 1.0: all {labels.numel()} labels are {int(labels[0])}")
        return 1.0
    t = fit_temperature(logits, labels)
    for side, bound in zip(("lower", "upper"), TEMPERATURE_BOUNDS):
        if abs(math.log(t / bound)) < 1e-3:
            notes.append(f"{what} temperature at the {side} bound {bound} (classes separable or scores uninformative)")
    return t


def fit_calibration(records: Mapping[str, Tensor], metric: ThresholdMetric = "f1",
                    fitted_on: str = "validation") -> Calibration:
    """Fit a :class:`Calibration` on ``records`` (:func:`cat_records` of VALIDATION batches; see the module
    docstring). ``fitted_on`` names those data in the stored calibration."""
    notes: list[str] = []
    t = _temperature_or_note(records["query_logits"].reshape(-1), records["query_labels"].reshape(-1), "query", notes)
    tp = 1.0
    if "presence_logits" in records:
        tp = _temperature_or_note(records["presence_logits"], records["presence_labels"], "presence", notes)
    scores = unit_scores(records, t, tp)
    threshold = fit_threshold(scores, records["presence_labels"], metric)
    return Calibration(temperature=t, presence_temperature=tp, threshold=threshold, metric=metric,
                       fitted_on=fitted_on, n=int(scores.numel()), notes="; ".join(notes))


def ece_note(eces: Mapping[str, float]) -> str:
    """A sentence for each model whose ECE at its calibration (``eces[who]``) is above its ECE at T = 1
    (``eces[who + "_raw"]``): "calibration raised the student's ECE from 0.253 to 0.303 on this split (fitted on
    validation, scored on test)"; empty when calibration raised none."""
    raised = [f"the {who}'s ECE from {eces[who + '_raw']:.3f} to {eces[who]:.3f}" for who in eces
              if not who.endswith("_raw") and who + "_raw" in eces and eces[who] > eces[who + "_raw"]]
    if not raised:
        return ""
    return (f"calibration raised {' and '.join(raised)} on this split (temperatures fitted by NLL and the threshold by "
            "presence F1 on validation, scored on test)")


def reliability_plot(probs_by_model: Mapping[str, tuple[Any, Any]], path: str | Path, n_bins: int = 15,
                     title: str = "Reliability", note: str = "") -> Path:
    """One PNG: per model (``name -> (probs, labels)``) the observed frequency against the mean confidence of
    each non-empty bin, with the diagonal and each model's ECE in the legend; ``note`` (e.g. :func:`ece_note`)
    printed under the axes. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not probs_by_model:
        raise ValueError("reliability_plot: no models to plot")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plt.figure(figsize=(4.5, 6.2), dpi=100)
    ax = fig.add_axes((0.14, 0.42, 0.8, 0.52))  # the legend and the note go under the axes, never over a curve
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect")
    for name, (probs, labels) in probs_by_model.items():
        b = reliability_bins(probs, labels, n_bins)
        keep = b["count"] > 0
        ax.plot(b["confidence"][keep].numpy(), b["frequency"][keep].numpy(), marker="o", ms=3,
                label=f"{name} (ECE {ece(probs, labels, n_bins):.3f}, n={int(b['count'].sum())})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="mean predicted probability", ylabel="observed frequency",
           title=title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.45, -0.13), fontsize=8, frameon=False)
    if note:
        import textwrap

        fig.text(0.03, 0.015, textwrap.fill(note, 72), fontsize=7.5, color="darkred", va="bottom")
    fig.savefig(path)
    plt.close(fig)
    return path
