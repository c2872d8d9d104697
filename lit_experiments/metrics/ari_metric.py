"""torchmetrics classes for per-sample segmentation scores (FG-ARI / ARI, mBO) with groups.

``update(pred, target, groups=None)`` scores every sample with :func:`~lit_experiments.metrics.ari.ari`
or :func:`~lit_experiments.metrics.ari.mbo` and stores the values (float64) with a group code per
sample. ``groups`` is one id per sample (``str`` or ``int``, e.g. ``"metal"``, ``"non-metal"``,
``"mixed"``, a category id); it is optional.

:meth:`compute` returns a flat dict (ready for ``log_dict``), with ``name`` = ``fg_ari`` / ``ari`` /
``mbo``:

* ``name``: mean over samples whose value is not NaN; ``name_count``: how many; ``name_skipped``: how
  many NaN samples were skipped (no foreground / no object).
* per group ``g``: ``name/g``, ``name_count/g``, ``name_skipped/g``.

Values and group codes are tensor states gathered across DDP ranks (uneven counts are fine); the
code-to-name table is all-gathered as Python objects only when the states were synced.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable

import torch
from torch import Tensor
from torchmetrics import Metric

from lit_experiments.metrics._dist import encode_groups, gather_objects
from lit_experiments.metrics.ari import ari, mbo

_NO_GROUP = -1


class _GroupedPerSample(Metric):
    full_state_update = False
    higher_is_better = True

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("codes", default=[], dist_reduce_fx="cat")
        self._group_names: dict[int, Hashable] = {}  # grows only; reset() keeps it (forward() resets)

    def _score(self, pred: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, pred: Tensor, target: Tensor, groups: Iterable[Hashable] | Tensor | None = None) -> None:
        """Score a batch; ``groups`` gives one id per sample (optional)."""
        v = self._score(pred, target)
        if groups is None:
            codes = torch.full((v.numel(),), _NO_GROUP, dtype=torch.long)
        else:
            codes = encode_groups(groups, v.numel(), self._group_names)
        self.values.append(v.to(device=self.device, dtype=torch.float64))
        self.codes.append(codes.to(self.device))

    def compute(self) -> dict[str, Tensor]:
        if isinstance(self.values, list) and not self.values:
            raise RuntimeError(f"{type(self).__name__}.compute() called before any update()")
        v = torch.cat(self.values) if isinstance(self.values, list) else self.values
        c = torch.cat(self.codes) if isinstance(self.codes, list) else self.codes
        names = dict(self._group_names)
        if self._is_synced:
            for part in gather_objects(self._group_names, group=self.process_group):
                names.update(part)
        out = self._summary(self.name, v.double(), "")
        for code in sorted(set(c.long().tolist()) - {_NO_GROUP}, key=lambda k: str(names[k])):
            out.update(self._summary(self.name, v[c == code].double(), f"/{names[code]}"))
        return out

    @staticmethod
    def _summary(name: str, v: Tensor, suffix: str) -> dict[str, Tensor]:
        ok = ~torch.isnan(v)
        n = int(ok.sum())
        mean = v[ok].mean() if n else torch.tensor(math.nan, dtype=torch.float64)
        return {
            f"{name}{suffix}": mean,
            f"{name}_count{suffix}": torch.tensor(n),
            f"{name}_skipped{suffix}": torch.tensor(int(v.numel()) - n),
        }


class ARIMetric(_GroupedPerSample):
    """Mean (FG-)ARI over samples, overall and per group; NaN samples skipped and counted.

    Args:
        foreground_only: FG-ARI (drop GT id 0 pixels) when True (key ``fg_ari``), else full ARI (``ari``).
        name: override the key prefix.
    """

    def __init__(self, foreground_only: bool = True, name: str | None = None, **kwargs) -> None:
        super().__init__(name or ("fg_ari" if foreground_only else "ari"), **kwargs)
        self.foreground_only = foreground_only

    def _score(self, pred: Tensor, target: Tensor) -> Tensor:
        return ari(pred, target, foreground_only=self.foreground_only)


class MBOMetric(_GroupedPerSample):
    """Mean best overlap over samples (key ``mbo``), overall and per group; NaN samples skipped."""

    def __init__(self, name: str = "mbo", **kwargs) -> None:
        super().__init__(name, **kwargs)

    def _score(self, pred: Tensor, target: Tensor) -> Tensor:
        return mbo(pred, target)
