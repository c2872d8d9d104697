"""Curriculum runner: stages as sequential ``Trainer.fit`` calls, each with a new Trainer, callbacks and optimizer.

Per stage: ``set_stage`` -> (new Trainer: LazyBuild -> StageFreeze -> optimizer from trainable params) -> fit ->
``final.ckpt`` (weights only) -> metrics into results.json. Weights are handed forward, optimizer state is not
(F08, F33). Every rank runs the same control flow; only rank zero writes files. The run directory is an
append-only record (see :mod:`.rundir`).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.utilities import rank_zero_info

from .lazy import lazy_build
from .results import RunResults, error_line, format_test_table, skipped_samples, to_float_dict
from .rundir import (
    RunDirError,
    check_resume_config,
    check_resume_dir,
    next_resume_config,
    resolve_run_dir,
    say,
    supersede,
    trim_metrics,
    write_config,
)
from .seeding import mark_run_seed
from .specs import SCHEDULERS, StageSpec

if TYPE_CHECKING:
    from .trainer import LitTrainer

DONE, RUNNING, FAILED, INTERRUPTED = "done", "running", "failed", "interrupted"


def stage_dir(run_dir: Path, index: int, stage: StageSpec) -> Path:
    return run_dir / "stages" / f"{index:02d}_{stage.name}"


def parse_only(only: str | None, stages: list[StageSpec]) -> list[str]:
    names = [s.name for s in stages]
    if not only:
        return names
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ValueError(f"--only names unknown stage(s) {unknown}; the curriculum has {names}")
    return wanted


def apply_data_overrides(datamodule: Any, stage: StageSpec) -> None:
    """Set a stage's datamodule overrides (``stage.data``); an unknown attribute is an error naming it."""
    data_defaults(datamodule, [stage])
    for key, value in stage.data.items():
        setattr(datamodule, key, value)


def data_defaults(datamodule: Any, stages: list[StageSpec]) -> dict[str, Any]:
    """The datamodule's own values of every attribute some stage overrides (restored before each stage)."""
    defaults = {}
    for stage in stages:
        for key in stage.data:
            if datamodule is None or not hasattr(datamodule, key):
                raise ValueError(f"stage {stage.name!r}: data override {key!r} is not an attribute of "
                                 f"{type(datamodule).__name__}")
            defaults.setdefault(key, getattr(datamodule, key))
    return defaults


def load_weights(model: torch.nn.Module, path: Path, datamodule: Any) -> None:
    """Load a stage's final weights; lazy parts are built first so their parameters exist."""
    if datamodule is not None and hasattr(datamodule, "example_batch"):
        lazy_build(model, datamodule.example_batch())
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"])


def save_weights(model: torch.nn.Module, path: Path) -> None:
    if rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"state_dict": model.state_dict(), "study": type(model).__qualname__}, tmp)
        tmp.replace(path)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


@dataclass
class StageTask:
    """One stage this invocation will train: ``fresh`` from the handed-over weights, or ``continue`` mid-stage."""

    index: int
    stage: StageSpec
    mode: str
    out_of_order: bool


@dataclass
class CurriculumRun:
    """State of one invocation: the run dir, its results.json and the weights waiting to be loaded."""

    base: LitTrainer
    model: Any
    datamodule: Any
    stages: list[StageSpec]
    results: RunResults
    resumed: bool
    shared: list = field(default_factory=list)
    pending: Path | None = None  # final weights on disk newer than the ones in memory
    data_defaults: dict[str, Any] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    trainers: weakref.WeakSet = field(default_factory=weakref.WeakSet)  # every stage Trainer (F33)

    @property
    def run_dir(self) -> Path:
        return self.results.run_dir


def run_curriculum(base: LitTrainer, model: L.LightningModule, datamodule: Any, stages: list[StageSpec],
                   only: str | None = None, resume: str | None = None, test_after: bool = True,
                   resume_changed: bool = False, on_existing: str | None = None) -> dict[str, Any]:
    """Train ``stages`` in order into one run directory and return its results.json content.

    Steps: :func:`validate_plan` (stages, model, ``--only``) -> :func:`open_run` (a new run dir, suffixed when
    the asked one holds a run; or the ``--resume`` dir after the config check) -> :func:`plan_tasks` (the
    stages to train, in curriculum order) -> per stage :func:`prepare_stage` -> :func:`train_stage` ->
    :func:`record_stage` -> :func:`final_test` -> :func:`finish`. A stage that raises is recorded as
    ``failed`` (or ``interrupted``) with the error's first line and time, then the error propagates.
    """
    selected = validate_plan(model, stages, only)
    run = open_run(base, model, datamodule, stages, resume, resume_changed, on_existing, only)
    tasks = plan_tasks(run, selected)
    run.shared = base.make_loggers(run.run_dir)[1:]  # wandb (one run for the whole curriculum), if asked
    try:
        for task in tasks:
            train_stage(run, task)
        if test_after:
            final_test(run)
    except BaseException as err:
        run.results.data.update(status=INTERRUPTED if _is_interrupt(err) else FAILED, error=_error(err, run))
        run.results.save()
        _close_shared(run, "failed")
        raise
    return finish(run)


