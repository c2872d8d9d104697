"""What a stage of a curriculum is: plain dataclasses that LightningCLI / jsonargparse parse from YAML."""

from __future__ import annotations

import fnmatch
import importlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

SCHEDULERS = (None, "cosine", "step", "warmup_cosine", "constant")


@dataclass
class OptimSpec:
    """Optimizer (and optional scheduler) of one stage, built fresh for every ``fit`` (F08, F32).

    Args:
        name: a ``torch.optim`` class name (``AdamW``, ``SGD``...) or a dotted path to an optimizer class.
        lr: learning rate.
        weight_decay: weight decay.
        kwargs: any other optimizer keyword (``momentum``, ``betas``...).
        scheduler: ``None`` | ``cosine`` | ``step`` | ``warmup_cosine`` | ``constant``; stepped per optimizer step.
        scheduler_kwargs: e.g. ``{"step_size": 100, "gamma": 0.5}`` for ``step``, ``{"eta_min": 0}`` for cosine.
        warmup_steps: linear warm-up steps for ``warmup_cosine``.
        lr_batch: when set, ``lr`` is the rate for a global batch of this size and is scaled linearly to the
            run's global batch (batch size x devices x accumulation), e.g. SimSiam's ``0.05 x batch / 256``.

    A study may split its parameters into groups (``StudyModule.param_groups``); a group with
    ``"fixed_lr": True`` keeps its learning rate while the scheduler anneals the others (SimSiam's predictor).
    """

    name: str = "AdamW"
    lr: float = 1e-3
    weight_decay: float = 0.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    scheduler: str | None = None
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    warmup_steps: int = 0
    lr_batch: int | None = None

    def scaled_lr(self, global_batch: int | None) -> float:
        """``lr`` for the run's global batch (unchanged without ``lr_batch``)."""
        if self.lr_batch is None or not global_batch:
            return self.lr
        if self.lr_batch < 1:
            raise ValueError(f"optimizer.lr_batch={self.lr_batch}; expected a batch size >= 1")
        return self.lr * global_batch / self.lr_batch

    def optimizer_class(self) -> type[torch.optim.Optimizer]:
        if "." in self.name:
            module_name, _, attr = self.name.rpartition(".")
            try:
                cls = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as err:
                raise ValueError(f"optimizer.name={self.name!r}: cannot import it ({err})") from err
        else:
            cls = getattr(torch.optim, self.name, None)
            if cls is None:
                known = sorted(n for n in dir(torch.optim) if n[0].isupper() and n != "Optimizer")
                raise ValueError(f"optimizer.name={self.name!r} is not a torch.optim class; expected one of {known}")
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise ValueError(f"optimizer.name={self.name!r} is not a torch.optim.Optimizer subclass")
        return cls

    def build(self, params: list[torch.nn.Parameter] | list[dict[str, Any]],
              lr: float | None = None) -> torch.optim.Optimizer:
        """The optimizer over ``params`` (a list of parameters or of param-group dicts) at ``lr`` (default
        ``self.lr``). A group's ``fixed_lr`` flag stays in the group for the scheduler."""
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"optimizer.scheduler={self.scheduler!r}; expected one of {SCHEDULERS}")
        return self.optimizer_class()(params, lr=self.lr if lr is None else lr, weight_decay=self.weight_decay,
                                      **self.kwargs)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int):
        """A per-step LR scheduler or ``None``. ``total_steps`` comes from the Trainer's estimate."""
        kind = self.scheduler
        if kind in (None, "constant"):
            return None
        total = max(1, int(total_steps))
        fixed = [bool(g.get("fixed_lr", False)) for g in optimizer.param_groups]
        if any(fixed):
            return self._fixed_groups_scheduler(optimizer, total, fixed)
        if kind == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, **self.scheduler_kwargs)
        if kind == "step":
            kw = {"step_size": max(1, total // 3), "gamma": 0.1, **self.scheduler_kwargs}
            return torch.optim.lr_scheduler.StepLR(optimizer, **kw)
        warm = max(0, min(self.warmup_steps, total - 1))
        eta_min_ratio = float(self.scheduler_kwargs.get("eta_min_ratio", 0.0))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            progress = min(1.0, (step - warm) / max(1, total - warm))
            cos = 0.5 * (1.0 + torch.cos(torch.tensor(progress * torch.pi)).item())
            return eta_min_ratio + (1 - eta_min_ratio) * cos

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _fixed_groups_scheduler(self, optimizer: torch.optim.Optimizer, total: int, fixed: list[bool]):
        """One LambdaLR: groups with ``fixed_lr`` keep factor 1, the others follow ``self.scheduler``."""
        kind, kw = self.scheduler, self.scheduler_kwargs
        if kind == "step":
            size, gamma = int(kw.get("step_size", max(1, total // 3))), float(kw.get("gamma", 0.1))

            def factor(step: int) -> float:
                return gamma ** (step // size)
        else:
            warm = max(0, min(self.warmup_steps, total - 1)) if kind == "warmup_cosine" else 0

            def cosine(floor: float):
                def factor(step: int) -> float:
                    if step < warm:
                        return (step + 1) / (warm + 1)
                    progress = min(1.0, (step - warm) / max(1, total - warm))
                    return floor + (1 - floor) * 0.5 * (1.0 + math.cos(progress * math.pi))
                return factor

            floors = []
            for group in optimizer.param_groups:  # eta_min is absolute: a floor relative to the lr each group has
                if kind == "cosine" and kw.get("eta_min"):
                    floors.append(float(kw["eta_min"]) / max(float(group["lr"]), 1e-12))
                else:
                    floors.append(float(kw.get("eta_min_ratio", 0.0)))
            factors = [cosine(f) for f in floors]
            return torch.optim.lr_scheduler.LambdaLR(
                optimizer, [(lambda s: 1.0) if f else factors[i] for i, f in enumerate(fixed)])

        return torch.optim.lr_scheduler.LambdaLR(optimizer, [(lambda s: 1.0) if f else factor for f in fixed])


@dataclass
class StageSpec:
    """One stage of a curriculum.

    Args:
        name: stage name; prefixes every metric logged in the stage (F35) and names its directory.
        max_epochs / max_steps: length of the stage (one of them).
        optimizer: the stage's optimizer, built from the parameters trainable in this stage (F08).
        trainable: globs over module or parameter names; a parameter is trainable when a glob matches its
            full name or one of its module prefixes. Everything else is frozen (and its modules put in eval).
        loss_weights: weights of named loss terms, read by the study through ``loss_weight(name)``.
        args: study-specific stage arguments, handed to ``StudyModule.on_stage``.
        data: datamodule attribute overrides for this stage (e.g. ``{"batch_size": 64}``).
    """

    name: str
    max_epochs: int | None = None
    max_steps: int = -1
    optimizer: OptimSpec = field(default_factory=OptimSpec)
    trainable: list[str] = field(default_factory=lambda: ["*"])
    loss_weights: dict[str, float] = field(default_factory=dict)
    args: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"stage name {self.name!r} must be non-empty and contain no '/'")
        if self.max_epochs is None and (self.max_steps is None or self.max_steps < 0):
            raise ValueError(f"stage {self.name!r}: set max_epochs or max_steps")
        if isinstance(self.optimizer, dict):
            self.optimizer = OptimSpec(**self.optimizer)
        if isinstance(self.trainable, str):
            self.trainable = [self.trainable]

    def is_trainable(self, param_name: str) -> bool:
        return matches_any(param_name, self.trainable)


def stage_args(stage: StageSpec, defaults: Any, objectives: Sequence[str] = ()) -> Any:
    """A study's ``stage.args`` over ``defaults`` (a dataclass instance): a key the dataclass lacks is an error
    naming it; a dataclass field ``objective`` not given in the stage defaults to the stage's name when that name
    is one of ``objectives``, and an objective outside ``objectives`` (when given) is an error naming them."""
    from .errors import ConfigError

    known = {f.name for f in fields(defaults)}
    unknown = sorted(set(stage.args) - known)
    if unknown:
        raise ConfigError(f"stage {stage.name!r}: unknown args {unknown}; allowed: {sorted(known)}")
    args = type(defaults)(**{**asdict(defaults), **stage.args})
    if "objective" in known and "objective" not in stage.args and stage.name in objectives:
        args.objective = stage.name
    if objectives and "objective" in known and args.objective not in objectives:
        raise ConfigError(f"stage {stage.name!r}: objective {args.objective!r} is unknown; expected one of "
                          f"{list(objectives)}")
    return args


def as_dataclass(cls: type, value: Any, key: str) -> Any:
    """``value`` (a mapping from a YAML, an instance of ``cls``, or None) as an instance of the dataclass ``cls``;
    a key the dataclass lacks is a config error naming ``key`` and the allowed keys. ``None`` stays ``None``."""
    if not isinstance(value, dict):
        return value
    from .errors import ConfigError

    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ConfigError(f"{key}: unknown keys {unknown}; allowed: {', '.join(allowed)}")
    return cls(**value)


def matches_any(param_name: str, globs: list[str]) -> bool:
    """True when a glob matches ``param_name`` or one of its dotted module prefixes."""
    parts = param_name.split(".")
    candidates = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(c, g) for g in globs for c in candidates)
