"""Evaluation of slot masks (F05: soft masks upsampled bilinearly then argmaxed, background ignored by FG-ARI; each
wrong resize put into the product fails), the grid floor, both mask sources scored, and the per-clip rows."""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from lit_experiments.metrics import ARIMetric
from lit_experiments.studies.slots import evaluation
from lit_experiments.studies.slots.evaluation import SegmentationScores, predicted_labels

from .helpers import tiny_data, tiny_module, tiny_parts, tiny_trainer


def _f05_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth soft masks (B,T,K,N) on an 8x8 grid and GT (B,T,32,32) that is their F05-correct reading.

    The GT is built from the rule itself (bilinear upsampling of the soft masks, then argmax), written here
    with ``F.interpolate``; slots 0 and 1 both become GT background (id 0), so the background is split
    between two slots: FG-ARI (background ignored) is 1, full ARI is not.
    """
    g = torch.Generator().manual_seed(0)
    logits = F.avg_pool2d(torch.randn(6, 5, 12, 12, generator=g) * 4, 5, stride=1)  # smooth, (6,K=5,8,8)
    soft = logits.softmax(dim=1)
    up = F.interpolate(soft, size=(32, 32), mode="bilinear", align_corners=False)
    labels = up.argmax(dim=1)
    gt = torch.tensor([0, 0, 1, 2, 3])[labels]  # slots 0 and 1 -> background
    return soft.flatten(-2).view(2, 3, 5, 64), gt.view(2, 3, 32, 32)



def _f05_check() -> None:
    """Raises AssertionError when the evaluation path departs from F05 (run on the product, and on mutants)."""
    masks, gt = _f05_case()
    pred, target = evaluation.predicted_labels(masks, (8, 8), gt)
    assert torch.equal(target, gt), "GT must be scored at its own resolution, ids untouched"
    scores = SegmentationScores(num_slots=5)
    scores.update(pred, target, {"instances": gt})
    out = scores.compute()
    for key in ("fg_ari", "video_fg_ari"):
        assert out[key] == pytest.approx(1.0, abs=1e-9), (key, out[key])
    assert out["ari"] < 0.99  # the split background counts in full ARI



def test_f05_soft_masks_are_upsampled_bilinear_then_argmax_and_background_is_ignored():
    _f05_check()
    # the case is sensitive: blocky (grid-cell) labels of the same masks do not match the GT
    masks, gt = _f05_case()
    blocky = masks.view(6, 5, 8, 8).argmax(1).repeat_interleave(4, -1).repeat_interleave(4, -2)
    assert not torch.equal(torch.tensor([0, 0, 1, 2, 3])[blocky], gt.view(6, 32, 32))



def _argmax_before_upsampling(soft, size=None, gt=None):
    labels = soft.argmax(1, keepdim=True).float()
    pred = F.interpolate(labels, size=tuple(gt.shape[-2:]), mode="nearest").squeeze(1).long()
    return pred, gt



def _nearest_upsampling(soft, size=None, gt=None):
    return F.interpolate(soft, size=tuple(gt.shape[-2:]), mode="nearest").argmax(1), gt



def _gt_bilinear_to_the_grid(soft, size=None, gt=None):
    small = F.interpolate(gt[:, None].float(), size=tuple(soft.shape[-2:]), mode="bilinear", align_corners=False)
    return soft.argmax(1), small.round().long()[:, 0]


class _BackgroundCountedARI(ARIMetric):
    def __init__(self, foreground_only: bool = True, name: str | None = None, **kw) -> None:
        super().__init__(False, name=name or ("fg_ari" if foreground_only else "ari"), **kw)


F05_MUTANTS: dict[str, tuple[str, Callable]] = {
    "argmax_before_upsampling": ("resize_masks", _argmax_before_upsampling),
    "nearest_upsampling": ("resize_masks", _nearest_upsampling),
    "gt_bilinear": ("resize_masks", _gt_bilinear_to_the_grid),
    "background_in_fg_ari": ("ARIMetric", _BackgroundCountedARI),
}


@pytest.mark.parametrize("mutant", sorted(F05_MUTANTS))
def test_f05_each_wrong_resize_put_into_the_product_fails_the_check(monkeypatch, mutant):
    """The product's evaluation path passes the check, and each wrong resize put in its place fails it."""
    _f05_check()
    attr, replacement = F05_MUTANTS[mutant]
    monkeypatch.setattr(evaluation, attr, replacement)  # the product's own evaluation path
    with pytest.raises(AssertionError):
        _f05_check()



