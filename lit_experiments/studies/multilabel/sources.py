"""The base splits of the multilabel study: images with multi-hot targets and one caption each.

* :class:`ShapesCaptioned`: ShapesWorld with a noisy side caption per image (:func:`~.standin.side_caption`, F52),
  label space ``categories`` or ``color_x_category``;
* :class:`FilesCaptioned`: a ``csv`` / ``jsonl`` multi-label file (``MultiLabelFiles``);
* :class:`CocoCaptioned`: COCO-style instances + captions (``CocoMultiLabel``).

Each has ``targets`` (N, C), ``captions``, ``label_names`` and ``fingerprint()``; items are ``image``, ``labels``,
``caption``, ``index``. Used by :mod:`.datamodule`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lit_experiments.core.errors import ConfigError
from lit_experiments.data.shapes import ShapesWorld

from .standin import DATA_KEYS, DEFAULT_DATA, side_caption

LABEL_SPACES = ("categories", "color_x_category")


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
