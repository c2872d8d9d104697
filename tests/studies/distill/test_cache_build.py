"""The teacher runs in the process that built the loaders, never in a DataLoader worker (issue 24: the data path
keeps up): ``train_dataloader`` / ``val_dataloader`` / ``test_dataloader`` fill the split's teacher caches before
they return, so ``num_workers`` forked workers only read cache rows."""
from __future__ import annotations

import os

import pytest
import torch

from lit_experiments.studies.distill.components.teacher import Sam3Teacher, tiny_config

from .helpers import make_dm


class CountingTeacher(Sam3Teacher):
    """The product's teacher, recording the process id of every forward."""

    pids: list[int] = []

    def forward(self, *args, **kwargs):
        CountingTeacher.pids.append(os.getpid())
        return super().forward(*args, **kwargs)


@pytest.fixture
def teacher() -> CountingTeacher:
    CountingTeacher.pids = []
    return CountingTeacher(config=tiny_config(image_size=32, patch_size=8, hidden=32, num_queries=4))


@pytest.mark.parametrize("loader", ["train_dataloader", "val_dataloader", "test_dataloader"])
def test_each_loader_fills_its_split_teacher_cache_before_workers_start(tmp_path, teacher, loader):
    dm = make_dm(teacher=teacher, n_train=8, n_val=4, n_test=4, shapes={"image_size": 32}, cache_dir=str(tmp_path),
                 batch_size=4)
    dm.setup("fit")
    dm.feature_level = -1  # the encoder stage's override: the vision-feature cache is filled too
    split = loader.split("_")[0]
    assert split not in dm._caches
    getattr(dm, loader)()
    assert split in dm._caches and f"features-{split}--1" in dm._caches, sorted(dm._caches)
    assert CountingTeacher.pids and set(CountingTeacher.pids) == {os.getpid()}
    calls = len(CountingTeacher.pids)
    # an item (what a worker reads) comes from the cache: no teacher forward after the loader was built
    batch = next(iter(torch.utils.data.DataLoader(dm.split(split), batch_size=2, num_workers=0,
                                                  collate_fn=lambda items: items)))
    assert "teacher" in batch[0] and "teacher_features" in batch[0]
    assert len(CountingTeacher.pids) == calls
