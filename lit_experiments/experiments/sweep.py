"""`lit-exp sweep`: a grid or list of config deltas x seeds, each a normal run, indexed in `<sweep>/sweep.json`.

    lit-exp sweep -c configs/toy/curriculum.yaml --grid model.init_args.hidden=16,32 --seeds 0,1,2 [--out DIR]
    lit-exp sweep -c base.yaml --list variants/*.yaml [--with-base] --seeds 0,1
    lit-exp sweep ... --print                  one shell command per run (SLURM array, GNU parallel)
    lit-exp sweep ... --wandb-sweep sweep.yaml a wandb sweep config whose agents call `lit-exp`

Runs go one after another in this process (``lit-exp curriculum`` for a config with ``stages:``, else ``fit``),
each into ``<sweep>/<variant>__seed<k>``. A failed run is recorded ``failed`` with its error's first line and the
sweep goes on; the same command again skips the runs that are done and re-runs the others (a failed run's old
folder moves to ``<sweep>/superseded/``). Grid keys are dotted config keys, checked before anything runs.

A sweep folder is a record: one sweep at a time writes it (``<sweep>/.sweep.lock`` names the holder), every state
in ``sweep.json`` is reconciled with the run's own results.json, Ctrl-C stops the sweep with the run recorded
``interrupted`` (the same command continues), and ``--print`` writes ``sweep.json`` with the planned runs so
``lit-exp report`` reads the folder once they have run. Options after the sweep's own (``--trainer.max_epochs 1``)
go to every run, as they would to ``lit-exp curriculum``.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError

INDEX_FILE = "sweep.json"
LOCK_FILE = ".sweep.lock"


@dataclass
class RunSpec:
    """One run of a sweep: its name (= folder), variant, overrides, seed, fold and extra ``lit-exp`` args."""

    name: str
    variant: str
    overrides: dict[str, Any]
    seed: int
    args: list[str]
    fold: int | None = None


@dataclass
class Plan:
    """What a sweep / cv command will run."""

    configs: list[str]
    composed: dict[str, Any]
    subcommand: str
    grid: dict[str, list[str]]
    variants: list[tuple[str, list[str], dict[str, Any]]]  # name, lit-exp args, overrides
    seeds: list[int]
    runs: list[RunSpec] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # per-run ``--key value`` args given to every run

    def expand(self, folds: int | None = None, fold_file: str | None = None) -> None:
        self.runs = []
        for variant, args, overrides in self.variants:
            for seed in self.seeds:
                for fold in (range(folds) if folds else [None]):
                    name = f"{variant}__seed{seed}" + (f"__fold{fold}" if fold is not None else "")
                    extra = list(args)
                    if fold is not None:
                        extra += ["--data.init_args.fold", json.dumps({"file": fold_file, "index": fold})]
                        if self.subcommand == "curriculum":
                            extra += ["--test_after", "false"]  # the test split is scored by --test only
                    self.runs.append(RunSpec(name, variant, overrides, seed, extra, fold))

    def expand_folds(self, folds: int, fold_file: str) -> None:
        self.expand(folds, fold_file)


# ------------------------------------------------------------------------------------------------ parsing
def build_parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"lit-exp {name}", description=description, allow_abbrev=False)
    p.add_argument("-c", "--config", action="append", required=True, help="base config (repeatable, in order)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="dotted config key and values")
    p.add_argument("--list", nargs="+", default=[], metavar="DELTA.yaml", help="named variants (file stem = name)")
    p.add_argument("--with-base", action="store_true", help="with --list: the base itself as variant `base`")
    p.add_argument("--seeds", default="", help="comma-separated seeds (default 0)")
    p.add_argument("--out", help="sweep folder (default runs/<sweep|cv>/<config stem>)")
    p.add_argument("--print", dest="print_only", action="store_true", help="print one command per run, run none")
    p.epilog = "Any further --key value pairs (e.g. --trainer.max_epochs 1) are passed to every run."
    return p


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The tool's own options, plus ``--key value`` / ``--key=value`` pairs for every run (``args.overrides``)."""
    args, rest = parser.parse_known_args(argv)
    overrides: list[str] = []
    i = 0
    while i < len(rest):
        item = rest[i]
        if not item.startswith("--") or item == "--":
            raise ConfigError(f"{parser.prog}: unexpected argument {item!r}; per-run overrides are --key value pairs "
                              "(e.g. --trainer.max_epochs 1)")
        if "=" in item:
            overrides.append(item)
            i += 1
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            overrides += [item, rest[i + 1]]
            i += 2
        else:
            raise ConfigError(f"{parser.prog}: override {item} has no value; expected {item} VALUE")
    args.overrides = overrides
    return args


