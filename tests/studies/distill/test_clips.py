"""Clips: the video stage trains on clip frames with a temporal term; clips are tested apart from images (F27)."""
from __future__ import annotations

import lightning as L
import pytest
import torch

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.lazy import LazyBuild
from lit_experiments.core.specs import StageSpec
from lit_experiments.studies.distill.components.clips import (
    collate_clips,
    flatten_clips,
    temporal_change,
)
from lit_experiments.studies.distill.components.sources import DistillCoco, DistillShapes
from lit_experiments.studies.distill.components.student import tiny_student
from lit_experiments.studies.distill.components.teacher import Sam3Teacher, tiny_config
from lit_experiments.studies.distill.datamodule import DistillDataModule, collate_units
from lit_experiments.studies.distill.evaluation import postprocess, unit_metric, update_metric
from lit_experiments.studies.distill.module import DistillModule

from .helpers import make_dm

CLIPS = {"n_train": 4, "n_val": 2, "n_test": 3, "num_frames": 3}


@pytest.fixture(scope="module")
def teacher() -> Sam3Teacher:
    return Sam3Teacher(config=tiny_config(image_size=32, patch_size=8, hidden=32, num_queries=4))


def make(tmp_path, teacher, **kw) -> DistillDataModule:
    args = {"n_train": 8, "n_val": 4, "n_test": 4, "shapes": {"image_size": 32}, "clips": CLIPS,
            "cache_dir": str(tmp_path / "cache"), "batch_size": 4, "eval_batch_size": 6, **kw}
    dm = make_dm(teacher=teacher, **args)
    dm.setup("fit")
    return dm


def trainer(tmp_path) -> L.Trainer:
    return L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0,
                     callbacks=[LazyBuild()])


def test_clip_items_are_frames_of_one_moving_clip_with_per_frame_targets_and_teacher(tmp_path, teacher):
    dm = make(tmp_path, teacher)
    item = dm.clip_split("train")[(1, 0)]
    t = CLIPS["num_frames"]
    assert item["image"].shape == (t, 3, 32, 32) and len(item["targets"]) == t
    assert not torch.equal(item["image"][0], item["image"][-1])  # objects move
    frames = dm.unit_source("clips-train")
    for k in range(t):
        assert torch.equal(item["image"][k], frames.image(t + k))
    ids = dm.vocab_ids["teacher_input_ids"][dm.vocab.index(item["prompt"])][None].repeat(t, 1)
    mask = dm.vocab_ids["teacher_attention_mask"][dm.vocab.index(item["prompt"])][None].repeat(t, 1)
    direct = teacher(images=item["image"], input_ids=ids, attention_mask=mask)
    for key, value in direct.items():  # the cached per-frame outputs are the teacher's on those frames
        torch.testing.assert_close(item["teacher"][key], value.float(), atol=5e-3, rtol=2e-3)
    batch = flatten_clips(collate_clips([item, item]))
    assert batch["image"].shape == (2 * t, 3, 32, 32) and batch["frames"] == t
    assert len(batch["targets"]) == 2 * t and batch["student_input_ids"].shape[0] == 2 * t


def test_temporal_change_is_zero_for_still_scores_and_grows_with_flicker():
    still = {"presence_logits": torch.zeros(6), "pred_logits": torch.zeros(6, 4)}
    assert float(temporal_change(still, 3)) == 0.0
    flicker = {"presence_logits": torch.tensor([5.0, -5.0, 5.0, 0.0, 0.0, 0.0]), "pred_logits": torch.zeros(6, 4)}
    assert float(temporal_change(flicker, 3)) > 0.2


def test_video_stage_trains_on_clips_and_refuses_images(tmp_path, teacher):
    torch.manual_seed(0)
    dm = make(tmp_path, teacher, video=True)
    module = DistillModule(tiny_student(image_size=32, num_queries=4))
    module.set_stage(StageSpec(name="video", max_epochs=1, args={"temporal_weight": 0.5}))
    tr = trainer(tmp_path)
    tr.fit(module, datamodule=dm)
    assert torch.isfinite(tr.callback_metrics["video/train/loss"]) and "video/train/temporal" in tr.callback_metrics
    dm.video = False  # the video objective on image batches is a clear config error
    with pytest.raises(ConfigError, match="needs clips"):
        trainer(tmp_path).fit(module, datamodule=dm)


def test_f27_clips_are_scored_apart_from_images_from_clip_frames_only(tmp_path, teacher, monkeypatch):
    torch.manual_seed(0)
    dm = make(tmp_path, teacher)
    module = DistillModule(tiny_student(image_size=32, num_queries=4), probe_images=0, gallery_images=0)
    module._run_dir = tmp_path / "run"
    res = trainer(tmp_path).test(module, datamodule=dm)
    merged = {k: v for r in res for k, v in r.items()}
    # the clip numbers are the student's and the teacher's on the test clips' frames, computed here directly
    split = dm.clip_split("test")
    want_s, want_t = unit_metric(), unit_metric()
    with torch.no_grad():
        items = [split[i] for i in range(len(split))]
        batch = flatten_clips(collate_clips(items))
        # each frame carries ITS clip's prompt ids (built here from the items, not by the product's helper): clip
        # prompt ids tiled across the batch would score frames with other clips' prompts (F27)
        frames = items[0]["image"].shape[0]
        ids = torch.stack([it["student_input_ids"] for it in items for _ in range(frames)])
        assert len({it["prompt"] for it in items}) > 1, "the test clips need different prompts"
        assert torch.equal(batch["student_input_ids"], ids)
        out = module.student(batch["image"], ids)
    update_metric(want_s, postprocess(out, size=(32, 32), **module.calibration.postprocess_kwargs()), batch["targets"])
    update_metric(want_t, postprocess(batch["teacher"], size=(32, 32)), batch["targets"])
    assert merged["test/video/student/miou"] == pytest.approx(float(want_s.compute()["miou"]), abs=1e-5)
    assert merged["test/video/teacher/miou"] == pytest.approx(float(want_t.compute()["miou"]), abs=1e-5)
    assert 0.0 <= merged["test/video/student/temporal_stability"] <= 1.0
    # the image numbers do not mix clip frames in: equal to a test without clips
    plain = make(tmp_path, teacher, clips=None)
    alone = trainer(tmp_path).test(module, datamodule=plain)[0]
    assert merged["test/miou"] == pytest.approx(alone["test/miou"], abs=1e-6)
    # the seed's image-only evaluation put back: the clip numbers vanish and this check fails
    monkeypatch.setattr(DistillDataModule, "test_dataloader",
                        lambda self: self.eval_loader(self.split("test"), collate_fn=collate_units))
    runs = trainer(tmp_path).test(module, datamodule=make(tmp_path, teacher))
    images_only = {k: v for r in runs for k, v in r.items()}
    assert "test/video/student/miou" not in images_only


def test_clip_settings_are_checked():
    assert DistillShapes(clips=None).clips is None
    with pytest.raises(ConfigError, match="unknown keys"):
        DistillShapes(clips={"frames": 3})
    with pytest.raises(ConfigError, match="num_frames >= 2"):
        DistillShapes(clips={"num_frames": 1})
    with pytest.raises(ConfigError, match="clips come from ShapesWorld"):
        split = {"ann_file": "a.json", "image_dir": "images"}
        DistillCoco("x", 32, split, split, split).units("clips-test")
