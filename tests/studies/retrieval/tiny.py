"""Tiny override for the every-config test: any retrieval config runs one step per stage + test in seconds.

A narrow backbone of the config's timm architecture (``channels`` 8-64, ``pretrained: false``), 32 px frames,
small widths; a frames folder (with external queries) is written under ``tmp`` for a ``VideoFrameFolder`` source.
Stage names, trainable globs, optimizers, samplers and inputs stay the config's, restated with one step each
(lists replace whole).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lit_experiments.data.tools import write_shapes


def tiny(config: Path, raw: dict, tmp: Path) -> dict:
    data = raw["data"]["init_args"]
    source = data.get("source") or {}
    d: dict[str, Any] = {"eval_batch_size": 64, "num_workers": 0, "cache_dir": str(tmp / "cache")}
    if str(source.get("class_path", "")).endswith(".VideoFrameFolder"):
        root = tmp / "frames"
        write_shapes(root, "frames", n=12, image_size=32, num_frames=8, max_objects=1, motion_blur=True, queries=2)
        d["source"] = {"init_args": {"root": str(root), "image_size": None}}
    else:
        shapes = (source.get("init_args") or {}).get("shapes", {})
        d["source"] = {"init_args": {"n_train": 8, "n_val": 4, "n_test": 4, "shapes": {**shapes, "image_size": 32}}}
    d["batch_size"] = 16
    if data.get("sampler"):
        d["sampler"] = {"init_args": {"m": 8 if (data.get("positives") or {}).get("use_labels", True) else 4}}
    backbone = raw["model"]["init_args"]["backbone"]["init_args"]
    model = {
        "backbone": {"init_args": {"pretrained": False,
                                   "model_kwargs": {**backbone.get("model_kwargs", {}), "channels": [8, 16, 32, 64]}}},
        "projector": {"init_args": {"hidden": 32, "out_dim": 16}},
        "predictor": {"init_args": {"hidden": 8}},
        "knn": {"k": 5},
    }
    stages = [{**s, "max_epochs": None, "max_steps": 1,
               "data": {**s.get("data", {}), **({"batch_size": 16} if "batch_size" in s.get("data", {}) else {})}}
              for s in raw.get("stages", [])]
    return {
        "model": {"init_args": model},
        "data": {"init_args": d},
        "trainer": {"limit_val_batches": 1, "accelerator": "cpu", "precision": "32-true",
                    "enable_progress_bar": False, "log_every_n_steps": 1},
        "stages": stages,
    }
