"""RetrievalDataModule: labelled video frames (ShapesWorld by default, or a frames folder) for SimSiam and FastAP.

Batch keys: ``image`` uint8 (B,3,H,W) (image inputs) or ``features`` float (B,1,C) (cached backbone features in
the FastAP stage), ``label`` int64 (B,) (the retrieval label: ShapesWorld's ``phase``), ``class_label`` int64
(B,) (the kNN monitor's label: the category of the nearest object; the retrieval label for a frames folder),
``clip`` / ``t`` int64 (B,) (video and frame position, for temporal-window positives), ``index`` int64 (B,).
In the SimSiam stage ``on_after_batch_transfer`` adds ``view1`` / ``view2`` float (B,3,H,W) in [0, 1]: two
torchvision v2 augmentations of each frame, made on the device the model runs on.

Splits (F47). ShapesWorld: three worlds with different seeds (train / val / test clips; the data itself, pinned).
A frames folder: whole videos (``FrameFolder`` video ids: videos.csv or the file-name prefix), in order of first
appearance; the last ``test_fraction`` of the videos is the test split and the ``val_fraction`` before it the
validation split, or the videos listed in ``val_videos`` / ``test_videos``. Validation and test are checked
disjoint by video id (``core.splits.check_disjoint``; ``allow_val_test_overlap: true`` accepts an overlap and marks
the run as tuned on test); the record is ``self.split_info`` (results.json ``splits``). A frame's ``clip`` is its
video, so temporal positives and the ``*_xclip`` numbers never cross a video boundary.

Seeds (F50): the samplers' seed is ``core.seeding.run_seed(sampler_seed, "sampler")`` (derived from the run's
``seed_everything`` unless pinned); the augmentations draw from the global torch RNG that ``seed_everything`` seeds.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.seeding import run_seed
from lit_experiments.core.splits import check_disjoint
from lit_experiments.core.study import StudyDataModule
from lit_experiments.data.errors import DataLayoutError
from lit_experiments.data.shapes import ShapesWorld

from .sampler import MPerClassBatchSampler

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


class TwoViews:
    """Two random views of a batch of frames with torchvision v2 (SimSiam's recipe without blur or solarise).

    ``group``: frames that share one draw of the random parameters (1 = every frame its own draw, as in the
    reference; a CPU demo uses 8 to cut the per-call overhead of v2 on tiny images).
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.2, 1.0), jitter: float = 0.4, hue: float = 0.1,
                 jitter_p: float = 0.8, grayscale_p: float = 0.2, group: int = 1) -> None:
        if group < 1:
            raise ConfigError(f"data.init_args.augment.group={group}; expected >= 1")
        self.group = int(group)
        self.t = v2.Compose([
            v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True), v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(jitter, jitter, jitter, hue)], p=jitter_p),
            v2.RandomGrayscale(grayscale_p), v2.ToDtype(torch.float32, scale=True),
        ])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.t(images[i: i + self.group]) for i in range(0, len(images), self.group)])


