"""MultilabelDataModule: frozen SigLIP image and text embeddings of a multi-label set, served from the cache.

Batch keys: ``image_emb`` float (B, Di), ``text_emb`` float (B, Dt) (absent with ``use_text: false``),
``targets`` float 0/1 (B, C), ``index`` int64 (B,) (position in the split's base set: the pool or the test set).

Data (the base splits are in :mod:`.sources`). ``dataset: shapes``: ShapesWorld images (world arguments
default to the stand-in's ``standin.DEFAULT_DATA`` world settings, overridden by ``shapes``) with one side caption
per image from :func:`~.standin.side_caption` (F52: each object named with probability ``caption_name_p``, an
unnamed one mentioned by a colour-only phrase with ``caption_vague_p``; never a category that is absent), drawn
with the run's caption seed, so the text is not a label oracle. ``csv`` / ``jsonl``: a ``MultiLabelFiles`` folder,
``file`` the pool and ``test_file`` the held-out set (same class list), images resized to ``image_size``; an
unknown label raises the reader's ``LabelError`` naming file and line, an unreadable image or (with
``use_text``) a missing caption is an error naming the file (and line) or a counted skip (``on_bad_sample``).
``coco``: COCO-style instances + captions (:class:`~lit_experiments.data.coco.CocoMultiLabel`), ``coco_pool`` /
``coco_test`` its arguments for the pool and the held-out set (``ann_file``, ``image_dir``, ``captions_file``),
the category names as labels, the first caption of each image as its text.

Label space. ``categories``: multi-hot over the world's categories (ShapesWorld's ``labels``);
``color_x_category``: multi-hot over (colour, category) pairs, column ``color * n_categories + category`` with
the colour index into ``shapes.COLORS`` (all 8, whatever the world draws from) - a sparser, more COCO-like
problem; ``label_names`` lists the columns.

Splits. A train pool (world seed ``seed + 2``) and a held-out test set (``seed + 3``); both differ from the
stand-in's training world (``seed``) and its probe world (``seed + 1``). ``fold_pool()`` is
``(n_pool, targets (N, C))`` (iterstrat folds in ``lit-exp cv``); ``setup`` splits the pool with
``fold_split``, or without a fold takes a seeded ``val_fraction`` of the pool for validation. Validation and
test must not share an image or come from the same file (F47, :func:`~lit_experiments.core.splits.check_disjoint`,
record in ``split_info`` -> results.json ``splits``) unless ``allow_val_test_overlap: true``.

Seeds (F50). The images are the data set (world seeds ``seed + 2`` / ``seed + 3``, fixed); every random choice of
a run follows its ``seed_everything`` through :func:`~lit_experiments.core.seeding.run_seed` unless the YAML pins
it: ``caption_seed`` (``"captions"``), ``split_seed`` (``"split"``: the validation share without folds) and
``sampler_seed`` (``"sampler"``: the training order).

Towers. The datamodule owns the frozen :class:`~.towers.SiglipTowers` (constructor part ``towers``, e.g. a
real checkpoint or the demo's :class:`~.standin.StandinTowers`; :meth:`serve_towers` replaces them), so the
module only ever sees embeddings and no gradient can reach a tower. Each split's image and text embeddings are computed once into two
:class:`~lit_experiments.data.cache.FeatureCache` s (one per modality, keyed by ``towers.cache_key()``, the
split's data fingerprint and the modality; not the label space): every fold, ablation and seed reads them.
The text cache's "images" are the tokenized captions: the item key ``tokens`` holds a (2, L) int tensor (ids,
attention mask) padded to the towers' maximum length, which the cache's collate turns into exact floats and
:class:`TowerTexts` back into ids - so FeatureCache serves text embeddings unchanged. Under the
``attention_mask`` policy each caption is encoded alone, unpadded, so an embedding never depends on its batch.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.seeding import run_seed
from lit_experiments.core.study import StudyDataModule

from .sources import LABEL_SPACES, CocoCaptioned, FilesCaptioned, ShapesCaptioned, default_world
from .standin import DEFAULT_DATA
from .towers import SiglipTowers

__all__ = ["CocoCaptioned", "FilesCaptioned", "MultilabelDataModule", "ShapesCaptioned", "default_world"]
FILE_DATASETS = ("csv", "jsonl", "coco")
SPLIT_SEED_OFFSETS = {"pool": 2, "test": 3}  # seed + 0 / + 1: the stand-in's training / probe worlds


class CaptionTokens(Dataset):
    """The captions of a split as cache inputs: item ``tokens`` (2, L) int64 (ids, attention mask), padded to
    the towers' maximum length; ``fingerprint()`` hashes the token ids (a changed tokenizer selects a new cache)."""

    def __init__(self, captions: list[str], towers: SiglipTowers) -> None:
        enc = towers.tokenizer(list(captions), padding="max_length", max_length=towers.text_max_length,
                               truncation=True, return_tensors="pt")
        self.tokens = torch.stack([enc["input_ids"], enc["attention_mask"]], 1).long()
        self._fp = "caption-tokens-" + hashlib.sha1(self.tokens.numpy().tobytes()).hexdigest()[:16]

    def fingerprint(self) -> str:
        return self._fp

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict:
        return {"tokens": self.tokens[int(i)], "index": torch.tensor(int(i))}


