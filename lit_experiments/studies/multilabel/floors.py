"""Floors of the multilabel headline (F49, F52) and per-image scores for paired bootstraps (F51).

Every floor is computed on the test units of the run by the metric code of the headline
(:func:`~lit_experiments.metrics.multilabel.multilabel_metrics`), except the random-ranking expectations, which
are exact closed forms (checked against a simulation and sklearn in the tests):

* chance, ranking metrics: :func:`expected_random_ap` - the expected average precision of a uniformly random
  ranking of ``n`` items with ``m`` positives, ``(m-1)/(n-1) + H_n (n-m) / (n (n-1))`` (``H_n`` the harmonic
  number; ``H_n / n`` for one positive, 1 when every item is positive). ``map``: its mean over the classes with a
  positive (:func:`random_ranking_map`); ``lrap``: its mean over images, with ``n`` the classes and ``m`` the
  image's labels (an image with no or every label scores 1, as sklearn) (:func:`random_ranking_lrap`); ROC AUC
  0.5.
* chance, F1: labels drawn at random at each class's positive rate ``p`` score an expected F1 of ``p`` per class
  (expected counts), so the floor is the mean positive rate; "predict every label" (``2p / (1 + p)`` per class)
  and, for the Hamming loss, "predict nothing" (the mean positive rate) are scored by the metric code.
* the caption keyword rule (:func:`caption_rule_scores`): a label scores 1 when all its words occur in one clause
  of the image's caption (clauses split at commas and "and"), else 0 - it reads the labels off the side input.
  Scored like a model at the fixed 0.5 threshold (the tuned-threshold F1 row uses the same 0/1 decisions). A floor
  of every head that reads the caption; a reference row of an image-only head (it uses an input the head lacks).

:func:`per_image_scores`: one value per test image (the label-ranking AP of its scores, F1 and Hamming loss of its
decisions); their means are the run's ``lrap`` and ``hamming``, so the report can resample images (paired
bootstrap). :func:`paired_bootstrap_map` resamples test images jointly for two sets of models and recomputes mAP.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lit_experiments.metrics import expected_random_ap as random_ap
from lit_experiments.metrics.multilabel import multilabel_metrics

FLOOR, REFERENCE = "floor", "reference"
#: headline metric -> the floors computed for it (names as in results.json["references"])
RANKING = ("test/map", "test/knn_map", "test/auc_macro", "test/lrap")
F1_KEYS = ("test/t05/f1_macro", "test/tuned/f1_macro")
HAMMING = "test/t05/hamming"
CAPTION_RULE = "caption keyword rule"


def expected_random_ap(n: int, m: int) -> float:
    """Expected AP of a uniformly random ranking of ``n`` items with ``m >= 1`` positives (exact; the closed form
    is :func:`lit_experiments.metrics.retrieval.expected_random_ap`)."""
    if not 1 <= m <= n:
        raise ValueError(f"expected_random_ap: need 1 <= m <= n, got n={n}, m={m}")
    return float(random_ap(torch.tensor([m]), torch.tensor([n]))[0])


def random_ranking_map(targets: Tensor) -> float:
    """Expected mAP of random class scores: :func:`expected_random_ap` per class with a positive, averaged."""
    t = torch.as_tensor(targets).long()
    n = t.shape[0]
    aps = [expected_random_ap(n, int(m)) for m in t.sum(0).tolist() if m > 0]
    return float(np.mean(aps)) if aps else math.nan


def random_ranking_lrap(targets: Tensor) -> float:
    """Expected label-ranking AP of random scores: per image :func:`expected_random_ap` over the classes (sklearn:
    an image with no or every label scores 1), averaged over images."""
    t = torch.as_tensor(targets).long()
    c = t.shape[1]
    cache: dict[int, float] = {}
    vals = []
    for k in t.sum(1).tolist():
        if k in (0, c):
            vals.append(1.0)
        else:
            vals.append(cache.setdefault(k, expected_random_ap(c, k)))
    return float(np.mean(vals))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def caption_rule_scores(captions: Sequence[str], label_names: Sequence[str]) -> Tensor:
    """float64 ``(N, C)``: 1 when every word of label ``c`` occurs in one clause of caption ``i`` (clauses split at
    commas and the word "and"), else 0."""
    labels = [set(_words(name)) for name in label_names]
    out = torch.zeros(len(captions), len(label_names), dtype=torch.float64)
    for i, caption in enumerate(captions):
        clauses = [set(_words(c)) for c in re.split(r",|\band\b", caption.lower())]
        for j, words in enumerate(labels):
            if words and any(words <= clause for clause in clauses):
                out[i, j] = 1.0
    return out


def _rows_of(metrics: dict[str, Any], name: str, what: str) -> dict[str, tuple[str, float, str, str]]:
    """The rows a scored floor gives each headline metric (tuned F1 = its 0.5 decisions: it has no thresholds)."""
    rows = {"test/map": float(metrics["map"]), "test/knn_map": float(metrics["map"]),
            "test/auc_macro": float(metrics["auc_macro"]), "test/lrap": float(metrics["lrap"]),
            "test/t05/f1_macro": float(metrics["f1_macro"]), "test/tuned/f1_macro": float(metrics["f1_macro"]),
            HAMMING: float(metrics["hamming"])}
    return {k: (name, v, FLOOR, what) for k, v in rows.items()}


def floor_rows(targets: Tensor, captions: Sequence[str] | None, label_names: Sequence[str],
               reads_captions: bool = True) -> dict[str, list[tuple[str, float, str, str]]]:
    """``{headline metric: [(name, value, kind, what), ...]}`` on the test units ``targets`` (N, C) with their
    ``captions`` (None: no caption rule). The caption rule is a floor of a model that reads the captions and a
    reference row of one that does not (``reads_captions=False``: an image-only probe)."""
    t = torch.as_tensor(targets).double()
    n, c = t.shape
    rate = float(t.mean())
    out: dict[str, list[tuple[str, float, str, str]]] = {k: [] for k in (*RANKING, *F1_KEYS, HAMMING)}
    rr = random_ranking_map(t)
    for key in ("test/map", "test/knn_map"):
        out[key].append(("chance: random ranking", rr, FLOOR,
                         "expected mAP of random scores (per class the closed-form expected AP, averaged)"))
    out["test/auc_macro"].append(("chance: random ranking", 0.5, FLOOR, "expected ROC AUC of random scores"))
    out["test/lrap"].append(("chance: random ranking", random_ranking_lrap(t), FLOOR,
                             "expected label-ranking AP of random scores (closed form per image)"))
    everything = multilabel_metrics(torch.ones(n, c, dtype=torch.float64), t, 0.5)
    nothing = multilabel_metrics(torch.zeros(n, c, dtype=torch.float64), t, 0.5)
    for key in F1_KEYS:
        out[key].append(("chance: mean positive rate", float(t.mean(0).mean()), FLOOR,
                         "expected F1 of random labels drawn at each class's positive rate"))
        out[key].append(("predict every label", float(everything["f1_macro"]), FLOOR, "all labels on every image"))
    out[HAMMING].append(("predict nothing", float(nothing["hamming"]), FLOOR,
                         f"no label on any image (mean positive rate {rate:.4f})"))
    if captions is not None:
        if len(captions) != n:
            raise ValueError(f"floor_rows: {len(captions)} captions for {n} test images")
        rule = multilabel_metrics(caption_rule_scores(captions, label_names), t, 0.5)
        kind = FLOOR if reads_captions else REFERENCE
        for key, (name, value, _, what) in _rows_of(rule, CAPTION_RULE, "a label scores 1 when its words are in "
                                                    "the caption").items():
            out[key].append((name, value, kind, what))
    return out


def per_image_scores(probs: Tensor, targets: Tensor, thresholds: float | Tensor) -> dict[str, Tensor]:
    """Per test image: ``ap`` (label-ranking AP of its scores, sklearn's LRAP per sample: an image with no or
    every label scores 1), ``f1`` (F1 of its decisions ``probs >= thresholds``; 1 when it has no label and
    predicts none) and ``hamming`` (fraction of wrong decisions). Means: the run's ``lrap`` / ``hamming``."""
    s, t = probs.double(), targets.long()
    n, c = s.shape
    ap = torch.ones(n, dtype=torch.float64)
    for i in range(n):
        k = int(t[i].sum())
        if 0 < k < c:
            ap[i] = multilabel_metrics(s[i][:, None], t[i][:, None], 0.5)["map"]
    th = torch.as_tensor(thresholds, dtype=torch.float64)
    pred = (s >= th).long()
    tp = (pred * t).sum(1).double()
    denom = pred.sum(1).double() + t.sum(1).double()
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.ones_like(tp))
    return {"ap": ap, "f1": f1, "hamming": (pred != t).double().mean(1)}


