"""`lit-exp preflight`: build a run as `curriculum` would, run a few real steps per stage, project its cost.

    lit-exp preflight -c configs/slots/demo.yaml [-c more.yaml] [--steps 2] [--device cpu|cuda]
                      [--gpu rtx5080] [--utilisation 0.4] [--memory-cap-gb X] [--precision bf16-mixed]
                      [--out DIR] [--trainer.X value ...]

The config is composed by the one rule (``core.configs``), the LightningCLI builds the model, the datamodule and
the Trainer from it (options after the preflight's own, ``--model.init_args.hidden 64``, go to that parser as they
would to ``lit-exp curriculum``), ``LazyBuild``'s dry run builds the lazy parts, then every stage runs as the
curriculum runs it (``set_stage``, the stage's ``data:`` overrides, a new Trainer: LazyBuild -> StageFreeze ->
the stage's optimizer from ``configure_optimizers``) for ``--steps`` real training batches and one evaluation batch
on the chosen device. Measured per stage (docs/gpu.md says how to read them):

* parameters trainable / frozen (the model's, plus any ``nn.Module`` the datamodule holds, e.g. ``frozen:``);
* where weights come from: each weight file a config key (``pretrained``, ``weights``, ``checkpoint``, ...) or a
  part (``weights = "file:PATH"``, ``weight_files``) names, with its sha256; else "random init";
* the batch's shapes, data-loading time per batch (the main process's wait for the next batch) against the step
  time (forward, loss, backward, optimizer step; the first step is the warm-up and is timed only when it is the
  only one), input-bound when waiting takes longer than the step;
* peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the peak of live tensor bytes during the
  first step (parameters, buffers, batch, then every tensor the step allocates: activations, gradients, optimizer
  state; counted by a dispatch mode) - the same quantity as the CUDA number - and the process's peak RSS beside it;
* FLOPs per training step (``torch.utils.flop_counter.FlopCounterMode``: matmuls, convolutions, attention; forward
  and backward), the projected time of an epoch and of the stage (batches from ``len(train_dataloader)`` and the
  stage's ``max_epochs`` / ``max_steps``, plus the validation passes);
* with ``--gpu NAME`` (:data:`CARDS`): the step time on that card at ``--utilisation`` of its peak dense bf16
  tensor throughput, and whether the stage's peak memory fits in the card's memory.

A stage that runs out of memory (``torch.OutOfMemoryError``, a CPU allocation failure, or a peak above
``--memory-cap-gb``) is reported with the largest batch that fits (the datamodule's ``batch_size`` halved until one
step fits) instead of a traceback. Caches are not filled: a feature cache or a stand-in that is not on disk yet is
built into a temporary folder (its build time is reported) and one that is there is only read. Writes
``preflight.json`` into ``--out`` (default ``runs/preflight/<config stem>``) and exits 1 when a stage will not run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, LitExpError
from .preflight_probe import (
    batch_size_of,
    caches_read_only,
    describe_batch,
    is_out_of_memory,
    peak_rss_bytes,
    probe_class,
    quiet,
    tensor_bytes,
)
from .preflight_report import (
    CARDS,
    CUDA_OVERHEAD_GB,
    CUDA_SLACK,
    DEFAULT_UTILISATION,
    LAUNCH_S,
    config_weights,
    format_report,
    module_weights,
)

__all__ = ["CARDS", "batch_size_of", "config_weights", "describe_batch", "format_report", "main", "run_preflight",
           "tensor_bytes"]

#: keys of a curriculum config that are not the parser's (the curriculum's own) and how preflight uses them
CURRICULUM_KEYS = ("stages", "only", "resume", "test_after", "resume_changed", "on_existing")


class PreflightError(LitExpError):
    """The run cannot be built for a preflight (printed as one block)."""


# ----------------------------------------------------------------------------------------------- building
@dataclass
class Built:
    """The run as ``lit-exp curriculum`` would build it."""

    cli: Any
    model: Any
    datamodule: Any
    base: Any
    stages: list[Any]
    curriculum: bool
    files: list[Path]
    raw: dict[str, Any]
    weights: list[dict[str, Any]] = field(default_factory=list)


def build_run(configs: list[str], overrides: list[str], tmp: Path, device: str | None,
              precision: str | None, weights: bool = True) -> Built:
    """Compose ``configs``, check the weights they name (``weights``: hash them), and build model, datamodule and
    Trainer (``run=False``)."""
    import yaml

    from ..core.configs import composition_of, load_composed
    from ..core.errors import check_yaml_file
    from ..core.specs import StageSpec

    for path in configs:
        check_yaml_file(path)
    files = composition_of(configs)
    for path in files:
        check_yaml_file(path)
    raw = load_composed(*configs)
    if "model" not in raw:
        raise ConfigError(f"{' + '.join(map(str, files))}: no `model:` in the composed config (a fragment such as "
                          "configs/trainer/gpu.yaml is given after a study config: -c STUDY.yaml -c FRAGMENT.yaml)")
    found = config_weights(raw, files, overrides) if weights else []
    stage_dicts = raw.get("stages")
    rest = {k: v for k, v in raw.items() if k not in CURRICULUM_KEYS}
    trainer = dict(rest.get("trainer") or {})
    trainer.update(run_dir=str(tmp / "run"), wandb=None, logger=False, enable_progress_bar=False,
                   enable_model_summary=False)
    if device is not None:  # one process on one device: a DDP config is preflighted on one of its devices
        trainer.update(accelerator="gpu" if device == "cuda" else "cpu", devices=1, strategy="auto", num_nodes=1)
    if precision is not None:
        trainer["precision"] = precision
    rest["trainer"] = trainer
    composed = tmp / "composed.yaml"
    composed.write_text(yaml.safe_dump(rest, sort_keys=False))
    names = " + ".join(str(f) for f in files)
    from ..core.litcli import build_cli

    try:
        cli = build_cli(["-c", str(composed), *overrides], run=False)
    except LitExpError as err:
        raise type(err)(f"{names}: {err}") from err
    except Exception as err:  # noqa: BLE001 - a part that cannot be built is one block naming the config
        from ..core.errors import clean_parser_message

        # jsonargparse wraps a constructor's error in Union / Subtypes lines: the constructor's own message says it
        lines = [ln for ln in clean_parser_message(str(err)) if ln != "Errors:" and not ln.startswith(
            ("Does not validate", "Subtypes:", "Given value:"))] or [f"{type(err).__name__}: {err}"]
        raise PreflightError("\n".join([f"{names}: building the model / datamodule failed:", *lines])) from err
    stages: list[Any] = []
    if stage_dicts:
        for i, item in enumerate(stage_dicts):
            try:
                stages.append(StageSpec(**item))
            except (TypeError, ValueError) as err:
                name = item.get("name", i) if isinstance(item, dict) else i
                raise ConfigError(f"{names}: stages[{i}] ({name}): {err}") from err
    return Built(cli, cli.model, cli.datamodule, cli.trainer, stages, bool(stage_dicts), files, raw, found)


def datamodule_modules(datamodule: Any) -> list[Any]:
    """``nn.Module`` attributes of the datamodule (a ``frozen:`` part, a feature backbone), and the networks such a
    part holds outside its children (``held_modules()``: one it builds on first use, once built)."""
    import torch

    found, seen = [], set()
    for value in vars(datamodule).values() if datamodule is not None else []:
        if isinstance(value, torch.nn.Module) and id(value) not in seen:
            seen.add(id(value))
            found.append(value)
            held = value.held_modules() if callable(getattr(value, "held_modules", None)) else []
            for sub in held:
                if isinstance(sub, torch.nn.Module) and id(sub) not in seen:
                    seen.add(id(sub))
                    found.append(sub)
    return found


def _stage_trainer(base: Any, probe: Any, root: Path, steps: int) -> Any:
    """A new Trainer for one stage, as ``LitTrainer.stage_trainer`` builds it, cut to ``steps`` batches and one
    evaluation batch, without checkpoints or logs."""
    from ..core.trainer import LitTrainer

    kwargs = dict(base._base_kwargs)
    for key in ("val_check_interval", "check_val_every_n_epoch", "limit_train_batches", "limit_val_batches",
                "num_sanity_val_steps", "enable_checkpointing", "enable_progress_bar", "enable_model_summary",
                "max_time", "limit_test_batches"):
        kwargs.pop(key, None)
    switches = {k: getattr(base, k) for k in ("compile", "channels_last", "loader", "frozen_dtype") if hasattr(base, k)}
    kwargs.update({k: v for k, v in switches.items() if k not in kwargs})
    # TrainingHealth inspects the first step only: its checks run, and the timed steps after it are plain ones
    return LitTrainer(run_dir=str(root), wandb=None, health=base.health_policy, health_steps=min(1, base.health_steps),
                      callbacks=copy.deepcopy(base._pristine_callbacks) + [probe], logger=False,
                      default_root_dir=str(root), max_epochs=1, max_steps=-1, limit_train_batches=steps,
                      limit_val_batches=1, val_check_interval=1.0, check_val_every_n_epoch=1, num_sanity_val_steps=0,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


def _cleanup(model: Any) -> None:
    import torch

    model.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _where(err: BaseException, frames: int = 4) -> list[str]:
    """The innermost ``frames`` frames of an unexpected error as ``path:line in function`` (a stage that fails for a
    reason preflight cannot explain is located, not only named)."""
    import traceback

    return [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(err.__traceback__)[-frames:]]


def run_steps(built: Built, root: Path, steps: int, cuda: bool, cap_bytes: int | None) -> tuple[Any, str | None]:
    """One shortened ``fit`` of the current stage; ``(probe, None)`` or ``(probe, "oom: ...")``."""
    probe = probe_class()(cuda, cap_bytes, datamodule_modules(built.datamodule))
    trainer = _stage_trainer(built.base, probe, root, steps)
    # the probe's hooks run first: its step window closes before TrainingHealth inspects the first steps (a one-off
    # cost of the first `health_steps` batches, left out of the step time, the FLOPs and the memory)
    trainer.callbacks.remove(probe)
    trainer.callbacks.insert(0, probe)
    oom = None
    try:
        trainer.fit(built.model, datamodule=built.datamodule)
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt) or not is_out_of_memory(err):
            raise
        oom = f"out of memory: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if oom is not None:  # outside the except block: the traceback's frames (and their tensors) are gone
        del trainer
        _cleanup(built.model)
    return probe, oom


def largest_batch(built: Built, root: Path, cuda: bool, cap_bytes: int | None, start: int) -> tuple[int | None, list]:
    """Halve the datamodule's ``batch_size`` from ``start`` until one step fits (a batch that fails otherwise ends the
    search); ``(batch or None, [(batch, peak or None, error or None)])``."""
    tried: list[tuple[int, int | None, str | None]] = []
    batch = start // 2
    while batch >= 1:
        built.datamodule.batch_size = batch
        try:
            probe, oom = run_steps(built, root / f"batch{batch}", 1, cuda, cap_bytes)
        except Exception as err:  # noqa: BLE001 - e.g. BatchNorm refuses a batch of 1: the search ends here
            tried.append((batch, None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"))
            break
        tried.append((batch, None if oom else probe.peak_bytes, oom))
        if oom is None:
            return batch, tried
        batch //= 2
    return None, tried


def _loader_len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def project(row: dict[str, Any], built: Built, stage: Any, card: dict[str, Any] | None, utilisation: float) -> None:
    """Epoch / stage time from the measured batch time and the data length; the card's step time and fit."""
    dm = built.datamodule
    steps_per_epoch = _loader_len(dm.train_dataloader()) if dm is not None else None
    val_batches = None
    if dm is not None:
        with contextlib.suppress(Exception):
            val = dm.val_dataloader()
            val_batches = sum(_loader_len(v) or 0 for v in val) if isinstance(val, (list, tuple)) else _loader_len(val)
    length = built.base.stage_length(stage)
    kwargs = built.base._base_kwargs
    accumulate = int(kwargs.get("accumulate_grad_batches") or 1)
    max_steps, max_epochs = length.get("max_steps") or -1, length.get("max_epochs")
    if max_steps is not None and max_steps > 0:
        batches = max_steps * accumulate
        if steps_per_epoch and max_epochs:
            batches = min(batches, max_epochs * steps_per_epoch)
    elif steps_per_epoch and max_epochs:
        batches = max_epochs * steps_per_epoch
    else:
        batches = None
    per_batch = (row["step_s"] or 0.0) + (row["data_s"] or 0.0)
    row.update(steps_per_epoch=steps_per_epoch, stage_batches=batches, val_batches=val_batches,
               epochs=(batches / steps_per_epoch) if batches and steps_per_epoch else None,
               epoch_s=steps_per_epoch * per_batch if steps_per_epoch else None)
    val_pass = None
    if val_batches and row.get("eval_batch_s") is not None:
        overhead = max(0.0, (row.get("eval_total_s") or 0.0) - row["eval_batch_s"])
        val_pass = val_batches * row["eval_batch_s"] + overhead
    interval = kwargs.get("val_check_interval")
    every = kwargs.get("check_val_every_n_epoch", 1)
    runs = 0
    if val_pass is not None and batches:
        if isinstance(interval, int) and not isinstance(interval, bool):
            runs = batches // interval
        elif every:
            runs = math.ceil((batches / steps_per_epoch) / every) if steps_per_epoch else 0
    # once per stage: the Trainer's set-up (LazyBuild, StageFreeze, the optimizer, the loaders) and the first step's
    # warm-up beyond a plain step, as measured in the preflight's own run of the stage
    timed = sum(row.get("step_times") or []) + sum(row.get("data_times") or []) + (row.get("eval_total_s") or 0.0)
    warm_up = max(0.0, (row.get("first_step_s") or 0.0) - (row["step_s"] or 0.0))
    row["stage_setup_s"] = max(0.0, (row.get("wall_s") or 0.0) - timed) + warm_up
    row.update(val_pass_s=val_pass, val_runs=runs,
               stage_s=(batches * per_batch + runs * (val_pass or 0.0) + row["stage_setup_s"]) if batches else None)
    if card is None or card.get("bf16_tflops") is None:
        return
    flops = row.get("flops_per_step")
    step = flops / (card["bf16_tflops"] * 1e12 * utilisation) if flops else None
    if step is not None and row.get("ops_per_step"):
        step = max(step, row["ops_per_step"] * LAUNCH_S)
    peak = row.get("peak_bytes")
    need = peak * CUDA_SLACK + CUDA_OVERHEAD_GB * 2**30 if peak is not None else None
    row["card"] = {
        "step_s": step, "fits": None if need is None else need <= card["memory_gb"] * 2**30, "need_bytes": need,
        "input_bound": bool(step is not None and (row["data_s"] or 0.0) > step),
        "stage_s": batches * max(step, row["data_s"] or 0.0) if step is not None and batches else None,
    }