class RetrievalDataModule(StudyDataModule):
    """Args:
        dataset: ``shapes`` (ShapesWorld clips, frames labelled by ``phase`` and by object category) or
            ``frames`` (a folder read by ``lit_experiments.data.frames.FrameFolder``: frames/, labels.csv,
            optional queries/).
        n_train / n_val / n_test: ShapesWorld clips per split; ``shapes``: ShapesWorld arguments; ``n_queries``:
            external query images of the ShapesWorld default (frame 0 of clips of another world).
        root / classes / image_size / on_bad_sample: the frames folder, its class names, a resize, and the
            bad-sample policy (``error`` or ``skip``, counted).
        val_fraction / test_fraction: the share of a frames folder's videos held out for val / test (whole videos,
            the last ones in file order); ``val_videos`` / ``test_videos``: the video ids of each instead.
        allow_val_test_overlap: accept validation and test sharing videos (refused otherwise, F47); the run is
            then marked ``tuned_on_test`` in results.json.
        inputs: ``images`` or ``features`` (the FastAP stage: the frozen backbone's features from the on-disk
            cache; the module hands the backbone over when the stage starts).
        sampler: ``random`` (shuffled frames; SimSiam) or ``m_per_class`` (the rank-aware
            :class:`~.sampler.MPerClassBatchSampler`; FastAP, F39 / F40). Both are rank-aware themselves, so a
            DDP run sets ``trainer.use_distributed_sampler: false`` (checked).
        use_labels: FastAP positives share ``label`` and the sampler groups by label; else positives are frames of
            the same clip within ``temporal_window`` and the sampler draws groups of ``m_per_class`` consecutive
            frames of a clip (the seed's ``use_labels = False``).
        m_per_class: samples per class (or group) in a batch; ``sampler_seed``: the samplers' seed (default: derived
            from ``seed_everything``, F50).
        augment: :class:`TwoViews` arguments (``size`` defaults to the frame size).
        knn_bank_size: training frames used as the kNN monitor's memory bank (0 = all).
        cache_dir: where the feature caches live.
    """

    def __init__(
        self, dataset: str = "shapes", n_train: int = 200, n_val: int = 40, n_test: int = 60,
        shapes: dict[str, Any] | None = None, root: str | None = None, classes: list[str] | None = None,
        image_size: int | None = None, on_bad_sample: str = "error", val_fraction: float = 0.1,
        test_fraction: float = 0.2, inputs: str = "images", sampler: str = "random", use_labels: bool = True, m_per_class: int = 4,
        temporal_window: int = 1, sampler_seed: int | None = None, augment: dict[str, Any] | None = None,
        knn_bank_size: int = 0, cache_dir: str = ".cache/features", n_queries: int = 2, batch_size: int = 128,
        eval_batch_size: int | None = 256, num_workers: int = 0, val_videos: list[str] | None = None,
        test_videos: list[str] | None = None, allow_val_test_overlap: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, eval_batch_size=eval_batch_size)
        if dataset not in ("shapes", "frames"):
            raise ConfigError(f"data.init_args.dataset={dataset!r}; expected 'shapes' or 'frames'")
        if dataset == "frames" and not root:
            raise ConfigError("data.init_args.root is required with dataset: frames (a folder with frames/ and "
                              "labels.csv)")
        if inputs not in ("images", "features"):
            raise ConfigError(f"data.init_args.inputs={inputs!r}; expected 'images' or 'features'")
        self.dataset, self.n_train, self.n_val, self.n_test = dataset, n_train, n_val, n_test
        self.shapes = {"image_size": 32, "min_objects": 1, "max_objects": 1, **(shapes or {})}
        self.root, self.classes, self.image_size, self.on_bad_sample = root, classes, image_size, on_bad_sample
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.val_videos = None if val_videos is None else [str(v) for v in val_videos]
        self.test_videos = None if test_videos is None else [str(v) for v in test_videos]
        self.allow_val_test_overlap = bool(allow_val_test_overlap)
        #: ``random`` | ``m_per_class``: the attribute a curriculum stage's ``data: {sampler: ...}`` sets
        self.sampler = _sampler_kind(sampler)
        self.inputs, self.use_labels, self.m_per_class = inputs, use_labels, m_per_class
        self.temporal_window, self.sampler_seed = temporal_window, sampler_seed
        self.augment_args = dict(augment or {})
        self.knn_bank_size, self.cache_dir, self.n_queries = knn_bank_size, cache_dir, n_queries
        self.splits: dict[str, Dataset] = {}
        self.queries: Dataset | None = None
        self.feature_source: Any = None  # FrozenFeatures handed over by the module in the FastAP stage
        self._views: TwoViews | None = None
        self.batch_sampler: MPerClassBatchSampler | None = None  # the m-per-class sampler of the last loader

    # ------------------------------------------------------------------ data
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.dataset == "shapes":
            for split, n in (("train", self.n_train), ("val", self.n_val), ("test", self.n_test)):
                self.splits[split] = ShapesFrames(n, SPLIT_SEEDS[split], self.shapes)
            self.queries = ShapesQueries(self.n_queries, self.shapes) if self.n_queries > 0 else None
            val, test = self.splits["val"], self.splits["test"]
            self.split_info = check_disjoint(
                [f"world{val.seed}/clip{c}" for c in range(self.n_val)],
                [f"world{test.seed}/clip{c}" for c in range(self.n_test)],
                val_name=f"ShapesWorld seed {val.seed} ({self.n_val} clips)",
                test_name=f"ShapesWorld seed {test.seed} ({self.n_test} clips)",
                allow_overlap=self.allow_val_test_overlap, what="clips")
            return
        from lit_experiments.data.frames import FrameFolder

        folder = FrameFolder(self.root, classes=self.classes, image_size=self.image_size,
                             on_bad_sample=self.on_bad_sample)
        parts = self._video_split(folder)
        for split, videos in parts.items():
            idx = [i for i, v in enumerate(folder.video_ids) if v in set(videos)]
            self.splits[split] = FolderFrames(folder, idx, videos)
        if len(self.splits["train"]) < 2:
            raise DataLayoutError(f"{self.root}: {len(self.splits['train'])} training frames left after holding out "
                                  f"{len(parts['val'])} validation and {len(parts['test'])} test videos (val_fraction="
                                  f"{self.val_fraction}, test_fraction={self.test_fraction}); expected >= 2")
        if (Path(self.root) / "queries").is_dir():
            self.queries = FrameFolder(self.root, split="queries", classes=folder.classes,
                                       image_size=self.image_size, on_bad_sample=self.on_bad_sample)
            self._check_queries(folder)

    def _video_split(self, folder: Any) -> dict[str, list[str]]:
        """Video ids of train / val / test: listed (``val_videos`` / ``test_videos``) or the last videos in file
        order; validation and test checked disjoint (F47), the record kept as ``split_info``."""
        order = list(dict.fromkeys(folder.video_ids))
        known = set(order)
        for key, listed in (("val_videos", self.val_videos), ("test_videos", self.test_videos)):
            missing = [v for v in (listed or []) if v not in known]
            if missing:
                raise ConfigError(f"data.init_args.{key}: {missing[:3]} are not videos of {self.root} (it has "
                                  f"{len(order)}: {order[:3]}...)")
        n = len(order)
        test = self.test_videos if self.test_videos is not None else order[n - math.ceil(n * self.test_fraction):]
        rest = [v for v in order if v not in set(test)]
        val = self.val_videos if self.val_videos is not None else rest[len(rest) - math.ceil(n * self.val_fraction):]
        self.split_info = check_disjoint(
            val, test, val_name=f"{self.root} validation videos ({len(val)})",
            test_name=f"{self.root} test videos ({len(test)})", allow_overlap=self.allow_val_test_overlap,
            what="videos")
        held = set(val) | set(test)
        return {"train": [v for v in order if v not in held], "val": list(val), "test": list(test)}

    def _check_queries(self, folder: Any) -> None:
        size = tuple(folder[0]["image"].shape)
        for i in range(len(self.queries)):
            shape = tuple(self.queries[i]["image"].shape)
            if shape != size:
                name = self.queries.samples[i]["path"]
                raise DataLayoutError(f"{name}: external query of shape {shape} (C, H, W); the frames are {size}. "
                                      "Give image_size to resize both, or convert the query to the frames' size "
                                      "and mode (RGB)")

    def fold_pool(self) -> tuple[int, Any]:
        self.setup("fit")
        return len(self.splits["train"]), self.splits["train"].labels

    @property
    def class_names(self) -> list[str] | None:
        self.setup("fit")
        return self.splits["train"].class_names

    def frames(self, split: str) -> Dataset:
        """The image dataset of a split (``train`` / ``val`` / ``test``)."""
        self.setup("fit")
        return self.splits[split]

    def knn_bank(self) -> Dataset:
        train = self.frames("train")
        if 0 < self.knn_bank_size < len(train):
            step = len(train) / self.knn_bank_size
            return Subset(train, [int(i * step) for i in range(self.knn_bank_size)])
        return train

    # ------------------------------------------------------------------ features (FastAP stage)
    def serve_features(self, source: Any) -> None:
        """Use ``source`` (``FrozenFeatures``: ``features``, ``cache_key``) for ``inputs: features``."""
        self.feature_source = source

    def _with_features(self, ds: Dataset, split: str) -> Dataset:
        if self.inputs != "features":
            return ds
        if self.feature_source is None:
            raise ConfigError("data.inputs=features needs the module to hand over its backbone (it does when a "
                              "stage starts); use inputs: images outside a curriculum stage")
        from lit_experiments.data.cache import FeatureCache

        return FeatureCache(Path(self.cache_dir), self.feature_source, ds, batch_size=self.eval_batch_size or 256,
                            image_key="image", key_fields={"split": split}, progress=None)

    # ------------------------------------------------------------------ loaders
    def group_labels(self) -> torch.Tensor:
        """What the m-per-class sampler groups by: ``label``, or (video, block of m consecutive frames): a group
        never crosses a video boundary."""
        base = self.frames("train")
        if self.use_labels:
            return base.labels
        return base.clips * (10 ** 6) + base.t // self.m_per_class

    def train_dataloader(self) -> DataLoader:
        ds = self._with_features(self.frames("train"), "train")
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if world > 1 and trainer._accelerator_connector.use_distributed_sampler:
            raise ConfigError("RetrievalDataModule's samplers are rank-aware themselves: set "
                              "trainer.use_distributed_sampler: false for a multi-device run (F40)")
        kw = {"num_workers": self.num_workers, "collate_fn": _collate, "persistent_workers": self.num_workers > 0}
        seed = run_seed(self.sampler_seed, "sampler")
        if _sampler_kind(self.sampler) == "random":
            self.batch_sampler = None
            if world > 1:
                from torch.utils.data.distributed import DistributedSampler

                dist = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                          drop_last=True)
                return DataLoader(ds, batch_size=self.batch_size, sampler=dist, drop_last=True, **kw)
            gen = torch.Generator().manual_seed(seed)
            return DataLoader(ds, batch_size=self.batch_size, shuffle=True, drop_last=True, generator=gen, **kw)
        if self.batch_size % self.m_per_class:
            raise ConfigError(f"data.batch_size={self.batch_size} must be a multiple of data.m_per_class="
                              f"{self.m_per_class}")
        self.batch_sampler = MPerClassBatchSampler(self.group_labels(), m=self.m_per_class,
                                                   batch_size=self.batch_size, num_replicas=world, rank=rank,
                                                   seed=seed)
        return DataLoader(ds, batch_sampler=self.batch_sampler, **kw)

    def val_dataloader(self) -> list[DataLoader]:
        return [self.eval_loader(self._with_features(self.frames("val"), "val"), collate_fn=_collate),
                self.eval_loader(self._with_features(self.knn_bank(), "bank"), collate_fn=_collate)]

    def test_dataloader(self) -> list[DataLoader]:
        return [self.eval_loader(self.frames("test"), collate_fn=_collate),
                self.eval_loader(self.knn_bank(), collate_fn=_collate)]

    def predict_dataloader(self) -> DataLoader:
        return self.eval_loader(self.frames("test"), collate_fn=_collate)

    def example_batch(self) -> dict:
        """Image inputs always (the FastAP stage's features exist only once the backbone is handed over)."""
        if getattr(self, "_example", None) is None:
            train = self.frames("train")
            self._example = _collate([train[i] for i in range(min(len(train), 2 * self.m_per_class))])
        return self._example

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        trainer = self.trainer
        training = trainer is not None and trainer.training
        if training and "image" in batch and "features" not in batch:
            if self._views is None:
                size = self.augment_args.get("size") or int(batch["image"].shape[-1])
                self._views = TwoViews(**{**self.augment_args, "size": size})
            batch["view1"], batch["view2"] = self._views(batch["image"]), self._views(batch["image"])
        if training and not self.use_labels:  # positives: frames of one video within the temporal window
            same = batch["clip"][:, None] == batch["clip"][None, :]
            near = (batch["t"][:, None] - batch["t"][None, :]).abs() <= self.temporal_window
            batch["pos_mask"] = same & near
        return batch


def _sampler_kind(value: Any) -> str:
    if value not in ("random", "m_per_class"):
        raise ConfigError(f"data.init_args.sampler={value!r}; expected 'random' or 'm_per_class'")
    return value


def _collate(items: list[dict]) -> dict:
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
