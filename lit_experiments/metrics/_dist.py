"""Small distributed helpers shared by the metric classes.

Tensor states are synced by torchmetrics itself (``dist_reduce_fx="cat"`` pads and gathers tensors of
uneven length across ranks). What torchmetrics cannot sync are Python objects, e.g. the mapping from
a hashed group code back to its name (``"metal"``, ``3``). :func:`gather_objects` does that, and only
when the metric has actually been synced, so a single process never touches ``torch.distributed``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable
from typing import Any

import torch
import torch.distributed as dist


def dist_ready() -> bool:
    """True when a process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_objects(obj: Any, group: Any = None) -> list[Any]:
    """All-gather a picklable object from every rank (returns ``[obj]`` outside DDP)."""
    if not dist_ready():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def group_code(name: Hashable) -> int:
    """Stable signed 63-bit code for a group id; the same on every rank and every run.

    ``str`` and ``int`` ids stay distinct (``"1"`` and ``1`` get different codes).
    """
    key = f"{type(name).__name__}:{name!r}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def encode_groups(groups: Iterable[Hashable] | torch.Tensor, n: int, names: dict[int, Hashable]) -> torch.Tensor:
    """Turn ``n`` per-sample group ids into int64 codes, recording ``code -> id`` in ``names``."""
    if isinstance(groups, torch.Tensor):
        groups = groups.reshape(-1).tolist()
    items = list(groups)
    if len(items) != n:
        raise ValueError(f"groups has {len(items)} entries but the batch has {n} samples")
    codes = []
    for g in items:
        c = group_code(g)
        prev = names.setdefault(c, g)
        if prev != g:  # pragma: no cover - a 63-bit collision
            raise RuntimeError(f"group ids {prev!r} and {g!r} collide; rename one")
        codes.append(c)
    return torch.tensor(codes, dtype=torch.int64)