def override_pairs(overrides: list[str]) -> dict[str, str]:
    """``--a.b 1 --c=2`` -> ``{"a.b": "1", "c": "2"}``."""
    pairs, i = {}, 0
    while i < len(overrides):
        item = overrides[i][2:]
        if "=" in item:
            key, _, value = item.partition("=")
            i += 1
        else:
            key, value = item, overrides[i + 1]
            i += 2
        pairs[key] = value
    return pairs


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip():
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2 (a dotted config key and its values)")
        if not vals:
            raise ConfigError(f"--grid {item!r}: no values; expected KEY=V1,V2")
        grid[key.strip().lstrip("-")] = vals
    return grid


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in (text or "0").split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise ConfigError("--seeds is empty; expected e.g. 0,1,2")
    return seeds


def flat_keys(value: Any, prefix: str = "") -> set[str]:
    """Dotted keys of a config: every mapping level (lists are values)."""
    keys = {prefix} if prefix else set()
    if isinstance(value, dict):
        for k, v in value.items():
            keys |= flat_keys(v, f"{prefix}.{k}" if prefix else str(k))
    return keys


def _signature_keys(prefix: str, target: Any) -> set[str]:
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return set()
    return {f"{prefix}.{n}" for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL,
                                                                                        p.VAR_KEYWORD)}


def valid_keys(composed: dict[str, Any]) -> set[str]:
    """Keys a grid may set: the composed config's keys plus the parameters of its model, data and trainer."""
    import importlib

    from ..core.trainer import LitTrainer

    keys = flat_keys(composed) | {"seed_everything", "trainer"}
    for section in ("model", "data"):
        path = (composed.get(section) or {}).get("class_path") if isinstance(composed.get(section), dict) else None
        if path:
            module, _, name = path.rpartition(".")
            try:
                keys |= _signature_keys(f"{section}.init_args", getattr(importlib.import_module(module), name))
            except (ImportError, AttributeError):
                pass
    import lightning as L

    keys |= _signature_keys("trainer", LitTrainer.__init__) | _signature_keys("trainer", L.Trainer.__init__)
    return keys


def check_grid(grid: dict[str, list[str]], composed: dict[str, Any], configs: list[str], what: str = "grid") -> None:
    if "seed_everything" in grid:
        raise ConfigError("--grid seed_everything: give seeds with --seeds 0,1,2")
    known = valid_keys(composed)
    for key in grid:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.5)
            hint = f"; nearest valid keys: {', '.join(close)}" if close else ""
            flag = f"--grid {key}" if what == "grid" else f"--{key}"
            raise ConfigError(f"{flag}: not a key of the config ({' + '.join(configs)}){hint}")


def safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)


def grid_variants(grid: dict[str, list[str]]) -> list[tuple[str, list[str], dict[str, Any]]]:
    """The cross product as (name, args, overrides); names use the last key part unless two keys share it."""
    import itertools

    import yaml

    last = [k.rsplit(".", 1)[-1] for k in grid]
    short = {k: (s if last.count(s) == 1 else k) for k, s in zip(grid, last)}
    out = []
    for combo in itertools.product(*grid.values()):
        pairs = list(zip(grid, combo))
        name = safe(",".join(f"{short[k]}={v}" for k, v in pairs))
        args = [a for k, v in pairs for a in (f"--{k}", v)]
        out.append((name, args, {k: yaml.safe_load(v) for k, v in pairs}))
    return out


