"""Floors beside the distill headline (F49), per-unit scores (F51) and the teacher scored on every prompt family a
student is trained on, before distillation (F53); numbers checked against brute-force numpy IoUs."""
from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch

from lit_experiments.core.lazy import LazyBuild
from lit_experiments.core.results import check_floors
from lit_experiments.studies.distill.components.prompts import Prompt
from lit_experiments.studies.distill.components.student import tiny_student
from lit_experiments.studies.distill.components.teacher import Sam3Teacher, tiny_config
from lit_experiments.studies.distill.evaluation import postprocess
from lit_experiments.studies.distill.module import DistillModule

from .helpers import make_dm


@pytest.fixture(scope="module")
def teacher() -> Sam3Teacher:
    return Sam3Teacher(config=tiny_config(image_size=32, patch_size=8, hidden=32, num_queries=4))


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Semantic IoU of two (H, W) bool unions; a unit without ground truth: 1 when nothing is predicted."""
    if not gt.any():
        return float(not pred.any())
    return float((pred & gt).sum() / (pred | gt).sum())


def test_f49_distill_headline_beside_its_floors_and_per_unit_scores(tmp_path, teacher):
    torch.manual_seed(0)
    dm = make_dm(teacher=teacher, n_train=8, n_val=4, n_test=8, shapes={"image_size": 32},
                           cache_dir=str(tmp_path / "cache"), batch_size=8)
    module = DistillModule(tiny_student(image_size=32, num_queries=4), probe_images=4, gallery_images=0)
    module._run_dir = tmp_path / "run"
    for buffer in (module.calibration_values, module.teacher_calibration_values):  # keep some masks of both models
        buffer.copy_(torch.tensor([1.0, 1.0, 0.05, 1.0], dtype=torch.float64))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                        callbacks=[LazyBuild()])
    res = trainer.test(module, datamodule=dm)[0]
    assert res["test/teacher_miou_pos"] > 0  # the ratio is defined
    refs = module.extra_results["references"]
    headline = {m: res[m] for m in module.headline_metrics if m in res}
    assert set(headline) == set(module.headline_metrics)
    assert check_floors({"headline": headline, "references": refs}) == []
    # brute force on the same test units: predict nothing and prompt-blind (every object for every prompt)
    src, units = dm.unit_source("test"), dm.split("test").units
    gts = [src.targets(i, p)["masks"].bool().any(0).numpy() for i, p in units]
    every = [src.targets(i, Prompt("*", "generic"))["masks"].bool().any(0).numpy() for i, _ in units]
    pos = np.array([g.any() for g in gts])
    blind = np.array([iou(e, g) for e, g in zip(every, gts)])
    nothing = np.array([iou(np.zeros_like(g), g) for g in gts])
    rows = {r["name"]: r for r in refs["test/miou_pos"]}
    assert rows["prompt_blind"]["kind"] == "floor" and rows["prompt_blind"]["value"] == pytest.approx(blind[pos].mean())
    assert rows["predict_nothing"]["value"] == 0.0 and rows["teacher"]["kind"] == "reference"
    assert {r["name"]: r["value"] for r in refs["test/miou"]}["predict_nothing"] == pytest.approx(nothing.mean())
    ratio = {r["name"]: r["value"] for r in refs["test/miou_pos_ratio"]}
    assert res["test/miou_pos_ratio"] == pytest.approx(res["test/miou_pos"] / res["test/teacher_miou_pos"], rel=1e-5)
    assert ratio["prompt_blind"] == pytest.approx(blind[pos].mean() / res["test/teacher_miou_pos"], rel=1e-5)
    cr = {r["name"]: r["value"] for r in refs["test/concept_responsiveness"]}
    assert abs(cr["prompt_blind"]) < 1e-6  # a prompt-blind model responds to no concept
    ps = {r["name"]: r["value"] for r in refs["test/paraphrase_stability"]}
    assert ps["prompt_blind"] == 1.0  # ... and is perfectly paraphrase-stable
    # per-unit scores: one per test unit, their mean is the headline; the student's IoUs recomputed by hand
    per = json.loads((tmp_path / "run" / "per_item" / "test_units_pos.json").read_text())
    assert len(per["ids"]) == int(pos.sum())
    assert np.mean(per["scores"]["test/miou_pos"]) == pytest.approx(res["test/miou_pos"])
    assert per["scores"]["floor/prompt_blind/miou_pos"] == pytest.approx(blind[pos].tolist())
    batch = next(iter(dm.test_dataloader()))
    module.eval()
    with torch.no_grad():
        kept = postprocess(module(batch), size=(32, 32), **module.calibration.postprocess_kwargs())
    mine = [iou(k.union().numpy(), g) for k, g in zip(kept, gts[:len(kept)])]
    allu = json.loads((tmp_path / "run" / "per_item" / "test_units.json").read_text())
    assert allu["scores"]["test/miou"][:len(kept)] == pytest.approx(mine)


def test_f53_teacher_scored_on_every_prompt_family(tmp_path, teacher):
    torch.manual_seed(0)
    prompts = {"ratios": {"category": 0.5, "generic": 0.3, "negative": 0.2}, "generic": ["object", "thing"]}
    dm = make_dm(teacher=teacher, n_train=8, n_val=4, n_test=4, shapes={"image_size": 32},
                           cache_dir=str(tmp_path / "cache"), batch_size=8, prompts=prompts)
    module = DistillModule(tiny_student(image_size=32, num_queries=4), probe_images=0, gallery_images=0)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=str(tmp_path), limit_val_batches=0,
                        callbacks=[LazyBuild()])
    trainer.fit(module, datamodule=dm)
    fams = module.extra_results["teacher_families"]["families"]  # -> results.json["teacher_families"]
    trained = {"category", "negative", "generic/object", "generic/thing"}  # every family the sampler draws
    assert trained <= set(fams) and all(fams[f]["trained_on"] for f in trained)
    # brute force: the teacher's own outputs at 0.5 against ground truth on every (val image, word)
    src = dm.unit_source("val")
    want: dict[str, list[float]] = {}
    for i in range(len(src)):
        image = src.image(i)[None]
        for word in dm.vocab:
            kind = ("category" if word in src.present[i] else "negative") if word in dm.categories else "generic"
            if kind == "generic" and not src.present[i]:
                continue
            enc = teacher.tokenize([word])
            with torch.no_grad():
                kept = postprocess(teacher(images=image, **enc), size=(32, 32))[0]
            gt = src.targets(i, Prompt(word, kind, None if kind == "generic" else word))["masks"].bool().any(0)
            want.setdefault(kind if kind != "generic" else f"generic/{word}", []).append(
                iou(kept.union().numpy(), gt.numpy()))
    for name, values in want.items():
        key = "miou" if name == "negative" else "miou_pos"
        assert fams[name][key] == pytest.approx(np.mean(values), abs=2e-3), name  # outputs cached as float16
        assert fams[name]["n_units"] == len(values)
