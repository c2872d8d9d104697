"""The test-time evaluation of the multi-label study, in one place: thresholds (F41), kNN, floors, per-class table.

* :func:`evaluate_test` (called by ``MultilabelModule.on_test_epoch_end``, the entry): on the rows gathered over
  every rank (``GatheredRows``), the metrics at the stored thresholds (``test/map``, ``test/t05/*``,
  ``test/tuned/*``...), the kNN inference over the training split (``test/knn_map``, ``test/knn_t05/f1_macro``),
  the floors of every headline on the same test images (:func:`add_floors`: :mod:`.floors`, F49 / F52), the
  per-image scores (:func:`save_test_items`, F51) and the per-class table.
* :class:`ThresholdPolicy`: the fixed 0.5 threshold on probabilities and per-class thresholds tuned with
  :func:`lit_experiments.metrics.tune_thresholds` on the fold's *validation* split only. ``evaluate``
  never calls the tuner, and ``fit`` refuses to run once ``evaluate`` has, so test labels cannot reach
  the thresholds (F41). ``state_dict`` stores the thresholds with the run and the checkpoint.
* kNN scores and the product quantiser live in :mod:`.knn`.
* :func:`per_class_table` / :func:`write_per_class`: AP, support, tuned threshold and F1 at both policies
  per class, as rows, a CSV and a bar chart (``matplotlib.figure.Figure``, Agg canvas, no pyplot).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lit_experiments.metrics import multilabel_metrics, tune_thresholds

from .floors import caption_rule_scores, floor_rows, per_image_scores
from .knn import ProductQuantizerIndex, knn_scores

if TYPE_CHECKING:
    from .module import MultilabelModule

FIXED_THRESHOLD = 0.5
PREFIX = {"fixed": "t05/", "tuned": "tuned/"}
# Metrics that depend on the threshold get a policy prefix; the ranking metrics are reported once.
THRESHOLDED = ("f1_macro", "precision_macro", "recall_macro", "hamming")


def _probabilities(scores: Tensor, name: str) -> Tensor:
    if scores.dim() != 2:
        raise ValueError(f"{name} must be (N, C), got shape {tuple(scores.shape)}")
    if scores.numel() and (scores.min() < 0 or scores.max() > 1):
        raise ValueError(
            f"{name} must be probabilities in [0, 1] (apply torch.sigmoid to logits): "
            f"got min {float(scores.min()):.4g}, max {float(scores.max()):.4g}"
        )
    return scores


class ThresholdPolicy:
    """Two threshold policies for one fold: ``"fixed"`` (0.5 on probabilities) and ``"tuned"``.

    Use one instance per fold: ``fit(val_scores, val_targets)`` on the validation split, then
    ``evaluate(test_scores, test_targets)`` on the test split. Scores are probabilities; on DDP pass the
    scores gathered over all ranks (e.g. the states of a ``MultilabelMetrics``).
    """

    def __init__(self) -> None:
        self._tuned: Tensor | None = None
        self._n_fit = 0
        self._evaluated = False

    @property
    def fitted(self) -> bool:
        return self._tuned is not None

    def fit(self, val_scores: Tensor, val_targets: Tensor) -> ThresholdPolicy:
        """Tune per-class thresholds on the validation split (classes without positives keep 0.5)."""
        if self._evaluated:
            raise RuntimeError(
                "ThresholdPolicy.fit() after evaluate(): thresholds must be tuned before any test labels "
                "are seen (F41); use a fresh ThresholdPolicy per fold"
            )
        _probabilities(val_scores, "val_scores")
        self._tuned = tune_thresholds(val_scores.detach(), val_targets.detach(), default=FIXED_THRESHOLD).cpu()
        self._n_fit = int(val_scores.shape[0])
        return self

    def thresholds(self, policy: str = "tuned") -> Tensor:
        """float64 ``(C,)`` thresholds of ``policy`` (``"fixed"`` or ``"tuned"``)."""
        tuned = self._require_fit()
        if policy == "tuned":
            return tuned.clone()
        if policy == "fixed":
            return torch.full_like(tuned, FIXED_THRESHOLD)
        raise ValueError(f"policy must be 'fixed' or 'tuned', got {policy!r}")

    def apply(self, scores: Tensor, policy: str = "tuned") -> Tensor:
        """0/1 predictions ``(N, C)`` (int64): ``score >= threshold`` of ``policy``."""
        _probabilities(scores, "scores")
        th = self.thresholds(policy)
        if scores.shape[1] != th.numel():
            raise ValueError(f"scores have {scores.shape[1]} classes, the thresholds {th.numel()}")
        return (scores.double() >= th.to(scores.device)).long()

    def evaluate(self, test_scores: Tensor, test_targets: Tensor) -> dict[str, Tensor | int]:
        """Metrics of :func:`multilabel_metrics` at both policies, side by side.

        Threshold-free metrics (``map``, ``auc_macro``, ``lrap`` and the excluded-class counts) appear once,
        unprefixed; ``f1_macro``, ``precision_macro``, ``recall_macro`` and ``hamming`` appear as ``t05/...``
        and ``tuned/...``. The thresholds are read, never tuned, here.
        """
        tuned = self._require_fit()
        _probabilities(test_scores, "test_scores")
        if test_scores.shape[1] != tuned.numel():
            raise ValueError(f"test_scores have {test_scores.shape[1]} classes, the thresholds {tuned.numel()}")
        self._evaluated = True
        out: dict[str, Tensor | int] = {}
        for policy, prefix in PREFIX.items():
            th = self.thresholds(policy).to(test_scores.device)
            metrics = multilabel_metrics(test_scores.detach(), test_targets.detach(), th)
            for key, value in metrics.items():
                if key in THRESHOLDED:
                    out[prefix + key] = value
                else:
                    out.setdefault(key, value)
        return out

    def state_dict(self) -> dict[str, Any]:
        """``{"thresholds": float64 (C,), "fixed": 0.5, "n_fit_samples", "evaluated"}`` (fit first)."""
        return {
            "thresholds": self._require_fit().clone(),
            "fixed": FIXED_THRESHOLD,
            "n_fit_samples": self._n_fit,
            "evaluated": self._evaluated,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"thresholds", "n_fit_samples", "evaluated"} - set(state)
        if missing:
            raise KeyError(f"ThresholdPolicy state is missing {sorted(missing)}")
        th = torch.as_tensor(state["thresholds"], dtype=torch.float64).cpu()
        if th.dim() != 1:
            raise ValueError(f"ThresholdPolicy state 'thresholds' must be (C,), got shape {tuple(th.shape)}")
        self._tuned, self._n_fit, self._evaluated = th.clone(), int(state["n_fit_samples"]), bool(state["evaluated"])

    def _require_fit(self) -> Tensor:
        if self._tuned is None:
            raise RuntimeError("ThresholdPolicy is not fitted: call fit(val_scores, val_targets) first")
        return self._tuned


# ----------------------------------------------------------------------------------- per-class table
def per_class_table(
    scores: Tensor, targets: Tensor, thresholds: Tensor, class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per class: ``class``, ``ap``, ``auc``, ``support``, ``threshold`` (tuned), ``f1_t05``,
    ``f1_tuned``, ``excluded``.

    ``ap`` / ``auc`` / F1 are :func:`multilabel_metrics` on that class's column (AP = sklearn's
    ``average_precision_score``). A class without positives has ``ap = NaN`` and ``excluded = True``: it
    is left out of ``map`` (F30). ``auc`` is NaN also for a class without negatives.
    """
    if scores.dim() != 2 or targets.shape != scores.shape:
        raise ValueError(f"scores and targets must both be (N, C): got {tuple(scores.shape)} and {tuple(targets.shape)}")
    c = scores.shape[1]
    th = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
    if th.numel() != c or len(class_names) != c:
        raise ValueError(f"need {c} thresholds and {c} class names, got {th.numel()} and {len(class_names)}")
    rows = []
    for j, name in enumerate(class_names):
        col_s, col_t = scores[:, j : j + 1], targets[:, j : j + 1]
        fixed = multilabel_metrics(col_s, col_t, FIXED_THRESHOLD)
        tuned = multilabel_metrics(col_s, col_t, th[j : j + 1].to(scores.device))
        rows.append({
            "class": str(name),
            "ap": float(fixed["map"]),
            "auc": float(fixed["auc_macro"]),
            "support": int(col_t.sum()),
            "threshold": float(th[j]),
            "f1_t05": float(fixed["f1_macro"]),
            "f1_tuned": float(tuned["f1_macro"]),
            "excluded": bool(fixed["map_excluded_classes"]),
        })
    return rows


