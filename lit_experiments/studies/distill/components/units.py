"""The (image, prompt) units of the distill study: per-split sources, the training order (the datamodule's
``sampler:`` part, :class:`EpochOrder`) with its epoch sampler, the unit dataset and its collate function (the
datamodule in :mod:`..datamodule` builds them; see its docstring for the batch keys)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset, Sampler
from torchvision.ops import box_convert, masks_to_boxes

from lit_experiments.core.seeding import run_seed

from .prompts import Prompt, fixed_units

if TYPE_CHECKING:
    from ..datamodule import DistillDataModule

SPLITS = ("train", "val", "test")


class UnitSource:
    """Per image of a split: the uint8 image, the present concept names and each concept's instances.

    ``key``: the items' per-object array naming each object's concept (``category``, or ``color`` for
    ShapesWorld's colour concept); ``names[v]`` is the name of value ``v`` of that array (default:
    ``categories``); ``categories``: the prompt vocabulary's concept names."""

    def __init__(self, dataset: Dataset, categories: list[str], key: str = "category",
                 names: list[str] | None = None) -> None:
        self.dataset, self.categories, self.key = dataset, list(categories), key
        self.names = list(names) if names is not None else self.categories
        self.items = [dataset[i] for i in range(len(dataset))]
        self.present: list[list[str]] = []
        for it in self.items:
            n = int(it["num_objects"])
            visible = [k for k in range(n) if bool((it["instances"] == k + 1).any())]
            self.present.append(sorted({self.concept(it, k) for k in visible}))

    def concept(self, item: dict, k: int) -> str:
        """The concept name of object ``k`` of ``item``."""
        return self.names[int(item[self.key][k])]

    def __len__(self) -> int:
        return len(self.items)

    def image(self, i: int) -> torch.Tensor:
        return self.items[i]["image"]

    def targets(self, i: int, prompt: Prompt) -> dict[str, torch.Tensor]:
        """Visible instance masks (n, S, S) float and boxes (n, 4) normalised cxcywh answering ``prompt``."""
        it = self.items[i]
        size = it["image"].shape[-1]
        n = int(it["num_objects"])
        if prompt.kind == "negative":
            ks: list[int] = []
        elif prompt.kind == "generic":
            ks = list(range(n))
        else:
            ks = [k for k in range(n) if self.concept(it, k) == prompt.category]
        masks = [it["instances"] == k + 1 for k in ks]
        masks = [m for m in masks if bool(m.any())]
        if not masks:
            return {"masks": torch.zeros(0, size, size), "boxes": torch.zeros(0, 4)}
        m = torch.stack(masks)
        xyxy = masks_to_boxes(m) + torch.tensor([0.0, 0.0, 1.0, 1.0])  # pixel edges
        return {"masks": m.float(), "boxes": box_convert(xyxy / size, in_fmt="xyxy", out_fmt="cxcywh")}

    def fingerprint(self) -> str:
        fp = getattr(self.dataset, "fingerprint", None)
        return fp() if callable(fp) else f"n{len(self)}"


class EpochSampler(Sampler):
    """Indices ``(image, epoch, r)`` in a seeded permutation of the images per epoch (``shuffle``), split over
    ranks by stride; ``r = 0 .. per_image - 1`` come one after the other (the image's prompts land in one batch).
    Lightning calls :meth:`set_epoch`; the dataset draws the epoch's prompts from the key."""

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 per_image: int = 1) -> None:
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, max(1, world_size)
        self.per_image = max(1, int(per_image))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        order = (torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 10007 + self.epoch))
                 if self.shuffle else torch.arange(self.n))
        for i in order[self.rank::self.world].tolist():
            for r in range(self.per_image):
                yield (int(i), self.epoch, r)

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world)) * self.per_image


class EpochOrder:
    """The training order (the datamodule's ``sampler:`` part; ``null``: this part with its default): a seeded
    permutation of the images per epoch, split over ranks (:class:`EpochSampler`), each image's prompts one after
    the other.

    Args:
        seed: the order's seed (default: derived from ``seed_everything``, F50).
        shuffle: False keeps the images in their order.
    """

    def __init__(self, seed: int | None = None, shuffle: bool = True) -> None:
        self.seed, self.shuffle = run_seed(seed, "distill/order"), bool(shuffle)

    def sampler(self, n: int, rank: int = 0, world_size: int = 1, per_image: int = 1) -> EpochSampler:
        return EpochSampler(n, self.shuffle, self.seed, rank, world_size, per_image)


class UnitSplit(Dataset):
    """The units of one split (see the module docstring); ``train`` items are indexed by ``(image, epoch)``."""

    def __init__(self, dm: DistillDataModule, split: str) -> None:
        self.dm, self.split = dm, split
        self.source = dm.unit_source(split)
        self.units: list[tuple[int, Prompt]] | None = None
        if split != "train":
            self.units = fixed_units(self.source.present, dm.categories, dm.generic[0] if dm.generic else None,
                                     [dm.source.seed, SPLITS.index(split), 0x5EED])

    def __len__(self) -> int:
        return len(self.source) if self.units is None else len(self.units)


    def __getitem__(self, key: int | tuple[int, ...]) -> dict:
        if self.units is None:
            i, epoch, r = (*key, 0)[:3] if isinstance(key, tuple) else (int(key), 0, 0)
            prompt = self.dm.prompt_sampler.sample_many(self.source.present[i], i, epoch, r + 1)[r]
        else:
            i, prompt = self.units[int(key)]
        v = self.dm.vocab.index(prompt.text)
        item = {"image": self.source.image(i), "prompt": prompt.text, "kind": prompt.kind,
                "targets": self.source.targets(i, prompt), "index": torch.tensor(i), "unit": torch.tensor(v),
                **{k: t[v] for k, t in self.dm.vocab_ids.items()}}
        teacher = self.dm.teacher_cache(self.split)
        if teacher is not None:
            item["teacher"] = teacher(i * len(self.dm.vocab) + v)
        features = self.dm.teacher_features(self.split)
        if features is not None:
            item["teacher_features"] = features(i)
        return item


def collate_units(items: list[dict]) -> dict:
    """Stack tensors; ``prompt`` / ``kind`` / ``targets`` stay lists; ``teacher`` becomes a dict of stacks."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if key in ("prompt", "kind", "targets"):
            out[key] = values
        elif key == "teacher":
            out[key] = {k: torch.stack([v[k] for v in values]) for k in values[0]}
        else:
            out[key] = torch.stack(values)
    return out
