"""Floors and references beside each headline (F49) and the tuned-on-test marks (F47) of `lit-exp report`.

A run's results.json carries ``references: {headline metric: [{"name", "kind": "floor" | "reference", "value",
"what"}]}`` (:func:`core.results.reference_row`), computed by the same metric code on the same test units. The
report prints them as rows under the variants of that metric (mean +- std over the runs of a variant), and for
each variant how far its mean lies above the strongest floor, in units of its own std. A run whose
``splits.tuned_on_test`` is true (validation overlapped test by opt-in) gets every number marked.
"""
from __future__ import annotations

import math
from typing import Any

from ..core.results import FLOOR, REFERENCES, check_floors
from .report_stats import Run, fmt, mean_std, variance_source

TUNED = " [tuned on test]"
#: metric-name parts for which lower is better (the strongest floor is then the lowest)
LOWER_IS_BETTER = ("loss", "error", "err", "ece", "nll", "mse", "mae", "rmse", "perplexity")


def tuned(results: dict[str, Any]) -> bool:
    """Whether ``results["splits"]`` (a record or nested records) says ``tuned_on_test: true``."""
    def walk(value: Any) -> bool:
        if isinstance(value, dict):
            return value.get("tuned_on_test") is True or any(walk(v) for v in value.values())
        return isinstance(value, list) and any(walk(v) for v in value)

    return walk(results.get("splits"))


def mark(cell: str, runs: list[Run]) -> str:
    """``cell`` with the tuned-on-test mark when any of ``runs`` was tuned on its test split (a ``-`` stays)."""
    return cell + TUNED if cell != "-" and any(r.tuned_on_test for r in runs) else cell


def lower_is_better(metric: str) -> bool:
    last = metric.rsplit("/", 1)[-1].lower()
    return any(part in LOWER_IS_BETTER for part in last.replace("-", "_").split("_"))


def references(runs: list[Run], metric: str) -> dict[tuple[str, str], dict[str, Any]]:
    """``(kind, name) -> {"values", "runs", "what"}`` of the reference rows of ``metric`` over ``runs``."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in runs:
        for row in (r.results.get(REFERENCES) or {}).get(metric) or []:
            if not isinstance(row, dict) or "name" not in row:
                continue
            entry = out.setdefault((str(row.get("kind", FLOOR)), str(row["name"])),
                                   {"values": [], "runs": [], "what": str(row.get("what") or "")})
            value = row.get("value")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                entry["values"].append(float(value))
                entry["runs"].append(r)
    return out


def strongest_floor(runs: list[Run], metric: str) -> tuple[str, float] | None:
    """The floor of ``metric`` a model must beat: the highest (the lowest for a loss) mean over ``runs``."""
    floors = [(name, mean_std(e["values"])[0]) for (kind, name), e in references(runs, metric).items()
              if kind == FLOOR and e["values"]]
    if not floors:
        return None
    pick = min if lower_is_better(metric) else max
    return pick(floors, key=lambda f: f[1])


def floor_gap(runs: list[Run], metric: str) -> str:
    """``+0.1200 (4.1 std) over <floor>``: the variant's mean above its strongest floor, in its own stds."""
    values = [v for v in (r.metric(metric) for r in runs) if v is not None]
    floor = strongest_floor(runs, metric)
    if not values or floor is None:
        return "-"
    mean, std = mean_std(values)
    gap = (floor[1] - mean) if lower_is_better(metric) else (mean - floor[1])
    spread = f" ({gap / std:.1f} std)" if std and math.isfinite(std) and std > 0 else " (std n/a)"
    return mark(f"{gap:+.4f}{spread} over {floor[0]}", runs)


def reference_rows(runs: list[Run], variants: list[str], metric: str, base_mean: float | None
                   ) -> list[dict[str, str]]:
    """Rows ``floor: <name>`` / ``reference: <name>`` of ``metric``: one per name when every variant gives the
    same values, else one per name and variant (mean +- std over the variant's runs)."""
    per_variant = {v: references([r for r in runs if r.variant == v], metric) for v in variants}
    keys = list(dict.fromkeys(k for refs in per_variant.values() for k in refs))
    keys.sort(key=lambda k: k[0] != FLOOR)  # floors first, then references, each in the runs' order
    rows = []
    for key in keys:
        found = {v: refs[key] for v, refs in per_variant.items() if key in refs and refs[key]["values"]}
        same = len({tuple(sorted(e["values"])) for e in found.values()}) == 1
        groups = [(v, e, e["runs"]) for v, e in found.items()]
        if same and found:  # one row; marked when any variant's runs were tuned on test
            groups = [(None, groups[0][1], [r for g in groups for r in g[2]])]
        for variant, entry, marked in groups:
            mean, std = mean_std(entry["values"])
            delta = None if base_mean is None else mean - base_mean
            label = f"{key[0]}: {key[1]}" + ("" if variant is None else f" ({variant})")
            rows.append({"variant": label, "n": str(len(entry["values"])), "mean": mark(fmt(mean), marked),
                         "std": mark(fmt(std), marked), "variance from": variance_source(entry["runs"]),
                         "delta": mark(fmt(delta), marked), "note": entry["what"]})
    return rows


def floor_warnings(runs: list[Run], variants: list[str]) -> list[str]:
    """⚠ per variant whose runs' headline metrics have no floor row (:func:`core.results.check_floors`)."""
    lines = []
    for v in variants:
        problems = [p for r in runs if r.variant == v and r.status == "done" and r.results.get("headline")
                    for p in check_floors(r.results)]
        for problem in dict.fromkeys(problems):
            lines.append(f"⚠ {v}: {problem}; a reader cannot tell how far above doing nothing it is (F49)")
    return lines


def tuned_warnings(runs: list[Run]) -> list[str]:
    tuned_runs = [r.name for r in runs if r.tuned_on_test]
    if not tuned_runs:
        return []
    return [f"⚠ tuned on test: {', '.join(tuned_runs)} validated on (part of) the test split "
            "(splits.tuned_on_test: true); every number of these runs is marked" + TUNED + " (F47)"]
