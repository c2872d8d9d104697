"""Honest numbers of the distill study: splits that cannot leak (F47: the datamodule refuses validation == test;
the seed config holds out part of train2017 as validation and tests on val2017, on tiny data written in COCO's
layout by the product's writer); floors beside the headline (F49), per-unit scores (F51) and the teacher scored on
every prompt family a student is trained on, before distillation (F53), checked against brute-force numpy IoUs;
the run's random choices follow `seed_everything` unless the YAML pins them (F50: the training order, the training
prompts, the stand-in teacher's training; `lit-exp distill-demo --seed_everything N` seeds the run)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from lit_experiments.core.configs import load_composed
from lit_experiments.core.lazy import LazyBuild
from lit_experiments.core.results import check_floors
from lit_experiments.core.splits import SplitOverlapError
from lit_experiments.data.tools import write_shapes
from lit_experiments.studies.distill import demo
from lit_experiments.studies.distill.components import standin
from lit_experiments.studies.distill.components.prompts import Prompt
from lit_experiments.studies.distill.components.sources import DistillCoco
from lit_experiments.studies.distill.components.student import tiny_student
from lit_experiments.studies.distill.components.teacher import Sam3Teacher, tiny_config
from lit_experiments.studies.distill.datamodule import DistillDataModule
from lit_experiments.studies.distill.evaluation import postprocess
from lit_experiments.studies.distill.module import DistillModule

from .helpers import make_dm, run_test_loop

SEED_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "distill" / "seed_sam3.yaml"


def coco_layout(root: Path, tmp: Path) -> Path:
    """A ShapesWorld written as COCO 2017 (``train2017/``, ``val2017/``, ``annotations/instances_*2017.json``)."""
    (root / "annotations").mkdir(parents=True)
    for split, n, seed in (("train2017", 12, 0), ("val2017", 4, 1)):
        write_shapes(tmp / split, "coco", n=n, seed=seed, image_size=32, max_objects=2)
        shutil.move(str(tmp / split / "images"), str(root / split))
        shutil.move(str(tmp / split / "annotations" / "instances.json"), str(root / "annotations" /
                                                                           f"instances_{split}.json"))
    return root


def build(args: dict, **kw) -> DistillDataModule:
    dm = make_dm(**{**args, "teacher": None, "num_workers": 0, "batch_size": 4, **kw})
    dm.setup("fit")
    return dm


def test_f47_distill_val_equals_test_refused(tmp_path):
    root = coco_layout(tmp_path / "coco", tmp_path / "raw")
    val = {"ann_file": "annotations/instances_val2017.json", "image_dir": "val2017"}
    args = {"dataset": "coco", "root": str(root), "image_size": 32, "cache_dir": str(tmp_path / "cache"),
            "coco_train": {"ann_file": "annotations/instances_train2017.json", "image_dir": "train2017"},
            "coco_val": val, "coco_test": val}
    with pytest.raises(SplitOverlapError) as err:
        build(args)
    msg = str(err.value)
    assert "\n" not in msg and "instances_val2017.json" in msg and "are the same split" in msg
    assert "allow_val_test_overlap" in msg
    # another annotation file naming the same image files overlaps too
    shutil.copy(root / "annotations" / "instances_val2017.json", root / "annotations" / "copy.json")
    with pytest.raises(SplitOverlapError, match="copy.json .* are the same split"):
        build({**args, "coco_test": {**val, "ann_file": "annotations/copy.json"}})
    dm = build(args, allow_val_test_overlap=True)  # the explicit opt-in marks every number as tuned on test
    assert dm.split_info["tuned_on_test"] is True and dm.split_info["overlap"] == 4


def test_f47_seed_config_validates_on_held_out_train_and_tests_on_val2017(tmp_path):
    data = load_composed(SEED_CONFIG)["data"]["init_args"]
    assert data["source"]["class_path"].endswith("DistillCoco")
    root = coco_layout(tmp_path / "coco", tmp_path / "raw")
    source = {**data["source"]["init_args"], "root": str(root), "image_size": 32}

    def seed_dm(**kw) -> DistillDataModule:
        dm = DistillDataModule(DistillCoco(**{**source, **kw}), prompts=data["prompts"],
                               cache_dir=str(tmp_path / "cache"), batch_size=4)
        dm.setup("fit")
        return dm

    dm = seed_dm()
    ids = {s: set(dm.split_ids(s)) for s in ("train", "val", "test")}
    assert ids["val"] and ids["test"] and ids["train"]
    assert not ids["val"] & ids["test"] and not ids["train"] & ids["val"] and not ids["train"] & ids["test"]
    assert all("/val2017/" in f for f in ids["test"]) and all("/train2017/" in f for f in ids["val"])
    assert dm.split_info["overlap"] == 0 and dm.split_info["tuned_on_test"] is False
    written = json.loads(dm.source.holdout_file().read_text())  # drawn once, next to the data
    assert len(written["validation_ids"]) == len(ids["val"])
    again = seed_dm(val={**source["val"], "seed": 12345})  # another seed reads the written file
    assert set(again.split_ids("val")) == ids["val"]


@pytest.fixture(scope="module")
def teacher() -> Sam3Teacher:
    return Sam3Teacher(config=tiny_config(image_size=32, patch_size=8, hidden=32, num_queries=4))


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Semantic IoU of two (H, W) bool unions; a unit without ground truth: 1 when nothing is predicted."""
    if not gt.any():
        return float(not pred.any())
    return float((pred & gt).sum() / (pred | gt).sum())


