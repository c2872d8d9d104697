"""`lit-exp curves`: plot logged metrics against the global step for one or more runs.

Reads the CSV logs every run writes (``<run_dir>/stages/<NN_stage>/metrics.csv``, stages in order) and
draws each requested metric as a curve per run, with the stages of a curriculum laid end to end. Writes
``<out>/curves.png`` and ``<out>/curves.csv`` (run, stage, step, metric, value) and prints the last value
of every curve.

    lit-exp curves runs/slots/shapes_long runs/slots/pixels_demo --metric slots/val/fg_ari --out runs/curves
    lit-exp curves features=runs/slots/demo pixels=runs/slots/pixels_demo --metric slots/val/fg_ari
"""
from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Curve:
    run: str
    metric: str
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)


def stage_logs(run_dir: Path) -> list[tuple[str, Path]]:
    """``(stage, metrics.csv)`` of a run in stage order; a clear error when the run has none."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    logs = sorted((p.parent.name, p) for p in run_dir.glob("stages/*/metrics.csv"))
    if not logs and (run_dir / "metrics.csv").is_file():
        logs = [(run_dir.name, run_dir / "metrics.csv")]
    if not logs:
        raise FileNotFoundError(
            f"{run_dir}: no stages/*/metrics.csv (the CSV log every lit-exp run writes); is this a run directory?"
        )
    return logs


def read_curves(run_dir: Path, metrics: list[str], label: str | None = None) -> list[Curve]:
    """One :class:`Curve` per metric; steps of later stages continue after the earlier ones."""
    label = label or run_dir.name
    curves = {m: Curve(label, m) for m in metrics}
    seen: set[str] = set()
    offset = 0
    for stage, path in stage_logs(run_dir):
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        if rows:
            seen.update(rows[0].keys())
        last = -1
        for row in rows:
            step = int(float(row.get("step") or 0))
            last = max(last, step)
            for m in metrics:
                text = row.get(m)
                if text not in (None, ""):
                    value = float(text)
                    if math.isfinite(value):
                        c = curves[m]
                        c.steps.append(offset + step)
                        c.values.append(value)
                        c.stages.append(stage)
        offset += last + 1
    missing = [m for m in metrics if not curves[m].steps]
    if missing:
        avail = sorted(k for k in seen if k not in ("step", "epoch"))
        raise KeyError(f"{run_dir}: metric(s) {missing} not logged; logged metrics are {avail}")
    return list(curves.values())


def plot(curves: list[Curve], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(c.metric for c in curves))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for c in curves:
            if c.metric == metric:
                ax.plot(c.steps, c.values, marker="o", markersize=3, label=c.run)
        ax.set_title(metric)
        ax.set_xlabel("global step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lit-exp curves", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories, optionally LABEL=DIR")
    p.add_argument("--metric", action="append", required=True, help="logged metric name (repeatable)")
    p.add_argument("--out", default="runs/curves", help="output folder for curves.png / curves.csv")
    args = p.parse_args(argv)
    curves: list[Curve] = []
    for spec in args.runs:
        label, sep, path = spec.partition("=")  # LABEL=DIR; the first '=' only, so DIR may contain '='
        if not sep:
            label, path = "", spec
        try:
            curves += read_curves(Path(path), args.metric, label or None)
        except (FileNotFoundError, KeyError) as err:
            print(f"lit-exp curves: {err.args[0] if err.args else err}")
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "curves.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "stage", "step", "metric", "value"])
        for c in curves:
            for stage, step, value in zip(c.stages, c.steps, c.values, strict=True):
                w.writerow([c.run, stage, step, c.metric, f"{value:.6g}"])
    png = plot(curves, out / "curves.png")
    for c in curves:
        pts = ", ".join(f"{s}:{v:.3f}" for s, v in zip(c.steps, c.values, strict=True))
        print(f"{c.run:<16} {c.metric:<28} last {c.values[-1]:.4f} at step {c.steps[-1]}  [{pts}]")
    print(f"wrote {png} and {out / 'curves.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
