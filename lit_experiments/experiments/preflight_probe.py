"""What `lit-exp preflight` measures during a stage: a dispatch mode counting operators and live tensor bytes, the
Lightning callback that times data loading, steps and the evaluation batch, and the guards of a preflight (caches
read, never filled; Lightning's info lines off). See :mod:`lit_experiments.experiments.preflight`."""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
import time
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .preflight_report import gib


class SimulatedOutOfMemory(MemoryError):
    """A step's peak memory went above ``--memory-cap-gb``."""


# --------------------------------------------------------------------------------------------- measuring
def _tree_tensors(obj: Any) -> Iterator[Any]:
    import torch
    from torch.utils._pytree import tree_leaves

    for leaf in tree_leaves(obj):
        if isinstance(leaf, torch.Tensor):
            yield leaf


def _live_bytes_mode(track_bytes: bool = True) -> Any:
    """A dispatch mode that counts the operators run (``ops``, views left out) and, with ``track_bytes``, the bytes of every tensor
    storage allocated while it is on (and freed: a weak reference on the storage), keeping the peak; in-place results
    and views of existing storages do not count."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LiveBytes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.now = 0
            self.peak = 0
            self.ops = 0
            self._seen: set[int] = set()

        def _free(self, key: int, nbytes: int) -> None:
            if key in self._seen:
                self._seen.discard(key)
                self.now -= nbytes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            out = func(*args, **(kwargs or {}))
            if not getattr(func, "is_view", False):  # a view launches no kernel
                self.ops += 1
            if not track_bytes:
                return out
            inputs = set()
            for t in _tree_tensors((args, kwargs)):
                with contextlib.suppress(Exception):
                    inputs.add(t.untyped_storage().data_ptr())
            for t in _tree_tensors(out):
                try:
                    storage = t.untyped_storage()
                except Exception:  # noqa: BLE001 - sparse / meta tensors hold no countable storage
                    continue
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if not nbytes or key in inputs or key in self._seen:
                    continue
                self._seen.add(key)
                self.now += nbytes
                self.peak = max(self.peak, self.now)
                weakref.finalize(storage, self._free, key, nbytes)
            return out

    return LiveBytes()


def tensor_bytes(*objs: Any) -> int:
    """Bytes of the distinct storages of every tensor in ``objs`` (modules: parameters, buffers and gradients)."""
    import torch

    seen: dict[int, int] = {}
    for obj in objs:
        if isinstance(obj, torch.nn.Module):
            tensors = [*obj.parameters(), *obj.buffers()]
            tensors += [p.grad for p in obj.parameters() if p.grad is not None]
        else:
            tensors = list(_tree_tensors(obj))
        for t in tensors:
            with contextlib.suppress(Exception):
                st = t.untyped_storage()
                seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def peak_rss_bytes() -> int:
    """The process's peak resident set (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def describe_batch(batch: Any, limit: int = 6) -> str:
    """``x: (32, 8) float32, y: (32,) int64`` for a dict / sequence / tensor batch (the first ``limit`` entries)."""
    import torch

    def one(value: Any) -> str:
        if isinstance(value, torch.Tensor):
            return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
        if isinstance(value, (list, tuple)):
            return f"{type(value).__name__}[{len(value)}]"
        return type(value).__name__

    if isinstance(batch, dict):
        items = [f"{k}: {one(v)}" for k, v in batch.items()]
    elif isinstance(batch, (list, tuple)):
        items = [f"[{i}]: {one(v)}" for i, v in enumerate(batch)]
    elif hasattr(batch, "__dataclass_fields__"):
        items = [f"{k}: {one(getattr(batch, k))}" for k in batch.__dataclass_fields__]
    else:
        items = [one(batch)]
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def batch_size_of(batch: Any) -> int | None:
    first = next(_tree_tensors(batch), None)
    return int(first.shape[0]) if first is not None and first.ndim else None


def is_out_of_memory(err: BaseException) -> bool:
    import torch

    current: BaseException | None = err
    while current is not None:
        if isinstance(current, (torch.OutOfMemoryError, MemoryError)):
            return True
        text = str(current)
        if isinstance(current, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text):
            return True
        current = current.__cause__ or current.__context__
    return False


