"""MPerClassBatchSampler: m per class in every batch, disjoint batches across DDP ranks, epochs (F39, F40)."""
from __future__ import annotations

from collections import Counter

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import DataLoader, TensorDataset

from lit_experiments.core.errors import ConfigError
from lit_experiments.studies.retrieval.sampler import MPerClassBatchSampler


def labels_uneven(seed: int = 0, n: int = 600, n_classes: int = 25) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(n_classes, size=n, p=rng.dirichlet(np.ones(n_classes) * 2))


def check_ranks(per_rank: list[list[list[int]]], labels: np.ndarray, m: int, batch_size: int) -> None:
    """Asserts the F40 contract on the batches each rank yields in one epoch."""
    assert len({len(b) for b in per_rank}) == 1, "ranks yield different numbers of batches"
    seen: Counter[int] = Counter()
    for batches in per_rank:
        for batch in batches:
            assert len(batch) == batch_size
            counts = Counter(labels[batch].tolist())
            assert len(counts) == batch_size // m and set(counts.values()) == {m}, counts
        seen.update({i for batch in batches for i in batch})  # each rank counts an index once
    overlap = [i for i, c in seen.items() if c > 1]
    assert not overlap, f"{len(overlap)} sample indices appear on two ranks"
    flat = [i for batches in per_rank for batch in batches for i in batch]
    assert len(flat) == len(set(flat)), "an index appears twice in one epoch"


def two_ranks(labels: np.ndarray, m: int, batch_size: int, epoch: int = 0, seed: int = 0) -> list[list[list[int]]]:
    out = []
    for rank in range(2):
        sampler = MPerClassBatchSampler(labels, m, batch_size, num_replicas=2, rank=rank, seed=seed)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
        assert len(out[-1]) == len(sampler)
    return out


def test_f40_two_ranks_disjoint_m_per_class() -> None:
    labels = labels_uneven()
    epoch0 = two_ranks(labels, 4, 32)
    check_ranks(epoch0, labels, 4, 32)
    assert len(epoch0[0]) >= 5
    assert two_ranks(labels, 4, 32) == epoch0  # same seed and epoch: same batches on every call
    epoch1 = two_ranks(labels, 4, 32, epoch=1)
    check_ranks(epoch1, labels, 4, 32)
    assert epoch1 != epoch0 and len(epoch1[0]) == len(epoch0[0])
    binary = np.array([0] * 300 + [1] * 60)  # classes are not split across ranks: each batch has both
    check_ranks(two_ranks(binary, 8, 16), binary, 8, 16)


def test_f40_checker_detects_a_rank_blind_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = labels_uneven(1)
    check_ranks(two_ranks(labels, 2, 16), labels, 2, 16)  # the real product passes
    # put the bug back: every rank takes rank 0's share (a sampler that ignores its rank)
    monkeypatch.setattr(MPerClassBatchSampler, "_rank_batches", lambda self, batches: batches[:: self.num_replicas])
    with pytest.raises(AssertionError, match="appear on two ranks"):
        check_ranks(two_ranks(labels, 2, 16), labels, 2, 16)


def test_len_is_fixed_and_uses_the_data() -> None:
    labels = labels_uneven(2)
    sampler = MPerClassBatchSampler(labels, 4, 40, num_replicas=3, rank=2)
    lengths = set()
    for epoch in range(4):
        sampler.set_epoch(epoch)
        lengths.add(len(list(sampler)))
    assert lengths == {len(sampler)}
    # the global list holds the most batches that distinct-class batches allow (brute-force bound)
    chunks = np.bincount(labels) // 4
    best = max(t for t in range(len(labels)) if np.minimum(chunks, t).sum() >= 10 * t)
    assert len(sampler) == best // 3
    assert MPerClassBatchSampler(labels, 4, 40).num_replicas == 1  # no process group: 1 replica, rank 0


def test_dataloader_round_trip() -> None:
    labels = torch.tensor(labels_uneven(3, n=200, n_classes=10))
    dataset = TensorDataset(torch.arange(len(labels)), labels)
    sampler = MPerClassBatchSampler(labels, 4, 16, num_replicas=2, rank=1, seed=5)
    loader = DataLoader(dataset, batch_sampler=sampler)
    assert len(loader) == len(sampler)
    got = [(idx.tolist(), lab) for idx, lab in loader]
    assert [g[0] for g in got] == list(sampler)
    for _, lab in got:
        assert sorted(Counter(lab.tolist()).values()) == [4, 4, 4, 4]


