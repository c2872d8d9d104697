"""COCO-style instances: images + annotation JSON, polygon and RLE masks decoded with pycocotools.

``CocoInstances(mode="image")`` items carry the ShapesWorld keys the format holds: ``image`` uint8
(3,H,W); ``instances`` int64 (H,W) (annotation ``k`` of the image -> id ``k+1``; where masks overlap the
smaller object stays visible); padded ``category`` (index into ``self.categories``, the annotation
file's categories sorted by id), ``color`` / ``material`` / ``size`` (from an optional per-annotation
``attributes`` dict, as written by ``lit-exp data shapes``; else -1 / 0), ``num_objects``, ``labels``
multi-hot, ``caption`` (first caption of an optional captions file, else built from category names).

``image_ids`` keeps only the images of those ids (in the file's order; an id not in the file is an error): a
held-out part of a split (validation drawn from train2017) and the rest. :meth:`CocoInstances.image_files` names
every kept image by its file (image folder + ``file_name``), the id two splits are compared by (F47).

``mode="pairs"`` yields one item per (image, category present) - plus, with ``negatives > 0``, that many
absent categories per image - with ``mask`` bool (H,W) (union of the category's instances),
``prompt`` (the category name), ``category``, ``positive`` and ``image_id``: the unit of promptable
segmentation.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from .base import FileDataset
from .errors import LabelError, image_tensor, read_image, require, resize_pair
from .shapes import COLORS, MATERIALS, make_caption

LAYOUT = """\
<root>/
  images/                   the image files named by "file_name" (image_dir=...)
  annotations/instances.json  {"images": [{id, file_name, height, width}], "categories": [{id, name}],
                              "annotations": [{id, image_id, category_id, segmentation (polygons or RLE),
                              iscrowd, optional attributes {color, material, size}}]}   (ann_file=...)
  annotations/captions.json   optional {"annotations": [{image_id, caption}]}   (captions_file=...)
