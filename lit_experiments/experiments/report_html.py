"""HTML page, PNG figures and the wandb tables of `lit-exp report` (the tables come from experiments/report.py)."""

from __future__ import annotations

import html
import os
import re
import shutil
from pathlib import Path

from .curves import Curve, plot
from .report_floors import references
from .report_stats import Run, Table

STYLE = ("body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse;"
         "margin:0.5em 0 1.5em}th,td{border:1px solid #bbb;padding:3px 8px;font-size:13px;text-align:left}"
         "th{background:#eee}.warn{color:#a40}.note{color:#555;font-style:italic}img{max-width:100%}")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def render_html(title: str, tables: list[Table], warnings: list[str], figures: list[str]) -> str:
    """A static page: no script, no external resource; figures are files next to it."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{e(title)}</h1>"]
    if warnings:
        parts.append("<ul>" + "".join(f"<li class='warn'>{e(w)}</li>" for w in warnings) + "</ul>")
    for i, t in enumerate(tables):
        parts.append(f"<h2>{e(t.title)}</h2><table id='table-{i}'><thead><tr>"
                     + "".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in t.rows]
        parts.append("</tbody></table>" + "".join(f"<p class='note'>{e(n)}</p>" for n in t.notes))
    if figures:
        parts.append("<h2>Figures</h2>")
        parts += [f"<figure><img src='{e(f)}' alt='{e(Path(f).stem)}'><figcaption>{e(f)}</figcaption></figure>"
                  for f in figures if not f.startswith("runs/")]
        links = [f for f in figures if f.startswith("runs/")]
        if links:
            parts.append("<h3>Figures of the runs</h3><ul>"
                         + "".join(f"<li><a href='{e(f)}'>{e(f)}</a></li>" for f in links) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def metric_figures(runs: list[Run], variants: list[str], metrics: list[str], out: Path) -> list[str]:
    """One PNG per metric: every run's value per variant, the variant's mean, and the metric's floors (dashed)
    and references (dotted), each the mean over the runs that carry it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for m in metrics:
        fig, ax = plt.subplots(figsize=(1.2 + 1.2 * len(variants), 3.4))
        for i, v in enumerate(variants):
            values = [r.metric(m) for r in runs if r.variant == v and r.status == "done"]
            values = [x for x in values if x is not None]
            if values:
                ax.scatter([i] * len(values), values, alpha=0.6)
                ax.hlines(sum(values) / len(values), i - 0.3, i + 0.3, color="k")
        done = [r for r in runs if r.status == "done"]
        for (kind, name), entry in references(done, m).items():  # floors dashed, references dotted (F49)
            if entry["values"]:
                y = sum(entry["values"]) / len(entry["values"])
                ax.axhline(y, color="0.4", lw=1, ls="--" if kind == "floor" else ":")
                ax.annotate(f"{kind}: {name}", (0.01, y), xycoords=("axes fraction", "data"), fontsize=7,
                            color="0.3", va="bottom")
        ax.set_xticks(range(len(variants)), variants, rotation=20, fontsize=8)
        ax.set_title(m, fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        name = f"figures/metric_{slug(m)}.png"
        (out / "figures").mkdir(parents=True, exist_ok=True)
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        files.append(name)
    return files


def _curve_metrics(runs: list[Run], metrics: list[str]) -> list[str]:
    """The report metrics (a test metric as its val counterpart) that the runs' stage CSVs log."""
    header: set[str] = set()
    for r in runs:
        for path in [*Path(r.run_dir).glob("stages/*/metrics.csv"), *Path(r.run_dir).glob("metrics.csv")]:
            with path.open() as fh:
                header.update(fh.readline().strip().split(","))
    wanted = [m.replace("/test/", "/val/") for m in metrics] + list(metrics)
    return [m for m in dict.fromkeys(wanted) if m in header]


def run_label(r: Run) -> str:
    """``variant s<seed> f<fold>`` (the parts a run has)."""
    return " ".join([r.variant] + [f"{p}{x}" for p, x in (("s", r.seed), ("f", r.fold)) if x is not None])


def curve_figures(runs: list[Run], metrics: list[str], out: Path) -> list[str]:
    """Stage-wise curves (stages end to end, :func:`core.curves.read_curves`) per metric over every run."""
    from .curves import read_curves

    files = []
    for m in _curve_metrics(runs, metrics):
        curves: list[Curve] = []
        for r in runs:
            try:
                curves += read_curves(Path(r.run_dir), [m], run_label(r))
            except (FileNotFoundError, KeyError):
                continue
        if curves:
            name = f"figures/curves_{slug(m)}.png"
            plot(curves, out / name)
            files.append(name)
    return files


def copy_run_figures(runs: list[Run], out: Path) -> list[str]:
    """Copy each run's figures (every PNG of the run folder: ``figures/``, ``tables/``, ``eval/test-*/``; not an
    earlier report's nor a superseded run's) into ``out/runs/<run>/`` so the report folder stands alone."""
    files = []
    for r in runs:
        root = Path(r.run_dir)
        for png in sorted(root.glob("**/*.png")):
            inner = png.relative_to(root)
            if inner.parts[0] in ("report", "superseded"):
                continue
            inner = inner.relative_to("figures") if inner.parts[0] == "figures" else inner
            rel = Path("runs") / slug(r.name) / inner
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, out / rel)
            files.append(rel.as_posix())
    return files


def log_wandb(tables: list[Table]) -> bool:
    """Log the tables to the active wandb run; nothing when WANDB_MODE=disabled, no wandb or no run."""
    if os.environ.get("WANDB_MODE", "").lower() == "disabled":
        return False
    try:
        import wandb
    except ImportError:
        return False
    if getattr(wandb, "run", None) is None:
        return False
    wandb.run.log({f"report/{slug(t.title)}": wandb.Table(columns=t.header, data=t.rows) for t in tables})
    return True