def prepare_stages(built: Built) -> dict[str, Any]:
    """The stages' ``data:`` defaults, the plan validated as the curriculum validates it (a plain ``fit`` config is
    one stage), and the lazy build on the datamodule's example batch."""
    from ..core.curriculum import data_defaults, validate_plan
    from ..core.lazy import lazy_build

    model, dm = built.model, built.datamodule
    defaults: dict[str, Any] = {}
    if built.curriculum:
        try:
            validate_plan(model, built.stages, None)
            defaults = data_defaults(dm, built.stages)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{' + '.join(map(str, built.files))}: {err}") from err
    else:
        built.stages = [model.stage]
    if dm is not None and hasattr(dm, "example_batch"):
        lazy_build(model, dm.example_batch())
    return defaults


def enter_stage(built: Built, index: int, stage: Any, defaults: dict[str, Any]) -> None:
    """Seed and enter stage ``index`` as the curriculum does (the run's seed + index; its ``data:`` overrides)."""
    import lightning as L

    from ..core.seeding import mark_run_seed

    seed = built.base.seed
    L.seed_everything(seed + index, workers=True, verbose=False)
    mark_run_seed(seed, seed + index)
    if built.curriculum:
        built.model.set_stage(stage, in_curriculum=True)
        for key, value in {**defaults, **stage.data}.items():
            setattr(built.datamodule, key, value)


