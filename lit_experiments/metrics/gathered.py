"""One Metric that gathers named rows over an epoch and over every rank (F44).

Studies keep per-sample records (embeddings, logits, labels, unit ids) for numbers that need the whole split at
once (retrieval mAP over a gallery, thresholds tuned on validation, calibration, figures). ``GatheredRows`` holds
them as torchmetrics ``cat`` states, so a 2-rank run computes on exactly the rows a 1-rank run has; with
``order_by`` the rows come back sorted by that column (a sample index), so the order does not depend on how the
sampler dealt the samples to the ranks.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchmetrics import Metric


class _Column:
    """A computed column on its way out of torchmetrics' ``compute`` wrapper, which squeezes every one-element tensor
    to 0-d: one validation unit (an evaluation batch of 1 in a preflight) must still come back as 1 row."""

    __slots__ = ("value",)

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value


class GatheredRows(Metric):
    """Named tensors appended by ``update(**rows)``; ``compute()`` returns ``{name: concatenated tensor}``.

    Args:
        names: the columns; every ``update`` gives each of them (rows along dim 0).
        dtypes: a column's dtype when stored (e.g. ``{"index": torch.long}``); a column not named keeps its own.
        order_by: a column by which ``compute()`` sorts every column (``None``: the order of arrival, rank by rank).
        flatten: columns reshaped to 1-D when stored (ids given as (B, K) and read as a flat list).
    """

    full_state_update = False

    def __init__(self, names: Sequence[str], dtypes: dict[str, torch.dtype] | None = None,
                 order_by: str | None = None, flatten: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.names = tuple(names)
        self.dtypes = dict(dtypes or {})
        self.order_by = order_by
        self.flatten = set(flatten)
        unknown = ({*self.dtypes, *self.flatten, *([order_by] if order_by else [])}) - set(self.names)
        if unknown:
            raise ValueError(f"GatheredRows: {sorted(unknown)} are not among the columns {list(self.names)}")
        for name in self.names:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, **rows: torch.Tensor) -> None:
        missing = set(self.names) - set(rows)
        if missing:
            raise ValueError(f"GatheredRows.update: missing columns {sorted(missing)}")
        for name in self.names:
            value = rows[name].detach()
            if name in self.dtypes:
                value = value.to(self.dtypes[name])
            if name in self.flatten:
                value = value.reshape(-1)
            getattr(self, name).append(value)

    def _wrap_compute(self, compute: Callable) -> Callable:
        wrapped = super()._wrap_compute(lambda *a, **k: {n: _Column(t) for n, t in compute(*a, **k).items()})

        @functools.wraps(compute)
        def rows(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
            return {n: c.value.clone() for n, c in wrapped(*args, **kwargs).items()}
        return rows

    def compute(self) -> dict[str, torch.Tensor]:
        cat = {n: (torch.cat(v) if isinstance(v, list) else v) for n in self.names for v in [getattr(self, n)]}
        if self.order_by is None:
            return cat
        order = torch.argsort(cat[self.order_by])
        return {n: t[order] for n, t in cat.items()}

    @property
    def empty(self) -> bool:
        first = getattr(self, self.names[0])
        return isinstance(first, list) and not first
