"""Regression tests for LESSONS F01-F06 (each fails when its bug is put back)."""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from lit_experiments.cli import main as cli_main
from lit_experiments.core.health import TrainingHealthError
from lit_experiments.metrics import ARIMetric
from lit_experiments.studies.slots import evaluation
from lit_experiments.studies.slots.analyze import feature_stats
from lit_experiments.studies.slots.analyze import main as analyze_main
from lit_experiments.studies.slots.encoders import Encoded, FeatureInput
from lit_experiments.studies.slots.evaluation import SegmentationScores, predicted_labels
from lit_experiments.studies.slots.losses import ReconstructionLoss, check_loss_name, reconstruction_loss
from lit_experiments.studies.slots.module import SlotsModule
from lit_experiments.studies.slots.slot_attention import SlotAttention

from .helpers import tiny_data, tiny_module, tiny_parts, tiny_trainer


def test_f01_target_through_trainable_projection_is_caught_by_health_guard(monkeypatch):
    """The seed's bug put back into the product: FeatureInput returns its trainable projection as the target."""
    product_forward = FeatureInput.forward

    def target_through_projection(self: FeatureInput, batch: dict) -> Encoded:
        enc = product_forward(self, batch)
        return Encoded(sa_input=enc.sa_input, target=enc.sa_input, grid=enc.grid)

    monkeypatch.setattr(FeatureInput, "forward", target_through_projection)
    # the reconstruction must still match the target's size: project to the feature size itself
    module = tiny_module(parts=tiny_parts(projection_dim=16))
    with pytest.raises(TrainingHealthError, match="recon_target"):
        tiny_trainer(steps=2).fit(module, datamodule=tiny_data())


def test_f01_projection_feeds_slot_attention_only_and_target_is_frozen():
    dm = tiny_data()
    module = tiny_module(parts=tiny_parts(projection_dim=8))
    trainer = tiny_trainer(steps=3)
    trainer.fit(module, datamodule=dm)  # the guard passes on the correct module
    assert trainer.global_step == 3
    batch = next(iter(dm.train_dataloader()))
    enc = module.model.encode(batch)
    assert enc.sa_input.shape[-1] == 8 and enc.sa_input.requires_grad
    assert not enc.target.requires_grad
    torch.testing.assert_close(enc.target, batch["features"].float())  # the frozen feature itself


@pytest.mark.parametrize("name", ["spatial", "spatial_norm", "instance_norm"])
def test_f02_spatial_normalisation_is_rejected(name):
    with pytest.raises(ValueError, match="F02"):
        check_loss_name(name)
    with pytest.raises(ValueError, match="F02"):
        ReconstructionLoss(name)


def test_f02_channel_norm_keeps_position_differences():
    # one channel-constant shift per position is removed; a per-channel offset over space is not
    target = torch.randn(2, 16, 8)
    spatially_flattened = target - target.mean(dim=1, keepdim=True)  # what spatial normalisation would do
    assert reconstruction_loss(spatially_flattened, target, "channel_norm").loss > 1e-3


def test_f03_channel_norm_is_invariant_to_backbone_feature_scale_mse_is_not():
    torch.manual_seed(0)
    target, recon = torch.randn(2, 3, 16, 8), torch.randn(2, 3, 16, 8)
    for scale in (2.4, 4.0):  # DINOv2-like vs DINOv1-like feature std
        cn = reconstruction_loss(scale * recon, scale * target, "channel_norm")
        ref = reconstruction_loss(recon, target, "channel_norm")
        torch.testing.assert_close(cn.loss, ref.loss, rtol=1e-4, atol=1e-5)
        mse = reconstruction_loss(scale * recon, scale * target, "mse")
        mse_ref = reconstruction_loss(recon, target, "mse")
        assert mse.loss.item() == pytest.approx(scale**2 * mse_ref.loss.item(), rel=1e-4)
        # the reported relative loss compares backbones with different scales
        assert mse.relative.item() == pytest.approx(mse_ref.relative.item(), rel=1e-4)


def test_f04_positional_embedding_changes_the_slot_attention_input():
    torch.manual_seed(0)
    with_pos = SlotAttention(16, 3, in_dim=8, grid=(4, 4))
    without = SlotAttention(16, 3, in_dim=8, pos_emb=False)
    without.load_state_dict({k: v for k, v in with_pos.state_dict().items() if not k.startswith("pos_emb")})
    feats = torch.randn(1, 1, 8).expand(2, 16, 8)  # identical features at every position
    x_on, x_off = with_pos.prepare_input(feats), without.prepare_input(feats)
    assert not torch.allclose(x_on, x_off)
    torch.testing.assert_close(x_on - x_off, with_pos.pos_emb.weight.expand(2, -1, -1))
    assert x_off[0].std(dim=0).max() < 1e-5 < x_on[0].std(dim=0).max()  # positions only differ with pos-emb


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
    attr, replacement = F05_MUTANTS[mutant]
    monkeypatch.setattr(evaluation, attr, replacement)  # the product's own evaluation path
    with pytest.raises(AssertionError):
        _f05_check()


def test_f06_analysis_ranks_structured_features_above_flat(tmp_path, capsys):
    torch.manual_seed(0)
    ids = torch.randint(0, 4, (4, 64))
    codes = torch.randn(4, 32) * 3
    structured = codes[ids] + 0.1 * torch.randn(4, 64, 32)  # objects with distinct features
    flat = torch.randn(1, 1, 32) * 3 + 0.1 * torch.randn(4, 64, 32)  # the same feature everywhere
    assert feature_stats(structured)["ratio"] > 5 * feature_stats(flat)["ratio"]
    # the command writes a CSV + plot and ranks layers by ratio
    code = analyze_main(["--backbone", "colour_edge", "--n", "4", "--image-size", "32", "--out", str(tmp_path)])
    assert code == 0
    assert cli_main(["slots-analyze", "--backbone", "colour_edge", "--n", "2", "--image-size", "32",
                     "--out", str(tmp_path / "cli")]) == 0
    csv_text = (tmp_path / "colour_edge_layers.csv").read_text()
    assert "spatial_std" in csv_text and (tmp_path / "colour_edge_layers.png").stat().st_size > 0
    assert "ratio" in capsys.readouterr().out


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
    dm = tiny_data(input=path)
    trainer = tiny_trainer(steps=1)
    module = tiny_module(parts=tiny_parts(pixels=path == "pixels"), eval_masks=source)
    trainer.fit(module, dm)
    trainer.validate(module, dm, verbose=False)
    keys = set(trainer.callback_metrics)
    other = "decoder" if source == "attn" else "attn"
    assert any(k.endswith("val/fg_ari") for k in keys), sorted(keys)
    assert any(k.endswith(f"val/fg_ari_{other}") for k in keys), sorted(keys)


class _SameClipForAll(SlotsModule):
    """A cache / loader bug put back: every clip of the batch carries the first clip's features."""

    def training_step(self, batch, batch_idx):
        batch = dict(batch)
        batch["features"] = batch["features"][:1].expand_as(batch["features"]).contiguous()
        return super().training_step(batch, batch_idx)


def test_identical_inputs_across_the_batch_are_caught_but_learned_init_is_not_flagged():
    with pytest.raises(TrainingHealthError, match="inputs"):
        tiny_trainer(steps=2).fit(tiny_module(_SameClipForAll), tiny_data())
    trainer = tiny_trainer(steps=2)
    module = tiny_module(parts=tiny_parts(pixels=True, learned=True, bilevel=True))
    trainer.fit(module, tiny_data(input="pixels"))
    assert trainer.global_step == 2
