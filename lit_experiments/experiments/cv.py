"""`lit-exp cv`: k folds written once to `<sweep>/folds.json` and shared by every run and ablation (F31, F45).

    lit-exp cv -c configs/toy/curriculum.yaml --folds 5 [--grid KEY=V1,V2 | --list variants/*.yaml]
               [--seeds 0] [--test best|all|none] [--select val/acc] [--out runs/cv/toy]

The folds are drawn once from the datamodule's pool (``StudyDataModule.fold_pool()``: the sample count and the
labels): 2-D 0/1 labels -> iterstrat ``MultilabelStratifiedKFold``, 1-D labels -> sklearn ``StratifiedKFold``,
no labels -> ``KFold``; all shuffled with ``--fold_seed``. ``folds.json`` holds the index lists and a fingerprint
(sha256 of the index lists and of the pool's data fingerprint); a later cv call over the same folder reuses
it and refuses when the data differ. Each fold run gets ``--data.init_args.fold {"file": ..., "index": k}``; the
datamodule checks the data fingerprint, splits its pool and records ``folds`` in the run's results.json.
The held-out test split stays outside the folds; ``--test`` scores the best fold's model (by ``--select``), every
fold's, or none on it; ``--select`` is checked against the validation metrics of a dry composition of the first
run (:func:`check_select_dry`) before any fold trains, and again after the first finished run.
``<sweep>/cv.json`` holds mean / std (ddof=1) / n / values per variant and metric.
A requested test that fails is listed in cv.json ``failed_tests`` (and by `lit-exp report`) and the command exits
1 (F54): a variant never drops silently out of the summary.
"""

from __future__ import annotations

import difflib
import inspect
import json
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.folds import FOLDS_FILE, ensure_folds
from ..core.jsonfile import write_json

CV_FILE = "cv.json"


def pool_of(config: dict[str, Any] | list[str | Path]) -> tuple[Any, int, Any]:
    """The config's datamodule, built without training, and its ``fold_pool()``.

    ``config``: the composed dict, or the config files in order (composed by the CLI's one rule, F48)."""
    import lightning as L
    from jsonargparse import ArgumentParser

    from ..core.configs import load_composed

    if not isinstance(config, dict):
        config = load_composed(*config)
    section = config.get("data")
    if not isinstance(section, dict) or "class_path" not in section:
        raise ConfigError("cv: the config has no `data: {class_path: ..., init_args: ...}`")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    cfg = parser.parse_object({"data": section})
    dm = parser.instantiate_classes(cfg).data
    if "fold" not in inspect.signature(type(dm).__init__).parameters:
        raise ConfigError(f"cv: {type(dm).__name__} takes no `fold` init argument; add `fold: dict | None = None` "
                          "(passed to StudyDataModule) and split its pool with `self.fold_split(pool)` in setup")
    try:
        n, labels = dm.fold_pool()
    except NotImplementedError as err:
        raise ConfigError(str(err)) from None
    return dm, int(n), labels


def yaml_load(path: Path) -> Any:
    import yaml

    return yaml.safe_load(Path(path).read_text())


def summarise(values: list[float]) -> dict[str, Any]:
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else None,
            "n": len(values), "values": [float(v) for v in values]}


def metric_value(metrics: dict[str, Any], name: str) -> tuple[str, float] | None:
    """``name`` in ``metrics``, else the last key ending in ``/name`` (a curriculum's ``<stage>/val/acc``)."""
    if metrics.get(name) is not None:
        return name, float(metrics[name])
    keys = [k for k in metrics if k.endswith("/" + name) and metrics[k] is not None]
    return (keys[-1], float(metrics[keys[-1]])) if keys else None


def cv_summary(sweep_dir: Path, index: dict[str, Any], folds: dict[str, Any], select: str, mode: str) -> dict:
    """cv.json: per variant and metric mean / std / n / values over its done runs: the validation metrics of
    ``final`` and, when every run was tested (``--test all``), the test metrics; the best fold by ``select``."""
    out: dict[str, Any] = {"folds": {"file": str((sweep_dir / FOLDS_FILE).resolve()), "fingerprint":
                                     folds["fingerprint"], "n_folds": folds["n_folds"], "kind": folds["kind"]},
                           "select": select, "mode": mode, "variants": {}, "best": {}, "source": {}}
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for run in index["runs"]:
        if run["status"] == "done" and (sweep_dir / run["results"]).is_file():
            by_variant.setdefault(run["variant"], []).append(run)
    tables: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], bool]] = {}
    for variant, runs in by_variant.items():
        data = [json.loads((sweep_dir / r["results"]).read_text()) for r in runs]
        tests = [r.get("test_metrics") for r in runs]
        use_test = all(tests)
        table = [{**(t if use_test else {}), **{k: v for k, v in d.get("final", {}).items() if "val/" in k}}
                 for t, d in zip(tests, data)]
        tables[variant] = (runs, data, table, use_test)
    every_key = list(dict.fromkeys(k for _, _, table, _ in tables.values() for row in table for k in row))
    out["undefined"] = []
    for variant, (runs, data, table, use_test) in tables.items():
        summary: dict[str, Any] = {}
        for k in every_key:
            missing = [r["name"] for r, row in zip(runs, table) if row.get(k) is None]
            if not missing:
                summary[k] = summarise([row[k] for row in table])
                continue
            # undefined (NaN / null) or not logged in some run: null, listed, never dropped or averaged over less
            summary[k] = {"mean": None, "std": None, "n": len(table) - len(missing),
                          "values": [row.get(k) for row in table], "undefined_in": missing}
            out["undefined"].append({"variant": variant, "metric": k, "runs": missing})
        out["variants"][variant] = summary
        failed = [r["name"] for r in runs if r.get("test_error")]
        out["source"][variant] = "test+val" if use_test else f"val (test failed: {', '.join(failed)})" if failed \
            else "val"
        scored = [(metric_value(d.get("final", {}), select), r) for d, r in zip(data, runs)]
        scored = [(s[1], r) for s, r in scored if s is not None]
        if scored:
            value, best = (max if mode == "max" else min)(scored, key=lambda p: p[0])
            out["best"][variant] = {"run": best["name"], "fold": best["fold"], "seed": best["seed"], select: value,
                                    "test": best.get("test_metrics")}
    out["failed_tests"] = failed_tests(index)
    return out