def test_f49_distill_headline_beside_its_floors_and_per_unit_scores(tmp_path, teacher):
    dm, module, res = run_test_loop(tmp_path, teacher, probe_images=4, threshold=0.05)  # some masks of both models
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


def draws(tmp_path, **kw) -> tuple[list, list]:
    dm = make_dm(teacher=None, n_train=24, n_val=2, n_test=2, shapes={"image_size": 32},
                           cache_dir=str(tmp_path), batch_size=4, **kw)
    dm.setup("fit")
    order = [i for i, _, _ in dm.train_dataloader().sampler]
    prompts = [dm.split("train")[(i, 0, 0)]["prompt"] for i in range(len(dm.unit_source("train")))]
    return order, prompts


def test_f50_distill_order_and_prompts_follow_seed_everything(tmp_path, monkeypatch):
    runs = {}
    for seed in ("0", "1"):
        monkeypatch.setenv("PL_GLOBAL_SEED", seed)
        runs[seed] = draws(tmp_path)
    assert runs["0"][0] != runs["1"][0]  # data order
    assert runs["0"][1] != runs["1"][1]  # training prompts
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    assert draws(tmp_path) == runs["0"]  # the same seed: the same draws
    pinned = {}
    for seed in ("0", "1"):  # a YAML that pins them keeps them whatever seed_everything is
        monkeypatch.setenv("PL_GLOBAL_SEED", seed)
        pinned[seed] = draws(tmp_path, shuffle_seed=7, prompts={"seed": 7})
    assert pinned["0"] == pinned["1"]


class _Stop(Exception):
    pass


def test_f50_standin_seed_follows_seed_everything(monkeypatch):
    seeds = []

    def fake(*args, seed, **kw):
        seeds.append(seed)
        raise _Stop

    monkeypatch.setattr(standin, "train_standin_teacher", fake)
    for env in ("0", "1"):
        monkeypatch.setenv("PL_GLOBAL_SEED", env)
        with pytest.raises(_Stop):
            standin.StandinTeacher()
    with pytest.raises(_Stop):
        standin.StandinTeacher(seed=5)
    assert seeds[0] != seeds[1] and seeds[2] == 5


def test_f50_distill_demo_seed_everything_reaches_the_run(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, env):
        seen["cmd"], seen["env"] = cmd, env
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(demo.subprocess, "run", fake_run)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    cfg = demo.Path(__file__).resolve().parents[3] / "configs" / "distill" / "demo.yaml"
    assert demo.main(["-c", str(cfg), "--run_dir", str(tmp_path / "run"), "--seed_everything", "3"]) == 1
    cmd = seen["cmd"]
    assert cmd[cmd.index("--seed_everything") + 1] == "3" and seen["env"]["PL_GLOBAL_SEED"] == "3"
