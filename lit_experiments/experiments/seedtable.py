"""Seed tables (F50): a study's demo headline as mean +- std over seeds, beside its floors, and the README's
result tables generated from them (never typed by hand).

    python -m lit_experiments.experiments.seedtable --collect runs/demo-seeds/<time> --summary docs/results/demo_seeds.json
    python -m lit_experiments.experiments.seedtable --summary docs/results/demo_seeds.json --readme README.md [--check]

* :func:`collect` reads ``<dir>/seed<N>/<study>/results.json`` (what ``lit-exp demo --seeds ...`` writes) and
  :func:`summarise_study` turns one study's runs into: each headline metric's values, mean, sample std (ddof 1)
  and n over seeds; each floor / reference row of ``results.json["references"][metric]`` the same way; the
  strongest floor (the largest mean: every demo headline is higher-is-better) and ``gap_over_std`` = (headline
  mean - strongest floor mean) / headline std.
* The summary JSON (``docs/results/demo_seeds.json``) holds every study; :func:`render_study` draws one study's
  markdown table from it, :func:`fill_readme` puts each table between ``<!-- results:STUDY -->`` and
  ``<!-- /results:STUDY -->`` of a README, :func:`check_readme` says which blocks differ from the summary.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from .report_stats import mean_std

SEED_DIR = re.compile(r"^seed(-?\d+)$")
MARKER = re.compile(r"<!-- results:([A-Za-z0-9_.-]+) -->\n(.*?)<!-- /results:\1 -->", re.S)
OPEN_MARKER = re.compile(r"<!-- results:([A-Za-z0-9_.-]+) -->")
FILL_COMMAND = "make demo-seeds"
TARGET_GAP = 3.0  # issue 22: the headline at least 3 seed-stds above its strongest floor
FLOOR = "floor"


def seed_dir(out: str | Path, seed: int) -> Path:
    """Where ``lit-exp demo --seeds`` puts seed ``seed``'s run dirs: ``out/seed<N>/<study>``."""
    return Path(out) / f"seed{int(seed)}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def spread(values: Iterable[Any]) -> dict[str, Any]:
    """``values`` (None for a seed without a number), ``mean``, sample ``std`` (ddof 1; None below n = 2), ``n``."""
    values = [_number(v) for v in values]
    present = [v for v in values if v is not None]
    n = len(present)
    mean, std = mean_std(present) if n else (None, None)
    return {"values": values, "mean": mean, "std": std if n >= 2 else None, "n": n}


def summarise_study(study: str, runs: dict[int, dict[str, Any] | None], paths: dict[int, str] | None = None,
                    errors: dict[int, str] | None = None) -> dict[str, Any]:
    """One study over seeds: ``runs`` maps a seed to its results.json (None: the run wrote none).

    Every numeric headline metric of any seed is summarised; a seed where it is missing counts as missing (n says
    how many seeds have it). Reference rows are matched by name across seeds."""
    seeds = sorted(int(s) for s in runs)
    errors = {int(k): v for k, v in (errors or {}).items()}
    for seed in seeds:
        data = runs[seed]
        if data is None:
            errors.setdefault(seed, "no results.json")
        elif not data.get("headline"):
            errors.setdefault(seed, "results.json has no headline")
    found = [runs[s] for s in seeds if runs[s] and runs[s].get("headline")]
    names: list[str] = []
    for data in found:
        names += [k for k, v in data["headline"].items() if _number(v) is not None and k not in names]
    metrics: dict[str, Any] = {}
    for name in names:
        row = spread((runs[s] or {}).get("headline", {}).get(name) for s in seeds)
        refs: list[dict[str, Any]] = []
        for seed in seeds:
            for ref in ((runs[seed] or {}).get("references") or {}).get(name, []):
                if not any(r["name"] == ref.get("name") for r in refs):
                    refs.append({"name": ref.get("name"), "kind": ref.get("kind"), "what": ref.get("what", "")})
        for ref in refs:
            by_seed = []
            for seed in seeds:
                rows = ((runs[seed] or {}).get("references") or {}).get(name, [])
                by_seed.append(next((r.get("value") for r in rows if r.get("name") == ref["name"]), None))
            ref.update(spread(by_seed))
        floors = [r for r in refs if r["kind"] == FLOOR and r["mean"] is not None]
        strongest = max(floors, key=lambda r: r["mean"]) if floors else None
        gap = None if strongest is None or row["mean"] is None else row["mean"] - strongest["mean"]
        ratio = None
        if gap is not None and row["std"] is not None:
            ratio = gap / row["std"] if row["std"] > 0 else None
        metrics[name] = {**row, "references": refs, "strongest_floor": strongest["name"] if strongest else None,
                         "gap": gap, "gap_over_std": ratio}
    shas = sorted({d.get("git_sha") for d in found if d.get("git_sha")})
    return {"study": study, "seeds": seeds, "errors": {str(k): v for k, v in sorted(errors.items())},
            "runs": {str(s): p for s, p in sorted((paths or {}).items())}, "git_sha": shas,
            "collected": time.strftime("%Y-%m-%dT%H:%M:%S"), "metrics": metrics}


