"""TrainingHealth: runtime guards for the failure modes of LESSONS.md.

Checked during each stage's first ``check_steps`` steps: gradients, optimizer set, targets, loss terms, batch
collapse. Checked for the whole stage: a finite loss (accumulated on the device, read every N steps and at
the end), every trainable parameter reached by a gradient (also when the stage is shorter than the window)
and a stage that ran at least one optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from .errors import HealthError
from .lazy import uninitialized_names

#: check name -> (default policy, LESSONS ids, likely cause)
CHECKS: dict[str, tuple[str, str, str]] = {
    "no_grad": ("error", "F07/F08",
                "the parameter is trainable but no loss reaches it: a loss read from a detached log, or a "
                "branch unused in this stage (freeze it in the stage's `trainable` globs)"),
    "nonfinite_grad": ("error", "-", "exploding loss or a division by ~0 in the forward pass"),
    "optimizer_mismatch": ("error", "F08/F32/F33",
                           "the optimizer was built before this stage's freezing or reused from an earlier stage"),
    "uninitialized": ("error", "F09/F36", "a lazy module was never reached by dry_run()"),
    "zero_trainable": ("error", "F09", "the stage's `trainable` globs match nothing that exists"),
    "zero_steps": ("error", "F33",
                   "a Trainer reused from an earlier fit (its counters already at max_steps/max_epochs), an empty "
                   "training dataloader, or a checkpoint that already reached the stage's length"),
    "target_grad": ("error", "F01",
                    "the target is computed through trainable weights (e.g. a trainable projection); compute "
                    "targets under no_grad from a frozen source"),
    "detached_loss": ("error", "F07",
                      "the loss term has no graph: it was computed from detached copies (a log), so it trains nothing"),
    "nonfinite_loss": ("error", "-", "NaN/inf in the loss: check learning rate, log of 0, division by 0"),
    "loss_bound": ("error", "F01/F20",
                   "the loss is below its declared floor: a collapsing target or a mis-normalised loss"),
    "collapse": ("error", "F10/F11/F19",
                 "every sample of the batch has the same representation: a closed gate, batch-wide "
                 "normalisation or representation collapse"),
}
POLICIES = ("error", "warn", "off")

#: what ``StudyModule.track(targets=...)`` accepts as the source of a target
Source = torch.nn.Module | torch.Tensor | str | Iterable[Any]


class TrainingHealthError(HealthError):
    """A health check failed with policy ``error``."""


class TrainingHealth(L.Callback):
    """Runtime guards of every fit / curriculum stage (see :data:`CHECKS`).

    Args:
        policy: per-check override of ``error`` / ``warn`` / ``off`` (names in :data:`CHECKS`).
        check_steps: how many first steps of each stage get the detailed checks (targets, loss terms,
            collapse, gradients); the no-gradient verdict is given after them or at the end of a shorter stage.
        collapse_cosine: mean off-diagonal cosine above which a batch representation counts as collapsed.
        collapse_std: mean per-feature std (of L2-normalised rows) below which it counts as collapsed.
        finite_every: the loss of every step is checked for NaN/inf on the device; the flag is read (one
            sync) every ``finite_every`` steps and at the end of the stage. ``None``: the Trainer's
            ``log_every_n_steps``, where Lightning syncs for logging anyway.
    """

    def __init__(self, policy: dict[str, str] | None = None, check_steps: int = 3,
                 collapse_cosine: float = 0.999, collapse_std: float = 1e-4, finite_every: int | None = None) -> None:
        policy = dict(policy or {})
        for key, value in policy.items():
            if key not in CHECKS:
                raise ValueError(f"TrainingHealth policy key {key!r} unknown; expected one of {sorted(CHECKS)}")
            if value not in POLICIES:
                raise ValueError(f"TrainingHealth policy[{key!r}]={value!r}; expected one of {POLICIES}")
        if finite_every is not None and finite_every < 1:
            raise ValueError(f"TrainingHealth finite_every={finite_every}: expected >= 1 or None")
        self.policy = {k: policy.get(k, v[0]) for k, v in CHECKS.items()}
        self.check_steps = check_steps
        self.collapse_cosine = collapse_cosine
        self.collapse_std = collapse_std
        self.finite_every = finite_every
        self.reports: list[str] = []
        self._reset(0)

    def _reset(self, start_step: int) -> None:
        self._seen_grad: set[str] = set()
        self._steps = 0  # training batches of this fit inside the detailed window
        self._grad_steps = 0  # optimizer steps whose gradients were inspected
        self._no_grad_done = False
        self._batches = 0  # training batches of this fit
        self._bad_step: torch.Tensor | None = None  # first batch (1-based) with a non-finite loss, -1 if none
        self._finite_done = False
        self._start_step = start_step
        self._outputs: dict[int, tuple[str, Any]] = {}  # storage address -> (trainable module, storage held)
        self._hooks: list[Any] = []

    # ---------------------------------------------------------------- helpers
    def _stage(self, pl_module: L.LightningModule) -> str:
        stage = getattr(pl_module, "stage", None)
        return getattr(stage, "name", "fit")

    def _fail(self, check: str, pl_module: L.LightningModule, what: str) -> None:
        mode = self.policy[check]
        if mode == "off":
            return
        _default, ids, cause = CHECKS[check]
        msg = f"[TrainingHealth:{check}] stage {self._stage(pl_module)!r}: {what}. Likely cause ({ids}): {cause}."
        self.reports.append(msg)
        if mode == "error":
            raise TrainingHealthError(msg)
        rank_zero_warn(msg)

    def _active(self) -> bool:
        return self._steps < self.check_steps

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # before a checkpoint's training state is restored: a fresh Trainer is at step 0 here
        self._reset(trainer.global_step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset(self._start_step)
        left = uninitialized_names(pl_module)
        if left:
            self._fail("uninitialized", pl_module, f"uninitialised parameters/buffers {left}")
        trainable = {n: p for n, p in pl_module.named_parameters() if p.requires_grad}
        if not trainable:
            self._fail("zero_trainable", pl_module, "0 trainable parameters")
        self._check_optimizer(trainer, pl_module, trainable)
        pl_module._tracking = True

    def _check_optimizer(self, trainer: L.Trainer, pl_module: L.LightningModule,
                         trainable: dict[str, torch.nn.Parameter]) -> None:
        in_opt = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        missing = [n for n, p in trainable.items() if id(p) not in in_opt]
        names = {id(p): n for n, p in pl_module.named_parameters()}
        train_ids = {id(p) for p in trainable.values()}
        extra = [names.get(i, "<a tensor outside this module>") for i in in_opt if i not in train_ids]
        if missing or extra:
            self._fail("optimizer_mismatch", pl_module,
                       f"optimizer parameter set != trainable set; trainable but not optimised: {_few(missing)}; "
                       f"optimised but frozen or foreign: {_few(extra)}")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self._grad_steps >= self.check_steps:
            return
        self._grad_steps += 1
        for name, param in pl_module.named_parameters():
            if not param.requires_grad or param.grad is None:
                continue
            self._seen_grad.add(name)
            if not torch.isfinite(param.grad).all():
                self._fail("nonfinite_grad", pl_module, f"gradient of {name!r} is not finite")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._active() and self.policy["target_grad"] != "off":
            self._watch_trainable_outputs(pl_module)

    def _watch_trainable_outputs(self, pl_module: L.LightningModule) -> None:
        """Record the storage of every output of a module with its own trainable parameters during this step, so a
        declared target that *is* such an output (a moving target, also under ``no_grad`` or ``detach``) is found
        (F01). The storages are held until the step's check, so their addresses cannot be reused meanwhile."""
        self._unwatch()
        self._outputs = {}

        def record(name: str):
            def hook(module: torch.nn.Module, args: Any, out: Any) -> None:
                passed = {t.untyped_storage().data_ptr() for t in _tensors(args)}  # inputs handed through
                for t in _tensors(out):
                    storage = t.untyped_storage()
                    if storage.data_ptr() not in passed:
                        self._outputs.setdefault(storage.data_ptr(), (name, storage))
            return hook

        for name, module in pl_module.named_modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                self._hooks.append(module.register_forward_hook(record(name)))

    def _unwatch(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._unwatch()
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self._batches += 1
        if isinstance(loss, torch.Tensor):
            self._accumulate_finite(loss)
        every = self.finite_every or max(1, int(getattr(trainer, "log_every_n_steps", 50) or 50))
        if self._batches % every == 0:
            self._check_finite(trainer, pl_module)
        if self._active():
            try:
                self._check_window(pl_module, loss)
            finally:
                self._outputs = {}
            self._steps += 1
            if not self._active():
                pl_module._tracking = False
        if not self._no_grad_done and self._grad_steps >= self.check_steps:
            self._check_no_grad(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._unwatch()
        self._outputs = {}
        pl_module._tracking = False
        self._check_finite(trainer, pl_module)
        if not self._no_grad_done and self._grad_steps > 0:  # a stage shorter than the window
            self._check_no_grad(pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        steps = trainer.global_step - self._start_step
        in_curriculum = bool(getattr(pl_module, "_in_curriculum", False))  # a stage trains, however it is set
        if steps > 0 or trainer.interrupted or (not in_curriculum and not _asked_for_steps(trainer)):
            return
        if self._start_step > 0:
            why = (f"the Trainer had already run {self._start_step} step(s) before this fit: it is reused from an "
                   f"earlier fit/stage (max_steps={trainer.max_steps}, max_epochs={trainer.max_epochs} already "
                   "reached); build a new Trainer per stage")
        elif trainer.limit_train_batches == 0:
            why = "trainer.limit_train_batches=0 runs no training batch"
        elif trainer.num_training_batches == 0:
            why = "the training dataloader has 0 batches (empty data or a split smaller than one batch with drop_last)"
        else:
            why = (f"max_steps={trainer.max_steps}, max_epochs={trainer.max_epochs} were reached before any step "
                   f"(restored epoch {trainer.current_epoch})")
        self._fail("zero_steps", pl_module, f"the stage ran 0 optimizer steps: {why}")

    # ------------------------------------------------------------- checks
    def _accumulate_finite(self, loss: torch.Tensor) -> None:
        """Remember the first batch whose loss is not finite, on the loss's device (no host sync)."""
        bad = ~torch.isfinite(loss.detach()).all()
        if self._bad_step is None:
            self._bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        first = bad & (self._bad_step < 0)
        self._bad_step = torch.where(first, self._batches, self._bad_step)

    def _check_finite(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bad_step is None or self._finite_done:
            return
        bad = self._bad_step
        if trainer.world_size > 1:  # every rank checks at the same batch counts: agree on the first bad step
            big = 1 << 40
            code = trainer.strategy.reduce(torch.where(bad > 0, big - bad, 0), reduce_op="max")
            bad = torch.where(code > 0, big - code, -1)
        step = int(bad.item())
        if step > 0:
            self._finite_done = True
            self._fail("nonfinite_loss", pl_module,
                       f"the training loss is not finite at step {step} of this stage (first non-finite step, "
                       f"global step {self._start_step + step}; found by the check after step {self._batches})")

    def _check_no_grad(self, pl_module: L.LightningModule) -> None:
        self._no_grad_done = True
        trainable = [n for n, p in pl_module.named_parameters() if p.requires_grad]
        never = [n for n in trainable if n not in self._seen_grad]
        if never:
            self._fail("no_grad", pl_module,
                       f"{len(never)} trainable parameter(s) got no gradient in {self._grad_steps} step(s): "
                       f"{_few(never)}")

    def _check_window(self, pl_module: L.LightningModule, loss: Any) -> None:
        tracked = pl_module.pop_tracked() if hasattr(pl_module, "pop_tracked") else {}
        losses = dict(tracked.get("losses", {}))
        with_graph = set(losses)  # tracked terms come from the module undetached; Lightning's copy is detached
        if isinstance(loss, torch.Tensor):
            losses.setdefault("loss", loss)
        self._check_losses(pl_module, losses, with_graph)
        sources = tracked.get("target_sources", {})
        for name, target in tracked.get("targets", {}).items():
            if isinstance(target, torch.Tensor) and target.requires_grad:
                self._fail("target_grad", pl_module, f"target {name!r} requires grad")
            if sources.get(name) is not None:
                self._check_source(pl_module, name, sources[name])
                self._check_moving(pl_module, name, target)
        for name, rep in tracked.get("representations", {}).items():
            self._check_collapse(pl_module, name, rep)

    def _check_source(self, pl_module: L.LightningModule, name: str, source: Source) -> None:
        live = [n for n, p in source_parameters(pl_module, source, name) if p.requires_grad]
        if live:
            self._fail("target_grad", pl_module,
                       f"target {name!r} is computed from a source with trainable parameters in this stage "
                       f"{_few(live)} (with or without no_grad the target moves with the model)")

    def _check_moving(self, pl_module: L.LightningModule, name: str, target: Any) -> None:
        """A target with a declared source must not be the output of a module trainable in this stage."""
        if not isinstance(target, torch.Tensor) or not self._outputs:
            return
        found = self._outputs.get(target.untyped_storage().data_ptr())
        if found is not None:
            self._fail("target_grad", pl_module,
                       f"target {name!r} is the output of {found[0] or type(pl_module).__name__!r}, which has "
                       "parameters trainable in this stage (under no_grad or detached, the target still moves with "
                       "the model); its declared source is not what it is computed from")

    def _check_losses(self, pl_module: L.LightningModule, losses: dict[str, torch.Tensor],
                      with_graph: set[str]) -> None:
        bounds = getattr(pl_module, "loss_lower_bounds", {}) or {}
        for name, value in losses.items():
            if not isinstance(value, torch.Tensor):
                continue
            if name in with_graph and not value.requires_grad and _had_graph_expected(value):
                self._fail("detached_loss", pl_module, f"loss term {name!r} does not require grad")
            v = value.detach().float()
            if not torch.isfinite(v).all():
                self._finite_done = True
                self._fail("nonfinite_loss", pl_module,
                           f"loss {name!r} = {v.flatten()[:4].tolist()} at step {self._batches} of this stage")
                continue
            if name in bounds and v.min().item() < bounds[name] - 1e-6:
                self._fail("loss_bound", pl_module,
                           f"loss {name!r} = {v.min().item():.6g} is below its floor {bounds[name]}")

    def _check_collapse(self, pl_module: L.LightningModule, name: str, rep: torch.Tensor) -> None:
        if not isinstance(rep, torch.Tensor) or rep.dim() < 2 or rep.shape[0] < 2:
            return
        x = rep.detach().float().reshape(rep.shape[0], -1)
        if not torch.isfinite(x).all():
            return
        xn = torch.nn.functional.normalize(x, dim=1)
        n = xn.shape[0]
        cos = xn @ xn.T
        mean_cos = (cos.sum() - cos.diagonal().sum()) / (n * (n - 1))
        std = xn.std(dim=0).mean()
        verdict = check_collapse({"cosine": mean_cos.item(), "std": std.item()}, high={"cosine": self.collapse_cosine},
                                 low={"std": self.collapse_std})
        if verdict.fired:
            self._fail("collapse", pl_module,
                       f"representation {name!r} collapsed across the batch (mean pairwise cosine "
                       f"{mean_cos.item():.4f}, mean per-feature std {std.item():.2e}, batch {n})")


class Collapse(NamedTuple):
    """The verdict of :func:`check_collapse`: ``streak`` batches in a row past a limit (0: healthy), ``fired``."""

    streak: int
    fired: bool


def check_collapse(values: dict[str, float], *, low: dict[str, float] | None = None,
                   high: dict[str, float] | None = None, streak: int = 0, patience: int = 1) -> Collapse:
    """The one collapse guard (F10 / F11 / F19), for ``TrainingHealth`` and for a study's own monitor.

    A batch counts as collapsed when a measured value is below its limit in ``low`` (the mean per-feature std of
    L2-normalised rows, its ratio to the healthy ``1/sqrt(d)``, the effective rank) or above its limit in ``high``
    (the mean pairwise cosine); a NaN crosses no limit. ``streak`` is the caller's count of collapsed batches in a
    row before this one; the guard fires once the new count reaches ``patience`` (1: the first collapsed batch).
    The caller names the representation and the likely cause when it fires."""
    collapsed = (any(values[k] < limit for k, limit in (low or {}).items())
                 or any(values[k] > limit for k, limit in (high or {}).items()))
    streak = streak + 1 if collapsed else 0
    return Collapse(streak, streak >= patience)


def source_parameters(module: torch.nn.Module, source: Source, target: str = "?") -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` pairs a target's declared source stands for.

    A source is a sub-module (or its dotted name in ``module``), a parameter / tensor, or a list of these.
    A plain tensor stands for itself: it counts as trainable when it requires grad.
    """
    names = {id(p): n for n, p in module.named_parameters()}
    if isinstance(source, str):
        try:
            source = module.get_submodule(source)
        except AttributeError:
            try:
                source = module.get_parameter(source)
            except AttributeError:
                raise ValueError(f"track(targets=...): source {source!r} of target {target!r} is neither a "
                                 f"sub-module nor a parameter of {type(module).__name__}; top-level parts: "
                                 f"{[n for n, _ in module.named_children()]}") from None
    if isinstance(source, torch.nn.Module):
        return [(names.get(id(p), f"<{type(source).__name__} parameter>"), p) for p in source.parameters()]
    if isinstance(source, torch.Tensor):
        return [(names.get(id(source), f"<tensor {tuple(source.shape)}>"), source)]
    if isinstance(source, Iterable):
        return [pair for item in source for pair in source_parameters(module, item, target)]
    raise TypeError(f"track(targets=...): source of target {target!r} is a {type(source).__name__}; expected a "
                    "module, a module name, a parameter/tensor or a list of these")


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a module's output (a tensor, a tuple / list / dict of them, or a dataclass of them)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    fields = getattr(value, "__dataclass_fields__", None)
    if fields:
        return [t for f in fields for t in _tensors(getattr(value, f, None))]
    return []


def _asked_for_steps(trainer: L.Trainer) -> bool:
    if trainer.max_steps == 0 or trainer.max_epochs == 0 or trainer.limit_train_batches == 0:
        return False
    return True


def _few(names: list[str], k: int = 8) -> str:
    return f"{names[:k]}{' ...' if len(names) > k else ''}"


def _had_graph_expected(value: torch.Tensor) -> bool:
    """A tracked loss term is expected to carry a graph unless it is an exact constant zero (term switched off)."""
    return not (value.numel() == 1 and not math.isnan(value.item()) and value.item() == 0.0)
