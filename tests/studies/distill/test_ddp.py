"""DDP-safe evaluation of distill (F44): a 2-rank test run reports the 1-rank run's test metrics.

Same tiny student and teacher, same 7 test images (their units split unevenly over 2 ranks, eval batches of 4) and
3 test clips: every number (SA-Co metrics of student, teacher and floors, ECE from the calibration rows, the clip
metrics, F46 probes) goes through torchmetrics / :class:`~lit_experiments.metrics.gathered.GatheredRows` and is
reduced across ranks, and the per-unit table (F51) holds every unit once. Rows kept per rank (not gathered) would
leave rank 0 with half of the units: the per-unit ids no longer match the gathered IoUs and ECE moves.
"""
from __future__ import annotations

import json

import pytest
import torch

from lit_experiments.core.trainer import LitTrainer
from lit_experiments.studies.distill.components.student import tiny_student
from lit_experiments.studies.distill.components.teacher import Sam3Teacher, tiny_config
from lit_experiments.studies.distill.module import DistillModule

from .helpers import make_dm

FAST = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, logger=False,
            enable_checkpointing=False)
CLIPS = {"n_train": 2, "n_val": 2, "n_test": 3, "num_frames": 2}


def _test(module, teacher, tmp_path, run_dir, **kw) -> dict[str, float]:
    # no text tower by hand: the datamodule reads the student's tokenizer from the trainer's module on every rank
    dm = make_dm(teacher=teacher, n_train=4, n_val=3, n_test=7, shapes={"image_size": 32}, clips=CLIPS,
                 cache_dir=str(tmp_path / "cache"), batch_size=4, eval_batch_size=4, text=None)
    module._run_dir = run_dir
    trainer = LitTrainer(run_dir=str(run_dir), **{**FAST, "devices": 1, **kw})
    runs = trainer.test(module, datamodule=dm, verbose=False)
    return {k: v for r in runs for k, v in r.items()}


def _units(run_dir) -> dict[str, dict[str, float]]:
    blob = json.loads((run_dir / "per_item" / "test_units.json").read_text())
    return {name: dict(zip(blob["ids"], values)) for name, values in blob["scores"].items()} | {
        "_n": {"ids": len(blob["ids"])}}


def test_f44_two_rank_distill_test_metrics_equal_the_one_rank_run(tmp_path):
    torch.manual_seed(0)
    teacher = Sam3Teacher(config=tiny_config(image_size=32, patch_size=8, hidden=32, num_queries=4))
    module = DistillModule(tiny_student(image_size=32, num_queries=4), probe_images=3, gallery_images=0)
    one = _test(module, teacher, tmp_path, tmp_path / "one")  # builds the teacher caches the ranks then read
    two = _test(module, teacher, tmp_path, tmp_path / "two", strategy="ddp_spawn", devices=2)
    assert {"test/miou_pos", "test/teacher_miou_pos", "test/miou", "test/ece",
            "test/teacher_ece", "test/video/student/miou", "test/concept_responsiveness"} <= set(one)
    assert set(two) == set(one)
    for key in one:
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
    units_one, units_two = _units(tmp_path / "one"), _units(tmp_path / "two")
    assert units_one["_n"]["ids"] > 7 and set(units_two) == set(units_one)
    for name in units_one:  # every unit once, with its own score, whichever rank scored it
        assert units_two[name].keys() == units_one[name].keys(), name
        for unit, value in units_one[name].items():
            assert units_two[name][unit] == pytest.approx(value, abs=1e-5), (name, unit)