def measure_stage(built: Built, index: int, stage: Any, defaults: dict[str, Any], root: Path, steps: int, cuda: bool,
                  cap_bytes: int | None, card: dict[str, Any] | None, utilisation: float) -> dict[str, Any]:
    """Enter the stage as the curriculum does, run its steps, and measure (one row of the table)."""
    enter_stage(built, index, stage, defaults)
    row: dict[str, Any] = {"stage": stage.name, "ok": True, "error": None, "trainable": stage.trainable}
    configured = getattr(built.datamodule, "batch_size", None)
    start = time.perf_counter()
    try:
        probe, oom = run_steps(built, root / f"{index:02d}_{stage.name}", steps, cuda, cap_bytes)
    except Exception as err:  # noqa: BLE001 - a stage that fails is reported, the next stages still run
        from ..core.errors import explain

        report = explain(err)
        row.update(ok=False, error=report.lines[0] if report else f"{type(err).__name__}: {err}")
        if report is None:
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            row["where"] = _where(err)
        return row
    row.update(
        wall_s=time.perf_counter() - start, trainable_params=probe.trainable, frozen_params=probe.frozen,
        optimizer=probe.optimizer, batch=probe.batch, batch_size=probe.batch_size or configured,
        configured_batch_size=configured, data_s=_typical(probe.data_s), step_s=_typical(probe.step_s),
        first_step_s=probe.step_s[0] if probe.step_s else None, eval_batch_s=probe.eval_batch_s,
        eval_total_s=probe.eval_total_s, flops_per_step=probe.flops, flops_error=probe.flops_error,
        peak_bytes=probe.peak_bytes, peak_kind="cuda max_memory_allocated" if cuda else "cpu live tensors",
        rss_bytes=peak_rss_bytes(), steps_run=len(probe.step_s), step_times=probe.step_s, data_times=probe.data_s,
        ops_per_step=probe.ops)
    if row["data_s"] is not None and row["step_s"] is not None:
        row["input_bound"] = row["data_s"] > row["step_s"]
    if oom is not None:
        row.update(ok=False, error=oom)
        if isinstance(configured, int) and configured > 1:
            fit, tried = largest_batch(built, root / f"{index:02d}_{stage.name}_search", cuda, cap_bytes, configured)
            built.datamodule.batch_size = configured
            row["largest_batch"] = fit
            row["search"] = [{"batch_size": b, "peak_bytes": p, "error": e} for b, p, e in tried]
            row["error"] = (f"out of memory at batch {configured}; largest batch that fits: {fit}" if fit else
                            f"out of memory at batch {configured}; not even batch 1 fits")
        else:
            row["largest_batch"] = None
        return row
    project(row, built, stage, card, utilisation)
    return row


