"""`lit-exp report`: compare runs or sweeps: config diff, metric table, mean +- std, paired tests, curves.

Reads each run's ``results.json`` and ``config.yaml`` (and a sweep's ``sweep.json``), never the logs except
the stage curves (``stages/*/metrics.csv``) and per-item scores (``per_item/*.json``), and writes ``report.md``
and a static ``report.html`` (tables and PNG figures, one self-contained folder) into ``--out`` (default
``<first dir>/report/``). Each metric's table holds its floors and references (F49); the statistics fit n
(report_stats.py, F51); "A beats B on this test set" is a paired bootstrap over test items (report_items.py).

    lit-exp report runs/sweeps/width --metric toy/test/acc
    lit-exp report base=runs/a base=runs/a-2 wide=runs/b --baseline base --factor model.init_args.width
    lit-exp report runs/multilabel/demo --items mlp:caption_rule
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from .report_floors import floor_gap, floor_warnings, mark, reference_rows, tuned, tuned_warnings
from .report_stats import Run, Table, fmt, fold_ratio, mean_std, paired_test, variance_source

#: config keys that differ between any two runs and say nothing about the comparison
IGNORED_KEYS = ("seed_everything", "trainer.run_dir", "trainer.default_root_dir", "trainer.wandb")
#: kinds of keys an unfair comparison most often hides (F29)
IMPORTANT = {"epochs": "epochs/steps", "steps": "epochs/steps", "batch_size": "batch size", "lr": "lr",
             "learning_rate": "lr", "data.": "data", "folds": "folds"}


def flatten(value: Any, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Dotted keys of a config; a list of named dicts (``stages``) is keyed by name."""
    out = {} if out is None else out
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        for v in value:
            flatten({k: x for k, x in v.items() if k != "name"}, f"{prefix}.{v['name']}", out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return out


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.endswith((".run_dir", ".default_root_dir"))


def _short(key: str) -> str:
    return key.replace(".init_args", "")


def is_studied(key: str, factors: set[str]) -> bool:
    """Whether config key ``key`` is (under) one of the studied factors (``init_args`` may be left out)."""
    return any(_short(key) == _short(f) or _short(key).startswith(_short(f) + ".") for f in factors)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not readable JSON ({err})") from err


def _load_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        return flatten(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err


def load_run(run_dir: Path, variant: str, name: str | None = None, entry: dict[str, Any] | None = None,
             sweep_dir: Path | None = None) -> Run:
    """A :class:`Run` from ``run_dir`` (a sweep's ``entry`` gives its seed / fold / status / test first)."""
    entry = entry or {}
    run = Run(name=name or run_dir.name, variant=variant, run_dir=run_dir)
    path = run_dir / "results.json"
    if path.is_file():
        try:
            run.results = _load_json(path)
        except ConfigError as err:  # listed as unreadable; the other runs are reported
            run.status, run.error = "unreadable", str(err)
            return run
        run.status = str(run.results.get("status", "done"))
        run.error = run.results.get("error")
    else:
        run.status, run.error = "missing", entry.get("error") or f"{path} does not exist"
    if entry.get("status") == "failed":
        run.status, run.error = "failed", entry.get("error") or run.error
    if entry.get("test_metrics"):  # `lit-exp cv --test all|best` scored this fold's model on the test split
        run.results["test"] = {**entry["test_metrics"], **(run.results.get("test") or {})}
    tested = (sweep_dir or run_dir.parent) / str(entry.get("test") or "")
    evals = [tested] if entry.get("test") and tested.is_file() else sorted(run_dir.glob("eval/test-*/results.json"),
                                                                          key=lambda p: p.stat().st_mtime)[-1:]
    for path in evals:  # the test's references, splits and per-item scores (the run's own come first)
        try:
            ev = _load_json(path)
        except ConfigError as err:
            run.test_error = str(err)
            continue
        run.results["references"] = {**(ev.get("references") or {}), **(run.results.get("references") or {})}
        if tuned(ev):
            run.results.setdefault("eval_splits", ev.get("splits"))
        if not (run_dir / "per_item").is_dir():
            run.items_dir = path.parent
    try:
        run.config = _load_config(run_dir)
    except ConfigError as err:
        run.status, run.error = "unreadable", str(err)
    folds = run.results.get("folds") or {}
    seed = entry.get("seed", run.results.get("seed", run.config.get("seed_everything")))
    run.seed = int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None
    fold = entry.get("fold") if entry.get("fold") is not None else folds.get("index")
    run.fold = int(fold) if fold is not None else None
    run.fingerprint = folds.get("fingerprint")
    run.fold_ratio = fold_ratio(folds, run_dir)
    run.tuned_on_test = tuned(run.results) or tuned({"splits": run.results.get("eval_splits")})
    run.test_error = entry.get("test_error")
    return run


def list_factors(overrides: dict[str, Any], sweep_dir: Path) -> set[str]:
    """Studied keys of a sweep entry: its override keys; a ``--list`` variant's (``config``) file's keys."""
    import yaml

    keys = {k for k in overrides if "seed" not in k and k != "config"}
    path = overrides.get("config")
    if isinstance(path, str):
        p = Path(path) if Path(path).is_absolute() else sweep_dir / path
        try:
            keys |= set(flatten(yaml.safe_load(p.read_text()) or {}))
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{sweep_dir / 'sweep.json'}: variant file {p} is not readable ({err}); the "
                              "report needs it to know the studied keys") from err
    return keys


def is_cv(specs: list[str]) -> bool:
    """Whether a spec is a `lit-exp cv` folder (its sweep.json kind is ``cv``)."""
    for spec in specs:
        path = Path(spec.partition("=")[2] or spec) / "sweep.json"
        try:
            if path.is_file() and json.loads(path.read_text()).get("kind") == "cv":
                return True
        except (OSError, ValueError):
            continue
    return False


def study_of(run: Run) -> str | None:
    """The study a run belongs to: its model's ``class_path`` (``None`` when the run has no config)."""
    return run.config.get("model.class_path") if run.config else None


def check_one_study(runs: list[Run], factors: set[str]) -> None:
    """Runs of different studies (model classes) are never paired, unless the model class is the studied factor."""
    if is_studied("model.class_path", factors):
        return
    by_study: dict[str, list[str]] = {}
    for r in runs:
        if r.status == "done" and study_of(r):
            by_study.setdefault(str(study_of(r)), []).append(r.variant)
    if len(by_study) > 1:
        listed = "; ".join(f"{k}: {', '.join(dict.fromkeys(v))}" for k, v in by_study.items())
        raise ConfigError(f"report: these runs are of different studies ({listed}); their metrics are not "
                          "comparable and are not paired. Report each study on its own, or name the model class "
                          "as the studied factor (--factor model.class_path)")


def collect(specs: list[str]) -> tuple[list[Run], set[str], list[str]]:
    """Runs of every ``[LABEL=]DIR`` (a run dir or a sweep dir), the studied factor keys, the variant order."""
    runs: list[Run] = []
    factors: set[str] = set()
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label:
            label, path = "", spec
        d = Path(path)
        if (d / "sweep.json").is_file():
            sweep = _load_json(d / "sweep.json")
            factors |= set(sweep.get("grid") or {})
            for entry in sweep.get("runs") or []:
                factors |= list_factors(entry.get("overrides") or {}, d)
                run_dir = d / str(entry.get("run_dir") or entry.get("name"))
                variant = label or str(entry.get("variant") or entry.get("name"))
                runs.append(load_run(run_dir, variant, str(entry.get("name") or run_dir.name), entry, d))
        elif (d / "results.json").is_file():
            runs.append(load_run(d, label or d.name))
        else:
            what = "does not exist" if not d.exists() else "holds neither results.json nor sweep.json"
            raise ConfigError(f"report: {d} {what}; expected a run directory (results.json) or a "
                              "sweep directory (sweep.json)")
    return runs, factors, list(dict.fromkeys(r.variant for r in runs))


def cv_check(specs: list[str], runs: list[Run]) -> list[str]:
    """⚠ lines where a sweep's ``cv.json`` mean disagrees with the mean the report computes."""
    lines = []
    for spec in specs:
        path = Path(spec.partition("=")[2] or spec) / "cv.json"
        if not path.is_file():
            continue
        for variant, metrics in (_load_json(path).get("variants") or {}).items():
            for name, summary in metrics.items():
                vals = [r.metric(name) for r in runs if r.variant == variant and r.status == "done"]
                vals = [v for v in vals if v is not None]
                mean = summary.get("mean") if isinstance(summary, dict) else None
                if vals and isinstance(mean, (int, float)) and abs(mean_std(vals)[0] - mean) > 1e-9:
                    lines.append(f"⚠ {path}: {variant} {name} mean {mean:.6g} but the runs' results.json give "
                                 f"{mean_std(vals)[0]:.6g} (n={len(vals)})")
        for failed in _load_json(path).get("failed_tests") or []:  # F54
            lines.append(f"⚠ {path}: the requested test of {failed.get('run')} ({failed.get('variant')}) failed: "
                         f"{failed.get('error')}; its test metrics are missing from every summary")
    return lines


def val_metrics(runs: list[Run]) -> list[str]:
    """The validation keys of the done runs' ``final`` section (a cv's fold comparison)."""
    done = [r for r in runs if r.status == "done"]
    return list(dict.fromkeys(k for r in done for k in (r.results.get("final") or {})
                              if k.startswith("val/") or "/val/" in k))


def known_metrics(runs: list[Run]) -> list[str]:
    """Every metric a done run has (headline, test, final)."""
    done = [r for r in runs if r.status == "done"]
    return sorted({k for r in done for section in ("headline", "test", "final")
                   for k in (r.results.get(section) or {})})


def check_metrics(metrics: list[str], runs: list[Run]) -> None:
    """A ``--metric`` that no run has is an error naming the metrics that exist (it printed empty tables)."""
    import difflib

    have = known_metrics(runs)
    missing = [m for m in metrics if all(r.metric(m) is None for r in runs if r.status == "done")]
    if missing:
        close = {m: difflib.get_close_matches(m, have, n=3, cutoff=0.4) for m in missing}
        hints = "; ".join(f"{m}: did you mean {', '.join(c)}?" for m, c in close.items() if c)
        raise ConfigError(f"report: --metric {', '.join(missing)}: no finished run has it"
                          + (f" ({hints})" if hints else "") + f". Metrics the runs have: {', '.join(have) or 'none'}")


def default_metrics(runs: list[Run], cv: bool = False) -> list[str]:
    """Every done run's ``headline`` keys; else its ``test`` keys; else (cv folds) its ``final`` val keys.
    After `lit-exp cv` the fold comparison (validation metrics of every fold) comes first, then the test keys."""
    if cv and val_metrics(runs):
        done = [r for r in runs if r.status == "done"]
        tested = list(dict.fromkeys(k for r in done for k in (r.results.get("test") or {})))
        return val_metrics(runs) + [k for k in tested if k not in val_metrics(runs)]
    done = [r for r in runs if r.status == "done"] or runs
    names = list(dict.fromkeys(k for r in done for k in (r.results.get("headline") or {})))
    names = names or list(dict.fromkeys(k for r in done for k in (r.results.get("test") or {})))
    return names or list(dict.fromkeys(k for r in done for k in (r.results.get("final") or {})
                                      if k.startswith("val/") or "/val/" in k))


def unpaired(table: Table, variants: list[str], baseline: str, factors: set[str]) -> dict[str, list[str]]:
    """Variants whose config differs from the baseline's besides the studied factor: ``{variant: [keys]}``.

    Their deltas and paired tests are refused (the difference would be credited to the factor). With no known
    factor (plain run folders and no ``--factor``) every difference is only flagged."""
    if not factors or baseline not in table.header:
        return {}
    col = {v: table.header.index(v) for v in variants if v in table.header}
    out: dict[str, list[str]] = {}
    for row in table.rows:
        if row[-1] != "⚠ no" or "fold" in row[0]:  # fold files and fingerprints: the paired test decides
            continue
        for v, i in col.items():
            if v != baseline and row[i] != row[col[baseline]]:
                out.setdefault(v, []).append(_short(row[0]))
    return out


def config_tables(runs: list[Run], variants: list[str], factors: set[str]) -> tuple[Table, list[str]]:
    """The keys that differ between variants (plus the folds fingerprint) and the ⚠ lines for non-factors."""
    per_variant: dict[str, dict[str, str]] = {}
    warnings: list[str] = []
    done = [r for r in runs if r.status == "done"]  # an unfinished run is listed, never diffed
    variants = [v for v in variants if any(r.variant == v for r in done)]
    for v in variants:
        cfgs = [dict(r.config, **{"folds.fingerprint": r.fingerprint}) for r in done if r.variant == v]
        keys = sorted({k for c in cfgs for k in c if not _ignored(k)})
        merged = {}
        for k in keys:
            values = list(dict.fromkeys(json.dumps(c.get(k), default=str) for c in cfgs))
            merged[k] = values[0] if len(values) == 1 else "varies: " + ", ".join(values)
            if len(values) > 1 and "fold" not in k and "seed" not in k and not is_studied(k, factors):
                warnings.append(f"⚠ differs within variant {v}: {k} ({', '.join(values)})")
        per_variant[v] = merged
    keys = sorted({k for m in per_variant.values() for k in m})
    differing = [k for k in keys if len({per_variant[v].get(k, "(absent)") for v in variants}) > 1]
    table = Table("Config differences between variants", ["key", *variants, "studied factor"])
    switched = {k[: -len("class_path")] for k in differing if k.endswith(".class_path") and is_studied(k, factors)}
    for k in differing:
        cells = [per_variant[v].get(k, "(absent)") for v in variants]
        # an argument of a part whose class is the studied switch (e.g. a head's own defaults) is implied by it
        studied = is_studied(k, factors) or any(k.startswith(prefix + "init_args.") for prefix in switched)
        table.rows.append([k, *cells, "yes" if studied else "⚠ no"])
        if not studied:
            kind = next((label for pat, label in IMPORTANT.items() if pat in k), "")
            shown = ", ".join(f"{v}: {c}" for v, c in zip(variants, cells, strict=True))
            warnings.append(f"⚠ differs besides the studied factor: {k} ({shown})" + (f" [{kind}]" if kind else ""))
    if not factors:
        table.notes.append("studied factor unknown (plain run dirs): every difference is flagged; "
                           "name it with --factor KEY")
    if not differing:
        table.notes.append("no config key differs between the variants")
    return table, warnings


METRIC_HEADER = ["variant", "n", "mean", "std", "variance from", "above strongest floor", "delta", "delta %",
                 "pairs", "test", "statistic", "p", "95% CI of delta", "note"]


def metric_tables(runs: list[Run], variants: list[str], baseline: str, metrics: list[str],
                  refused: dict[str, list[str]] | None = None) -> list[Table]:
    """Per metric: n, mean, std, source of variance, gap to the strongest floor, delta and % vs baseline, the
    paired test that fits the runs (report_stats.paired_test), then the floor and reference rows. A variant in
    ``refused`` (its config differs besides the studied factor) gets no delta and no test, and the reason."""
    refused = refused or {}
    tables = []
    done = [r for r in runs if r.status == "done"]
    for m in metrics:
        t = Table(f"Metric {m} (baseline {baseline})", METRIC_HEADER)
        base_runs = [r for r in done if r.variant == baseline and r.metric(m) is not None]
        base_mean = mean_std([r.metric(m) for r in base_runs])[0] if base_runs else None
        rows = []
        for v in variants:
            vr = [r for r in done if r.variant == v and r.metric(m) is not None]
            if not vr:
                rows.append({"variant": v, "n": "0", "note": "no finished run has this metric"})
                continue
            mean, std = mean_std([r.metric(m) for r in vr])
            delta = None if base_mean is None else mean - base_mean
            pct = None if delta is None or base_mean == 0 else 100 * delta / abs(base_mean)
            row = {"variant": v, "n": str(len(vr)), "mean": mark(fmt(mean), vr), "std": mark(fmt(std), vr),
                   "variance from": variance_source(vr), "above strongest floor": floor_gap(vr, m)}
            if v == baseline:
                row["note"] = "baseline"
            elif v in refused:
                why = f"not paired with {baseline}: differs besides the studied factor in {', '.join(refused[v])}"
                row["note"] = why
                t.notes.append(f"{v}: {why}")
            else:
                pt = paired_test(base_runs, vr, m)
                both = vr + base_runs
                row.update({"delta": mark(fmt(delta), both), "delta %": mark(fmt(pct, 2), both), "pairs": str(pt.n),
                            "test": pt.test or "-", "statistic": fmt(pt.statistic), "p": fmt(pt.p),
                            "95% CI of delta": mark(pt.ci_cell(), both), "note": pt.refused or pt.note})
                if pt.refused:
                    t.notes.append(f"{v}: {pt.refused}")
            rows.append(row)
        rows += reference_rows(done, variants, m, base_mean)
        t.rows = [[row.get(h, "-") for h in METRIC_HEADER] for row in rows]
        tables.append(t)
    return tables


def runs_table(runs: list[Run], metrics: list[str]) -> Table:
    t = Table("Runs", ["run", "variant", "seed", "fold", "status", *metrics, "error"])
    for r in runs:
        t.rows.append([r.name, r.variant, "-" if r.seed is None else str(r.seed),
                       "-" if r.fold is None else str(r.fold), r.status,
                       *[mark(fmt(r.metric(m)), [r]) for m in metrics], r.error or r.test_error or ""])
    return t


def render_md(title: str, tables: list[Table], warnings: list[str], figures: list[str]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [f"# {title}", ""]
    lines += [f"- {w}" for w in warnings] + ([""] if warnings else [])
    for t in tables:
        lines += [f"## {t.title}", "", "| " + " | ".join(cell(h) for h in t.header) + " |",
                  "|" + "---|" * len(t.header)]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in t.rows]
        lines += [""] + [f"> {n}" for n in t.notes] + ([""] if t.notes else [])
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures if not f.startswith("runs/")]
        links = [f for f in figures if f.startswith("runs/")]
        lines += ["", "### Figures of the runs", ""] + [f"- [{f}]({f})" for f in links] if links else []
        lines += [""]
    return "\n".join(lines)


