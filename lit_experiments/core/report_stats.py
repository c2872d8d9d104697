"""Statistics of `lit-exp report`: mean +- std with the source of variance, paired tests (F45)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: resamples of the paired bootstrap and its seed (the report is reproducible)
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass
class Run:
    """One run of a report: where it is, what it is (variant, seed, fold) and what it gave."""

    name: str
    variant: str
    run_dir: Any
    status: str = "done"
    error: str | None = None
    results: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    fold: int | None = None
    fingerprint: str | None = None

    def metric(self, name: str) -> float | None:
        """The value of ``name`` in headline, test, final, then the stages' metrics (None: absent or null)."""
        sources = [self.results.get("headline") or {}, self.results.get("test") or {},
                   self.results.get("final") or {}]
        sources += [(s or {}).get("metrics") or {} for s in (self.results.get("stages") or {}).values()]
        for source in sources:
            if name in source:
                value = source[name]
                return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
        return None


def variance_source(runs: list[Run]) -> str:
    """``seeds`` / ``folds`` / ``seeds and folds`` / ``single run`` / ``none (same seed and fold)``."""
    if len(runs) < 2:
        return "single run"
    seeds = {r.seed for r in runs}
    folds = {r.fold for r in runs}
    if len(seeds) > 1 and len(folds) > 1:
        return "seeds and folds"
    if len(folds) > 1:
        return "folds"
    if len(seeds) > 1:
        return "seeds"
    return "none (same seed and fold)"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for one value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")


@dataclass
class PairedTest:
    """Variant minus baseline over runs paired by (seed, fold index)."""

    n: int = 0
    mean_diff: float = float("nan")
    statistic: float | None = None
    p: float | None = None
    ci: tuple[float, float] | None = None
    note: str = ""
    refused: str = ""


def pair_runs(base: list[Run], other: list[Run], metric: str) -> tuple[list[tuple[Run, Run]], str]:
    """Pairs (baseline run, variant run) with the same (seed, fold); ``refused`` reason when folds differ (F45)."""
    by_key = {}
    for r in base:
        if r.metric(metric) is not None:
            by_key.setdefault((r.seed, r.fold), r)
    pairs, seen = [], set()
    for r in other:
        key = (r.seed, r.fold)
        if r.metric(metric) is None or key not in by_key or key in seen:
            continue
        seen.add(key)
        b = by_key[key]
        if b.fingerprint != r.fingerprint:
            return [], (f"not paired: folds fingerprint differs ({b.name}: {b.fingerprint or 'no folds'}, "
                        f"{r.name}: {r.fingerprint or 'no folds'}); fold i of one split is not fold i of the "
                        "other, so the runs are not matched (F45)")
        pairs.append((b, r))
    return pairs, ""


def paired_test(base: list[Run], other: list[Run], metric: str) -> PairedTest:
    """Wilcoxon signed-rank (scipy) and a seeded paired bootstrap 95% CI of the mean difference."""
    from scipy import stats

    pairs, refused = pair_runs(base, other, metric)
    if refused:
        return PairedTest(refused=refused)
    diffs = np.array([r.metric(metric) - b.metric(metric) for b, r in pairs], dtype=float)
    test = PairedTest(n=len(diffs))
    if len(diffs) == 0:
        test.note = "no pairs (no runs with the same seed and fold index)"
        return test
    test.mean_diff = float(diffs.mean())
    if len(diffs) < 2:
        test.note = f"too few pairs for a test (n={len(diffs)})"
        return test
    if np.all(diffs == 0):
        test.note = "all paired differences are zero"
        test.ci = (0.0, 0.0)
        return test
    res = stats.wilcoxon(diffs)
    test.statistic, test.p = float(res.statistic), float(res.pvalue)
    boot = stats.bootstrap((diffs,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=0.95,
                           method="percentile", rng=np.random.default_rng(BOOTSTRAP_SEED))
    test.ci = (float(boot.confidence_interval.low), float(boot.confidence_interval.high))
    if len(diffs) < 6:
        test.note = (f"n={len(diffs)} too small for Wilcoxon to reach p<0.05 "
                     f"(smallest two-sided p is {2 / 2 ** len(diffs):.3g})")
    return test


@dataclass
class Table:
    """A report table: the same string cells go to report.md, report.html and wandb."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def fmt(value: float | None, digits: int = 4) -> str:
    """A number as shown in every table of the report (``-`` for missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"
