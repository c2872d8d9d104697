"""Evaluation of the multi-label study: threshold policies (F41), kNN vs brute force, per-class table (F30)."""

from __future__ import annotations

import csv
import io
import math
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from lit_experiments.metrics import tune_thresholds
from lit_experiments.studies.multilabel import evaluation
from lit_experiments.studies.multilabel.evaluation import ThresholdPolicy, per_class_table, write_per_class
from lit_experiments.studies.multilabel.knn import ProductQuantizerIndex, knn_scores


def _split(seed: int, n: int = 120, c: int = 5, ties: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = (torch.rand(n, c, generator=g) < 0.3).long()
    s = (torch.rand(n, c, generator=g) * 0.7 + 0.3 * t).clamp(0, 1)  # informative probabilities
    if ties:
        s = (s * 8).round() / 8
    return s, t


# ------------------------------------------------------------------------------------ thresholds
def test_policy_fits_tune_thresholds_on_validation():
    s, t = _split(0)
    t[:, 3] = 0  # no validation positive: keeps the fixed 0.5
    policy = ThresholdPolicy().fit(s, t)
    ref = tune_thresholds(s, t, default=0.5)
    assert torch.equal(policy.thresholds("tuned"), ref)
    assert policy.thresholds("tuned")[3] == 0.5
    assert torch.equal(policy.thresholds("fixed"), torch.full((5,), 0.5, dtype=torch.float64))
    assert torch.equal(policy.apply(s, "tuned"), (s.double() >= ref).long())
    assert torch.equal(policy.apply(s, "fixed"), (s >= 0.5).long())
    with pytest.raises(ValueError, match="'fixed' or 'tuned'"):
        policy.thresholds("best")


@pytest.mark.parametrize("ties", [False, True])
def test_evaluate_reports_both_policies_against_sklearn(ties):
    vs, vt = _split(1, ties=ties)
    ts, tt = _split(2, ties=ties)
    tt[:, 4] = 0  # a test class without positives (F30)
    policy = ThresholdPolicy().fit(vs, vt)
    out = policy.evaluate(ts, tt)
    s, t = ts.numpy().astype(np.float64), tt.numpy()
    has_pos = t.sum(0) > 0
    assert out["map"] == pytest.approx(average_precision_score(t[:, has_pos], s[:, has_pos], average="macro"), abs=1e-12)
    assert out["map_excluded_classes"] == 1
    assert out["auc_macro"] == pytest.approx(roc_auc_score(t[:, has_pos], s[:, has_pos], average="macro"), abs=1e-12)
    assert "f1_macro" not in out and "t05/map" not in out
    for prefix, th in (("t05/", np.full(5, 0.5)), ("tuned/", policy.thresholds("tuned").numpy())):
        pred = (s >= th).astype(int)
        kw = {"average": "macro", "zero_division": 0}
        assert out[prefix + "f1_macro"] == pytest.approx(f1_score(t, pred, **kw), abs=1e-12)
        assert out[prefix + "precision_macro"] == pytest.approx(precision_score(t, pred, **kw), abs=1e-12)
        assert out[prefix + "recall_macro"] == pytest.approx(recall_score(t, pred, **kw), abs=1e-12)
        assert out[prefix + "hamming"] == pytest.approx((pred != t).mean(), abs=1e-12)


def test_f41_tuned_thresholds_ignore_test_labels(monkeypatch):
    """The tuner only ever receives validation labels; flipping the test labels leaves the thresholds."""
    vs, vt = _split(3)
    ts, tt = _split(4)
    seen: list[torch.Tensor] = []

    def spy(scores, targets, default=0.5):
        seen.append(targets.clone())
        return tune_thresholds(scores, targets, default)

    monkeypatch.setattr(evaluation, "tune_thresholds", spy)
    results = {}
    for name, labels in (("test", tt), ("flipped", 1 - tt)):
        policy = ThresholdPolicy().fit(vs, vt)
        before = policy.thresholds("tuned")
        out = policy.evaluate(ts, labels)
        assert torch.equal(policy.thresholds("tuned"), before)
        assert torch.equal(policy.state_dict()["thresholds"], before)
        results[name] = (before, out)
    assert len(seen) == 2 and all(torch.equal(x, vt) for x in seen)
    assert torch.equal(results["test"][0], results["flipped"][0])
    assert results["test"][1]["tuned/f1_macro"] != results["flipped"][1]["tuned/f1_macro"]  # labels did differ


def test_fit_after_evaluate_and_evaluate_before_fit_raise():
    vs, vt = _split(5)
    with pytest.raises(RuntimeError, match="not fitted"):
        ThresholdPolicy().evaluate(vs, vt)
    policy = ThresholdPolicy().fit(vs, vt)
    policy.fit(vs, vt)  # re-tuning on validation is fine before any evaluation
    policy.evaluate(*_split(6))
    with pytest.raises(RuntimeError, match="fresh ThresholdPolicy per fold"):
        policy.fit(*_split(6))
    restored = ThresholdPolicy()
    restored.load_state_dict(policy.state_dict())  # the guard travels with the state
    with pytest.raises(RuntimeError, match="F41"):
        restored.fit(vs, vt)


def test_policy_rejects_logits_and_bad_shapes():
    vs, vt = _split(7)
    with pytest.raises(ValueError, match="val_scores must be probabilities.*sigmoid"):
        ThresholdPolicy().fit(vs * 4 - 2, vt)
    policy = ThresholdPolicy().fit(vs, vt)
    with pytest.raises(ValueError, match="test_scores have 3 classes, the thresholds 5"):
        policy.evaluate(vs[:, :3], vt[:, :3])


def test_state_dict_round_trips_through_a_checkpoint():
    vs, vt = _split(8)
    ts, tt = _split(9)
    policy = ThresholdPolicy().fit(vs, vt)
    buf = io.BytesIO()
    torch.save({"threshold_policy": policy.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf)["threshold_policy"]
    assert state["n_fit_samples"] == 120 and state["fixed"] == 0.5 and state["evaluated"] is False
    restored = ThresholdPolicy()
    restored.load_state_dict(state)
    assert torch.equal(restored.thresholds("tuned"), policy.thresholds("tuned"))
    a, b = policy.evaluate(ts, tt), restored.evaluate(ts, tt)
    assert a.keys() == b.keys() and all(float(a[key]) == float(b[key]) for key in a)
    with pytest.raises(KeyError, match="missing.*thresholds"):
        ThresholdPolicy().load_state_dict({"n_fit_samples": 3, "evaluated": False})


# ----------------------------------------------------------------------------------------- kNN
def _brute_knn(sim: np.ndarray, labels: np.ndarray, k: int, temperature: float | None) -> np.ndarray:
    """Reference: full similarity matrix, stable argsort (similarity desc, bank index asc)."""
    k = min(k, sim.shape[1])
    out = np.zeros((sim.shape[0], labels.shape[1]))
    for i, row in enumerate(sim):
        nn = np.argsort(-row, kind="stable")[:k]
        w = np.ones(k) if temperature is None else np.exp((row[nn] - row[nn].max()) / temperature)
        out[i] = (w[:, None] * labels[nn]).sum(0) / w.sum()
    return out


def _tied_unit_vectors(n: int, g: torch.Generator) -> torch.Tensor:
    """Vectors with four +-1 entries out of 8: norm 2, so cosines are exact multiples of 1/4 (many ties)."""
    x = torch.zeros(n, 8)
    for i in range(n):
        pos = torch.randperm(8, generator=g)[:4]
        x[i, pos] = torch.where(torch.rand(4, generator=g) < 0.5, -1.0, 1.0)
    return x * 3.0  # unnormalised on purpose


@pytest.mark.parametrize("k", [1, 3, 7, 100])
@pytest.mark.parametrize("temperature", [None, 0.5])
def test_knn_cosine_matches_brute_force_with_ties(k, temperature):
    g = torch.Generator().manual_seed(10)
    bank, query = _tied_unit_vectors(40, g), _tied_unit_vectors(13, g)
    labels = (torch.rand(40, 4, generator=g) < 0.4).long()
    b, q = bank.double().numpy() / 6.0, query.double().numpy() / 6.0
    ref = _brute_knn(q @ b.T, labels.numpy(), k, temperature)
    for chunk in (None, 1, 4):
        got = knn_scores(query, bank, labels, k=k, temperature=temperature, use_faiss=False, chunk_size=chunk)
        assert got.dtype == torch.float64 and got.shape == (13, 4)
        np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-12)


def test_knn_cosine_matches_brute_force_on_real_valued_embeddings():
    g = torch.Generator().manual_seed(11)
    bank, query = torch.randn(60, 16, generator=g), torch.randn(25, 16, generator=g)
    labels = (torch.rand(60, 6, generator=g) < 0.3).long()
    b = bank.double().numpy() / np.linalg.norm(bank.double().numpy(), axis=1, keepdims=True)
    q = query.double().numpy() / np.linalg.norm(query.double().numpy(), axis=1, keepdims=True)
    ref = _brute_knn(q @ b.T, labels.numpy(), 5, 0.1)
    got = knn_scores(query, bank, labels, k=5, temperature=0.1, use_faiss=False, chunk_size=7)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("temperature", [None, 0.3])
def test_knn_hamming_matches_brute_force_with_ties(temperature):
    g = torch.Generator().manual_seed(12)
    bits = 12  # not a multiple of 8; integer distances tie often
    bank = torch.tanh(torch.randn(50, bits, generator=g) * 2)
    query = torch.tanh(torch.randn(17, bits, generator=g) * 2)
    bank[7] = 0.0  # an exact 0 hash output counts as +1
    labels = (torch.rand(50, 5, generator=g) < 0.35).long()
    qb, bb = query.numpy() >= 0, bank.numpy() >= 0
    dist = (qb[:, None, :] != bb[None, :, :]).sum(2)  # Hamming distance by counting differing bits
    sim = 1.0 - 2.0 * dist / bits
    for k in (1, 4, 9):
        ref = _brute_knn(sim, labels.numpy(), k, temperature)
        for chunk in (None, 5):
            got = knn_scores(query, bank, labels, k=k, metric="hamming", temperature=temperature,
                             use_faiss=False, chunk_size=chunk)
            np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-12)


