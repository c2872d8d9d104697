"""Retrieval metrics against a brute-force reference and sklearn's average_precision_score (F21)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from torchmetrics.functional.retrieval import retrieval_average_precision

from lit_experiments.metrics import RetrievalMetrics, compare_per_query_ap, retrieval_metrics


def _brute(q, g, ql, gl, ks, exclude_self):
    """Plain-Python reference: rank by (score desc, gallery index asc); AP from sklearn."""
    s = (q @ g.t()).numpy()
    ql, gl = ql.tolist(), gl.tolist()
    aps, rows = [], []
    for i in range(len(ql)):
        cand = [j for j in range(len(gl)) if not (exclude_self and j == i)]
        rel = np.array([gl[j] == ql[i] for j in cand])
        if not rel.any():
            aps.append(math.nan)
            continue
        aps.append(average_precision_score(rel, s[i, cand]))
        order = sorted(range(len(cand)), key=lambda k: (-s[i, cand[k]], cand[k]))
        hits = [int(rel[order[:k]].sum()) for k in ks]
        rows.append([(h / k, h / rel.sum(), float(h > 0)) for h, k in zip(hits, ks)])
    r = np.array(rows)  # (valid queries, len(ks), 3)
    return np.array(aps), r.mean(0)


def _check(out, aps, at, ks):
    np.testing.assert_allclose(out["per_query_ap"].numpy(), aps, rtol=0, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(out["map"].item(), np.nanmean(aps), rtol=0, atol=1e-12)
    for j, k in enumerate(ks):
        for m, name in enumerate(("precision", "recall", "hit_rate")):
            assert out[f"{name}@{k}"].item() == pytest.approx(at[j, m], abs=1e-12), f"{name}@{k}"
    assert out["n_skipped_queries"] == int(np.isnan(aps).sum())


@pytest.mark.parametrize("exclude_self", [False, True])
def test_matches_brute_force_and_sklearn_with_negative_scores(exclude_self):
    g = torch.Generator().manual_seed(0)
    n, ks = 60, (1, 3, 10)
    emb = torch.randn(n, 6, generator=g)
    labels = torch.randint(0, 6, (n,), generator=g)
    labels[-1] = 99  # a query with no positive (self excluded) -> skipped and counted
    q, ql = (emb, labels) if exclude_self else (emb[:25], labels[:25] % 6)
    scores = q @ emb.t()
    assert (scores < 0).float().mean() > 0.3  # plenty of negative scores
    out = retrieval_metrics(q, emb, ql, labels, ks=ks, exclude_self=exclude_self, chunk_size=7)
    aps, at = _brute(q, emb, ql, labels, ks, exclude_self)
    _check(out, aps, at, ks)
    assert out["n_skipped_queries"] == (1 if exclude_self else 0)


def test_ties_ap_matches_sklearn_and_at_k_is_index_ordered():
    g = torch.Generator().manual_seed(1)
    emb = torch.randint(-1, 2, (50, 3), generator=g).float()  # integer dot products: many ties
    labels = torch.randint(0, 3, (50,), generator=g)
    ks = (1, 2, 5, 17)
    out = retrieval_metrics(emb, emb, labels, labels, ks=ks, exclude_self=True, chunk_size=9)
    aps, at = _brute(emb, emb, labels, labels, ks, True)
    _check(out, aps, at, ks)
    # AP does not depend on gallery order (tie groups), unlike a sort-then-index AP.
    perm = torch.randperm(50, generator=g)
    out2 = retrieval_metrics(emb, emb[perm], labels, labels[perm], ks=(1,), chunk_size=11)
    ref = retrieval_metrics(emb, emb, labels, labels, ks=(1,))
    torch.testing.assert_close(out2["per_query_ap"], ref["per_query_ap"], rtol=0, atol=1e-12)


def test_f21_recall_is_not_hit_rate_and_negative_scores_count():
    # One query, gallery scores [0.5, -0.2, -0.4, 0.1, -0.1], positives at indices 1, 2, 4.
    q = torch.tensor([[1.0]])
    g = torch.tensor([[0.5], [-0.2], [-0.4], [0.1], [-0.1]])
    ql, gl = torch.tensor([1]), torch.tensor([0, 1, 1, 0, 1])
    out = retrieval_metrics(q, g, ql, gl, ks=(3,))
    # Ranking: 0.5(-), 0.1(-), -0.1(+), -0.2(+), -0.4(+): top 3 holds 1 of 3 positives.
    assert out["recall@3"].item() == pytest.approx(1 / 3)
    assert out["hit_rate@3"].item() == 1.0
    assert out["precision@3"].item() == pytest.approx(1 / 3)
    # AP = (1/3 + 2/4 + 3/5) / 3, every positive has a negative score.
    assert out["map"].item() == pytest.approx((1 / 3 + 2 / 4 + 3 / 5) / 3, abs=1e-12)
    assert out["map"].item() == pytest.approx(average_precision_score(gl.numpy(), g[:, 0].numpy()), abs=1e-12)
    # The pitfall this guards against: torchmetrics retrieval drops scores <= 0.
    tm = retrieval_average_precision(g[:, 0], gl).item()
    assert tm != pytest.approx(out["map"].item())


def test_bad_input_errors():
    e, lab = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"embedding dims differ: query_emb \(4, 3\), gallery_emb \(4, 2\)"):
        retrieval_metrics(e, torch.zeros(4, 2), lab, lab)
    with pytest.raises(ValueError, match=r"gallery_labels must be \(4,\), got \(3,\)"):
        retrieval_metrics(e, e, lab, lab[:3])
    with pytest.raises(ValueError, match="every k"):
        retrieval_metrics(e, e, lab, lab, ks=(4,), exclude_self=True)
    with pytest.raises(ValueError, match="exclude_self"):
        retrieval_metrics(e[:2], e, lab[:2], lab, ks=(1,), exclude_self=True)


def test_f19_compare_checkpoints_per_query_ap():
    a = torch.tensor([0.5, 0.2, math.nan, 0.9, 0.4], dtype=torch.float64)
    b = torch.tensor([0.7, 0.2, 0.3, 0.1, 0.45], dtype=torch.float64)
    out = compare_per_query_ap(a, b, query_ids=[10, 11, 12, 13, 14], min_delta=0.01)
    assert [i for i, _, _ in out["improved"]] == [10, 14]  # sorted by |delta|: 0.2, 0.05
    assert [i for i, _, _ in out["degraded"]] == [13]
    assert out["n_unchanged"] == 1 and out["n_compared"] == 4
    assert out["mean_delta"] == pytest.approx((0.2 + 0.0 - 0.8 + 0.05) / 4)


def test_metric_class_matches_functional():
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(40, 5, generator=g)
    labels = torch.randint(0, 4, (40,), generator=g)
    ids = torch.randperm(40, generator=g)
    m = RetrievalMetrics(ks=(1, 5), normalize=True)
    m.update(emb[:13], labels[:13], ids[:13])
    m.update(emb[13:], labels[13:], ids[13:])
    out = m.compute()
    order = torch.argsort(ids)
    z = torch.nn.functional.normalize(emb[order], dim=1)
    ref = retrieval_metrics(z, z, labels[order], labels[order], ks=(1, 5), exclude_self=True)
    for k in ("map", "precision@5", "recall@5", "hit_rate@1"):
        torch.testing.assert_close(out[k], ref[k])
    torch.testing.assert_close(out["per_query_ap"], ref["per_query_ap"], equal_nan=True)
    assert torch.equal(out["query_ids"], torch.arange(40))
