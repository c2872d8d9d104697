"""SlotsDataModule: ShapesWorld videos (default) or MOVi clips, with frozen features cached on disk.

Batch keys: ``video`` uint8 (B,T,3,H,W), ``instances`` int64 (B,T,H,W), per-object ``material`` /
``category`` / ``num_objects``, ``index``, and for the feature path ``features`` float (B,T,N,C) plus
``feature_grid`` int64 (B,2). ``backbone`` is a ``lit_experiments.backbones`` name (timm / open_clip,
built with ``pretrained``) or ``colour_edge`` (the study's fixed hand-designed encoder for CPU demos).

Splits that cannot leak (F47): validation and test are checked disjoint by clip id
(``core.splits.check_disjoint``) before anything is loaded, naming both; the record is ``self.split_info``
(results.json ``splits``). MOVi's validation is a seeded held-out part of a folder (``val_fraction``; the base
config holds out 2.5 % of ``train``), its ids written once to ``<movi_root>/val_holdout_<folder>.json`` by
``core.splits.ensure_holdout``; the test split is the official ``validation`` folder. A validation equal to or overlapping the test split is refused
unless ``allow_val_test_overlap: true`` (then every number of the run is marked as tuned on test).

Seeds (F50): the ShapesWorld worlds of the three splits, the training order and the held-out draw come from the
run's ``seed_everything`` through ``core.seeding.run_seed`` unless ``seed`` pins them, so a sweep over seeds
varies the data too.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.seeding import run_seed
from lit_experiments.core.splits import check_disjoint, ensure_holdout
from lit_experiments.core.study import StudyDataModule
from lit_experiments.data.cache import FeatureCache
from lit_experiments.data.shapes import ShapesWorld

from .encoders import ColourEdgeEncoder

SPLITS = ("train", "val", "test")
SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}  # world seed of a split = pinned seed + offset
DEFAULT_MOVI_SPLITS = {"train": "train", "val": "train", "test": "validation"}


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
        movi_root / movi_splits / movi_kwargs: MOVi location, the folder each split reads (default train:
            ``train``, val: ``train``, test: ``validation``) and reader arguments.
        val_fraction: when the validation folder is also the train (or test) folder, this seeded fraction of its
            clips is held out as validation and removed from the other split (MOVi only; the MOVi base config:
            0.025 of ``train``). null with a shared folder: validation on the training folder is an error, on
            the test folder it is the test split and refused (F47).
        val_holdout_file: where the held-out ids are written once (default ``<movi_root>/val_holdout_<folder>.json``).
        allow_val_test_overlap: accept a validation split that equals or overlaps the test split (F47); the run's
            results.json then says ``tuned_on_test: true``.
        seed: pins the data's random choices (ShapesWorld worlds: seed, seed + 1, seed + 2 for train / val /
            test; the training order; the held-out draw). None: derived from ``seed_everything`` (F50).
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
        val_fraction: float | None = None,
        val_holdout_file: str | None = None,
        allow_val_test_overlap: bool = False,
        seed: int | None = None,
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
        unknown = sorted(set(movi_splits or {}) - set(SPLITS))
        if unknown:
            raise ConfigError(f"movi_splits: unknown split names {unknown}; expected keys among {list(SPLITS)}")
        self.movi_splits = {**DEFAULT_MOVI_SPLITS, **(movi_splits or {})}
        if val_fraction is not None and not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction={val_fraction}: expected a number between 0 and 1 (or null)")
        self.val_fraction, self.val_holdout_file = val_fraction, val_holdout_file
        self.allow_val_test_overlap, self.seed = bool(allow_val_test_overlap), seed
        self._raw: dict[str, Dataset] = {}
        self._ids: dict[str, list[str]] = {}
        self._order: torch.Generator | None = None
        self.backbone_args = {"name": backbone, "pretrained": pretrained, "layers": layers, "img_size": img_size,
                              "model_kwargs": model_kwargs}
        self.cache_features, self.cache_dir = cache_features, cache_dir
        self._backbone: Any = None
        self.splits: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ data
    def world_seeds(self) -> dict[str, int]:
        """The ShapesWorld seed of each split: ``seed + offset`` when pinned, else one per split from the run's
        ``seed_everything`` (F50)."""
        if self.seed is not None:
            return {s: int(self.seed) + SPLIT_OFFSETS[s] for s in SPLITS}
        return {s: run_seed(None, f"slots/world/{s}") for s in SPLITS}

    def resolve_splits(self) -> dict[str, Dataset]:
        """The raw train / val / test datasets with their item ids; validation vs test checked disjoint (F47)."""
        if self._raw:
            return self._raw
        names: dict[str, str] = {}
        if self.dataset == "shapes":
            seeds = self.world_seeds()
            for split in SPLITS:
                self._raw[split] = ShapesWorld(self.sizes[split], seed=seeds[split], **self.shapes_kwargs)
                self._ids[split] = [f"shapes:{seeds[split]}:{i}" for i in range(self.sizes[split])]
                names[split] = f"ShapesWorld(seed={seeds[split]}, n={self.sizes[split]})"
        else:
            names = self._resolve_movi()
        self.split_info = check_disjoint(self._ids["val"], self._ids["test"], val_name=names["val"],
                                         test_name=names["test"], allow_overlap=self.allow_val_test_overlap,
                                         what="clip ids")
        return self._raw

    def _resolve_movi(self) -> dict[str, str]:
        from lit_experiments.data.movi import MoviClips

        folders = self.movi_splits
        readers: dict[str, Any] = {}

        def reader(folder: str) -> Any:
            if folder not in readers:
                readers[folder] = MoviClips(self.movi_root, split=folder, **self.movi_kwargs)
            return readers[folder]

        names = {s: f"{self.movi_root}/{folders[s]}" for s in SPLITS}
        val_folder = folders["val"]
        shared = [s for s in ("train", "test") if folders[s] == val_folder]
        if shared and self.val_fraction is not None:
            pool = reader(val_folder)
            path = Path(self.val_holdout_file or Path(self.movi_root) / f"val_holdout_{val_folder}.json")
            held = ensure_holdout(path, pool.clip_ids, self.val_fraction, run_seed(self.seed, "slots/val_holdout"))
            written = json.loads(path.read_text()).get("fraction")
            if written is not None and abs(float(written) - self.val_fraction) > 1e-9:
                raise ConfigError(f"{path}: held out a fraction {written} of {names['val']}, the config asks for "
                                  f"val_fraction={self.val_fraction}; delete the file to draw again or set "
                                  "val_holdout_file to another path")
            self._raw["val"] = pool.subset(held)
            names["val"] = f"{names['val']} (held-out {self.val_fraction:g}, ids in {path})"
            for split in shared:
                self._raw[split] = pool.subset(held, exclude=True)
                names[split] = f"{names[split]} (without the held-out validation clips)"
        elif folders["train"] == val_folder:
            raise ConfigError(f"movi_splits: validation reads the training folder {names['val']} and val_fraction is "
                              "null: validation would score training clips. Set val_fraction (a held-out part) or "
                              "movi_splits.val to another folder")
        for split in SPLITS:
            if split not in self._raw:
                self._raw[split] = reader(folders[split])
            self._ids[split] = list(self._raw[split].clip_ids)
        return names

    def raw_split(self, split: str) -> Dataset:
        return self.resolve_splits()[split]

    def item_ids(self, split: str) -> list[str]:
        """The id of every item of ``split`` by its ``index`` (ShapesWorld ``shapes:<seed>:<i>``, MOVi clip ids)."""
        self.resolve_splits()
        return self._ids[split]

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
        self.resolve_splits()  # every split's ids, and the F47 check, before any feature is computed
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", tuple(self.sizes))
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
