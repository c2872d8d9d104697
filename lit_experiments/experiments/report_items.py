"""Paired bootstrap over test items (F51): "A beats B on this test set" from per-item scores saved by runs.

A run's test saves ``<run_dir>/per_item/<name>.json`` = ``{"ids", "scores": {key: [one float per item]}}``
(:func:`core.results.write_per_item`). Two models scored on the same test items are compared by resampling the
items with replacement, both models' scores jointly (the same resampled items for both), so the interval of the
mean difference reflects which items the test set happens to hold, not the runs' seeds. Items pair by id;
different id sets are refused. Compared automatically: the same per-item file of a variant's run and of the
baseline run with the same seed and fold; with ``--items A:B``: files (or ``file#key``) A and B of every run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import ConfigError
from ..core.results import read_per_item
from .report_floors import mark
from .report_stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, MIN_INTERVAL_N, Run, Table, descriptive, fmt

HEADER = ["A", "B", "per-item scores", "items", "mean A", "mean B", "mean diff A - B", "95% interval of diff",
          "note"]


@dataclass
class ItemBootstrap:
    """Mean of A minus mean of B over paired items and its seeded percentile interval (None below 10 items)."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci: tuple[float, float] | None
    dropped: int = 0


def align(ids_a: list[Any], a: list[Any], ids_b: list[Any], b: list[Any], names: tuple[str, str] = ("A", "B")
          ) -> tuple[np.ndarray, np.ndarray, int]:
    """B's scores in A's item order; items where either score is null are dropped (their count is returned)."""
    for ids, values, name in ((ids_a, a, names[0]), (ids_b, b, names[1])):
        if len(ids) != len(values):
            raise ConfigError(f"per-item scores {name}: {len(values)} scores for {len(ids)} ids")
        if len(set(map(str, ids))) != len(ids):
            raise ConfigError(f"per-item scores {name}: ids repeat; each test item must appear once")
    pos_b = {str(i): k for k, i in enumerate(ids_b)}
    only_a = [str(i) for i in ids_a if str(i) not in pos_b]
    only_b = sorted(set(pos_b) - {str(i) for i in ids_a})
    if only_a or only_b:
        raise ConfigError(
            f"paired bootstrap refused: {names[0]} and {names[1]} were scored on different test items "
            f"({len(only_a)} only in {names[0]}, e.g. {only_a[:3]}; {len(only_b)} only in {names[1]}, e.g. "
            f"{only_b[:3]}); a paired comparison needs one test set")
    xa = np.array([np.nan if v is None else float(v) for v in a])
    xb = np.array([np.nan if b[pos_b[str(i)]] is None else float(b[pos_b[str(i)]]) for i in ids_a])
    keep = np.isfinite(xa) & np.isfinite(xb)
    return xa[keep], xb[keep], int((~keep).sum())


