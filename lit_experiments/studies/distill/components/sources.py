"""Data sources of the distill study: the datamodule's ``source:`` part (``class_path``), one class per kind of data.

* :class:`DistillShapes` - embedded ShapesWorld: worlds ``seed``, ``seed + 1``, ``seed + 2`` for train / val /
  test, prompts naming categories or colours (``concept``), and optional clips (:class:`ClipSizes`) for the
  ``video`` stage and the clip test (F27).
* :class:`DistillCoco` - a COCO-style folder (:class:`~lit_experiments.data.coco.CocoInstances`; the category names
  are the prompts), validation optionally held out of train once (``val: {holdout: F}``, F47).

Both give the images of a split as a :class:`~.units.UnitSource`, the ids two splits are compared by (F47) and
the name of each split in that check; the datamodule caches them and refuses a validation that overlaps test.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.seeding import run_seed
from lit_experiments.core.specs import as_dataclass
from lit_experiments.core.splits import ensure_holdout
from lit_experiments.data.shapes import ShapesWorld

from .clips import Frames
from .units import SPLITS, UnitSource

#: ShapesWorld arguments under a :class:`DistillShapes` ``world``
DEFAULT_WORLD: dict[str, Any] = {"image_size": 64, "max_objects": 3, "size_range": (0.25, 0.45), "motion": False}


@dataclass
class ClipSizes:
    """ShapesWorld clips of :class:`DistillShapes`: ``n_train`` / ``n_val`` / ``n_test`` clips of ``num_frames``
    frames (world ``seed + 10 + split index``, with motion)."""

    n_train: int = 64
    n_val: int = 16
    n_test: int = 32
    num_frames: int = 4

    def __post_init__(self) -> None:
        sizes = asdict(self)
        if min(sizes.values()) < 1 or self.num_frames < 2:
            raise ConfigError(f"data.init_args.source.init_args.clips={sizes}; expected sizes >= 1 and num_frames "
                              ">= 2 (a clip needs two frames for its temporal terms)")


class DistillShapes:
    """Embedded ShapesWorld images (the demo's and the tests' data).

    Args:
        n_train / n_val / n_test: images per split (worlds ``seed``, ``seed + 1``, ``seed + 2``).
        seed: the data's seed: the worlds and the fixed validation / test units (F50: every seed and every A/B arm
            is scored on the same test units).
        world: ShapesWorld arguments over :data:`DEFAULT_WORLD` (``image_size``, ``min_objects``, ``colors``...).
        concept: what a prompt names: ``category`` (shape names) or ``color`` (a unit's targets are the objects of
            that colour; the demo's stand-in teacher learns colour prompts).
        clips: :class:`ClipSizes` (``null``: no clips); with clips the test has a second loader, scored apart (F27).
        allow_val_test_overlap: accept a validation split overlapping the test split (marked ``tuned_on_test``).
    """

    def __init__(self, n_train: int = 512, n_val: int = 64, n_test: int = 128, seed: int = 0,
                 world: dict[str, Any] | None = None, concept: str = "category", clips: ClipSizes | None = None,
                 allow_val_test_overlap: bool = False) -> None:
        if min(n_train, n_val, n_test) < 1:
            raise ConfigError(f"data.init_args.source: n_train={n_train}, n_val={n_val}, n_test={n_test}; "
                              "expected >= 1")
        if concept not in ("category", "color"):
            raise ConfigError(f"data.init_args.source.init_args.concept={concept!r}; expected 'category' or 'color'")
        self.sizes = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
        self.seed, self.concept = int(seed), concept
        self.world = {**DEFAULT_WORLD, **(world or {})}
        self.clips = as_dataclass(ClipSizes, clips, "data.init_args.source.init_args.clips")
        self.allow_val_test_overlap = bool(allow_val_test_overlap)

    def units(self, split: str) -> UnitSource:
        """The images of ``split`` (``train`` / ``val`` / ``test``) or the frames of its clips (``clips-<split>``)."""
        if split.startswith("clips-"):
            if self.clips is None:
                raise ConfigError("data.init_args.source.init_args.clips is not set: no clips to serve (the video "
                                  "stage and the clip test need clips: {n_train, n_val, n_test, num_frames})")
            return self._units(Frames(self.clip_world(split.removeprefix("clips-"))))
        return self._units(ShapesWorld(self.sizes[split], seed=self.seed + SPLITS.index(split), **self.world))

    def clip_world(self, split: str) -> ShapesWorld:
        world = {**self.world, "motion": True, "num_frames": self.clips.num_frames}
        return ShapesWorld(getattr(self.clips, f"n_{split}"), seed=self.seed + 10 + SPLITS.index(split), **world)

    def _units(self, ds: Any) -> UnitSource:
        world = ds.world if isinstance(ds, Frames) else ds
        if self.concept == "color":
            return UnitSource(ds, [world.COLOR_NAMES[c] for c in world.colors], key="color",
                              names=list(world.COLOR_NAMES))
        return UnitSource(ds, list(world.categories))

    def split_ids(self, split: str, units: UnitSource) -> list[str]:
        return [f"shapes-seed{units.dataset.seed}/{i}" for i in range(len(units))]

    def split_name(self, split: str) -> str:
        return f"ShapesWorld seed {self.seed + SPLITS.index(split)} ({self.sizes[split]} images)"


class DistillCoco:
    """A COCO-style instances folder; the category names are the prompts.

    Args:
        root: the folder.
        image_size: the image side the images are resized to.
        train / val / test: each split's ``CocoInstances`` arguments (``ann_file``, ``image_dir``). ``val`` may
            instead be ``{holdout: F, split_file: null, seed: null}``: a seeded fraction ``F`` of ``train``'s images
            held out as validation (:func:`~lit_experiments.core.splits.ensure_holdout`: drawn once into
            ``split_file``, default ``<ann_file>.holdout_<F>.json`` next to the training annotations, and read on
            every later run; ``seed`` default from ``seed_everything``); training then skips them (F47).
        seed: the seed of the fixed validation / test units.
        allow_val_test_overlap: accept a validation split that equals or overlaps the test split (every number of
            the run is then marked as tuned on test); default: refused (F47).
    """

    def __init__(self, root: str, image_size: int, train: dict[str, Any], val: dict[str, Any],
                 test: dict[str, Any], seed: int = 0, allow_val_test_overlap: bool = False) -> None:
        if not (root and image_size and train and val and test):
            raise ConfigError("data.init_args.source: DistillCoco needs root, image_size and train / val / test "
                              "({ann_file, image_dir} of each split)")
        self.root, self.image_size, self.seed = root, int(image_size), int(seed)
        self.coco = {"train": train, "val": val, "test": test}
        self.holdout = self._holdout_args(val)
        self.allow_val_test_overlap = bool(allow_val_test_overlap)
        self.clips = None
        self._holdout_ids: tuple[list[Any], list[str]] | None = None

    @staticmethod
    def _holdout_args(val: dict[str, Any]) -> dict[str, Any] | None:
        if "holdout" not in val:
            return None
        unknown = sorted(set(val) - {"holdout", "split_file", "seed"})
        if unknown:
            raise ConfigError(f"data.init_args.source.init_args.val: unknown keys {unknown} beside holdout; allowed: "
                              "holdout, split_file, seed")
        fraction = val["holdout"]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ConfigError(f"data.init_args.source.init_args.val.holdout={fraction!r}; expected the fraction of "
                              "train held out as validation, between 0 and 1")
        return {"fraction": float(fraction), "split_file": val.get("split_file"),
                "seed": run_seed(val.get("seed"), "distill/holdout")}

    def holdout_file(self) -> Path:
        """The JSON file of the held-out validation ids (``val.split_file`` or beside the train annotations)."""
        if self.holdout["split_file"]:
            return Path(self.holdout["split_file"])
        ann = Path(str(self.root)) / self.coco["train"]["ann_file"]
        return ann.with_name(f"{ann.stem}.holdout_{self.holdout['fraction']}.json")

    def holdout_ids(self) -> list[str]:
        """The held-out validation image ids of ``train`` (drawn once, then read from :meth:`holdout_file`)."""
        from lit_experiments.data.coco import CocoInstances

        if self._holdout_ids is None:
            pool = CocoInstances(str(self.root), check_files=False, **self.coco["train"]).all_image_ids
            self._holdout_ids = (pool, ensure_holdout(self.holdout_file(), pool, self.holdout["fraction"],
                                                      self.holdout["seed"]))
        return self._holdout_ids[1]

    def units(self, split: str) -> UnitSource:
        from lit_experiments.data.coco import CocoInstances

        if split.startswith("clips-"):
            raise ConfigError("data.init_args.source: clips come from ShapesWorld (DistillShapes) only")
        args, keep = dict(self.coco[split]), None
        if self.holdout and split in ("train", "val"):
            args, held = dict(self.coco["train"]), set(self.holdout_ids())
            keep = [i for i in self._holdout_ids[0] if (str(i) in held) == (split == "val")]
        ds = CocoInstances(str(self.root), image_size=self.image_size, image_ids=keep, **args)
        return UnitSource(ds, list(ds.categories))

    def split_ids(self, split: str, units: UnitSource) -> list[str]:
        return units.dataset.image_files()

    def split_name(self, split: str) -> str:
        args = self.coco["train" if split == "val" and self.holdout else split]
        where = f"{Path(str(self.root)) / args['ann_file']} with images {Path(str(self.root)) / args['image_dir']}"
        if split == "val" and self.holdout:
            return f"{self.holdout['fraction']} of {where} held out ({self.holdout_file()})"
        return where
