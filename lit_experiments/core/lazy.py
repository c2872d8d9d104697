"""LazyBuild: materialise lazily built parts with a dry run before freezing, the optimizer and the DDP wrap."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from .errors import HealthError


def uninitialized_names(module: torch.nn.Module) -> list[str]:
    names = [n for n, p in module.named_parameters() if isinstance(p, UninitializedParameter)]
    names += [n for n, b in module.named_buffers() if isinstance(b, UninitializedBuffer)]
    return names


def lazy_build(module: torch.nn.Module, batch: Any) -> None:
    """Idempotent dry run: ``module.dry_run(batch)`` under ``no_grad`` in eval mode, then the mode is restored."""
    was_training = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            dry = getattr(module, "dry_run", None)
            dry(batch) if dry is not None else module(batch)
    finally:
        for m, mode in was_training.items():
            m.train(mode)


class LazyBuild(L.Callback):
    """Runs on every rank in ``setup`` (before StageFreeze, ``configure_optimizers`` and the DDP wrap; F09, F36).

    The dry run always happens (one forward per stage): sub-networks created in Python on first use are
    as lazy as ``nn.Lazy*`` modules. The example batch comes from ``datamodule.example_batch()`` when the datamodule has one, else from the
    first training batch. Afterwards no ``UninitializedParameter`` may remain.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:
            destroy_process_group_at_exit()
        if stage != "fit":
            return
        dm = trainer.datamodule
        try:
            if dm is not None and hasattr(dm, "example_batch"):
                batch = dm.example_batch()
            else:
                loader = trainer.fit_loop._data_source.dataloader()
                batch = next(iter(loader))
        except StopIteration:
            raise HealthError(f"LazyBuild: the training dataloader of {type(dm).__name__} is empty: no example batch "
                              "for the dry run (check the data path, the split sizes and drop_last)") from None
        lazy_build(pl_module, batch)
        left = uninitialized_names(pl_module)
        if left:
            stage = getattr(getattr(pl_module, "stage", None), "name", "fit")
            raise HealthError(
                f"LazyBuild: stage {stage!r}: after the dry run these are still uninitialised: {left}. "
                f"{type(pl_module).__name__}.dry_run() must reach every lazy module so it exists before freezing "
                "and before the optimizer is built (F09, F36)"
            )


_CLEANUP_REGISTERED = False


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def destroy_process_group_at_exit() -> None:
    """Destroy the default process group when this process exits (once per process).

    A spawned DDP worker that exits with its gloo process group alive can abort in the C++ teardown ("terminate
    called without an active exception", SIGABRT), which fails the whole run although training finished. Every
    rank calls this from :meth:`LazyBuild.setup` (the hook that runs on every rank of every stage)."""
    global _CLEANUP_REGISTERED
    if not _CLEANUP_REGISTERED:
        import atexit

        atexit.register(_destroy_process_group)
        _CLEANUP_REGISTERED = True

