"""Splits that cannot leak (F47): the distill datamodule refuses validation == test; the seed config holds out part of
train2017 as validation and tests on val2017, on tiny data written in COCO's layout by the product's writer."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lit_experiments.core.configs import load_composed
from lit_experiments.core.splits import SplitOverlapError
from lit_experiments.data.tools import write_shapes
from lit_experiments.studies.distill.components.sources import DistillCoco
from lit_experiments.studies.distill.datamodule import DistillDataModule

from .helpers import make_dm

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