def build_report(specs: list[str], out: Path | None = None, baseline: str | None = None,
                 metrics: list[str] | None = None, factors: list[str] | None = None,
                 items: list[str] | None = None) -> Path:
    """Write ``report.md`` and ``report.html`` for ``specs``; returns the output folder."""
    from .report_html import copy_run_figures, curve_figures, log_wandb, metric_figures, render_html
    from .report_items import item_tables

    runs, found_factors, variants = collect(specs)
    if not runs:
        raise ConfigError(f"report: no runs in {', '.join(specs)}")
    all_factors = found_factors | set(factors or [])
    baseline = baseline or variants[0]
    if baseline not in variants:
        raise ConfigError(f"report: --baseline {baseline!r} is not a variant; variants are {variants}")
    check_one_study(runs, all_factors)
    if metrics:
        check_metrics(metrics, runs)
    metrics = metrics or default_metrics(runs, cv=is_cv(specs))
    out = Path(out) if out else Path(specs[0].partition("=")[2] or specs[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    cfg_table, warnings = config_tables(runs, variants, all_factors)
    warnings += cv_check(specs, runs) + tuned_warnings(runs) + floor_warnings(runs, variants)
    refused = unpaired(cfg_table, variants, baseline, all_factors)
    tables = [*metric_tables(runs, variants, baseline, metrics, refused),
              *item_tables(runs, variants, baseline, items),
              cfg_table, runs_table(runs, metrics)]
    bad = [r for r in runs if r.status != "done" or r.test_error]
    if bad:  # a run that trained but whose requested test failed is listed too (F54)
        failed = Table("Failed or missing runs", ["run", "variant", "status", "error"],
                       [[r.name, r.variant, r.status if r.status != "done" else "test failed",
                         r.error or r.test_error or ""] for r in bad])
        tables.append(failed)
    figures = metric_figures(runs, variants, metrics, out) + curve_figures(runs, metrics, out)
    figures += copy_run_figures(runs, out)
    title = f"lit-exp report: {', '.join(variants)}"
    (out / "report.md").write_text(render_md(title, tables, warnings, figures))
    (out / "report.html").write_text(render_html(title, tables, warnings, figures))
    log_wandb(tables)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lit-exp report", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="run or sweep directories, optionally LABEL=DIR (same label: one variant)")
    p.add_argument("--baseline", default=None, help="variant to compare against (default: the first)")
    p.add_argument("--metric", action="append", default=None, help="metric (repeatable; default: headline)")
    p.add_argument("--factor", action="append", default=None,
                   help="config key that is the studied factor (sweeps know theirs; repeatable)")
    p.add_argument("--out", default=None, help="output folder (default: <first dir>/report)")
    p.add_argument("--items", action="append", default=None, metavar="A:B",
                   help="paired bootstrap over test items of per-item scores A and B (per_item/<A>.json, or "
                        "<file>#<key>) within each run (repeatable); variants vs baseline are compared anyway")
    args = p.parse_args(argv)
    out = build_report(args.dirs, args.out and Path(args.out), args.baseline, args.metric, args.factor, args.items)
    text = (out / "report.md").read_text()
    for line in text.splitlines():
        if line.startswith("- ⚠"):
            print(line[2:])
    print(f"wrote {out / 'report.md'} and {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
