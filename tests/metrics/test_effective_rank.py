"""``effective_rank`` (Roy and Vetterli 2007) against a numpy reference and its limiting cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_experiments.metrics.embedding import effective_rank


def reference(x: np.ndarray) -> float:
    s = np.linalg.svd(x - x.mean(axis=0, keepdims=True), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize("n, d", [(50, 8), (8, 50), (200, 32)])
def test_effective_rank_equals_the_numpy_reference(n, d):
    gen = torch.Generator().manual_seed(n * d)
    x = torch.randn(n, d, generator=gen) @ torch.randn(d, d, generator=gen)  # anisotropic
    got = float(effective_rank(x))
    assert got == pytest.approx(reference(x.double().numpy()), rel=1e-9)
    assert 1.0 <= got <= min(n - 1, d) + 1e-9


def test_rank_one_data_has_effective_rank_one():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 1, generator=gen, dtype=torch.float64) * torch.randn(1, 16, generator=gen, dtype=torch.float64)
    assert float(effective_rank(x + 3.0)) == pytest.approx(1.0, abs=1e-9)
    assert float(effective_rank(torch.ones(10, 4))) == 1.0  # every sample equal: collapse


def test_isotropic_data_reaches_the_dimension():
    gen = torch.Generator().manual_seed(1)
    assert float(effective_rank(torch.randn(20000, 8, generator=gen))) == pytest.approx(8.0, rel=2e-3)
    # fewer samples than dimensions: centred data spans N - 1 directions
    assert float(effective_rank(torch.randn(6, 4000, generator=gen))) == pytest.approx(5.0, rel=2e-3)


def test_effective_rank_is_invariant_to_scale_and_shift():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(64, 12, generator=gen) @ torch.randn(12, 12, generator=gen)
    r = float(effective_rank(x))
    assert float(effective_rank(1e-3 * x)) == pytest.approx(r, rel=1e-9)
    assert float(effective_rank(250.0 * x + 7.0)) == pytest.approx(r, rel=1e-9)
    assert float(effective_rank(x.half())) == pytest.approx(r, rel=1e-2)  # any float dtype is accepted


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="N >= 2"):
        effective_rank(torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        effective_rank(torch.randn(4))
