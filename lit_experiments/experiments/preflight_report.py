"""The cards `lit-exp preflight` projects onto, where a run's weights come from, and the printed table."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError

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
#: a GPU step takes at least this long per operator the step runs (views aside): kernel launch and Python dispatch
#: in eager mode, about 5 us on a current CPU (torch.compile / CUDA graphs cut it)
LAUNCH_S = 5e-6

#: config keys whose string value names weights (a file, a folder, or a hub id)
WEIGHT_KEYS = ("pretrained", "weights", "weights_path", "weight_file", "checkpoint", "checkpoint_path", "ckpt",
               "ckpt_path", "pretrained_path", "model_name_or_path")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz", ".pkl", ".h5", ".msgpack")
NOT_WEIGHTS = ("", "random", "none", "false", "null", "scratch")

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


def weight_overrides(overrides: list[str]) -> dict[tuple[str, ...], Any]:
    """The weight keys (:data:`WEIGHT_KEYS`) a command line sets (``--data.init_args.frozen.init_args.pretrained
    PATH`` or ``--key=PATH``), by their dotted path; the value as YAML reads it."""
    import yaml

    found: dict[tuple[str, ...], Any] = {}
    for i, token in enumerate(overrides):
        if not token.startswith("--") or "." not in token:
            continue
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(overrides):
                continue
            value = overrides[i + 1]
        path = tuple(key.split("."))
        if path[-1] in WEIGHT_KEYS:
            try:
                found[path] = yaml.safe_load(value)
            except yaml.YAMLError:
                found[path] = value
    return found


def with_overrides(raw: dict[str, Any], found: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    """A copy of ``raw`` with the command line's weight keys set (what the parser will build)."""
    import copy

    out = copy.deepcopy(raw)
    for path, value in found.items():
        node = out
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return out


def config_weights(raw: dict[str, Any], files: list[Path], overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """Every weight a config key names (and a weight key of the command line ``overrides``), with where it comes
    from; a missing file is a :class:`ConfigError` naming the config file (or the command line) and the key."""
    out = []
    given = weight_overrides(list(overrides or []))
    if given:
        raw = with_overrides(raw, given)
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
            where = f"the command line (--{key})" if path in given else owner_file(files, path)
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
            lines.extend(f"    at {w}" for w in r.get("where") or [])
    lines.append(f"  peak mem: {'CUDA max_memory_allocated' if report['device'] == 'cuda' else 'live tensor bytes of the first step (CPU)'}"
                 f"; projections: measured step + data wait per batch x batches (+ validation passes)"
                 + (f"; {card['name']}: FLOPs / ({card['bf16_tflops']} TFLOPS x {report['utilisation']}) but at least "
                    f"{LAUNCH_S * 1e6:.0f}us per operator, fits when "
                    f"peak x {CUDA_SLACK} + {CUDA_OVERHEAD_GB} GB <= {card['memory_gb']} GB" if card and card.get("bf16_tflops") else ""))
    lines.append(f"  {'ok' if report['ok'] else 'NOT OK'}: {report['json']} ({seconds(report['wall_s'])})")
    return "\n".join(lines)
