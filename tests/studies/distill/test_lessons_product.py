"""Distill failure modes checked through the product's own path (issue 26): the real DistillModule,
DistillDataModule, curriculum runner and results.json, with models whose outputs the bug changes.

* F01: the teacher's outputs are the decoder stage's targets, declared to the TrainingHealth guard with the frozen
  teacher as their source; a teacher left trainable stops the run.
* F26: a test metric that is undefined on the split (NaN) is listed in results.json ``undefined`` and is null in
  ``test``, never 0.0.
* F42: the student's calibration is fitted on the student's own validation records, never the teacher's.
* F46: paraphrase stability compares only paraphrases of one concept (``c``, ``a c``, ``the c``) on images that
  contain it; checked against brute-force mask IoUs of the teacher's outputs.
"""
from __future__ import annotations

import itertools
import json
import math

import lightning as L
import numpy as np
import pytest
import torch

from lit_experiments.core.health import TrainingHealthError
from lit_experiments.core.lazy import LazyBuild
from lit_experiments.core.specs import StageSpec
from lit_experiments.core.trainer import LitTrainer
from lit_experiments.studies.distill.components.calibration import (
    calibration_records,
    cat_records,
    fit_calibration,
)
from lit_experiments.studies.distill.components.student import tiny_student
from lit_experiments.studies.distill.components.teacher import Sam3Teacher, tiny_config
from lit_experiments.studies.distill.evaluation import postprocess
from lit_experiments.studies.distill.module import DistillModule

from .helpers import make_dm, run_test_loop

FAST = dict(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, log_every_n_steps=1, limit_val_batches=0)


def tiny_teacher() -> Sam3Teacher:
    return Sam3Teacher(config=tiny_config(image_size=32, patch_size=8, hidden=32, num_queries=4))


@pytest.fixture(scope="module")
def teacher() -> Sam3Teacher:
    return tiny_teacher()


def curriculum(tmp_path, teacher, module: DistillModule | None = None, test_after: bool = False, **data) -> dict:
    """One decoder step of the real DistillModule through the curriculum runner (TrainingHealth attached)."""
    torch.manual_seed(0)
    dm = make_dm(teacher=teacher, **{"n_train": 8, "n_val": 4, "n_test": 8, "shapes": {"image_size": 32},
                                      "cache_dir": str(tmp_path / "cache"), "batch_size": 4, **data})
    module = module or DistillModule(tiny_student(image_size=32, num_queries=4), probe_images=0, gallery_images=0)
    trainer = LitTrainer(run_dir=str(tmp_path / "run"), **FAST)
    return trainer.curriculum(module, dm, [StageSpec(name="decoder", max_steps=1)], test_after=test_after)


# ------------------------------------------------------------------------------------------------- F01
def test_f01_a_teacher_left_trainable_is_caught_by_the_health_guard(tmp_path, monkeypatch):
    """The seed's bug class put into the product: ``Sam3Teacher.freeze`` keeps eval mode but leaves the weights
    trainable, so the decoder stage's targets (the teacher's outputs) come from a source that can move."""
    assert curriculum(tmp_path / "ok", tiny_teacher())["status"] == "done"  # the product passes first

    def eval_only(self: Sam3Teacher) -> Sam3Teacher:
        self.model.eval()
        return self

    monkeypatch.setattr(Sam3Teacher, "freeze", eval_only)
    trainable = tiny_teacher()
    assert any(p.requires_grad for p in trainable.parameters())
    with pytest.raises(TrainingHealthError,
                       match=r"target_grad.*target 'teacher/pred_\w+' is computed from a source with trainable "
                             r"parameters.*F01"):
        curriculum(tmp_path / "bug", trainable)


# ------------------------------------------------------------------------------------------------- F26
def test_f26_an_undefined_test_metric_is_listed_and_null_in_results_json_never_zero(tmp_path, teacher):
    """A student that keeps a prediction for every unit (its stored threshold hand-set to 0: a model that predicts
    everything, not nothing) on a test split with positive and negative units: every unit is predicted present,
    so IL_MCC (an empty "predicted absent" marginal) and cgF1 = pmF1 x IL_MCC are undefined; mIoU is defined."""
    module = DistillModule(tiny_student(image_size=32, num_queries=4), probe_images=0, gallery_images=0)
    module.calibration_values.copy_(torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64))  # keep every query
    out = curriculum(tmp_path, teacher, module, test_after=True)
    assert out["status"] == "done"
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    test, undefined = data["test"], data.get("undefined", {})
    # brute force: the split has positive and negative units, and a threshold of 0 keeps every query of every unit
    counts = (test["test/miou_pos"], test["test/miou"])
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in counts), counts
    dm = make_dm(teacher=teacher, n_train=8, n_val=4, n_test=8, shapes={"image_size": 32},
                 cache_dir=str(tmp_path / "cache"), batch_size=4)
    src, units = dm.unit_source("test"), dm.split("test").units
    has_gt = [bool(src.targets(i, p)["masks"].numel()) for i, p in units]
    assert any(has_gt) and not all(has_gt)
    for name in ("test/il_mcc", "test/cgf1"):
        assert name in undefined, (name, undefined)
        assert test.get(name) is None, (name, test.get(name))  # null (absent), never 0.0
    assert "test/miou" not in undefined and "test/presence_f1" not in undefined