def test_knn_rejects_bad_input():
    x, y = torch.randn(4, 8), torch.ones(4, 2)
    with pytest.raises(ValueError, match="'cosine' or 'hamming'"):
        knn_scores(x, x, y, metric="l2", use_faiss=False)
    with pytest.raises(ValueError, match=r"bank_targets must be \(4, C\)"):
        knn_scores(x, x, y[:3], use_faiss=False)
    with pytest.raises(ValueError, match="equal D"):
        knn_scores(x[:, :4], x, y, use_faiss=False)
    with pytest.raises(ValueError, match="temperature"):
        knn_scores(x, x, y, temperature=0.0, use_faiss=False)


def test_faiss_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    x, y = torch.randn(6, 8), torch.ones(6, 2)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        knn_scores(x, x, y, use_faiss=True)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        ProductQuantizerIndex()
    auto = knn_scores(x, x, y, k=2, use_faiss=None)  # auto falls back to torch topk
    assert torch.equal(auto, knn_scores(x, x, y, k=2, use_faiss=False))


def test_faiss_paths_agree_with_torch():
    pytest.importorskip("faiss", reason="faiss-cpu not installed: `pip install faiss-cpu`")
    g = torch.Generator().manual_seed(13)
    bank, query = torch.randn(300, 16, generator=g), torch.randn(20, 16, generator=g)
    labels = (torch.rand(300, 4, generator=g) < 0.3).long()
    for metric, k in (("cosine", 5), ("hamming", 300)):  # Hamming: all neighbours, so faiss tie order is moot
        a = knn_scores(query, bank, labels, k=k, metric=metric, temperature=0.2, use_faiss=True)
        b = knn_scores(query, bank, labels, k=k, metric=metric, temperature=0.2, use_faiss=False)
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    pq = ProductQuantizerIndex(m=4, nbits=4).build(bank, labels)
    assert pq.code_bytes == 2
    own = pq.scores(bank[:50], k=1)  # a bank item's nearest quantised neighbour is mostly itself
    assert (own == labels[:50].double()).all(1).float().mean() > 0.7


