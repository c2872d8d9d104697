"""The data sources of the multilabel study: the datamodule's ``source:`` part and the base splits it builds.

Source parts (``data.init_args.source``, a ``class_path``; a demo swaps the class, it never nulls fields):

* :class:`ShapesCaptionSource`: ShapesWorld images with a noisy side caption each (:class:`SideCaptions`, F52), a
  train pool (world seed ``seed + 2``) and a held-out test set (``seed + 3``), label space ``categories`` or
  ``color_x_category``;
* :class:`FileCaptionSource`: a ``csv`` / ``jsonl`` ``MultiLabelFiles`` folder (its pool and test label files);
* :class:`CocoCaptionSource`: COCO-style instances + captions, one annotation set for the pool, one for the test.

Each part's ``split(name, need_captions, image_size, pool)`` builds a base split (``pool`` or ``test``): a dataset
with ``targets`` (N, C), ``captions``, ``label_names``, ``fingerprint()``, ``unit_ids()`` and ``source()``; items are
``image``, ``labels``, ``caption``, ``index`` (:class:`ShapesCaptioned`, :class:`FilesCaptioned`,
:class:`CocoCaptioned`). A file source's ``image_size`` null is the frozen towers' input side (said once, by the
towers). Used by :mod:`.datamodule`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.seeding import run_seed
from lit_experiments.data.shapes import ShapesWorld

from .standin import DATA_KEYS, DEFAULT_DATA, side_caption

LABEL_SPACES = ("categories", "color_x_category")
SPLIT_SEED_OFFSETS = {"pool": 2, "test": 3}  # seed + 0 / + 1: the stand-in's training / probe worlds
BAD_SAMPLE_POLICIES = ("error", "skip")


def default_world() -> dict[str, Any]:
    """The ShapesWorld arguments of ``standin.DEFAULT_DATA`` (its world settings, without n / seed / captions)."""
    return {k: v for k, v in DEFAULT_DATA.items() if k not in DATA_KEYS}


class ShapesCaptioned(Dataset):
    """ShapesWorld images with multi-hot ``labels`` in a label space and a noisy side caption per image.

    Items: ``image`` uint8 (3,H,W), ``labels`` float32 (C,), ``caption`` str, ``index``. ``targets`` (N, C)
    and ``captions`` are computed at construction from the scenes (no rendering). Captions:
    :func:`~.standin.side_caption` with ``caption_seed`` (the run's caption seed: the world's images stay, their
    captions are drawn again per run seed), each object named with probability ``name_p``, an unnamed one
    mentioned by a colour-only phrase with ``vague_p`` (F52)."""

    def __init__(self, n: int, seed: int, world: dict[str, Any], label_space: str = "categories",
                 color_p: float = 0.0, material_p: float = 0.0, name_p: float = 0.5, vague_p: float = 0.5,
                 caption_seed: int = 0) -> None:
        if label_space not in LABEL_SPACES:
            raise ConfigError(f"data.init_args.label_space={label_space!r}; expected one of {LABEL_SPACES}")
        self.world = ShapesWorld(int(n), seed=int(seed), **world)
        self.label_space, self.color_p, self.material_p = label_space, float(color_p), float(material_p)
        self.name_p, self.vague_p = float(name_p), float(vague_p)
        # one caption stream per world: the caption seed mixed with the world seed (pool and test differ)
        self.caption_seed = int(np.random.SeedSequence([abs(int(caption_seed)), abs(int(seed))]).generate_state(1)[0])
        cats = list(self.world.categories)
        if label_space == "categories":
            self.label_names = cats
        else:
            self.label_names = [f"{c} {g}" for c in ShapesWorld.COLOR_NAMES for g in cats]
        targets = np.zeros((len(self.world), len(self.label_names)), dtype=np.float32)
        self.captions: list[str] = []
        for i in range(len(self.world)):
            scene = self.world.sample_scene(i)
            if label_space == "categories":
                targets[i, scene.categories] = 1.0
            else:
                targets[i, scene.colors * len(cats) + scene.categories] = 1.0
            self.captions.append(side_caption(self.world, i, self.caption_seed, self.name_p, self.vague_p,
                                              self.color_p, self.material_p))
        self.targets = torch.from_numpy(targets)

    def fingerprint(self) -> str:
        """The world's fingerprint: the images (the captions are fingerprinted by :class:`CaptionTokens`)."""
        return self.world.fingerprint()

    def unit_ids(self) -> list[str]:
        """One id per image (world fingerprint and index): what a validation / test overlap check compares."""
        fp = self.world.fingerprint()
        return [f"{fp}:{i}" for i in range(len(self.world))]

    def source(self) -> str:
        return f"ShapesWorld seed {self.world.seed} ({self.world.fingerprint()})"

    def __len__(self) -> int:
        return len(self.world)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        item = self.world[i]
        return {"image": item["image"], "labels": self.targets[i], "caption": self.captions[i], "index": torch.tensor(i)}


