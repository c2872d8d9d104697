"""Weighted kNN (InstDisc / SimSiam monitor) against a numpy brute force and sklearn's KNeighborsClassifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from lit_experiments.metrics import WeightedKNNAccuracy, weighted_knn_predict


def _brute(bank, bank_labels, query, num_classes, k, t):
    """Loop reference: neighbours by (cosine desc, bank index asc), class score = sum exp(cos / t)."""
    b = bank.double().numpy()
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    q = query.double().numpy()
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k = min(k, len(b))
    scores = np.zeros((len(q), num_classes))
    for i in range(len(q)):
        s = (q[i] @ b.T).astype(np.float32)  # the product rounds to float32 like the product's matmul
        order = np.lexsort((np.arange(len(b)), -s))[:k]  # last key primary: -s, then index
        for j in order:
            scores[i, int(bank_labels[j])] += np.exp(float(s[j]) / t)
    return scores.argmax(1), scores


def _data(n_bank=150, n_query=40, d=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g)
    bl = torch.randint(0, c, (n_bank,), generator=g)
    ql = torch.randint(0, c, (n_query,), generator=g)
    bank = centers[bl] + 0.8 * torch.randn(n_bank, d, generator=g)
    query = centers[ql] + 0.8 * torch.randn(n_query, d, generator=g)
    return bank, bl, query, ql


@pytest.mark.parametrize("k", [1, 7, 150, 400])
def test_matches_brute_force(k):
    bank, bl, query, _ = _data()
    pred, scores = weighted_knn_predict(bank, bl, query, num_classes=5, k=k, temperature=0.2, chunk_size=9)
    ref_pred, ref_scores = _brute(bank, bl, query, 5, k, 0.2)
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-6)
    assert pred.tolist() == ref_pred.tolist()
    if k >= 150:  # k clipped to the bank: every bank item votes
        np.testing.assert_allclose(scores.sum(1).numpy(), ref_scores.sum(1), rtol=1e-6)


def test_matches_sklearn_kneighbors_with_exp_weights():
    bank, bl, query, ql = _data(n_bank=300, n_query=80, seed=1)
    k, t = 20, 0.1
    pred, scores = weighted_knn_predict(bank, bl, query, num_classes=5, k=k, temperature=t)
    clf = KNeighborsClassifier(
        n_neighbors=k, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1.0 - d) / t)
    ).fit(bank.double().numpy(), bl.numpy())
    assert clf.classes_.tolist() == list(range(5))
    assert pred.tolist() == clf.predict(query.double().numpy()).tolist()
    proba = (scores / scores.sum(1, keepdim=True)).numpy()
    np.testing.assert_allclose(proba, clf.predict_proba(query.double().numpy()), atol=1e-5)
    acc = (pred == ql).float().mean().item()
    assert 0.5 < acc < 1.0  # separable-ish clusters: informative data, not a degenerate case


def test_ties_at_the_cut_break_by_bank_index():
    # 60 bank vectors with cosine exactly 0.6 to the queries (one tie group: products of 0/1 entries are
    # exact in any summation order) behind one best match (cosine 1) at the end of the bank; k = 5 takes
    # the best match and cuts inside the tie group, which must give its 4 lowest bank indices.
    bank = torch.cat([torch.tensor([[0.6, 0.8]]).repeat(60, 1), torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])])
    bl = torch.tensor([3, 3, 1, 0] + [2] * 56 + [1, 1, 0])
    query = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    for chunk in (1, None):
        pred, scores = weighted_knn_predict(bank, bl, query, num_classes=4, k=5, temperature=0.5, chunk_size=chunk)
        ref_pred, ref_scores = _brute(bank, bl, query, 4, 5, 0.5)
        assert pred.tolist() == ref_pred.tolist()
        np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-6)
    # Exactly the votes of bank item 62 and items 0..3, with their weights.
    w_tie = float(np.exp(np.float32(0.6) / 0.5))
    votes = torch.bincount(bl[:4], minlength=4).double() * w_tie
    votes[bl[62]] += float(np.exp(1.0 / 0.5))
    torch.testing.assert_close(scores[0], votes, rtol=1e-5, atol=0)
    # Equal class scores: the lowest class id wins.
    p2, s2 = weighted_knn_predict(torch.ones(4, 2), torch.tensor([3, 1, 1, 3]), query[:1], num_classes=4, k=4)
    assert s2[0, 1] == s2[0, 3] and p2.item() == 1


def test_metric_accumulates_like_the_functional_and_errors():
    bank, bl, query, ql = _data(n_bank=200, n_query=60, seed=3)
    m = WeightedKNNAccuracy(num_classes=5, k=15, temperature=0.2)
    for lo in range(0, 200, 70):
        m.update(bank[lo : lo + 70], bl[lo : lo + 70], role="bank")
    m.update(query[:25], ql[:25], role="query")
    m.update(query[25:], ql[25:], role="query")
    pred, _ = weighted_knn_predict(bank, bl, query, 5, k=15, temperature=0.2)
    expected = (pred == ql).float().mean()
    assert 0.3 < expected.item() < 1.0
    torch.testing.assert_close(m.compute(), expected)
    m.reset()
    m.update(query, ql, role="query")
    with pytest.raises(RuntimeError, match="needs a bank"):
        m.compute()
    m.reset()
    m.update(bank, bl, role="bank")
    with pytest.raises(RuntimeError, match="needs queries"):
        m.compute()
    with pytest.raises(ValueError, match="role must be 'bank' or 'query', got 'train'"):
        m.update(bank, bl, role="train")
    with pytest.raises(ValueError, match=r"bank_labels must lie in \[0, 3\), got min 0 max 4"):
        weighted_knn_predict(bank, bl, query, num_classes=3)