# ----------------------------------------------------------------------------- per-class table
def test_per_class_table_matches_sklearn():
    vs, vt = _split(14, ties=True)
    ts, tt = _split(15, ties=True)
    tt[:, 2] = 0  # no positives: AP NaN, excluded (F30)
    tt[:, 4] = 1  # no negatives: AP 1, AUC NaN, still included
    th = ThresholdPolicy().fit(vs, vt).thresholds("tuned")
    names = ["circle", "square", "triangle", "star", "ring"]
    rows = per_class_table(ts, tt, th, names)
    s, t = ts.numpy().astype(np.float64), tt.numpy()
    assert [r["class"] for r in rows] == names
    for j, r in enumerate(rows):
        assert r["support"] == int(t[:, j].sum())
        assert r["threshold"] == float(th[j])
        assert r["f1_t05"] == pytest.approx(f1_score(t[:, j], s[:, j] >= 0.5, zero_division=0), abs=1e-12)
        assert r["f1_tuned"] == pytest.approx(f1_score(t[:, j], s[:, j] >= th[j].item(), zero_division=0), abs=1e-12)
        if j == 2:
            assert math.isnan(r["ap"]) and r["excluded"] and math.isnan(r["auc"])
            continue
        assert not r["excluded"]
        assert r["ap"] == pytest.approx(average_precision_score(t[:, j], s[:, j]), abs=1e-12)
        if j == 4:
            assert math.isnan(r["auc"])
        else:
            assert r["auc"] == pytest.approx(roc_auc_score(t[:, j], s[:, j]), abs=1e-12)
    with pytest.raises(ValueError, match="need 5 thresholds and 5 class names"):
        per_class_table(ts, tt, th, names[:4])


def test_write_per_class_csv_and_png(tmp_path):
    import matplotlib.pyplot as plt

    ts, tt = _split(16)
    tt[:, 1] = 0
    rows = per_class_table(ts, tt, torch.full((5,), 0.4), [f"c{i}" for i in range(5)])
    figs = plt.get_fignums()
    write_per_class(rows, tmp_path / "pc.csv", tmp_path / "plots" / "pc.png")
    assert plt.get_fignums() == figs  # no pyplot global state
    assert (tmp_path / "plots" / "pc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (tmp_path / "pc.csv").open() as fh:
        back = list(csv.DictReader(fh))
    assert [r["class"] for r in back] == [r["class"] for r in rows]
    for got, want in zip(back, rows, strict=True):
        for key in ("ap", "auc", "threshold", "f1_t05", "f1_tuned"):
            assert float(got[key]) == pytest.approx(want[key], nan_ok=True)
        assert int(got["support"]) == want["support"] and got["excluded"] == str(want["excluded"])
    assert back[1]["ap"] == "nan" and back[1]["excluded"] == "True"
