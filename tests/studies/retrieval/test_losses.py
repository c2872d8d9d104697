"""FastAP against pytorch-metric-learning and a brute-force histogram; SimSiam against its formula (F19, F20, F39)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import FastAPLoss as PMLFastAPLoss

from lit_experiments.core.errors import ConfigError, LitExpError
from lit_experiments.studies.retrieval import losses
from lit_experiments.studies.retrieval.losses import (
    FastAPLoss,
    FastAPNoPositiveError,
    FastAPRangeError,
    SimSiamLoss,
)


def brute_fastap(emb: torch.Tensor, pos: np.ndarray, bins: int, sigma: float | None = None,
                 normalise: bool = True) -> np.ndarray:
    """Per-query FastAP in float64, one query and one pair at a time (NaN for a query without positive)."""
    x = emb.detach().double().numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.clip(2 - 2 * x @ x.T, 0, 4)
    centres = np.linspace(0, 4, bins + 1)
    sigma = 4 / bins if sigma is None else sigma
    out = []
    for i in range(len(x)):
        p = pos[i].copy()
        p[i] = False
        if not p.any():
            out.append(np.nan)
            continue
        h_pos, h_all = np.zeros(bins + 1), np.zeros(bins + 1)
        for j in range(len(x)):
            if j == i:
                continue
            w = np.maximum(0, 1 - np.abs(d[i, j] - centres) / sigma)
            if normalise:
                w = w / w.sum()
            h_all += w
            h_pos += w * p[j]
        cum_pos, cum_all = np.cumsum(h_pos), np.cumsum(h_all)
        out.append(np.sum(h_pos * cum_pos / np.where(cum_all > 0, cum_all, 1)) / p.sum())
    return np.array(out)


def brute_empty_bins(emb: torch.Tensor, bins: int, sigma: float | None = None) -> int:
    """Centres that no off-diagonal pair of the batch reaches with its kernel."""
    x = emb.detach().double().numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.clip(2 - 2 * x @ x.T, 0, 4)[~np.eye(len(x), dtype=bool)]
    centres = np.linspace(0, 4, bins + 1)
    sigma = 4 / bins if sigma is None else sigma
    return int(sum(not np.any(np.abs(d - c) < sigma) for c in centres))


def clustered(n_classes: int = 8, per_class: int = 4, dim: int = 32, noise: float = 0.05,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    centres = torch.randn(n_classes, dim, generator=g)
    return centres[labels] + noise * torch.randn(len(labels), dim, generator=g), labels


@pytest.mark.parametrize("bins", [10, 50, 100])
def test_fastap_matches_pml(bins: int) -> None:
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        emb = torch.randn(40, 16, generator=g)
        labels = torch.randint(0, 5, (40,), generator=g)
        ours_in, pml_in = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        ours, pml = FastAPLoss(bins)(ours_in, labels), PMLFastAPLoss(num_bins=bins)(pml_in, labels)
        ours.backward()
        pml.backward()
        assert abs(ours.item() - pml.item()) < 1e-5, (bins, seed, ours.item(), pml.item())
        assert pml_in.grad.abs().max() > 1e-4  # a real gradient to compare
        assert (ours_in.grad - pml_in.grad).abs().max() < 1e-5
        assert (ours_in.grad - pml_in.grad).abs().max() < 1e-3 * pml_in.grad.abs().max()


@pytest.mark.parametrize(("bins", "sigma"), [(100, 0.05), (100, 0.1), (10, 0.3), (20, None)])
def test_fastap_matches_brute_force(bins: int, sigma: float | None) -> None:
    emb, labels = clustered(6, 4, 8, noise=0.6, seed=bins)
    loss = FastAPLoss(bins, sigma)
    value = loss(emb, labels)
    ref = brute_fastap(emb, (labels[:, None] == labels[None, :]).numpy(), bins, sigma)
    assert value.item() == pytest.approx(1 - ref.mean(), abs=1e-5)
    assert loss.last_stats["fastap_mean"] == pytest.approx(ref.mean(), abs=1e-5)


def test_f20_kernel_wider_than_bins_keeps_fastap_in_unit_range(monkeypatch: pytest.MonkeyPatch) -> None:
    emb, labels = clustered()  # tight classes: positives far ahead of negatives
    pos = (labels[:, None] == labels[None, :]).numpy()
    # without the per-pair normalisation this batch gives FastAP 1.2 (kernel mass at d ~ 0: 1 + 0.2) (F20)
    assert brute_fastap(emb, pos, 100, 0.05, normalise=False).max() > 1.1
    loss = FastAPLoss(bins=100, sigma=0.05)
    value = loss(emb.requires_grad_(), labels)
    assert value.item() >= 0 and 0 <= loss.last_stats["fastap_mean"] <= 1
    assert loss.last_stats["fastap_mean"] == pytest.approx(brute_fastap(emb, pos, 100, 0.05).mean(), abs=1e-6)
    for seed in range(5):  # random batches too
        e, lab = clustered(4, 6, 16, noise=1.0, seed=seed)
        assert 0 <= 1 - loss(e, lab).item() <= 1
    # put the bug back into the product: no normalisation -> the range guard refuses the value
    monkeypatch.setattr(losses, "normalise_pair_weights", lambda w: w)
    with pytest.raises(FastAPRangeError, match=r"bins = 100.*sigma = 0\.05") as err:
        loss(emb, labels)
    assert "1.2" in str(err.value) and isinstance(err.value, LitExpError)


def test_f20_default_width_needs_no_normalisation(monkeypatch: pytest.MonkeyPatch) -> None:
    emb, labels = clustered()
    monkeypatch.setattr(losses, "normalise_pair_weights", lambda w: w * 2)  # must not be used
    loss = FastAPLoss(bins=50)
    assert loss.sigma == pytest.approx(4 / 50)
    loss(emb, labels)
    assert loss.last_stats["fastap_mean"] == pytest.approx(1.0, abs=1e-6)  # perfect ranking, sums of 1


def test_f39_queries_without_positive_counted_and_excluded() -> None:
    g = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 7, 8, 9, 4, 4])  # 7, 8, 9: no positive
    emb = torch.randn(len(labels), 64, generator=g)
    loss = FastAPLoss(bins=100)
    value = loss(emb, labels)
    ref = brute_fastap(emb, (labels[:, None] == labels[None, :]).numpy(), 100)
    assert loss.last_stats["n_queries"] == 16 and loss.last_stats["n_no_positive"] == 3
    assert value.item() == pytest.approx(1 - np.nanmean(ref), abs=1e-5)  # excluded, not counted as 0
    assert value.item() == pytest.approx(PMLFastAPLoss(num_bins=100)(emb, labels).item(), abs=1e-5)
    # 64-d random vectors: distances near 2, most bins get nothing
    assert loss.last_stats["n_empty_bins"] == brute_empty_bins(emb, 100) > 50
    loss(emb, labels)
    wide = FastAPLoss(bins=100, sigma=0.3)
    wide(emb, labels)
    assert wide.last_stats["n_empty_bins"] == brute_empty_bins(emb, 100, 0.3) < loss.last_stats["n_empty_bins"]


def test_f39_batch_without_any_positive_names_the_sampler() -> None:
    emb = torch.randn(12, 8)
    with pytest.raises(FastAPNoPositiveError, match=r"MPerClassBatchSampler.*use_labels: true"):
        FastAPLoss()(emb, torch.arange(12))
    with pytest.raises(FastAPNoPositiveError, match="MPerClassBatchSampler"):
        FastAPLoss()(emb, pos_mask=torch.eye(12, dtype=torch.bool))  # the diagonal is not a positive


def test_pos_mask_equals_labels_path() -> None:
    emb, labels = clustered(5, 4, 16, noise=0.8, seed=1)
    a, b = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    loss = FastAPLoss(bins=50)
    by_labels = loss(a, labels)
    stats = dict(loss.last_stats)
    by_mask = loss(b, pos_mask=labels[:, None] == labels[None, :])
    by_labels.backward()
    by_mask.backward()
    assert by_labels.item() == pytest.approx(by_mask.item(), abs=1e-7)
    assert torch.allclose(a.grad, b.grad, atol=1e-8) and stats == loss.last_stats
    # temporal neighbours as positives (not an equivalence relation): against the brute force
    idx = torch.arange(len(labels))
    mask = (idx[:, None] - idx[None, :]).abs() <= 2
    assert loss(emb, pos_mask=mask).item() == pytest.approx(1 - brute_fastap(emb, mask.numpy(), 50).mean(),
                                                            abs=1e-5)


def test_fastap_bad_config_and_input() -> None:
    with pytest.raises(ConfigError, match="bins = 1"):
        FastAPLoss(bins=1)
    with pytest.raises(ConfigError, match="bins = 2.5"):
        FastAPLoss(bins=2.5)  # type: ignore[arg-type]
    for sigma in (0, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="sigma"):
            FastAPLoss(bins=10, sigma=sigma)
    with pytest.raises(ConfigError, match=r"sigma = 0\.01 with bins = 100"):
        FastAPLoss(bins=100, sigma=0.01)  # below half the spacing: gaps between the kernels
    emb, labels = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="exactly one"):
        FastAPLoss()(emb, labels, pos_mask=labels[:, None] == labels)
    with pytest.raises(ValueError, match="exactly one"):
        FastAPLoss()(emb)
    with pytest.raises(ValueError, match=r"labels have shape \(5,\)"):
        FastAPLoss()(emb, labels[:5])
    with pytest.raises(ValueError, match="torch.bool"):
        FastAPLoss()(emb, pos_mask=torch.ones(6, 6))


def test_simsiam_value_stop_gradient_and_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(10, 32, generator=g).requires_grad_() for _ in range(4))
    loss = SimSiamLoss()(p1, p2, z1, z2)
    expected = -(F.cosine_similarity(p1, z2, dim=1).mean() + F.cosine_similarity(p2, z1, dim=1).mean()) / 2
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    loss.backward()
    assert z1.grad is None and z2.grad is None  # stop-gradient on the projector outputs
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0
    z = torch.randn(10, 32, generator=g)
    assert SimSiamLoss()(z * 3, z, z, z / 2).item() == pytest.approx(SimSiamLoss.floor, abs=1e-6) == -1.0
    # the targets it declares to the guard are the stop-gradient outputs the loss uses
    value, targets = SimSiamLoss().with_targets(p1, p2, z1, z2)
    assert value.item() == pytest.approx(loss.item()) and set(targets) == {"stop_gradient(z1)", "stop_gradient(z2)"}
    assert all(not t.requires_grad for t in targets.values())
    assert torch.equal(targets["stop_gradient(z1)"], z1.detach())
    # SimSiamLoss reaches the stop-gradient through the module name: a mutated product is seen
    monkeypatch.setattr(losses, "stop_gradient", lambda z: z)
    z1.grad = None
    value, targets = SimSiamLoss().with_targets(p1, p2, z1, z2)
    value.backward()
    assert z1.grad is not None and targets["stop_gradient(z1)"].requires_grad


def test_fastap_under_autocast_keeps_float32_distances() -> None:
    g = torch.Generator().manual_seed(2)
    emb, labels = torch.randn(48, 64, generator=g), torch.randint(0, 6, (48,), generator=g)
    loss = FastAPLoss(bins=100)
    full = loss(emb, labels).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(emb, labels)
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(full, abs=1e-6)