class FilesCaptioned(Dataset):
    """A ``csv`` / ``jsonl`` multi-label file (:class:`~lit_experiments.data.multilabel.MultiLabelFiles`) as a base
    split: ``targets`` and ``captions`` from its records. With ``need_captions`` a record without a caption is a
    bad sample: an error naming file and line, or a counted skip (``skipped``) under ``on_bad_sample: skip``."""

    def __init__(self, root: str, file: str | None, classes: list[str] | None, image_size: int,
                 on_bad_sample: str, need_captions: bool) -> None:
        from lit_experiments.data.multilabel import MultiLabelFiles

        self.reader = MultiLabelFiles(root, file=file, classes=classes, image_size=image_size,
                                      on_bad_sample=on_bad_sample)
        if need_captions and any(not str(s["caption"]).strip() for s in self.reader.samples):
            good = []
            for s in self.reader.samples:
                if str(s["caption"]).strip():
                    good.append(s)
                    continue
                where = f"{self.reader.file}:{s['line']}"
                self.reader.bad.bad(s["path"], ValueError(f"{where}: image {s['path'].name} has no caption and "
                                                          "use_text is true (give one, or use_text: false)"))
            total = len(self.reader.samples)
            self.reader.samples = good
            self.reader.bad.report(total)
        if not self.reader.samples:
            raise ConfigError(f"{self.reader.file}: no usable sample")
        self.label_names = list(self.reader.classes)
        targets = torch.zeros(len(self.reader.samples), len(self.label_names))
        for i, s in enumerate(self.reader.samples):
            targets[i, s["labels"]] = 1.0
        self.targets = targets
        self.captions = [str(s["caption"]) for s in self.reader.samples]

    @property
    def skipped(self) -> int:
        return self.reader.skipped

    def fingerprint(self) -> str:
        return self.reader.fingerprint()

    def unit_ids(self) -> list[str]:
        """The resolved image paths (one per item)."""
        return [str(Path(s["path"]).resolve()) for s in self.reader.samples]

    def source(self) -> str:
        return str(getattr(self.reader, "ann_path", None) or self.reader.file)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        return {"image": self.reader[i]["image"], "labels": self.targets[i], "caption": self.captions[i],
                "index": torch.tensor(i)}


class CocoCaptioned(FilesCaptioned):
    """A COCO instances + captions split (:class:`~lit_experiments.data.coco.CocoMultiLabel`) as a base split;
    an image without a caption is a bad sample when captions are needed (error naming the image, or a skip)."""

    def __init__(self, root: str, coco: dict[str, Any], image_size: int, on_bad_sample: str,
                 need_captions: bool) -> None:
        from lit_experiments.data.coco import CocoMultiLabel

        self.reader = CocoMultiLabel(root, image_size=image_size, on_bad_sample=on_bad_sample, **coco)
        keep, self.skipped_captions = [], 0
        for s in self.reader.samples:
            if need_captions and not self.reader.captions.get(s["image"]["id"], "").strip():
                if on_bad_sample == "error":
                    raise ConfigError(f"{self.reader.ann_path}: image {s['image'].get('file_name')} (id "
                                      f"{s['image']['id']}) has no caption and use_text is true (add it to the "
                                      "captions file, set use_text: false, or on_bad_sample: skip)")
                self.skipped_captions += 1
                continue
            keep.append(s)
        if self.skipped_captions:
            print(f"{self.reader.ann_path}: skipped {self.skipped_captions} image(s) without a caption")
        self.reader.samples = keep
        if not keep:
            raise ConfigError(f"{self.reader.ann_path}: no usable image")
        self.label_names = list(self.reader.categories)
        index = self.reader._cat_index
        self.targets = torch.zeros(len(keep), len(self.label_names))
        for i, s in enumerate(keep):
            for a in s["anns"]:
                self.targets[i, index[a["category_id"]]] = 1.0
        self.captions = [self.reader.captions.get(s["image"]["id"], "") for s in keep]

    @property
    def skipped(self) -> int:
        return self.reader.skipped + self.skipped_captions

    def source(self) -> str:
        return f"{self.reader.ann_path} (images {self.reader.image_dir})"