def plan_from_args(args: argparse.Namespace, kind: str) -> Plan:
    from ..core.configs import load_composed

    configs = [str(Path(c).resolve()) for c in args.config]
    for c in configs + list(args.list):
        if not Path(c).is_file():
            raise ConfigError(f"config {c} does not exist")
    composed = load_composed(*configs)  # the CLI's composition of the same -c files (one rule, F48)
    grid = parse_grid(args.grid)
    if args.grid == [] and not args.list and kind == "sweep":
        raise ConfigError("lit-exp sweep: the grid is empty; give --grid KEY=V1,V2 or --list DELTA.yaml ...")
    if args.grid and args.list:
        raise ConfigError("give either --grid or --list, not both")
    check_grid(grid, composed, configs)
    extra = list(getattr(args, "overrides", []) or [])
    check_grid({k: [v] for k, v in override_pairs(extra).items() if k != "seed_everything"}, composed, configs,
               what="override")
    if "seed_everything" in override_pairs(extra):
        raise ConfigError("--seed_everything: give seeds with --seeds 0,1,2")
    if args.list:
        names = [Path(f).stem for f in args.list]
        if len(set(names)) != len(names):
            raise ConfigError(f"--list: two files share a stem ({names}); variant names must be unique")
        variants = [("base", [], {})] if args.with_base else []
        variants += [(safe(Path(f).stem), ["-c", str(Path(f).resolve())], {"config": str(Path(f).resolve())})
                     for f in args.list]
    else:
        variants = grid_variants(grid) if grid else [("base", [], {})]
    sub = "curriculum" if "stages" in composed else "fit"
    plan = Plan(configs, composed, sub, grid, variants, parse_seeds(args.seeds), overrides=extra)
    plan.expand()
    return plan


def sweep_dir(args: argparse.Namespace, plan: Plan) -> Path:
    kind = "cv" if hasattr(args, "folds") else "sweep"
    return Path(args.out) if args.out else Path("runs") / kind / Path(plan.configs[-1]).stem


def command(plan: Plan, run: RunSpec, out: Path) -> list[str]:
    cfg = [a for c in plan.configs for a in ("-c", c)]
    return [plan.subcommand, *cfg, *plan.overrides, *run.args, "--trainer.run_dir", str(out / run.name),
            "--seed_everything", str(run.seed)]


def print_commands(plan: Plan, out: Path) -> None:
    for run in plan.runs:
        print(shlex.join(["lit-exp", *command(plan, run, out)]))


# ------------------------------------------------------------------------------------------------ running
def load_index(out: Path) -> dict[str, Any]:
    path = out / INDEX_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ConfigError(f"{path} is unreadable ({err}); move it aside (the runs' own results.json files are "
                          "kept) and run the same command again") from None
    return data if isinstance(data, dict) else {}


def save_index(out: Path, index: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{INDEX_FILE}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(index, indent=1, default=str))
    os.replace(tmp, out / INDEX_FILE)


