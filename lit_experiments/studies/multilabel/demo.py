"""`lit-exp multilabel-demo`: the multilabel study's demo: stand-in towers, k-fold CV of the heads, floors, report.

    lit-exp multilabel-demo -c configs/multilabel/demo.yaml --run_dir runs/multilabel/demo
                            [--folds 5] [--variants mlp.yaml agch.yaml probe.yaml] [--fold_seed 0]
                            [--seed_everything N]

0. ``lightning.seed_everything(N)`` (``--seed_everything``, default the config's): the stand-in's training seed,
   the captions' noise, the validation split and the training order derive from it
   (:func:`~lit_experiments.core.seeding.run_seed`), and every fold run gets it (F50). The folds file is fixed
   per cv (``--fold_seed``).
1. The stand-in towers of ``data.init_args.frozen`` (:class:`~.standin.StandinTowers`: trained once, cached)
   and their quality, :func:`~.standin.evaluate_standin`, in ``<run_dir>/standin/results.json``:
   ``test/zero_shot_acc`` (floor: chance), ``test/probe_map`` (floors: ``test/probe_map_init``, the same probe on
   the towers at random initialisation, and the random-ranking mAP). Skipped for real towers.
2. ``lit-exp cv -c CONFIG --folds K --list VARIANTS --seeds N --test all --select val/map`` into ``<run_dir>/cv``:
   one ``folds.json`` for every variant, each fold's model scored on the held-out test split (its results.json
   ``references``: the floors on the test images; its ``per_item/``: per-image scores); ``cv.json`` holds mean /
   std per variant (``mlp``, ``agch``, ...) and metric.
3. ``lit-exp report <run_dir>/cv --baseline mlp`` into ``<run_dir>/cv/report``.
4. ``<run_dir>/results.json`` (:func:`summarise`): ``headline`` (each variant's test mAP and tuned macro F1, mean
   over folds; the stand-in's numbers), ``references`` (for every headline key: chance, the caption keyword rule,
   predict every label, and the image-only probe variant as a reference; F49, F52), ``spread`` (std over folds),
   ``paired`` (variant minus baseline over folds, descriptive: the folds share data and one test set) and
   ``bootstrap`` (the best head against the caption rule and the image-only probe: a paired bootstrap over the
   test images recomputing mAP, F51).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.jsonfile import write_json

DEFAULT_VARIANTS = ("mlp.yaml", "agch.yaml", "probe.yaml")
HEADLINE_METRICS = ("test/map", "test/auc_macro", "test/tuned/f1_macro", "test/knn_map")  # the report's
DEMO_HEADLINE = ("test/map", "test/tuned/f1_macro")  # per variant in results.json headline (higher is better)
PROBE = "probe"  # the image-only variant: a reference row of every other head


def standin_step(config_file: Path, out: Path) -> dict[str, Any] | None:
    """Train or load the stand-in towers of ``config`` and write their evaluation; None for other towers."""
    from lit_experiments.core.configs import load_composed
    from lit_experiments.experiments.cv import pool_of

    from .standin import StandinTowers, evaluate_standin

    config = load_composed(config_file)
    frozen = ((config.get("data") or {}).get("init_args") or {}).get("frozen") or {}
    if not str(frozen.get("class_path", "")).endswith("StandinTowers"):
        return None
    start = time.perf_counter()
    built = pool_of([config_file])[0].frozen  # built as the runs build it (jsonargparse), trained once or loaded
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


def tested_runs(cv_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Per variant, its done and tested fold runs: ``fold``, ``test`` (results.json of its test) and the folder."""
    index = json.loads((cv_dir / "sweep.json").read_text())["runs"]
    out: dict[str, list[dict[str, Any]]] = {}
    for entry in index:
        if entry.get("status") == "done" and entry.get("test") and (cv_dir / entry["test"]).is_file():
            path = cv_dir / entry["test"]
            out.setdefault(entry["variant"], []).append(
                {"fold": entry.get("fold"), "test": json.loads(path.read_text()), "dir": path.parent})
    return out


