"""Data sources of the retrieval study: the datamodule's ``source:`` part (``class_path`` in the YAML).

* :class:`ShapesClipFrames`: frames of ShapesWorld clips rendered once into memory (the embedded default): three
  worlds with different seeds (train / val / test clips; the data itself, pinned) and external queries from a
  fourth.
* :class:`VideoFrameFolder`: a frames folder (frames/, labels.csv, optional videos.csv and queries/) read by
  :class:`~lit_experiments.data.frames.FrameFolder`, split by whole videos.

A source's :meth:`~RetrievalSource.load` gives :class:`RetrievalSplits`: the ``train`` / ``val`` / ``test`` frame
datasets (items with ``image``, ``label``, ``class_label``, ``clip``, ``t``, ``index``, ``frame``; attributes
``labels``, ``class_labels``, ``clips``, ``t``, ``class_names``, ``frame_name(i)``), the external queries (or None)
and the validation-vs-test record (``core.splits.check_disjoint``; F47).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.splits import check_disjoint
from lit_experiments.data.errors import DataLayoutError
from lit_experiments.data.shapes import ShapesWorld

SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


class ShapesFrames(Dataset):
    """Frames of ShapesWorld clips rendered once into memory: item ``i`` is frame ``i % T`` of clip ``i // T``."""

    def __init__(self, n_clips: int, seed: int, shapes: dict[str, Any]) -> None:
        kw = {"num_frames": 8, "motion_blur": True, **shapes}
        self.world = ShapesWorld(n_clips, seed=seed, **kw)
        self.t_len = int(kw["num_frames"])
        frames, phase, cat = [], [], []
        for i in range(n_clips):
            item = self.world[i]
            frames.append(item["video"])
            phase.append(item["phase"])
            cat.append(item["category"][0].repeat(self.t_len))
        self.images = torch.cat(frames)
        self.labels, self.class_labels = torch.cat(phase), torch.cat(cat)
        self.clips = torch.arange(len(self.labels)) // self.t_len  # the video of every frame
        self.t = torch.arange(len(self.labels)) % self.t_len  # its position in the video
        self.seed = seed
        self.class_names = list(self.world.categories)

    def fingerprint(self) -> str:
        return self.world.fingerprint() + "-frames"

    def __len__(self) -> int:
        return len(self.images)

    def frame_name(self, i: int) -> str:
        clip, t = divmod(int(i), self.t_len)
        return f"clip{clip:04d}_t{t:02d}"

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        clip, t = divmod(i, self.t_len)
        return {"image": self.images[i], "label": self.labels[i], "class_label": self.class_labels[i],
                "clip": torch.tensor(clip), "t": torch.tensor(t), "index": torch.tensor(i),
                "frame": self.frame_name(i)}


class ShapesQueries(Dataset):
    """External query images for the ShapesWorld default: frame 0 of clips of another world (seed 3)."""

    def __init__(self, n: int, shapes: dict[str, Any]) -> None:
        self.frames = ShapesFrames(n, 3, shapes)

    def __len__(self) -> int:
        return len(self.frames) // self.frames.t_len

    def __getitem__(self, i: int) -> dict:
        item = self.frames[int(i) * self.frames.t_len]
        return {**item, "frame": f"query{int(i):02d}"}


