"""Curriculum runner: stages as sequential ``Trainer.fit`` calls, each with a new Trainer, callbacks and optimizer.

Per stage: ``set_stage`` -> (new Trainer: LazyBuild -> StageFreeze -> optimizer from trainable params) -> fit ->
``final.ckpt`` (weights only) -> metrics into results.json. Weights are handed forward, optimizer state is not
(F08, F33). Every rank runs the same control flow; only rank zero writes files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from .lazy import lazy_build
from .results import RunResults, to_float_dict
from .specs import StageSpec

if TYPE_CHECKING:
    from .trainer import LitTrainer


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
    for key, value in stage.data.items():
        if datamodule is None or not hasattr(datamodule, key):
            raise ValueError(f"stage {stage.name!r}: data override {key!r} is not an attribute of "
                             f"{type(datamodule).__name__}")
        setattr(datamodule, key, value)


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
        torch.save({"state_dict": model.state_dict()}, tmp)
        tmp.replace(path)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def run_curriculum(base: LitTrainer, model: L.LightningModule, datamodule: Any, stages: list[StageSpec],
                   only: str | None = None, resume: str | None = None, test_after: bool = True,
                   config_files: list[str] | None = None) -> dict[str, Any]:
    if not stages:
        raise ValueError("the curriculum has no stages: add a `stages:` list to the YAML")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique, got {names}")
    if not hasattr(model, "set_stage"):
        raise TypeError(f"{type(model).__name__} is not a StudyModule: curricula need set_stage()")
    run_dir = Path(resume) if resume else base.run_dir
    if resume:
        if not (run_dir / "results.json").exists():
            raise FileNotFoundError(f"--resume {run_dir}: no results.json there; expected a run directory "
                                    "written by `lit-exp curriculum`")
        base.run_dir = run_dir
    results = RunResults(run_dir)
    planned = results.data.get("plan")
    if resume and planned and planned != names:
        raise ValueError(f"--resume {run_dir}: the run's stages {planned} differ from this config's {names}")
    results.init_run(run_dir.name, type(model).__name__, config_files, plan=names)
    results.save()
    selected = parse_only(only, stages)
    seed = base.seed
    shared = base.make_loggers(run_dir)[1:]  # wandb (one run for the whole curriculum), if asked
    pending_weights: Path | None = None  # weights on disk newer than the ones in memory
    for index, stage in enumerate(stages):
        sdir = stage_dir(run_dir, index, stage)
        record = results.stage(stage.name)
        if record.get("status") == "done":
            pending_weights = sdir / "final.ckpt"
            continue
        if stage.name not in selected:
            rank_zero_info(f"curriculum: stage {stage.name!r} skipped (not in --only)")
            continue
        if pending_weights is not None:
            if not pending_weights.exists():
                raise FileNotFoundError(f"{pending_weights}: final weights of a finished stage are missing")
            load_weights(model, pending_weights, datamodule)
            pending_weights = None
        L.seed_everything(seed + index, workers=True, verbose=False)
        model.set_stage(stage, in_curriculum=True)
        apply_data_overrides(datamodule, stage)
        ckpt = sdir / "checkpoints" / "last.ckpt"
        trainer = base.stage_trainer(stage, sdir, shared)
        rank_zero_info(f"curriculum: stage {index + 1}/{len(stages)} {stage.name!r} -> {sdir}")
        results.set_stage(stage.name, {"status": "running", "dir": str(sdir.relative_to(run_dir))})
        results.save()
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(ckpt) if resume and ckpt.exists() else None)
        if trainer.interrupted:
            raise KeyboardInterrupt(f"stage {stage.name!r} interrupted; resume with --resume {run_dir}")
        wall = time.perf_counter() - start
        save_weights(model, sdir / "final.ckpt")
        results.set_stage(stage.name, {
            "status": "done", "metrics": to_float_dict(trainer.callback_metrics),
            "epochs": trainer.current_epoch, "steps": trainer.global_step, "wall_s": round(wall, 3),
            "dir": str(sdir.relative_to(run_dir)), "checkpoint": str((sdir / "final.ckpt").relative_to(run_dir)),
        })
        results.merge("final", to_float_dict(trainer.callback_metrics))
        _merge_extra(results, model)
        results.save()
    done = all(results.stage(n).get("status") == "done" for n in names)
    if test_after and done and datamodule is not None and _has_test(datamodule):
        if pending_weights is not None:
            load_weights(model, pending_weights, datamodule)
        model._in_curriculum = False  # test metrics are the run's, not a stage's
        tester = base.stage_trainer(stages[-1], run_dir / "test", shared, checkpoint=False)
        out = tester.test(model, datamodule=datamodule, verbose=False)
        results.merge("test", to_float_dict(out[0] if out else {}))
        _merge_extra(results, model)
        results.save()
    elif test_after and not done:
        rank_zero_warn(f"curriculum: not every stage is done ({names}); test skipped")
    results.set_headline(list(getattr(model, "headline_metrics", [])))
    results.save()
    L.seed_everything(seed, workers=True, verbose=False)  # leave the process seeded as the run began
    for logger in shared:  # the curriculum's wandb run ends with the curriculum
        logger.finalize("success")
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.finish()
    rank_zero_info(f"results: {results.path}")
    return results.data


def _has_test(datamodule: Any) -> bool:
    from lightning.pytorch.utilities.model_helpers import is_overridden

    return is_overridden("test_dataloader", datamodule, L.LightningDataModule)


def _merge_extra(results: RunResults, model: Any) -> None:
    for section, values in getattr(model, "extra_results", {}).items():
        results.merge(section, values)
