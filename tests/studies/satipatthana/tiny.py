"""Per-study hook of the every-config test: an override that makes any satipatthana config run in seconds.

``tiny(config, raw, tmp)`` returns a dict that is dumped to YAML and passed as the last ``-c``: a small data
set, one training step per stage (the stage list of ``raw`` restated, since lists replace whole), one eval
batch, a small test split. Everything else (parts, sizes, stage names, trainable globs, optimizers) stays
what the config says, so a broken config still fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny(config: Path, raw: dict, tmp: Path) -> dict:
    """Override dict for ``config`` (``raw``: the merged dict of the composed YAML files)."""
    out: dict[str, Any] = {"trainer": {"run_dir": str(tmp / "run"), "limit_val_batches": 1,
                                       "limit_test_batches": 2, "log_every_n_steps": 1}}
    data = raw.get("data", {})
    init = data.get("init_args", {}) if isinstance(data, dict) else {}
    data_args: dict[str, Any] = {"batch_size": 32, "eval_batch_size": 32}
    source = init.get("source", {})
    if "n_samples" in source.get("init_args", {}):  # circles / ShapesWorld: a small world is enough (digits: 1797)
        data_args["source"] = {"init_args": {"n_samples": 120}}
    if "train_void_factor" in init:
        data_args["train_void_factor"] = 1
    out["data"] = {"init_args": data_args}
    stages = raw.get("stages")
    if stages:
        out["stages"] = [{**stage, "max_epochs": None, "max_steps": 1} for stage in stages]
    return out
