"""Embedding-collapse diagnostics (F19) against numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lit_experiments.metrics import embedding_stats


def _pairwise_cos(e: torch.Tensor) -> np.ndarray:
    z = e.double().numpy()
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    c = z @ z.T
    return c[np.triu_indices(len(z), k=1)]


def test_f19_detects_collapse_vs_healthy():
    g = torch.Generator().manual_seed(0)
    d = 64
    healthy = torch.randn(1500, d, generator=g)
    collapsed = torch.randn(1, d, generator=g) + 0.01 * torch.randn(1500, d, generator=g)
    h, c = embedding_stats(healthy), embedding_stats(collapsed)
    # Uniform directions: each coordinate has variance 1/d, so std ~ 1/sqrt(d); the estimate from
    # 1500 samples has ~2% relative error, 5% is > 2 standard errors.
    assert h["std"].item() == pytest.approx(1 / math.sqrt(d), rel=0.05)
    assert h["std_ratio"].item() == pytest.approx(1.0, rel=0.05)
    # Collapse: every embedding is the same direction up to 1% noise -> std ~ 0.01 / |v| per dim.
    assert c["std_ratio"].item() < 0.05
    assert c["cos_p05"].item() > 0.99 and abs(h["cos_mean"].item()) < 0.01
    assert h["std_expected"].item() == pytest.approx(1 / 8)


def test_values_match_numpy():
    g = torch.Generator().manual_seed(1)
    e = torch.randn(300, 16, generator=g) + 0.3
    out = embedding_stats(e, bins=10)
    z = e.double().numpy()
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    assert out["std"].item() == pytest.approx(z.std(axis=0).mean(), abs=1e-12)
    cos = _pairwise_cos(e)
    assert out["cos_mean"].item() == pytest.approx(cos.mean(), abs=1e-12)
    for q, key in ((5, "cos_p05"), (50, "cos_p50"), (95, "cos_p95")):
        assert out[key].item() == pytest.approx(np.percentile(cos, q), abs=1e-12)
    counts, edges = np.histogram(cos, bins=10, range=(-1, 1))
    np.testing.assert_array_equal(out["hist_counts"].numpy(), counts)
    np.testing.assert_allclose(out["hist_edges"].numpy(), edges, rtol=0, atol=1e-15)
    assert out["n_pair_samples"] == 300


def test_subsampling_and_errors():
    e = torch.randn(120, 8, generator=torch.Generator().manual_seed(2))
    out = embedding_stats(e, max_samples=50)
    assert out["n_pair_samples"] == 50 and int(out["hist_counts"].sum()) == 50 * 49 // 2
    with pytest.raises(ValueError, match=r"\(N, D\) with N >= 2"):
        embedding_stats(torch.zeros(1, 4))
