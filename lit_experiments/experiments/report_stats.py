"""Statistics of `lit-exp report`: mean +- std with the source of variance, paired tests that fit n (F45, F51).

* runs that differ by seed: Wilcoxon signed-rank, and a paired bootstrap interval from 10 pairs on;
* runs of one fold set: the corrected resampled t-test (Nadeau and Bengio 2003), never a test that takes the
  folds as independent samples; its interval from 10 pairs on;
* below :data:`MIN_INTERVAL_N` paired values no interval at all: the comparison is ``descriptive, n = k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
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
    #: (mean held-out fold size, mean training size) of the run's folds file (the corrected t-test's ratio)
    fold_ratio: tuple[float, float] | None = None
    #: results.json ``splits.tuned_on_test``: validation overlapped test by opt-in, every number is tuned on test
    tuned_on_test: bool = False
    #: `lit-exp cv --test` scored this run on the test split and that failed (F54)
    test_error: str | None = None
    #: the folder whose ``per_item/`` holds its per-item test scores when not ``run_dir`` (its test's eval folder)
    items_dir: Any = None

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


def fold_ratio(folds: dict[str, Any], run_dir: Path) -> tuple[float, float] | None:
    """(mean held-out fold size, mean training size) of the folds file a run records (where it was written, else
    beside the sweep), or the sizes the run recorded; None when neither is there."""
    from ..core.folds import fold_sizes, read_folds

    recorded = folds.get("file")
    if not recorded:
        return None
    for path in dict.fromkeys([Path(recorded), run_dir.parent / Path(recorded).name]):
        if path.is_file():
            try:
                data = read_folds(path)
            except (ValueError, KeyError, TypeError):  # ConfigError and JSONDecodeError are ValueErrors
                continue
            if data.get("fingerprint") == folds.get("fingerprint"):
                return fold_sizes(data)
    sizes = folds.get("fold_sizes")
    return (float(sizes[0]), float(sizes[1])) if isinstance(sizes, list) and len(sizes) == 2 else None


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


#: no confidence interval from fewer paired values than this (F51); below it a comparison is descriptive
MIN_INTERVAL_N = 10
WILCOXON = "wilcoxon signed-rank (seeds)"
CORRECTED_T = "corrected resampled t (folds)"


def descriptive(n: int) -> str:
    return f"descriptive, n = {n}"


def variance_inflation(n_pairs: int, n_test: float, n_train: float) -> float:
    """Factor on the sample variance of the differences (Nadeau and Bengio 2003; repeated k-fold: Bouckaert and
    Frank 2004): ``1 / J + n_test / n_train``. The plain ``1 / J`` treats the J fold runs as independent, though
    they share most of their training data."""
    return 1.0 / n_pairs + n_test / n_train


@dataclass
class CorrectedT:
    """The corrected resampled t-test of J paired differences from runs of one fold set."""

    t: float
    p: float
    df: int
    se: float
    ci: tuple[float, float]


def corrected_resampled_t(diffs: Any, n_test: float, n_train: float, level: float = 0.95) -> CorrectedT:
    """t = mean / sqrt(variance_inflation * s^2), two-sided p and the interval from Student's t with J - 1 df."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        raise ValueError(f"corrected resampled t-test: {len(d)} differences; needs at least 2")
    mean, df = float(d.mean()), len(d) - 1
    se = math.sqrt(variance_inflation(len(d), n_test, n_train) * float(d.var(ddof=1)))
    if se == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        p = 1.0 if mean == 0.0 else 0.0
    else:
        t = mean / se
        p = float(2 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return CorrectedT(t=t, p=p, df=df, se=se, ci=(mean - half, mean + half))


@dataclass
class PairedTest:
    """Variant minus baseline over runs paired by (seed, fold index)."""

    n: int = 0
    mean_diff: float = float("nan")
    test: str = ""
    statistic: float | None = None
    p: float | None = None
    ci: tuple[float, float] | None = None
    note: str = ""
    refused: str = ""

    def ci_cell(self) -> str:
        """The interval, ``descriptive, n = k`` below :data:`MIN_INTERVAL_N` pairs, or ``-``."""
        if self.ci is not None:
            return f"[{fmt(self.ci[0])}, {fmt(self.ci[1])}]"
        return descriptive(self.n) if 0 < self.n < MIN_INTERVAL_N else "-"


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
    """Variant minus baseline. Runs of one fold set: the corrected resampled t-test (never a test that takes the
    folds as independent samples); runs that differ by seed only: Wilcoxon signed-rank and a seeded paired
    bootstrap. No interval below :data:`MIN_INTERVAL_N` pairs (F51)."""
    pairs, refused = pair_runs(base, other, metric)
    if refused:
        return PairedTest(refused=refused)
    diffs = np.array([r.metric(metric) - b.metric(metric) for b, r in pairs], dtype=float)
    test = PairedTest(n=len(diffs))
    if len(diffs) == 0:
        test.note = "no pairs (no runs with the same seed and fold index)"
        return test
    test.mean_diff = float(diffs.mean())
    if any(b.fold is not None for b, _ in pairs):
        return _fold_test(test, diffs, pairs, metric)
    test.test = WILCOXON
    if len(diffs) < 2:
        test.note = f"too few pairs for a test (n={len(diffs)})"
        return test
    if np.all(diffs == 0):
        test.note = "all paired differences are zero"
        return test
    from scipy import stats

    res = stats.wilcoxon(diffs)
    test.statistic, test.p = float(res.statistic), float(res.pvalue)
    if len(diffs) >= MIN_INTERVAL_N:
        boot = stats.bootstrap((diffs,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=0.95,
                               method="percentile", rng=np.random.default_rng(BOOTSTRAP_SEED))
        test.ci = (float(boot.confidence_interval.low), float(boot.confidence_interval.high))
    if len(diffs) < 6:
        test.note = (f"n={len(diffs)} too small for Wilcoxon to reach p<0.05 "
                     f"(smallest two-sided p is {2 / 2 ** len(diffs):.3g})")
    return test


def _fold_test(test: PairedTest, diffs: Any, pairs: list[tuple[Run, Run]], metric: str) -> PairedTest:
    """The corrected resampled t-test over runs of one fold set, n_test / n_train from its folds file."""
    test.test = CORRECTED_T
    ratios = {b.fold_ratio for b, _ in pairs} | {r.fold_ratio for _, r in pairs}
    if None in ratios:
        missing = next(r for pair in pairs for r in pair if r.fold_ratio is None)
        test.note = (f"no test: the folds file of {missing.name} is not readable, so n_test / n_train is unknown; "
                     "runs of one fold set are not independent samples (F51)")
        return test
    if len(diffs) < 2:
        test.note = f"too few pairs for a test (n={len(diffs)})"
        return test
    n_test, n_train = next(iter(ratios))
    res = corrected_resampled_t(diffs, n_test, n_train)
    test.statistic, test.p = res.t, res.p
    if len(diffs) >= MIN_INTERVAL_N:
        test.ci = res.ci
    test.note = f"variance x (1/{len(diffs)} + {n_test:g}/{n_train:g}): folds share their training data"
    if "test" in metric.split("/"):
        test.note += "; every fold's model is scored on one test split, so even this is optimistic"
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