class TowerImages:
    """The image tower seen by the frozen-feature cache: ``features([0, 1] images (B,3,H,W)) -> (B, 1, D)``."""

    def __init__(self, towers: SiglipTowers) -> None:
        self.towers, self.name = towers, "multilabel-image"

    def cache_key(self) -> str:
        return f"image:{self.towers.cache_key()}"

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        uint8 = (images * 255.0).round()  # the cache's collate scaled uint8 to [0, 1]; exact again
        return self.towers.encode_image(**self.towers.image_inputs(uint8)).float().unsqueeze(1)


class TowerTexts:
    """The text tower seen by the frozen-feature cache: ``features(tokens (B, 2, L)) -> (B, 1, D)``."""

    def __init__(self, towers: SiglipTowers) -> None:
        self.towers, self.name = towers, "multilabel-text"

    def cache_key(self) -> str:
        return f"text:{self.towers.cache_key()}"

    @torch.no_grad()
    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = tokens[:, 0].round().long(), tokens[:, 1].round().long()
        if self.towers.text_mask_policy == "pad_to_max":
            return self.towers.encode_text(input_ids=ids).float().unsqueeze(1)
        out = [self.towers.encode_text(input_ids=i[m.bool()][None], attention_mask=m[m.bool()][None])
               for i, m in zip(ids, mask)]
        return torch.cat(out).float().unsqueeze(1)


class EmbeddedSplit(Dataset):
    """A split's cached embeddings and targets: items ``image_emb``, ``text_emb`` (when cached), ``targets``,
    ``index``."""

    def __init__(self, images: Dataset, texts: Dataset | None, targets: torch.Tensor) -> None:
        self.images, self.texts, self.targets = images, texts, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        item = {"image_emb": self.images.features(i)[0], "targets": self.targets[i], "index": torch.tensor(i)}
        if self.texts is not None:
            item["text_emb"] = self.texts.features(i)[0]
        return item