# ------------------------------------------------------------------------------------------ plan / open
def validate_plan(model: Any, stages: list[StageSpec], only: str | None) -> list[str]:
    """Check the curriculum before anything is written; return the stage names ``--only`` selects."""
    if not stages:
        raise ValueError("the curriculum has no stages: add a `stages:` list to the YAML")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique, got {names}")
    if not hasattr(model, "set_stage"):
        raise TypeError(f"{type(model).__name__} is not a StudyModule: curricula need set_stage()")
    for stage in stages:  # a typo in stage 3's optimizer is reported before stage 1 trains
        try:
            stage.optimizer.optimizer_class()
            if stage.optimizer.scheduler not in SCHEDULERS:
                raise ValueError(f"optimizer.scheduler={stage.optimizer.scheduler!r}; expected one of {SCHEDULERS}")
        except ValueError as err:
            raise ValueError(f"stage {stage.name!r}: {err}") from None
        if stage.max_epochs == 0 or stage.max_steps == 0:  # a stage trains: one that asks for nothing is a typo
            key = "max_epochs: 0" if stage.max_epochs == 0 else "max_steps: 0"
            raise ValueError(f"stage {stage.name!r}: {key} trains nothing; give it steps or remove the stage "
                             f"(`{{name: {stage.name}, delete: true}}` in a delta)")
    selected = parse_only(only, stages)
    if only is not None and not selected:
        raise ValueError(f"--only {only!r} selects no stage; the curriculum has {names}")
    return selected


def open_run(base: LitTrainer, model: Any, datamodule: Any, stages: list[StageSpec], resume: str | None,
             resume_changed: bool, on_existing: str | None, only: str | None) -> CurriculumRun:
    """Settle the run dir, check a resume against the saved plan and config, then write results.json/config."""
    names = [s.name for s in stages]
    defaults = data_defaults(datamodule, stages)
    config_yaml = getattr(base, "config_yaml", None)
    changed: dict[str, Any] = {}
    if resume:
        run_dir = check_resume_dir(resume)
        results = RunResults(run_dir)
        planned = results.data.get("plan")
        if planned and planned != names:
            raise RunDirError(f"--resume {run_dir}: the run's stages {planned} differ from this config's {names}")
        if config_yaml is not None:
            changed = check_resume_config(run_dir, config_yaml, resume_changed)
    else:
        run_dir = resolve_run_dir(base.run_dir, on_existing)
        results = RunResults(run_dir)
    base.run_dir = run_dir
    run = CurriculumRun(base, model, datamodule, stages, results, bool(resume), data_defaults=defaults)
    if resume:
        entry: dict[str, Any] = {"time": _now(), "only": only, "config_files": _config_files(base)}
        if changed:
            entry.update(changed=changed, config=next_resume_config(run_dir))
            write_config(run_dir, config_yaml or "", entry["config"], str(run_dir))
            say(f"--resume_changed: continuing {run_dir} with {len(changed)} changed key(s) "
                f"({', '.join(changed)}); recorded in results.json and {entry['config']}")
        results.data.setdefault("resumes", []).append(entry)
    else:
        results.init_run(run_dir.name, type(model).__name__, _config_files(base), plan=names)
        if config_yaml is not None:
            write_config(run_dir, config_yaml, "config.yaml", str(run_dir))
    results.data["status"] = RUNNING
    results.data.pop("error", None)
    _announce_length_override(run)
    results.save()
    return run


