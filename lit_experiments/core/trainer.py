"""LitTrainer: a Trainer with a run directory, CSV/wandb loggers, the core callbacks and a `curriculum` command."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from .freezing import StageFreeze
from .health import TrainingHealth
from .lazy import LazyBuild
from .loggers import WandbSpec, csv_logger, make_wandb_logger
from .rundir import AppendingCSVLogger
from .specs import StageSpec

#: DataLoader switches ``trainer.loader`` may set on the datamodule (see core.study.StudyDataModule)
LOADER_KEYS = ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor")
FROZEN_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Speedups(Callback):
    """The performance switches of a run (issue 24), applied in ``setup`` after LazyBuild and StageFreeze, so
    "trainable" means trainable in the stage that starts. Added to a Trainer only when a switch is on.

    Args:
        compile: ``torch.compile`` every top-level part with a trainable parameter (``nn.Module.compile``, in place:
            parameter names and checkpoints stay as they are); a dict is ``torch.compile``'s keywords
            (``{mode: max-autotune}``). A part compiled in an earlier stage stays compiled.
        channels_last: the module's 4-D weights (convolutions) in channels-last memory format.
        loader: DataLoader switches set on the datamodule before its loaders are built (``LOADER_KEYS``).
        frozen_dtype: ``bf16`` / ``fp16``: the module's always-frozen parts (frozen backbones, which run under
            ``no_grad``) hold their weights in this compute dtype: half their memory and bandwidth. For a
            mixed-precision run (their outputs come in that dtype; the datamodule's ``frozen`` part, which fills
            caches, is left as it is).
    """

    def __init__(self, compile: bool | dict[str, Any] = False, channels_last: bool = False,
                 loader: dict[str, Any] | None = None, frozen_dtype: str | None = None) -> None:
        from .errors import ConfigError

        unknown = sorted(set(loader or {}) - set(LOADER_KEYS))
        if unknown:
            raise ConfigError(f"trainer.loader: unknown key(s) {unknown}; expected some of {list(LOADER_KEYS)}")
        if frozen_dtype is not None and frozen_dtype not in FROZEN_DTYPES:
            raise ConfigError(f"trainer.frozen_dtype={frozen_dtype!r}; expected one of {list(FROZEN_DTYPES)} or null")
        self.compile, self.channels_last, self.loader = compile, channels_last, dict(loader or {})
        self.frozen_dtype = frozen_dtype

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        for key, value in self.loader.items():
            if dm is None or not hasattr(dm, key):
                from .errors import ConfigError

                raise ConfigError(f"trainer.loader.{key}: the datamodule {type(dm).__name__} has no {key!r}")
            setattr(dm, key, value)
        if stage != "fit":
            return
        if self.channels_last:
            pl_module.to(memory_format=torch.channels_last)
        if self.frozen_dtype is not None:
            pinned = [m for n, m in pl_module.named_modules() if n and getattr(m, "always_frozen", False)]
            for part in pinned:  # the outermost ones (an inner one moves with its parent)
                if not any(part is not q and any(part is s for s in q.modules()) for q in pinned):
                    part.to(FROZEN_DTYPES[self.frozen_dtype])
        if self.compile:
            options = self.compile if isinstance(self.compile, dict) else {}
            for _, part in pl_module.named_children():
                if getattr(part, "_compiled_call_impl", None) is None and any(p.requires_grad for p in part.parameters()):
                    part.compile(**options)


CORE_CALLBACKS = (LazyBuild, StageFreeze, TrainingHealth, Speedups)


def default_run_dir() -> Path:
    """``runs/<timestamp>``; shared with DDP ranks started by Lightning through ``$LIT_EXP_RUN_DIR``."""
    env = os.environ.get("LIT_EXP_RUN_DIR")
    if env:
        return Path(env)
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    name = f"run-{run_id}" if run_id and run_id != "none" else time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / name
    os.environ["LIT_EXP_RUN_DIR"] = str(path)
    return path


class LitTrainer(L.Trainer):
    """Lightning's Trainer plus what every run of the workbench needs.

    Args:
        run_dir: where checkpoints, CSV logs, figures, config.yaml and results.json go
            (default ``runs/<timestamp>``).
        wandb: log to wandb as well (see :class:`WandbSpec`); offline automatically without an API key.
        health: per-check policy of the TrainingHealth guard (``error`` / ``warn`` / ``off``).
        health_steps: how many first steps of each stage the guard inspects.
        compile: ``torch.compile`` the parts trainable in a stage (a dict: ``torch.compile``'s keywords); off by default.
        channels_last: convolution weights in channels-last memory format (faster convolutions with bf16 on a GPU).
        loader: DataLoader switches set on the datamodule: ``num_workers``, ``pin_memory`` (default: pin on a CUDA
            device), ``persistent_workers``, ``prefetch_factor``. cuDNN's autotuner is Lightning's ``benchmark``.
        frozen_dtype: ``bf16`` / ``fp16``: frozen backbones of the module hold their weights in this dtype (with
            ``precision: bf16-mixed``; default ``None``: as built).
        **kwargs: every ``lightning.Trainer`` argument.
    """

    def __init__(self, run_dir: str | None = None, wandb: WandbSpec | None = None,
                 health: dict[str, str] | None = None, health_steps: int = 3, compile: bool | dict[str, Any] = False,
                 channels_last: bool = False, loader: dict[str, Any] | None = None, frozen_dtype: str | None = None,
                 **kwargs: Any) -> None:
        self.run_dir = Path(run_dir) if run_dir else default_run_dir()
        # the run's seed (set by `seed_everything` before the Trainer is built); stage i uses seed + i
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        self.wandb_spec = wandb
        self.health_policy = dict(health or {})
        self.health_steps = health_steps
        self.compile, self.channels_last, self.loader, self.frozen_dtype = compile, channels_last, loader, frozen_dtype
        callbacks = kwargs.pop("callbacks", None) or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        from lightning.pytorch.cli import SaveConfigCallback

        user = [cb for cb in callbacks if not isinstance(cb, (SaveConfigCallback, *CORE_CALLBACKS))]
        # pristine copies: every curriculum stage gets new callback instances (F33)
        self._pristine_callbacks = copy.deepcopy(user)
        logger = kwargs.pop("logger", None)
        if logger is None or logger is True:
            logger = self.make_loggers(self.run_dir)
        kwargs.setdefault("default_root_dir", str(self.run_dir))
        # an explicit --trainer.max_epochs / max_steps replaces every curriculum stage's own length
        self.length_override = {k: kwargs[k] for k, unset in (("max_epochs", None), ("max_steps", -1))
                                if kwargs.get(k, unset) != unset}
        self.config_yaml: str | None = None  # the resolved CLI config, saved / compared by the curriculum
        self._base_kwargs = {k: v for k, v in kwargs.items() if k not in ("max_epochs", "max_steps", "default_root_dir")}
        core = [LazyBuild(), StageFreeze(), TrainingHealth(self.health_policy, health_steps)]
        if compile or channels_last or loader or frozen_dtype:
            core.append(Speedups(compile, channels_last, loader, frozen_dtype))
        super().__init__(callbacks=core + callbacks, logger=logger, **kwargs)

    def make_loggers(self, directory: Path, with_wandb: bool = True) -> list:
        loggers: list = [csv_logger(directory)]
        if with_wandb and self.wandb_spec is not None:
            wb = make_wandb_logger(self.wandb_spec, self.run_dir, self.run_dir.name)
            if wb is not None:
                loggers.append(wb)
        return loggers

    def set_run_config(self, config_yaml: str, config_files: list[str] | None = None) -> None:
        """Hand the resolved config (YAML text) to the run: the curriculum saves it once the run dir is
        settled, or compares it with the saved one on ``--resume``."""
        self.config_yaml = config_yaml
        self.config_files = list(config_files or [])

    def stage_length(self, stage: StageSpec) -> dict[str, Any]:
        """``max_epochs`` / ``max_steps`` of a stage: its own, or the explicit trainer ones for every stage."""
        if self.length_override:
            return {"max_epochs": self.length_override.get("max_epochs"),
                    "max_steps": self.length_override.get("max_steps", -1)}
        return {"max_epochs": stage.max_epochs, "max_steps": stage.max_steps}

    def length_note(self, stages: list[StageSpec]) -> str | None:
        """What an explicit trainer length does to a curriculum, said once; ``None`` when none was given."""
        if not self.length_override:
            return None
        given = ", ".join(f"--trainer.{k}={v}" for k, v in self.length_override.items())
        own = ", ".join(f"{s.name}: max_epochs={s.max_epochs}" if s.max_epochs is not None
                        else f"{s.name}: max_steps={s.max_steps}" for s in stages)
        return f"{given} applies to every stage (their own lengths: {own})"

    def stage_trainer(self, stage: StageSpec, stage_dir: Path, shared_loggers: list | None = None,
                      checkpoint: bool = True) -> LitTrainer:
        """A new Trainer for one stage: new callbacks, own log dir, the stage's length (F33, F34).

        The stage's ``metrics.csv`` is continued, never deleted (a mid-stage resume appends to it).
        """
        callbacks: list[Callback] = copy.deepcopy(self._pristine_callbacks)
        kwargs = dict(self._base_kwargs)
        if checkpoint:
            callbacks.append(ModelCheckpoint(dirpath=str(stage_dir / "checkpoints"), save_last="link", save_top_k=1))
            kwargs["enable_checkpointing"] = True
        loggers = [AppendingCSVLogger(stage_dir)] + list(shared_loggers or [])
        return LitTrainer(run_dir=str(self.run_dir), wandb=None, health=self.health_policy,
                          health_steps=self.health_steps, compile=self.compile, channels_last=self.channels_last,
                          loader=self.loader, frozen_dtype=self.frozen_dtype, callbacks=callbacks, logger=loggers,
                          default_root_dir=str(stage_dir), **self.stage_length(stage), **kwargs)

    def curriculum(self, model: L.LightningModule, datamodule: L.LightningDataModule | None = None,
                   stages: list[StageSpec] | None = None, only: str | None = None, resume: str | None = None,
                   test_after: bool = True, resume_changed: bool = False,
                   on_existing: Literal["suffix", "refuse"] | None = None) -> dict[str, Any]:
        """Run the stages in order, each a fresh ``Trainer.fit`` with a fresh optimizer.

        Args:
            stages: the curriculum (see :class:`StageSpec`).
            only: comma-separated stage names to run (e.g. ``adapter,samatha``); earlier finished stages'
                weights are loaded from their checkpoints. A stage run while an earlier one is not done is
                marked ``out_of_order``; a later ``--resume`` re-runs every stage from the first not done.
            resume: a run directory; continues at the first unfinished stage (mid-stage from its last.ckpt).
                The config must equal the run's saved config.yaml (unless ``resume_changed``).
            test_after: run ``test`` once the last stage is done, if the datamodule has a test set.
            resume_changed: accept a config that differs from the run's; the differences go to results.json
                and the new config to ``config.resume-N.yaml``.
            on_existing: a new run whose ``run_dir`` already holds a run: ``suffix`` (default: write to
                ``<run_dir>-2``...) or ``refuse``; default from ``$LIT_EXP_ON_EXISTING``.
        """
        from .curriculum import run_curriculum

        return run_curriculum(self, model, datamodule, stages or [], only=only, resume=resume, test_after=test_after,
                              resume_changed=resume_changed, on_existing=on_existing)