class MultilabelDataModule(StudyDataModule):
    """Args:
        towers: the frozen :class:`~.towers.SiglipTowers` whose embeddings are served (required before the
            loaders; :meth:`serve_towers` can hand them over later).
        dataset: ``shapes`` (ShapesWorld with partial captions), ``csv`` / ``jsonl`` (``MultiLabelFiles``),
            ``coco`` (``CocoMultiLabel``, with ``coco_pool`` / ``coco_test``).
        root / file / test_file / classes / image_size: the csv / jsonl folder, its pool and test label files
            (relative to ``root``), the class list (default: the reader's) and the side images are resized to.
        n_pool / n_test: images in the train pool (folds / train + val) and in the held-out test set.
        seed: data seed; the pool's world uses ``seed + 2``, the test world ``seed + 3``.
        shapes: ShapesWorld arguments over the stand-in's default world (``standin.DEFAULT_DATA``).
        caption_color_p / caption_material_p: probability that a named object's colour / material is named
            (default: the stand-in's, 0.0).
        caption_name_p / caption_vague_p: probability that an object is named by its category / that an unnamed
            object is mentioned by a colour-only phrase (F52; ``shapes`` only).
        caption_seed: the captions' seed (null: the run's ``"captions"`` seed).
        label_space: ``categories`` or ``color_x_category`` (8 colours x the world's categories).
        use_text: serve ``text_emb`` (caption embeddings) besides ``image_emb``.
        val_fraction / split_seed: the seeded validation share of the pool when no fold is given (``split_seed``
            null: the run's ``"split"`` seed).
        sampler_seed: the training loader's shuffle seed (null: the run's ``"sampler"`` seed).
        allow_val_test_overlap: accept a validation split that shares images with the test split (F47); the
            record in results.json ``splits`` then says ``tuned_on_test: true``.
        on_bad_sample: ``error`` or ``skip``, counted (the csv / jsonl policy; unused by ``shapes``).
        cache_dir: where the frozen-feature caches live.
        fold: ``{"file": folds.json, "index": k}`` given by ``lit-exp cv``.
    """

    def __init__(
        self, towers: SiglipTowers | None = None, dataset: str = "shapes", n_pool: int = 1024, n_test: int = 512, seed: int = 0,
        shapes: dict[str, Any] | None = None, root: str | None = None, file: str | None = None,
        test_file: str | None = None, classes: list[str] | None = None, image_size: int | None = None,
        caption_color_p: float | None = None, caption_material_p: float | None = None,
        caption_name_p: float = 0.5, caption_vague_p: float = 0.5, caption_seed: int | None = None,
        label_space: str = "categories", use_text: bool = True,
        val_fraction: float = 0.2, split_seed: int | None = None, sampler_seed: int | None = None,
        allow_val_test_overlap: bool = False, on_bad_sample: str = "error",
        cache_dir: str = ".cache/features", batch_size: int = 64, eval_batch_size: int | None = 256,
        num_workers: int = 0, fold: dict[str, Any] | None = None,
        coco_pool: dict[str, Any] | None = None, coco_test: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, eval_batch_size=eval_batch_size, fold=fold)
        if dataset != "shapes" and dataset not in FILE_DATASETS:
            raise ConfigError(f"data.init_args.dataset={dataset!r}; expected 'shapes', 'csv', 'jsonl' or 'coco'")
        if dataset == "coco" and not (root and image_size and coco_pool and coco_test):
            raise ConfigError("data.init_args: dataset coco needs root, image_size, coco_pool and coco_test "
                              "({ann_file, image_dir, captions_file} of the pool and of the held-out set)")
        if dataset in FILE_DATASETS:
            missing = [k for k, v in (("root", root), ("test_file", test_file), ("image_size", image_size)) if not v]
            if missing and dataset != "coco":
                raise ConfigError(f"data.init_args: dataset {dataset} needs {missing} (a MultiLabelFiles folder, its "
                                  "held-out label file, and one image side: the cache stacks images of one size)")
            if label_space != "categories":
                raise ConfigError(f"data.init_args.label_space={label_space!r}: dataset {dataset} has its own class "
                                  "list; use label_space: categories")
        if label_space not in LABEL_SPACES:
            raise ConfigError(f"data.init_args.label_space={label_space!r}; expected one of {LABEL_SPACES}")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.init_args.val_fraction={val_fraction}; expected 0 < val_fraction < 1")
        if n_pool < 2 or n_test < 1:
            raise ConfigError(f"data.init_args.n_pool={n_pool}, n_test={n_test}; expected n_pool >= 2, n_test >= 1")
        if on_bad_sample not in ("error", "skip"):
            raise ConfigError(f"data.init_args.on_bad_sample={on_bad_sample!r}; expected 'error' or 'skip'")
        self.dataset, self.n_pool, self.n_test, self.seed = dataset, int(n_pool), int(n_test), int(seed)
        self.world = {**default_world(), **(shapes or {})}
        unknown = sorted(set(self.world) & {"n", "seed", "num_frames"})
        if unknown:
            raise ConfigError(f"data.init_args.shapes sets {unknown}: use n_pool / n_test / seed (images only)")
        self.color_p = float(DEFAULT_DATA["caption_color_p"] if caption_color_p is None else caption_color_p)
        self.material_p = float(DEFAULT_DATA["caption_material_p"] if caption_material_p is None
                                else caption_material_p)
        for key, value in (("caption_name_p", caption_name_p), ("caption_vague_p", caption_vague_p),
                           ("caption_color_p", self.color_p), ("caption_material_p", self.material_p)):
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"data.init_args.{key}={value}; expected a probability in [0, 1]")
        self.name_p, self.vague_p = float(caption_name_p), float(caption_vague_p)
        self.caption_seed = run_seed(caption_seed, "captions")
        self.label_space, self.use_text = label_space, bool(use_text)
        self.val_fraction, self.on_bad_sample = float(val_fraction), on_bad_sample
        self.split_seed, self.sampler_seed = run_seed(split_seed, "split"), run_seed(sampler_seed, "sampler")
        self.allow_val_test_overlap = bool(allow_val_test_overlap)
        self.cache_dir = cache_dir
        self.root, self.file, self.test_file, self.classes, self.image_size = root, file, test_file, classes, image_size
        self.coco = {"pool": dict(coco_pool or {}), "test": dict(coco_test or {})}
        if dataset in ("csv", "jsonl") and file is None:
            self.file = f"labels.{dataset}"
        self.base: dict[str, ShapesCaptioned | FilesCaptioned] = {}
        self.split_indices: dict[str, list[int]] = {}
        self.towers: SiglipTowers | None = towers
        self._embedded: dict[tuple[str, str], EmbeddedSplit] = {}

    # ------------------------------------------------------------------ data
    def _base(self, split: str) -> ShapesCaptioned | FilesCaptioned:
        if split not in self.base and self.dataset == "coco":
            self.base[split] = CocoCaptioned(str(self.root), self.coco[split], int(self.image_size),
                                             self.on_bad_sample, self.use_text)
        if split not in self.base and self.dataset in FILE_DATASETS:
            classes = self.classes if split == "pool" else self._base("pool").label_names
            self.base[split] = FilesCaptioned(str(self.root), self.file if split == "pool" else self.test_file,
                                              classes, int(self.image_size), self.on_bad_sample, self.use_text)
        if split not in self.base:
            n = self.n_pool if split == "pool" else self.n_test
            self.base[split] = ShapesCaptioned(n, self.seed + SPLIT_SEED_OFFSETS[split], self.world,
                                               self.label_space, self.color_p, self.material_p, self.name_p,
                                               self.vague_p, self.caption_seed)
        return self.base[split]

    def setup(self, stage: str | None = None) -> None:
        pool = self._base("pool")
        self._base("test")
        if self.split_indices:
            return
        fold = self.fold_split(pool)
        if fold is not None:
            train, val = fold
            self.split_indices = {"train": list(train.indices), "val": list(val.indices)}
            self._check_splits()
            return
        n = len(pool)
        n_val = max(1, math.ceil(n * self.val_fraction))
        if n - n_val < 1:
            raise ConfigError(f"data.init_args.val_fraction={self.val_fraction} leaves no training image of "
                              f"n_pool={n}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        self.split_indices = {"train": sorted(order[n_val:]), "val": sorted(order[:n_val])}
        self._check_splits()

    def _check_splits(self) -> None:
        """F47: the validation images (a share of the pool) and the test images share none and are not one file."""
        from lit_experiments.core.splits import check_disjoint

        pool, test = self._base("pool"), self._base("test")
        pool_ids = pool.unit_ids()
        self.split_info = check_disjoint([pool_ids[i] for i in self.split_indices["val"]], test.unit_ids(),
                                         val_name=f"validation share of {pool.source()}", test_name=test.source(),
                                         allow_overlap=self.allow_val_test_overlap, what="images")

    def captions(self, split: str = "test") -> list[str]:
        """The captions of a base split (``pool`` or ``test``), in index order."""
        return list(self._base(split).captions)

    def fold_pool(self) -> tuple[int, Any]:
        pool = self._base("pool")
        return len(pool), pool.targets.numpy()

    @property
    def label_names(self) -> list[str]:
        return self._base("pool").label_names

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    # ------------------------------------------------------------------ towers and caches
    def serve_towers(self, towers: SiglipTowers) -> None:
        """Use ``towers`` (frozen :class:`~.towers.SiglipTowers`) for every split's embeddings (cached)."""
        self.towers = towers

    def _require_towers(self) -> SiglipTowers:
        if self.towers is None:
            raise ConfigError("MultilabelDataModule serves cached tower embeddings: give data.init_args.towers "
                              "(a SiglipTowers class_path) or call datamodule.serve_towers(towers) before the loaders")
        return self.towers

    def embedded(self, base_split: str) -> EmbeddedSplit:
        """Cached embeddings of ``pool`` or ``test`` under the served towers (built on first use)."""
        from lit_experiments.data.cache import FeatureCache

        towers = self._require_towers()
        key = (base_split, towers.cache_key())
        if key not in self._embedded:
            base = self._base(base_split)
            fields = {"split": base_split}
            bs = self.eval_batch_size or 256
            images = FeatureCache(Path(self.cache_dir), TowerImages(towers), base, batch_size=bs, image_key="image",
                                  key_fields={**fields, "modality": "image"}, include_items=False, progress=False)
            texts = None
            if self.use_text:
                texts = FeatureCache(Path(self.cache_dir), TowerTexts(towers), CaptionTokens(base.captions, towers),
                                     batch_size=bs, image_key="tokens", key_fields={**fields, "modality": "text"},
                                     include_items=False, progress=False)
            self._embedded[key] = EmbeddedSplit(images, texts, base.targets)
        return self._embedded[key]

    def split(self, name: str) -> Dataset:
        """``train`` / ``val`` (subsets of the pool) or ``test`` as embedded datasets."""
        self.setup("fit")
        if name == "test":
            return self.embedded("test")
        if name not in self.split_indices:
            raise ValueError(f"split {name!r}; expected 'train', 'val' or 'test'")
        return Subset(self.embedded("pool"), self.split_indices[name])

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.sampler_seed)
        return self.train_loader(self.split("train"), generator=gen)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.split("val"))

    def test_dataloader(self) -> list[DataLoader]:
        """The test split, then the training split as the bank of the module's kNN inference."""
        return [self.eval_loader(self.split("test")), self.eval_loader(self.split("train"))]

    def predict_dataloader(self) -> DataLoader:
        return self.eval_loader(self.split("test"))