def _typical(values: list[float]) -> float | None:
    """The (lower) median of the steps after the first (the warm-up), or the first when it is the only one."""
    rest = sorted(values[1:]) or values[:1]
    return rest[(len(rest) - 1) // 2] if rest else None


def run_preflight(configs: list[str], overrides: list[str] | None = None, steps: int = 2, device: str | None = None,
                  gpu: str | None = None, utilisation: float = DEFAULT_UTILISATION, memory_cap_gb: float | None = None,
                  precision: str | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """Build the run of ``configs``, measure every stage, write ``preflight.json``; returns its content."""
    import torch

    if steps < 1:
        raise ConfigError(f"--steps {steps}: expected >= 1")
    if gpu is not None and gpu not in CARDS:
        raise ConfigError(f"--gpu {gpu!r}: expected one of {', '.join(CARDS)}")
    if not 0 < utilisation <= 1:
        raise ConfigError(f"--utilisation {utilisation}: expected a fraction in (0, 1]")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible here (torch.cuda.is_available() is False)")
    cuda = device == "cuda" or (device is None and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    cap_bytes = int(memory_cap_gb * 2**30) if memory_cap_gb is not None else None
    card = dict(CARDS[gpu], name=gpu) if gpu else None
    out_dir = Path(out) if out else Path("runs") / "preflight" / Path(configs[-1]).stem
    tmp = Path(tempfile.mkdtemp(prefix="lit-exp-preflight-"))
    started = time.perf_counter()
    try:
        with quiet(), caches_read_only(tmp / "caches") as built_caches:
            built = build_run(configs, list(overrides or []), tmp, device, precision)
            report = _measure(built, tmp, steps, cuda, cap_bytes, card, utilisation)
            report["caches_built_in_temp"] = built_caches
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.update(configs=[str(c) for c in configs], files=[str(f) for f in built.files], overrides=overrides or [],
                  device=device, device_name=torch.cuda.get_device_name() if cuda else _cpu_name(),
                  threads=torch.get_num_threads(), steps=steps, memory_cap_bytes=cap_bytes,
                  precision=str(built.base._base_kwargs.get("precision") or built.base.precision),
                  card=card, utilisation=utilisation if card else None, wall_s=time.perf_counter() - started)
    report["ok"] = all(row["ok"] for row in report["stages"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "preflight.json").write_text(json.dumps(report, indent=2, default=str))
    report["json"] = str(out_dir / "preflight.json")
    return report


# ------------------------------------------------------------------------------- dry composition (cv --select)
def dry_val_metrics(configs: list[str], overrides: list[str] | None = None) -> list[str]:
    """The metric names a run of ``configs`` (+ ``overrides``) logs when it validates, found without training it:
    ``lit-exp cv`` checks ``--select`` against them before any fold trains.

    The run is built as ``curriculum`` builds it (``build_run``, no weight hashing), each stage is entered as the
    curriculum enters it (``set_stage``, its ``data:`` overrides) and validates one batch with a stage Trainer
    (no training step, no optimizer, no checkpoint; the Trainer's folder is a temporary one, removed). Caches are
    used where the run will use them (one not on disk yet is built there, as the first run would build it). The
    process's seeds and RNG states are restored afterwards. Returns the ``callback_metrics`` names of every stage
    in order (a curriculum's ``<stage>/val/...``); curriculum-only keys among ``overrides`` (``--test_after``) are
    left out."""
    import os
    import random

    import lightning as L
    import numpy as np
    import torch

    from ..core.seeding import RUN_SEED_ENV

    rest, items, i = [], list(overrides or []), 0
    while i < len(items):  # ``--key value`` / ``--key=value`` pairs; a curriculum key is not the parser's
        key, pair = items[i][2:].partition("=")[0], (items[i:i + 1] if "=" in items[i] else items[i:i + 2])
        if key.split(".")[0] not in CURRICULUM_KEYS:
            rest += pair
        i += len(pair)
    from ..core.configs import load_composed

    accelerator = str(((load_composed(*configs).get("trainer") or {}).get("accelerator")) or "auto")
    device = "cuda" if accelerator != "cpu" and torch.cuda.is_available() else "cpu"
    env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", RUN_SEED_ENV)}
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    tmp = Path(tempfile.mkdtemp(prefix="lit-exp-dry-"))
    names: list[str] = []
    try:
        with quiet():
            built = build_run(list(configs), rest, tmp, device, None, weights=False)
            model, dm = built.model, built.datamodule
            defaults = prepare_stages(built)
            for index, stage in enumerate(built.stages):
                enter_stage(built, index, stage, defaults)
                trainer = _stage_trainer(built.base, L.Callback(), tmp / "stages" / f"{index:02d}_{stage.name}", 1)
                trainer.validate(model, datamodule=dm, verbose=False)
                names += [str(k) for k in trainer.callback_metrics if str(k) not in names]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return names


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "cpu"


def _measure(built: Built, tmp: Path, steps: int, cuda: bool, cap_bytes: int | None, card: dict[str, Any] | None,
             utilisation: float) -> dict[str, Any]:
    from ..core.lazy import uninitialized_names

    model, dm = built.model, built.datamodule
    start = time.perf_counter()
    defaults = prepare_stages(built)
    setup_s = time.perf_counter() - start
    extra = datamodule_modules(dm)
    weights = built.weights + module_weights(model, *extra)
    params = {id(p): p for m in [model, *extra] for p in m.parameters()}
    parts = [{"part": name, "params": sum(p.numel() for p in child.parameters())}
             for name, child in model.named_children() if any(True for _ in child.parameters())]
    parts += [{"part": f"datamodule.{type(m).__name__}", "params": sum(p.numel() for p in m.parameters())}
              for m in extra]
    rows = [measure_stage(built, i, stage, defaults, tmp / "stages", steps, cuda, cap_bytes, card, utilisation)
            for i, stage in enumerate(built.stages)]
    return {"model": type(model).__name__, "datamodule": type(dm).__name__ if dm is not None else None,
            "setup_s": setup_s, "lazy_left": uninitialized_names(model), "parameters": sum(p.numel() for p in
            params.values()), "parts": parts, "weights": weights or [{"key": "*", "source": "random init"}],
            "stages": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lit-exp preflight", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Options not listed here (--trainer.X, --model.init_args.X, --data.init_args.X) "
                                       "go to the config parser, as with `lit-exp curriculum`.")
    p.add_argument("-c", "--config", action="append", required=True, help="config YAML (repeatable, composed in order)")
    p.add_argument("--steps", type=int, default=2, help="training batches per stage (default 2; the first is the warm-up and not timed: give 5 or more "
                        "for a step time to project a long run from)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when visible, else cpu")
    p.add_argument("--gpu", choices=list(CARDS), default=None, help="project the step time and memory onto this card")
    p.add_argument("--utilisation", type=float, default=DEFAULT_UTILISATION,
                   help=f"fraction of the card's peak bf16 TFLOPS assumed reached (default {DEFAULT_UTILISATION})")
    p.add_argument("--memory-cap-gb", type=float, default=None,
                   help="treat a step whose peak memory is above this as out of memory (simulates a smaller device)")
    p.add_argument("--precision", default=None, help="trainer precision for the preflight, e.g. bf16-mixed")
    p.add_argument("--out", default=None, help="folder of preflight.json (default runs/preflight/<config stem>)")
    args, rest = p.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-") and not a.startswith("--") or a in ("--debug",)]
    if unknown:
        raise ConfigError(f"lit-exp preflight: unknown option(s) {unknown}")
    report = run_preflight(args.config, rest, steps=args.steps, device=args.device, gpu=args.gpu,
                           utilisation=args.utilisation, memory_cap_gb=args.memory_cap_gb, precision=args.precision,
                           out=args.out)
    print(format_report(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
