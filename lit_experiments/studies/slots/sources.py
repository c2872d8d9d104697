"""Where the slots study's clips come from: the datamodule's ``source`` part (``class_path`` in the YAML).

A source serves the three splits at once, each with the id of every item and a name for messages:
:meth:`resolve` ``(seed) -> {split: SourceSplit}``. The datamodule checks validation against test by those ids
(F47, ``core.splits.check_disjoint``) before anything is loaded.

* ``ShapesClipSplits``: ShapesWorld videos, one world per split (world seeds ``seed + 0 / 1 / 2`` when the
  datamodule pins ``seed``, else one per split from the run's ``seed_everything``, F50).
* ``MoviClipSplits``: converted MOVi clips (``lit_experiments.data.movi.MoviClips``), the folder each split reads
  (default train: ``train``, val: ``train``, test: ``validation``); when validation shares a folder with another
  split, a seeded ``val_fraction`` of it is held out, its ids written once (``core.splits.ensure_holdout``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.seeding import run_seed
from lit_experiments.core.splits import ensure_holdout
from lit_experiments.data.shapes import ShapesWorld

SPLITS = ("train", "val", "test")
SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}  # world seed of a split = pinned seed + offset
DEFAULT_MOVI_SPLITS = {"train": "train", "val": "train", "test": "validation"}
SHAPES_WORLD = {"image_size": 64, "num_frames": 4, "min_objects": 3, "max_objects": 5}


@dataclass
class SourceSplit:
    """One split of a source: the raw dataset, the id of every item by its ``index``, a name for messages."""

    dataset: Dataset
    ids: list[str]
    name: str


class ClipSplits:
    """Base of the sources: :meth:`resolve` the three splits (a new source, e.g. frames or COCO images served as
    1-frame clips, subclasses it and the datamodule takes it by ``class_path``)."""

    def resolve(self, seed: int | None) -> dict[str, SourceSplit]:
        """``{split: SourceSplit}`` for ``train`` / ``val`` / ``test``; ``seed`` pins the random choices (None: from
        the run's ``seed_everything``, ``core.seeding.run_seed``)."""
        raise NotImplementedError


class ShapesClipSplits(ClipSplits):
    """ShapesWorld videos: ``n_train`` / ``n_val`` / ``n_test`` clips from three worlds of different seeds.

    Args:
        n_train / n_val / n_test: clips per split.
        world: ShapesWorld arguments (``image_size``, ``num_frames``, ``min_objects``, ``max_objects``,
            ``size_range``, ...; defaults 64 px, 4 frames, 3-5 objects).
    """

    def __init__(self, n_train: int = 2000, n_val: int = 64, n_test: int = 128,
                 world: dict[str, Any] | None = None) -> None:
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.world = {**SHAPES_WORLD, **(world or {})}

    @staticmethod
    def world_seeds(seed: int | None) -> dict[str, int]:
        """The ShapesWorld seed of each split: ``seed + offset`` when pinned, else one per split from the run's
        ``seed_everything`` (F50)."""
        if seed is not None:
            return {s: int(seed) + SPLIT_OFFSETS[s] for s in SPLITS}
        return {s: run_seed(None, f"slots/world/{s}") for s in SPLITS}

    def resolve(self, seed: int | None) -> dict[str, SourceSplit]:
        seeds = self.world_seeds(seed)
        return {s: SourceSplit(ShapesWorld(self.sizes[s], seed=seeds[s], **self.world),
                               [f"shapes:{seeds[s]}:{i}" for i in range(self.sizes[s])],
                               f"ShapesWorld(seed={seeds[s]}, n={self.sizes[s]})") for s in SPLITS}


class MoviClipSplits(ClipSplits):
    """Converted MOVi clips under ``root``, one folder per split.

    Args:
        root: the folder of converted MOVi clips (``lit-exp data shapes --format movi`` writes the same format).
        folders: the folder each split reads (default train: ``train``, val: ``train``, test: ``validation``).
        val_fraction: when the validation folder is also the train (or test) folder, this seeded fraction of its
            clips is held out as validation and removed from the other split (the MOVi base config: 0.025 of
            ``train``). null with a shared folder: validation on the training folder is an error, on the test
            folder it is the test split and refused (F47).
        val_holdout_file: where the held-out ids are written once (default ``<root>/val_holdout_<folder>.json``).
        reader: ``MoviClips`` arguments (``max_objects``, ``categories``, ...).
    """

    def __init__(self, root: str | None = None, folders: dict[str, str] | None = None,
                 val_fraction: float | None = None, val_holdout_file: str | None = None,
                 reader: dict[str, Any] | None = None) -> None:
        if not root:
            raise ValueError("MoviClipSplits needs root (movi_root: the folder of converted MOVi clips)")
        unknown = sorted(set(folders or {}) - set(SPLITS))
        if unknown:
            raise ConfigError(f"MoviClipSplits folders: unknown split names {unknown}; expected keys among "
                              f"{list(SPLITS)}")
        if val_fraction is not None and not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction={val_fraction}: expected a number between 0 and 1 (or null)")
        self.root, self.folders = root, {**DEFAULT_MOVI_SPLITS, **(folders or {})}
        self.val_fraction, self.val_holdout_file = val_fraction, val_holdout_file
        self.reader = dict(reader or {})

    def resolve(self, seed: int | None) -> dict[str, SourceSplit]:
        from lit_experiments.data.movi import MoviClips

        folders = self.folders
        readers: dict[str, Any] = {}
        raw: dict[str, Any] = {}

        def reader(folder: str) -> Any:
            if folder not in readers:
                readers[folder] = MoviClips(self.root, split=folder, **self.reader)
            return readers[folder]

        names = {s: f"{self.root}/{folders[s]}" for s in SPLITS}
        val_folder = folders["val"]
        shared = [s for s in ("train", "test") if folders[s] == val_folder]
        if shared and self.val_fraction is not None:
            pool = reader(val_folder)
            path = Path(self.val_holdout_file or Path(self.root) / f"val_holdout_{val_folder}.json")
            held = ensure_holdout(path, pool.clip_ids, self.val_fraction, run_seed(seed, "slots/val_holdout"))
            written = json.loads(path.read_text()).get("fraction")
            if written is not None and abs(float(written) - self.val_fraction) > 1e-9:
                raise ConfigError(f"{path}: held out a fraction {written} of {names['val']}, the config asks for "
                                  f"val_fraction={self.val_fraction}; delete the file to draw again or set "
                                  "val_holdout_file to another path")
            raw["val"] = pool.subset(held)
            names["val"] = f"{names['val']} (held-out {self.val_fraction:g}, ids in {path})"
            for split in shared:
                raw[split] = pool.subset(held, exclude=True)
                names[split] = f"{names[split]} (without the held-out validation clips)"
        elif folders["train"] == val_folder:
            raise ConfigError(f"folders: validation reads the training folder {names['val']} and val_fraction is "
                              "null: validation would score training clips. Set val_fraction (a held-out part) or "
                              "folders.val to another folder")
        for split in SPLITS:
            if split not in raw:
                raw[split] = reader(folders[split])
        return {s: SourceSplit(raw[s], list(raw[s].clip_ids), names[s]) for s in SPLITS}
