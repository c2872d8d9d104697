"""Run directories are append-only records.

A directory that holds a run (results.json, config.yaml, stage logs, checkpoints) is never reused silently:

* a new run whose ``run_dir`` holds a run goes to ``<run_dir>-2`` (``-3``...), said once on stdout; with
  ``on_existing="refuse"`` (or ``$LIT_EXP_ON_EXISTING=refuse``) it stops instead, naming the two ways on;
* ``--resume`` compares the new config with the run's ``config.yaml`` (keys in :data:`RESUME_IGNORED` aside)
  and refuses any difference unless ``resume_changed`` is set; ``config.yaml`` itself is never rewritten;
* files a re-run would replace (an out-of-order stage, an earlier test) move to ``<run_dir>/superseded/``;
  a mid-stage resume appends to the stage's ``metrics.csv`` (:class:`AppendingCSVLogger`).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from .errors import ConfigError

ON_EXISTING = ("suffix", "refuse")
ON_EXISTING_ENV = "LIT_EXP_ON_EXISTING"
_CHOSEN_ENV = "LIT_EXP_CHOSEN_RUN_DIR"  # rank zero's choice, inherited by the DDP ranks Lightning launches
RUN_MARKERS = ("results.json", "config.yaml", "stages", "metrics.csv", "checkpoints")
#: keys of a run's config that may differ on ``--resume``: how the command was called, where, what it shows
RESUME_IGNORED = ("config", "only", "resume", "resume_changed", "on_existing", "trainer.run_dir",
                  "trainer.enable_progress_bar", "trainer.enable_model_summary")
#: how a command was invoked, not what it trains: never saved with a run (a resume would re-apply `only`)
INVOCATION_KEYS = ("config", "only", "resume", "resume_changed", "on_existing")


class RunDirError(ConfigError):
    """A run directory cannot be used as asked (it holds a run, differs from the saved config, ...)."""


def say(message: str) -> None:
    """One line for the user on stdout (rank zero only)."""
    if rank_zero_only.rank == 0:
        print(message, flush=True)


def holds_run(path: Path) -> bool:
    """True when ``path`` holds a finished or partial run of any command."""
    return any((path / marker).exists() for marker in RUN_MARKERS)


def next_free(path: Path) -> Path:
    """``path-2``, ``path-3``, ... : the first sibling that does not exist."""
    n = 2
    while path.with_name(f"{path.name}-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}-{n}")


def expand_run_dir(text: str) -> str:
    """``{wandb_run_id}`` -> ``$WANDB_RUN_ID`` (set by ``wandb agent`` for every run); an error without it."""
    if "{wandb_run_id}" not in text:
        return text
    run_id = os.environ.get("WANDB_RUN_ID")
    if not run_id:
        raise RunDirError(f"run_dir {text}: {{wandb_run_id}} is filled from $WANDB_RUN_ID, which `wandb agent` sets "
                          "for each run; it is not set here (run the sweep through `wandb agent`, or give a plain "
                          "--trainer.run_dir)")
    return text.replace("{wandb_run_id}", run_id)


def resolve_run_dir(requested: str | Path, on_existing: str | None = None) -> Path:
    """The directory a new run writes to: ``requested``, or a fresh ``-N`` sibling when it holds a run.

    ``{wandb_run_id}`` in ``requested`` is the run id a wandb sweep agent gives each run (``$WANDB_RUN_ID``), so
    the agents of one sweep write a folder per run. Rank zero decides and shares the choice with the ranks
    Lightning launches later (through the environment), so every rank writes to the same place.
    """
    requested = Path(expand_run_dir(str(requested)))
    policy = on_existing or os.environ.get(ON_EXISTING_ENV) or "suffix"
    if policy not in ON_EXISTING:
        raise RunDirError(f"on_existing={policy!r} (--on_existing or ${ON_EXISTING_ENV}); expected one of {ON_EXISTING}")
    if rank_zero_only.rank != 0:
        chosen = json.loads(os.environ.get(_CHOSEN_ENV, "{}"))
        if str(requested) in chosen:
            return Path(chosen[str(requested)])
    path = requested
    if holds_run(requested):
        if policy == "refuse":
            raise RunDirError(f"run_dir {requested} already holds a run; choose a new one "
                              f"(--trainer.run_dir DIR) or continue it (--resume {requested})")
        path = next_free(requested)
        say(f"run_dir {requested} already holds a run; this run writes to {path} "
            f"(continue the old one with --resume {requested})")
    chosen = json.loads(os.environ.get(_CHOSEN_ENV, "{}"))
    os.environ[_CHOSEN_ENV] = json.dumps({**chosen, str(requested): str(path)})
    return path


def check_resume_dir(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "results.json").is_file():
        raise RunDirError(f"--resume {path}: no results.json there; expected a run directory written by "
                          "`lit-exp curriculum`")
    return path


# ----------------------------------------------------------------------------------------------- configs
def clean_config(config_yaml: str) -> dict[str, Any]:
    """The config as saved with a run: how this command was invoked (``only``, ``resume``...) removed."""
    cfg = yaml.safe_load(config_yaml) or {}
    for key in INVOCATION_KEYS:
        cfg.pop(key, None)
    return cfg


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys; list items that are dicts with a ``name`` (stages) are keyed by that name."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        items = ((v["name"], v) for v in value)
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in items:
        out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out if out or not prefix else {prefix: value}


def config_diff(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    """``{key: [saved, new]}`` for every key that differs, keys in :data:`RESUME_IGNORED` aside. A key the saved
    config lacks whose new value is off (``None``, ``False``, empty) is an option added since the run was saved,
    at its default: not a difference."""
    a, b = flatten(saved), flatten(new)
    ignored = tuple(RESUME_IGNORED)
    diff = {}
    for key in sorted(set(a) | set(b)):
        if key in ignored or key.startswith(tuple(f"{k}." for k in ignored)):
            continue
        if key not in a and b.get(key) in (None, False, {}, [], ""):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diff[key] = [a.get(key, "<absent>"), b.get(key, "<absent>")]
    return diff


def check_resume_config(run_dir: Path, config_yaml: str, allow_changed: bool) -> dict[str, list[Any]]:
    """Differences between the run's ``config.yaml`` and this command's config; refused unless allowed."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        say(f"--resume {run_dir}: the run has no config.yaml to compare with; continuing with this config")
        return {}
    diff = config_diff(clean_config(saved_path.read_text()), clean_config(config_yaml))
    if diff and not allow_changed:
        shown = "; ".join(f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in list(diff.items())[:8])
        more = f" (and {len(diff) - 8} more)" if len(diff) > 8 else ""
        raise RunDirError(f"--resume {run_dir}: the config differs from the run's config.yaml in {len(diff)} "
                          f"key(s): {shown}{more}. Resume with the run's own config (-c {saved_path}), start a "
                          "new run (without --resume), or accept the change with --resume_changed true "
                          "(recorded in results.json)")
    return diff