# ------------------------------------------------------------------------------------------------ source parts
@dataclass
class SideCaptions:
    """The side caption of a ShapesWorld image (F52: not a label oracle, :func:`~.standin.side_caption`).

    ``name_p``: probability that an object is named by its category; ``vague_p``: that an unnamed object is
    mentioned by a colour-only phrase ("a red shape"); ``color_p`` / ``material_p``: that a named object's colour /
    material word is kept (null: the stand-in's, 0.0); ``seed``: the captions' seed (null: the run's
    ``"captions"`` seed, F50)."""

    name_p: float = 0.5
    vague_p: float = 0.5
    color_p: float | None = None
    material_p: float | None = None
    seed: int | None = None


class MultilabelSource:
    """A source part: builds the ``pool`` and ``test`` base splits (see the module docstring)."""

    #: the label space of the targets (``categories`` unless the source says otherwise)
    label_space = "categories"

    def split(self, name: str, need_captions: bool, image_size: int | None,
              pool: Dataset | None = None) -> ShapesCaptioned | FilesCaptioned:
        """The base split ``name`` (``pool`` or ``test``); ``pool`` (the built pool) gives the test its class list;
        ``image_size`` is the frozen towers' input side (None before they are known)."""
        raise NotImplementedError


class ShapesCaptionSource(MultilabelSource):
    """ShapesWorld images with a noisy side caption each: the embedded default (no file is read).

    Args:
        n_pool / n_test: images in the train pool (folds / train + val) and in the held-out test set.
        seed: data seed; the pool's world uses ``seed + 2``, the test world ``seed + 3`` (the images are the data
            set: fixed whatever the run's seed).
        world: ShapesWorld arguments over the stand-in's default world (``standin.DEFAULT_DATA``).
        label_space: ``categories`` or ``color_x_category`` (8 colours x the world's categories).
        captions: :class:`SideCaptions` (F52).
    """

    def __init__(self, n_pool: int = 1024, n_test: int = 512, seed: int = 0, world: dict[str, Any] | None = None,
                 label_space: str = "categories", captions: SideCaptions | None = None) -> None:
        if n_pool < 2 or n_test < 1:
            raise ConfigError(f"data.init_args.source: n_pool={n_pool}, n_test={n_test}; expected n_pool >= 2, "
                              "n_test >= 1")
        if label_space not in LABEL_SPACES:
            raise ConfigError(f"data.init_args.source.label_space={label_space!r}; expected one of {LABEL_SPACES}")
        self.n_pool, self.n_test, self.seed, self.label_space = int(n_pool), int(n_test), int(seed), label_space
        self.world = {**default_world(), **(world or {})}
        unknown = sorted(set(self.world) & {"n", "seed", "num_frames"})
        if unknown:
            raise ConfigError(f"data.init_args.source.world sets {unknown}: use n_pool / n_test / seed (images only)")
        c = captions or SideCaptions()
        self.color_p = float(DEFAULT_DATA["caption_color_p"] if c.color_p is None else c.color_p)
        self.material_p = float(DEFAULT_DATA["caption_material_p"] if c.material_p is None else c.material_p)
        for key, value in (("name_p", c.name_p), ("vague_p", c.vague_p), ("color_p", self.color_p),
                           ("material_p", self.material_p)):
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"data.init_args.source.captions.{key}={value}; expected a probability in [0, 1]")
        self.name_p, self.vague_p = float(c.name_p), float(c.vague_p)
        self.caption_seed = run_seed(c.seed, "captions")

    def split(self, name: str, need_captions: bool, image_size: int | None,
              pool: Dataset | None = None) -> ShapesCaptioned:
        n = self.n_pool if name == "pool" else self.n_test
        return ShapesCaptioned(n, self.seed + SPLIT_SEED_OFFSETS[name], self.world, self.label_space, self.color_p,
                               self.material_p, self.name_p, self.vague_p, self.caption_seed)


