"""RetrievalDataModule: labelled video frames (ShapesWorld by default, or a frames folder) for SimSiam and FastAP.

Parts by constructor (``class_path`` in the YAML):

* ``source``: where the frames come from (:mod:`.sources`: ``ShapesClipFrames``, the embedded default, or
  ``VideoFrameFolder``, a frames folder split by whole videos; F47).
* ``sampler``: the order of the training batches (:mod:`.sampler`: ``null`` = shuffled frames, ``RandomBatches``
  with a pinned seed, ``MPerClassBatches`` = m frames per label or video block; F39, F40).
* ``frozen``: not an argument: the module hands over its trained backbone (``FrozenFeatures``) when a stage with
  ``features: true`` starts, and the training / validation frames are then served as its features from the on-disk
  cache in ``cache_dir``.

Batch keys: ``image`` uint8 (B,3,H,W) (image inputs) or ``features`` float (B,1,C) (cached backbone features in
the FastAP stage), ``label`` int64 (B,) (the retrieval label: ShapesWorld's ``phase``), ``class_label`` int64
(B,) (the kNN monitor's label: the category of the nearest object; the retrieval label for a frames folder),
``clip`` / ``t`` int64 (B,) (video and frame position, for temporal-window positives), ``index`` int64 (B,).
In the SimSiam stage ``on_after_batch_transfer`` adds ``view1`` / ``view2`` float (B,3,H,W) in [0, 1]: two
torchvision v2 augmentations of each frame, made on the device the model runs on; with temporal positives
(``positives.use_labels: false``) a training batch also carries ``pos_mask`` (B, B).

Seeds (F50): the samplers' seed is ``core.seeding.run_seed(seed, "sampler")`` (derived from the run's
``seed_everything`` unless the sampler part pins it); the augmentations draw from the global torch RNG that
``seed_everything`` seeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.study import StudyDataModule

from .sampler import MPerClassBatchSampler, RandomBatches, RetrievalSampler
from .sources import RetrievalSource, ShapesClipFrames

#: frames of the dry run's example batch
EXAMPLE_FRAMES = 8


@dataclass
class RetrievalPositives:
    """FastAP's positives. ``use_labels``: frames that share ``label`` (and the m-per-class sampler groups by
    label); else frames of the same video within ``temporal_window`` frames, and the sampler draws blocks of ``m``
    consecutive frames of a video (the seed's ``use_labels = False``)."""

    use_labels: bool = True
    temporal_window: int = 1


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
        source: a :class:`~.sources.RetrievalSource` part (default ``ShapesClipFrames()``).
        sampler: a :class:`~.sampler.RetrievalSampler` part, or ``null`` for shuffled frames (a stage's
            ``data: {sampler: null}`` sets it for that stage). Both are rank-aware themselves, so a DDP run sets
            ``trainer.use_distributed_sampler: false`` (checked).
        features: serve the ``frozen`` backbone's features (from the on-disk cache in ``cache_dir``) instead of
            images: the FastAP stage (``data: {features: true}``); the module hands ``frozen`` over when the stage
            starts.
        positives: :class:`RetrievalPositives` (labels, or temporal positives within a video).
        augment: :class:`TwoViews` arguments (``size`` defaults to the frame size).
        knn_bank_size: training frames used as the kNN monitor's memory bank (0 = all).
        cache_dir: where the feature caches live.
    """

    def __init__(
        self, source: RetrievalSource | None = None, sampler: RetrievalSampler | None = None, features: bool = False,
        positives: RetrievalPositives | None = None, augment: dict[str, Any] | None = None, knn_bank_size: int = 0,
        cache_dir: str = ".cache/features", batch_size: int = 128, eval_batch_size: int | None = 256,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, eval_batch_size=eval_batch_size)
        self.source = source if source is not None else ShapesClipFrames()
        #: the attribute a curriculum stage's ``data: {sampler: ...}`` sets (``null``: shuffled frames)
        self.sampler = sampler
        self.features = bool(features)
        self.positives = positives or RetrievalPositives()
        self.augment_args = dict(augment or {})
        self.knn_bank_size, self.cache_dir = knn_bank_size, cache_dir
        self.splits: dict[str, Dataset] = {}
        self.queries: Dataset | None = None
        #: the frozen backbone (``FrozenFeatures``: ``features``, ``cache_key``), handed over by the module
        self.frozen: Any = None
        self._views: TwoViews | None = None
        self.batch_sampler: MPerClassBatchSampler | None = None  # the m-per-class sampler of the last loader

    # ------------------------------------------------------------------ data
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        loaded = self.source.load()
        self.splits, self.queries, self.split_info = loaded.splits, loaded.queries, loaded.split_info

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
    def _with_features(self, ds: Dataset, split: str) -> Dataset:
        if not self.features:
            return ds
        if self.frozen is None:
            raise ConfigError("data features=true needs the module to hand over its backbone as the datamodule's "
                              "`frozen` part (it does when a stage starts); use features: false outside a "
                              "curriculum stage")
        from lit_experiments.data.cache import FeatureCache

        return FeatureCache(Path(self.cache_dir), self.frozen, ds, batch_size=self.eval_batch_size or 256,
                            image_key="image", key_fields={"split": split}, progress=None)

    # ------------------------------------------------------------------ loaders
    def group_labels(self, m: int) -> torch.Tensor:
        """What the m-per-class sampler groups by: ``label``, or (video, block of ``m`` consecutive frames): a group
        never crosses a video boundary."""
        base = self.frames("train")
        if self.positives.use_labels:
            return base.labels
        return base.clips * (10 ** 6) + base.t // m

    def train_dataloader(self) -> DataLoader:
        ds = self._with_features(self.frames("train"), "train")
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if world > 1 and trainer._accelerator_connector.use_distributed_sampler:
            raise ConfigError("RetrievalDataModule's samplers are rank-aware themselves: set "
                              "trainer.use_distributed_sampler: false for a multi-device run (F40)")
        kw = {**self.loader_kwargs(), "collate_fn": _collate}  # num_workers, persistent, pin (CUDA), prefetch
        sampler = self.sampler if self.sampler is not None else RandomBatches()
        if not isinstance(sampler, RetrievalSampler):
            raise ConfigError(f"data sampler={sampler!r}: expected a RetrievalSampler part (class_path in "
                              "data.init_args.sampler) or null; a stage's `data: {sampler: null}` switches to "
                              "shuffled frames, it cannot build a part")
        loader = sampler.loader(ds, self.batch_size, world, rank, self.group_labels, **kw)
        found = loader.batch_sampler
        self.batch_sampler = found if isinstance(found, MPerClassBatchSampler) else None
        return loader

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
            self._example = _collate([train[i] for i in range(min(len(train), EXAMPLE_FRAMES))])
        return self._example

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        trainer = self.trainer
        training = trainer is not None and trainer.training
        if training and "image" in batch and "features" not in batch:
            if self._views is None:
                size = self.augment_args.get("size") or int(batch["image"].shape[-1])
                self._views = TwoViews(**{**self.augment_args, "size": size})
            batch["view1"], batch["view2"] = self._views(batch["image"]), self._views(batch["image"])
        if training and not self.positives.use_labels:  # positives: frames of one video within the window
            same = batch["clip"][:, None] == batch["clip"][None, :]
            near = (batch["t"][:, None] - batch["t"][None, :]).abs() <= self.positives.temporal_window
            batch["pos_mask"] = same & near
        return batch


def _collate(items: list[dict]) -> dict:
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
