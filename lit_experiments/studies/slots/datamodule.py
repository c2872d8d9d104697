"""SlotsDataModule: clips from a ``source`` part, features of a ``frozen`` part cached on disk.

Parts by constructor (``class_path`` in the YAML): ``source`` (``sources.ShapesClipSplits``: ShapesWorld videos;
``sources.MoviClipSplits``: converted MOVi clips) and ``frozen`` (the frozen feature extractor:
``ColourEdgeBackbone``, the study's fixed hand-designed encoder for CPU demos, or ``RegistryBackbone``, a
``lit_experiments.backbones`` name such as a timm / open_clip ViT; ``null``: the pixel path, frames only). The
frozen part owns the input resolution (``image_size``); clips are resized to it before the features.

Batch keys: ``video`` uint8 (B,T,3,H,W), ``instances`` int64 (B,T,H,W), per-object ``material`` /
``category`` / ``num_objects``, ``index``, and with a frozen part ``features`` float (B,T,N,C) plus
``feature_grid`` int64 (B,2).

Splits that cannot leak (F47): validation and test are checked disjoint by clip id
(``core.splits.check_disjoint``) before anything is loaded, naming both; the record is ``self.split_info``
(results.json ``splits``). MOVi's validation is a seeded held-out part of a folder (``val_fraction``; the base
config holds out 2.5 % of ``train``), its ids written once to ``<root>/val_holdout_<folder>.json`` by
``core.splits.ensure_holdout``; the test split is the official ``validation`` folder. A validation equal to or
overlapping the test split is refused unless ``allow_val_test_overlap: true`` (then every number of the run is
marked as tuned on test).

Seeds (F50): the ShapesWorld worlds of the three splits, the training order and the held-out draw come from the
run's ``seed_everything`` through ``core.seeding.run_seed`` unless ``seed`` pins them, so a sweep over seeds
varies the data too.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from lit_experiments.core.seeding import run_seed
from lit_experiments.core.splits import check_disjoint
from lit_experiments.core.study import StudyDataModule
from lit_experiments.data.cache import FeatureCache

from .encoders import ColourEdgeEncoder
from .sources import DEFAULT_MOVI_SPLITS, SPLITS, ClipSplits, MoviClipSplits, ShapesClipSplits

__all__ = ["DEFAULT_MOVI_SPLITS", "ClipSplits", "ColourEdgeBackbone", "MoviClipSplits", "RegistryBackbone",
           "ShapesClipSplits", "SlotsDataModule"]


class Resize:
    """Deterministic bilinear resize of [0,1] frames (T,3,H,W) or images to the backbone's input size."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.size and x.shape[-2] == self.size:
            return x
        flat = x.reshape(-1, *x.shape[-3:])
        out = F.interpolate(flat, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return out.reshape(*x.shape[:-2], self.size, self.size).clamp(0, 1)

    def __repr__(self) -> str:
        return f"Resize({self.size}, bilinear, antialias)"


class ColourEdgeBackbone(ColourEdgeEncoder):
    """``ColourEdgeEncoder`` as the datamodule's ``frozen`` part, with the extras the feature cache needs (clips
    are read at their own size: no ``image_size``)."""

    image_size: int | None = None

    @classmethod
    def from_registry(cls, name: str, pretrained: bool | str = False, layers: list[int] | None = None,
                      img_size: int | None = None, model_kwargs: dict | None = None) -> ColourEdgeBackbone:
        """The registry's factory for ``colour_edge`` (see ``plugin.py``): fixed weights, no checkpoint."""
        if pretrained:
            raise ValueError("backbone 'colour_edge' is a fixed hand-designed encoder: it has no pretrained weights")
        return cls(**(model_kwargs or {}))

    def cache_key(self) -> str:
        return self.name

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 5:
            b, t = images.shape[:2]
            return super().features(images.flatten(0, 1)).view(b, t, -1, self.dim)
        return super().features(images)


class RegistryBackbone(nn.Module):
    """The ``frozen`` part named by its ``lit_experiments.backbones`` name (a timm / open_clip ViT or CNN, or a
    name a study registers), built on first use (setup), frozen (F01).

    Args:
        name: the backbone's name (``vit_small_patch14_dinov2``, ``vit_base_patch16_clip_224.openai``, ...).
        pretrained: ``False`` random init, ``True`` hub cache, or a path to a weight file.
        layers: blocks whose tokens are the features (default: the last).
        image_size: the input resolution; clips are resized to it (null: read at their own size).
        model_kwargs: model constructor arguments (tiny test variants).
    """

    always_frozen = True

    def __init__(self, name: str, pretrained: bool | str = False, layers: Sequence[int] | None = None,
                 image_size: int | None = None, model_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.spec = {"name": name, "pretrained": pretrained, "layers": list(layers) if layers is not None else None,
                     "img_size": image_size, "model_kwargs": model_kwargs}
        self.image_size = image_size
        self._built: list[nn.Module] = []  # a list: the network is built on first use, not at construction

    def build(self) -> Any:
        """The network (built on the first call; a random or timm init draws from the global RNG, as it always did)."""
        if not self._built:
            from lit_experiments.backbones import build_backbone

            self._built.append(build_backbone(**self.spec))
        return self._built[0]

    @property
    def network(self) -> Any:
        return self.build()

    def held_modules(self) -> list[nn.Module]:
        """The network once built (it is held outside the children: ``lit-exp preflight`` counts its parameters and
        reports the weight file it loaded)."""
        return list(self._built)

    @property
    def name(self) -> str:
        return self.network.name

    @property
    def out_dim(self) -> int:
        return self.network.out_dim

    def cache_key(self) -> str:
        return self.network.cache_key()

    def grid_size(self, h: int, w: int) -> tuple[int, int]:
        return self.network.grid_size(h, w)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


class OnTheFlyFeatures(Dataset):
    """Uncached alternative to FeatureCache: runs the frozen backbone per item (no grad)."""

    def __init__(self, backbone: Any, dataset: Dataset, transform: Any = None) -> None:
        self.backbone, self.dataset, self.transform = backbone, dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        x = item["video"] if "video" in item else item["image"]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = self.transform(x) if self.transform is not None else x
        with torch.no_grad():
            item["features"] = self.backbone.features(x.unsqueeze(0))[0].float()
        return item


class WithGrid(Dataset):
    """Adds ``feature_grid`` (h, w) to every item and turns images into 1-frame clips."""

    def __init__(self, dataset: Dataset, grid: tuple[int, int] | None) -> None:
        self.dataset, self.grid = dataset, grid

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        if "image" in item and "video" not in item:
            item["video"] = item.pop("image").unsqueeze(0)
            item["instances"] = item["instances"].unsqueeze(0)
            if "features" in item:
                item["features"] = item["features"].unsqueeze(0)
        if self.grid is not None:
            item["feature_grid"] = torch.tensor(self.grid)
        item.pop("caption", None)
        item.pop("labels", None)
        item.pop("phase", None)
        return item


class SlotsDataModule(StudyDataModule):
    """Args:
        source: where the clips come from: ``sources.ShapesClipSplits`` (ShapesWorld videos, the default) or
            ``sources.MoviClipSplits`` (converted MOVi clips; validation / test folders and the held-out part).
        frozen: the frozen feature extractor (``ColourEdgeBackbone`` | ``RegistryBackbone``); its features are the
            batch's ``features`` and the model's reconstruction target. null: frames only (the pixel path, a
            trainable encoder in the model).
        seed: pins the data's random choices (ShapesWorld worlds: seed, seed + 1, seed + 2 for train / val /
            test; the training order; the held-out draw). None: derived from ``seed_everything`` (F50).
        allow_val_test_overlap: accept a validation split that equals or overlaps the test split (F47); the run's
            results.json then says ``tuned_on_test: true``.
        cache_dir: where the frozen-feature caches live (null: features recomputed for every item, no cache).
        batch_size / eval_batch_size / num_workers: the loaders.
    """

    def __init__(
        self,
        source: ClipSplits | None = None,
        frozen: nn.Module | None = None,
        seed: int | None = None,
        allow_val_test_overlap: bool = False,
        cache_dir: str | None = ".cache/features",
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, eval_batch_size=eval_batch_size)
        self.source = source if source is not None else ShapesClipSplits()
        self.frozen = frozen
        self.allow_val_test_overlap, self.seed = bool(allow_val_test_overlap), seed
        self.cache_dir = cache_dir
        self._raw: dict[str, Dataset] = {}
        self._ids: dict[str, list[str]] = {}
        self._order: torch.Generator | None = None
        self.splits: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ data
    def resolve_splits(self) -> dict[str, Dataset]:
        """The raw train / val / test datasets with their item ids; validation vs test checked disjoint (F47)."""
        if self._raw:
            return self._raw
        resolved = self.source.resolve(self.seed)
        for split in SPLITS:
            self._raw[split], self._ids[split] = resolved[split].dataset, resolved[split].ids
        self.split_info = check_disjoint(self._ids["val"], self._ids["test"], val_name=resolved["val"].name,
                                         test_name=resolved["test"].name, allow_overlap=self.allow_val_test_overlap,
                                         what="clip ids")
        return self._raw

    def raw_split(self, split: str) -> Dataset:
        return self.resolve_splits()[split]

    def item_ids(self, split: str) -> list[str]:
        """The id of every item of ``split`` by its ``index`` (ShapesWorld ``shapes:<seed>:<i>``, MOVi clip ids)."""
        self.resolve_splits()
        return self._ids[split]

    def feature_split(self, split: str) -> Dataset:
        raw = self.raw_split(split)
        if self.frozen is None:  # the pixel path: frames only
            return WithGrid(raw, None)
        if hasattr(self.frozen, "build"):
            self.frozen.build()  # a lazy part is built here, before (not inside) the cache's isolated RNG
        size = getattr(self.frozen, "image_size", None)
        transform = Resize(size) if size else None
        if self.cache_dir is not None:
            # training needs only the features: the clips themselves are not re-rendered / re-read per step
            ds: Dataset = FeatureCache(Path(self.cache_dir), self.frozen, raw, transform=transform, progress=None,
                                       include_items=split != "train")
        else:
            ds = OnTheFlyFeatures(self.frozen, raw, transform)
        sample = raw[0]
        h, w = (sample["video"] if "video" in sample else sample["image"]).shape[-2:]
        if size:
            h = w = size
        return WithGrid(ds, tuple(self.frozen.grid_size(h, w)))

    def setup(self, stage: str | None = None) -> None:
        self.resolve_splits()  # every split's ids, and the F47 check, before any feature is computed
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", SPLITS)
        for split in wanted:
            if split not in self.splits:
                self.splits[split] = self.feature_split(split)

    def train_dataloader(self):
        if self._order is None:  # one generator for the whole run: later stages continue its order (F50)
            self._order = torch.Generator().manual_seed(run_seed(self.seed, "slots/order"))
        return self.train_loader(self.splits["train"], drop_last=len(self.splits["train"]) > self.batch_size,
                                 generator=self._order)

    def val_dataloader(self):
        return self.eval_loader(self.splits["val"])

    def test_dataloader(self):
        return self.eval_loader(self.splits["test"])
