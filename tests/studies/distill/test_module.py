"""DistillModule: the decoder stage trains the student on the teacher's cached outputs; the calibration fitted on
validation is stored with the weights (F42); the test scores student and teacher in one table."""
from __future__ import annotations

import lightning as L
import pytest
import torch

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.lazy import LazyBuild
from lit_experiments.core.specs import StageSpec
from lit_experiments.studies.distill.datamodule import DistillDataModule
from lit_experiments.studies.distill.module import DistillModule
from lit_experiments.studies.distill.student import tiny_student
from lit_experiments.studies.distill.teacher import Sam3Teacher, tiny_config


@pytest.fixture(scope="module")
def teacher() -> Sam3Teacher:
    return Sam3Teacher(config=tiny_config(image_size=32, patch_size=8, hidden=32, num_queries=4))


def test_decoder_stage_fits_stores_calibration_and_tables_student_and_teacher(tmp_path, teacher):
    torch.manual_seed(0)
    dm = DistillDataModule(teacher=teacher, n_train=16, n_val=8, n_test=8, shapes={"image_size": 32},
                           cache_dir=str(tmp_path / "cache"), batch_size=8)
    module = DistillModule(tiny_student(image_size=32, num_queries=4))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0,
                        callbacks=[LazyBuild()])
    trainer.fit(module, datamodule=dm)
    losses = trainer.callback_metrics
    assert torch.isfinite(losses["train/loss"])
    cal = module.calibration
    assert cal.fitted and cal.temperature > 0
    state = module.state_dict()
    assert "calibration_values" in state  # saved with every checkpoint of these weights
    module._run_dir = tmp_path / "run"
    res = trainer.test(module, datamodule=dm)[0]
    for key in ("test/student/miou", "test/teacher/miou", "test/student_raw/miou",
                "test/student/paraphrase_stability", "test/teacher/paraphrase_stability"):
        assert 0.0 <= res[key] <= 1.0
    for who in ("student", "teacher"):  # F46: present minus absent prompt score, in [-1, 1]
        assert -1.0 <= res[f"test/{who}/concept_responsiveness"] <= 1.0
    table = (tmp_path / "run" / "distill" / "teacher_vs_student.md").read_text()
    assert "miou" in table and "teacher" in table


def test_unbuilt_objectives_are_named():
    module = DistillModule(tiny_student(image_size=32, num_queries=4))
    with pytest.raises(ConfigError, match="'video' is not built yet"):
        module.set_stage(StageSpec(name="video", max_steps=1))
    with pytest.raises(ConfigError, match="unknown args"):
        module.set_stage(StageSpec(name="decoder", max_steps=1, args={"gt": 1.0}))


def test_encoder_stage_distils_the_teachers_cached_vision_features(tmp_path, teacher):
    from lit_experiments.studies.distill.datamodule import TeacherVision

    dm = DistillDataModule(teacher=teacher, n_train=8, n_val=4, n_test=4, shapes={"image_size": 32},
                           cache_dir=str(tmp_path / "cache"), batch_size=4, feature_level=-1)
    dm.setup("fit")
    item = dm.split("val")[0]
    want = TeacherVision(teacher, -1).maps(item["image"][None])[0]
    torch.testing.assert_close(item["teacher_features"], want, atol=2e-3, rtol=2e-3)  # cached as float16
    module = DistillModule(tiny_student(image_size=32, num_queries=4), teacher_feature_dim=want.shape[0])
    module.set_stage(StageSpec(name="encoder", max_steps=4), in_curriculum=False)
    before = module.feature_proj.weight.detach().clone()
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=str(tmp_path), limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert not torch.equal(before, module.feature_proj.weight.detach())
    batch = next(iter(dm.train_dataloader()))
    plain = DistillModule(tiny_student(image_size=32, num_queries=4))
    with pytest.raises(ConfigError, match="teacher_feature_dim"):
        plain._encoder_step(batch)
    dm.feature_level = None
    no_features = next(iter(DistillDataModule(teacher=teacher, n_train=8, n_val=4, n_test=4, shapes={"image_size": 32},
                                              cache_dir=str(tmp_path / "cache"), batch_size=4).train_dataloader()))
    with pytest.raises(ConfigError, match="feature_level"):
        module._encoder_step(no_features)
