"""`lit-exp quantize`: headline metrics, CPU latency, size and peak memory of a checkpoint per precision mode.

    lit-exp quantize -c RUN/config.yaml --ckpt RUN/stages/01_decoder/final.ckpt \\
        --mode fp32,fp16,bf16,int8_weight_only,int8_dynamic [--repeats 20] [--threads 2] [--out DIR]

Each mode is a copy of the loaded model, on CPU:

* ``fp32``: as trained (the baseline row; always measured, first).
* ``fp16`` / ``bf16``: parameters and float32 buffers cast (torchmetrics states and float64 buffers kept); a
  forward pre-hook casts each module's floating inputs to its parameters' dtype and the model's outputs are cast
  back to float32 before the study's metrics (so metrics and post-processing run as in fp32).
* ``int8_weight_only``: torchao ``quantize_(model, Int8WeightOnlyConfig())`` - int8 weights of ``nn.Linear``
  layers (convolutions, embeddings and attention's fused projections stay float).
* ``int8_dynamic``: torchao ``Int8DynamicActivationInt8WeightConfig()`` - int8 weights and per-token dynamically
  quantised int8 activations of ``nn.Linear`` layers.

Per mode: the study's own test loop (``Trainer.test`` on the copy with the config's datamodule) gives the
headline metrics (``headline_metrics`` of the study, else every test metric; ``--metrics`` to choose); latency =
median over ``--repeats`` forwards (``StudyModule.dry_run`` on the first test batch, after a warm-up) / the
batch's samples, at ``--threads`` (``torch.get_num_threads()`` stated); size = the file of ``torch.save`` of the
copy's state dict (``models/<mode>.pt``); peak memory = peak RSS during the mode's test loop and timing, minus the
RSS at its start (sampled in a thread, :class:`~.latency.PeakRSS`). ``--out`` (default ``<run_dir>/quantize``, or
``quantize-2``, ... when that holds an earlier table; the run's own results.json is never rewritten) receives ``quantize.md``, ``quantize.csv`` and ``quantize.json`` (one row per mode: ``mode``, metrics,
``latency_ms``, ``size_mb``, ``peak_mem_mb``, ratios ``latency_ratio`` / ``size_ratio`` and ``<metric>_delta``
against fp32).
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import ConfigError

MODES = ("fp32", "fp16", "bf16", "int8_weight_only", "int8_dynamic")
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------- making the copies
def _is_metric(module: nn.Module) -> bool:
    return any(c.__name__ == "Metric" and c.__module__.startswith("torchmetrics") for c in type(module).__mro__)


def cast_half(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast parameters and float32 buffers to ``dtype`` in place (metrics and float64 buffers kept), cast each
    module's floating inputs to its own dtype and the model's outputs back to float32 (hooks)."""
    from torch.utils._pytree import tree_map_only

    def to(dt: torch.dtype):
        return lambda t: t.to(dt) if torch.is_floating_point(t) and t.dtype != dt else t

    for module in model.modules():
        if _is_metric(module):
            continue
        for p in module._parameters.values():
            if p is not None and p.dtype == torch.float32:
                p.data = p.data.to(dtype)
        for name, b in module._buffers.items():
            if b is not None and b.dtype == torch.float32:
                module._buffers[name] = b.to(dtype)
        if any(p.dtype == dtype for p in module.parameters(recurse=False)):
            module.register_forward_pre_hook(lambda m, a, k: (tree_map_only(Tensor, to(dtype), a),
                                                              tree_map_only(Tensor, to(dtype), k)), with_kwargs=True)
    model.register_forward_hook(lambda m, a, out: tree_map_only(Tensor, to(torch.float32), out))
    return model


def quantize_model(model: nn.Module, mode: str) -> nn.Module:
    """``model`` (in place) in ``mode`` (see the module docstring); returns it in eval mode."""
    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r}; expected some of {', '.join(MODES)}")
    model.eval()
    if mode in HALF:
        return cast_half(model, HALF[mode])
    if mode.startswith("int8"):
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )

        config = Int8WeightOnlyConfig() if mode == "int8_weight_only" else Int8DynamicActivationInt8WeightConfig()
        quantize_(model, config)
    return model


# ---------------------------------------------------------------------- measuring one mode
def batch_size(batch: Any) -> int:
    """The number of samples of ``batch``: the leading dim of ``image`` / ``images`` / the first tensor."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        for key in ("image", "images", *batch):
            if isinstance(batch.get(key), Tensor):
                return int(batch[key].shape[0])
    if isinstance(batch, (list, tuple)) and batch:
        return batch_size(batch[0])
    return 1


def run_test(model: nn.Module, dm: Any, root: Path, limit: float | int | None) -> dict[str, float]:
    """The study's own test loop on ``model`` (CPU, no logger): the logged test metrics."""
    import lightning as L

    from ..core.loggers import silence_lightning_tips

    silence_lightning_tips()  # a plain Trainer here: the pytree deprecation notice, once per mode, is no one's to act on
    quiet = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.WARNING)  # no "GPU available" banner per mode
    try:
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root),
                            limit_test_batches=limit if limit is not None else 1.0)
        results = trainer.test(model, datamodule=dm, verbose=False)
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


