"""`make demo`: run every ``configs/*/demo.yaml`` one after the other and print their headline metrics.

A config with a ``stages:`` list (after composing its ``# base:`` files) runs as ``lit-exp curriculum``, otherwise
as ``lit-exp fit``; a study whose plugin registers a demo tool (``registry.register_demo``) runs it instead
(``lit-exp TOOL -c demo.yaml --run_dir DIR``; e.g. the multilabel study's cross-validation and report). Each demo runs in its own process, so one failing demo is reported and the others still run.
Every invocation writes to a new folder (``runs/demo/<timestamp>/<study>``): earlier demo runs are never touched.

``--seeds 0 1 2`` (F50) runs every demo once per seed instead (``--seed_everything=N`` for a fit / curriculum, the
demo tool's ``--seed_everything N``) into ``runs/demo-seeds/<timestamp>/seed<N>/<study>`` and writes each study's
headline as mean +- std over the seeds beside its floors (:mod:`lit_experiments.experiments.seedtable`) to
``OUT/demo_seeds.{json,md}``; ``--summary FILE`` merges it into a kept summary and ``--readme README.md``
regenerates the README's ``<!-- results:STUDY -->`` tables from it (``make demo-seeds`` does all three).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from lit_experiments import registry
from lit_experiments.core.configs import composition, load_composed
from lit_experiments.core.results import check_floors


def find_demos(config_root: Path, only: list[str] | None = None) -> list[Path]:
    demos = sorted(config_root.glob("*/demo.yaml"))
    if only:
        demos = [d for d in demos if d.parent.name in only]
    return demos


def demo_command(config: Path, run_dir: Path, extra: list[str], seed: int | None = None) -> list[str]:
    """The command running ``config``'s demo into ``run_dir`` (``seed``: its ``seed_everything``)."""
    study = config.parent.name
    tool = registry.demo_tool(study)
    if tool is not None:
        seeded = [] if seed is None else ["--seed_everything", str(seed)]
        return [sys.executable, "-m", "lit_experiments", tool, "-c", str(config), "--run_dir", str(run_dir), *seeded,
                *extra]
    sub = "curriculum" if "stages" in load_composed(config) else "fit"
    files = [a for f in composition(config) for a in ("-c", str(f))]
    seeded = [] if seed is None else [f"--seed_everything={seed}"]
    return [sys.executable, "-m", "lit_experiments", sub, *files, f"--trainer.run_dir={run_dir}", *seeded, *extra]


def run_demo(config: Path, out_root: Path, extra: list[str], seed: int | None = None) -> dict:
    study = config.parent.name
    run_dir = out_root / study
    cmd = demo_command(config, run_dir, extra, seed)
    print(f"\n=== demo {study}{'' if seed is None else f' seed {seed}'}: {' '.join(cmd[2:])}", flush=True)
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}
    proc = subprocess.run(cmd, env=env)
    wall = time.perf_counter() - start
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    problems = check_floors(results) if proc.returncode == 0 else []
    for problem in problems:  # F49: a headline printed without its floor is not a result
        print(f"demo {study}: {problem}", file=sys.stderr, flush=True)
    return {"study": study, "ok": proc.returncode == 0 and not problems, "wall_s": round(wall, 1),
            "results": str(results_path), "headline": results.get("headline", {}), "returncode": proc.returncode,
            **({"problems": problems} if problems else {}),
            **({} if seed is None else {"seed": seed})}


def format_table(rows: list[dict]) -> str:
    lines = [f"{'study':<14} {'status':<7} {'wall_s':>7}  headline metrics", "-" * 78]
    for row in rows:
        metrics = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row["headline"].items())
        lines.append(f"{row['study']:<14} {'ok' if row['ok'] else 'FAILED':<7} {row['wall_s']:>7.1f}  {metrics}")
    return "\n".join(lines)