# ------------------------------------------------------------------------------------------------- F42
def test_f42_the_students_calibration_is_fitted_on_its_own_validation_records(tmp_path, teacher):
    """The validation loop of the real module fits the student's calibration from the student's records; the
    teacher's validation records (a different model: a different threshold / temperature) give another one."""
    torch.manual_seed(0)
    dm = make_dm(teacher=teacher, n_train=8, n_val=8, n_test=4, shapes={"image_size": 32},
                 cache_dir=str(tmp_path / "cache"), batch_size=4, eval_batch_size=4)
    module = DistillModule(tiny_student(image_size=32, num_queries=4), probe_images=0, gallery_images=0)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                        callbacks=[LazyBuild()])
    trainer.validate(module, datamodule=dm, verbose=False)
    module.eval()
    mine, theirs = [], []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            mine.append(calibration_records(module(batch), batch["targets"]))
            theirs.append(calibration_records(batch["teacher"], batch["targets"]))
    want = fit_calibration(cat_records(mine), metric="f1")
    teacher_cal = fit_calibration(cat_records(theirs), metric="f1")
    got = module.calibration
    assert (teacher_cal.threshold, teacher_cal.temperature) != pytest.approx((want.threshold, want.temperature))
    assert got.threshold == pytest.approx(want.threshold) and got.temperature == pytest.approx(want.temperature)
    assert got.presence_temperature == pytest.approx(want.presence_temperature)
    assert module.teacher_calibration.threshold == pytest.approx(teacher_cal.threshold)


# ------------------------------------------------------------------------------------------------- F46
def _pairwise_iou(unions: list[np.ndarray]) -> float:
    vals = []
    for a, b in itertools.combinations(unions, 2):
        union = int((a | b).sum())
        vals.append(int((a & b).sum()) / union if union else 1.0)
    return float(np.mean(vals))


def test_f46_paraphrase_groups_name_one_concept_brute_force_through_the_test(tmp_path, teacher):
    """The test's paraphrase stability of the teacher equals brute-force IoUs of the teacher's masks for ``c`` /
    ``a c`` / ``the c`` on the probe images that contain ``c`` (a group with another concept would mix in
    concept responsiveness); the teacher's masks move with the concept, so such a group changes the number."""
    dm, module, res = run_test_loop(tmp_path, teacher, probe_images=6, threshold=0.05)  # some masks of both models
    src = dm.unit_source("test")
    probe = [i for i in range(len(src)) if src.present[i] and len(src.present[i]) < len(dm.categories)][:6]
    assert probe
    kw = module.teacher_calibration.postprocess_kwargs()

    def unions(i: int, prompts: list[str]) -> list[np.ndarray]:
        tok = teacher.tokenize(prompts)
        with torch.no_grad():
            out = teacher(images=src.image(i)[None].expand(len(prompts), -1, -1, -1), **tok)
        return [u.union().numpy() for u in postprocess(out, **kw)]

    values, other = [], []
    for c in dm.categories:
        for i in probe:
            if c in src.present[i]:
                values.append(_pairwise_iou(unions(i, [c, f"a {c}", f"the {c}"])))
                other.append([u for d in dm.categories if d != c for u in unions(i, [d])])
    assert values
    want = float(np.mean(values))
    assert res["test/teacher_paraphrase_stability"] == pytest.approx(want, abs=1e-6)
    # the teacher's masks depend on the concept named: a group that named another concept would score otherwise
    same = [unions(i, [c])[0] for c in dm.categories for i in probe if c in src.present[i]]
    assert any(any(not np.array_equal(s, o) for o in os_) for s, os_ in zip(same, other))
    assert math.isfinite(res["test/paraphrase_stability"])