class FolderFrames(Dataset):
    """A :class:`~lit_experiments.data.frames.FrameFolder` split with the study's keys: ``clip`` = the frame's video
    (an index into ``videos``), ``t`` = its position in the video."""

    def __init__(self, folder: Any, indices: list[int], videos: list[str]) -> None:
        self.folder, self.indices, self.videos = folder, list(indices), list(videos)
        self.labels = torch.tensor([folder.samples[i]["label"] for i in self.indices], dtype=torch.int64)
        self.class_labels = self.labels
        self.class_names = folder.classes
        vid, pos = folder.video_ids, folder.positions
        index = {v: k for k, v in enumerate(self.videos)}
        self.clips = torch.tensor([index[vid[i]] for i in self.indices], dtype=torch.int64)
        self.t = torch.tensor([pos[i] for i in self.indices], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def frame_name(self, i: int) -> str:
        """The file name of frame ``i``, without reading the image."""
        return self.folder.samples[self.indices[int(i)]]["path"].name

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        item = self.folder[self.indices[i]]
        return {"image": item["image"], "label": item["label"], "class_label": item["label"],
                "clip": self.clips[i], "t": self.t[i], "index": torch.tensor(i), "frame": item["frame"]}


@dataclass
class RetrievalSplits:
    """What a source loads: the frames of each split, the external queries (or None), the split record (F47)."""

    splits: dict[str, Dataset]
    queries: Dataset | None
    split_info: dict[str, Any]


class RetrievalSource:
    """A data source of :class:`~.datamodule.RetrievalDataModule` (the ``source:`` part)."""

    def load(self) -> RetrievalSplits:
        raise NotImplementedError


class ShapesClipFrames(RetrievalSource):
    """ShapesWorld clips, frames labelled by ``phase`` (``label``) and by the first object's category
    (``class_label``, the kNN monitor's label).

    Args:
        n_train / n_val / n_test: clips per split (worlds of seeds 0 / 1 / 2).
        n_queries: external query images (frame 0 of clips of a world of seed 3).
        shapes: :class:`~lit_experiments.data.shapes.ShapesWorld` arguments (default 32 px, one object, 8 frames,
            motion blur).
    """

    def __init__(self, n_train: int = 200, n_val: int = 40, n_test: int = 60, n_queries: int = 2,
                 shapes: dict[str, Any] | None = None) -> None:
        self.n_train, self.n_val, self.n_test, self.n_queries = n_train, n_val, n_test, n_queries
        self.shapes = {"image_size": 32, "min_objects": 1, "max_objects": 1, **(shapes or {})}

    def load(self) -> RetrievalSplits:
        splits: dict[str, Dataset] = {}
        for split, n in (("train", self.n_train), ("val", self.n_val), ("test", self.n_test)):
            splits[split] = ShapesFrames(n, SPLIT_SEEDS[split], self.shapes)
        queries = ShapesQueries(self.n_queries, self.shapes) if self.n_queries > 0 else None
        val, test = splits["val"], splits["test"]
        info = check_disjoint(
            [f"world{val.seed}/clip{c}" for c in range(self.n_val)],
            [f"world{test.seed}/clip{c}" for c in range(self.n_test)],
            val_name=f"ShapesWorld seed {val.seed} ({self.n_val} clips)",
            test_name=f"ShapesWorld seed {test.seed} ({self.n_test} clips)", what="clips")
        return RetrievalSplits(splits, queries, info)


class VideoFrameFolder(RetrievalSource):
    """A frames folder split by whole videos (``FrameFolder`` video ids: videos.csv or the file-name prefix), in
    order of first appearance: the last ``test_fraction`` of the videos is the test split and the ``val_fraction``
    before it the validation split, or the videos listed in ``val_videos`` / ``test_videos``. A frame's ``clip`` is
    its video, so temporal positives and the ``*_xclip`` numbers never cross a video boundary.

    Args:
        root: the folder (frames/, labels.csv, optional videos.csv, classes.txt and queries/ of external queries).
        classes / image_size / on_bad_sample: class names, a resize, and the bad-sample policy (``error`` or
            ``skip``, counted).
        val_fraction / test_fraction, val_videos / test_videos: the held-out videos (see above).
        allow_val_test_overlap: accept validation and test sharing videos (refused otherwise, F47); the run is then
            marked ``tuned_on_test`` in results.json.
    """

    def __init__(self, root: str, classes: list[str] | None = None, image_size: int | None = None,
                 on_bad_sample: str = "error", val_fraction: float = 0.1, test_fraction: float = 0.2,
                 val_videos: list[str] | None = None, test_videos: list[str] | None = None,
                 allow_val_test_overlap: bool = False) -> None:
        if not root:
            raise ConfigError("data.init_args.source.init_args.root is required for a frames folder (a folder with "
                              "frames/ and labels.csv)")
        self.root, self.classes, self.image_size, self.on_bad_sample = root, classes, image_size, on_bad_sample
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.val_videos = None if val_videos is None else [str(v) for v in val_videos]
        self.test_videos = None if test_videos is None else [str(v) for v in test_videos]
        self.allow_val_test_overlap = bool(allow_val_test_overlap)

    def load(self) -> RetrievalSplits:
        from lit_experiments.data.frames import FrameFolder

        folder = FrameFolder(self.root, classes=self.classes, image_size=self.image_size,
                             on_bad_sample=self.on_bad_sample)
        parts, info = self._video_split(folder)
        splits: dict[str, Dataset] = {}
        for split, videos in parts.items():
            idx = [i for i, v in enumerate(folder.video_ids) if v in set(videos)]
            splits[split] = FolderFrames(folder, idx, videos)
        if len(splits["train"]) < 2:
            raise DataLayoutError(f"{self.root}: {len(splits['train'])} training frames left after holding out "
                                  f"{len(parts['val'])} validation and {len(parts['test'])} test videos (val_fraction="
                                  f"{self.val_fraction}, test_fraction={self.test_fraction}); expected >= 2")
        queries = None
        if (Path(self.root) / "queries").is_dir():
            queries = FrameFolder(self.root, split="queries", classes=folder.classes, image_size=self.image_size,
                                  on_bad_sample=self.on_bad_sample)
            self._check_queries(folder, queries)
        return RetrievalSplits(splits, queries, info)

    def _video_split(self, folder: Any) -> tuple[dict[str, list[str]], dict[str, Any]]:
        """Video ids of train / val / test: listed (``val_videos`` / ``test_videos``) or the last videos in file
        order; validation and test checked disjoint (F47), with the record."""
        order = list(dict.fromkeys(folder.video_ids))
        known = set(order)
        for key, listed in (("val_videos", self.val_videos), ("test_videos", self.test_videos)):
            missing = [v for v in (listed or []) if v not in known]
            if missing:
                raise ConfigError(f"data.init_args.source.init_args.{key}: {missing[:3]} are not videos of "
                                  f"{self.root} (it has {len(order)}: {order[:3]}...)")
        n = len(order)
        test = self.test_videos if self.test_videos is not None else order[n - math.ceil(n * self.test_fraction):]
        rest = [v for v in order if v not in set(test)]
        val = self.val_videos if self.val_videos is not None else rest[len(rest) - math.ceil(n * self.val_fraction):]
        info = check_disjoint(
            val, test, val_name=f"{self.root} validation videos ({len(val)})",
            test_name=f"{self.root} test videos ({len(test)})", allow_overlap=self.allow_val_test_overlap,
            what="videos")
        held = set(val) | set(test)
        return {"train": [v for v in order if v not in held], "val": list(val), "test": list(test)}, info

    @staticmethod
    def _check_queries(folder: Any, queries: Any) -> None:
        size = tuple(folder[0]["image"].shape)
        for i in range(len(queries)):
            shape = tuple(queries[i]["image"].shape)
            if shape != size:
                name = queries.samples[i]["path"]
                raise DataLayoutError(f"{name}: external query of shape {shape} (C, H, W); the frames are {size}. "
                                      "Give image_size to resize both, or convert the query to the frames' size "
                                      "and mode (RGB)")
