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
    aps, rows, at_r = [], [], []
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
        big_r = int(rel.sum())
        top = rel[order[:big_r]]
        prec = np.cumsum(top) / np.arange(1, big_r + 1)
        at_r.append(((prec * top).sum() / big_r, top.sum() / big_r))
    r = np.array(rows)  # (valid queries, len(ks), 3)
    return np.array(aps), r.mean(0), np.array(at_r).mean(0)


def _check(out, aps, at, ks, at_r):
    assert out["map@r"].item() == pytest.approx(at_r[0], abs=1e-12)
    assert out["r_precision"].item() == pytest.approx(at_r[1], abs=1e-12)
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
    aps, at, at_r = _brute(q, emb, ql, labels, ks, exclude_self)
    _check(out, aps, at, ks, at_r)
    assert out["n_skipped_queries"] == (1 if exclude_self else 0)


def test_ties_ap_matches_sklearn_and_at_k_is_index_ordered():
    g = torch.Generator().manual_seed(1)
    emb = torch.randint(-1, 2, (50, 3), generator=g).float()  # integer dot products: many ties
    labels = torch.randint(0, 3, (50,), generator=g)
    ks = (1, 2, 5, 17)
    out = retrieval_metrics(emb, emb, labels, labels, ks=ks, exclude_self=True, chunk_size=9)
    aps, at, at_r = _brute(emb, emb, labels, labels, ks, True)
    _check(out, aps, at, ks, at_r)
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
    for k in ("map", "map@r", "r_precision", "precision@5", "recall@5", "hit_rate@1"):
        torch.testing.assert_close(out[k], ref[k])
    torch.testing.assert_close(out["per_query_ap"], ref["per_query_ap"], equal_nan=True)
    assert torch.equal(out["query_ids"], torch.arange(40))


def _pml_at_r(query, query_labels, reference=None, reference_labels=None) -> dict[str, float]:
    from pytorch_metric_learning.distances import DotProductSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    calc = AccuracyCalculator(
        include=("mean_average_precision_at_r", "r_precision"),
        k="max_bin_count",
        device=torch.device("cpu"),
        knn_func=CustomKNN(DotProductSimilarity()),  # faiss is not installed; same ranking by dot product
    )
    if reference is None:  # self-retrieval: the query itself is excluded (ref_includes_query=True)
        return calc.get_accuracy(query, query_labels)
    return calc.get_accuracy(query, query_labels, reference, reference_labels, ref_includes_query=False)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_map_at_r_matches_pytorch_metric_learning(exclude_self):
    g = torch.Generator().manual_seed(3)
    emb = torch.nn.functional.normalize(torch.randn(400, 8, generator=g), dim=1)  # continuous: tie-free
    labels = torch.randint(0, 7, (400,), generator=g)
    if exclude_self:
        out = retrieval_metrics(emb, emb, labels, labels, ks=(1,), exclude_self=True, chunk_size=37)
        ref = _pml_at_r(emb, labels)
    else:
        out = retrieval_metrics(emb[:60], emb[60:], labels[:60], labels[60:], ks=(1,), chunk_size=13)
        ref = _pml_at_r(emb[:60], labels[:60], emb[60:], labels[60:])
    assert out["map@r"].item() == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-12)
    assert out["r_precision"].item() == pytest.approx(ref["r_precision"], abs=1e-12)
    assert 0.0 < out["map@r"].item() < out["r_precision"].item() < 1.0  # informative, not degenerate


def test_map_at_r_hand_example_and_large_r_with_ties():
    # One query, R = 3 positives at indices 1, 2, 4; scores rank them 3rd, 4th, 5th of 5.
    q, g = torch.tensor([[1.0]]), torch.tensor([[0.5], [-0.2], [-0.4], [0.1], [-0.1]])
    out = retrieval_metrics(q, g, torch.tensor([1]), torch.tensor([0, 1, 1, 0, 1]), ks=(1,))
    assert out["map@r"].item() == pytest.approx((1 / 3) / 3)  # only rank 3 is within the top R = 3
    assert out["r_precision"].item() == pytest.approx(1 / 3)
    # Two labels (R ~ N/2, larger than a chunk's width) and integer scores: ties across the R-th rank.
    gen = torch.Generator().manual_seed(4)
    emb = torch.randint(-2, 3, (120, 2), generator=gen).float()
    labels = torch.randint(0, 2, (120,), generator=gen)
    out = retrieval_metrics(emb, emb, labels, labels, ks=(1, 50), exclude_self=True, chunk_size=5)
    aps, at, at_r = _brute(emb, emb, labels, labels, (1, 50), True)
    _check(out, aps, at, (1, 50), at_r)
    # F19 collapse: identical embeddings, every score tied; the ranking is the gallery index order.
    emb, labels = torch.ones(45, 4), torch.randint(0, 3, (45,), generator=gen)
    out = retrieval_metrics(emb, emb, labels, labels, ks=(1, 7), exclude_self=True, chunk_size=8)
    aps, at, at_r = _brute(emb, emb, labels, labels, (1, 7), True)
    _check(out, aps, at, (1, 7), at_r)


def test_groups_drop_the_querys_own_group_like_brute_force():
    """query_groups / gallery_groups: items of the query's group (its video) are neither candidates nor positives;
    every metric equals the brute force on the gallery without them, and k must fit the smallest candidate set."""
    g = torch.Generator().manual_seed(3)
    n, ks = 48, (1, 3, 10)
    emb = torch.randn(n, 6, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    groups = torch.arange(n) // 6
    out = retrieval_metrics(emb, emb, labels, labels, ks=ks, exclude_self=True, chunk_size=5,
                            query_groups=groups, gallery_groups=groups)
    s = (emb @ emb.t()).numpy()
    aps, rows, at_r = [], [], []
    for i in range(n):
        cand = [j for j in range(n) if groups[j] != groups[i]]
        rel = np.array([labels[j] == labels[i] for j in cand])
        aps.append(average_precision_score(rel, s[i, cand]) if rel.any() else math.nan)
        order = sorted(range(len(cand)), key=lambda k: (-s[i, cand[k]], cand[k]))
        if rel.any():
            hits = [int(rel[order[:k]].sum()) for k in ks]
            rows.append([(h / k, h / rel.sum(), float(h > 0)) for h, k in zip(hits, ks)])
            r = int(rel.sum())  # mAP@R and R-precision over the top R of the same ranking
            top = rel[order[:r]]
            at_r.append((float(np.sum(np.cumsum(top) / np.arange(1, r + 1) * top) / r), float(top.sum() / r)))
    _check(out, np.array(aps), np.array(rows).mean(0), ks, np.array(at_r).mean(0))
    plain = retrieval_metrics(emb, emb, labels, labels, ks=ks, exclude_self=True)
    assert plain["map"].item() != pytest.approx(out["map"].item())  # the groups changed the ranking
    with pytest.raises(ValueError, match="every k"):
        retrieval_metrics(emb, emb, labels, labels, ks=(n - 6 + 1,), exclude_self=True, query_groups=groups,
                          gallery_groups=groups)
    with pytest.raises(ValueError, match="both"):
        retrieval_metrics(emb, emb, labels, labels, query_groups=groups)
