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
import hashlib
import json
import logging
import math
import resource
import shutil
import sys
import tempfile
import time
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, LitExpError

# ----------------------------------------------------------------------------------------------- the cards
#: Peak dense bf16 tensor throughput with FP32 accumulation (what PyTorch's bf16 matmuls use) and memory.
#: rtx5080: NVIDIA lists 1801 "AI TOPS" for the RTX 5080 (FP4, with sparsity; NVIDIA product page, notebookcheck's
#:   spec sheet); FP4 -> FP8 -> FP16 halves each step and sparsity doubles: 1801 / 16 = 112.6 dense FP16/BF16 TFLOPS
#:   with FP32 accumulate (GeForce cards run FP32 accumulate at half the FP16-accumulate rate: RTX 4090 165.2 vs
#:   330.3 in the Ada whitepaper; the BLACKWALL roofline measured 47.0 vs 87.9 TFLOPS on an RTX 5060 Ti). 16 GB GDDR7.
#: a100: A100 SXM4 80 GB datasheet, BF16 tensor 312 dense. h100: H100 SXM5 datasheet, BF16 989.4 dense (1979 with
#:   sparsity), 80 GB. h200: same compute as the H100 SXM, 141 GB. l4: L4 datasheet, BF16 121 dense (242 sparse), 24 GB.
CARDS: dict[str, dict[str, Any]] = {
    "rtx5080": {"bf16_tflops": 112.6, "memory_gb": 16.0, "what": "GeForce RTX 5080 (Blackwell GB203, 16 GB GDDR7)"},
    "a100": {"bf16_tflops": 312.0, "memory_gb": 80.0, "what": "A100 SXM4 80 GB"},
    "h100": {"bf16_tflops": 989.4, "memory_gb": 80.0, "what": "H100 SXM5 80 GB"},
    "h200": {"bf16_tflops": 989.4, "memory_gb": 141.0, "what": "H200 141 GB"},
    "l4": {"bf16_tflops": 121.0, "memory_gb": 24.0, "what": "L4 24 GB"},
    "cpu": {"bf16_tflops": None, "memory_gb": None, "what": "no accelerator (no projection)"},
}
DEFAULT_UTILISATION = 0.4
#: what a CUDA process holds beyond its tensors (context, cuDNN / cuBLAS workspaces, allocator slack), for "fits"
CUDA_OVERHEAD_GB = 0.75
CUDA_SLACK = 1.10
#: a GPU step takes at least this long per operator the step runs (kernel launch and Python dispatch in eager mode)
LAUNCH_S = 10e-6

#: config keys whose string value names weights (a file, a folder, or a hub id)
WEIGHT_KEYS = ("pretrained", "weights", "weights_path", "weight_file", "checkpoint", "checkpoint_path", "ckpt",
               "ckpt_path", "pretrained_path", "model_name_or_path")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz", ".pkl", ".h5", ".msgpack")
NOT_WEIGHTS = ("", "random", "none", "false", "null", "scratch")
#: keys of a curriculum config that are not the parser's (the curriculum's own) and how preflight uses them
CURRICULUM_KEYS = ("stages", "only", "resume", "test_after", "resume_changed", "on_existing")


