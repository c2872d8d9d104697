"""Batch orders of the retrieval study: the datamodule's ``sampler:`` part, and the rank-aware m-per-class batch
sampler (F39, F40).

* ``sampler: null``: shuffled frames (the SimSiam stage), a :class:`RandomBatches` with the run's seed;
  :class:`RandomBatches` names a pinned ``seed``.
* :class:`MPerClassBatches` (``m``, ``seed``): batches of ``batch_size // m`` groups of ``m`` frames through
  :class:`MPerClassBatchSampler` (the FastAP stage). A group is a label or, with temporal positives, a block of
  ``m`` consecutive frames of one video (the datamodule says which).

Both are rank-aware themselves, so a DDP run sets ``trainer.use_distributed_sampler: false`` (checked by the
datamodule). Their seed is ``core.seeding.run_seed(seed, "sampler")``: derived from the run's ``seed_everything``
unless pinned (F50), read when the loader is built.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.seeding import run_seed


class RetrievalSampler:
    """The order of the training batches: ``loader(dataset, batch_size, world, rank, groups, **kw)``.

    ``groups(m)`` gives the group of every training frame for groups of ``m`` (labels, or video blocks)."""

    def loader(self, dataset: Dataset, batch_size: int, world: int, rank: int,
               groups: Callable[[int], torch.Tensor], **kw: Any) -> DataLoader:
        raise NotImplementedError


class RandomBatches(RetrievalSampler):
    """Shuffled frames, ``drop_last`` (SimSiam); split across ranks by a ``DistributedSampler`` of the same seed.

    Args:
        seed: the shuffle's seed (default: derived from ``seed_everything``, F50).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def loader(self, dataset: Dataset, batch_size: int, world: int, rank: int,
               groups: Callable[[int], torch.Tensor], **kw: Any) -> DataLoader:
        seed = run_seed(self.seed, "sampler")
        if world > 1:
            from torch.utils.data.distributed import DistributedSampler

            dist = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
            return DataLoader(dataset, batch_size=batch_size, sampler=dist, drop_last=True, **kw)
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=gen, **kw)


class MPerClassBatches(RetrievalSampler):
    """Batches of ``batch_size // m`` groups with ``m`` frames each (:class:`MPerClassBatchSampler`; F39, F40).

    Args:
        m: frames per label (or per block of consecutive frames of a video) in a batch.
        seed: the sampler's seed (default: derived from ``seed_everything``, F50).
    """

    def __init__(self, m: int = 4, seed: int | None = None) -> None:
        self.m, self.seed = m, seed

    def loader(self, dataset: Dataset, batch_size: int, world: int, rank: int,
               groups: Callable[[int], torch.Tensor], **kw: Any) -> DataLoader:
        seed = run_seed(self.seed, "sampler")
        if batch_size % self.m:
            raise ConfigError(f"data.batch_size={batch_size} must be a multiple of data.sampler.init_args.m="
                              f"{self.m}")
        sampler = MPerClassBatchSampler(groups(self.m), m=self.m, batch_size=batch_size, num_replicas=world,
                                        rank=rank, seed=seed)
        return DataLoader(dataset, batch_sampler=sampler, **kw)


class MPerClassBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size // m`` classes with exactly ``m`` samples each, split across DDP ranks.

    Why: FastAP (and any pair loss) needs a positive for every query, so every class in a batch has
    ``m >= 2`` samples (F39). PML's ``MPerClassSampler`` is an index sampler that Lightning wraps in a
    ``DistributedSampler``, which cuts its stream into per-rank pieces and breaks the m-per-class groups,
    or, unwrapped, gives every rank the same batches (F40, PML #546, #612).

    Design (F40): each epoch every rank draws the same random state from ``seed + epoch``
    (:meth:`set_epoch`, the ``DistributedSampler`` convention; Lightning calls ``set_epoch`` on the
    ``batch_sampler``), shuffles each class, cuts it into chunks of ``m`` samples (no index is used twice),
    and builds the same GLOBAL list of batches on every rank: each batch takes one chunk from each of
    ``batch_size // m`` distinct classes (chosen at random, weighted by the chunks a class has left; a class
    whose chunks must go in every remaining batch is always chosen, so the largest possible number of
    batches is built). The list is cut to a multiple of ``num_replicas`` and batch ``i`` goes to rank
    ``i % num_replicas``: ranks see disjoint batches, all ranks the same number, every batch keeps m per
    class. Classes are not split across ranks (with a binary label that would leave a rank with one
    class and no negatives). The number of batches depends only on the class sizes, so ``len()`` is the
    same every epoch.

    Classes with fewer than ``m`` samples are left out and listed in ``skipped_classes`` (the study logs
    them), unless ``allow_repeats=True``: then they give one chunk sampled with replacement. With
    ``drop_last=False`` the global list is padded with its first batches to a multiple of
    ``num_replicas`` instead of cut (up to ``num_replicas - 1`` batches are then seen twice).

    Use it as ``DataLoader(dataset, batch_sampler=sampler)`` and train with
    ``Trainer(use_distributed_sampler=False)``: the sampler is rank-aware itself and Lightning must not
    wrap it. ``num_replicas`` / ``rank`` default to ``torch.distributed`` when it is initialised, else 1 / 0.

    Lightning (2.6) calls ``set_epoch`` on ``loader.sampler`` and on ``loader.batch_sampler.sampler``, never
    on the batch sampler itself; ``self.sampler`` is a small hook that forwards ``set_epoch`` here, without
    it every epoch would repeat epoch 0's batches.
    """

    def __init__(self, labels: Sequence[int] | torch.Tensor | np.ndarray, m: int, batch_size: int,
                 num_replicas: int | None = None, rank: int | None = None, seed: int = 0,
                 drop_last: bool = True, allow_repeats: bool = False) -> None:
        labels_np = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if labels_np.dtype == np.bool_:
            labels_np = labels_np.astype(np.int64)
        if labels_np.ndim != 1 or labels_np.size == 0 or not np.issubdtype(labels_np.dtype, np.integer):
            raise ConfigError(f"MPerClassBatchSampler labels: expected a non-empty 1-D sequence of ints, got "
                              f"shape {labels_np.shape} dtype {labels_np.dtype}")
        if not isinstance(m, int) or m < 2:
            raise ConfigError(f"MPerClassBatchSampler m = {m!r}: expected an int >= 2 (samples per class, so "
                              "every sample has a positive in its batch)")
        if not isinstance(batch_size, int) or batch_size < m or batch_size % m:
            raise ConfigError(f"MPerClassBatchSampler batch_size = {batch_size!r}: expected a multiple of "
                              f"m = {m} (batch_size // m classes of m samples each)")
        if num_replicas is None or rank is None:
            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            if num_replicas is None:
                num_replicas = torch.distributed.get_world_size() if dist else 1
            if rank is None:
                rank = torch.distributed.get_rank() if dist else 0
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"MPerClassBatchSampler rank = {rank}, num_replicas = {num_replicas}: expected "
                              "num_replicas >= 1 and 0 <= rank < num_replicas")
        self.m, self.batch_size, self.classes_per_batch = m, batch_size, batch_size // m
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.drop_last, self.allow_repeats = drop_last, allow_repeats
        self.epoch = 0
        #: what Lightning's ``_set_sampler_epoch`` finds as ``batch_sampler.sampler``: forwards set_epoch
        self.sampler = _EpochHook(self)
        classes, inverse = np.unique(labels_np, return_inverse=True)
        counts = np.bincount(inverse, minlength=len(classes))
        members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
        keep = [i for i, idx in enumerate(members) if len(idx) >= m or allow_repeats]
        #: labels of the classes with fewer than m samples, left out of every batch
        self.skipped_classes: list[int] = [int(c) for i, c in enumerate(classes) if len(members[i]) < m
                                           and not allow_repeats]
        self._classes = classes[keep]
        self._members = [members[i] for i in keep]
        self._chunks = np.array([max(1, len(idx) // m) for idx in self._members], dtype=np.int64)
        if self.classes_per_batch > len(self._classes):
            raise ConfigError(
                f"MPerClassBatchSampler batch_size = {batch_size} with m = {m} needs {self.classes_per_batch} "
                f"classes per batch, but only {len(self._classes)} classes have >= {m} samples "
                f"({len(self.skipped_classes)} skipped): lower batch_size or m")
        self._n_global = _max_batches(self._chunks, self.classes_per_batch)
        if self.__len__() == 0:
            raise ConfigError(f"MPerClassBatchSampler: only {self._n_global} batches of {batch_size} can be "
                              f"built, fewer than num_replicas = {num_replicas}: lower batch_size or m")

    def set_epoch(self, epoch: int) -> None:
        """Draw the batches of ``epoch`` (same on every rank; call it before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches this rank yields per epoch (the same for every rank and every epoch)."""
        n, r = self._n_global, self.num_replicas
        return n // r if self.drop_last else -(-n // r)

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._rank_batches(self.global_batches())

    def global_batches(self) -> list[list[int]]:
        """All ranks' batches of the current epoch, in order, cut / padded to a multiple of num_replicas."""
        rng = np.random.default_rng(self.seed + self.epoch)
        p, n_batches = self.classes_per_batch, self._n_global
        # how many chunks of each class this epoch uses: at most one per batch, P * n_batches in all
        use = np.minimum(self._chunks, n_batches)
        excess = int(use.sum()) - p * n_batches
        if excess > 0:  # drop surplus chunks at random (never below what the batch count needs)
            units = np.repeat(np.arange(len(use)), use)
            np.subtract.at(use, rng.choice(units, size=excess, replace=False), 1)
        chunks = [self._class_chunks(rng, c, int(u)) for c, u in enumerate(use)]
        left, batches = use.copy(), []
        for t in range(n_batches, 0, -1):  # t batches still to build; invariant: sum(left) == p*t, left <= t
            forced = np.flatnonzero(left == t)
            free = np.flatnonzero((left > 0) & (left < t))
            k = p - len(forced)
            # weighted draw of k classes without replacement (Efraimidis-Spirakis keys), O(classes)
            keys = np.log(rng.random(len(free))) / left[free]
            pick = free[np.argpartition(-keys, k - 1)[:k]] if k else free[:0]
            chosen = np.concatenate([forced, pick])
            rng.shuffle(chosen)
            left[chosen] -= 1
            batches.append([i for c in chosen for i in chunks[c][left[c]]])
        r = self.num_replicas
        if self.drop_last:
            return batches[: len(batches) // r * r]
        return batches + batches[: (-len(batches)) % r]

    def _class_chunks(self, rng: np.random.Generator, c: int, n: int) -> list[list[int]]:
        idx = self._members[c]
        if len(idx) < self.m:  # allow_repeats: one chunk drawn with replacement
            return [rng.choice(idx, size=self.m, replace=True).tolist()] if n else []
        perm = rng.permutation(idx)[: n * self.m]
        return perm.reshape(n, self.m).tolist()

    def _rank_batches(self, batches: list[list[int]]) -> list[list[int]]:
        """This rank's share of the global batches: batch ``i`` goes to rank ``i % num_replicas``."""
        return batches[self.rank :: self.num_replicas]


class _EpochHook:
    """Forwards ``set_epoch`` to its batch sampler (Lightning looks for it on ``batch_sampler.sampler``)."""

    def __init__(self, owner: MPerClassBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


def _max_batches(chunks: np.ndarray, p: int) -> int:
    """Largest T with ``sum(min(chunks, T)) >= p * T``: batches of p distinct classes, one chunk each."""
    lo, hi = 0, int(chunks.sum()) // p
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(np.minimum(chunks, mid).sum()) >= p * mid:
            lo = mid
        else:
            hi = mid - 1
    return lo