def plan_tasks(run: CurriculumRun, selected: list[str]) -> list[StageTask]:
    """The stages to train, in curriculum order, from the first stage that is not done in order.

    Stages before it keep their results (their final weights are loaded). From it on every selected stage
    is trained again, also one recorded ``done`` that ran out of order; a stage trained while an earlier one
    is not done is marked ``out_of_order``. Only the first stage may continue mid-stage from its last.ckpt.
    """
    records = [run.results.stage(s.name) for s in run.stages]
    first = next((i for i, r in enumerate(records) if r.get("status") != DONE or r.get("out_of_order")),
                 len(run.stages))
    if first > 0:
        run.pending = stage_dir(run.run_dir, first - 1, run.stages[first - 1]) / "final.ckpt"
    tasks: list[StageTask] = []
    missing: list[str] = []
    for index in range(first, len(run.stages)):
        stage, record = run.stages[index], records[index]
        if stage.name not in selected:
            if not missing:
                say(f"curriculum: stage {stage.name!r} skipped (not in --only)")
            missing.append(stage.name)
            continue
        ckpt = stage_dir(run.run_dir, index, stage) / "checkpoints" / "last.ckpt"
        resumable = (run.resumed and index == first and record.get("status") in (RUNNING, FAILED, INTERRUPTED)
                     and not record.get("out_of_order") and ckpt.exists())
        tasks.append(StageTask(index, stage, "continue" if resumable else "fresh", bool(missing)))
        if missing:
            say(f"curriculum: stage {stage.name!r} runs although earlier stage(s) {missing} are not done; its "
                f"results are marked out_of_order and `--resume {run.run_dir}` re-runs from {missing[0]!r} on")
        elif record.get("status") == DONE:
            say(f"curriculum: stage {stage.name!r} is re-run: it was trained out of curriculum order")
    if not tasks and run.resumed:
        say(f"curriculum: nothing to train in {run.run_dir}; every selected stage is done")
    return tasks


# -------------------------------------------------------------------------------------------- per stage
def prepare_stage(run: CurriculumRun, task: StageTask) -> tuple[LitTrainer, Path | None]:
    """Weights in, seed, stage settings, a new Trainer; a fresh stage's earlier files move to ``superseded/``."""
    index, stage = task.index, task.stage
    sdir = stage_dir(run.run_dir, index, stage)
    if run.pending is not None:
        if not run.pending.exists():
            raise FileNotFoundError(f"{run.pending}: final weights of a finished stage are missing")
        load_weights(run.model, run.pending, run.datamodule)
        run.pending = None
    ckpt = sdir / "checkpoints" / "last.ckpt"
    if task.mode == "continue":
        step = int(torch.load(ckpt, map_location="cpu", weights_only=False).get("global_step", 0))
        trim_metrics(sdir / "metrics.csv", step)
        say(f"curriculum: stage {stage.name!r} continues from {ckpt} (step {step})")
    else:
        moved = supersede(sdir, run.run_dir)
        if moved is not None:
            run.results.data.setdefault("superseded", []).append(
                {"stage": stage.name, "record": run.results.stage(stage.name), "dir": _rel(moved, run.run_dir)})
    L.seed_everything(run.base.seed + index, workers=True, verbose=False)
    mark_run_seed(run.base.seed, run.base.seed + index)  # run_seed() keys on the run's seed, not the stage's (F50)
    run.model.set_stage(stage, in_curriculum=True)
    for key, value in {**run.data_defaults, **stage.data}.items():
        setattr(run.datamodule, key, value)
    trainer = run.base.stage_trainer(stage, sdir, run.shared)
    if trainer in run.trainers or trainer is run.base:
        raise RuntimeError(f"stage {stage.name!r}: stage_trainer returned a Trainer used before; every stage "
                           "needs a new Trainer (F33)")
    run.trainers.add(trainer)
    return trainer, ckpt if task.mode == "continue" else None


def train_stage(run: CurriculumRun, task: StageTask) -> None:
    """Prepare and ``fit`` one stage; on any error its record says ``failed`` (or ``interrupted``), with the
    error's first line and time, and the error propagates."""
    stage, results = task.stage, run.results
    sdir = stage_dir(run.run_dir, task.index, stage)
    base = {"dir": _rel(sdir, run.run_dir), "started": _now(), **({"out_of_order": True} if task.out_of_order else {})}
    start = time.perf_counter()
    trainer = None
    try:
        trainer, ckpt = prepare_stage(run, task)
        rank_zero_info(f"curriculum: stage {task.index + 1}/{len(run.stages)} {stage.name!r} -> {sdir}")
        results.set_stage(stage.name, {"status": RUNNING, **base})
        results.save()
        trainer.fit(run.model, datamodule=run.datamodule, ckpt_path=str(ckpt) if ckpt else None)
        if trainer.interrupted:
            raise KeyboardInterrupt(f"stage {stage.name!r} interrupted; resume with --resume {run.run_dir}")
        record_stage(run, task, trainer, base, time.perf_counter() - start)
    except BaseException as err:
        results.set_stage(stage.name, {"status": INTERRUPTED if _is_interrupt(err) else FAILED, **base,
                                       "error": _error(err, run), "failed_at": _now(),
                                       "steps": getattr(trainer, "global_step", 0),
                                       "wall_s": round(time.perf_counter() - start, 3)})
        results.save()
        raise


