"""Gaussian blobs for the toy study (seeded, in memory)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from lit_experiments.core.study import StudyDataModule


class BlobDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def make_blobs(n: int, dim: int, num_classes: int, seed: int, spread: float = 1.0) -> BlobDataset:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1234)) * 3
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = centres[y] + spread * torch.randn(n, dim, generator=g)
    return BlobDataset(x, y)


class ToyDataModule(StudyDataModule):
    """Train / val / test splits of Gaussian blobs; batches ``{"x": (B, dim), "y": (B,)}``.

    For ``lit-exp cv`` the pool is the train split (labels ``y``): with a ``fold`` the fold's train / val
    indices of it replace the train / val splits; the test split stays held out.
    """

    def __init__(self, n_train: int = 256, n_val: int = 63, n_test: int = 63, dim: int = 8, num_classes: int = 3,
                 seed: int = 0, batch_size: int = 32, num_workers: int = 0, fold: dict | None = None) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, fold=fold)
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.dim, self.num_classes, self.seed = dim, num_classes, seed
        self.pool: BlobDataset | None = None

    def fold_pool(self) -> tuple[int, torch.Tensor]:
        pool = self._pool()
        return len(pool), pool.y.numpy()

    def _pool(self) -> BlobDataset:
        if self.pool is None:
            self.pool = make_blobs(self.n_train, self.dim, self.num_classes, self.seed)
        return self.pool

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "train_set", None) is None:
            self.train_set = self._pool()
            self.val_set = make_blobs(self.n_val, self.dim, self.num_classes, self.seed + 1)
            self.test_set = make_blobs(self.n_test, self.dim, self.num_classes, self.seed + 2)
        split = self.fold_split(self._pool())  # every setup: records the fold in results.json
        if split is not None:
            self.train_set, self.val_set = split

    def train_dataloader(self):
        return self.train_loader(self.train_set)

    def val_dataloader(self):
        return self.eval_loader(self.val_set)

    def test_dataloader(self):
        return self.eval_loader(self.test_set)