def measure_mode(model: nn.Module, mode: str, dm: Any, batch: Any, out: Path, repeats: int,
                 limit: float | int | None) -> dict[str, Any]:
    from .latency import PeakRSS, file_mb, measure_latency

    start = time.perf_counter()
    with PeakRSS() as mem:
        q = quantize_model(copy.deepcopy(model), mode)
        metrics = run_test(q, dm, out / "runs" / mode, limit)
        q.eval()
        timing = measure_latency(lambda: q.dry_run(batch), per=batch_size(batch), repeats=repeats)
    path = out / "models" / f"{mode}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(q.state_dict(), path)
    return {"mode": mode, "metrics": metrics, "latency_ms": timing["per_item_ms"], "batch_ms": timing["median_ms"],
            "size_mb": file_mb(path), "peak_mem_mb": mem.delta_mb, "peak_rss_mb": mem.peak_mb,
            "threads": timing["threads"], "seconds": time.perf_counter() - start, "memory_source": mem.source}


def table_rows(measured: list[dict[str, Any]], names: list[str] | None) -> tuple[list[dict[str, Any]], list[str]]:
    """One flat row per mode with the chosen metrics, ratios and deltas against the first (fp32) row."""
    base = measured[0]
    headline = names or [m for m in base.get("headline", []) if m in base["metrics"]] or sorted(base["metrics"])
    rows = []
    for m in measured:
        row: dict[str, Any] = {"mode": m["mode"]}
        for name in headline:
            value, ref = m["metrics"].get(name), base["metrics"].get(name)
            row[name] = value
            row[f"{name}_delta"] = None if value is None or ref is None else value - ref
        row.update(latency_ms=m["latency_ms"], latency_ratio=m["latency_ms"] / base["latency_ms"],
                   size_mb=m["size_mb"], size_ratio=m["size_mb"] / base["size_mb"], peak_mem_mb=m["peak_mem_mb"],
                   peak_rss_mb=m["peak_rss_mb"], batch_ms=m["batch_ms"], threads=m["threads"])
        rows.append(row)
    return rows, headline


def write_tables(rows: list[dict[str, Any]], headline: list[str], out: Path, meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0])
    with (out / "quantize.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (out / "quantize.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    shown = ["mode", *[c for n in headline for c in (n, f"{n}_delta")], "latency_ms", "latency_ratio", "size_mb",
             "size_ratio", "peak_mem_mb"]
    lines = ["# Quantisation", "", f"Config {' + '.join(meta['config'])}, checkpoint {meta['ckpt']}. "
             f"{meta['latency']}. {meta['size']}. {meta['peak_memory']}. Deltas and ratios against fp32.", "",
             "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        cells = [row["mode"]] + [("-" if row[c] is None else f"{row[c]:+.4f}" if c.endswith("_delta")
                                  else f"{row[c]:.4f}") for c in shown[1:-5]]
        cells += [f"{row['latency_ms']:.3f}", f"{row['latency_ratio']:.2f}", f"{row['size_mb']:.3f}",
                  f"{row['size_ratio']:.2f}", f"{row['peak_mem_mb']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "quantize.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------- the command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lit-exp quantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", action="append", required=True, help="study YAML (repeatable, composed)")
    parser.add_argument("--ckpt", required=True, help="final.ckpt / last.ckpt, or `init` (untrained, on purpose)")
    parser.add_argument("--mode", default="fp32,int8_weight_only", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--out", default=None, help="output folder (default <run_dir>/quantize)")
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards per mode (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the whole run")
    parser.add_argument("--metrics", default=None, help="comma-separated metric names (default: the headline)")
    parser.add_argument("--limit_test_batches", type=float, default=None, help="as Trainer's (<= 1: fraction)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ConfigError(f"--mode {args.mode!r}: unknown {unknown or 'empty'}; expected some of {', '.join(MODES)}")
    if args.repeats < 1 or (args.threads is not None and args.threads < 1):
        raise ConfigError(f"--repeats {args.repeats} / --threads {args.threads}: expected >= 1")
    modes = ["fp32"] + [m for m in dict.fromkeys(modes) if m != "fp32"]
    limit = args.limit_test_batches
    limit = int(limit) if limit is not None and limit > 1 else limit
    from .build import default_out, load_study, reference_batch

    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, dm, info = load_study(args.config, args.ckpt)
        out = Path(args.out) if args.out else default_out(args.config, info, "quantize")
        batch = reference_batch(dm, "test")
        measured = []
        for mode in modes:
            m = measure_mode(model, mode, dm, batch, out, args.repeats, limit)
            m["headline"] = list(getattr(model, "headline_metrics", []))
            measured.append(m)
            print(f"{mode}: latency {m['latency_ms']:.3f} ms / sample, size {m['size_mb']:.3f} MB, "
                  f"{len(m['metrics'])} metrics", flush=True)
        names = [n.strip() for n in args.metrics.split(",")] if args.metrics else None
        rows, headline = table_rows(measured, names)
        meta = {"config": list(args.config), "ckpt": args.ckpt, "study": type(model).__name__, "baseline": "fp32",
                "threads": torch.get_num_threads(), "batch_size": batch_size(batch), "repeats": args.repeats,
                "latency": f"latency_ms = median of {args.repeats} forwards (dry_run) of the first test batch of "
                           f"{batch_size(batch)} samples / {batch_size(batch)}, CPU, torch.get_num_threads() = "
                           f"{torch.get_num_threads()}",
                "size": "size_mb = file of torch.save(state_dict) of the mode's copy (models/<mode>.pt)",
                "peak_memory": f"peak_mem_mb = peak RSS during the mode's copy, test loop and timing minus the RSS "
                               f"at its start ({measured[0]['memory_source']})",
                "all_metrics": {m["mode"]: m["metrics"] for m in measured}}
        write_tables(rows, headline, out, meta)  # in its own folder: the run's results.json is a record
    finally:
        torch.set_num_threads(threads)
    print(f"quantize: {len(rows)} modes -> {out / 'quantize.md'}")
    return 0
