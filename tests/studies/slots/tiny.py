"""Tiny override for the every-config test: any slots config runs 1 training step + test in seconds on a CPU.

``tiny(config, raw, tmp)`` returns a dict the test dumps to YAML and passes as the last ``-c``; ``raw`` is
the composed config (read again from ``config``, so a delta's own text will do). Tiny frozen parts
(``model_kwargs``, ``pretrained: false``), 32 px clips, a few of them (fake MOVi clips written under ``tmp`` for
the MOVi source), tiny model parts; the parts' classes stay the config's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lit_experiments.core.configs import load_composed
from lit_experiments.data.movi import write_movi_clip

TINY_VIT = {"depth": 2, "embed_dim": 48, "num_heads": 2}


def write_movi(root: Path, field: str, values: list[str]) -> None:
    """Three 2-frame 32 px clips per split with two objects (ids 1, 2) on a background (id 0)."""
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            seg = np.zeros((2, 32, 32, 1), np.uint8)
            seg[:, 4:14, 4:14] = 1
            seg[:, 18:30, 16:28] = 2
            video = (rng.random((2, 32, 32, 3)) * 60 + seg * 80).astype(np.uint8)
            write_movi_clip(root / split / f"clip{i}.npz", video, seg, {field: values})


def _part(raw_model: dict, name: str) -> dict | None:
    part = raw_model.get(name)
    return part if isinstance(part, dict) else None


def tiny_model(raw: dict) -> dict[str, Any]:
    """Small sizes for every part the config has (a part set to null stays null)."""
    model = raw["model"].get("init_args", {})
    m: dict[str, Any] = {"grouper": {"init_args": {"dim": 16, "mlp_hidden": 16, "num_slots": 3}},
                         "decoder": {"init_args": {"hidden": 16}}}
    if _part(model, "predictor") is not None:
        m["predictor"] = {"init_args": {"hidden": 16}}
    encoder = _part(model, "encoder") or {}
    if encoder.get("class_path", "").endswith("PixelEncoder"):
        m["encoder"] = {"init_args": {"channels": 8}}
    elif (encoder.get("init_args") or {}).get("projection_dim"):
        m["encoder"] = {"init_args": {"projection_dim": 16}}
    return m


def _class(part: Any) -> str:
    return part.get("class_path", "") if isinstance(part, dict) else ""


def tiny(config: Path, raw: dict, tmp: Path) -> dict:
    raw = load_composed(config)  # the whole config, also when a caller passes a delta's own text
    # the parts' class_paths are repeated so the override stays a complete part after any later delta
    data = raw["data"]["init_args"]
    source, frozen = data.get("source") or {}, data.get("frozen")
    d: dict[str, Any] = {"batch_size": 2, "eval_batch_size": 2, "cache_dir": str(tmp / "cache"), "num_workers": 0}
    if _class(source).endswith("MoviClipSplits"):
        root = tmp / "movi"
        by_category = "movi_c" in source["init_args"]["root"]
        write_movi(root, "category" if by_category else "material",
                   ["cube", "sphere"] if by_category else ["metal", "rubber"])
        d["source"] = {"class_path": source["class_path"], "init_args": {"root": str(root)}}
    else:
        d["source"] = {"class_path": _class(source) or "lit_experiments.studies.slots.sources.ShapesClipSplits",
                       "init_args": {"n_train": 4, "n_val": 2, "n_test": 2,
                                     "world": {"image_size": 32, "num_frames": 2}}}
    if _class(frozen).endswith("RegistryBackbone"):
        name = frozen["init_args"]["name"]
        d["frozen"] = {"class_path": frozen["class_path"],
                       "init_args": {"pretrained": False, "model_kwargs": TINY_VIT,
                                     "image_size": 28 if "patch14" in name else 32}}
    elif _class(frozen).endswith("ColourEdgeBackbone"):
        d["frozen"] = {"class_path": frozen["class_path"], "init_args": {"dim": 16}}
    return {
        "model": {"init_args": tiny_model(raw)},
        "data": {"init_args": d},
        "trainer": {"limit_val_batches": 1, "limit_test_batches": 1, "accelerator": "cpu",
                    "enable_progress_bar": False},
    }
