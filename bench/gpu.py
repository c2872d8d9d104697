"""The GPU check in one command (issue 24, item 4): every seed config preflighted on this machine, one table.

    make bench-gpu                                   # a machine with a GPU: bench/out/gpu.md
    make bench-gpu ARGS="--device cpu --quick"       # this CPU, the demo configs (tiny), a few minutes
    python bench/gpu.py [--device cuda|cpu] [--quick] [--steps N] [--gpu rtx5080] [--only slots,retrieval]

On a GPU: writes ShapesWorld in each seed config's on-disk format at its real resolution (``lit-exp data shapes``),
rewrites each seed config to read it with random weights (every ``pretrained: true`` -> ``false``, every data
``root:`` -> the written folder; a weight a config names by hub id, e.g. a transformers checkpoint, is used from the
local hub cache when it is there and the row says why not otherwise), then runs ``lit-exp preflight`` on it in
bf16-mixed, once as configured and once with ``--trainer.compile true``: throughput (images / s = batch / step
time), peak CUDA memory, the data-loading share of a batch, FLOPs per step, and the RTX 5080 projection. With more
than one GPU, a 2-GPU DDP run of the first config that ran gives its throughput. ``--quick`` uses the toy and the
demo configs as they are (compiled: the toy only on a CPU, where inductor compiles for minutes).

Each preflight runs in its own process (a crash or an out-of-memory stays in its row; ``--timeout`` per run).
Writes ``bench/out/gpu.md`` (the table) and ``bench/out/gpu.json`` (every preflight's numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MOVI = ["--image-size", "256", "--num-frames", "24"]
#: seed configs: (name, config, data format, [(sub-folder, `lit-exp data shapes` arguments)] at the real resolution)
SEEDS: list[tuple[str, str, str | None, list[tuple[str, list[str]]]]] = [
    ("slots", "configs/slots/_base_movi.yaml", "movi", [("train", ["--n", "16", *MOVI]),
                                                         ("validation", ["--n", "8", "--seed", "1", *MOVI])]),
    ("retrieval", "configs/retrieval/seed_resnet18.yaml", "frames",
     [("", ["--n", "24", "--image-size", "256", "--num-frames", "8"])]),
    ("multilabel", "configs/multilabel/seed_siglip2.yaml", "coco", [("", ["--n", "64", "--image-size", "256"])]),
    ("multilabel-naflex", "configs/multilabel/seed_siglip2_naflex.yaml", "coco",
     [("", ["--n", "64", "--image-size", "256"])]),
    ("distill", "configs/distill/seed_sam3.yaml", "coco", [("", ["--n", "32", "--image-size", "1008"])]),
    ("satipatthana", "configs/satipatthana/v41.yaml", None, []),
]
QUICK = [("toy", "configs/toy/curriculum.yaml"), ("slots", "configs/slots/demo.yaml"),
         ("retrieval", "configs/retrieval/demo.yaml"), ("multilabel", "configs/multilabel/demo.yaml"),
         ("distill", "configs/distill/demo.yaml"), ("satipatthana", "configs/satipatthana/demo.yaml")]


def lit_exp(args: list[str], timeout: float, log: Path) -> tuple[int, float]:
    """``python -m lit_experiments ARGS`` in a child process, output to ``log``; (exit code, seconds)."""
    start = time.perf_counter()
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        try:
            code = subprocess.run([sys.executable, "-m", "lit_experiments", *args], cwd=ROOT, stdout=fh,
                                  stderr=subprocess.STDOUT, timeout=timeout, env=env).returncode
        except subprocess.TimeoutExpired:
            fh.write(f"\nbench/gpu.py: timed out after {timeout:.0f}s\n")
            code = 124
    return code, time.perf_counter() - start


def last_error(log: Path) -> str:
    """The line of a run's log that says what went wrong (a wrapped constructor error: the constructor's own)."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    for i, ln in enumerate(lines):
        if ln.startswith("lit-exp: error:") or "WILL NOT RUN" in ln:
            inner = next((x for x in lines[i + 1:] if x.startswith("- ")), None)
            text = inner[2:] if inner else ln.split("error:", 1)[-1].strip()
            if text.endswith(":") and i + 1 < len(lines):  # the message goes on on the next line
                text += " " + lines[i + 1]
            return text[:240]
    return (lines[-1][:200] if lines else "no output")