def failed_tests(index: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs whose requested test on the test split failed (F54)."""
    return [{"run": r["name"], "variant": r["variant"], "fold": r.get("fold"), "seed": r.get("seed"),
             "error": r["test_error"]} for r in index["runs"] if r.get("test_error")]


def score_on_test(plan: Any, out: Path, entry: dict[str, Any]) -> None:
    """``lit-exp test`` of a run's last checkpoint on the held-out test split; metrics into its entry."""
    from . import sweep


    run = next(r for r in plan.runs if r.name == entry["name"])
    run_dir = out / run.name
    for key in ("test_error", "test", "test_metrics"):  # a rescore replaces every earlier outcome
        entry.pop(key, None)
    data = json.loads((run_dir / "results.json").read_text())
    stages = data.get("stages", {})
    ckpts = [run_dir / s["checkpoint"] for s in stages.values() if s.get("checkpoint")]
    ckpts = ckpts or sorted(run_dir.rglob("*.ckpt"), key=lambda p: (p.name != "last.ckpt", -p.stat().st_mtime))
    if not ckpts:
        entry["test_error"] = "no checkpoint in the run"
        return
    ckpt = ckpts[-1] if stages else ckpts[0]
    cfg = [a for c in plan.configs for a in ("-c", c)]
    try:
        sweep.execute(["test", *cfg, *run.args, "--ckpt_path", str(ckpt), "--seed_everything", str(run.seed)])
    except Exception as exc:  # noqa: BLE001
        entry["test_error"] = sweep.first_line(exc)
        print(f"test {run.name} -> failed, {entry['test_error']}")
        return
    found = sorted((run_dir / "eval").glob("test-*/results.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        entry["test_error"] = f"the test wrote no {run_dir / 'eval'}/test-*/results.json"
        print(f"test {run.name} -> failed, {entry['test_error']}")
        return
    result = json.loads(found[-1].read_text())
    entry.update(test=str(found[-1].relative_to(out)), test_metrics=result.get("test", {}))
    print(f"test {run.name} ({ckpt.relative_to(out)}) -> {sweep._headline({'headline': result.get('test', {})})}")


def print_cv(summary: dict[str, Any]) -> None:
    for variant, metrics in summary["variants"].items():
        for name, s in metrics.items():
            if s["mean"] is None:
                print(f"{variant:<24} {name:<24} undefined in {', '.join(s['undefined_in'])} (n={s['n']} defined)")
                continue
            std = "n/a" if s["std"] is None else f"{s['std']:.4f}"
            print(f"{variant:<24} {name:<24} {s['mean']:.4f} +- {std} (n={s['n']}, "
                  f"{summary['source'][variant]})")
    for failed in summary.get("failed_tests") or []:
        print(f"FAILED test of {failed['run']} ({failed['variant']}, fold {failed['fold']}): {failed['error']}")


def check_select_dry(plan: Any, out: Path, select: str, refuse: Any) -> None:
    """``--select`` against the validation metrics the first planned run logs, found by a dry composition of that
    run (``preflight.dry_val_metrics``: built as the curriculum builds it, one validation batch per stage, no
    training step): a name it lacks is refused (``refuse(source, logged, tail)`` writes cv.json and raises) before
    any fold trains. A run that cannot be composed dry, or that logs no validation metric from one batch, is left
    to the check after the first finished run (its own error is recorded there as a failed run)."""
    from ..core.configs import config_args
    from .preflight import dry_val_metrics
    from .sweep import first_line, read_results

    for done in plan.runs:  # a run finished by an earlier call over this folder says it without a dry run
        data, _ = read_results(out / done.name / "results.json")
        if data is not None and data.get("status") == "done":
            if metric_value(data.get("final") or {}, select) is None:
                refuse(f"the finished run {done.name}", data.get("final") or {}, "No fold was trained")
            return
    run = plan.runs[0]
    found = config_args(run.args)  # a --list variant's "-c FILE" is composed like the base files
    taken = {pos + k for pos, width, _ in found for k in range(width)}
    configs = [*plan.configs, *(f for _, _, f in found)]
    rest = [a for i, a in enumerate(run.args) if i not in taken]
    try:
        logged = dry_val_metrics(configs, [*plan.overrides, *rest])
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the first run reports its own error; --select is
        # checked after it
        print(f"cv: --select {select} is checked after the first run (the run could not be composed dry: "
              f"{first_line(exc)})", flush=True)
        return
    if any("val/" in k for k in logged) and metric_value(dict.fromkeys(logged, 0.0), select) is None:
        refuse(f"a dry composition of {run.name} (one validation batch, no training)", logged,
               "No fold was trained")


def main(argv: list[str] | None = None) -> int:
    from . import sweep

    parser = sweep.build_parser("cv", __doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, required=True, help="number of folds k")
    parser.add_argument("--fold_seed", type=int, default=0, help="seed of the fold split (default 0)")
    parser.add_argument("--test", choices=("best", "all", "none"), default="best",
                        help="score the best fold's model (by --select), every fold's, or none on the test split")
    parser.add_argument("--select", default="val/loss", help="validation metric that picks the best fold")
    parser.add_argument("--mode", choices=("min", "max"), help="min or max of --select (default: min for a "
                        "loss, max otherwise)")
    args = sweep.parse_with_overrides(parser, argv)
    args.seeds = args.seeds or "0"
    if not (args.select.startswith("val/") or "/val/" in args.select):
        raise ConfigError(f"--select {args.select}: expected a validation metric (val/NAME or STAGE/val/NAME); the "
                          "test split never picks a model")
    mode = args.mode or ("min" if "loss" in args.select else "max")
    plan = sweep.plan_from_args(args, kind="cv")
    out = sweep.sweep_dir(args, plan)
    _, n, labels = pool_of(plan.configs)
    folds = ensure_folds(out / FOLDS_FILE, n, labels, args.folds, args.fold_seed)
    fold_file = str((out / FOLDS_FILE).resolve())
    plan.expand_folds(args.folds, fold_file)
    if args.print_only:
        sweep.record_plan(plan, out, "cv")
        sweep.print_commands(plan, out)
        return 0

    def refuse(source: str, logged: Any, tail: str) -> None:
        have = sorted({k for k in logged if "val/" in k})
        short = {k[k.rfind("val/"):] for k in have}  # a curriculum's <stage>/val/acc is also val/acc
        close = difflib.get_close_matches(args.select, sorted(short | set(have)), n=2, cutoff=0.5)
        message = (f"--select {args.select}: {source} logged no such validation metric"
                   + (f" (did you mean {' or '.join(close)}?)" if close else "")
                   + f"; it logged {', '.join(have) or 'none'}. {tail}")
        write_json(out / CV_FILE, {"error": message, "select": args.select, "metrics_found": have})
        raise ConfigError(message)

    with sweep.lock_folder(out):  # a cv writing this folder now is named before anything is composed
        check_select_dry(plan, out, args.select, refuse)

    def check_select(results: dict[str, Any]) -> None:
        """Second line of defence: the first finished fold run shows what every run logs; a --select it lacks
        stops the cv before anything else trains, with cv.json saying why."""
        final = results.get("final") or {}
        if metric_value(final, args.select) is None:
            refuse("the first finished run", final, "Nothing else was trained")

    index = sweep.run_plan(plan, out, kind="cv", check=check_select)
    done = [r for r in index["runs"] if r["status"] == "done"]
    if args.test != "none" and done:
        chosen = done
        if args.test == "best":
            scored = {}
            for run in done:
                final = json.loads((out / run["results"]).read_text()).get("final", {})
                found = metric_value(final, args.select)
                if found is not None:
                    scored.setdefault(run["variant"], []).append((found[1], run))
            if not scored:
                raise ConfigError(f"--select {args.select}: no done run has it in results.json `final`")
            chosen = [(max if mode == "max" else min)(v, key=lambda p: p[0])[1] for v in scored.values()]
        for run in chosen:  # a run scored by an earlier call keeps its test result
            if not (run.get("test") and (out / run["test"]).is_file()):
                score_on_test(plan, out, run)
        sweep.save_index(out, index)
    summary = cv_summary(out, index, folds, args.select, mode)
    write_json(out / CV_FILE, summary)
    print_cv(summary)
    print(f"cv.json: {out / CV_FILE}")
    if summary["failed_tests"]:  # F54: a requested test that failed fails the command
        print(f"cv: {len(summary['failed_tests'])} requested test(s) failed (listed in {out / CV_FILE}); "
              "their variants' test metrics are missing", flush=True)
        return 1
    return 0 if all(r["status"] == "done" for r in index["runs"]) else 1