"""


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """Polygon list, uncompressed RLE or compressed RLE -> uint8 mask (H, W)."""
    if isinstance(seg, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width)) if seg else None
        return mask_utils.decode(rle) if rle is not None else np.zeros((height, width), np.uint8)
    if isinstance(seg.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = dict(seg)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode()
    return mask_utils.decode(rle)


def encode_mask(mask: np.ndarray) -> dict:
    """uint8/bool (H, W) -> compressed RLE with a str ``counts`` (JSON serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


class CocoInstances(FileDataset):
    """Reader of COCO-style instance annotations (see module docstring and ``LAYOUT``)."""

    def __init__(
        self,
        root: str | os.PathLike,
        ann_file: str = "annotations/instances.json",
        image_dir: str = "images",
        captions_file: str | None = "annotations/captions.json",
        mode: str = "image",
        negatives: int = 0,
        max_objects: int | None = None,
        image_size: int | None = None,
        on_bad_sample: str = "error",
        check_files: bool = True,
        seed: int = 0,
        image_ids: Sequence[int | str] | None = None,
    ) -> None:
        if mode not in ("image", "pairs"):
            raise ValueError(f"CocoInstances: mode={mode!r}; expected 'image' or 'pairs'")
        root = require(root, "CocoInstances root", LAYOUT, is_dir=True)
        self.ann_path = require(root / ann_file, "CocoInstances annotation file", LAYOUT, is_dir=False)
        self.image_dir = require(root / image_dir, "CocoInstances image folder", LAYOUT, is_dir=True)
        self._init_policy(on_bad_sample)
        self.mode, self.negatives, self.image_size, self.seed = mode, int(negatives), image_size, seed
        data = json.loads(self.ann_path.read_text())
        cats = sorted(data.get("categories", []), key=lambda c: c["id"])
        self.categories = [c["name"] for c in cats]
        self._cat_index = {c["id"]: i for i, c in enumerate(cats)}
        self.colors = list(COLORS)
        anns: dict[int, list[dict]] = defaultdict(list)
        for k, a in enumerate(data.get("annotations", [])):
            if a.get("category_id") not in self._cat_index:
                raise LabelError(
                    f"{self.ann_path}: annotation #{k} (id {a.get('id')}) has category_id {a.get('category_id')!r}, "
                    f"not in the category list {sorted(self._cat_index)}"
                )
            anns[a["image_id"]].append(a)
        self.captions: dict[int, str] = {}
        cap_path = root / captions_file if captions_file else None
        if cap_path is not None and cap_path.is_file():
            for a in json.loads(cap_path.read_text()).get("annotations", []):
                self.captions.setdefault(a["image_id"], a["caption"])
        images = sorted(data.get("images", []), key=lambda im: im["id"])
        self.all_image_ids = [im["id"] for im in images]
        if image_ids is not None:
            wanted = {str(i) for i in image_ids}
            missing = sorted(wanted - {str(im["id"]) for im in images})
            if missing:
                raise LabelError(f"{self.ann_path}: image_ids name {len(missing)} id(s) not in the file's images list "
                                 f"(e.g. {missing[:3]})")
            images = [im for im in images if str(im["id"]) in wanted]
        unknown = sorted(set(anns) - set(self.all_image_ids))
        if unknown:
            k, a = next((k, a) for k, a in enumerate(data["annotations"]) if a["image_id"] == unknown[0])
            raise LabelError(f"{self.ann_path}: annotation #{k} (id {a.get('id')}) names image_id {unknown[0]!r}, "
                             f"which is not in the file's images list ({len(unknown)} image id(s) unknown)")
        self.samples = [{"path": self.image_dir / im["file_name"], "image": im, "anns": anns.get(im["id"], [])}
                        for im in images]
        self._scan(check_files)
        self.max_objects = max_objects or max([len(a) for a in anns.values()] + [1])  # over the whole file
        self.pairs = self._make_pairs() if mode == "pairs" else []

    def image_files(self) -> list[str]:
        """Every kept image as its resolved file path (the id two splits are compared by)."""
        return [str(Path(s["path"]).resolve()) for s in self.samples]

    def settings(self) -> dict:
        return {"mode": self.mode, "negatives": self.negatives, "image_size": self.image_size,
                "max_objects": self.max_objects, "ann": str(self.ann_path)}

    def _check(self, sample: dict) -> None:
        read_image(sample["path"])

    def _make_pairs(self) -> list[tuple[int, int, bool]]:
        pairs = []
        for i, s in enumerate(self.samples):
            present = sorted({self._cat_index[a["category_id"]] for a in s["anns"]})
            pairs += [(i, c, True) for c in present]
            absent = [c for c in range(len(self.categories)) if c not in present]
            if self.negatives and absent:
                rng = np.random.default_rng([self.seed, i])
                pairs += [(i, int(c), False) for c in rng.choice(absent, min(self.negatives, len(absent)), replace=False)]
        return pairs

    def __len__(self) -> int:
        return len(self.pairs) if self.mode == "pairs" else len(self.samples)

    def masks(self, index: int) -> tuple[np.ndarray, list[dict]]:
        """Decoded instance masks (n, H, W) uint8 of image ``index`` and its annotations."""
        s = self.samples[index]
        h, w = s["image"]["height"], s["image"]["width"]
        ms = [decode_segmentation(a["segmentation"], h, w) for a in s["anns"]]
        return (np.stack(ms) if ms else np.zeros((0, h, w), np.uint8)), s["anns"]

    def _load(self, index: int) -> dict:
        if self.mode == "pairs":
            return self._load_pair(index)
        s = self.samples[index]
        img = image_tensor(read_image(s["path"]))
        masks, anns = self.masks(index)
        inst = np.zeros(masks.shape[1:], np.int64)
        for k in np.argsort([-int(m.sum()) for m in masks], kind="stable"):  # large first, small on top
            inst[masks[k] > 0] = k + 1
        image, inst_t = resize_pair(img, torch.from_numpy(inst), self.image_size)
        return {"image": image, "instances": inst_t, **self._object_arrays(anns), "caption": self._caption(s, anns)}

    def _object_arrays(self, anns: list[dict]) -> dict[str, torch.Tensor]:
        k, n = self.max_objects, len(anns)
        if n > k:
            raise ValueError(f"{self.ann_path}: an image has {n} annotations > max_objects={k}")
        cat, col, mat = (torch.full((k,), -1, dtype=torch.int64) for _ in range(3))
        size = torch.zeros(k, dtype=torch.float32)
        for j, a in enumerate(anns):
            cat[j] = self._cat_index[a["category_id"]]
            attrs = a.get("attributes", {})
            if attrs.get("color") in self.colors:
                col[j] = self.colors.index(attrs["color"])
            if attrs.get("material") in MATERIALS:
                mat[j] = MATERIALS.index(attrs["material"])
            size[j] = float(attrs.get("size", 0.0))
        labels = torch.zeros(len(self.categories), dtype=torch.float32)
        labels[cat[:n]] = 1.0
        return {"category": cat, "color": col, "material": mat, "size": size,
                "num_objects": torch.tensor(n, dtype=torch.int64), "labels": labels}

    def _caption(self, sample: dict, anns: list[dict]) -> str:
        cap = self.captions.get(sample["image"]["id"])
        if cap is not None:
            return cap
        return make_caption([(None, None, self.categories[self._cat_index[a["category_id"]]]) for a in anns])

    def _load_pair(self, index: int) -> dict:
        i, c, positive = self.pairs[index]
        s = self.samples[i]
        img = image_tensor(read_image(s["path"]))
        masks, anns = self.masks(i)
        sel = [k for k, a in enumerate(anns) if self._cat_index[a["category_id"]] == c]
        union = (masks[sel].max(0) if sel else np.zeros(masks.shape[1:], np.uint8)).astype(bool)
        image, mask = resize_pair(img, torch.from_numpy(union), self.image_size)
        return {"image": image, "mask": mask, "prompt": self.categories[c], "category": torch.tensor(c),
                "positive": torch.tensor(positive), "image_id": torch.tensor(int(s["image"]["id"]))}

    def __getitem__(self, index: int) -> dict:
        if self.mode == "pairs":
            return self._load_pair(int(index))
        return super().__getitem__(index)


class CocoMultiLabel(CocoInstances):
    """COCO captions + instances as a multi-label set: items ``image``, ``labels``, ``caption`` (no masks decoded)."""

    def _load(self, index: int) -> dict:
        s = self.samples[index]
        image, _ = resize_pair(image_tensor(read_image(s["path"])), None, self.image_size)
        labels = torch.zeros(len(self.categories), dtype=torch.float32)
        for a in s["anns"]:
            labels[self._cat_index[a["category_id"]]] = 1.0
        return {"image": image, "labels": labels, "caption": self._caption(s, s["anns"])}


def write_coco(root: str | os.PathLike, images: list[np.ndarray], objects: list[list[dict]],
               categories: list[str], captions: list[str] | None = None) -> None:
    """Write images (H,W,3) uint8 and per-image objects ``{"mask", "category", "attributes"}`` in COCO layout.

    Masks are stored as compressed RLE (exact); ``attributes`` go into each annotation as an extension.
    """
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    imgs, anns, caps = [], [], []
    for i, (im, objs) in enumerate(zip(images, objects)):
        name = f"{i:06d}.png"
        Image.fromarray(im).save(root / "images" / name)
        imgs.append({"id": i + 1, "file_name": name, "height": int(im.shape[0]), "width": int(im.shape[1])})
        for o in objs:
            m = o["mask"].astype(np.uint8)
            ys, xs = np.nonzero(m)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)] if len(xs) else [0, 0, 0, 0]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": categories.index(o["category"]) + 1,
                         "segmentation": encode_mask(m), "area": int(m.sum()), "bbox": bbox, "iscrowd": 0,
                         "attributes": o.get("attributes", {})})
        if captions is not None:
            caps.append({"id": i + 1, "image_id": i + 1, "caption": captions[i]})
    cats = [{"id": k + 1, "name": c, "supercategory": "shape"} for k, c in enumerate(categories)]
    (root / "annotations" / "instances.json").write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    if captions is not None:
        (root / "annotations" / "captions.json").write_text(json.dumps({"images": imgs, "annotations": caps}))
