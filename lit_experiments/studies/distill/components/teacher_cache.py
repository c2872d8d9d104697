"""The frozen teacher as the frozen-feature cache sees it (:mod:`lit_experiments.data.cache`): its outputs for
every (image, vocabulary prompt) of a split, and its vision features per image (the encoder stage's targets).
Epochs after the first read them; the teacher never runs again for the same weights, data and vocabulary."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lit_experiments.core.errors import ConfigError

from .teacher import OUTPUT_KEYS, Sam3Teacher

if TYPE_CHECKING:  # pragma: no cover
    from .units import UnitSource


class VocabImages(Dataset):
    """The images of a split as the teacher cache's input (item ``image``: uint8);
    ``fingerprint`` covers the images and the vocabulary's teacher ids (one cache row per image holds the
    outputs of every vocabulary prompt)."""

    def __init__(self, source: UnitSource, ids: torch.Tensor) -> None:
        self.source, self.ids = source, ids

    def __len__(self) -> int:
        return len(self.source)

    def fingerprint(self) -> str:
        import hashlib

        return f"{self.source.fingerprint()}-ids{hashlib.sha1(self.ids.numpy().tobytes()).hexdigest()[:12]}"

    def __getitem__(self, i: int) -> dict:
        return {"image": self.source.image(int(i)), "index": torch.tensor(int(i))}


class TeacherOutputs:
    """The frozen teacher as the cache sees it: ``features([0, 1] images (B, 3, H, W)) -> (B, V, D)``, the flat outputs
    of every vocabulary prompt (ids ``ids``, mask ``mask``) per image; the vision encoder runs once per image
    (SAM3's ``vision_embeds`` path through ``image_index``)."""

    def __init__(self, teacher: Sam3Teacher, ids: torch.Tensor, mask: torch.Tensor) -> None:
        self.teacher, self.ids, self.mask, self.name = teacher, ids, mask, "distill-teacher"

    def cache_key(self) -> str:
        return f"teacher:{self.teacher.cache_key()}"

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        b, v = len(images), len(self.ids)
        out = self.teacher(images=(images * 255.0).round(),
                           input_ids=self.ids.repeat(b, 1), attention_mask=self.mask.repeat(b, 1),
                           image_index=torch.arange(b).repeat_interleave(v))
        return torch.cat([out[k].float().reshape(b * v, -1) for k in OUTPUT_KEYS], 1).reshape(b, v, -1)

    @staticmethod
    def unpack(flat: torch.Tensor, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        out, pos = {}, 0
        for k in OUTPUT_KEYS:
            size = int(np.prod(shapes[k])) if shapes[k] else 1
            out[k] = flat[pos:pos + size].reshape(shapes[k])
            pos += size
        return out


class TeacherVision:
    """The teacher's vision encoder as the cache sees it: ``features([0, 1] images) -> (B, h * w, C)``, the FPN
    level ``level`` of SAM3's vision neck (0 = the finest kept level)."""

    def __init__(self, teacher: Sam3Teacher, level: int) -> None:
        self.teacher, self.level, self.name = teacher, int(level), "distill-teacher-vision"

    def cache_key(self) -> str:
        return f"teacher-vision:{self.level}:{self.teacher.cache_key()}"

    @torch.no_grad()
    def maps(self, images_uint8: torch.Tensor) -> torch.Tensor:
        vision = self.teacher.model.get_vision_features(pixel_values=self.teacher.image_inputs(images_uint8))
        levels = vision.fpn_hidden_states
        if not -len(levels) <= self.level < len(levels):
            raise ConfigError(f"data.init_args.feature_level={self.level}: the teacher's vision neck has "
                              f"{len(levels)} levels")
        return levels[self.level].float()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.maps((images * 255.0).round())
        return maps.flatten(2).transpose(1, 2)


class _Listed(Dataset):
    """Items in a list, with the split's fingerprint (the cache key's data part)."""

    def __init__(self, items: list[dict], fingerprint: str) -> None:
        self.items, self._fp = items, fingerprint

    def fingerprint(self) -> str:
        return self._fp

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[int(i)]


def output_cache(dm: Any, split: str) -> Callable[[int], dict[str, torch.Tensor]]:
    """``unit index -> teacher outputs`` of ``dm``'s source ``split``: every (image, vocabulary prompt) computed
    once into a :class:`~lit_experiments.data.cache.FeatureCache` (one row per image, all prompts)."""
    from lit_experiments.data.cache import FeatureCache

    src = dm.unit_source(split)
    ids, mask = dm.vocab_ids["teacher_input_ids"], dm.vocab_ids["teacher_attention_mask"]
    backbone = TeacherOutputs(dm.frozen, ids, mask)
    with torch.no_grad():  # the shapes of one unit's outputs, to unpack the flat cache rows
        probe = dm.frozen(images=src.image(0)[None], input_ids=ids[:1], attention_mask=mask[:1])
    shapes = {k: tuple(probe[k].shape[1:]) for k in OUTPUT_KEYS}
    cache = FeatureCache(Path(dm.cache_dir), backbone, VocabImages(src, ids),
                         batch_size=max(1, (dm.eval_batch_size or 64) // len(dm.vocab)),
                         image_key="image", key_fields={"split": split, "vocab": dm.vocab},
                         include_items=False, progress=False)
    v = len(dm.vocab)
    return lambda u: backbone.unpack(cache.features(u // v)[u % v], shapes)


def vision_cache(dm: Any, split: str, level: int) -> Callable[[int], torch.Tensor]:
    """``image index -> (C, h, w)`` teacher vision features (FPN level ``level``) of ``dm``'s source ``split``,
    computed once into a :class:`~lit_experiments.data.cache.FeatureCache`."""
    from lit_experiments.data.cache import FeatureCache

    src = dm.unit_source(split)
    backbone = TeacherVision(dm.frozen, int(level))
    c, h, w = backbone.maps(src.image(0)[None]).shape[1:]
    images = [{"image": src.image(i), "index": torch.tensor(i)} for i in range(len(src))]
    cache = FeatureCache(Path(dm.cache_dir), backbone, _Listed(images, src.fingerprint()),
                         batch_size=dm.eval_batch_size or 64, image_key="image",
                         key_fields={"split": split}, include_items=False, progress=False)
    return lambda i: cache.features(i).t().reshape(c, h, w)
