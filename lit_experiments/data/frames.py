"""Labelled video frames: a folder of images + ``labels.csv`` (frame, label), optional external queries.

``FrameFolder(root)`` items: ``image`` uint8 (3,H,W), ``label`` int64 (class index), ``frame`` str (file
name), ``video`` str (the video the frame belongs to), ``index``. ``FrameFolder(root, split="queries")`` reads
the external query images of ``<root>/queries/`` (labels from ``queries/labels.csv`` when present, else -1).

Videos (LESSONS F47): every frame belongs to one video, so temporal positives never cross a video boundary and a
split can hold out whole videos. The video id comes from ``<root>/videos.csv`` (header ``frame,video``) when it
exists, else from the file name: the part of the stem before its last ``_`` (``000012_003.png`` -> ``000012``).
A frame without one (no ``_`` in its name and no videos.csv row) is an error naming the file. Within a video the
frames keep the order of labels.csv (``FrameFolder.video_ids`` / ``positions``).

Labels: integers, or class names when ``classes`` is given (or ``<root>/classes.txt`` exists). A
label outside the class list (or not an integer without a class list) raises :class:`LabelError`
naming file and line. For ShapesWorld exports the label is the frame's ``phase``.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch

from .base import FileDataset
from .errors import DataLayoutError, LabelError, image_tensor, list_images, read_image, require, resize_pair

LAYOUT = """\
<root>/
  frames/            frame images (png/jpg), e.g. 000000_000.png
  labels.csv         header "frame,label"; frame = file name in frames/ (extension optional),
                     label = integer or class name
  classes.txt        optional: class names, one a line (label order)
  videos.csv         optional: header "frame,video"; without it the video id is the frame name's stem
                     before its last "_" (000012_003.png -> video 000012)
  queries/           optional external query images (+ optional queries/labels.csv, same format)
