"""``lit-exp predict``: what a study's ``predict_step`` returns, written to files in the run's eval directory.

Whatever ``predict_step`` returns (by default ``forward(batch)``: a tensor, a dict or a dataclass such as the
slots study's ``SlotOutput``) is turned into plain dicts of CPU tensors per batch, concatenated along the
batch axis over the epoch and saved as ``predictions.pt`` (``torch.load`` gives ``{field: tensor}``), with
``predictions.json`` listing every field's shape and dtype (a bare tensor is stored as ``{"output": tensor}``). Several dataloaders give ``predictions_<i>.pt``;
under DDP each rank writes its own ``..._rank<r>.pt`` with the sample indices in ``index``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


def to_plain(value: Any) -> Any:
    """Dataclasses -> dicts, tensors -> detached CPU tensors, recursively; other values unchanged."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(to_plain(v) for v in value)
    return value


def collate(batches: list[Any]) -> Any:
    """Per-batch outputs -> one output: tensors concatenated on dim 0 (a list if shapes differ), dicts by key,
    values equal in every batch (e.g. a grid size) kept once, else listed."""
    if not batches:
        return {}
    first = batches[0]
    if isinstance(first, torch.Tensor):
        if all(isinstance(b, torch.Tensor) and b.ndim > 0 and b.shape[1:] == first.shape[1:] for b in batches):
            return torch.cat(batches)
        return list(batches)
    if isinstance(first, dict):
        return {k: collate([b.get(k) for b in batches]) for k in first}
    if all(_equal(b, first) for b in batches[1:]):
        return first
    return list(batches)


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (RuntimeError, ValueError):
        return False


def describe(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"field.sub": {"shape": [...], "dtype": "float32"}}`` for every tensor leaf (other leaves by repr)."""
    if isinstance(value, torch.Tensor):
        return {prefix or "output": {"shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", "")}}
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(describe(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
        return {prefix or "output": {"list_of": len(value), "first_shape": list(value[0].shape)}}
    return {prefix or "output": {"value": repr(value)[:80]}}


class PredictionWriter(BasePredictionWriter):
    """Collects ``predict_step`` outputs as CPU tensors and writes ``predictions.pt`` + ``predictions.json``.

    Args:
        out_dir: the directory the files go to (the eval directory of the run).
    """

    def __init__(self, out_dir: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.written: list[Path] = []
        self._outputs: dict[int, list[Any]] = {}
        self._indices: dict[int, list[Any]] = {}

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._outputs, self._indices, self.written = {}, {}, []

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        self._outputs.setdefault(dataloader_idx, []).append(to_plain(prediction))
        if batch_indices is not None:
            self._indices.setdefault(dataloader_idx, []).append(torch.as_tensor(list(batch_indices)))

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        summary: dict[str, Any] = {}
        many = len(self._outputs) > 1
        for idx, batches in sorted(self._outputs.items()):
            merged = collate(batches)
            name = f"predictions_{idx}" if many else "predictions"
            if not isinstance(merged, dict):
                merged = {"output": merged}
            if trainer.world_size > 1:
                name += f"_rank{trainer.global_rank}"
                if self._indices.get(idx):
                    merged["index"] = torch.cat(self._indices[idx])
            path = self.out_dir / f"{name}.pt"
            torch.save(merged, path)
            self.written.append(path)
            summary[path.name] = {"batches": len(batches), "fields": describe(merged)}
        (self.out_dir / ("predictions.json" if trainer.world_size == 1
                         else f"predictions_rank{trainer.global_rank}.json")).write_text(json.dumps(summary, indent=2))
        self._outputs, self._indices = {}, {}