class PreflightError(LitExpError):
    """The run cannot be built for a preflight (printed as one block)."""


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
    """A dispatch mode that counts the operators run (``ops``) and, with ``track_bytes``, the bytes of every tensor
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


def _probe_class() -> type:
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


# ---------------------------------------------------------------------------------------------- formatting
def gib(nbytes: float | None) -> str:
    if nbytes is None:
        return "-"
    if nbytes < 2**20:
        return f"{nbytes / 2**10:.1f} KiB"
    if nbytes < 2**30:
        return f"{nbytes / 2**20:.1f} MiB"
    return f"{nbytes / 2**30:.2f} GiB"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f}us"
    if value < 1:
        return f"{value * 1e3:.1f}ms"
    if value < 120:
        return f"{value:.2f}s"
    if value < 7200:
        return f"{value / 60:.1f}min"
    return f"{value / 3600:.1f}h"


def count(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


# ------------------------------------------------------------------------------------------------ weights
def _walk(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, str(key)), value
            yield from _walk(value, (*path, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, (*path, str(i)))


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "~", "./", "../")) or value.lower().endswith(WEIGHT_SUFFIXES)


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted by name)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def owner_file(files: list[Path], key: tuple[str, ...]) -> Path | None:
    """The last of ``files`` that sets ``key`` (a dotted path into the YAML)."""
    from ..core.configs import _load_yaml

    found = None
    for f in files:
        node: Any = _load_yaml(f)
        for part in key:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                node = None
                break
        else:
            found = f
    return found


def config_weights(raw: dict[str, Any], files: list[Path]) -> list[dict[str, Any]]:
    """Every weight a config key names, with where it comes from; a missing file is a :class:`ConfigError` naming
    the config file and the key."""
    out = []
    for path, value in _walk(raw):
        if path[-1] not in WEIGHT_KEYS or isinstance(value, (dict, list)):
            continue
        key = ".".join(path)
        if value is True:
            out.append({"key": key, "source": "hub cache (the part's default weights)"})
            continue
        if not isinstance(value, str) or value.strip().lower() in NOT_WEIGHTS:
            continue
        local = Path(value).expanduser()
        if local.exists():
            out.append({"key": key, "source": "file" if local.is_file() else "folder", "path": str(local.resolve()),
                        "sha256": sha256_of(local)})
        elif _looks_like_path(value):
            where = owner_file(files, path)
            raise ConfigError(f"{where or files[-1]}: {key}: weight file not found: {local} (expected a file of "
                              "weights in the library's own format, e.g. a state dict .pt / .safetensors, or a "
                              "save_pretrained folder; or `true` for the hub cache, `false` for random init)")
        else:
            out.append({"key": key, "source": f"hub id {value!r} (local hub cache)"})
    return out


def module_weights(*roots: Any) -> list[dict[str, Any]]:
    """Weight files the parts report: ``weights = "file:PATH"`` (FrozenBackbone) or ``weight_files = [PATH, ...]``."""
    import torch

    out, seen = [], set()
    for root in roots:
        if not isinstance(root, torch.nn.Module):
            continue
        for name, sub in root.named_modules():
            paths = []
            weights = getattr(sub, "weights", None)
            if isinstance(weights, str) and weights.startswith("file:"):
                paths.append(weights[len("file:"):])
            listed = getattr(sub, "weight_files", None)
            if isinstance(listed, (list, tuple)):
                paths += [str(p) for p in listed]
            for p in paths:
                local = Path(p).expanduser()
                if local.exists() and str(local.resolve()) not in seen:
                    seen.add(str(local.resolve()))
                    out.append({"key": f"{type(root).__name__}.{name}" if name else type(root).__name__,
                                "source": "file" if local.is_file() else "folder", "path": str(local.resolve()),
                                "sha256": sha256_of(local)})
    return out


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
              precision: str | None) -> Built:
    """Compose ``configs``, check the weights they name, and build model, datamodule and Trainer (``run=False``)."""
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
    weights = config_weights(raw, files)
    stage_dicts = raw.get("stages")
    rest = {k: v for k, v in raw.items() if k not in CURRICULUM_KEYS}
    trainer = dict(rest.get("trainer") or {})
    trainer.update(run_dir=str(tmp / "run"), wandb=None, enable_progress_bar=False, enable_model_summary=False)
    if device is not None:
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
        raise PreflightError(f"{names}: building the model / datamodule failed: {type(err).__name__}: {err}") from err
    stages: list[Any] = []
    if stage_dicts:
        for i, item in enumerate(stage_dicts):
            try:
                stages.append(StageSpec(**item))
            except (TypeError, ValueError) as err:
                name = item.get("name", i) if isinstance(item, dict) else i
                raise ConfigError(f"{names}: stages[{i}] ({name}): {err}") from err
    return Built(cli, cli.model, cli.datamodule, cli.trainer, stages, bool(stage_dicts), files, raw, weights)


def datamodule_modules(datamodule: Any) -> list[Any]:
    """``nn.Module`` attributes of the datamodule (a ``frozen:`` part, a feature backbone)."""
    import torch

    found, seen = [], set()
    for value in vars(datamodule).values() if datamodule is not None else []:
        if isinstance(value, torch.nn.Module) and id(value) not in seen:
            seen.add(id(value))
            found.append(value)
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
    switches = {k: getattr(base, k) for k in ("compile", "channels_last", "loader") if hasattr(base, k)}
    kwargs.update({k: v for k, v in switches.items() if k not in kwargs})
    return LitTrainer(run_dir=str(root), wandb=None, health=base.health_policy, health_steps=base.health_steps,
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


def run_steps(built: Built, root: Path, steps: int, cuda: bool, cap_bytes: int | None) -> tuple[Any, str | None]:
    """One shortened ``fit`` of the current stage; ``(probe, None)`` or ``(probe, "oom: ...")``."""
    probe = _probe_class()(cuda, cap_bytes, datamodule_modules(built.datamodule))
    trainer = _stage_trainer(built.base, probe, root, steps)
    # the probe's hooks run first: its step window closes before TrainingHealth inspects the first steps (a one-off
    # cost of the first `health_steps` batches, left out of the step time, the FLOPs and the memory)
    trainer.callbacks.remove(probe)
    trainer.callbacks.insert(0, probe)
    try:
        trainer.fit(built.model, datamodule=built.datamodule)
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):
            raise
        if is_out_of_memory(err):
            _cleanup(built.model)
            return probe, f"out of memory: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise
    return probe, None


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
    row.update(val_pass_s=val_pass, val_runs=runs,
               stage_s=(batches * per_batch + runs * (val_pass or 0.0)) if batches else None)
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


def measure_stage(built: Built, index: int, stage: Any, defaults: dict[str, Any], root: Path, steps: int, cuda: bool,
                  cap_bytes: int | None, card: dict[str, Any] | None, utilisation: float) -> dict[str, Any]:
    """Enter the stage as the curriculum does, run its steps, and measure (one row of the table)."""
    import lightning as L

    from ..core.seeding import mark_run_seed

    seed = built.base.seed
    L.seed_everything(seed + index, workers=True, verbose=False)
    mark_run_seed(seed, seed + index)
    if built.curriculum:
        built.model.set_stage(stage, in_curriculum=True)
        for key, value in {**defaults, **stage.data}.items():
            setattr(built.datamodule, key, value)
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
    """The median of the steps after the first (the warm-up), or the first when it is the only one."""
    rest = sorted(values[1:]) or values[:1]
    return rest[len(rest) // 2] if rest else None


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


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "cpu"


def _measure(built: Built, tmp: Path, steps: int, cuda: bool, cap_bytes: int | None, card: dict[str, Any] | None,
             utilisation: float) -> dict[str, Any]:
    from ..core.curriculum import data_defaults, validate_plan
    from ..core.lazy import lazy_build, uninitialized_names

    model, dm = built.model, built.datamodule
    if built.curriculum:
        try:
            validate_plan(model, built.stages, None)
            defaults = data_defaults(dm, built.stages)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{' + '.join(map(str, built.files))}: {err}") from err
    else:
        defaults, built.stages = {}, [model.stage]
    start = time.perf_counter()
    if dm is not None and hasattr(dm, "example_batch"):
        lazy_build(model, dm.example_batch())
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


# ---------------------------------------------------------------------------------------------- the table
def format_report(report: dict[str, Any]) -> str:
    """The one table (a few header lines, a row per stage, the notes)."""
    card = report.get("card")
    parts = ", ".join(f"{p['part']} {count(p['params'])}" for p in report["parts"])
    lines = [f"preflight: {' + '.join(report['files'])}",
             f"  {report['model']} on {report['device']} ({report['device_name']}, {report['threads']} threads), "
             f"precision {report['precision']}, {report['steps']} step(s) per stage; "
             f"parameters {count(report['parameters'])} ({parts})"]
    for w in report["weights"]:
        digest = f" sha256 {w['sha256'][:12]}" if w.get("sha256") else ""
        lines.append(f"  weights {w['key']}: {w['source']}{' ' + w['path'] if w.get('path') else ''}{digest}")
    for c in report.get("caches_built_in_temp", []):
        what = c.get("cache") or c.get("standin")
        took = f" in {seconds(c['seconds'])}" if c.get("seconds") is not None else ""
        lines.append(f"  not on disk, built in a temporary folder{took} (a real run builds it once): {what}")
    head = ["stage", "trainable", "frozen", "batch", "data/batch", "step", "input-bound", "peak mem", "FLOPs/step",
            "batches/ep", "epoch", "stage time"]
    if card:
        head += [f"{card['name']} step@{int(report['utilisation'] * 100)}%", f"fits {card['memory_gb']:.0f}GB"]
    table = [head]
    for r in report["stages"]:
        if "step_s" not in r or r.get("step_s") is None:
            table.append([r["stage"], count(r.get("trainable_params")), count(r.get("frozen_params")),
                          str(r.get("configured_batch_size") or "-"), "-", "-", "-", gib(r.get("peak_bytes")), "-",
                          "-", "-", "FAILS"] + (["-", "-"] if card else []))
            continue
        row = [r["stage"], count(r["trainable_params"]), count(r["frozen_params"]), str(r["batch_size"]),
               seconds(r["data_s"]), seconds(r["step_s"]), "yes" if r.get("input_bound") else "no",
               gib(r["peak_bytes"]), count(r["flops_per_step"]), str(r.get("steps_per_epoch") or "-"),
               seconds(r.get("epoch_s")), seconds(r.get("stage_s")) if r["ok"] else "FAILS"]
        if card:
            c = r.get("card") or {}
            fits = {True: "yes", False: "NO", None: "-"}[c.get("fits")]
            row += [seconds(c.get("step_s")) + (" (input-bound)" if c.get("input_bound") else ""), fits]
        table.append(row)
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for i, row in enumerate(table):
        lines.append("  " + "  ".join(str(v).ljust(w) if j == 0 else str(v).rjust(w)
                                      for j, (v, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    for r in report["stages"]:
        if r.get("batch"):
            lines.append(f"  {r['stage']}: batch {r['batch']}; eval batch {seconds(r.get('eval_batch_s'))}, "
                         f"val pass {seconds(r.get('val_pass_s'))} x {r.get('val_runs', 0)}; peak RSS "
                         f"{gib(r.get('rss_bytes'))}; optimizer {r.get('optimizer')}")
        if r.get("error"):
            lines.append(f"  {r['stage']}: WILL NOT RUN: {r['error']}")
    lines.append(f"  peak mem: {'CUDA max_memory_allocated' if report['device'] == 'cuda' else 'live tensor bytes of the first step (CPU)'}"
                 f"; projections: measured step + data wait per batch x batches (+ validation passes)"
                 + (f"; {card['name']}: FLOPs / ({card['bf16_tflops']} TFLOPS x {report['utilisation']}) but at least "
                    f"{LAUNCH_S * 1e6:.0f}us per operator, fits when "
                    f"peak x {CUDA_SLACK} + {CUDA_OVERHEAD_GB} GB <= {card['memory_gb']} GB" if card and card.get("bf16_tflops") else ""))
    lines.append(f"  {'ok' if report['ok'] else 'NOT OK'}: {report['json']} ({seconds(report['wall_s'])})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lit-exp preflight", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Options not listed here (--trainer.X, --model.init_args.X, --data.init_args.X) "
                                       "go to the config parser, as with `lit-exp curriculum`.")
    p.add_argument("-c", "--config", action="append", required=True, help="config YAML (repeatable, composed in order)")
    p.add_argument("--steps", type=int, default=2, help="training batches per stage (the first is the warm-up)")
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
