"""StageFreeze: everything not matched by the stage's ``trainable`` globs is frozen and kept in eval mode."""

from __future__ import annotations

import difflib

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from .health import HealthError
from .lazy import uninitialized_names
from .specs import matches_any


def apply_stage_freeze(module: torch.nn.Module, trainable: list[str], stage: str = "fit") -> list[torch.nn.Module]:
    """Set ``requires_grad`` from the globs; return the modules that hold no trainable parameter.

    Modules with ``always_frozen = True`` (frozen backbones) stay frozen under any glob, ``*`` included.
    A module with parameters but no trainable parameter in its subtree goes to eval mode, so BatchNorm
    statistics and dropout of frozen parts do not move. A module with buffers and no parameters (BatchNorm
    without affine) is judged by its name against the globs, as a parameter would be.

    Raises:
        HealthError: a lazy parameter is still uninitialised, or a glob matches no parameter, or only
            parameters of ``always_frozen`` modules (a dead glob, even among live ones; F09).
    """
    left = uninitialized_names(module)
    if left:
        raise HealthError(f"StageFreeze: stage {stage!r}: {left} are still uninitialised lazy parameters; they must "
                          "be built by a dry run (LazyBuild) before freezing, or this stage cannot train them (F09)")
    pinned = {id(p) for sub in module.modules() if getattr(sub, "always_frozen", False) for p in sub.parameters()}
    check_globs(module, trainable, pinned, stage)
    for name, param in module.named_parameters():
        param.requires_grad_(id(param) not in pinned and matches_any(name, trainable))
    module.train()
    pinned_names = [n for n, sub in module.named_modules() if n and getattr(sub, "always_frozen", False)]
    frozen: list[torch.nn.Module] = []
    for name, sub in module.named_modules():
        if sub is module:
            continue
        params = list(sub.parameters())
        if params:
            if not any(p.requires_grad for p in params):
                frozen.append(sub)
        elif any(True for _ in sub.buffers()):
            # a part without parameters but with state (BatchNorm with affine=False, SimSiam's last projector
            # layer) follows the globs by its name, like a parameter does: trainable inside a trainable part,
            # else its running statistics would never move and eval-mode outputs collapse (F19)
            under_pinned = any(name == p or name.startswith(p + ".") for p in pinned_names)
            if under_pinned or not matches_any(name, trainable):
                frozen.append(sub)
    for sub in frozen:
        sub.eval()
    return frozen


def check_globs(module: torch.nn.Module, globs: list[str], pinned: set[int], stage: str) -> None:
    """Every glob must select at least one parameter that can train; name the dead ones and near names."""
    params = list(module.named_parameters())
    problems = []
    for glob in globs:
        hits = [p for n, p in params if matches_any(n, [glob])]
        if not hits:
            problems.append(f"{glob!r} matches no parameter; nearest names: {nearest(module, glob)}")
        elif all(id(p) in pinned for p in hits):
            problems.append(f"{glob!r} matches only parameters of always-frozen modules (frozen backbones)")
    if problems:
        top = [n for n, c in module.named_children() if any(True for _ in c.parameters())]
        raise HealthError(
            f"StageFreeze: stage {stage!r}, trainable {list(globs)}: " + "; ".join(problems)
            + f". Parts of {type(module).__name__} with parameters: {top}. Fix the stage's `trainable:` globs "
            "(a glob matches a module or parameter name or one of its dotted prefixes; F09)"
        )


def nearest(module: torch.nn.Module, glob: str, k: int = 3) -> list[str]:
    """The module / parameter names closest to ``glob`` (wildcards dropped)."""
    names = [n for n, _ in module.named_modules() if n] + [n for n, _ in module.named_parameters()]
    stem = glob.replace("*", "").replace("?", "").strip(".")
    close = difflib.get_close_matches(stem, names, n=k, cutoff=0.3)
    if not close:
        close = [n for n in names if "." not in n][:k]
    return close


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
        self._frozen = apply_stage_freeze(pl_module, globs, spec.name if spec is not None else "fit")
        if self.verbose:
            rank_zero_info(component_table(pl_module, spec.name if spec is not None else "fit"))

    def _enforce(self) -> None:
        for sub in self._frozen:
            sub.eval()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._enforce()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._enforce()
