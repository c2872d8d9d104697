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