def seed_config(config: str, data: Path | None, out: Path) -> Path:
    """The seed config composed, with random weights and its data roots pointed at ``data``."""
    import yaml

    from lit_experiments.core.configs import load_composed

    raw = load_composed(ROOT / config)

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            out_node = {}
            for key, value in node.items():
                if key == "pretrained" and value is True:
                    value = False
                elif key == "root" and isinstance(value, str) and data is not None:
                    value = str(data)
                out_node[key] = visit(value)
            return out_node
        if isinstance(node, list):
            return [visit(v) for v in node]
        return node

    path = out / "configs" / f"{Path(config).stem}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(visit(raw), sort_keys=False))
    return path


def rows_of(name: str, variant: str, report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for s in report.get("stages", []):
        step, data = s.get("step_s"), s.get("data_s")
        batch = s.get("batch_size")
        card = s.get("card") or {}
        rows.append({
            "config": name, "variant": variant, "stage": s["stage"], "ok": s["ok"], "error": s.get("error"),
            "params": report.get("parameters"), "trainable": s.get("trainable_params"), "batch": batch,
            "images_s": batch / step if step and batch else None, "step_s": step, "data_s": data,
            "data_share": data / (data + step) if step and data is not None else None,
            "peak_bytes": s.get("peak_bytes"), "flops": s.get("flops_per_step"),
            "card_step_s": card.get("step_s"), "card_fits": card.get("fits"),
            "largest_batch": s.get("largest_batch")})
    return rows


def fmt(value: Any, kind: str) -> str:
    from lit_experiments.experiments.preflight_report import count, gib, seconds

    if value is None:
        return "-"
    return {"n": count, "b": gib, "s": seconds, "%": lambda v: f"{100 * v:.0f}%",
            "r": lambda v: f"{v:.1f}", "y": lambda v: "yes" if v else "NO"}[kind](value)


def table(rows: list[dict[str, Any]], head: list[str]) -> str:
    cols = [("config", "config", None), ("variant", "variant", None), ("stage", "stage", None),
            ("params", "params", "n"), ("batch", "batch", None), ("images/s", "images_s", "r"),
            ("step", "step_s", "s"), ("data share", "data_share", "%"), ("peak mem", "peak_bytes", "b"),
            ("FLOPs/step", "flops", "n"), ("RTX 5080 step@40%", "card_step_s", "s"), ("fits 16 GB", "card_fits", "y")]
    lines = head + ["", "| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if not r.get("ok") and r.get("images_s") is None:
            text = r.get("error") or "failed"
            lines.append(f"| {r['config']} | {r['variant']} | {r.get('stage') or '-'} | "
                         f"FAILS: {text.replace('|', '/')} |" + " |" * (len(cols) - 4))
            continue
        cells = [str(r.get(k)) if kind is None else fmt(r.get(k), kind) for _, k, kind in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when visible")
    p.add_argument("--quick", action="store_true", help="the toy and the demo configs as they are (tiny)")
    p.add_argument("--steps", type=int, default=None, help="training batches per stage (default 6 on a GPU, 2 quick)")
    p.add_argument("--gpu", default="rtx5080", help="card for the projection column (lit-exp preflight --gpu)")
    p.add_argument("--only", default=None, help="comma-separated config names")
    p.add_argument("--timeout", type=float, default=None, help="seconds per preflight (default 240 GPU, 300 CPU)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = p.parse_args(argv)
    import torch

    cuda = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        print("bench/gpu.py: --device cuda but no GPU available", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    out = Path(args.out)
    steps = args.steps or (6 if cuda and not args.quick else 2)
    timeout = args.timeout or (240.0 if cuda else 300.0)
    only = set(args.only.split(",")) if args.only else None
    started = time.perf_counter()
    plan: list[tuple[str, Path, str | None]] = []  # name, config, why it cannot run (None: it can)
    data_s: dict[str, float] = {}
    if args.quick:
        plan = [(n, ROOT / c, None) for n, c in QUICK if only is None or n in only]
    else:
        for name, config, fmt_name, writes in SEEDS:
            if only is not None and name not in only:
                continue
            folder = out / "data" / f"{fmt_name}_{Path(config).stem}" if fmt_name is not None else None
            problem = None
            spec = json.dumps(writes)
            done = folder / ".done" if folder is not None else None
            if done is not None and not (done.exists() and done.read_text() == spec):
                start = time.perf_counter()
                for sub, shape_args in writes:
                    log = out / "logs" / f"data_{name}{'_' + sub if sub else ''}.log"
                    code, _ = lit_exp(["data", "shapes", "--out", str(folder / sub), "--format", fmt_name,
                                       *shape_args], 600.0, log)
                    if code != 0:
                        problem = "data: " + last_error(log)
                        break
                data_s[name] = time.perf_counter() - start
                if problem is None:
                    done.write_text(spec)
            plan.append((name, ROOT / config, problem) if problem else (name, seed_config(config, folder, out), None))
    rows: list[dict[str, Any]] = []
    reports: dict[str, Any] = {}
    for name, config, problem in plan:
        if problem:
            rows.append({"config": name, "variant": "-", "stage": None, "ok": False, "error": problem})
            continue
        variants = [("eager", [])]
        if cuda or name == "toy":
            variants.append(("compiled", ["--trainer.compile", "true"]))
        for variant, extra in variants:
            tag = f"{name}_{variant}"
            pf_out = out / "preflight" / tag
            cmd = ["preflight", "-c", str(config), "--steps", str(steps), "--device", device, "--gpu", args.gpu,
                   "--out", str(pf_out), *(["--precision", "bf16-mixed"] if cuda else []), *extra]
            code, took = lit_exp(cmd, timeout, out / "logs" / f"{tag}.log")
            result = pf_out / "preflight.json"
            fresh = result.exists() and result.stat().st_mtime >= time.time() - took - 1
            if not fresh:
                rows.append({"config": name, "variant": variant, "stage": None, "ok": False,
                             "error": f"exit {code}: " + last_error(out / "logs" / f"{tag}.log")})
                continue
            report = json.loads(result.read_text())
            report["bench_seconds"] = took
            reports[tag] = report
            rows += rows_of(name, variant, report)
            print(f"bench/gpu.py: {tag}: exit {code} in {took:.0f}s", flush=True)
    ddp = None
    if cuda and torch.cuda.device_count() > 1:
        first = next(((n, c) for n, c, prob in plan if not prob and f"{n}_eager" in reports), None)
        if first is not None:
            ddp = run_ddp(first[0], first[1], out, timeout)
    head = [f"# GPU check ({'quick: demo configs' if args.quick else 'seed configs, random weights'})", "",
            f"Device: {torch.cuda.get_device_name() if cuda else 'CPU'} ({device}); torch {torch.__version__}; "
            f"{'bf16-mixed' if cuda else 'each config its own precision'}; {steps} steps per stage (the first is the "
            f"warm-up); {time.strftime('%Y-%m-%d %H:%M')}; the whole check took {time.perf_counter() - started:.0f}s.",
            "images/s = batch / step time (a clip counts as one item); data share = data wait / (data wait + step); "
            "peak mem: CUDA max_memory_allocated on a GPU, live tensor bytes of a step on a CPU; the RTX 5080 "
            "columns project the FLOPs at 40% of 112.6 bf16 TFLOPS (docs/gpu.md)."]
    if data_s:
        head.append("ShapesWorld written: " + ", ".join(f"{k} {v:.0f}s" for k, v in data_s.items()) + ".")
    if not cuda:
        head.append("No GPU available here: the rows are this CPU's; the compiled variant ran for the toy only.")
    if ddp is not None:
        head.append(f"2-GPU DDP ({ddp['config']}): {ddp['text']}.")
    elif cuda:
        head.append("2-GPU DDP: not measured (one GPU visible).")
    text = table(rows, head)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.md").write_text(text + "\n")
    (out / "gpu.json").write_text(json.dumps({"rows": rows, "reports": reports, "ddp": ddp}, indent=2, default=str))
    print(text)
    print(f"\nwrote {out / 'gpu.md'}")
    return 0


def run_ddp(name: str, config: Path, out: Path, timeout: float) -> dict[str, Any]:
    """A short 2-GPU DDP curriculum (20 steps per stage) against the same on 1 GPU: items per second of each."""
    result: dict[str, Any] = {"config": name}
    rates = {}
    for devices in (1, 2):
        log = out / "logs" / f"ddp_{name}_{devices}.log"
        args = ["curriculum", "-c", str(config), "--trainer.devices", str(devices), "--trainer.max_steps", "20",
                "--trainer.precision", "bf16-mixed", "--trainer.run_dir", str(out / "ddp" / f"{name}_{devices}"),
                "--test_after", "false", "--trainer.limit_val_batches", "0"]
        if devices > 1:
            args += ["--trainer.strategy", "ddp"]
        code, took = lit_exp(args, timeout, log)
        rates[devices] = None if code else took
    if rates[1] and rates[2]:
        result["text"] = f"20 steps per stage: 1 GPU {rates[1]:.0f}s, 2 GPUs {rates[2]:.0f}s (wall, start-up included)"
    else:
        result["text"] = "failed: " + last_error(out / "logs" / f"ddp_{name}_2.log")
    result["seconds"] = rates
    return result


if __name__ == "__main__":
    raise SystemExit(main())