def write_per_class(rows: Sequence[dict[str, Any]], csv_path: str | Path, png_path: str | Path) -> None:
    """The per-class table as a CSV (NaN written as ``nan``) and a horizontal bar chart of AP and F1 at
    both policies; excluded classes (no positives) are labelled as such."""
    if not rows:
        raise ValueError("write_per_class: no rows")
    csv_path, png_path = Path(csv_path), Path(png_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(rows)
    fig = Figure(figsize=(7, 1.2 + 0.35 * n))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(n)
    h = 0.27
    for off, key, label in ((-h, "ap", "AP"), (0.0, "f1_t05", "F1 @ 0.5"), (h, "f1_tuned", "F1 @ tuned")):
        vals = [0.0 if math.isnan(r[key]) else r[key] for r in rows]
        ax.barh(y + off, vals, height=h, label=label)
    ax.set_yticks(y, [f"{r['class']} (n={r['support']}){' excluded' if r['excluded'] else ''}" for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score")
    ax.set_title("Per-class AP and F1 (thresholds tuned on validation)")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)


# ----------------------------------------------------------------------------------- the test entry
def evaluate_test(module: MultilabelModule) -> None:
    """The test of ``module`` on its gathered rows (test split, kNN bank): metrics, floors, per-image scores, the
    per-class table and results.json records; resets the rows."""
    rows = module.test_rows.compute()
    metrics = module.stored_policy().evaluate(rows["probs"], rows["targets"])
    for name, value in metrics.items():
        module.log(f"test/{name}", float(value))
    knn = module.knn_args
    if knn.enabled and not module.bank_rows.empty:
        bank = module.bank_rows.compute()
        metric = "hamming" if getattr(module.head, "hash_bits", None) is not None else "cosine"
        if knn.index == "pq":
            metric = f"pq(m={knn.pq_m}, nbits={knn.pq_nbits}) over fused"
            pq = ProductQuantizerIndex(knn.pq_m, knn.pq_nbits).build(bank["rep"], bank["targets"])
            scores = pq.scores(rows["rep"], k=knn.k, temperature=knn.temperature)
        else:
            scores = knn_scores(rows["rep"], bank["rep"], bank["targets"], k=knn.k, metric=metric,
                                temperature=knn.temperature, use_faiss=knn.use_faiss)
        knn_metrics = multilabel_metrics(scores, rows["targets"], 0.5)
        module.log("test/knn_map", float(knn_metrics["map"]))
        module.log("test/knn_t05/f1_macro", float(knn_metrics["f1_macro"]))
        module.add_results("knn", {"k": knn.k, "metric": metric, "bank_size": len(bank["targets"]),
                                   "temperature": knn.temperature})
    names = module.label_names(rows["targets"].shape[1])
    captions = module.test_captions(rows["index"])
    add_floors(module, rows["targets"], names, captions)
    if module._is_rank_zero():
        table = per_class_table(rows["probs"], rows["targets"], module.thresholds.cpu(), names)
        write_per_class(table, module.run_dir / "multilabel" / "per_class.csv",
                        module.run_dir / "multilabel" / "per_class.png")
        save_test_items(module, rows, names, captions)
    module.add_results("thresholds", {"tuned": module.thresholds.cpu().tolist(), "fixed": 0.5,
                                      "fitted_on": "the fold's validation split"})
    for m in (module.test_rows, module.bank_rows):
        m.reset()


def add_floors(module: MultilabelModule, targets: Tensor, names: list[str], captions: list[str] | None) -> None:
    """F49: the floors of every headline metric on these test units (:func:`~.floors.floor_rows`: chance, predict
    every label / nothing, the caption keyword rule) into results.json ``references``."""
    for metric, rows in floor_rows(targets, captions, names, reads_captions=module.uses_text).items():
        for name, value, kind, what in rows:
            module.add_reference(metric, name, value, kind=kind, what=what)


def save_test_items(module: MultilabelModule, rows: dict[str, Tensor], names: list[str],
                    captions: list[str] | None) -> None:
    """F51: per test image scores of the head (:func:`~.floors.per_image_scores` at the fixed and the tuned
    thresholds) into ``per_item/test.json``, with the class scores and targets in ``meta`` (a bootstrap over images
    can recompute mAP); the caption rule's into ``per_item/caption_rule.json`` on the same images."""
    probs, targets, index = rows["probs"], rows["targets"], rows["index"]
    fixed = per_image_scores(probs, targets, 0.5)
    tuned = per_image_scores(probs, targets, module.thresholds.cpu())
    scores = {"ap": fixed["ap"], "f1_t05": fixed["f1"], "f1_tuned": tuned["f1"], "hamming_t05": fixed["hamming"]}
    meta = {"units": "test images (index into the test split)", "label_names": names,
            "probs": [[round(float(v), 6) for v in row] for row in probs.tolist()],
            "targets": targets.long().tolist(),
            "means": {"ap": "test/lrap", "hamming_t05": "test/t05/hamming"}}
    module.save_per_item("test", index, scores, meta)
    if captions is not None:
        rule = caption_rule_scores(captions, names)
        items = per_image_scores(rule, targets, 0.5)
        module.save_per_item("caption_rule", index, {"ap": items["ap"], "f1_t05": items["f1"],
                                                     "f1_tuned": items["f1"], "hamming_t05": items["hamming"]},
                             {"units": "test images (index into the test split)", "label_names": names,
                              "what": "the caption keyword rule (floors.caption_rule_scores)",
                              "probs": rule.long().tolist(), "targets": targets.long().tolist()})
