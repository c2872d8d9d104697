"""What a feature cache is keyed by, and the transforms it refuses.

* :func:`describe_transform` - a stable text for the transform (``transform_id`` wins).
* :func:`data_fingerprint` - ``dataset.fingerprint()`` or a hash of type, length and three samples.
* :func:`weights_digest` - SHA-1 of a module's weights (a frozen model's part of a cache key).
* :func:`find_random_transforms` - random augmentations in a pipeline (cached features would freeze them),
  refused by :class:`~lit_experiments.data.cache.FeatureCache` with :class:`RandomTransformError`.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset

from ..core.errors import ConfigError

RANDOM_TRANSFORM_NAMES = {
    "ColorJitter", "GaussianBlur", "RandAugment", "AutoAugment", "TrivialAugmentWide", "AugMix",
    "ElasticTransform", "GaussianNoise", "RandomChoice", "RandomOrder", "RandomApply",
}


class RandomTransformError(ConfigError):
    """A random augmentation was found in a transform that should be cached."""


def _children(t: Any) -> Iterator[tuple[str, Any]]:
    for attr in ("transforms", "transform"):
        sub = getattr(t, attr, None)
        if sub is None or sub is t:
            continue
        if isinstance(sub, (list, tuple, torch.nn.ModuleList)):
            for i, s in enumerate(sub):
                yield f".{attr}[{i}]", s
        elif callable(sub):
            yield f".{attr}", sub
    if isinstance(t, torch.nn.Module):
        for n, m in t.named_children():
            yield f".{n}", m


def find_random_transforms(transform: Any, path: str = "transform") -> list[str]:
    """Locations of random augmentations in a transform pipeline (torchvision v1/v2, nn.Sequential).

    A step counts as random when its class name starts with ``Random`` or is a known random op
    (ColorJitter, GaussianBlur, RandAugment, ...), or when it has an attribute ``random = True``.
    """
    if transform is None:
        return []
    found = []
    cls = type(transform).__name__
    if cls.startswith("Random") or cls in RANDOM_TRANSFORM_NAMES or getattr(transform, "random", False) is True:
        found.append(f"{path} ({cls})")
    seen = set()
    for suffix, child in _children(transform):
        if id(child) in seen:
            continue
        seen.add(id(child))
        found += find_random_transforms(child, path + suffix)
    return found


def describe_transform(transform: Any, transform_id: str | None = None) -> str:
    """Stable description of a transform for the cache key (``transform_id`` wins)."""
    if transform_id is not None:
        return str(transform_id)
    if transform is None:
        return "identity"
    text = repr(transform)
    if " at 0x" in text:
        raise ValueError(
            f"FeatureCache: cannot derive a stable cache key from {text}; pass transform_id='...' naming it"
        )
    return text


def data_fingerprint(dataset: Dataset, image_key: str) -> str:
    """``dataset.fingerprint()`` when defined, else a hash of type, length and three samples' pixels."""
    fp = getattr(dataset, "fingerprint", None)
    if callable(fp):
        return str(fp())
    n = len(dataset)
    h = hashlib.sha1(f"{type(dataset).__module__}.{type(dataset).__qualname__}:{n}".encode())
    for i in sorted({0, n // 2, n - 1} if n else set()):
        h.update(torch.as_tensor(dataset[i][image_key]).contiguous().numpy().tobytes())
    return "sampled-" + h.hexdigest()[:16]


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-1 (16 hex digits) of ``module``'s weights: every state-dict entry's name and bytes, in order."""
    h = hashlib.sha1()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