def record_stage(run: CurriculumRun, task: StageTask, trainer: LitTrainer, base: dict[str, Any],
                 wall: float) -> None:
    """Final weights and the stage's metrics into results.json."""
    stage, results, sdir = task.stage, run.results, stage_dir(run.run_dir, task.index, task.stage)
    # a stage that ran 0 steps never gets here: TrainingHealth's `zero_steps` guard fails it on every rank
    save_weights(run.model, sdir / "final.ckpt")
    metrics = to_float_dict(trainer.callback_metrics)
    results.set_stage(stage.name, {
        "status": DONE, **base, "metrics": metrics, "epochs": trainer.current_epoch, "steps": trainer.global_step,
        "wall_s": round(wall, 3), "finished": _now(), "checkpoint": _rel(sdir / "final.ckpt", run.run_dir),
    })
    results.merge("final", metrics)
    _merge_extra(results, run.model, run.datamodule)
    results.save()
    run.ran.append(stage.name)


# ---------------------------------------------------------------------------------------- test / finish
def final_test(run: CurriculumRun) -> None:
    """Test once every stage is done in order (again only when this invocation trained something)."""
    names = [s.name for s in run.stages]
    if not _all_done(run):
        say(f"curriculum: not every stage is done in order ({names}); test skipped")
        return
    if run.datamodule is None or not _has_test(run.datamodule) or ("test" in run.results.data and not run.ran):
        return
    if run.pending is not None:
        load_weights(run.model, run.pending, run.datamodule)
        run.pending = None
    moved = supersede(run.run_dir / "test", run.run_dir)
    if moved is not None and "test" in run.results.data:
        run.results.data.setdefault("superseded", []).append(
            {"test": run.results.data.pop("test"), "dir": _rel(moved, run.run_dir)})
    run.model._in_curriculum = False  # test metrics are the run's, not a stage's
    tester = run.base.stage_trainer(run.stages[-1], run.run_dir / "test", run.shared, checkpoint=False)
    out = tester.test(run.model, datamodule=run.datamodule, verbose=False)
    run.results.merge("test", to_float_dict(out[0] if out else {}))
    _merge_extra(run.results, run.model, run.datamodule)
    run.results.save()


def finish(run: CurriculumRun) -> dict[str, Any]:
    """Status, headline, the test table on stdout; the process is left seeded as the run began."""
    results = run.results
    results.data["status"] = DONE if _all_done(run) else "partial"
    results.set_headline(list(getattr(run.model, "headline_metrics", [])))
    results.save()
    L.seed_everything(run.base.seed, workers=True, verbose=False)
    _close_shared(run, "success")
    table = format_test_table(results.data, results.path)
    if table:
        say(table)
    return results.data


def _all_done(run: CurriculumRun) -> bool:
    return all(run.results.stage(s.name).get("status") == DONE and not run.results.stage(s.name).get("out_of_order")
               for s in run.stages)


def _announce_length_override(run: CurriculumRun) -> None:
    note = run.base.length_note(run.stages)
    if note:
        say(f"curriculum: {note}")
        run.results.data["length_override"] = dict(run.base.length_override)


def _close_shared(run: CurriculumRun, status: str) -> None:
    for logger in run.shared:  # the curriculum's wandb run ends with the curriculum
        logger.finalize(status)
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.finish()
    run.shared = []


def _is_interrupt(err: BaseException) -> bool:
    return isinstance(err, (KeyboardInterrupt, SystemExit))  # Lightning turns Ctrl-C into sys.exit(1)


def _error(err: BaseException, run: CurriculumRun) -> str:
    return f"interrupted; continue with --resume {run.run_dir}" if _is_interrupt(err) else error_line(err)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def _config_files(base: Any) -> list[str]:
    return [str(f) for f in (getattr(base, "config_files", None) or [])]


def _has_test(datamodule: Any) -> bool:
    from lightning.pytorch.utilities.model_helpers import is_overridden

    return is_overridden("test_dataloader", datamodule, L.LightningDataModule)


def _merge_extra(results: RunResults, model: Any, datamodule: Any = None) -> None:
    for section, values in getattr(model, "extra_results", {}).items():
        results.merge(section, values)
    split_info = getattr(datamodule, "split_info", None)
    if split_info:  # core.splits.check_disjoint's record (F47)
        results.merge("splits", split_info)
    skipped = skipped_samples(datamodule) if datamodule is not None else None
    if skipped is not None:  # on_bad_sample: skip is counted, never silent
        results.merge("data", skipped)