def test_lightning_set_epoch_reaches_the_batch_sampler() -> None:
    labels = labels_uneven(4)
    loader = DataLoader(TensorDataset(torch.arange(len(labels))),
                        batch_sampler=MPerClassBatchSampler(labels, 4, 32))
    first = [b[0].tolist() for b in loader]
    _set_sampler_epoch(loader, 1)  # what Lightning's fit loop calls each epoch (2.6: on batch_sampler.sampler)
    assert loader.batch_sampler.epoch == 1
    second = [b[0].tolist() for b in loader]
    assert second != first and sorted(map(len, second)) == sorted(map(len, first))
    loader.batch_sampler.set_epoch(0)
    assert [b[0].tolist() for b in loader] == first


class _Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[tuple[int, list[int]]] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.append((self.current_epoch, batch[0].tolist()))
        return self.layer(batch[0].float()[:, None]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_trainer_draws_new_batches_each_epoch() -> None:
    labels = labels_uneven(5, n=120, n_classes=6)
    sampler = MPerClassBatchSampler(labels, 4, 16, seed=3)
    model = _Recorder()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, use_distributed_sampler=False, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(TensorDataset(torch.arange(len(labels))), batch_sampler=sampler))
    by_epoch = [[b for e, b in model.seen if e == epoch] for epoch in range(2)]
    for epoch, batches in enumerate(by_epoch):
        sampler.set_epoch(epoch)
        assert batches == list(sampler)
    assert by_epoch[0] != by_epoch[1]


def test_small_classes_skipped_or_repeated() -> None:
    labels = np.array([0] * 6 + [1] * 5 + [2] * 2 + [3] * 8 + [4])
    sampler = MPerClassBatchSampler(labels, 3, 6, num_replicas=1, rank=0)
    assert sampler.skipped_classes == [2, 4]
    used = {int(labels[i]) for batch in sampler for i in batch}
    assert used <= {0, 1, 3}
    repeats = MPerClassBatchSampler(labels, 3, 6, allow_repeats=True)
    assert repeats.skipped_classes == []
    for epoch in range(3):
        repeats.set_epoch(epoch)
        for batch in repeats:
            assert sorted(Counter(labels[batch].tolist()).values()) == [3, 3]


def test_bad_arguments_name_the_value() -> None:
    labels = np.repeat(np.arange(5), 20)
    with pytest.raises(ConfigError, match=r"batch_size = 30.*multiple of m = 4"):
        MPerClassBatchSampler(labels, 4, 30)
    with pytest.raises(ConfigError, match="m = 1"):
        MPerClassBatchSampler(labels, 1, 8)
    with pytest.raises(ConfigError, match=r"batch_size = 48 with m = 4 needs 12 classes.*only 5"):
        MPerClassBatchSampler(labels, 4, 48)
    with pytest.raises(ConfigError, match="rank = 2, num_replicas = 2"):
        MPerClassBatchSampler(labels, 4, 8, num_replicas=2, rank=2)
    with pytest.raises(ConfigError, match="labels"):
        MPerClassBatchSampler(np.zeros((4, 2), dtype=int), 2, 4)
    with pytest.raises(ConfigError, match="fewer than num_replicas = 64"):
        MPerClassBatchSampler(labels, 4, 20, num_replicas=64, rank=0)


def test_f40_the_datamodule_deals_two_ranks_disjoint_m_per_class_batches() -> None:
    """Through the product's own path: ``RetrievalDataModule.train_dataloader`` under a 2-rank trainer must give the
    two ranks different, disjoint m-per-class batches (a sampler built as rank 0 of 1 gives both the same)."""
    from types import SimpleNamespace

    from lit_experiments.studies.retrieval.datamodule import RetrievalDataModule
    from lit_experiments.studies.retrieval.sampler import MPerClassBatches
    from lit_experiments.studies.retrieval.sources import ShapesClipFrames

    shapes = {"image_size": 32, "num_frames": 8, "min_objects": 1, "max_objects": 2, "motion_blur": True}
    m, batch_size = 4, 8
    per_rank, labels = [], None
    for rank in range(2):
        dm = RetrievalDataModule(source=ShapesClipFrames(n_train=12, n_val=2, n_test=2, shapes=shapes),
                                 batch_size=batch_size, cache_dir="cache", sampler=MPerClassBatches(m=m))
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, training=True,
                                     _accelerator_connector=SimpleNamespace(use_distributed_sampler=False))
        loader = dm.train_dataloader()
        per_rank.append([list(map(int, b)) for b in loader.batch_sampler])
        labels = dm.group_labels(m).numpy()
    assert len(per_rank[0]) >= 2
    assert per_rank[0] != per_rank[1], "both ranks train on the same batches (a sampler built as rank 0 of 1)"
    check_ranks(per_rank, labels, m, batch_size)
