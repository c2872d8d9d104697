"""Tiny override for the every-config test: any multilabel config fits one step and tests in seconds.

The ``frozen`` towers become a randomly initialised tiny SigLIP of the config's towers class (``Siglip2Towers``
stays NaFlex; a stand-in becomes plain ``SiglipTowers``: no checkpoint, no stand-in training); a COCO source reads
a ShapesWorld written in COCO layout under ``tmp`` (pool and test folders, with captions; the image side comes
from the tiny towers), a csv source a ShapesWorld written as ``labels.csv`` with a ``test/`` folder; a ShapesWorld source keeps its class with fewer, smaller images. Heads, losses and variants
stay the config's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lit_experiments.data.tools import write_shapes
from lit_experiments.studies.multilabel.towers import tiny_config

TOWERS = "lit_experiments.studies.multilabel.towers."


def tiny(config: Path, raw: dict, tmp: Path) -> dict:
    data = raw["data"]["init_args"]
    frozen = str((data.get("frozen") or {}).get("class_path", "SiglipTowers"))
    naflex = frozen.endswith("Siglip2Towers")
    config = tiny_config(image_size=16, patch_size=8, hidden=16, vision_layers=1, text_layers=1, heads=2)
    if naflex:  # NaFlex: a patch budget instead of a fixed image size
        config["vision_config"]["num_patches"] = (16 // 8) ** 2
        del config["vision_config"]["image_size"]
    towers = {"class_path": TOWERS + ("Siglip2Towers" if naflex else "SiglipTowers"),
              "init_args": {"checkpoint": None, "text_mask_policy": "pad_to_max", "config": config}}
    # batch 16 > the 9 training images: the one step ends the epoch, so validation tunes the thresholds
    d: dict[str, Any] = {"frozen": towers, "batch_size": 16, "eval_batch_size": 16, "num_workers": 0,
                         "cache_dir": str(tmp / "cache")}
    source = data.get("source") or {}
    if str(source.get("class_path", "")).endswith("CocoCaptionSource"):
        for split, n in (("pool", 12), ("test", 4)):
            write_shapes(tmp / "coco" / split, "coco", n=n, seed=len(split), image_size=16, max_objects=2)
        d["source"] = {"init_args": {"root": str(tmp / "coco"), **{
            split: {"ann_file": f"{split}/annotations/instances.json", "image_dir": f"{split}/images",
                    "captions_file": f"{split}/annotations/captions.json"} for split in ("pool", "test")}}}
    elif str(source.get("class_path", "")).endswith("FileCaptionSource"):  # csv + a test folder of its own
        write_shapes(tmp / "labels", "multilabel", n=12, image_size=16, max_objects=2)
        write_shapes(tmp / "labels" / "test", "multilabel", n=4, seed=4, image_size=16, max_objects=2)
        d["source"] = {"init_args": {"root": str(tmp / "labels"), "file": "labels.csv",
                                     "test_file": "test/labels.csv"}}
    else:
        world = ((source.get("init_args") or {}).get("world") or {})
        d["source"] = {"init_args": {"n_pool": 12, "n_test": 4, "world": {**world, "image_size": 16}}}
    return {"data": {"init_args": d},
            "trainer": {"accelerator": "cpu", "precision": "32-true", "enable_progress_bar": False,
                        "log_every_n_steps": 1}}