def _image_size(owner: str, image_size: int | None, towers_size: int | None) -> int:
    size = image_size or towers_size
    if not size:
        raise ConfigError(f"data.init_args.source ({owner}): no image side: give image_size or the frozen towers "
                          "(their input side is the default; the cache stacks images of one size)")
    return int(size)


def _check_policy(owner: str, on_bad_sample: str) -> None:
    if on_bad_sample not in BAD_SAMPLE_POLICIES:
        raise ConfigError(f"data.init_args.source ({owner}): on_bad_sample={on_bad_sample!r}; expected 'error' or "
                          "'skip'")


class FileCaptionSource(MultilabelSource):
    """A ``csv`` / ``jsonl`` multi-label folder (:class:`~lit_experiments.data.multilabel.MultiLabelFiles`): its
    own class list, so the label space is ``categories``.

    Args:
        root: the folder; ``file`` / ``test_file``: the pool's and the held-out set's label files (relative to
            ``root``; ``file`` null: ``labels.csv`` or ``labels.jsonl``, whichever exists).
        classes: the class list (default: ``classes.txt`` or the labels of the pool file); the test file reads the
            pool's list.
        image_size: the side images are resized to (null: the frozen towers' input side).
        on_bad_sample: ``error`` or ``skip`` (counted): an unreadable image, or a missing caption when the text is
            served.
    """

    def __init__(self, root: str, test_file: str | None = None, file: str | None = None,
                 classes: list[str] | None = None, image_size: int | None = None,
                 on_bad_sample: str = "error") -> None:
        if not root or not test_file:
            raise ConfigError("data.init_args.source (FileCaptionSource) needs root and test_file (a MultiLabelFiles "
                              "folder and its held-out label file)")
        _check_policy("FileCaptionSource", on_bad_sample)
        self.root, self.test_file, self.file, self.classes = str(root), str(test_file), file, classes
        self.image_size, self.on_bad_sample = image_size, on_bad_sample

    def split(self, name: str, need_captions: bool, image_size: int | None,
              pool: Dataset | None = None) -> FilesCaptioned:
        classes = self.classes if pool is None else pool.label_names
        size = _image_size("FileCaptionSource", self.image_size, image_size)
        return FilesCaptioned(self.root, self.file if name == "pool" else self.test_file, classes, size,
                              self.on_bad_sample, need_captions)


class CocoCaptionSource(MultilabelSource):
    """COCO-style instances + captions (:class:`~lit_experiments.data.coco.CocoMultiLabel`): the category names as
    labels, the first caption of each image as its text.

    Args:
        root: the COCO folder; ``pool`` / ``test``: ``{ann_file, image_dir, captions_file}`` (relative to ``root``)
            of the pool and of the held-out set.
        image_size: the side images are resized to (null: the frozen towers' input side).
        on_bad_sample: ``error`` or ``skip`` (counted): an unreadable image, or an image without a caption when the
            text is served.
    """

    def __init__(self, root: str, pool: dict[str, Any], test: dict[str, Any], image_size: int | None = None,
                 on_bad_sample: str = "error") -> None:
        for name, split in (("pool", pool), ("test", test)):
            if not root or not isinstance(split, dict) or not split.get("ann_file") or not split.get("image_dir"):
                raise ConfigError(f"data.init_args.source (CocoCaptionSource) needs root and {name}: {{ann_file, "
                                  f"image_dir, captions_file}} of the pool and of the held-out set; got {split!r}")
        _check_policy("CocoCaptionSource", on_bad_sample)
        self.root, self.coco = str(root), {"pool": dict(pool), "test": dict(test)}
        self.image_size, self.on_bad_sample = image_size, on_bad_sample

    def split(self, name: str, need_captions: bool, image_size: int | None,
              pool: Dataset | None = None) -> CocoCaptioned:
        size = _image_size("CocoCaptionSource", self.image_size, image_size)
        return CocoCaptioned(self.root, self.coco[name], size, self.on_bad_sample, need_captions)
