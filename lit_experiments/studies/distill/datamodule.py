"""DistillDataModule: (image, prompt) units with both models' token ids and the frozen teacher's cached outputs.

Parts (each a ``class_path`` / ``init_args``): ``source`` - the images (:class:`~.components.sources.DistillShapes`:
embedded ShapesWorld, with optional clips; :class:`~.components.sources.DistillCoco`: a COCO-style folder, validation
optionally held out of train once); ``frozen`` - the teacher whose outputs are cached and served
(:class:`~.components.teacher.Sam3Teacher` or the demo's trained stand-in); ``sampler`` - the training order
(:class:`~.components.units.EpochOrder`; ``null``: seeded from ``seed_everything``); ``prompts`` - the training
prompts (:class:`~.components.prompts.PromptSettings`). Items are any split whose items carry ShapesWorld's keys
(``image`` uint8 (3,S,S), ``instances`` (S,S) with object ``k`` as id ``k + 1``, padded ``category``,
``num_objects``).

Splits that cannot leak (F47). Before any unit is served, :meth:`DistillDataModule.check_splits` compares
validation with test (the same annotation file and image folder, or a shared image file) and refuses an overlap
naming both, unless the source says ``allow_val_test_overlap: true``; the record is ``split_info`` (results.json
``splits``; ``tuned_on_test: true`` with the opt-in).

Seeds (F50). The source's ``seed`` is the data's: the ShapesWorld worlds and the fixed validation / test units (so
every seed and every A/B arm is scored on the same test units). The random choices of training (the per-epoch
image order, the training prompts) default to seeds derived from ``seed_everything``
(:func:`~lit_experiments.core.seeding.run_seed`) unless ``sampler.seed`` / ``prompts.seed`` pin them.

Units. A unit is (image, prompt). The prompt vocabulary is the category names plus ``prompts.generic``; the
targets of a prompt are the visible instances of its category (all instances for a generic prompt, none for an
absent category). Training draws one prompt per image and epoch with :class:`~.components.prompts.PromptSampler`
(kinds at ``prompts.ratios``, deterministic per seed, image and epoch; F24) through the sampler, whose indices
carry the epoch, so workers and ranks agree. Validation / test units are fixed: every present category, one absent
category and the first generic prompt of each image (seeded).

Token ids. :class:`~.components.prompts.DualTokenizer` builds the teacher's ids and mask (the teacher's own
tokenizer) and the student's ids from the same string (F22, F23); a prompt too long for either context is an error
naming it. The student's tokenizer and context are read from the model's text tower (the trainer's module
``student.text_encoder``, or ``text_tower`` when set by hand), never typed again in the data; without a model at
hand the items carry no ``student_input_ids`` and :class:`~.module.DistillModule` tokenizes the prompts with its
own tower.

Teacher outputs. The frozen teacher's outputs for every (image, vocabulary prompt) of a split are computed once into
a :class:`~lit_experiments.data.cache.FeatureCache` (keyed by the teacher's weights, the split's data and the
vocabulary) and served as ``teacher`` in each item, so epochs after the first never run the teacher. Items:
``image``, ``prompt``, ``kind``, ``targets`` ({``masks`` (n,S,S), ``boxes`` (n,4) cxcywh}), ``teacher_input_ids``,
``teacher_attention_mask``, ``student_input_ids``, ``teacher`` (the output contract of one unit), ``index``
(image), ``unit`` (vocabulary index). Batches are collated by :func:`collate_units` (targets stay a list). Stage
overrides: ``feature_level`` (serve the teacher's vision features of that FPN level as ``teacher_features``
(C, h, w), cached per image; the ``encoder`` stage) and ``video`` (serve clip units; the ``video`` stage).
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from lit_experiments.core.seeding import run_seed
from lit_experiments.core.specs import as_dataclass
from lit_experiments.core.splits import check_disjoint
from lit_experiments.core.study import StudyDataModule

from .components.clips import ClipSplit, collate_clips
from .components.prompts import DualTokenizer, PromptSampler, PromptSettings, student_ids
from .components.sources import DistillCoco, DistillShapes
from .components.teacher import Sam3Teacher
from .components.teacher_cache import output_cache, vision_cache
from .components.units import EpochOrder, EpochSampler, UnitSource, UnitSplit, collate_units

__all__ = ["DistillDataModule", "EpochSampler", "collate_units"]


class DistillDataModule(StudyDataModule):
    """Args:
        source: the images (:class:`~.components.sources.DistillShapes` or :class:`~.components.sources.DistillCoco`).
        frozen: the frozen :class:`~.components.teacher.Sam3Teacher` whose outputs are cached and served (``null``:
            no teacher outputs, e.g. ground truth only).
        prompts: the keys of :class:`~.components.prompts.PromptSettings` (``ratios``, ``generic``, ``seed``,
            ``per_image``; a mapping, so a delta that sets one key keeps the base's others, F48).
        sampler: the training order (:class:`~.components.units.EpochOrder`; ``null``: its default).
        cache_dir: where the teacher-output caches live.
        batch_size / eval_batch_size / num_workers / fold: the loaders (:class:`StudyDataModule`).

    Stage overrides (attributes, not arguments): ``feature_level`` (serve the teacher's vision features of this FPN
    level, cached per image; cost C x h x w float16 per image, SAM3 at 1008 px, level -1: 256 x 72 x 72 = 2.6 MB)
    and ``video`` (serve clip units for training).
    """

    def __init__(
        self, source: DistillShapes | DistillCoco, frozen: Sam3Teacher | None = None,
        prompts: dict[str, Any] | None = None, sampler: EpochOrder | None = None, cache_dir: str = ".cache/features",
        batch_size: int = 16, eval_batch_size: int | None = 64, num_workers: int = 0, fold: dict | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, eval_batch_size=eval_batch_size, fold=fold)
        self.source, self.frozen, self.cache_dir = source, frozen, cache_dir
        self.sampler = sampler or EpochOrder()
        self.prompts = as_dataclass(PromptSettings, prompts, "data.init_args.prompts") or PromptSettings()
        self.feature_level: int | None = None
        self.video = False
        #: the student's text tower whose tokenizer and context make ``student_input_ids`` (default: the module's)
        self.text_tower: Any = None
        self._student_key: tuple | None = None
        self._sources: dict[str, UnitSource] = {}
        self._caches: dict[str, Any] = {}
        self._splits: dict[str, Any] = {}
        self._prepared = False

    @property
    def clips(self) -> Any:
        """The source's clip sizes (None: no clips)."""
        return getattr(self.source, "clips", None)

    # ------------------------------------------------------------------ splits (F47)
    def split_ids(self, split: str) -> list[str]:
        """The ids two splits are compared by: image files (coco), ``<world seed>/<index>`` (shapes)."""
        return self.source.split_ids(split, self.unit_source(split))

    def check_splits(self) -> dict[str, Any]:
        """Refuse a validation split that equals or overlaps the test split (F47); the record is ``split_info``."""
        if self.split_info is None:
            names = {s: self.source.split_name(s) for s in ("val", "test")}
            self.split_info = check_disjoint(self.split_ids("val"), self.split_ids("test"), val_name=names["val"],
                                             test_name=names["test"],
                                             allow_overlap=self.source.allow_val_test_overlap, what="images")
        return self.split_info

    # ------------------------------------------------------------------ sources and vocabulary
    def unit_source(self, split: str) -> UnitSource:
        """The images of ``split`` (``train`` / ``val`` / ``test``) or the frames of its clips (``clips-<split>``)."""
        if split not in self._sources:
            self._sources[split] = self.source.units(split)
        return self._sources[split]

    def prepare(self) -> None:
        """Categories, prompt sampler, vocabulary and both models' ids of every vocabulary prompt."""
        if self._prepared:
            self._student_ids()
            return
        self.check_splits()
        self.categories = self.unit_source("train").categories
        self.generic = list(self.prompts.generic or [])
        self.prompt_sampler = PromptSampler(self.categories, generic=self.generic, ratios=self.prompts.ratios,
                                            seed=run_seed(self.prompts.seed, "distill/prompts"))
        self.vocab = [*self.categories, *self.generic]
        self.vocab_ids: dict[str, torch.Tensor] = {}
        if self.frozen is not None:
            ids, mask = DualTokenizer(self.frozen.tokenizer, None,
                                      teacher_max_len=self.frozen.text_max_length).teacher_encode(self.vocab)
            self.vocab_ids = {"teacher_input_ids": ids, "teacher_attention_mask": mask}
        self._prepared = True
        self._student_ids()

    def student_text(self) -> Any:
        """The student's text tower: ``text_tower`` when set, else the trainer's module ``student.text_encoder``
        (None without either)."""
        if self.text_tower is not None:
            return self.text_tower
        trainer = self.trainer
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        student = getattr(module, "student", None)
        return getattr(student, "text_encoder", None)

    def _student_ids(self) -> None:
        """``vocab_ids["student_input_ids"]`` from the student's own tower (its tokenizer at its context)."""
        tower = self.student_text()
        if tower is None:
            return
        key = (id(tower), getattr(tower, "model_name", None), int(tower.context_length))
        if key != self._student_key:
            self.vocab_ids["student_input_ids"] = student_ids(tower.tokenizer(), self.vocab,
                                                              int(tower.context_length))
            self._student_key = key

    def teacher_cache(self, split: str):
        """``unit index -> teacher outputs`` of ``split`` (built on first use), or None without a teacher."""
        if self.frozen is None:
            return None
        if split not in self._caches:
            self._caches[split] = output_cache(self, split)
        return self._caches[split]

    def teacher_features(self, split: str):
        """``image index -> (C, h, w)`` teacher vision features of ``split`` at ``feature_level`` (built on first
        use), or None when not served."""
        if self.frozen is None or self.feature_level is None:
            return None
        key = f"features-{split}-{self.feature_level}"
        if key not in self._caches:
            self._caches[key] = vision_cache(self, split, int(self.feature_level))
        return self._caches[key]

    def build_caches(self, split: str, features: bool = True) -> None:
        """Fill ``split``'s teacher caches here, in the process that holds the teacher on its device, before a
        DataLoader forks workers: built lazily on a worker's first item, each of ``num_workers`` workers would run
        the whole teacher over the split on the CPU at once (a copy of the teacher per worker)."""
        self.teacher_cache(split)
        if features:
            self.teacher_features(split)

    def split(self, name: str) -> UnitSplit:
        self.prepare()
        if name not in self._splits:
            self._splits[name] = UnitSplit(self, name)
        return self._splits[name]

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    # ------------------------------------------------------------------ loaders
    def clip_split(self, name: str) -> ClipSplit:
        self.prepare()
        key = f"clips-{name}"
        if key not in self._splits:
            self._splits[key] = ClipSplit(self, name)
        return self._splits[key]

    def train_dataloader(self) -> DataLoader:
        ds = self.clip_split("train") if self.video else self.split("train")
        self.build_caches("train", features=not self.video)  # a clip item reads no vision features
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = self.sampler.sampler(len(ds), rank, world, int(self.prompts.per_image))
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate_units, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        ds = self.split("val")
        self.build_caches("val")
        return self.eval_loader(ds, collate_fn=collate_units)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The test images; with ``clips``, also the test clips as a second loader (scored apart, F27)."""
        split = self.split("test")
        self.build_caches("test")
        images = self.eval_loader(split, collate_fn=collate_units)
        if self.clips is None:
            return images
        return [images, self.eval_loader(self.clip_split("test"), collate_fn=collate_clips,
                                         batch_size=max(1, (self.eval_batch_size or 64) // self.clips.num_frames))]
