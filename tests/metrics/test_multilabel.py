"""Multi-label metrics against scikit-learn, incl. classes without positives (F30)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    hamming_loss,
    label_ranking_average_precision_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from lit_experiments.metrics import MultilabelMetrics, multilabel_metrics, tune_thresholds


def _data(seed: int, n: int = 80, c: int = 6, ties: bool = False, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    t = (torch.rand(n, c, generator=g) < 0.35).long()
    s = torch.rand(n, c, generator=g) * 0.6 + 0.4 * t  # informative scores in [0, 1]
    if ties:
        s = (s * 4).round() / 4
    return (s - 0.5) * scale + 0.5, t


def _sk_all(s: np.ndarray, t: np.ndarray, th: np.ndarray) -> dict[str, float]:
    pred = (s >= th).astype(int)
    kw = {"average": "macro", "zero_division": 0}
    return {
        "map": average_precision_score(t, s, average="macro"),
        "auc_macro": roc_auc_score(t, s, average="macro"),
        "f1_macro": f1_score(t, pred, **kw),
        "precision_macro": precision_score(t, pred, **kw),
        "recall_macro": recall_score(t, pred, **kw),
        "hamming": hamming_loss(t, pred),
        "lrap": label_ranking_average_precision_score(t, s),
    }


@pytest.mark.parametrize("ties", [False, True])
def test_matches_sklearn(ties):
    s, t = _data(0, ties=ties)
    out = multilabel_metrics(s, t, 0.5)
    ref = _sk_all(s.numpy(), t.numpy(), np.full(6, 0.5))
    for k, v in ref.items():
        assert out[k].item() == pytest.approx(v, abs=1e-9), k
    assert out["auc_excluded_classes"] == 0 and out["map_excluded_classes"] == 0


def test_large_logits_are_not_saturated_into_ties():
    # Logits between 20 and 40: a float32 sigmoid maps them all to 1.0 (ties); ranks must stay exact.
    s, t = _data(1)
    logits = 20 + 20 * s
    assert torch.all(torch.sigmoid(logits) == 1.0)
    out = multilabel_metrics(logits, t, thresholds=30.0)
    ref = _sk_all(logits.numpy(), t.numpy(), np.full(6, 30.0))
    for k, v in ref.items():
        assert out[k].item() == pytest.approx(v, abs=1e-9), k


def test_per_class_thresholds():
    s, t = _data(2)
    th = torch.tensor([0.3, 0.4, 0.5, 0.6, 0.7, 0.55])
    out = multilabel_metrics(s, t, th)
    ref = _sk_all(s.numpy(), t.numpy(), th.double().numpy())
    for k in ("f1_macro", "precision_macro", "recall_macro", "hamming"):
        assert out[k].item() == pytest.approx(ref[k], abs=1e-12), k
    with pytest.raises(ValueError, match=r"\(6,\) tensor"):
        multilabel_metrics(s, t, torch.tensor([0.5, 0.5]))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
@pytest.mark.filterwarnings("ignore:No positive class found:UserWarning")
def test_f30_classes_without_positives_or_negatives_are_excluded_and_counted():
    s, t = _data(3)
    t[:, 1] = 0  # no positives
    t[:, 4] = 1  # no negatives
    with pytest.warns(UndefinedMetricWarning):  # sklearn's macro mean is NaN: meaningless
        assert np.isnan(roc_auc_score(t.numpy(), s.numpy(), average="macro"))
    out = multilabel_metrics(s, t)
    keep = [0, 2, 3, 5]
    ref_auc = np.mean([roc_auc_score(t[:, c].numpy(), s[:, c].numpy()) for c in keep])
    assert out["auc_macro"].item() == pytest.approx(ref_auc, abs=1e-12)
    assert out["auc_excluded_classes"] == 2
    pos = [0, 2, 3, 4, 5]
    ref_map = average_precision_score(t[:, pos].numpy(), s[:, pos].numpy(), average="macro")
    assert out["map"].item() == pytest.approx(ref_map, abs=1e-12)
    assert out["map_excluded_classes"] == 1
    # The thresholded metrics still average over every class, zero_division=0 as sklearn.
    ref = _sk_all(s.numpy(), t.numpy(), np.full(6, 0.5))
    for k in ("f1_macro", "precision_macro", "recall_macro", "hamming", "lrap"):
        assert out[k].item() == pytest.approx(ref[k], abs=1e-9), k


def test_f30_a_class_with_exactly_one_positive_or_negative_is_in_the_macro_auc():
    """A class with one positive (or one negative) has a defined AUC: it stays in the macro mean, as sklearn scores
    it; only classes without a positive or without a negative are left out."""
    s, t = _data(5, n=12)
    t[:, 0] = 0
    t[3, 0] = 1  # exactly one positive
    t[:, 1] = 1
    t[7, 1] = 0  # exactly one negative
    t[:, 2] = 0  # no positive: excluded
    out = multilabel_metrics(s, t)
    keep = [0, 1, 3, 4, 5]
    ref = np.mean([roc_auc_score(t[:, c].numpy(), s[:, c].numpy()) for c in keep])
    assert out["auc_macro"].item() == pytest.approx(ref, abs=1e-12)
    assert out["auc_excluded_classes"] == 1
    one = roc_auc_score(t[:, 0].numpy(), s[:, 0].numpy())
    assert one != pytest.approx(ref, abs=1e-3)  # leaving the one-positive class out moves the mean


def test_tune_thresholds_reaches_the_best_f1_per_class():
    s, t = _data(4, n=50, ties=True)
    t[:, 5] = 0
    th = tune_thresholds(s, t)
    for c in range(5):
        sc, tc = s[:, c].numpy(), t[:, c].numpy()
        best = max(f1_score(tc, (sc >= v).astype(int), zero_division=0) for v in np.unique(sc))
        got = f1_score(tc, (sc >= th[c].item()).astype(int), zero_division=0)
        assert got == pytest.approx(best, abs=1e-12), c
    assert th[5].item() == 0.5  # no positives -> default


def test_bad_shapes_and_metric_class():
    s, t = _data(5)
    with pytest.raises(ValueError, match=r"\(80, 6\) and \(80, 5\)"):
        multilabel_metrics(s, t[:, :5])
    m = MultilabelMetrics()
    m.update(s[:30], t[:30])
    m.update(s[30:], t[30:])
    out, ref = m.compute(), multilabel_metrics(s, t)
    for k in ref:
        assert float(out[k]) == pytest.approx(float(ref[k]), abs=1e-12), k
