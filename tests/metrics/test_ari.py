"""ARI / FG-ARI / mBO against scikit-learn and brute force; the resize path of F05."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score

from lit_experiments.metrics import ARIMetric, MBOMetric, ari, mbo, resize_masks

ari_module = importlib.import_module("lit_experiments.metrics.ari")  # the package attribute is the function


def _sk(pred: torch.Tensor, target: torch.Tensor, fg: bool) -> list[float]:
    """Reference: sklearn per sample on the (foreground) pixels; NaN where no pixel is left."""
    out = []
    for p, t in zip(pred.reshape(pred.shape[0], -1).numpy(), target.reshape(target.shape[0], -1).numpy()):
        keep = t != 0 if fg else np.ones_like(t, dtype=bool)
        out.append(adjusted_rand_score(t[keep], p[keep]) if keep.any() else math.nan)
    return out


def _close(a: torch.Tensor, ref: list[float]) -> None:
    np.testing.assert_allclose(a.numpy(), np.array(ref), rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("shape", [(6, 16, 16), (3, 4, 8, 8), (5, 37)])
@pytest.mark.parametrize("fg", [False, True])
def test_ari_matches_sklearn_on_random_labelings(shape, fg):
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, shape, generator=g)
    pred = torch.randint(0, 7, shape, generator=g)
    pred[0] = target[0]  # one perfect sample
    out = ari(pred, target, foreground_only=fg)
    assert out.dtype == torch.float64 and out.shape == (shape[0],)
    _close(out, _sk(pred, target, fg))
    assert out[0] == 1.0


def test_ari_correlated_labelings_and_permutation_invariance():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 6, (4, 24, 24), generator=g)
    noise = torch.rand(target.shape, generator=g) < 0.3
    pred = torch.where(noise, torch.randint(0, 6, target.shape, generator=g), target)
    perm = torch.randperm(6, generator=g)
    for fg in (False, True):
        ref = _sk(pred, target, fg)
        _close(ari(pred, target, fg), ref)
        _close(ari(perm[pred], target, fg), ref)  # renaming predicted ids changes nothing
        _close(ari(pred * 7 - 3, target, fg), ref)  # negative / sparse ids (compaction path)
    assert min(_sk(pred, target, True)) > 0.3  # the case is informative, not all-random


def test_ari_soft_masks_argmax_with_ties():
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, 4, (3, 10, 10), generator=g)
    soft = torch.randint(0, 3, (3, 5, 10, 10), generator=g).float()  # many exact ties
    labels = torch.from_numpy(soft.numpy().argmax(axis=1))  # numpy: first maximum wins, like torch
    for fg in (False, True):
        _close(ari(soft, target, fg), _sk(labels, target, fg))


def test_ari_edge_cases_follow_sklearn():
    z = torch.zeros(1, 4, 4, dtype=torch.long)
    one = z + 3
    many = torch.arange(16).reshape(1, 4, 4)
    cases = [(one, one), (one, z + 1), (one, many % 3 + 1), (many, many), (many % 2, many % 3 + 1)]
    for p, t in cases:
        _close(ari(p, t, False), _sk(p, t, False))
    assert ari(one, z + 1, False).item() == 1.0  # single cluster on both sides
    assert ari(many, many + 1, False).item() == 1.0  # all singletons on both sides


def test_ari_empty_foreground_is_nan_and_single_pixel_is_one():
    target = torch.zeros(2, 5, 5, dtype=torch.long)
    target[1, 2, 2] = 4
    pred = torch.randint(0, 3, (2, 5, 5), generator=torch.Generator().manual_seed(3))
    out = ari(pred, target, foreground_only=True)
    assert math.isnan(out[0].item())
    assert out[1].item() == 1.0 == adjusted_rand_score([4], [int(pred[1, 2, 2])])
    assert not torch.isnan(ari(pred, target, foreground_only=False)).any()


def test_sparse_path_matches_dense(monkeypatch):
    g = torch.Generator().manual_seed(4)
    target = torch.randint(0, 5, (4, 12, 12), generator=g)
    pred = torch.randint(0, 6, (4, 12, 12), generator=g)
    dense = (ari(pred, target, True), ari(pred, target, False), mbo(pred, target))
    monkeypatch.setattr(ari_module, "_DENSE_LIMIT", 0)
    sparse = (ari(pred, target, True), ari(pred, target, False), mbo(pred, target))
    for d, s in zip(dense, sparse):
        torch.testing.assert_close(d, s, rtol=0, atol=1e-12)


def _mbo_ref(pred: torch.Tensor, target: torch.Tensor) -> list[float]:
    out = []
    for p, t in zip(pred.reshape(pred.shape[0], -1).numpy(), target.reshape(target.shape[0], -1).numpy()):
        best = []
        for gid in np.unique(t[t != 0]):
            g = t == gid
            best.append(max(np.sum(g & (p == pid)) / np.sum(g | (p == pid)) for pid in np.unique(p)))
        out.append(float(np.mean(best)) if best else math.nan)
    return out


def test_mbo_matches_brute_force():
    g = torch.Generator().manual_seed(5)
    target = torch.randint(0, 4, (5, 9, 9), generator=g)
    target[2] = 0  # no object -> NaN
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.2, torch.randint(0, 5, target.shape, generator=g), target)
    _close(mbo(pred, target), _mbo_ref(pred, target))
    soft = F.one_hot(pred, 5).permute(0, 3, 1, 2).float()
    _close(mbo(soft, target), _mbo_ref(pred, target))


def test_bad_shapes_name_the_arguments():
    t = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"pred \(2, 4, 5\), target \(2, 4, 4\)"):
        ari(torch.zeros(2, 4, 5, dtype=torch.long), t)
    with pytest.raises(ValueError, match="soft pred"):
        ari(torch.zeros(2, 3, 4, 5), t)
    with pytest.raises(ValueError, match="target must be an integer"):
        ari(t, t.float())


def _blocky_gt(b: int, grid: int, cell: int, gen: torch.Generator) -> torch.Tensor:
    ids = torch.randint(0, 5, (b, grid, grid), generator=gen)
    return ids.repeat_interleave(cell, 1).repeat_interleave(cell, 2)


def test_f05_gt_masks_survive_the_resize_path():
    """GT -> one-hot patch masks -> resize_masks back to GT size recovers the GT (FG-ARI ~1)."""
    gen = torch.Generator().manual_seed(6)
    # Horizontal stripes on a 4 px patch grid: no patch corners, so the round trip is exact.
    rows = torch.randint(0, 5, (3, 8, 1), generator=gen).expand(3, 8, 8)
    stripes = rows.repeat_interleave(4, 1).repeat_interleave(4, 2)
    soft = F.one_hot(stripes[:, ::4, ::4], 5).permute(0, 3, 1, 2).float()
    labels, gt_out = resize_masks(soft, gt=stripes)
    assert torch.equal(gt_out, stripes) and torch.equal(labels, stripes)
    _close(ari(labels, stripes, True), _sk(labels, stripes, True))
    assert torch.all(ari(labels, stripes, True) == 1.0)
    # General blocky masks: bilinear + argmax can only flip the pixel nearest a patch corner where
    # three patches outvote the fourth (own weight 0.625**2 < 0.5); everything else is recovered.
    gt = _blocky_gt(3, 8, 4, gen)
    patch = gt[:, ::4, ::4]
    soft = F.one_hot(patch, 5).permute(0, 3, 1, 2).float()  # (B, K, 8, 8)
    labels = resize_masks(soft, gt=gt)[0]
    tokens = soft.flatten(2)  # (B, K, N) patch-token layout gives the same
    assert torch.equal(resize_masks(tokens, size=32), labels)
    off = torch.arange(32) % 4
    corner_px = ((off == 0) | (off == 3))[:, None] & ((off == 0) | (off == 3))[None, :]
    assert not ((labels != gt) & ~corner_px).any()
    good = ari(labels, gt, True)
    _close(good, _sk(labels, gt, True))
    # Wrong path (F05): argmax at patch resolution, then resize the *label ids* bilinearly.
    wrong = F.interpolate(patch[:, None].float(), size=32, mode="bilinear", align_corners=False).round().long()[:, 0]
    assert torch.all(ari(wrong, gt, True) < good)
    with pytest.raises(ValueError, match="F05"):
        resize_masks(patch, size=32)


def test_f05_gt_is_resized_nearest_and_soft_masks_bilinear():
    gen = torch.Generator().manual_seed(7)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    gt = torch.zeros(4, 64, 64, dtype=torch.long)
    for b in range(4):
        for obj in range(1, 4):
            cy, cx, r = (torch.rand(3, generator=gen) * torch.tensor([40.0, 40.0, 8.0]) + torch.tensor([12.0, 12.0, 6.0]))
            gt[b][(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = obj
    # GT nearest never invents ids; a bilinear GT resize does (between ids 0 and 2 lies a fake 1).
    _, gt_small = resize_masks(torch.zeros(4, 2, 8, 8), size=24, gt=gt)
    bil = F.interpolate(gt[:, None].float(), size=24, mode="bilinear", align_corners=False).round().long()[:, 0]
    invented = []
    for b in range(4):
        ids = set(gt[b].unique().tolist())
        assert set(gt_small[b].unique().tolist()) <= ids
        invented.append(not set(bil[b].unique().tolist()) <= ids)
    assert any(invented)
    # An ideal patch-level prediction (area fractions per 8x8 patch): bilinear+argmax beats nearest.
    soft = F.avg_pool2d(F.one_hot(gt, 4).permute(0, 3, 1, 2).float(), 8)
    good = resize_masks(soft, gt=gt)[0]
    near = F.interpolate(soft, size=64, mode="nearest").argmax(1)
    assert torch.all(ari(good, gt, True) > ari(near, gt, True))


def test_ari_metric_groups_and_skipped():
    gen = torch.Generator().manual_seed(8)
    target = torch.randint(0, 4, (6, 8, 8), generator=gen)
    target[5] = 0
    pred = torch.randint(0, 4, (6, 8, 8), generator=gen)
    groups = ["metal", "rubber", "metal", 3, "mixed", "metal"]
    m = ARIMetric(foreground_only=True)
    m.update(pred[:4], target[:4], groups[:4])
    m.update(pred[4:], target[4:], groups[4:])
    out = m.compute()
    ref = torch.tensor(_sk(pred, target, True), dtype=torch.float64)
    assert out["fg_ari_count"] == 5 and out["fg_ari_skipped"] == 1
    torch.testing.assert_close(out["fg_ari"], ref[:5].mean())
    torch.testing.assert_close(out["fg_ari/metal"], ref[[0, 2]].mean())
    assert out["fg_ari_count/metal"] == 2 and out["fg_ari_skipped/metal"] == 1
    torch.testing.assert_close(out["fg_ari/3"], ref[3])
    assert set(k for k in out if k.startswith("fg_ari/")) == {"fg_ari/metal", "fg_ari/rubber", "fg_ari/3", "fg_ari/mixed"}
    mb = MBOMetric()
    mb.update(pred, target)
    res = mb.compute()
    torch.testing.assert_close(res["mbo"], torch.tensor(_mbo_ref(pred, target)[:5], dtype=torch.float64).mean())
    assert res["mbo_skipped"] == 1
    with pytest.raises(ValueError, match="groups has 2 entries"):
        m.update(pred[:3], target[:3], ["a", "b"])
