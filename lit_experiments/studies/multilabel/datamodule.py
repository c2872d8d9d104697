"""MultilabelDataModule: frozen SigLIP image and text embeddings of a multi-label set, served from the cache.

Batch keys: ``image_emb`` float (B, Di), ``text_emb`` float (B, Dt) (absent with ``use_text: false``),
``targets`` float 0/1 (B, C), ``index`` int64 (B,) (position in the split's base set: the pool or the test set).

Parts (constructor arguments, ``class_path`` in the YAML):

* ``frozen``: the frozen towers (:class:`~.towers.SiglipTowers` / :class:`~.towers.Siglip2Towers`, a real
  checkpoint, or the demo's :class:`~.standin.StandinTowers`; :meth:`serve_frozen` replaces them). The module reads
  them as ``self.frozen`` (``StudyModule.frozen``) and only ever sees embeddings: no gradient can reach a tower.
* ``source``: where the images, labels and captions come from (:mod:`.sources`): ShapesWorld with noisy side
  captions (:class:`~.sources.ShapesCaptionSource`, F52), a csv / jsonl folder
  (:class:`~.sources.FileCaptionSource`) or COCO with captions (:class:`~.sources.CocoCaptionSource`). Each gives
  a train pool and a held-out test set; the number of classes comes from the data, a file source's image side from
  the towers.

Splits. ``fold_pool()`` is ``(n_pool, targets (N, C))`` (iterstrat folds in ``lit-exp cv``); ``setup`` splits the
pool with ``fold_split``, or without a fold takes a seeded ``splits.val_fraction`` of the pool for validation.
Validation and test must not share an image or come from the same file (F47,
:func:`~lit_experiments.core.splits.check_disjoint`, record in ``split_info`` -> results.json ``splits``) unless
``allow_val_test_overlap: true``.

Seeds (F50). The images are the data set (fixed); every random choice of a run follows its ``seed_everything``
through :func:`~lit_experiments.core.seeding.run_seed` unless the YAML pins it: the source's caption seed
(``"captions"``), ``splits.split_seed`` (``"split"``: the validation share without folds) and
``splits.sampler_seed`` (``"sampler"``: the training order).

Caches. Each split's image and text embeddings are computed once into two
:class:`~lit_experiments.data.cache.FeatureCache` s (one per modality, keyed by ``frozen.cache_key()``, the
split's data fingerprint and the modality; not the label space): every fold, ablation and seed reads them.
The text cache's "images" are the tokenized captions: the item key ``tokens`` holds a (2, L) int tensor (ids,
attention mask) padded to the towers' maximum length, which the cache's collate turns into exact floats and
:class:`TowerTexts` back into ids - so FeatureCache serves text embeddings unchanged. Under the
``attention_mask`` policy each caption is encoded alone, unpadded, so an embedding never depends on its batch.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.seeding import run_seed
from lit_experiments.core.study import StudyDataModule

from .sources import FilesCaptioned, MultilabelSource, ShapesCaptioned, ShapesCaptionSource
from .towers import SiglipTowers

__all__ = ["MultilabelDataModule", "MultilabelSplits"]


@dataclass
class MultilabelSplits:
    """How the pool becomes train and validation without a fold, and the training order.

    ``val_fraction``: the seeded validation share of the pool; ``split_seed``: its seed (null: the run's
    ``"split"`` seed); ``sampler_seed``: the training loader's shuffle seed (null: the run's ``"sampler"`` seed)."""

    val_fraction: float = 0.2
    split_seed: int | None = None
    sampler_seed: int | None = None


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
        frozen: the frozen towers whose embeddings are served (required before the loaders; :meth:`serve_frozen`
            can hand them over later).
        source: the data source part (default :class:`~.sources.ShapesCaptionSource`).
        use_text: serve ``text_emb`` (caption embeddings) besides ``image_emb``.
        splits: :class:`MultilabelSplits` (validation share and seeds without a fold).
        allow_val_test_overlap: accept a validation split that shares images with the test split (F47); the
            record in results.json ``splits`` then says ``tuned_on_test: true``.
        cache_dir: where the frozen-feature caches live.
        batch_size / eval_batch_size / num_workers: the loaders.
        fold: ``{"file": folds.json, "index": k}`` given by ``lit-exp cv``.
    """

    def __init__(
        self, frozen: SiglipTowers | None = None, source: MultilabelSource | None = None, use_text: bool = True,
        splits: MultilabelSplits | None = None, allow_val_test_overlap: bool = False,
        cache_dir: str = ".cache/features", batch_size: int = 64, eval_batch_size: int | None = 256,
        num_workers: int = 0, fold: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, eval_batch_size=eval_batch_size, fold=fold)
        source = ShapesCaptionSource() if source is None else source
        if not isinstance(source, MultilabelSource):
            raise ConfigError(f"data.init_args.source={source!r}; expected a source part (class_path of "
                              "ShapesCaptionSource, FileCaptionSource or CocoCaptionSource in "
                              "lit_experiments.studies.multilabel.sources)")
        splits = splits or MultilabelSplits()
        if not 0.0 < splits.val_fraction < 1.0:
            raise ConfigError(f"data.init_args.splits.val_fraction={splits.val_fraction}; expected 0 < val_fraction < 1")
        self.source, self.use_text = source, bool(use_text)
        self.val_fraction = float(splits.val_fraction)
        self.split_seed = run_seed(splits.split_seed, "split")
        self.sampler_seed = run_seed(splits.sampler_seed, "sampler")
        self.allow_val_test_overlap = bool(allow_val_test_overlap)
        self.cache_dir = cache_dir
        self.base: dict[str, ShapesCaptioned | FilesCaptioned] = {}
        self.split_indices: dict[str, list[int]] = {}
        self.frozen: SiglipTowers | None = frozen
        self._embedded: dict[tuple[str, str], EmbeddedSplit] = {}

    # ------------------------------------------------------------------ data
    def _base(self, split: str) -> ShapesCaptioned | FilesCaptioned:
        if split not in self.base:
            pool = None if split == "pool" else self._base("pool")
            size = self.frozen.image_size if self.frozen is not None else None
            self.base[split] = self.source.split(split, self.use_text, size, pool)
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

    @property
    def label_space(self) -> str:
        return self.source.label_space

    # ------------------------------------------------------------------ towers and caches
    def serve_frozen(self, towers: SiglipTowers) -> None:
        """Use ``towers`` (frozen :class:`~.towers.SiglipTowers`) for every split's embeddings (cached)."""
        self.frozen = towers

    def _require_frozen(self) -> SiglipTowers:
        if self.frozen is None:
            raise ConfigError("MultilabelDataModule serves cached tower embeddings: give data.init_args.frozen "
                              "(a SiglipTowers class_path) or call datamodule.serve_frozen(towers) before the loaders")
        return self.frozen

    def embedded(self, base_split: str) -> EmbeddedSplit:
        """Cached embeddings of ``pool`` or ``test`` under the served towers (built on first use)."""
        from lit_experiments.data.cache import FeatureCache

        towers = self._require_frozen()
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