def uncommitted_changes() -> bool:
    """Whether tracked files differ from the commit the runs will record (``git status``; False outside git)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                             text=True, timeout=10, cwd=Path(__file__).parent)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def tools_without_seed_option(demos: list[Path]) -> list[str]:
    """The demo tools among ``demos``' studies whose ``--help`` has no ``--seed_everything`` (their runs would not
    follow the seed: F50), checked before a sweep of minutes starts."""
    import contextlib
    import importlib
    import io

    missing = []
    for config in demos:
        tool = registry.demo_tool(config.parent.name)
        if tool is None:
            continue
        module = registry.tools().get(tool)
        if module is None:
            missing.append(f"{tool} (not a registered tool)")
            continue
        text = io.StringIO()
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(io.StringIO()):
            try:
                importlib.import_module(module).main(["--help"])
            except SystemExit:
                pass
        if not re.search(r"^\s+(-\w, )?--seed_everything\b", text.getvalue(), re.M):  # an option, not prose
            missing.append(tool)
    return missing


def seed_report(study: str, run_dirs: list[Path], out: Path) -> str | None:
    """``lit-exp report`` of a fit / curriculum demo's seed runs (mean +- std with the variance source, floors) into
    ``out``; a demo tool writes its own reports (""). None when the report failed."""
    if registry.demo_tool(study) is not None:
        return ""
    dirs = [str(d) for d in run_dirs if (d / "results.json").is_file()]
    if not dirs:
        return None
    cmd = [sys.executable, "-m", "lit_experiments", "report", *dirs, "--out", str(out)]
    print(f"\n=== report {study}: {' '.join(cmd[2:])}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}
    if subprocess.run(cmd, env=env).returncode != 0:
        print(f"[demo --seeds] {study}: lit-exp report failed (the seed table is still written)", flush=True)
        return None
    return str(out / "report.md")


def run_seeds(demos: list[Path], seeds: list[int], out: Path, extra: list[str], summary_path: str | None,
              readme: str | None) -> int:
    """Every demo once per seed into ``out/seed<N>/<study>``, then the seed tables (written after each study, so an
    interrupted sweep keeps the studies it finished)."""
    from lit_experiments.experiments import seedtable

    total, done, start = len(demos) * len(seeds), 0, time.perf_counter()
    dirty = uncommitted_changes()
    if dirty:
        print("[demo --seeds] the working tree has uncommitted changes: the tables will say so", flush=True)
    rows: list[dict] = []
    summary = seedtable.load_summary(summary_path) if summary_path else {"studies": {}}
    local: dict = {"studies": {}}
    for config in demos:
        study, errors, walls = config.parent.name, {}, {}
        for seed in seeds:
            elapsed = time.perf_counter() - start
            eta = f", about {elapsed / done * (total - done) / 60:.1f} min left" if done else ""
            print(f"\n[demo --seeds] run {done + 1}/{total}: {study} seed {seed} ({elapsed / 60:.1f} min in{eta})",
                  flush=True)
            row = run_demo(config, seedtable.seed_dir(out, seed), extra, seed)
            rows.append(row)
            done += 1
            walls[str(seed)] = row["wall_s"]
            if not row["ok"]:
                errors[seed] = f"exit code {row['returncode']}"
        entry = seedtable.collect(out, [study], {study: errors})
        entry["studies"][study]["wall_s"] = walls
        entry["studies"][study]["dirty"] = dirty
        report = seed_report(study, [seedtable.seed_dir(out, s) / study for s in seeds], out / "report" / study)
        entry["studies"][study]["report"] = report
        if report is None:
            rows.append({"study": f"{study} report", "ok": False, "wall_s": 0.0, "headline": {}})
        entry["command"] = "lit-exp demo --seeds " + " ".join(map(str, seeds))
        local = seedtable.merge(local, entry)
        seedtable.write_summary(local, out / "demo_seeds.json")
        if summary_path:
            summary = seedtable.merge(summary, entry)
            seedtable.write_summary(summary, summary_path)
        print(f"\n[demo --seeds] {study}:\n" + seedtable.render_study(entry["studies"][study]), flush=True)
    print("\n" + format_table(rows))
    print(f"\nseed tables: {out / 'demo_seeds.md'}" + (f" and {summary_path}" if summary_path else ""))
    if readme:
        changed = seedtable.update_readme(readme, summary if summary_path else local)
        print(f"{readme}: results blocks {'regenerated' if changed else 'already current'}")
    return 0 if all(r["ok"] for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lit-exp demo", description=__doc__)
    parser.add_argument("--configs", default="configs", help="folder holding <study>/demo.yaml")
    parser.add_argument("--out", default=None, help="run directories go to OUT/<study> (default: a new "
                        "runs/demo/<timestamp>)")
    parser.add_argument("--only", nargs="*", help="study names to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, help="run every demo once per seed (its seed_everything) "
                        "into OUT/seed<N>/<study> and write mean +- std tables (OUT/demo_seeds.{json,md}; F50)")
    parser.add_argument("--summary", help="with --seeds: merge the tables into this kept summary JSON (e.g. "
                        "docs/results/demo_seeds.json; a .md beside it), replacing the studies that ran")
    parser.add_argument("--readme", help="with --seeds: regenerate this file's <!-- results:STUDY --> tables from the "
                        "summary")
    args, extra = parser.parse_known_args(argv)
    if (args.summary or args.readme) and not args.seeds:
        parser.error("--summary / --readme go with --seeds (to regenerate only: python -m "
                     "lit_experiments.experiments.seedtable --summary FILE --readme README.md)")
    if any(a == "--seed_everything" or a.startswith("--seed_everything=") for a in extra) and args.seeds:
        parser.error("--seeds sets each run's seed_everything; do not pass --seed_everything too")
    demos = find_demos(Path(args.configs), args.only)
    if not demos:
        print(f"no demo configs found under {args.configs}/*/demo.yaml", file=sys.stderr)
        return 1
    unknown = sorted(set(args.only or []) - {d.parent.name for d in demos})
    if unknown:
        print(f"--only {' '.join(unknown)}: no {args.configs}/<study>/demo.yaml for it", file=sys.stderr)
        return 1
    if args.seeds:
        if len(set(args.seeds)) != len(args.seeds):
            parser.error(f"--seeds {' '.join(map(str, args.seeds))} repeats a seed")
        out = Path(args.out) if args.out else Path("runs/demo-seeds") / time.strftime("%Y%m%d-%H%M%S")
        from lit_experiments.experiments.seedtable import seed_dir

        used = [str(seed_dir(out, s) / d.parent.name) for s in args.seeds for d in demos
                if (seed_dir(out, s) / d.parent.name).exists()]
        if used:
            parser.error(f"{used[0]} already exists (a seed table must not read an older run): use a new --out")
        missing = tools_without_seed_option(demos)
        if missing:
            parser.error(f"demo tool(s) {', '.join(missing)} take no --seed_everything option: their runs would not "
                         "follow --seeds (F50)")
        return run_seeds(demos, args.seeds, out, extra, args.summary, args.readme)
    out = Path(args.out) if args.out else Path("runs/demo") / time.strftime("%Y%m%d-%H%M%S")
    args.out = str(out)
    rows = [run_demo(config, out, extra) for config in demos]
    table = format_table(rows)
    print("\n" + table)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(rows, indent=2))
    print(f"\nsummary: {Path(args.out) / 'summary.json'}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
