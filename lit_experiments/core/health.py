"""TrainingHealth: runtime guards for the failure modes of LESSONS.md, checked during each stage's first steps."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

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
    "target_grad": ("error", "F01",
                    "the target is computed through trainable weights (e.g. a trainable projection); compute "
                    "targets under no_grad from the frozen source"),
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


class TrainingHealthError(RuntimeError):
    """A health check failed with policy ``error``."""


class TrainingHealth(L.Callback):
    """Checks the first ``check_steps`` optimisation steps of every stage.

    Args:
        policy: per-check override of ``error`` / ``warn`` / ``off`` (names in :data:`CHECKS`).
        check_steps: how many steps of each stage are inspected.
        collapse_cosine: mean off-diagonal cosine above which a batch representation counts as collapsed.
        collapse_std: mean per-feature std (of L2-normalised rows) below which it counts as collapsed.
    """

    def __init__(self, policy: dict[str, str] | None = None, check_steps: int = 3,
                 collapse_cosine: float = 0.999, collapse_std: float = 1e-4) -> None:
        policy = dict(policy or {})
        for key, value in policy.items():
            if key not in CHECKS:
                raise ValueError(f"TrainingHealth policy key {key!r} unknown; expected one of {sorted(CHECKS)}")
            if value not in POLICIES:
                raise ValueError(f"TrainingHealth policy[{key!r}]={value!r}; expected one of {POLICIES}")
        self.policy = {k: policy.get(k, v[0]) for k, v in CHECKS.items()}
        self.check_steps = check_steps
        self.collapse_cosine = collapse_cosine
        self.collapse_std = collapse_std
        self._seen_grad: set[str] = set()
        self._steps = 0
        self.reports: list[str] = []

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
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._steps = 0
        self._seen_grad = set()
        left = uninitialized_names(pl_module)
        if left:
            self._fail("uninitialized", pl_module, f"uninitialised parameters/buffers {left}")
        trainable = {n: p for n, p in pl_module.named_parameters() if p.requires_grad}
        if not trainable:
            self._fail("zero_trainable", pl_module, "0 trainable parameters")
        in_opt = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        missing = [n for n, p in trainable.items() if id(p) not in in_opt]
        names = {id(p): n for n, p in pl_module.named_parameters()}
        extra = [names.get(i, "<a tensor outside this module>") for i in in_opt if i not in {id(p) for p in trainable.values()}]
        if missing or extra:
            self._fail("optimizer_mismatch", pl_module,
                       f"optimizer parameter set != trainable set; trainable but not optimised: {missing[:8]}"
                       f"{' ...' if len(missing) > 8 else ''}; optimised but frozen or foreign: {extra[:8]}")
        pl_module._tracking = True

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if not self._active():
            return
        for name, param in pl_module.named_parameters():
            if not param.requires_grad or param.grad is None:
                continue
            self._seen_grad.add(name)
            if not torch.isfinite(param.grad).all():
                self._fail("nonfinite_grad", pl_module, f"gradient of {name!r} is not finite")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._active():
            return
        tracked = pl_module.pop_tracked() if hasattr(pl_module, "pop_tracked") else {}
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        losses = dict(tracked.get("losses", {}))
        with_graph = set(losses)  # tracked terms come from the module undetached; Lightning's copy is detached
        if isinstance(loss, torch.Tensor):
            losses.setdefault("loss", loss)
        self._check_losses(pl_module, losses, with_graph)
        for name, target in tracked.get("targets", {}).items():
            if isinstance(target, torch.Tensor) and target.requires_grad:
                self._fail("target_grad", pl_module, f"target {name!r} requires grad")
        for name, rep in tracked.get("representations", {}).items():
            self._check_collapse(pl_module, name, rep)
        self._steps += 1
        if not self._active():
            pl_module._tracking = False
            trainable = [n for n, p in pl_module.named_parameters() if p.requires_grad]
            never = [n for n in trainable if n not in self._seen_grad]
            if never and trainer.global_step > 0:
                self._fail("no_grad", pl_module,
                           f"{len(never)} trainable parameter(s) got no gradient in {self.check_steps} steps: "
                           f"{never[:8]}{' ...' if len(never) > 8 else ''}")

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
                self._fail("nonfinite_loss", pl_module, f"loss {name!r} = {v.flatten()[:4].tolist()}")
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
        if mean_cos.item() > self.collapse_cosine or std.item() < self.collapse_std:
            self._fail("collapse", pl_module,
                       f"representation {name!r} collapsed across the batch (mean pairwise cosine "
                       f"{mean_cos.item():.4f}, mean per-feature std {std.item():.2e}, batch {n})")


def _had_graph_expected(value: torch.Tensor) -> bool:
    """A tracked loss term is expected to carry a graph unless it is an exact constant zero (term switched off)."""
    return not (value.numel() == 1 and not math.isnan(value.item()) and value.item() == 0.0)