def paired_bootstrap_map(a: Sequence[Tensor], b: Sequence[Tensor], targets: Tensor, n_boot: int = 1000,
                         seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap over test images of ``mAP(a) - mAP(b)``: ``a`` / ``b`` are lists of score matrices (N, C)
    of one set of models each (e.g. the k fold models of a head; a set's mAP is the mean of its models' mAPs).
    Each resample draws N images with replacement and rescores both sets on the same images. Returns the observed
    difference, the 2.5 / 97.5 percentiles of the resampled differences, ``n_images`` and ``n_boot``."""
    t = torch.as_tensor(targets)
    n = t.shape[0]
    # the models of a set side by side: one metric call per set and resample; every model shares the targets, so
    # the mean AP over all columns with a positive is the mean of the models' mAPs
    stacked = [torch.cat([torch.as_tensor(s).double() for s in sets], 1) for sets in (a, b)]
    tiled = [t.repeat(1, len(sets)) for sets in (a, b)]

    def score(k: int, idx: Tensor) -> float:
        return float(multilabel_metrics(stacked[k][idx], tiled[k][idx], 0.5)["map"])

    full = torch.arange(n)
    observed = score(0, full) - score(1, full)
    gen = torch.Generator().manual_seed(int(seed))
    diffs = []
    for _ in range(int(n_boot)):
        idx = torch.randint(0, n, (n,), generator=gen)
        diffs.append(score(0, idx) - score(1, idx))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"diff": observed, "ci95": [float(lo), float(hi)], "n_images": n, "n_boot": int(n_boot),
            "excludes_zero": bool(lo > 0 or hi < 0)}
