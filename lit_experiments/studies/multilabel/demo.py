"""`lit-exp multilabel-demo`: the multilabel study's demo: stand-in towers, k-fold CV of the heads, report.

    lit-exp multilabel-demo -c configs/multilabel/demo.yaml --run_dir runs/multilabel/demo
                            [--folds 5] [--variants mlp.yaml agch.yaml probe.yaml] [--fold_seed 0]

1. The stand-in towers of ``data.init_args.towers`` (:class:`~.standin.StandinTowers`: trained once, cached)
   and their quality, :func:`~.standin.evaluate_standin`, in ``<run_dir>/standin/results.json``:
   ``test/zero_shot_acc``, ``test/probe_map`` and ``test/probe_map_init`` (the same probe on the towers at random
   initialisation). Skipped for real towers.
2. ``lit-exp cv -c CONFIG --folds K --list VARIANTS --test all --select val/map`` into ``<run_dir>/cv``: one
   ``folds.json`` for every variant, each fold's model scored on the held-out test split; ``cv.json`` holds mean /
   std per variant (``mlp``, ``agch``, ...) and metric.
3. ``lit-exp report <run_dir>/cv --baseline mlp`` into ``<run_dir>/cv/report`` (mean +- std, paired tests,
   config differences).
4. ``<run_dir>/results.json``: the headline (each variant's test mAP mean and std over folds, the paired difference
   to the baseline with its bootstrap CI and Wilcoxon p, the stand-in's numbers) and the paths of the above.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.folds import write_json

DEFAULT_VARIANTS = ("mlp.yaml", "agch.yaml", "probe.yaml")
HEADLINE_METRICS = ("test/map", "test/auc_macro", "test/tuned/f1_macro", "test/knn_map")


def standin_step(config_file: Path, out: Path) -> dict[str, Any] | None:
    """Train or load the stand-in towers of ``config`` and write their evaluation; None for other towers."""
    from lit_experiments.core.configs import load_composed
    from lit_experiments.core.folds import pool_of

    from .standin import StandinTowers, evaluate_standin

    config = load_composed(config_file)
    towers = ((config.get("data") or {}).get("init_args") or {}).get("towers") or {}
    if not str(towers.get("class_path", "")).endswith("StandinTowers"):
        return None
    start = time.perf_counter()
    built = pool_of([config_file])[0].towers  # built as the runs build it (jsonargparse), trained once or loaded
    assert isinstance(built, StandinTowers)
    quality = evaluate_standin(built, built.standin_data)
    test = {f"test/{k}": v for k, v in quality.items() if isinstance(v, (int, float))}
    data = {"study": "multilabel-standin", "test": test,
            "headline": {k: test[k] for k in ("test/zero_shot_acc", "test/probe_map", "test/probe_map_init")},
            "towers": built.settings(), "colors": quality.get("colors"),
            "wall_s": round(time.perf_counter() - start, 1)}
    write_json(out / "results.json", data)
    print(f"stand-in towers: zero-shot accuracy {test['test/zero_shot_acc']:.3f} (chance "
          f"{test['test/zero_shot_chance']:.3f}), probe mAP {test['test/probe_map']:.3f} vs "
          f"{test['test/probe_map_init']:.3f} at random init -> {out / 'results.json'}", flush=True)
    return data


def headline(cv_dir: Path, baseline: str, metric: str = "test/map") -> dict[str, Any]:
    """Mean / std per variant from cv.json and the paired difference of every variant to ``baseline``."""
    from lit_experiments.core.report import collect
    from lit_experiments.core.report_stats import paired_test

    summary = json.loads((cv_dir / "cv.json").read_text())
    out: dict[str, Any] = {}
    for variant, metrics in summary["variants"].items():
        if metric in metrics:
            out[f"{variant}/{metric}"] = metrics[metric]["mean"]
            out[f"{variant}/{metric}_std"] = metrics[metric]["std"]
    runs = collect([str(cv_dir)])[0]
    base = [r for r in runs if r.variant == baseline and r.status == "done"]
    for variant in summary["variants"]:
        if variant == baseline:
            continue
        test = paired_test(base, [r for r in runs if r.variant == variant and r.status == "done"], metric)
        if test.mean_diff is not None:
            out[f"{variant}-{baseline}/{metric}_diff"] = test.mean_diff
        if test.ci is not None:
            out[f"{variant}-{baseline}/ci95"] = f"[{test.ci[0]:+.4f}, {test.ci[1]:+.4f}]"
        if test.p is not None:
            out[f"{variant}-{baseline}/wilcoxon_p"] = test.p
    return out


def main(argv: list[str] | None = None) -> int:
    from lit_experiments.core import folds
    from lit_experiments.core.report import build_report

    p = argparse.ArgumentParser(prog="lit-exp multilabel-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", required=True, help="the demo config (composed with its # base: files)")
    p.add_argument("--run_dir", required=True, help="output folder (standin/, cv/, results.json)")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--fold_seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the fold runs (default 1: the heads on 64-d embeddings are too small for "
                        "two threads to pay off; on 2 busy cores a second thread made a fold run 7x slower)")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                   help="variant deltas, relative to the config's folder; the first is the baseline")
    args = p.parse_args(argv)
    config = Path(args.config)
    if not config.is_file():
        raise ConfigError(f"multilabel-demo: config {config} does not exist")
    variants = [v if Path(v).is_file() else config.parent / v for v in args.variants]
    missing = [str(v) for v in variants if not Path(v).is_file()]
    if missing:
        raise ConfigError(f"multilabel-demo: variant file(s) {missing} do not exist")
    run_dir = Path(args.run_dir)
    start = time.perf_counter()
    standin = standin_step(config, run_dir / "standin")
    import torch

    torch.set_num_threads(max(1, args.threads))
    cv_dir = run_dir / "cv"
    rc = folds.main(["-c", str(config), "--folds", str(args.folds), "--fold_seed", str(args.fold_seed), "--list",
                     *map(str, variants), "--test", "all", "--select", "val/map", "--out", str(cv_dir)])
    baseline = Path(variants[0]).stem
    report = build_report([str(cv_dir)], baseline=baseline, metrics=list(HEADLINE_METRICS))
    head = headline(cv_dir, baseline)
    if standin is not None:
        head.update({f"standin/{k}": v for k, v in standin["headline"].items()})
    results = {"study": "multilabel", "status": "done" if rc == 0 else "failed", "headline": head,
               "cv": str(cv_dir / "cv.json"), "report": str(report / "report.md"),
               "standin": str(run_dir / "standin" / "results.json") if standin else None,
               "variants": [str(v) for v in variants], "folds": args.folds,
               "wall_s": round(time.perf_counter() - start, 1)}
    write_json(run_dir / "results.json", results)
    for key, value in head.items():
        print(f"  {key:<40} {value:.4f}" if isinstance(value, float) else f"  {key:<40} {value}")
    print(f"results.json: {run_dir / 'results.json'}; report: {report / 'report.md'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
