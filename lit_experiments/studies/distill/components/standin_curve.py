"""The stand-in teacher's learning curve per prompt family (F53): can shape-category prompts be learned?

    python -m lit_experiments.studies.distill.components.standin_curve --concept both --generic object thing shape item \\
        --steps 1500 --every 150 --out docs/figures/distill/standin_curve

Trains a stand-in (:func:`~.standin._fit`, the recipe of :class:`~.standin.StandinTeacher`) and scores it every
``--every`` steps on its held-out world (:func:`~.standin.evaluate_standin_teacher`: ``miou_pos`` of every family
of prompt words: ``color``, ``category``, ``generic``); writes ``<out>.json`` (the rows) and ``<out>.png``. Nothing
is cached: this measures, it does not serve a teacher.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch


def learning_curve(data: dict[str, Any], steps: int, every: int, batch_size: int = 16, lr: float = 1e-3,
                   seed: int = 0, config: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows ``{"step", "seconds", <evaluate_standin_teacher keys>}`` of one training run (see the module docs)."""
    from lit_experiments.core.seeding import isolated_rng

    from .standin import DEFAULT_DATA, _fit, default_config, evaluate_standin_teacher
    from .teacher import Sam3Teacher

    data = {**DEFAULT_DATA, **data}
    teacher = Sam3Teacher(config=json.loads(json.dumps(config or default_config())), init_seed=seed)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def score(step: int) -> None:
        with torch.no_grad():
            teacher.model.eval()
            q = evaluate_standin_teacher(teacher, data)
        rows.append({"step": step, "seconds": round(time.perf_counter() - t0, 1),
                     **{k: v for k, v in q.items() if isinstance(v, (int, float))}})
        fams = {k: round(v, 3) for k, v in rows[-1].items() if k.startswith("miou_pos")}
        print(f"standin curve: step {step}: {fams}", flush=True)

    with isolated_rng():
        _fit(teacher, data, steps, batch_size, lr, seed, max(1, steps // 10), callback=score, every=every)
    return rows


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
    keys = sorted({k for r in rows for k in r if k.startswith("miou_pos")})
    for key in keys:
        ax.plot([r["step"] for r in rows], [r.get(key, float("nan")) for r in rows], marker="o", ms=3,
                label=key.replace("miou_pos/", "") if "/" in key else "all words")
    ax.set_xlabel("training step (batch 16)")
    ax.set_ylabel("mIoU on positive units (held-out world)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concept", default="both", choices=("color", "category", "both"))
    p.add_argument("--generic", nargs="*", default=["object", "thing", "shape", "item"])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--every", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default="{}", help="JSON: more stand-in data keys (world: min_objects, max_objects...)")
    p.add_argument("--queries", type=int, default=None, help="the stand-in's queries (default: the recipe's)")
    p.add_argument("--out", default="docs/figures/distill/standin_curve")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from .standin import default_config
    from .teacher import tiny_config

    data = {"concept": args.concept, "generic": list(args.generic), **json.loads(args.data)}
    config = tiny_config(num_queries=args.queries) if args.queries else default_config()
    rows = learning_curve(data, args.steps, args.every, seed=args.seed, config=config)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"data": data, "steps": args.steps, "seed": args.seed,
                                                    "queries": args.queries,
                                                    "threads": args.threads, "rows": rows}, indent=1))
    plot(rows, out.with_suffix(".png"), f"stand-in SAM3, concept {args.concept} + generic words")
    print(f"standin curve -> {out.with_suffix('.json')}, {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