def collect(out: str | Path, studies: Iterable[str] | None = None,
            errors: dict[str, dict[int, str]] | None = None) -> dict[str, Any]:
    """``{"studies": {study: summary}}`` from ``out/seed<N>/<study>/results.json`` (``studies``: only these)."""
    out = Path(out)
    seeds = sorted((int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := SEED_DIR.match(p.name))) \
        if out.is_dir() else []
    if not seeds:
        raise ConfigError(f"{out}: no seed<N>/ folders (what `lit-exp demo --seeds ...` writes)")
    wanted = set(studies) if studies is not None else None
    names = sorted({d.name for _, p in seeds for d in p.iterdir() if d.is_dir()} | set(wanted or ()))
    summary: dict[str, Any] = {"studies": {}}
    for study in names:
        if wanted is not None and study not in wanted:
            continue
        runs: dict[int, dict[str, Any] | None] = {}
        paths: dict[int, str] = {}
        for seed, folder in seeds:
            path = folder / study / "results.json"
            paths[seed] = str(path)
            try:
                runs[seed] = json.loads(path.read_text()) if path.is_file() else None
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}: not valid JSON ({err})") from err
        summary["studies"][study] = summarise_study(study, runs, paths, (errors or {}).get(study))
    return summary


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with every study of ``new`` replaced (a rerun of some studies keeps the others)."""
    return {**old, **new, "studies": {**old.get("studies", {}), **new.get("studies", {})}}


def load_summary(path: str | Path) -> dict[str, Any]:
    """The summary JSON at ``path`` (``{"studies": {}}`` when there is none yet)."""
    path = Path(path)
    if not path.is_file():
        return {"studies": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data.get("studies"), dict):
        raise ConfigError(f"{path}: expected a top-level 'studies' mapping (a `lit-exp demo --seeds` summary)")
    return data


def write_summary(summary: dict[str, Any], path: str | Path) -> tuple[Path, Path]:
    """``path`` (JSON) and ``path`` with ``.md`` (every study's table), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    md = path.with_suffix(".md")
    for target, text in ((path, json.dumps(summary, indent=2, allow_nan=False) + "\n"), (md, render_all(summary))):
        tmp = target.with_suffix(target.suffix + f".tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, target)
    return path, md


# ---------------------------------------------------------------- markdown


def _decimals(*values: float | None) -> int:
    big = max((abs(v) for v in values if v is not None), default=0.0)
    return 3 if big < 10 else 2 if big < 1000 else 0


def fmt_spread(row: dict[str, Any]) -> str:
    """``mean +- std`` at one number of decimals (``mean (n = 1)`` without a std; ``-`` without a value)."""
    if row.get("mean") is None:
        return "-"
    d = _decimals(row["mean"])
    if row.get("std") is None:
        return f"{row['mean']:.{d}f}"
    return f"{row['mean']:.{d}f} +- {row['std']:.{d}f}"


def fmt_values(row: dict[str, Any]) -> str:
    """The per-seed values at the decimals of ``mean +- std`` (``-`` for a seed without one)."""
    d = _decimals(row.get("mean"))
    return ", ".join("-" if v is None else f"{v:.{d}f}" for v in row.get("values", []))


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _gap_text(metric: dict[str, Any]) -> str:
    if metric.get("strongest_floor") is None:
        return "no floor"
    if metric.get("gap") is None:
        return "-"
    if metric.get("gap_over_std") is None:
        why = "n < 2" if (metric.get("std") is None) else "std 0"
        return f"{metric['gap']:+.3f} ({why})"
    ratio = metric["gap_over_std"]
    return f"{ratio:.1f}" + ("" if ratio >= TARGET_GAP else f" (< {TARGET_GAP:g})")


def render_study(entry: dict[str, Any]) -> str:
    """One study's table: a headline row per metric (mean +- std, gap / std over its strongest floor), then its
    floor / reference rows; a line above says the seeds, the commit and any failed seed."""
    seeds = entry.get("seeds", [])
    shas = ", ".join(s[:7] for s in entry.get("git_sha", [])) or "unknown"
    shas += " with uncommitted changes" if entry.get("dirty") else ""
    head = (f"{len(seeds)} seeds ({', '.join(map(str, seeds))}) of the demo, commit {shas}; mean +- std (ddof 1); "
            f"gap / std = (headline - strongest floor) / headline std, target >= {TARGET_GAP:g}.")
    lines = [head]
    for seed, error in entry.get("errors", {}).items():
        lines.append(f"Seed {seed} gave no numbers: {_cell(error)}.")
    lines += ["", "| metric / row | kind | mean +- std | per seed | gap / std | what |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, metric in entry.get("metrics", {}).items():
        strongest = metric.get("strongest_floor")
        gap = _gap_text(metric) + (f" over `{_cell(strongest)}`" if strongest and metric.get("gap") is not None else "")
        lines.append(f"| `{_cell(name)}` | headline | {fmt_spread(metric)} | {fmt_values(metric)} | {gap} | |")
        for ref in metric.get("references", []):
            lines.append(f"| &nbsp;&nbsp;{_cell(ref['name'])} | {_cell(ref['kind'])} | {fmt_spread(ref)} "
                         f"| {fmt_values(ref)} | | {_cell(ref.get('what', ''))} |")
    return "\n".join(lines) + "\n\n"  # a blank line ends the table before the closing marker


def placeholder(study: str) -> str:
    return f"(`{study}`: no seed table yet; run `{FILL_COMMAND}` to fill)\n"


def render_block(summary: dict[str, Any], study: str) -> str:
    entry = summary.get("studies", {}).get(study)
    return render_study(entry) if entry else placeholder(study)


def render_all(summary: dict[str, Any]) -> str:
    """The summary's markdown file: one section per study."""
    parts = ["# Demo headlines over seeds (generated by `lit-exp demo --seeds ...`; do not edit)\n"]
    for study in sorted(summary.get("studies", {})):
        parts.append(f"\n## {study}\n\n" + render_study(summary["studies"][study]))
    return "".join(parts)


def readme_blocks(text: str, source: str = "README") -> dict[str, str]:
    """Each ``<!-- results:STUDY -->`` ... ``<!-- /results:STUDY -->`` block's content, by study."""
    blocks = {m.group(1): m.group(2) for m in MARKER.finditer(text)}
    unclosed = [s for s in OPEN_MARKER.findall(text) if s not in blocks]
    if unclosed:
        raise ConfigError(f"{source}: marker <!-- results:{unclosed[0]} --> has no closing "
                          f"<!-- /results:{unclosed[0]} --> (on a line of its own, after the block)")
    return blocks


def fill_readme(text: str, summary: dict[str, Any], source: str = "README") -> str:
    """``text`` with every results block replaced by its study's table (or the placeholder line)."""
    readme_blocks(text, source)
    return MARKER.sub(lambda m: f"<!-- results:{m.group(1)} -->\n{render_block(summary, m.group(1))}"
                                f"<!-- /results:{m.group(1)} -->", text)


def check_readme(text: str, summary: dict[str, Any], source: str = "README") -> list[str]:
    """Problems: a results block whose content is not what ``summary`` gives, a summarised study without a block."""
    blocks = readme_blocks(text, source)
    problems = [f"{source}: block results:{study} differs from the summary (hand-edited, or regenerate it)"
                for study, content in blocks.items() if content != render_block(summary, study)]
    problems += [f"{source}: no <!-- results:{study} --> block for summarised study {study!r}"
                 for study in summary.get("studies", {}) if study not in blocks]
    return problems


def update_readme(readme: str | Path, summary: dict[str, Any]) -> bool:
    """Rewrite ``readme``'s results blocks from ``summary``; True when the file changed."""
    readme = Path(readme)
    text = readme.read_text()
    new = fill_readme(text, summary, str(readme))
    if new != text:
        readme.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lit_experiments.experiments.seedtable", description=__doc__.split("\n\n")[0])
    p.add_argument("--collect", metavar="DIR", help="a `lit-exp demo --seeds` output folder (DIR/seed<N>/<study>/): "
                   "summarise it into --summary (its studies replace those already there)")
    p.add_argument("--only", nargs="*", help="with --collect: only these studies")
    p.add_argument("--summary", required=True, help="the summary JSON (e.g. docs/results/demo_seeds.json); a .md "
                   "with every table is written beside it")
    p.add_argument("--readme", help="regenerate this file's <!-- results:STUDY --> blocks from the summary")
    p.add_argument("--check", action="store_true", help="with --readme: change nothing, exit 1 when a block differs")
    args = p.parse_args(argv)
    summary = load_summary(args.summary)
    if args.collect:
        summary = merge(summary, collect(args.collect, args.only))
        json_path, md_path = write_summary(summary, args.summary)
        print(f"summary: {json_path} and {md_path}")
    if args.readme:
        if args.check:
            problems = check_readme(Path(args.readme).read_text(), summary, args.readme)
            for line in problems:
                print(line, file=sys.stderr)
            return 1 if problems else 0
        changed = update_readme(args.readme, summary)
        print(f"{args.readme}: results blocks {'regenerated' if changed else 'already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
