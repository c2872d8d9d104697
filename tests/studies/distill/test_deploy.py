"""Deployment of the distill student: its three exportable parts compose back into the student (post-processing
with the stored calibration stays outside), and the latency card measures teacher, student fp32, int8 weight-only
and the ONNX Runtime chain in one process with their metric, latency and size."""
from __future__ import annotations

import json

import pytest
import torch

from lit_experiments.studies.distill import deploy
from lit_experiments.studies.distill.components.student import OUTPUT_KEYS, tiny_student
from lit_experiments.studies.distill.components.teacher import Sam3Teacher, tiny_config
from lit_experiments.studies.distill.evaluation import postprocess
from lit_experiments.studies.distill.module import DistillModule

from .helpers import make_dm

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Sam3Teacher, DistillModule, dict]:
    torch.manual_seed(0)
    teacher = Sam3Teacher(config=tiny_config(image_size=32, patch_size=8, hidden=32, num_queries=4))
    dm = make_dm(teacher=teacher, n_train=2, n_val=2, n_test=3, shapes={"image_size": 32},
                           cache_dir=str(tmp_path_factory.mktemp("cache")), eval_batch_size=6)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    module = DistillModule(tiny_student(image_size=32, dim=16, num_queries=4, decoder_layers=1, heads=2)).eval()
    module.calibration_values.copy_(torch.tensor([1.5, 1.0, 0.3, 10.0], dtype=torch.float64))  # a fitted one
    return teacher, module, batch


def test_parts_compose_into_the_student_and_postprocess_uses_the_calibration(setup):
    _, module, batch = setup
    parts = deploy.export_parts(module, batch)
    assert list(parts) == ["image_encoder", "text_encoder", "decoder"]
    for part in parts.values():
        assert set(part.dynamic_batch) == set(part.input_names) and not part.module.training
    with torch.no_grad():
        eager = module.student(batch["image"], batch["student_input_ids"])
        (features,) = [parts["image_encoder"].module(*parts["image_encoder"].args)]
        tokens, pooled = parts["text_encoder"].module(*parts["text_encoder"].args)
        pad = batch["student_input_ids"] == module.student.text_encoder.pad_id
        chained = parts["decoder"].module(features, tokens, pooled, pad)
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(chained[key], eager[key], rtol=0, atol=0)
    for given, expected in zip(parts["decoder"].args, (features, tokens, pooled, pad), strict=True):
        assert torch.equal(given, expected)
    post = parts["decoder"].postprocess
    assert post.func is postprocess and post.keywords["score_threshold"] == pytest.approx(0.3)
    assert post.keywords["temperature"] == pytest.approx(1.5) and post.keywords["size"] == (32, 32)


def test_latency_card_rows_in_one_process(setup, tmp_path):
    teacher, module, batch = setup
    calls = []

    def mean_score(predict) -> float:
        calls.append(predict)
        return float(predict(batch)["pred_logits"].sigmoid().mean())

    metrics = {"teacher": 0.25, "student_fp32": mean_score, "student_int8_weight_only": mean_score,
               "student_onnx": mean_score}
    rows = deploy.latency_card(teacher, module, batch, tmp_path, metrics=metrics, metric_name="mean_score",
                               repeats=2)
    by = {r["model"]: r for r in rows}
    assert list(by) == list(deploy.CARD_ROWS) and len(calls) == 3
    with torch.no_grad():
        expected = float(module.student(batch["image"], batch["student_input_ids"])["pred_logits"].sigmoid().mean())
    assert by["teacher"]["metric"] == 0.25
    assert by["student_fp32"]["metric"] == pytest.approx(expected, abs=1e-7)
    assert by["student_onnx"]["metric"] == pytest.approx(expected, abs=1e-4)  # ORT chain == eager
    assert by["student_int8_weight_only"]["metric"] == pytest.approx(expected, abs=0.05)
    assert by["student_fp32"]["latency_ratio"] == 1.0 and by["student_fp32"]["size_ratio"] == 1.0
    assert by["student_int8_weight_only"]["size_mb"] < by["student_fp32"]["size_mb"]
    for row in rows:
        assert row["latency_ms"] > 0 and row["size_mb"] > 0 and row["threads"] == 1
        assert row["latency_ms"] == pytest.approx(row["batch_ms"] / batch["image"].shape[0])
    for name in ("image_encoder", "text_encoder", "decoder"):
        assert json.loads((tmp_path / "onnx" / f"{name}.parity.json").read_text())["max_abs_err"] <= 1e-4
    saved = json.loads((tmp_path / "latency_card.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and "torch.get_num_threads() = 1" in saved["note"]
    md = (tmp_path / "latency_card.md").read_text()
    assert all(f"| {name} |" in md for name in deploy.CARD_ROWS)
