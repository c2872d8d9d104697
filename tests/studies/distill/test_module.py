"""DistillModule: the decoder stage trains the student on the teacher's cached outputs; the calibration fitted on
validation is stored with the weights (F42); the test scores student and teacher in one table."""
from __future__ import annotations

import lightning as L
import pytest
import torch

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.lazy import LazyBuild
from lit_experiments.core.specs import StageSpec
from lit_experiments.studies.distill.components.student import tiny_student
from lit_experiments.studies.distill.components.teacher import Sam3Teacher, tiny_config
from lit_experiments.studies.distill.module import DistillModule

from .helpers import make_dm, run_test_loop


@pytest.fixture(scope="module")
def teacher() -> Sam3Teacher:
    return Sam3Teacher(config=tiny_config(image_size=32, patch_size=8, hidden=32, num_queries=4))


def test_decoder_stage_fits_stores_calibration_and_tables_student_and_teacher(tmp_path, teacher):
    torch.manual_seed(0)
    dm = make_dm(teacher=teacher, n_train=16, n_val=8, n_test=8, shapes={"image_size": 32},
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
    assert "calibration_values" in state and "teacher_calibration_values" in state  # saved with the weights
    from lit_experiments.studies.distill.components.calibration import (
        calibration_records,
        cat_records,
        fit_calibration,
    )

    records = cat_records([calibration_records(b["teacher"], b["targets"]) for b in dm.val_dataloader()])
    want = fit_calibration(records, metric="f1")  # the teacher's calibration comes from the validation units
    assert module.teacher_calibration.threshold == pytest.approx(want.threshold)
    assert module.teacher_calibration.temperature == pytest.approx(want.temperature)
    module._run_dir = tmp_path / "run"
    res = trainer.test(module, datamodule=dm)[0]
    for key in ("test/miou", "test/teacher_miou", "test/student_raw/miou",
                "test/paraphrase_stability", "test/teacher_paraphrase_stability"):
        assert 0.0 <= res[key] <= 1.0
    for who in ("", "teacher_"):  # F46: present minus absent prompt score, in [-1, 1]
        assert -1.0 <= res[f"test/{who}concept_responsiveness"] <= 1.0
    assert (tmp_path / "run" / "distill" / "reliability.png").is_file()
    for key in ("test/ece", "test/student_raw/ece", "test/teacher_ece", "test/teacher_raw/ece"):
        assert 0.0 <= res[key] <= 1.0
    table = (tmp_path / "run" / "distill" / "teacher_vs_student.md").read_text()
    assert "miou" in table and "teacher" in table
    check_table_matches_results(table, res)
    check_one_name_per_number(res)


def _cells(table: str) -> dict[tuple[str, str], list[str]]:
    """``(section heading, metric) -> [teacher, student, ratio]`` of the Markdown tables."""
    out, section = {}, ""
    for line in table.splitlines():
        if line.startswith("## "):
            section = line[3:]
        elif line.startswith("| ") and not line.startswith("| metric"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[(section, cells[0])] = cells[1:]
    return out


def check_table_matches_results(table: str, res: dict) -> None:
    """The README's teacher_vs_student.md: calibrated, raw, ECE and prompt rows, equal to the logged numbers."""
    cells = _cells(table)
    sections = {s for s, _ in cells}
    want = {"at each model's validation calibration": {"miou_pos": ("test/teacher_miou_pos", "test/miou_pos")},
            "at the uncalibrated threshold 0.5 (raw)": {"miou_pos": ("test/teacher_raw/miou_pos",
                                                                     "test/student_raw/miou_pos")},
            "calibration: ECE of the unit scores (lower is better)": {
                "ece (at its calibration)": ("test/teacher_ece", "test/ece"),
                "ece (raw, T = 1)": ("test/teacher_raw/ece", "test/student_raw/ece")},
            "prompt (F46), each at its calibration": {
                "concept_responsiveness": ("test/teacher_concept_responsiveness", "test/concept_responsiveness")}}
    for section, rows in want.items():
        assert section in sections, (section, sorted(sections))
        for metric, (t_key, s_key) in rows.items():
            teacher, student = cells[(section, metric)][:2]
            assert float(teacher) == pytest.approx(res[t_key], abs=5e-5), (section, metric)
            assert float(student) == pytest.approx(res[s_key], abs=5e-5), (section, metric)
    raised = res["test/ece"] > res["test/student_raw/ece"] or res["test/teacher_ece"] > res["test/teacher_raw/ece"]
    assert ("calibration raised" in table) == raised  # a worse calibrated ECE is said in words


def check_one_name_per_number(res: dict) -> None:
    """Each number of the test under one name: no alias of a student / teacher / ratio metric, a short table."""
    from lit_experiments.core.results import format_metric_table

    aliases = [k for k in res if k.startswith(("test/student/", "test/teacher/", "test/ratio/"))]
    assert not aliases, aliases
    for name in ("miou", "miou_pos", "concept_responsiveness"):
        assert f"test/{name}" in res and f"test/teacher_{name}" in res
    lines = format_metric_table("test metrics (distill)", res).splitlines()
    assert len(lines) <= 50, len(lines)


def test_unknown_objectives_and_args_are_named():
    module = DistillModule(tiny_student(image_size=32, num_queries=4))
    with pytest.raises(ConfigError, match="objective 'videos' is unknown"):
        module.set_stage(StageSpec(name="x", max_steps=1, args={"objective": "videos"}))
    with pytest.raises(ConfigError, match="unknown args"):
        module.set_stage(StageSpec(name="decoder", max_steps=1, args={"gt": 1.0}))


def test_encoder_stage_distils_the_teachers_cached_vision_features(tmp_path, teacher):
    from lit_experiments.studies.distill.components.teacher_cache import TeacherVision

    dm = make_dm(teacher=teacher, n_train=8, n_val=4, n_test=4, shapes={"image_size": 32},
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
    no_features = next(iter(make_dm(teacher=teacher, n_train=8, n_val=4, n_test=4, shapes={"image_size": 32},
                                              cache_dir=str(tmp_path / "cache"), batch_size=4).train_dataloader()))
    with pytest.raises(ConfigError, match="feature_level"):
        module._encoder_step(no_features)


def test_a_stage_starts_from_the_student_of_a_given_checkpoint(tmp_path):
    from lit_experiments.core.curriculum import save_weights

    source = DistillModule(tiny_student(image_size=32, num_queries=4))
    with torch.no_grad():
        for p in source.student.parameters():
            p.add_(0.5)
    ckpt = tmp_path / "final.ckpt"
    save_weights(source, ckpt)
    target = DistillModule(tiny_student(image_size=32, num_queries=4))
    target.set_stage(StageSpec(name="decoder", max_steps=1, args={"init_from": str(ckpt)}))
    for (name, a), b in zip(target.student.state_dict().items(), source.student.state_dict().values()):
        assert torch.equal(a, b), name
    other = DistillModule(tiny_student(image_size=32, num_queries=4))
    other.set_stage(StageSpec(name="decoder", max_steps=1, args={"init_from": str(ckpt)}), in_curriculum=False)
    assert not torch.equal(next(other.student.parameters()), next(source.student.parameters()))  # eval: no load


def test_init_from_a_checkpoint_of_another_study_or_a_missing_file_is_named(tmp_path):
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}, "study": "RetrievalModule"}, tmp_path / "r.ckpt")
    module = DistillModule(tiny_student(image_size=32, num_queries=4))
    with pytest.raises(ConfigError, match="args.init_from.*checkpoint of study RetrievalModule"):
        module.set_stage(StageSpec(name="decoder", max_steps=1, args={"init_from": str(tmp_path / "r.ckpt")}))
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        module.set_stage(StageSpec(name="decoder", max_steps=1, args={"init_from": str(tmp_path / "none.ckpt")}))
    wrong = DistillModule(tiny_student(image_size=32, num_queries=8))
    from lit_experiments.core.curriculum import save_weights

    save_weights(wrong, tmp_path / "q8.ckpt")
    with pytest.raises(ConfigError, match="does not fit this config's student"):
        module.set_stage(StageSpec(name="decoder", max_steps=1, args={"init_from": str(tmp_path / "q8.ckpt")}))


def test_test_writes_the_gallery_and_the_headline_names(tmp_path, teacher):
    dm, module, res = run_test_loop(tmp_path, teacher, probe_images=4, gallery_images=3)
    gallery = tmp_path / "run" / "distill" / "gallery"
    assert (gallery / "index.html").is_file() and (gallery / "student_grid.png").is_file()
    html = (gallery / "index.html").read_text()
    assert all(p in html for p in dm.vocab)  # one row per vocabulary prompt
    assert module.extra_results["gallery"]["html"].endswith("index.html")
    assert res["test/miou_ratio"] == pytest.approx(res["test/miou"] / res["test/teacher_miou"], rel=1e-5)
    assert -1.0 <= res["test/concept_responsiveness"] <= 1.0 and "test/student_blind/concept_responsiveness" in res
    check_one_name_per_number(res)
    check_table_matches_results((tmp_path / "run" / "distill" / "teacher_vs_student.md").read_text(), res)
    assert module.extra_results["teacher"]["checkpoint"] is None  # the teacher's settings are in results.json