def test_grid_baseline_is_reported_and_scores_position_only_separation():
    from lit_experiments.studies.slots.evaluation import grid_partition

    gt = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    gt[..., :2, :2] = 1  # two objects in opposite corners: a fixed 2x2 partition separates them
    gt[..., 6:, 6:] = 2
    part = grid_partition(4, tuple(gt.shape))
    assert part.unique().numel() == 4
    scores = SegmentationScores(num_slots=4)
    scores.update(torch.zeros_like(gt), gt, {"instances": gt})  # one slot everywhere: FG-ARI 0
    out = scores.compute()
    assert out["fg_ari"] == pytest.approx(0.0) and out["grid_fg_ari"] == pytest.approx(1.0)



def test_both_mask_sources_are_scored_and_match_a_direct_ari():
    from lit_experiments.metrics import ari

    torch.manual_seed(0)
    dm = tiny_data()
    module = tiny_module(eval_masks="decoder")
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    module.dry_run(batch)
    module.eval()
    with torch.no_grad():
        out = module(batch)
    gt = batch["instances"]
    scores = module.val_scores
    scores.reset()
    pred, target = predicted_labels(out.masks, out.grid, gt)
    alt, _ = predicted_labels(out.attn, out.grid, gt)
    scores.update(pred, target, {"instances": gt}, alt)
    values = scores.compute()
    flat = (target.flatten(0, 1),)
    direct_dec = torch.nanmean(ari(pred.flatten(0, 1), *flat, True))
    direct_attn = torch.nanmean(ari(alt.flatten(0, 1), *flat, True))
    assert values["fg_ari"] == pytest.approx(float(direct_dec), abs=1e-5)
    assert values["fg_ari_attn"] == pytest.approx(float(direct_attn), abs=1e-5)
    assert not torch.equal(pred, alt)  # the two sources really are different masks


@pytest.mark.parametrize("path,source", [("features", "attn"), ("pixels", "attn"), ("pixels", "decoder")])
def test_validation_logs_the_other_mask_source(tmp_path, path, source):
    # on the pixel path the attention lives on the downsampled encoder grid, the decoder on pixels
    dm = tiny_data(pixels=path == "pixels")
    trainer = tiny_trainer(steps=1)
    module = tiny_module(parts=tiny_parts(pixels=path == "pixels"), eval_masks=source)
    trainer.fit(module, dm)
    trainer.validate(module, dm, verbose=False)
    keys = set(trainer.callback_metrics)
    other = "decoder" if source == "attn" else "attn"
    assert any(k.endswith("val/fg_ari") for k in keys), sorted(keys)
    assert any(k.endswith(f"val/fg_ari_{other}") for k in keys), sorted(keys)


def test_overlay_figure_labels_clips_and_frames():
    """Issue 25: the mask figure labelled every row "frame i" although each block of rows is a clip and the
    columns are its frames."""
    import torch

    from lit_experiments.studies.slots.evaluation import overlay_figure

    video = torch.rand(2, 3, 3, 8, 8)
    ids = torch.randint(0, 4, (2, 3, 8, 8))
    fig = overlay_figure(video, ids, ids)
    axes = fig.axes
    assert len(axes) == 2 * 3 * 3
    rows = [ax.get_ylabel() for ax in axes if ax.get_ylabel()]
    assert rows == ["clip 0\nimage", "clip 0\nGT objects", "clip 0\nslots", "clip 1\nimage", "clip 1\nGT objects",
                    "clip 1\nslots"]
    assert [ax.get_title() for ax in axes if ax.get_title()] == ["frame t=0", "frame t=1", "frame t=2"]