def execute(args: list[str]) -> None:
    """One ``lit-exp`` call in this process; errors propagate (``--debug``) so their first line is recorded."""
    import sys

    from ..core.litcli import run_command

    old, argv = os.environ.get("LIT_EXP_ON_EXISTING"), list(sys.argv)
    os.environ["LIT_EXP_ON_EXISTING"] = "refuse"  # the sweep moved any old folder aside: never a -2 sibling
    sys.argv = sys.argv[:1]  # LightningCLI warns when it gets args while sys.argv holds others
    try:
        run_command(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
        if old is None:
            os.environ.pop("LIT_EXP_ON_EXISTING", None)
        else:
            os.environ["LIT_EXP_ON_EXISTING"] = old
    if code not in (0, None):
        raise RuntimeError(f"lit-exp {args[0]} exited with code {code}")


def move_aside(out: Path, name: str) -> str | None:
    """Move a run dir about to be re-run to ``<out>/superseded/<name>-N`` (the run-dir policy's own mover)."""
    from ..core.rundir import supersede  # imports lightning: not at `lit-exp sweep --help` time

    target = supersede(out / name, out)
    return str(target.relative_to(out)) if target is not None else None


def _headline(data: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in
                     (data.get("headline") or {}).items())


def first_line(exc: BaseException) -> str:
    """The error's first line as the CLI would print it (``lit-exp: error: ...``), else ``Type: message``."""
    from ..core.errors import explain
    from ..core.results import error_line

    report = explain(exc)
    lines = [line.strip() for line in (report.lines if report else []) if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else error_line(exc)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep: the run is recorded ``interrupted``; the CLI exits 130."""


def lock_folder(out: Path) -> Any:
    """Hold ``<out>/.sweep.lock`` for the life of the returned file object; a second sweep over the same folder is
    refused with the holder's pid, host, start time and command."""
    import fcntl
    import socket
    import sys

    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    handle = open(path, "a+")  # noqa: SIM115 - held open for the sweep's whole life
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"{out} is being written by another sweep ({holder}); wait for it to finish or give "
                          "another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}: "
                 f"{shlex.join(['lit-exp', *sys.argv[1:]])}\n")
    handle.flush()
    return handle


def read_results(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A run's results.json, or ``(None, why)`` when it is missing or unreadable (a truncated file names itself)."""
    if not path.is_file():
        return None, f"{path} does not exist"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return None, f"{path} is unreadable ({type(err).__name__}: {err})"
    if not isinstance(data, dict):
        return None, f"{path} is not a JSON object"
    return data, None


def reconcile(entry: dict[str, Any], out: Path) -> None:
    """Make the entry's status say what the run's own results.json says (a sweep killed mid-run left `running`)."""
    data, problem = read_results(out / entry["results"])
    if data is None:
        if entry.get("status") in ("done", "running", "interrupted"):
            entry.update(status="pending" if entry.get("status") != "interrupted" else "interrupted",
                         error=problem if entry.get("status") == "done" else entry.get("error"))
        return
    status = str(data.get("status") or "done")
    if status == "done":
        entry.update(status="done", error=None, headline=data.get("headline") or {})
    elif status == "interrupted":
        entry.update(status="interrupted", error="interrupted (Ctrl-C); the same command continues")
    else:
        entry.update(status="failed", error=data.get("error") or entry.get("error") or status)


def plan_index(plan: Plan, out: Path, kind: str) -> dict[str, Any]:
    """``sweep.json`` for ``plan``: earlier entries of this folder kept and reconciled with their results.json."""
    old = load_index(out)
    entries = {r["name"]: r for r in old.get("runs", [])}
    index = {"kind": kind, "created": old.get("created", time.strftime("%Y-%m-%dT%H:%M:%S")), "base": plan.configs,
             "subcommand": plan.subcommand, "grid": plan.grid, "variants": [v[0] for v in plan.variants],
             "seeds": plan.seeds, "overrides": plan.overrides, "runs": []}
    for run in plan.runs:
        entry = entries.pop(run.name, None) or {}
        entry.update(name=run.name, variant=run.variant, overrides=run.overrides, seed=run.seed, fold=run.fold,
                     results=f"{run.name}/results.json", run_dir=run.name,
                     command=shlex.join(["lit-exp", *command(plan, run, out)]))
        entry.setdefault("status", "pending")
        entry.setdefault("error", None)
        entry.setdefault("headline", {})
        reconcile(entry, out)
        index["runs"].append(entry)
    for entry in entries.values():  # runs of earlier calls over this folder stay listed, reconciled
        if "results" in entry:
            reconcile(entry, out)
        index["runs"].append(entry)
    return index


def record_plan(plan: Plan, out: Path, kind: str) -> None:
    """``--print``: sweep.json lists the planned runs (status ``pending``), so `lit-exp report` reads the folder
    once the printed commands have run (each run's results.json then says what happened)."""
    with lock_folder(out):
        save_index(out, plan_index(plan, out, kind))


def run_plan(plan: Plan, out: Path, kind: str = "sweep", check: Any = None) -> dict[str, Any]:
    """Run every run of ``plan`` not done yet; ``sweep.json`` is rewritten after each. Returns the index.

    Holds the folder's lock; Ctrl-C records the run ``interrupted`` and raises :class:`SweepInterrupted`.
    ``check(results)``, when given, sees the first finished run's results.json and may stop the sweep (raise)
    before anything else trains (cv's ``--select``)."""
    with lock_folder(out):
        return _run_locked(plan, out, kind, check)


def _run_locked(plan: Plan, out: Path, kind: str, check: Any = None) -> dict[str, Any]:
    import signal

    index = plan_index(plan, out, kind)
    save_index(out, index)
    total, shown_by_run = len(plan.runs), {}
    for i, (run, entry) in enumerate(zip(plan.runs, index["runs"]), 1):
        label = f"run {i}/{total}: {run.name} {json.dumps(run.overrides)}"
        if entry["status"] == "done":
            final = (read_results(out / entry["results"])[0] or {}).get("final") or {}
            shown_by_run[run.name] = {k: v for k, v in final.items() if "val/" in k}
            print(f"{label} -> done (skipped, finished earlier)", flush=True)
            continue
        if entry.get("error") and "unreadable" in str(entry["error"]):
            print(f"{label}: {entry['error']}; running it again", flush=True)
        moved = move_aside(out, run.name)
        if moved:
            entry.setdefault("superseded", []).append(moved)
        entry.update(status="running", error=None, started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        save_index(out, index)
        start, shown_metrics = time.perf_counter(), {}
        interrupted = False
        try:
            execute(command(plan, run, out))
        except KeyboardInterrupt:
            interrupted = True
        except Exception as exc:  # noqa: BLE001 - a failed run is recorded and the sweep goes on
            entry.update(status="failed", error=first_line(exc))
        finally:
            # Lightning answers Ctrl-C by ignoring SIGINT and exiting 1: give the sweep its Ctrl-C back
            if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
                signal.signal(signal.SIGINT, signal.default_int_handler)
        data, _ = read_results(out / entry["results"])
        if data is not None and data.get("status") == "interrupted":
            interrupted = True
        if interrupted:
            entry.update(status="interrupted", error="interrupted (Ctrl-C); the same command continues",
                         wall_s=round(time.perf_counter() - start, 2))
            save_index(out, index)
            print(f"{label} -> interrupted. The sweep stopped; run the same command again to continue (done runs "
                  f"are skipped, this one starts again): {out / INDEX_FILE}", flush=True)
            raise SweepInterrupted
        if entry["status"] == "running":
            reconcile(entry, out)
            if entry["status"] == "pending":  # the run returned but wrote no results.json
                entry.update(status="failed", error=f"{out / entry['results']} was not written")
            shown_metrics = entry.get("headline") or {k: v for k, v in ((data or {}).get("final") or {}).items()
                                                      if "val/" in k}
        entry["wall_s"] = round(time.perf_counter() - start, 2)
        save_index(out, index)
        if check is not None and entry["status"] == "done":
            check(data or {})
            check = None  # the first finished run says what every run logs
        shown_by_run[run.name] = shown_metrics
        shown = entry["error"] if entry["status"] == "failed" else _headline({"headline": shown_metrics})
        print(f"{label} -> {entry['status']}, {shown}", flush=True)
    print_table(index["runs"][:total], shown_by_run)
    return index


def print_table(runs: list[dict[str, Any]], shown: dict[str, dict[str, Any]] | None = None) -> None:
    """One line per run: status and headline metrics (the validation metrics when a run has no headline)."""
    values = {r["name"]: (r.get("headline") or (shown or {}).get(r["name"]) or {}) for r in runs}
    metrics = list(dict.fromkeys(k for v in values.values() for k in v))
    width = max([len(r["name"]) for r in runs] + [4])
    print(f"{'run':<{width}}  {'status':<7}  " + "  ".join(f"{m:>14}" for m in metrics))
    for r in runs:
        vals = [values[r["name"]].get(m) for m in metrics]
        cells = "  ".join(f"{v:>14.4f}" if isinstance(v, float) else f"{str(v):>14}" for v in vals)
        print(f"{r['name']:<{width}}  {r['status']:<7}  {cells}" + (f"  {r['error']}" if r.get("error") else ""))


def wandb_sweep(plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {k: {"values": [__import__("yaml").safe_load(v) for v in vals]}
                              for k, vals in plan.grid.items()}
    if args.list:
        params["config"] = {"values": [str(Path(f).resolve()) for f in args.list]}
    params["seed_everything"] = {"values": plan.seeds}
    cfg = [a for c in plan.configs for a in ("-c", c)]
    # every agent's run gets its own folder: core.rundir fills {wandb_run_id} from $WANDB_RUN_ID
    run_dir = str(Path(sweep_dir(args, plan)).resolve() / "{wandb_run_id}")
    return {"program": "lit-exp", "method": "grid", "name": Path(plan.configs[-1]).stem, "parameters": params,
            "command": ["${program}", plan.subcommand, *cfg, *plan.overrides, "--trainer.run_dir", run_dir,
                        "${args}"]}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("sweep", __doc__.split("\n\n")[0])
    parser.add_argument("--wandb-sweep", metavar="FILE", help="write a wandb sweep config and exit")
    args = parse_with_overrides(parser, argv)
    plan = plan_from_args(args, kind="sweep")
    out = sweep_dir(args, plan)
    if args.wandb_sweep:
        import yaml

        Path(args.wandb_sweep).write_text(yaml.safe_dump(wandb_sweep(plan, args), sort_keys=False))
        print(f"wandb sweep config: {args.wandb_sweep} (run: wandb sweep {args.wandb_sweep}; wandb agent ID)")
        return 0
    if args.print_only:
        record_plan(plan, out, "sweep")
        print_commands(plan, out)
        print(f"sweep.json (planned runs): {out / INDEX_FILE}", file=__import__("sys").stderr)
        return 0
    index = run_plan(plan, out)
    print(f"sweep.json: {out / INDEX_FILE}")
    return 0 if all(r["status"] == "done" for r in index["runs"]) else 1
