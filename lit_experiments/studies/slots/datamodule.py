"""SlotsDataModule: ShapesWorld videos (default) or MOVi clips, with frozen features cached on disk.

Batch keys: ``video`` uint8 (B,T,3,H,W), ``instances`` int64 (B,T,H,W), per-object ``material`` /
``category`` / ``num_objects``, ``index``, and for the feature path ``features`` float (B,T,N,C) plus
``feature_grid`` int64 (B,2). ``backbone`` is a ``lit_experiments.backbones`` name (timm / open_clip,
built with ``pretrained``) or ``colour_edge`` (the study's fixed hand-designed encoder for CPU demos).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lit_experiments.core.study import StudyDataModule
from lit_experiments.data.cache import FeatureCache
from lit_experiments.data.shapes import ShapesWorld

from .encoders import ColourEdgeEncoder

SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


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
    """``ColourEdgeEncoder`` with the frozen-backbone extras the feature cache needs."""

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
        dataset: ``shapes`` (ShapesWorld videos) or ``movi`` (``lit_experiments.data.movi.MoviClips``).
        input: ``features`` (frozen backbone features) or ``pixels`` (frames only, trainable encoder).
        n_train / n_val / n_test: ShapesWorld sizes (splits use different world seeds).
        shapes: extra ShapesWorld arguments (image_size, num_frames, min_objects, max_objects, ...).
        movi_root / movi_splits / movi_kwargs: MOVi location, split folder names and reader arguments.
        backbone / pretrained / layers / img_size / model_kwargs: the frozen feature extractor.
        cache_features: serve features from the on-disk FeatureCache (default) instead of recomputing.
        cache_dir: where caches live.
    """

    def __init__(
        self,
        dataset: str = "shapes",
        input: str = "features",
        n_train: int = 2000,
        n_val: int = 64,
        n_test: int = 128,
        shapes: dict[str, Any] | None = None,
        movi_root: str | None = None,
        movi_splits: dict[str, str] | None = None,
        movi_kwargs: dict[str, Any] | None = None,
        backbone: str = "colour_edge",
        pretrained: bool | str = False,
        layers: list[int] | None = None,
        img_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        cache_features: bool = True,
        cache_dir: str = ".cache/features",
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, eval_batch_size=eval_batch_size)
        if dataset not in ("shapes", "movi"):
            raise ValueError(f"dataset must be 'shapes' or 'movi', got {dataset!r}")
        if input not in ("features", "pixels"):
            raise ValueError(f"input must be 'features' or 'pixels', got {input!r}")
        if dataset == "movi" and not movi_root:
            raise ValueError("dataset='movi' needs movi_root (folder of converted MOVi clips)")
        self.dataset, self.input = dataset, input
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.shapes_kwargs = {"image_size": 64, "num_frames": 4, "min_objects": 3, "max_objects": 5, **(shapes or {})}
        self.movi_root, self.movi_kwargs = movi_root, dict(movi_kwargs or {})
        self.movi_splits = {"train": "train", "val": "validation", "test": "validation", **(movi_splits or {})}
        self.backbone_args = {"name": backbone, "pretrained": pretrained, "layers": layers, "img_size": img_size,
                              "model_kwargs": model_kwargs}
        self.cache_features, self.cache_dir = cache_features, cache_dir
        self._backbone: Any = None
        self.splits: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ data
    def raw_split(self, split: str) -> Dataset:
        if self.dataset == "shapes":
            return ShapesWorld(self.sizes[split], seed=SPLIT_SEEDS[split], **self.shapes_kwargs)
        from lit_experiments.data.movi import MoviClips

        return MoviClips(self.movi_root, split=self.movi_splits[split], **self.movi_kwargs)

    @property
    def backbone(self) -> Any:
        if self._backbone is None:
            from lit_experiments.backbones import build_backbone

            self._backbone = build_backbone(**self.backbone_args)
        return self._backbone

    def feature_split(self, split: str) -> Dataset:
        raw = self.raw_split(split)
        if self.input == "pixels":
            return WithGrid(raw, None)
        bb = self.backbone
        size = self.backbone_args["img_size"]
        transform = Resize(size) if size else None
        if self.cache_features:
            # training needs only the features: the clips themselves are not re-rendered / re-read per step
            ds: Dataset = FeatureCache(Path(self.cache_dir), bb, raw, transform=transform, progress=None,
                                       include_items=split != "train")
        else:
            ds = OnTheFlyFeatures(bb, raw, transform)
        sample = raw[0]
        h, w = (sample["video"] if "video" in sample else sample["image"]).shape[-2:]
        if size:
            h = w = size
        return WithGrid(ds, tuple(bb.grid_size(h, w)))

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", tuple(self.sizes))
        for split in wanted:
            if split not in self.splits:
                self.splits[split] = self.feature_split(split)

    def train_dataloader(self):
        return self.train_loader(self.splits["train"], drop_last=len(self.splits["train"]) > self.batch_size)

    def val_dataloader(self):
        return self.eval_loader(self.splits["val"])

    def test_dataloader(self):
        return self.eval_loader(self.splits["test"])