"""


class FrameFolder(FileDataset):
    """Reader of labelled frame folders (see ``LAYOUT``)."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "frames",
        classes: list[str] | None = None,
        image_size: int | None = None,
        on_bad_sample: str = "error",
        check_files: bool = True,
        queries_dir: str | os.PathLike | None = None,
    ) -> None:
        """``queries_dir``: external query folder for ``split="queries"`` (default ``<root>/queries``)."""
        if split not in ("frames", "queries"):
            raise ValueError(f"FrameFolder: split={split!r}; expected 'frames' or 'queries'")
        root = require(root, "FrameFolder root", LAYOUT, is_dir=True)
        self._init_policy(on_bad_sample)
        self.root, self.split, self.image_size = root, split, image_size
        if classes is None and (root / "classes.txt").is_file():
            classes = [c.strip() for c in (root / "classes.txt").read_text().splitlines() if c.strip()]
        self.classes = list(classes) if classes is not None else None
        if split == "frames":
            folder = require(root / "frames", "FrameFolder frames folder", LAYOUT, is_dir=True)
            labels_file = require(root / "labels.csv", "FrameFolder labels file", LAYOUT, is_dir=False)
            self.samples = self._labelled(folder, labels_file)
            self._assign_videos(root / "videos.csv")
        else:
            qdir = Path(queries_dir) if queries_dir is not None else root / "queries"
            folder = require(qdir, "FrameFolder queries folder", LAYOUT, is_dir=True)
            lf = folder / "labels.csv"
            self.samples = self._labelled(folder, lf) if lf.is_file() else [
                {"path": p, "label": -1} for p in list_images(folder)
            ]
        self._scan(check_files)

    def settings(self) -> dict:
        return {"split": self.split, "classes": self.classes, "image_size": self.image_size}

    def _label(self, value: str, file: Path, line: int) -> int:
        value = value.strip()
        if self.classes is not None:
            if value in self.classes:
                return self.classes.index(value)
            if value.lstrip("-").isdigit() and 0 <= int(value) < len(self.classes):
                return int(value)
            raise LabelError(f"{file}:{line}: label {value!r} is not in the class list {self.classes}")
        if not value.lstrip("-").isdigit() or int(value) < 0:
            raise LabelError(
                f"{file}:{line}: label {value!r} is not a non-negative integer (give classes=[...] or "
                f"classes.txt for named labels)"
            )
        return int(value)

    def _labelled(self, folder: Path, labels_file: Path) -> list[dict]:
        by_stem = {p.stem: p for p in list_images(folder)}
        by_name = {p.name: p for p in by_stem.values()}
        reader = csv.DictReader(labels_file.read_text().splitlines())
        if not reader.fieldnames or not {"frame", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{labels_file}:1: header {reader.fieldnames} must be 'frame,label'")
        out = []
        for rec in reader:
            line, name = reader.line_num, (rec["frame"] or "").strip()
            label = self._label(rec["label"] or "", labels_file, line)
            path = by_name.get(name) or by_stem.get(name) or by_stem.get(Path(name).stem)
            if path is None:
                raise DataLayoutError(
                    f"{labels_file}:{line}: frame {name!r} has no image in {folder}\nexpected layout:\n{LAYOUT}"
                )
            out.append({"path": path, "label": label})
        return out

    def _assign_videos(self, videos_file: Path) -> None:
        """``video`` of every sample: from videos.csv when present, else the file-name prefix (see ``LAYOUT``)."""
        table: dict[str, str] | None = None
        if videos_file.is_file():
            reader = csv.DictReader(videos_file.read_text().splitlines())
            if not reader.fieldnames or not {"frame", "video"} <= set(reader.fieldnames):
                raise ValueError(f"{videos_file}:1: header {reader.fieldnames} must be 'frame,video'")
            table = {}
            for rec in reader:
                name, video = (rec["frame"] or "").strip(), (rec["video"] or "").strip()
                if not name or not video:
                    raise LabelError(f"{videos_file}:{reader.line_num}: empty frame or video ({rec})")
                table[Path(name).stem] = video
        for s in self.samples:
            stem = s["path"].stem
            if table is not None:
                if stem not in table:
                    raise DataLayoutError(f"{videos_file}: frame {s['path'].name!r} has no video row (every frame "
                                          f"listed in labels.csv needs one)\nexpected layout:\n{LAYOUT}")
                s["video"] = table[stem]
            elif "_" in stem.strip("_"):
                s["video"] = stem.rsplit("_", 1)[0]
            else:
                raise DataLayoutError(
                    f"{s['path']}: no video id: the file name has no '<video>_<frame>' prefix and "
                    f"{videos_file} does not exist. Name frames <video>_<t>.png or write videos.csv (frame,video), "
                    f"so temporal positives and held-out splits never cross a video boundary (F47)"
                    f"\nexpected layout:\n{LAYOUT}")

    @property
    def video_ids(self) -> list[str]:
        """The video of every frame (labelled frames; queries have none)."""
        return [s.get("video", "") for s in self.samples]

    @property
    def positions(self) -> list[int]:
        """The position of every frame within its video (labels.csv order)."""
        seen: dict[str, int] = {}
        out = []
        for v in self.video_ids:
            out.append(seen.get(v, 0))
            seen[v] = out[-1] + 1
        return out

    def _check(self, sample: dict) -> None:
        read_image(sample["path"])

    def _load(self, index: int) -> dict:
        s = self.samples[index]
        image, _ = resize_pair(image_tensor(read_image(s["path"])), None, self.image_size)
        return {"image": image, "label": torch.tensor(s["label"], dtype=torch.int64), "frame": s["path"].name,
                "video": s.get("video", "")}


def write_frames(root: str | os.PathLike, frames: list[np.ndarray], names: list[str], labels: list[int],
                 queries: list[np.ndarray] | None = None, query_labels: list[int] | None = None,
                 videos: list[str] | None = None) -> None:
    """Write ``frames/<name>.png`` + ``labels.csv``, optionally ``videos.csv`` (one video id per frame; without it
    the reader takes the name's prefix before its last ``_``) and ``queries/`` (+ ``queries/labels.csv``)."""
    from PIL import Image

    root = Path(root)

    def dump(folder: Path, ims: list[np.ndarray], nms: list[str], labs: list[int] | None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for im, nm in zip(ims, nms):
            Image.fromarray(im).save(folder / f"{nm}.png")
        if labs is not None:
            with open(folder / "labels.csv" if folder.name == "queries" else root / "labels.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["frame", "label"])
                w.writerows([[f"{nm}.png", int(lab)] for nm, lab in zip(nms, labs)])

    dump(root / "frames", frames, names, labels)
    if videos is not None:
        if len(videos) != len(names):
            raise ValueError(f"write_frames: {len(videos)} video ids for {len(names)} frames")
        with open(root / "videos.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["frame", "video"])
            w.writerows([[f"{nm}.png", str(v)] for nm, v in zip(names, videos)])
    if queries is not None:
        dump(root / "queries", queries, [f"query_{i:04d}" for i in range(len(queries))], query_labels)
