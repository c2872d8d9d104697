"""`make demo`: run every ``configs/*/demo.yaml`` one after the other and print their headline metrics.

A config with a ``stages:`` list (after composing its ``# base:`` files) runs as ``lit-exp curriculum``, otherwise
as ``lit-exp fit``; a study whose plugin registers a demo tool (``registry.register_demo``) runs it instead
(``lit-exp TOOL -c demo.yaml --run_dir DIR``; e.g. the multilabel study's cross-validation and report). Each demo runs in its own process, so one failing demo is reported and the others still run.
Every invocation writes to a new folder (``runs/demo/<timestamp>/<study>``): earlier demo runs are never touched.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lit_experiments import registry
from lit_experiments.core.configs import composition, load_composed


def find_demos(config_root: Path, only: list[str] | None = None) -> list[Path]:
    demos = sorted(config_root.glob("*/demo.yaml"))
    if only:
        demos = [d for d in demos if d.parent.name in only]
    return demos


def run_demo(config: Path, out_root: Path, extra: list[str]) -> dict:
    study = config.parent.name
    run_dir = out_root / study
    tool = registry.demo_tool(study)
    if tool is not None:
        cmd = [sys.executable, "-m", "lit_experiments", tool, "-c", str(config), "--run_dir", str(run_dir), *extra]
    else:
        sub = "curriculum" if "stages" in load_composed(config) else "fit"
        files = [a for f in composition(config) for a in ("-c", str(f))]
        cmd = [sys.executable, "-m", "lit_experiments", sub, *files, f"--trainer.run_dir={run_dir}", *extra]
    print(f"\n=== demo {study}: {' '.join(cmd[2:])}", flush=True)
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}
    proc = subprocess.run(cmd, env=env)
    wall = time.perf_counter() - start
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    return {"study": study, "ok": proc.returncode == 0, "wall_s": round(wall, 1), "results": str(results_path),
            "headline": results.get("headline", {})}


def format_table(rows: list[dict]) -> str:
    lines = [f"{'study':<14} {'status':<7} {'wall_s':>7}  headline metrics", "-" * 78]
    for row in rows:
        metrics = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row["headline"].items())
        lines.append(f"{row['study']:<14} {'ok' if row['ok'] else 'FAILED':<7} {row['wall_s']:>7.1f}  {metrics}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lit-exp demo", description=__doc__)
    parser.add_argument("--configs", default="configs", help="folder holding <study>/demo.yaml")
    parser.add_argument("--out", default=None, help="run directories go to OUT/<study> (default: a new "
                        "runs/demo/<timestamp>)")
    parser.add_argument("--only", nargs="*", help="study names to run (default: all)")
    args, extra = parser.parse_known_args(argv)
    demos = find_demos(Path(args.configs), args.only)
    if not demos:
        print(f"no demo configs found under {args.configs}/*/demo.yaml", file=sys.stderr)
        return 1
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