def write_config(run_dir: Path, config_yaml: str, name: str = "config.yaml", run_dir_value: str | None = None) -> Path:
    """Save the run's config (invocation keys removed, ``trainer.run_dir`` = where the run really is)."""
    cfg = clean_config(config_yaml)
    if run_dir_value is not None and isinstance(cfg.get("trainer"), dict):
        cfg["trainer"]["run_dir"] = run_dir_value
    path = run_dir / name
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def next_resume_config(run_dir: Path) -> str:
    n = 1
    while (run_dir / f"config.resume-{n}.yaml").exists():
        n += 1
    return f"config.resume-{n}.yaml"


# ----------------------------------------------------------------------------------------------- files
def supersede(path: Path, run_dir: Path) -> Path | None:
    """Move ``path`` (a stage or test directory about to be re-run) to ``<run_dir>/superseded/<name>-N``."""
    if not path.exists() or rank_zero_only.rank != 0:
        return None
    n = 1
    while (target := run_dir / "superseded" / f"{path.name}-{n}").exists():
        n += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(target))
    return target


def trim_metrics(path: Path, before_step: int) -> None:
    """Before a mid-stage resume: keep a copy of ``metrics.csv`` and drop the rows the resume will log again."""
    if not path.is_file() or rank_zero_only.rank != 0:
        return
    n = 1
    while (copy := path.with_name(f"metrics.attempt-{n}.csv")).exists():
        n += 1
    shutil.copy2(path, copy)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if int(float(r.get("step") or 0)) < before_step]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=sorted(fields))
        writer.writeheader()
        writer.writerows(rows)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, never deleted."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        path = Path(self.metrics_file_path)
        if path.is_file():
            with path.open(newline="") as fh:
                header = next(csv.reader(fh), [])
            self.metrics_keys = sorted(header)
            if header != self.metrics_keys:  # rows are appended in sorted-key order
                self._rewrite_with_new_header(self.metrics_keys)

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here
        return


class AppendingCSVLogger(CSVLogger):
    """A CSV logger writing ``metrics.csv`` straight into ``directory`` and appending to an earlier one."""

    def __init__(self, directory: Path) -> None:
        super().__init__(save_dir=str(directory), name="", version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
