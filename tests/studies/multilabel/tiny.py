"""Tiny override for the every-config test: any multilabel config fits one step and tests in seconds.

The towers become a randomly initialised tiny SigLIP of the config's kind (no checkpoint, no stand-in training);
a ``coco`` config reads a ShapesWorld written in COCO layout under ``tmp`` (pool and test folders, with
captions); a ShapesWorld config keeps its dataset with fewer, smaller images. Heads, losses and variants stay
the config's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lit_experiments.data.tools import write_shapes
from lit_experiments.studies.multilabel.towers import tiny_config

TOWERS = "lit_experiments.studies.multilabel.towers.SiglipTowers"


def tiny(config: Path, raw: dict, tmp: Path) -> dict:
    data = raw["data"]["init_args"]
    kind = ((data.get("towers") or {}).get("init_args") or {}).get("kind", "siglip")
    config = tiny_config(image_size=16, patch_size=8, hidden=16, vision_layers=1, text_layers=1, heads=2)
    if kind == "siglip2":  # NaFlex: a patch budget instead of a fixed image size
        config["vision_config"]["num_patches"] = (16 // 8) ** 2
        del config["vision_config"]["image_size"]
    towers = {"class_path": TOWERS, "init_args": {"checkpoint": None, "kind": kind, "text_mask_policy": "pad_to_max",
                                                  "config": config}}
    # batch 16 > the 9 training images: the one step ends the epoch, so validation tunes the thresholds
    d: dict[str, Any] = {"towers": towers, "batch_size": 16, "eval_batch_size": 16, "num_workers": 0,
                         "cache_dir": str(tmp / "cache")}
    if data.get("dataset") == "coco":
        for split, n in (("pool", 12), ("test", 4)):
            write_shapes(tmp / "coco" / split, "coco", n=n, seed=len(split), image_size=16, max_objects=2)
        d.update(root=str(tmp / "coco"), image_size=16,
                 coco_pool={"ann_file": "pool/annotations/instances.json", "image_dir": "pool/images",
                            "captions_file": "pool/annotations/captions.json"},
                 coco_test={"ann_file": "test/annotations/instances.json", "image_dir": "test/images",
                            "captions_file": "test/annotations/captions.json"})
    else:
        d.update(n_pool=12, n_test=4, shapes={**data.get("shapes", {}), "image_size": 16})
    return {"data": {"init_args": d},
            "trainer": {"accelerator": "cpu", "precision": "32-true", "enable_progress_bar": False,
                        "log_every_n_steps": 1}}
