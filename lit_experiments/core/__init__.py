"""The core every study shares: stage specs, the StudyModule base, curriculum runner and callbacks.

Exports are imported lazily, so tools that only need, say, ``core.curves`` or ``core.configs`` start without
importing torch and lightning.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Any

# StageFreeze keeps frozen modules in eval mode on purpose; Lightning warns about exactly that.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")

_EXPORTS = {"OptimSpec": "specs", "StageSpec": "specs", "StudyDataModule": "study", "StudyModule": "study"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
