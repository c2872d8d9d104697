"""StageFreeze: everything not matched by the stage's ``trainable`` globs is frozen and kept in eval mode."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from .lazy import uninitialized_names
from .specs import matches_any


def apply_stage_freeze(module: torch.nn.Module, trainable: list[str]) -> list[torch.nn.Module]:
    """Set ``requires_grad`` from the globs; return the modules that hold no trainable parameter.

    Modules with ``always_frozen = True`` (frozen backbones) stay frozen under any glob, ``*`` included.
    A module with parameters or buffers but no trainable parameter in its subtree goes to eval mode, so
    BatchNorm statistics and dropout of frozen parts do not move.
    """
    left = uninitialized_names(module)
    if left:
        raise RuntimeError(f"StageFreeze: {left} are still uninitialised lazy parameters; they must be built by a "
                           "dry run (LazyBuild) before freezing, or this stage cannot train them (F09)")
    pinned = {id(p) for sub in module.modules() if getattr(sub, "always_frozen", False) for p in sub.parameters()}
    for name, param in module.named_parameters():
        param.requires_grad_(id(param) not in pinned and matches_any(name, trainable))
    module.train()
    frozen: list[torch.nn.Module] = []
    for _name, sub in module.named_modules():
        if sub is module:
            continue
        has_state = any(True for _ in sub.parameters()) or any(True for _ in sub.buffers())
        if has_state and not any(p.requires_grad for p in sub.parameters()):
            frozen.append(sub)
    for sub in frozen:
        sub.eval()
    return frozen


def component_table(module: torch.nn.Module, stage: str) -> str:
    """A plain-text table: top-level component, total and trainable parameter counts."""
    rows = []
    for name, child in module.named_children():
        total = sum(p.numel() for p in child.parameters())
        train = sum(p.numel() for p in child.parameters() if p.requires_grad)
        if total:
            rows.append((name, total, train))
    total = sum(r[1] for r in rows)
    train = sum(r[2] for r in rows)
    width = max([len(r[0]) for r in rows] + [9])
    lines = [f"stage {stage!r}: components", f"  {'component':<{width}}  {'total':>12}  {'trainable':>12}"]
    lines += [f"  {n:<{width}}  {t:>12,}  {tr:>12,}" for n, t, tr in rows]
    lines.append(f"  {'all':<{width}}  {total:>12,}  {train:>12,}")
    return "\n".join(lines)


class StageFreeze(L.Callback):
    """Apply the current stage's ``trainable`` globs at setup, after LazyBuild and before the optimizer.

    Modules without trainable parameters are put back into eval mode at the start of every training epoch.
    """

    def __init__(self, verbose: bool = True) -> None:
        self.verbose = verbose
        self._frozen: list[torch.nn.Module] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        spec = getattr(pl_module, "stage", None)
        globs = spec.trainable if spec is not None else ["*"]
        self._frozen = apply_stage_freeze(pl_module, globs)
        if self.verbose:
            rank_zero_info(component_table(pl_module, spec.name if spec is not None else "fit"))

    def _enforce(self) -> None:
        for sub in self._frozen:
            sub.eval()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._enforce()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._enforce()