def paired_bootstrap_items(ids_a: list[Any], a: list[Any], ids_b: list[Any], b: list[Any],
                           names: tuple[str, str] = ("A", "B"), n_resamples: int = BOOTSTRAP_RESAMPLES,
                           seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> ItemBootstrap:
    """Resample the paired items jointly ``n_resamples`` times (seeded); the percentile interval of
    ``mean(A) - mean(B)``, from :data:`MIN_INTERVAL_N` items on."""
    from scipy import stats

    xa, xb, dropped = align(ids_a, a, ids_b, b, names)
    n = len(xa)
    if n == 0:
        raise ConfigError(f"paired bootstrap refused: {names[0]} and {names[1]} share no item with two scores")
    res = ItemBootstrap(n=n, mean_a=float(xa.mean()), mean_b=float(xb.mean()), diff=float((xa - xb).mean()),
                        ci=None, dropped=dropped)
    if n < MIN_INTERVAL_N:
        return res
    if np.all(xa - xb == xa[0] - xb[0]):  # one difference for every item: every resample gives it
        res.ci = (res.diff, res.diff)
        return res

    def diff_of_means(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return x.mean(axis=axis) - y.mean(axis=axis)

    boot = stats.bootstrap((xa, xb), diff_of_means, paired=True, vectorized=True, n_resamples=n_resamples,
                           confidence_level=level, method="percentile", batch=max(1, 2_000_000 // n),
                           rng=np.random.default_rng(seed))
    res.ci = (float(boot.confidence_interval.low), float(boot.confidence_interval.high))
    return res


def _row(label_a: str, label_b: str, what: str, ids_a: list[Any], a: list[Any], ids_b: list[Any], b: list[Any],
         runs: list[Run]) -> list[str]:
    try:
        res = paired_bootstrap_items(ids_a, a, ids_b, b, (label_a, label_b))
    except ConfigError as err:
        return [label_a, label_b, what, "-", "-", "-", "-", "-", str(err)]
    ci = f"[{fmt(res.ci[0])}, {fmt(res.ci[1])}]" if res.ci else descriptive(res.n)
    note = f"{res.dropped} items without a score in A or B left out" if res.dropped else ""
    if res.ci and (res.ci[0] > 0 or res.ci[1] < 0):
        note = "; ".join(filter(None, [f"{'A' if res.diff > 0 else 'B'} higher on this test set", note]))
    return [label_a, label_b, what, str(res.n), mark(fmt(res.mean_a), runs), mark(fmt(res.mean_b), runs),
            mark(fmt(res.diff), runs), mark(ci, runs), note]


def _pick(files: dict[str, dict[str, Any]], spec: str) -> tuple[list[Any], dict[str, list[Any]]] | None:
    """``file`` or ``file#key`` of a run's per-item files: (ids, {key: scores}); None when absent."""
    name, _, key = spec.partition("#")
    data = files.get(name)
    if data is None:
        return None
    scores = data.get("scores") or {}
    if key:
        return (data.get("ids") or [], {key: scores[key]}) if key in scores else None
    return data.get("ids") or [], scores


def _compare(table: Table, label_a: str, label_b: str, spec: str, a: tuple, b: tuple, runs: list[Run],
             skip_same: bool = False) -> None:
    (ids_a, sa), (ids_b, sb) = a, b
    pairs = [(k, k) for k in sa if k in sb]
    if skip_same:  # scores that do not depend on the variant (a floor saved beside the model) compare nothing
        same = [k for k, _ in pairs if list(ids_a) == list(ids_b) and sa[k] == sb[k]]
        pairs = [p for p in pairs if p[0] not in same]
        if same:
            table.notes.append(f"{label_a} vs {label_b}: {spec} {', '.join(same)} identical in both, left out")
    if not pairs and len(sa) == len(sb) == 1:  # file#key vs file#other_key: the two named scores
        pairs = [(next(iter(sa)), next(iter(sb)))]
    if not pairs:
        table.notes.append(f"{label_a} vs {label_b} ({spec}): no score key in common ({list(sa)} / {list(sb)})")
    for ka, kb in pairs:
        what = f"{spec}: {ka}" if ka == kb else f"{spec}: {ka} vs {kb}"
        table.rows.append(_row(label_a, label_b, what, ids_a, sa[ka], ids_b, sb[kb], runs))


def item_tables(runs: list[Run], variants: list[str], baseline: str, compare: list[str] | None = None
                ) -> list[Table]:
    """The per-item bootstrap tables: variant vs baseline per shared per-item file, and ``compare`` (``A:B``)
    within each run; none when no run saved per-item scores."""
    done = [r for r in runs if r.status == "done"]
    files = {r.name: read_per_item(r.items_dir or r.run_dir) for r in done}
    tables = []
    across = Table(f"Paired bootstrap over test items: variant vs baseline {baseline} (same seed and fold)", HEADER)
    base = {(r.seed, r.fold): r for r in done if r.variant == baseline}
    for r in done:
        b = base.get((r.seed, r.fold))
        if r.variant == baseline or b is None:
            continue
        for name in [n for n in files[r.name] if n in files[b.name]]:
            _compare(across, r.name, b.name, name, _pick(files[r.name], name), _pick(files[b.name], name), [r, b],
                     skip_same=True)
    if across.rows:
        across.notes.append(f"items resampled jointly for both runs, {BOOTSTRAP_RESAMPLES} times (seed "
                            f"{BOOTSTRAP_SEED}); the interval is over test items, not over seeds (F51)")
        tables.append(across)
    for spec in compare or []:
        name_a, sep, name_b = spec.partition(":")
        if not sep or not name_a or not name_b:
            raise ConfigError(f"report: --items {spec!r}; expected A:B (per-item file names, or file#key)")
        within = Table(f"Paired bootstrap over test items: {name_a} vs {name_b} within each run", HEADER)
        for r in done:
            a, b = _pick(files[r.name], name_a), _pick(files[r.name], name_b)
            if a is None or b is None:
                within.notes.append(f"{r.name}: no per-item scores {name_a if a is None else name_b} "
                                    f"(has {sorted(files[r.name]) or 'none'})")
                continue
            _compare(within, f"{r.name}: {name_a}", f"{r.name}: {name_b}", spec, a, b, [r])
        tables.append(within)
    return tables

