"""Data layer: ShapesWorld generator, real-format readers, frozen-feature cache.

* :class:`~lit_experiments.data.shapes.ShapesWorld` - seeded procedural images / videos with ground truth.
* Readers returning the same dict keys: :class:`~.movi.MoviClips`, :class:`~.coco.CocoInstances`,
  :class:`~.coco.CocoMultiLabel`, :class:`~.multilabel.MultiLabelFiles`, :class:`~.frames.FrameFolder`.
* :class:`~lit_experiments.data.cache.FeatureCache` - fp16 memory-mapped frozen features.
* ``lit-exp data shapes ...`` - :func:`lit_experiments.data.tools.main`.

Submodules are imported lazily so ``import lit_experiments.data`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ShapesWorld": "shapes", "FeatureCache": "cache", "cached_features": "cache", "MoviClips": "movi",
    "CocoInstances": "coco", "CocoMultiLabel": "coco", "MultiLabelFiles": "multilabel", "FrameFolder": "frames",
    "DataLayoutError": "errors", "LabelError": "errors", "BadSampleError": "errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
