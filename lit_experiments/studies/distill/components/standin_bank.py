"""The stand-in teacher's units: a rendered ShapesWorld with per-concept instance masks and boxes (colour, shape
category and generic words; F53), used by :mod:`.standin` to train and score the stand-in."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_convert, masks_to_boxes

from lit_experiments.core.errors import ConfigError
from lit_experiments.data.shapes import ShapesWorld

DATA_KEYS = ("n_train", "n_eval", "seed", "neg_p", "paired", "prompts_per_image", "concept", "generic")
CONCEPTS = ("category", "color", "both")


def _world_kwargs(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in DATA_KEYS}


class UnitBank:
    """Rendered images of a ShapesWorld with per-concept instance masks and boxes (the units' source).

    ``concept``: ``"category"`` (prompts are shape names, ``categories`` = the world's categories), ``"color"``
    (prompts are colour names, ``categories`` = the world's colours: a unit's targets are the objects of that
    colour) or ``"both"`` (colours, then categories). ``generic``: class-agnostic words appended to the vocabulary
    (``"object"``: every object of the image; F53, the A/B's generic prompts). ``categories`` is the whole prompt
    vocabulary; ``family(v)`` says whether word ``v`` is a ``color``, ``category`` or ``generic`` word.
    ``images`` uint8 (N, 3, S, S); ``member`` (N, K, V) bool: object ``k`` of image ``i`` answers word ``v``;
    ``present[i]`` the sorted vocabulary indices answered by a visible object of image ``i``; :meth:`targets` the
    ``{"masks", "boxes"}`` of (image, word)."""

    def __init__(self, world: ShapesWorld, concept: str = "category", generic: Sequence[str] = ()) -> None:
        if concept not in CONCEPTS:
            raise ConfigError(f"UnitBank: concept={concept!r}; expected one of {CONCEPTS}")
        self.world = world
        self.concept = concept
        items = [world[i] for i in range(len(world))]
        self.images = torch.stack([it["image"] for it in items])
        self.instances = torch.stack([it["instances"] for it in items])
        n, k = len(items), int(items[0]["category"].shape[0]) if items else 0
        colors = [world.COLOR_NAMES[c] for c in world.colors]
        families: list[str] = []
        columns: list[torch.Tensor] = []  # (N, K) bool per vocabulary word
        if concept in ("color", "both"):
            color = torch.stack([it["color"] for it in items]) if items else torch.zeros(0, k, dtype=torch.long)
            columns += [color == c for c in world.colors]
            families += ["color"] * len(colors)
        if concept in ("category", "both"):
            cat = torch.stack([it["category"] for it in items]) if items else torch.zeros(0, k, dtype=torch.long)
            columns += [cat == j for j in range(len(world.categories))]
            families += ["category"] * len(world.categories)
        valid = torch.arange(k)[None] < torch.tensor([int(it["num_objects"]) for it in items])[:, None]
        columns += [valid.clone() for _ in generic]
        families += ["generic"] * len(generic)
        names = ([*colors] if concept in ("color", "both") else []) + (
            list(world.categories) if concept in ("category", "both") else []) + [str(g) for g in generic]
        if len({x.casefold() for x in names}) != len(names):
            raise ConfigError(f"UnitBank: the prompt vocabulary {names} repeats a word (a generic word that is "
                              "also a colour or category name?)")
        self.categories, self.families = names, families
        self.member = torch.stack(columns, -1) & valid[..., None]  # (N, K, V)
        self.present: list[list[int]] = []
        for i in range(n):
            vis = torch.tensor([bool((self.instances[i] == j + 1).any()) for j in range(k)], dtype=torch.bool)
            self.present.append((self.member[i] & vis[:, None]).any(0).nonzero().flatten().tolist())

    def family(self, v: int) -> str:
        """``color``, ``category`` or ``generic``: the family of vocabulary word ``v``."""
        return self.families[v]

    @property
    def object_category(self) -> torch.Tensor:
        """(N, K) the first concept word each object answers (-1 for padding), for single-concept banks."""
        first = self.member.float().argmax(-1)
        return torch.where(self.member.any(-1), first, torch.full_like(first, -1))

    def __len__(self) -> int:
        return len(self.images)

    def targets(self, index: int, category: int) -> dict[str, torch.Tensor]:
        """Visible instance masks (n, S, S) float and boxes (n, 4) normalised cxcywh of ``category``."""
        size = self.images.shape[-1]
        ks = self.member[index, :, category].nonzero().flatten().tolist()
        masks = [self.instances[index] == k + 1 for k in ks]
        masks = [m for m in masks if bool(m.any())]
        if not masks:
            return {"masks": torch.zeros(0, size, size), "boxes": torch.zeros(0, 4)}
        m = torch.stack(masks)
        xyxy = masks_to_boxes(m) + torch.tensor([0.0, 0.0, 1.0, 1.0])  # pixel edges, not centres
        return {"masks": m.float(), "boxes": box_convert(xyxy / size, in_fmt="xyxy", out_fmt="cxcywh")}

    def absent(self, index: int) -> list[int]:
        return [c for c in range(len(self.categories)) if c not in self.present[index]]

    def _pick(self, pool: list[int], r: float) -> int:
        """A word of ``pool`` for ``r`` in [0, 1): a family present in the pool first (uniformly), then a word of
        it, so a few colours are not drowned by many generic words (one family: a uniform word)."""
        fams = sorted({self.families[v] for v in pool})
        j = min(int(r * len(fams)), len(fams) - 1)
        sub = [v for v in pool if self.families[v] == fams[j]]
        r2 = min(max(r * len(fams) - j, 0.0), 1.0)
        return sub[min(int(r2 * len(sub)), len(sub) - 1)]

    def sample_units(self, count: int, neg_p: float, gen: torch.Generator,
                     paired: bool = True) -> list[tuple[int, int]]:
        """``count`` random (image, category) units, negative (absent category) with probability ``neg_p``.

        ``paired``: units come in pairs of one image, a present category first, then a second prompt: absent
        with probability ``2 * neg_p`` (capped at 1), else another present category when the image has one. The
        pair's masks differ only through the prompt, so ignoring the text cannot lower the loss."""
        n_img = (count + 1) // 2 if paired else count
        idx = torch.randint(len(self), (n_img,), generator=gen).tolist()
        u = torch.rand(n_img, 3, generator=gen).tolist()
        units: list[tuple[int, int]] = []
        for i, (ua, ra, rb) in zip(idx, u):
            present, absent = self.present[i], self.absent(i)
            if not paired:
                neg = (ua < neg_p and absent) or not present
                units.append((i, self._pick(absent if neg else present, ra)))
                continue
            first = self._pick(present, ra) if present else self._pick(absent, ra)
            others = [c for c in present if c != first]
            neg = absent and (ua < min(1.0, 2 * neg_p) or not others)
            units += [(i, first), (i, self._pick(absent if neg else others, rb))]
        return units[:count]

    def eval_units(self, seed: int = 0) -> list[tuple[int, int]]:
        """Every present category of every image plus one absent category per image (seeded)."""
        rng = np.random.default_rng(seed)
        units = []
        for i in range(len(self)):
            units += [(i, c) for c in self.present[i]]
            absent = self.absent(i)
            if absent:
                units.append((i, int(absent[rng.integers(len(absent))])))
        return units

    def image_units(self, n_images: int, per_image: int, gen: torch.Generator) -> list[tuple[int, int]]:
        """``n_images`` random images, each with ``per_image`` prompts: its present categories (at most
        ``per_image``) then absent ones (random order). The units of one image are consecutive."""
        idx = torch.randint(len(self), (n_images,), generator=gen).tolist()
        units: list[tuple[int, int]] = []
        for i in idx:
            present = [self.present[i][j] for j in torch.randperm(len(self.present[i]), generator=gen).tolist()]
            absent = [self.absent(i)[j] for j in torch.randperm(len(self.absent(i)), generator=gen).tolist()]
            units += [(i, c) for c in (present[:per_image] + absent)[:per_image]]
        return units

    def batch(self, units: list[tuple[int, int]]) -> tuple[torch.Tensor, list[str], list[dict[str, torch.Tensor]]]:
        """Images, prompt strings and targets of ``units``."""
        idx = torch.tensor([i for i, _ in units])
        return (self.images[idx], [self.categories[c] for _, c in units],
                [self.targets(i, c) for i, c in units])
