"""Seed per purpose: work before training must not move the random state training sees.

A cache build, a stand-in or anything else that runs between ``seed_everything`` and ``fit`` runs under
:func:`isolated_rng` (and gives its DataLoaders their own ``generator``), so a run's numbers do not depend on
what was already on disk.
"""
from __future__ import annotations

import contextlib
import random as pyrandom
from collections.abc import Iterator

import numpy as np
import torch

RUN_SEED_ENV = "LIT_EXP_RUN_SEED"  # the run's seed while a curriculum reseeds each stage with seed + index


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block without changing the global torch (CPU and current CUDA device), numpy and python RNGs."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    np_state, py_state = np.random.get_state(), pyrandom.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(np_state)
        pyrandom.setstate(py_state)


def run_seed(explicit: int | None = None, purpose: str = "") -> int:
    """The seed of one random choice of a run (F50): ``explicit`` when a YAML pins it, otherwise derived from the
    run's ``seed_everything`` seed (``PL_GLOBAL_SEED``, 0 when unset; in a curriculum the run's seed, not stage i's seed + i) and ``purpose`` (``"data"``, ``"prompts"``,
    ``"sampler"``, ``"standin"``, ...), so a sweep over seeds varies data order, samplers, prompts, augmentations
    and stand-ins, not only the initialisation. Pure: reads the environment, moves no RNG."""
    if explicit is not None:
        return int(explicit)
    import hashlib

    base = int(current_run_seed())
    if not purpose:
        return base
    digest = hashlib.sha1(f"{base}:{purpose}".encode()).hexdigest()
    return int(digest[:8], 16)


def mark_run_seed(run_seed_value: int, stage_seed: int | None = None) -> None:
    """Record the run's seed beside the seed ``seed_everything`` just set (``stage_seed``, default the same): while
    ``PL_GLOBAL_SEED`` still equals it, :func:`run_seed` keys on the run's seed. A later ``seed_everything`` by
    anyone else makes the record stale, and it is then ignored."""
    import os

    os.environ[RUN_SEED_ENV] = f"{int(run_seed_value)}:{int(run_seed_value if stage_seed is None else stage_seed)}"


def current_run_seed() -> int:
    """The run's seed: the recorded one while ``PL_GLOBAL_SEED`` is the seed it was recorded beside (a plain value
    without ``:`` is always used), otherwise ``PL_GLOBAL_SEED`` (0 when unset)."""
    import os

    global_seed = os.environ.get("PL_GLOBAL_SEED", "0")
    record = os.environ.get(RUN_SEED_ENV, "")
    run, colon, stage = record.partition(":")
    if run and (not colon or stage == global_seed):  # a plain value: set by hand (a tool, a test), always used
        return int(run)
    return int(global_seed)
