"""Tiny override for `tests/test_every_config.py`: the toy configs on a few dozen blobs."""

from __future__ import annotations

from pathlib import Path


def tiny(config: Path, raw: dict, tmp: Path) -> dict:
    """Small splits; batches of 8 keep BatchNorm's statistics defined (more than one sample per batch)."""
    return {"data": {"init_args": {"n_train": 32, "n_val": 16, "n_test": 16, "batch_size": 8}}}
