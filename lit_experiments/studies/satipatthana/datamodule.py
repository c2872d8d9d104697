"""Data for the Satipatthana study: one datamodule, its data set a ``source:`` part: ``CirclesSource`` (sklearn
make_circles, 2-D), ``DigitsSource`` (sklearn load_digits, images), ``ShapesObjectSource`` (ShapesWorld images).
A source loads every sample and draws the out-of-distribution "void" samples of its kind of data; the
datamodule splits, pairs and serves them.

Every batch is a dict:
  ``x`` (B, ...) float input, ``y`` (B,) int64 label, ``x_void`` (B, ...) an out-of-distribution input of
  the same shape (stage 1's void-energy term, stage 2's void path, the trust AUROC), ``void_kind`` (B,)
  int64 index into ``void_kinds``, ``index`` (B,) int64 position of the sample in its split and ``x_partner``
  (B, ...) the input of another sample of the split (item ``(i + n // 2) % n``). The test seeds each sample's
  noise by ``index`` and builds the mismatch path from ``x_partner``, so a sample's test numbers do not depend
  on the batch or rank it lands in (F44).
Splits are stratified and drawn once from the data seed; void pools use their own seeds per split. The data seed
(the generated data set, the split, the void pools) and the training order come from the run's ``seed_everything``
through ``core.seeding.run_seed`` unless ``seed`` pins them (F50). Validation and test are parts of one sample
array, checked disjoint by sample id (``core.splits.check_disjoint``, F47; the record is ``self.split_info``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from lit_experiments.core.seeding import run_seed
from lit_experiments.core.splits import check_disjoint
from lit_experiments.core.study import StudyDataModule


class SatipatthanaSet(Dataset):
    """Item ``i`` is ``{x, y, x_void, void_kind, index, x_partner}``.

    With a void pool larger than the data (``random_void``) each item draws its void sample from the pool
    with the global RNG (seeded by ``seed_everything``); otherwise void sample ``i`` is paired with item ``i``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, x_void: torch.Tensor, void_kind: torch.Tensor,
                 random_void: bool = False) -> None:
        if len(x) != len(y) or len(x_void) != len(void_kind) or len(x_void) < len(x):
            raise ValueError("SatipatthanaSet: x/y and x_void/void_kind must pair up, with at least one void "
                             "sample per item")
        self.x, self.y, self.x_void, self.void_kind = x, y, x_void, void_kind
        self.random_void = random_void

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = int(torch.randint(len(self.x_void), ())) if self.random_void else i
        partner = (i + len(self.x) // 2) % len(self.x)
        return {"x": self.x[i], "y": self.y[i], "x_void": self.x_void[j], "void_kind": self.void_kind[j],
                "index": torch.tensor(i, dtype=torch.long), "x_partner": self.x[partner]}


class SatipatthanaSource:
    """A data set of the study: every sample (:meth:`load`) and its void generators (:meth:`make_void`).

    ``known_void_kinds`` names the void generators the source has; the datamodule's ``void_kinds`` picks from them.
    """

    known_void_kinds: tuple[str, ...] = ()

    def load(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sample ``(x, y)``; ``seed`` is the data seed (generated data sets draw from it)."""
        raise NotImplementedError

    def make_void(self, kind: str, n: int, gen: torch.Generator, reference: torch.Tensor) -> torch.Tensor:
        """``n`` void samples of ``kind`` drawn with ``gen``; ``reference`` holds the training samples."""
        raise NotImplementedError


class SatipatthanaDataModule(StudyDataModule):
    """Splits the ``source``'s samples (stratified), pairs each split with a void pool and serves the batches.

    Args:
        source: the data set (``CirclesSource`` / ``DigitsSource`` / ``ShapesObjectSource``); default: circles.
        batch_size / eval_batch_size / num_workers: loader settings.
        seed: pins the data seed (generated data, split, void pools) and the training order; None (default):
            derived from the run's ``seed_everything`` (F50).
        val_fraction / test_fraction: fractions of all samples (stratified).
        void_kinds: which of the source's void generators to mix (equal shares); default: all of them.
        train_void_factor: the training void pool holds this many void samples per training sample.
        train_void_kinds: void kinds of the training pool (default: ``void_kinds``); val/test use ``void_kinds``.
    """

    def __init__(self, source: SatipatthanaSource | None = None, batch_size: int = 64,
                 eval_batch_size: int | None = 256, num_workers: int = 0, seed: int | None = None,
                 val_fraction: float = 0.1, test_fraction: float = 0.2,
                 void_kinds: list[str] | tuple[str, ...] | None = None, train_void_factor: int = 1,
                 train_void_kinds: list[str] | tuple[str, ...] | None = None) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, eval_batch_size=eval_batch_size)
        if not (0 <= val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(f"val_fraction={val_fraction}, test_fraction={test_fraction}: need fractions in [0, 1) "
                             "with a test share > 0 and a non-empty train share")
        self.source = source if source is not None else CirclesSource()
        known = list(self.source.known_void_kinds)
        kinds = list(void_kinds) if void_kinds is not None else known
        train_kinds = list(train_void_kinds) if train_void_kinds is not None else kinds
        for name, value in (("void_kinds", kinds), ("train_void_kinds", train_kinds)):
            bad = [k for k in value if k not in known]
            if bad or not value:
                raise ValueError(f"{name}={value}: expected a non-empty list from {known} "
                                 f"(the void kinds of {type(self.source).__name__})")
        self.train_void_kinds = train_kinds
        if train_void_factor < 1:
            raise ValueError(f"train_void_factor={train_void_factor} must be >= 1")
        self.train_void_factor = train_void_factor
        self.seed = seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.void_kinds = kinds
        self.splits: dict[str, SatipatthanaSet] = {}
        self.split_ids: dict[str, list[int]] = {}  # positions in the loaded sample array, per split
        self._order: torch.Generator | None = None

    @property
    def data_seed(self) -> int:
        """The seed of the generated data, the split and the void pools (``seed``, else from the run's seed)."""
        return run_seed(self.seed, "satipatthana/data")

    # ------------------------------------------------------------- plumbing
    @property
    def num_classes(self) -> int:
        self.setup()
        return int(self.splits["train"].y.max()) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        self.setup()
        return tuple(self.splits["train"].x.shape[1:])

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    def _voids(self, n: int, seed: int, reference: torch.Tensor,
               names: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` void samples in equal shares of ``names``; ``void_kind`` indexes ``self.void_kinds`` (-1: train-only kind)."""
        names = names or self.void_kinds
        gen = torch.Generator().manual_seed(seed)
        share = np.array_split(np.arange(n), len(names))
        parts = [self.source.make_void(k, len(idx), gen, reference) for k, idx in zip(names, share)]
        kinds = torch.cat([torch.full((len(idx),), self.void_kinds.index(k) if k in self.void_kinds else -1,
                                      dtype=torch.long) for k, idx in zip(names, share)])
        x_void = torch.cat(parts)
        perm = torch.randperm(n, generator=gen)
        return x_void[perm], kinds[perm]

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        seed = self.data_seed
        x, y = self.source.load(seed)
        idx = np.arange(len(x))
        rest, test = train_test_split(idx, test_size=self.test_fraction, random_state=seed, stratify=y.numpy())
        val_share = self.val_fraction / (1 - self.test_fraction)
        if self.val_fraction > 0:
            train, val = train_test_split(rest, test_size=val_share, random_state=seed, stratify=y[rest].numpy())
        else:
            train, val = rest, rest[:0]
        source = f"{type(self.source).__name__}(seed={seed})"
        self.split_info = check_disjoint(val.tolist(), test.tolist(), val_name=f"{source} validation part",
                                         test_name=f"{source} test part", what="sample ids")
        reference = x[train]
        for offset, (name, part) in enumerate((("train", train), ("val", val), ("test", test))):
            factor = self.train_void_factor if name == "train" else 1
            names = self.train_void_kinds if name == "train" else self.void_kinds
            xv, kv = self._voids(factor * len(part), seed * 1000 + 17 + offset, reference, names)
            self.splits[name] = SatipatthanaSet(x[part], y[part], xv, kv, random_void=factor > 1)
            self.split_ids[name] = [int(i) for i in part]

    def train_dataloader(self):
        self.setup()
        if self._order is None:  # one generator for the run: later stages continue its order (F50)
            self._order = torch.Generator().manual_seed(run_seed(self.seed, "satipatthana/order"))
        return self.train_loader(self.splits["train"], generator=self._order)

    def val_dataloader(self):
        self.setup()
        return self.eval_loader(self.splits["val"]) if len(self.splits["val"]) else []

    def test_dataloader(self):
        self.setup()
        return self.eval_loader(self.splits["test"])


def min_distance_to(points: torch.Tensor, reference: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Distance of every point to its nearest reference point (chunked ``cdist``)."""
    out = [torch.cdist(points[i:i + chunk], reference).min(dim=1).values for i in range(0, len(points), chunk)]
    return torch.cat(out) if out else points.new_zeros(0)


class CirclesSource(SatipatthanaSource):
    """sklearn ``make_circles`` (2-D) with void sets filtered away from the training points.

    Void kinds (every one rejects points closer than ``void_min_distance`` to a training point):
    ``gaussian`` N(0, gaussian_std^2), ``uniform`` U[-uniform_range, uniform_range]^2 and ``filtered``
    U[-1.5, 1.5]^2 (the data's own box, the hardest: holes and gaps between the rings).
    """

    known_void_kinds = ("gaussian", "uniform", "filtered")

    def __init__(self, n_samples: int = 2000, noise: float = 0.1, factor: float = 0.5, void_min_distance: float = 0.1,
                 gaussian_std: float = 1.0, uniform_range: float = 2.0) -> None:
        if n_samples < 20 or noise < 0 or not 0 < factor < 1 or void_min_distance < 0:
            raise ValueError(f"CirclesSource: n_samples={n_samples} (>= 20), noise={noise} (>= 0), "
                             f"factor={factor} (0..1), void_min_distance={void_min_distance} (>= 0)")
        self.n_samples, self.noise, self.factor = n_samples, noise, factor
        self.void_min_distance = void_min_distance
        self.gaussian_std, self.uniform_range = gaussian_std, uniform_range

    def load(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.datasets import make_circles

        x, y = make_circles(n_samples=self.n_samples, noise=self.noise, factor=self.factor, random_state=seed)
        return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)

    def _propose(self, kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
        if kind == "gaussian":
            return self.gaussian_std * torch.randn(n, 2, generator=gen)
        half = self.uniform_range if kind == "uniform" else 1.5
        return (torch.rand(n, 2, generator=gen) * 2 - 1) * half

    def make_void(self, kind: str, n: int, gen: torch.Generator, reference: torch.Tensor) -> torch.Tensor:
        kept: list[torch.Tensor] = []
        total = 0
        for _ in range(100):
            cand = self._propose(kind, max(4 * n, 64), gen)
            cand = cand[min_distance_to(cand, reference) > self.void_min_distance]
            kept.append(cand)
            total += len(cand)
            if total >= n:
                return torch.cat(kept)[:n]
        raise RuntimeError(f"void kind {kind!r}: could not draw {n} points farther than "
                           f"void_min_distance={self.void_min_distance} from the data")


class SatipatthanaImageSource(SatipatthanaSource):
    """Image void kinds: ``gaussian`` (clamped N(mean, std) pixels), ``uniform`` U[0, 1] pixels and
    ``scrambled`` (a training image with its pixels permuted: same intensities, no structure)."""

    known_void_kinds = ("gaussian", "uniform", "scrambled")

    def make_void(self, kind: str, n: int, gen: torch.Generator, reference: torch.Tensor) -> torch.Tensor:
        shape = reference.shape[1:]
        if kind == "gaussian":
            mean, std = reference.mean().item(), reference.std().item()
            return (mean + std * torch.randn(n, *shape, generator=gen)).clamp(0, 1)
        if kind == "uniform":
            return torch.rand(n, *shape, generator=gen)
        src = reference[torch.randint(len(reference), (n,), generator=gen)].flatten(1)
        perm = torch.argsort(torch.rand(src.shape, generator=gen), dim=1)
        return src.gather(1, perm).reshape(n, *shape)


class DigitsSource(SatipatthanaImageSource):
    """sklearn ``load_digits`` (1797 8x8 images, 10 classes) resized bilinearly to ``image_size``, in [0, 1]."""

    def __init__(self, image_size: int = 16) -> None:
        if image_size < 8:
            raise ValueError(f"DigitsSource: image_size={image_size} must be >= 8")
        self.image_size = image_size

    def load(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.as_tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
        if self.image_size != 8:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return x.clamp(0, 1), torch.as_tensor(data.target, dtype=torch.long)


class ShapesObjectSource(SatipatthanaImageSource):
    """ShapesWorld single-object images; the label is the object's category."""

    def __init__(self, n_samples: int = 2000, image_size: int = 32) -> None:
        if n_samples < 20 or image_size < 8:
            raise ValueError(f"ShapesObjectSource: n_samples={n_samples} (>= 20), image_size={image_size} (>= 8)")
        self.n_samples, self.image_size = n_samples, image_size

    def load(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        from lit_experiments.data.shapes import ShapesWorld

        world = ShapesWorld(self.n_samples, image_size=self.image_size, num_frames=None, max_objects=1, seed=seed)
        items = [world[i] for i in range(self.n_samples)]
        x = torch.stack([torch.as_tensor(np.asarray(it["image"])) for it in items]).float() / 255.0
        y = torch.as_tensor(np.stack([np.asarray(it["category"]).reshape(-1)[0] for it in items]), dtype=torch.long)
        return x, y
