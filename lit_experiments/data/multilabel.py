"""Multi-label image sets from a CSV or JSONL file of ``image, labels, caption``.

Items: ``image`` uint8 (3,H,W), ``labels`` float32 multi-hot over ``self.classes``, ``caption`` str
("" when the file has none), ``index``. COCO captions + instances: use
:class:`lit_experiments.data.coco.CocoMultiLabel` (same keys).

Class list: ``classes=[...]``, else ``<root>/classes.txt`` (one name a line), else the sorted union of
the file's labels. A label outside a given class list raises :class:`LabelError` naming file and line.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import torch

from .base import FileDataset
from .errors import LabelError, image_tensor, read_image, require, resize_pair

LAYOUT = """\
<root>/
  labels.csv | labels.jsonl   CSV header "image,labels,caption" (labels joined by ';'), or JSON lines
                              {"image": "images/x.png", "labels": ["a", "b"] or "a;b", "caption": "..."}
  classes.txt                 optional: one class name a line (the label order)
  images/...                  image paths are relative to the label file's folder (<root> for the default)
"""


def _split_labels(value: object, sep: str) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value or "").split(sep) if v.strip()]


class MultiLabelFiles(FileDataset):
    """Reader of ``labels.csv`` / ``labels.jsonl`` multi-label sets (see ``LAYOUT``)."""

    def __init__(
        self,
        root: str | os.PathLike,
        file: str | None = None,
        classes: list[str] | None = None,
        sep: str = ";",
        image_size: int | None = None,
        on_bad_sample: str = "error",
        check_files: bool = True,
    ) -> None:
        root = require(root, "MultiLabelFiles root", LAYOUT, is_dir=True)
        if file is None:
            file = next((f for f in ("labels.csv", "labels.jsonl") if (root / f).is_file()), "labels.csv")
        self.file = require(root / file, "MultiLabelFiles label file", LAYOUT, is_dir=False)
        self._init_policy(on_bad_sample)
        self.root, self.sep, self.image_size = root, sep, image_size
        rows = self._read_rows()
        source = "classes argument"
        if classes is None and (root / "classes.txt").is_file():
            classes = [c.strip() for c in (root / "classes.txt").read_text().splitlines() if c.strip()]
            source = str(root / "classes.txt")
        if classes is None:
            classes, source = sorted({lab for _, labs, _, _ in rows for lab in labs}), "labels found in the file"
        self.classes = list(classes)
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples = []
        base = self.file.parent  # a label file in a subfolder (e.g. test/labels.csv) names its own images
        for line, labs, image, caption in rows:
            for lab in labs:
                if lab not in index:
                    raise LabelError(
                        f"{self.file}:{line}: label {lab!r} is not in the class list ({source}: {self.classes})"
                    )
            self.samples.append({"path": base / image, "labels": [index[lab] for lab in labs], "caption": caption,
                                 "line": line})
        self._scan(check_files)

    @property
    def categories(self) -> list[str]:
        """Alias of ``classes`` (the name ShapesWorld uses)."""
        return self.classes

    def settings(self) -> dict:
        return {"classes": self.classes, "image_size": self.image_size}

    def _read_rows(self) -> list[tuple[int, list[str], str, str]]:
        rows = []
        text = self.file.read_text()
        if self.file.suffix == ".jsonl":
            for line, raw in enumerate(text.splitlines(), start=1):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{self.file}:{line}: not valid JSON ({e})") from e
                if "image" not in rec:
                    raise ValueError(f"{self.file}:{line}: record has no 'image' field")
                rows.append((line, _split_labels(rec.get("labels", []), self.sep), rec["image"], rec.get("caption", "")))
            return rows
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "image" not in reader.fieldnames or "labels" not in reader.fieldnames:
            raise ValueError(f"{self.file}:1: header {reader.fieldnames} must contain 'image' and 'labels' (and 'caption')")
        for rec in reader:
            line = reader.line_num
            rows.append((line, _split_labels(rec["labels"], self.sep), rec["image"], rec.get("caption") or ""))
        return rows

    def _check(self, sample: dict) -> None:
        read_image(sample["path"])

    def _load(self, index: int) -> dict:
        s = self.samples[index]
        image, _ = resize_pair(image_tensor(read_image(s["path"])), None, self.image_size)
        labels = torch.zeros(len(self.classes), dtype=torch.float32)
        labels[s["labels"]] = 1.0
        return {"image": image, "labels": labels, "caption": s["caption"]}


def write_multilabel(root: str | os.PathLike, images: list[np.ndarray], labels: list[list[str]],
                     captions: list[str], classes: list[str]) -> None:
    """Write ``images/``, ``labels.csv``, ``labels.jsonl`` and ``classes.txt`` (both files list the same rows)."""
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    with open(root / "labels.csv", "w", newline="") as fcsv, open(root / "labels.jsonl", "w") as fjs:
        w = csv.writer(fcsv)
        w.writerow(["image", "labels", "caption"])
        for i, (im, labs, cap) in enumerate(zip(images, labels, captions)):
            name = f"images/{i:06d}.png"
            Image.fromarray(im).save(root / name)
            w.writerow([name, ";".join(labs), cap])
            fjs.write(json.dumps({"image": name, "labels": labs, "caption": cap}) + "\n")
