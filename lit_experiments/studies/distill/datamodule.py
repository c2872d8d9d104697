"""DistillDataModule: (image, prompt) units with both models' token ids and the frozen teacher's cached outputs.

Sources. Any split whose items carry ShapesWorld's keys (``image`` uint8 (3,S,S), ``instances`` (S,S) with object
``k`` as id ``k + 1``, padded ``category``, ``num_objects``): ``dataset: shapes`` (ShapesWorld, worlds ``seed``,
``seed + 1``, ``seed + 2`` for train / val / test) or ``coco`` (:class:`~lit_experiments.data.coco.CocoInstances`,
``coco_train`` / ``coco_val`` / ``coco_test`` its arguments; the category names are the prompts).

Splits that cannot leak (F47). ``coco_val: {holdout: F}`` holds out a seeded fraction ``F`` of ``coco_train``'s
images as validation (:func:`~lit_experiments.core.splits.ensure_holdout`: the ids are drawn once and written to
``split_file``, default ``<ann_file>.holdout_<F>.json`` next to the training annotations, and read on every later
run; ``seed``: the draw's seed, default from ``seed_everything``); training then skips them. Before any unit is
served, :meth:`DistillDataModule.check_splits` compares validation with test (the same annotation file and image
folder, or a shared image file) and refuses an overlap naming both, unless ``allow_val_test_overlap: true``;
the record is ``split_info`` (results.json ``splits``; ``tuned_on_test: true`` with the opt-in).

Seeds (F50). ``seed`` is the data's: the ShapesWorld worlds and the fixed validation / test units (so every
seed and every A/B arm is scored on the same test units). The random choices of training (the per-epoch
image order, the training prompts) default to seeds derived from ``seed_everything``
(:func:`~lit_experiments.core.seeding.run_seed`) unless ``shuffle_seed`` / ``prompts.seed`` pin them.

Units. A unit is (image, prompt). The prompt vocabulary is the category names plus ``prompts.generic``; the
targets of a prompt are the visible instances of its category (all instances for a generic prompt, none for an
absent category). Training draws one prompt per image and epoch with :class:`~.prompts.PromptSampler` (kinds at
``prompts.ratios``, deterministic per seed, image and epoch; F24) through :class:`EpochSampler`, whose indices
carry the epoch, so workers and ranks agree. Validation / test units are fixed: every present category, one
absent category and the first generic prompt of each image (seeded).

Token ids. :class:`~.prompts.DualTokenizer` builds the teacher's ids and mask (the teacher's own tokenizer) and
the student's ids (open_clip's tokenizer ``student_tokenizer`` at ``student_context``) from the same string
(F22, F23); a prompt too long for either context is an error naming it.

Teacher outputs. The datamodule owns the frozen teacher (constructor part ``teacher``). Its outputs for every
(image, vocabulary prompt) of a split are computed once into a :class:`~lit_experiments.data.cache.FeatureCache`
(keyed by the teacher's weights, the split's data and the vocabulary) and served as ``teacher`` in each item, so
epochs after the first never run the teacher. Items: ``image``, ``prompt``, ``kind``, ``targets`` ({``masks``
(n,S,S), ``boxes`` (n,4) cxcywh}), ``teacher_input_ids``, ``teacher_attention_mask``, ``student_input_ids``,
``teacher`` (the output contract of one unit), ``index`` (image), ``unit`` (vocabulary index). Batches are
collated by :func:`collate_units` (targets stay a list).
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.seeding import run_seed
from lit_experiments.core.splits import check_disjoint, ensure_holdout
from lit_experiments.core.study import StudyDataModule
from lit_experiments.data.shapes import ShapesWorld

from .components.clips import ClipSplit, Frames, clip_settings, clip_world, collate_clips
from .components.prompts import DEFAULT_GENERIC, DualTokenizer, PromptSampler
from .components.teacher import Sam3Teacher
from .components.teacher_cache import output_cache, vision_cache
from .components.units import SPLITS, EpochSampler, UnitSource, UnitSplit, collate_units

DEFAULT_WORLD: dict[str, Any] = {"image_size": 64, "max_objects": 3, "size_range": (0.25, 0.45), "motion": False}


def student_tokenizer(name: str, context: int) -> Any:
    """open_clip's tokenizer of model ``name`` at ``context`` tokens (offline: the BPE vocabulary ships with
    open_clip), as a callable ``texts -> (N, context)`` ids."""
    import open_clip

    try:
        return open_clip.get_tokenizer(name, context_length=context)
    except Exception as err:  # noqa: BLE001 - a hub tokenizer that is not cached, an unknown name
        raise ConfigError(f"data.init_args.student_tokenizer={name!r}: open_clip cannot build its tokenizer "
                          f"offline ({type(err).__name__}: {err})") from None


class DistillDataModule(StudyDataModule):
    """Args:
        teacher: the frozen :class:`~.teacher.Sam3Teacher` whose outputs are cached and served (``null``: no
            teacher outputs, e.g. ground truth only).
        dataset: ``shapes`` or ``coco``; ``n_train`` / ``n_val`` / ``n_test`` images (shapes), ``seed``.
        shapes: ShapesWorld arguments over :data:`DEFAULT_WORLD`.
        root / coco_train / coco_val / coco_test / image_size: a COCO-style folder and each split's
            ``CocoInstances`` arguments (``ann_file``, ``image_dir``), the image side. ``coco_val`` may instead be
            ``{holdout: F, split_file: null, seed: null}``: a seeded fraction of ``coco_train`` held out (F47).
        allow_val_test_overlap: accept a validation split that equals or overlaps the test split (every number
            of the run is then marked as tuned on test); default: refused (F47).
        shuffle_seed: the training order's seed (default: from ``seed_everything``, F50).
        prompts: :class:`~.prompts.PromptSampler` arguments (``ratios``, ``generic``, ``seed``) and ``per_image``:
            training prompts per image and epoch, distinct where the image allows (:meth:`~.prompts.PromptSampler.
            sample_many`), consecutive in a batch, so ignoring the prompt cannot lower the loss (default 1).
        feature_level: serve the teacher's vision features of this FPN level as ``teacher_features`` (C, h, w),
            cached per image (the ``encoder`` stage sets it; ``null``: not served). Cost: C x h x w float16 per
            image (SAM3 at 1008 px, level -1: 256 x 72 x 72 = 2.6 MB).
        student_tokenizer / student_context: the student's open_clip tokenizer and its context length.
        concept: what a prompt names: ``category`` (the data's category names) or ``color`` (ShapesWorld's colours:
            a unit's targets are the objects of that colour; the demo's stand-in teacher learns colour prompts).
        clips: ShapesWorld clips (:func:`~.clips.clip_settings`: ``n_train`` / ``n_val`` / ``n_test`` clips of
            ``num_frames`` frames; ``null``: none). With clips the test has a second loader, scored apart (F27).
        video: serve clip units for training (the ``video`` stage sets ``data: {video: true}``).
        cache_dir: where the teacher-output caches live.
    """

    def __init__(
        self, teacher: Sam3Teacher | None = None, dataset: str = "shapes", n_train: int = 512, n_val: int = 64,
        n_test: int = 128, seed: int = 0, shapes: dict[str, Any] | None = None, root: str | None = None,
        coco_train: dict[str, Any] | None = None, coco_val: dict[str, Any] | None = None,
        coco_test: dict[str, Any] | None = None, image_size: int | None = None, prompts: dict[str, Any] | None = None,
        student_tokenizer: str = "MobileCLIP-S1", student_context: int = 32, feature_level: int | None = None,
        concept: str = "category", clips: dict[str, Any] | None = None, video: bool = False,
        cache_dir: str = ".cache/features", allow_val_test_overlap: bool = False, shuffle_seed: int | None = None,
        batch_size: int = 16, eval_batch_size: int | None = 64, num_workers: int = 0, fold: dict | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, eval_batch_size=eval_batch_size, fold=fold)
        if dataset not in ("shapes", "coco"):
            raise ConfigError(f"data.init_args.dataset={dataset!r}; expected 'shapes' or 'coco'")
        if dataset == "coco" and not (root and image_size and coco_train and coco_val and coco_test):
            raise ConfigError("data.init_args: dataset coco needs root, image_size and coco_train / coco_val / "
                              "coco_test ({ann_file, image_dir} of each split)")
        if min(n_train, n_val, n_test) < 1:
            raise ConfigError(f"data.init_args: n_train={n_train}, n_val={n_val}, n_test={n_test}; expected >= 1")
        self.teacher, self.dataset, self.seed = teacher, dataset, int(seed)
        self.sizes = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
        self.world = {**DEFAULT_WORLD, **(shapes or {})}
        self.root, self.image_size, self.cache_dir = root, image_size, cache_dir
        self.coco = {"train": coco_train, "val": coco_val, "test": coco_test}
        self.holdout = self._holdout_args(coco_val) if dataset == "coco" else None
        self.allow_val_test_overlap = bool(allow_val_test_overlap)
        self.shuffle_seed = run_seed(shuffle_seed, "distill/order")
        prompts = dict(prompts or {})
        unknown = sorted(set(prompts) - {"ratios", "generic", "seed", "per_image"})
        if unknown:
            raise ConfigError(f"data.init_args.prompts: unknown keys {unknown}; allowed: ratios, generic, seed, "
                              "per_image")
        if int(prompts.get("per_image", 1)) < 1:
            raise ConfigError(f"data.init_args.prompts.per_image={prompts['per_image']!r}; expected >= 1")
        self.prompt_args = prompts
        self.student_tokenizer_name, self.student_context = student_tokenizer, int(student_context)
        self.feature_level = feature_level
        if concept not in ("category", "color") or (concept == "color" and dataset != "shapes"):
            raise ConfigError(f"data.init_args.concept={concept!r}; expected 'category', or 'color' with dataset "
                              "shapes")
        if (clips is not None or video) and dataset != "shapes":
            raise ConfigError("data.init_args.clips / video: clips come from ShapesWorld (dataset shapes) only")
        self.concept, self.clips, self.video = concept, clip_settings(clips), bool(video)
        self._sources: dict[str, UnitSource] = {}
        self._caches: dict[str, Any] = {}
        self._splits: dict[str, UnitSplit] = {}
        self._prepared = False

    # ------------------------------------------------------------------ splits (F47)
    @staticmethod
    def _holdout_args(coco_val: dict[str, Any]) -> dict[str, Any] | None:
        if "holdout" not in coco_val:
            return None
        unknown = sorted(set(coco_val) - {"holdout", "split_file", "seed"})
        if unknown:
            raise ConfigError(f"data.init_args.coco_val: unknown keys {unknown} beside holdout; allowed: holdout, "
                              "split_file, seed")
        fraction = coco_val["holdout"]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ConfigError(f"data.init_args.coco_val.holdout={fraction!r}; expected the fraction of coco_train "
                              "held out as validation, between 0 and 1")
        return {"fraction": float(fraction), "split_file": coco_val.get("split_file"),
                "seed": run_seed(coco_val.get("seed"), "distill/holdout")}

    def _coco_where(self, split: str) -> str:
        from pathlib import Path

        args = self.coco["train" if split == "val" and self.holdout else split]
        where = f"{Path(str(self.root)) / args['ann_file']} with images {Path(str(self.root)) / args['image_dir']}"
        if split == "val" and self.holdout:
            return f"{self.holdout['fraction']} of {where} held out ({self.holdout_file()})"
        return where

    def holdout_file(self) -> Any:
        """The JSON file of the held-out validation ids (``coco_val.split_file`` or beside the train annotations)."""
        from pathlib import Path

        if self.holdout["split_file"]:
            return Path(self.holdout["split_file"])
        ann = Path(str(self.root)) / self.coco["train"]["ann_file"]
        return ann.with_name(f"{ann.stem}.holdout_{self.holdout['fraction']}.json")

    def holdout_ids(self) -> list[str]:
        """The held-out validation image ids of ``coco_train`` (drawn once, then read from :meth:`holdout_file`)."""
        from lit_experiments.data.coco import CocoInstances

        if getattr(self, "_holdout_ids", None) is None:
            pool = CocoInstances(str(self.root), check_files=False, **self.coco["train"]).all_image_ids
            self._holdout_ids = (pool, ensure_holdout(self.holdout_file(), pool, self.holdout["fraction"],
                                                      self.holdout["seed"]))
        return self._holdout_ids[1]

    def split_ids(self, split: str) -> list[str]:
        """The ids two splits are compared by: image files (coco), ``<world seed>/<index>`` (shapes)."""
        src = self.source(split)
        if self.dataset == "coco":
            return src.dataset.image_files()
        return [f"shapes-seed{src.dataset.seed}/{i}" for i in range(len(src))]

    def check_splits(self) -> dict[str, Any]:
        """Refuse a validation split that equals or overlaps the test split (F47); the record is ``split_info``."""
        if self.split_info is None:
            if self.dataset == "coco":
                names = {s: self._coco_where(s) for s in ("val", "test")}
            else:
                names = {s: f"ShapesWorld seed {self.seed + SPLITS.index(s)} ({self.sizes[s]} images)"
                         for s in ("val", "test")}
            self.split_info = check_disjoint(self.split_ids("val"), self.split_ids("test"), val_name=names["val"],
                                             test_name=names["test"], allow_overlap=self.allow_val_test_overlap,
                                             what="images")
        return self.split_info

    # ------------------------------------------------------------------ sources and vocabulary
    def source(self, split: str) -> UnitSource:
        """The images of ``split`` (``train`` / ``val`` / ``test``) or the frames of its clips (``clips-<split>``)."""
        if split not in self._sources:
            if split.startswith("clips-"):
                if self.clips is None:
                    raise ConfigError("data.init_args.clips is not set: no clips to serve (the video stage and the "
                                      "clip test need clips: {n_train, n_val, n_test, num_frames})")
                base = split.removeprefix("clips-")
                self._sources[split] = self._shapes_source(Frames(clip_world(self, base, SPLITS.index(base))))
            elif self.dataset == "shapes":
                ds = ShapesWorld(self.sizes[split], seed=self.seed + SPLITS.index(split), **self.world)
                self._sources[split] = self._shapes_source(ds)
            else:
                from lit_experiments.data.coco import CocoInstances

                args, keep = dict(self.coco[split]), None
                if self.holdout and split in ("train", "val"):
                    args, held = dict(self.coco["train"]), set(self.holdout_ids())
                    keep = [i for i in self._holdout_ids[0] if (str(i) in held) == (split == "val")]
                ds = CocoInstances(str(self.root), image_size=self.image_size, image_ids=keep, **args)
                self._sources[split] = UnitSource(ds, list(ds.categories))
        return self._sources[split]

    def _shapes_source(self, ds: Dataset) -> UnitSource:
        world = ds.world if isinstance(ds, Frames) else ds
        if self.concept == "color":
            return UnitSource(ds, [world.COLOR_NAMES[c] for c in world.colors], key="color",
                              names=list(world.COLOR_NAMES))
        return UnitSource(ds, list(world.categories))

    def prepare(self) -> None:
        """Categories, prompt sampler, vocabulary and both models' ids of every vocabulary prompt."""
        if self._prepared:
            return
        self.check_splits()
        self.categories = self.source("train").categories
        generic = self.prompt_args.get("generic", list(DEFAULT_GENERIC))
        self.generic = list(generic or [])
        self.sampler = PromptSampler(self.categories, generic=self.generic, ratios=self.prompt_args.get("ratios"),
                                     seed=run_seed(self.prompt_args.get("seed"), "distill/prompts"))
        self.vocab = [*self.categories, *self.generic]
        if self.teacher is not None:
            tok = DualTokenizer(self.teacher.tokenizer, student_tokenizer(self.student_tokenizer_name,
                                                                          self.student_context),
                                teacher_max_len=self.teacher.text_max_length, student_context=self.student_context)
            self.vocab_ids = tok.encode(self.vocab)
        else:
            ids = student_tokenizer(self.student_tokenizer_name, self.student_context)(self.vocab)
            self.vocab_ids = {"student_input_ids": torch.as_tensor(ids).long()}
        self._prepared = True

    def teacher_cache(self, split: str):
        """``unit index -> teacher outputs`` of ``split`` (built on first use), or None without a teacher."""
        if self.teacher is None:
            return None
        if split not in self._caches:
            self._caches[split] = output_cache(self, split)
        return self._caches[split]

    def teacher_features(self, split: str):
        """``image index -> (C, h, w)`` teacher vision features of ``split`` at ``feature_level`` (built on first
        use), or None when not served."""
        if self.teacher is None or self.feature_level is None:
            return None
        key = f"features-{split}-{self.feature_level}"
        if key not in self._caches:
            self._caches[key] = vision_cache(self, split, int(self.feature_level))
        return self._caches[key]

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
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = EpochSampler(len(ds), True, self.shuffle_seed, rank, world,
                               int(self.prompt_args.get("per_image", 1)))
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate_units, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.split("val"), collate_fn=collate_units)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The test images; with ``clips``, also the test clips as a second loader (scored apart, F27)."""
        images = self.eval_loader(self.split("test"), collate_fn=collate_units)
        if self.clips is None:
            return images
        return [images, self.eval_loader(self.clip_split("test"), collate_fn=collate_clips,
                                         batch_size=max(1, (self.eval_batch_size or 64) // self.clips["num_frames"]))]