def run_references(runs: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The floor / reference rows of ``metric`` that a variant's fold runs' tests wrote (the module's
    :func:`~.floors.floor_rows` on the test images), one per name with its mean over the runs (they share the test
    images and captions, so the values agree)."""
    import numpy as np

    from lit_experiments.core.results import reference_row

    values: dict[str, list[float]] = {}
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        for row in run["test"].get("references", {}).get(metric, []):
            if row.get("value") is not None:
                rows.setdefault(row["name"], row)
                values.setdefault(row["name"], []).append(float(row["value"]))
    return [reference_row(name, float(np.mean(values[name])), rows[name]["kind"], rows[name].get("what", ""))
            for name in rows]


def item_scores(runs: list[dict[str, Any]], name: str) -> tuple[list[str], list[Any], Any] | None:
    """ids, class scores (one (N, C) tensor per fold run) and targets of per-item file ``name`` of ``runs``."""
    import torch

    from lit_experiments.core.results import read_per_item

    ids, scores, targets = None, [], None
    for run in sorted(runs, key=lambda r: r["fold"] if r["fold"] is not None else -1):
        item = read_per_item(run["dir"]).get(name)
        if item is None or "probs" not in item.get("meta", {}):
            return None
        if ids is not None and item["ids"] != ids:
            raise ConfigError(f"multilabel-demo: {run['dir']}/per_item/{name}.json holds other test images than the "
                              "other folds; a paired bootstrap needs one test set")
        ids = item["ids"]
        scores.append(torch.tensor(item["meta"]["probs"], dtype=torch.float64))
        targets = torch.tensor(item["meta"]["targets"], dtype=torch.float64)
    return (ids, scores, targets) if ids is not None else None


def summarise(cv_dir: Path, baseline: str, standin: dict[str, Any] | None, n_boot: int = 1000,
              boot_seed: int = 0) -> dict[str, Any]:
    """The demo's results: ``headline`` (each variant's mean over folds of :data:`DEMO_HEADLINE`, the stand-in's
    zero-shot accuracy and probe mAP), ``references`` (floors and references of every headline key, F49),
    ``spread`` (std over folds), ``paired`` (variant minus baseline over folds: descriptive, the folds share
    their training data and test set) and ``bootstrap`` (the best head against the caption rule and the
    image-only probe: a paired bootstrap over test images recomputing mAP, F51)."""
    from lit_experiments.core.results import FLOOR, REFERENCE, reference_row
    from lit_experiments.experiments.report import collect
    from lit_experiments.experiments.report_stats import paired_test

    from .floors import paired_bootstrap_map

    summary = json.loads((cv_dir / "cv.json").read_text())
    runs = tested_runs(cv_dir)
    head: dict[str, float] = {}
    refs: dict[str, list[dict[str, Any]]] = {}
    spread: dict[str, Any] = {}
    for variant, metrics in summary["variants"].items():
        for metric in DEMO_HEADLINE:
            if metric not in metrics:
                continue
            key = f"{variant}/{metric}"
            head[key] = metrics[metric]["mean"]
            spread[key] = {"std": metrics[metric]["std"], "n": metrics[metric]["n"], "over": "folds"}
            refs[key] = run_references(runs.get(variant, []), metric)
            probe = summary["variants"].get(PROBE, {}).get(metric)
            if variant != PROBE and probe is not None:
                refs[key].append(reference_row("image-only probe", probe["mean"], REFERENCE,
                                               f"variant {PROBE} (linear head on the image embedding), mean over folds"))
    paired: dict[str, Any] = {}
    all_runs = collect([str(cv_dir)])[0]
    base = [r for r in all_runs if r.variant == baseline and r.status == "done"]
    for variant in summary["variants"]:
        if variant == baseline:
            continue
        test = paired_test(base, [r for r in all_runs if r.variant == variant and r.status == "done"], "test/map")
        paired[f"{variant}-{baseline}/test/map"] = {
            "mean_diff": test.mean_diff, "n": test.n, "test": test.test, "p": test.p,
            "ci95": list(test.ci) if test.ci is not None else None, "note": test.note or test.ci_cell()}
    out: dict[str, Any] = {"headline": head, "references": refs, "spread": spread, "paired": paired}
    heads = {v: m["test/map"]["mean"] for v, m in summary["variants"].items() if v != PROBE and "test/map" in m}
    if heads:
        best = max(heads, key=heads.get)
        mine = item_scores(runs.get(best, []), "test")
        boot: dict[str, Any] = {"best": best, "metric": "test/map", "what": (
            "paired bootstrap over the test images: each resample draws the images with replacement and rescores "
            "every fold model of both sides on them (a side's mAP: the mean over its fold models)")}
        others = {"caption keyword rule": item_scores(runs.get(best, []), "caption_rule"),
                  "image-only probe": item_scores(runs.get(PROBE, []), "test")}
        for name, other in others.items():
            if mine is None or other is None:
                continue
            if other[0] != mine[0]:
                raise ConfigError(f"multilabel-demo: {best} and the {name} were scored on other test images")
            boot[name] = paired_bootstrap_map(mine[1], other[1], mine[2], n_boot=n_boot, seed=boot_seed)
        out["bootstrap"] = boot
    if standin is not None:
        test = standin["test"]
        out["headline"]["standin/test/zero_shot_acc"] = test["test/zero_shot_acc"]
        out["headline"]["standin/test/probe_map"] = test["test/probe_map"]
        out["references"]["standin/test/zero_shot_acc"] = [
            reference_row("chance", test["test/zero_shot_chance"], FLOOR, "1 / number of categories")]
        out["references"]["standin/test/probe_map"] = [
            reference_row("random-init towers", test["test/probe_map_init"], FLOOR,
                          "the same probe on the towers at random initialisation"),
            reference_row("chance: random ranking", test["test/probe_map_chance"], FLOOR,
                          "expected mAP of random scores on the probe's test images")]
    return out


def print_headline(results: dict[str, Any]) -> None:
    """Each headline number with its floors and references beside it."""
    for key, value in results["headline"].items():
        std = (results.get("spread", {}).get(key) or {}).get("std")
        shown = f"{value:.4f}" + (f" +- {std:.4f} (folds)" if isinstance(std, float) else "")
        print(f"  {key:<34} {shown}")
        for row in results.get("references", {}).get(key, []):
            v = "n/a" if row["value"] is None else f"{row['value']:.4f}"
            print(f"      {row['kind']:<9} {row['name']:<30} {v}")
    boot = results.get("bootstrap") or {}
    for name in ("caption keyword rule", "image-only probe"):
        if name in boot:
            b = boot[name]
            verdict = "beats" if b["ci95"][0] > 0 else "loses to" if b["ci95"][1] < 0 else "is not separated from"
            print(f"  {boot['best']} {verdict} the {name} on test mAP: diff {b['diff']:+.4f}, 95% paired bootstrap "
                  f"interval over {b['n_images']} test images [{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}]")


def main(argv: list[str] | None = None) -> int:
    from lit_experiments.core.configs import load_composed
    from lit_experiments.experiments import cv as folds
    from lit_experiments.experiments.report import build_report

    p = argparse.ArgumentParser(prog="lit-exp multilabel-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", required=True, help="the demo config (composed with its # base: files)")
    p.add_argument("--run_dir", required=True, help="output folder (standin/, cv/, results.json)")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--fold_seed", type=int, default=0, help="seed of the folds file (fixed per cv; default 0)")
    p.add_argument("--seed_everything", type=int, default=None,
                   help="the run's seed (F50): lightning.seed_everything(N) first, then every fold run gets it "
                        "(`lit-exp cv --seeds N`); the stand-in, the captions, the validation split and the "
                        "training order follow it (default: the config's seed_everything)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the fold runs (default 1: the heads on 64-d embeddings are too small for "
                        "two threads to pay off; on 2 busy cores a second thread made a fold run 7x slower)")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                   help="variant deltas, relative to the config's folder; the first is the baseline")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples of the paired bootstrap (default 1000)")
    args = p.parse_args(argv)
    config = Path(args.config)
    if not config.is_file():
        raise ConfigError(f"multilabel-demo: config {config} does not exist")
    variants = [v if Path(v).is_file() else config.parent / v for v in args.variants]
    missing = [str(v) for v in variants if not Path(v).is_file()]
    if missing:
        raise ConfigError(f"multilabel-demo: variant file(s) {missing} do not exist")
    seed = args.seed_everything
    if seed is None:
        seed = int(load_composed(config).get("seed_everything") or 0)
    import lightning as L

    from lit_experiments.core.seeding import mark_run_seed

    L.seed_everything(seed, verbose=False)  # PL_GLOBAL_SEED: the stand-in and the datamodules derive theirs
    mark_run_seed(seed)  # core.seeding.run_seed keys on this run's seed (stale once anyone reseeds)
    run_dir = Path(args.run_dir)
    start = time.perf_counter()
    standin = standin_step(config, run_dir / "standin")
    import torch

    torch.set_num_threads(max(1, args.threads))
    cv_dir = run_dir / "cv"
    rc = folds.main(["-c", str(config), "--folds", str(args.folds), "--fold_seed", str(args.fold_seed), "--list",
                     *map(str, variants), "--seeds", str(seed), "--test", "all", "--select", "val/map",
                     "--out", str(cv_dir)])
    baseline = Path(variants[0]).stem
    report = build_report([str(cv_dir)], baseline=baseline, metrics=list(HEADLINE_METRICS))
    summary = summarise(cv_dir, baseline, standin, n_boot=args.bootstrap)
    results = {"study": "multilabel", "status": "done" if rc == 0 else "failed", "seed": seed, **summary,
               "cv": str(cv_dir / "cv.json"), "report": str(report / "report.md"),
               "standin": str(run_dir / "standin" / "results.json") if standin else None,
               "variants": [str(v) for v in variants], "folds": args.folds,
               "wall_s": round(time.perf_counter() - start, 1)}
    write_json(run_dir / "results.json", results)
    print_headline(results)
    print(f"results.json: {run_dir / 'results.json'}; report: {report / 'report.md'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