def probe_class() -> type:
    import lightning as L
    import torch

    class Probe(L.Callback):
        """Times data loading, steps and the evaluation batch; counts FLOPs and memory on the first step."""

        def __init__(self, cuda: bool, cap_bytes: int | None, extra_modules: list[Any]) -> None:
            self.cuda, self.cap_bytes, self.extra_modules = cuda, cap_bytes, extra_modules
            self.data_s: list[float] = []
            self.step_s: list[float] = []
            self.eval_batch_s: float | None = None
            self.eval_total_s: float | None = None
            self.flops: int | None = None
            self.ops: int | None = None
            self.flops_error: str | None = None
            self.peak_bytes: int | None = None
            self.batch: str | None = None
            self.batch_size: int | None = None
            self.trainable = self.frozen = 0
            self.optimizer: str | None = None
            self._mark = 0.0
            self._t0 = 0.0
            self._modes: list[Any] = []
            self._static = 0

        def _now(self) -> float:
            if self.cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            params = {id(p): p for m in [pl_module, *self.extra_modules] for p in m.parameters()}
            self.trainable = sum(p.numel() for p in params.values() if p.requires_grad)
            self.frozen = sum(p.numel() for p in params.values() if not p.requires_grad)
            self.optimizer = ", ".join(type(o).__name__ for o in trainer.optimizers) or None
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            self._mark = self._now()

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            now = self._now()
            self.data_s.append(now - self._mark)
            if batch_idx == 0:
                from torch.utils.flop_counter import FlopCounterMode

                self.batch, self.batch_size = describe_batch(batch), batch_size_of(batch)
                self._static = tensor_bytes(pl_module, *self.extra_modules, batch)
                self._modes = [FlopCounterMode(display=False), _live_bytes_mode(track_bytes=not self.cuda)]
                for mode in self._modes:
                    mode.__enter__()
            self._t0 = self._now()

        def _close_modes(self) -> None:
            for mode in reversed(self._modes):
                with contextlib.suppress(Exception):
                    mode.__exit__(None, None, None)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            now = self._now()
            self.step_s.append(now - self._t0)
            if batch_idx == 0 and self._modes:
                self._close_modes()
                flop_mode = self._modes[0]
                try:
                    self.flops = int(flop_mode.get_total_flops())
                except Exception as err:  # noqa: BLE001 - a compiled graph the counter cannot see
                    self.flops_error = f"{type(err).__name__}: {err}"
                self.ops = self._modes[1].ops
                if self.cuda:
                    self.peak_bytes = int(torch.cuda.max_memory_allocated())
                else:
                    self.peak_bytes = self._static + int(self._modes[1].peak)
                self._modes = []
                if self.cap_bytes is not None and self.peak_bytes > self.cap_bytes:
                    raise SimulatedOutOfMemory(
                        f"peak {gib(self.peak_bytes)} > --memory-cap-gb {gib(self.cap_bytes)} at batch {self.batch_size}")
            self._mark = self._now()

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            self._close_modes()
            self._modes = []

        def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
            self._v0 = self._now()

        def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                      dataloader_idx: int = 0) -> None:
            self._vb = self._now()

        def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                    dataloader_idx: int = 0) -> None:
            if self.eval_batch_s is None:
                self.eval_batch_s = self._now() - self._vb

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            self.eval_total_s = self._now() - self._v0
            if self.cuda and self.peak_bytes is not None:
                self.peak_bytes = max(self.peak_bytes, int(torch.cuda.max_memory_allocated()))

    return Probe


# ------------------------------------------------------------------------------------------------ caches
@contextlib.contextmanager
def caches_read_only(tmp: Path) -> Iterator[list[dict[str, Any]]]:
    """Feature caches and stand-ins that exist are read; ones that do not are built under ``tmp`` (not kept)."""
    from ..core import standins
    from ..data import cache as cache_mod

    built: list[dict[str, Any]] = []
    build, path_of = cache_mod.FeatureCache._build_if_needed, standins.cache_path

    def build_elsewhere(self: Any) -> None:
        if self.check() is None:
            return
        wanted = self.path
        self.path = tmp / "features" / wanted.name
        start = time.perf_counter()
        build(self)
        built.append({"cache": str(wanted), "built_in": str(self.path), "seconds": time.perf_counter() - start})

    def standin_elsewhere(cache_dir: Any, prefix: str, key: dict[str, Any]) -> Path:
        wanted = path_of(cache_dir, prefix, key)
        if wanted.exists():
            return wanted
        built.append({"standin": str(wanted), "built_in": str(tmp / "standins" / wanted.name)})
        return tmp / "standins" / wanted.name

    cache_mod.FeatureCache._build_if_needed = build_elsewhere
    standins.cache_path = standin_elsewhere
    try:
        yield built
    finally:
        cache_mod.FeatureCache._build_if_needed = build
        standins.cache_path = path_of


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Lightning's info lines and its data-loader hints off while the preflight runs (warnings stay errors-only)."""
    import lightning.pytorch  # noqa: F401 - its loggers exist (and have their levels) from here on

    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in ("lightning", "pytorch_lightning")]
    names += ["lightning", "lightning.pytorch", "lightning.fabric"]
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(does not have many workers|num_workers|LeafSpec).*")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"lightning\..*")
        try:
            yield
        finally:
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)
