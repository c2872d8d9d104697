"""Tiny override for the every-config test: any distill config runs one step per stage + test in seconds.

The teacher becomes a randomly initialised tiny ``Sam3Model`` (32 px, 4 queries); the student keeps its classes
at tiny widths (mobilenetv3_small_050, a 2-layer text tower of width 16, 1 decoder layer); a COCO config
reads a ShapesWorld written in COCO layout under ``tmp``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lit_experiments.data.tools import write_shapes
from lit_experiments.studies.distill.components.teacher import tiny_config


def tiny(config: Path, raw: dict, tmp: Path) -> dict:
    data = raw["data"]["init_args"]
    teacher = {"class_path": "lit_experiments.studies.distill.components.teacher.Sam3Teacher",
               "init_args": {"checkpoint": None, "config": tiny_config(image_size=32, patch_size=8, hidden=32,
                                                                       num_queries=4)}}
    d: dict[str, Any] = {"frozen": teacher, "batch_size": 4, "eval_batch_size": 8, "num_workers": 0,
                         "cache_dir": str(tmp / "cache")}
    source = data["source"]
    if source["class_path"].endswith("DistillCoco"):  # validation held out of train (the config's val), test apart
        for split, n in (("train", 8), ("test", 3)):
            write_shapes(tmp / "coco" / split, "coco", n=n, seed=len(split), image_size=32, max_objects=2)
        split = {s: {"ann_file": f"{s}/annotations/instances.json", "image_dir": f"{s}/images"}
                 for s in ("train", "test")}
        d["source"] = {"init_args": {"root": str(tmp / "coco"), "image_size": 32, "train": split["train"],
                                     "test": split["test"],
                                     "val": {**source["init_args"].get("val", {}), "holdout": 0.25}}}
    else:
        d["source"] = {"init_args": {"n_train": 6, "n_val": 3, "n_test": 3, "world": {"image_size": 32}}}
    student = {"init_args": {
        "dim": 16,
        "image_encoder": {"class_path": "lit_experiments.studies.distill.components.student.ImageEncoder",
                          "init_args": {"name": "mobilenetv3_small_050", "pretrained": False, "out_indices": [2, 3],
                                        "image_size": 32}},
        "text_encoder": {"class_path": "lit_experiments.studies.distill.components.student.TextEncoder",
                         "init_args": {"pretrained": None, "width": 16, "layers": 2, "heads": 2}},
        "decoder": {"class_path": "lit_experiments.studies.distill.components.student.PromptDecoder",
                    "init_args": {"num_queries": 4, "layers": 1, "heads": 2}}}}
    model: dict[str, Any] = {"student": student}
    if raw["model"]["init_args"].get("teacher_feature_dim"):
        model["teacher_feature_dim"] = 32  # the tiny teacher's neck width
    return {"model": {"init_args": model}, "data": {"init_args": d},
            "trainer": {"accelerator": "cpu", "precision": "32-true", "enable_progress_bar": False,
                        "log_every_n_steps": 1}}
