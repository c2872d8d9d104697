"""`lit-exp export`: export the parts a study names (torch.export or ONNX) and check each against eager (F43).

    lit-exp export -c configs/distill/ab_baseline.yaml --ckpt RUN/stages/01_decoder/final.ckpt --format onnx
    lit-exp export -c RUN/config.yaml --ckpt init --format torch_export --parts image_encoder --out exports/

The study says what is exported through ``StudyModule.export_parts(batch) -> {name: ExportPart}`` (plain-tensor
modules, example inputs, post-processing kept outside the graph). For every part, ``--out`` (default
``<run_dir>/export/<format>``, or ``runs/export/<config>/<format>`` for ``--ckpt init``) receives:

* ``<name>.onnx`` (+ ``<name>.onnx.data``, ONNX through the dynamo exporter) or ``<name>.pt2``
  (``torch.export.save``);
* ``<name>.inputs.pt``: the reference inputs (``{input name: tensor}``, taken from the first batch of the
  ``--split``) and ``<name>.reference.pt``: the eager outputs on them (``{output name: tensor}``), so any other
  backend (FP16, INT8, TensorRT...) can be checked against the same numbers;
* ``<name>.parity.json``: the export run in its own runtime (ONNX Runtime / ``torch.export.load``) on the saved
  inputs vs eager: ``max_abs_err``, ``max_rel_err`` (= max abs error / max ``|eager|`` of that output),
  ``tolerance``, ``passed``, ``inputs`` (names, shapes, dtypes), ``outputs`` (the same per output) and, for a part
  with a dynamic batch dimension, the same check at another batch size (``dynamic_batch``).

``export.json`` lists the parts. A part whose ``max_abs_err`` exceeds ``--tolerance`` (default 1e-4) is an error
after every part was checked (exit code 1); its parity file says ``passed: false``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import ConfigError, LitExpError
from .build import default_out, load_study, reference_batch

FORMATS = {"onnx": ".onnx", "torch_export": ".pt2"}
DEFAULT_TOLERANCE = 1e-4


class ParityError(LitExpError):
    """An exported part whose outputs differ from eager by more than the stated tolerance (F43)."""


@dataclass
class ExportPart:
    """One exportable part of a study.

    Args:
        module: the part (plain tensors in, a tensor / tuple / dict of tensors out); put in eval mode.
        args: example inputs, in ``forward`` order (tensors).
        input_names: one name per ``args`` entry (ONNX input names, keys of ``<name>.inputs.pt``).
        output_names: one name per output tensor, in the order the part returns them (dict: its keys).
        dynamic_batch: input names whose dim 0 is a dynamic batch dimension (all share one symbol).
        postprocess: what runs on the outputs outside the graph (recorded by name; not exported).
    """

    module: nn.Module
    args: tuple[Tensor, ...]
    input_names: Sequence[str]
    output_names: Sequence[str]
    dynamic_batch: Sequence[str] = ()
    postprocess: Callable[..., Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.args = tuple(self.args)
        if len(self.args) != len(self.input_names):
            raise ConfigError(f"ExportPart: {len(self.args)} args but input_names {list(self.input_names)}")
        unknown = sorted(set(self.dynamic_batch) - set(self.input_names))
        if unknown:
            raise ConfigError(f"ExportPart: dynamic_batch {unknown} are not input names {list(self.input_names)}")
        self.module.eval()

    def inputs(self) -> dict[str, Tensor]:
        return dict(zip(self.input_names, self.args))

    def postprocess_name(self) -> str | None:
        fn = getattr(self.postprocess, "func", self.postprocess)  # functools.partial
        return None if fn is None else f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"


# ---------------------------------------------------------------------- running parts and exports
def flatten_outputs(out: Any, names: Sequence[str]) -> list[Tensor]:
    """A part's outputs as a list in ``names`` order (a dict is read by key, a tuple / list by position)."""
    if isinstance(out, dict):
        missing = [n for n in names if n not in out]
        return [out[n] for n in names] if not missing else list(out.values())
    if isinstance(out, (tuple, list)):
        return list(out)
    return [out]


def eager_outputs(part: ExportPart, inputs: dict[str, Tensor]) -> list[Tensor]:
    with torch.no_grad():
        return flatten_outputs(part.module.eval()(*[inputs[n] for n in part.input_names]), part.output_names)


def require_onnx() -> None:
    """A ConfigError naming what is missing when the ONNX exporter or ONNX Runtime cannot be imported."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError as err:
            missing.append(f"{name} ({err})")
    if missing:
        raise ConfigError(f"--format onnx needs onnx, onnxscript and onnxruntime; not importable: "
                          f"{', '.join(missing)}. Install them (pip install onnx onnxscript onnxruntime) or use "
                          "--format torch_export")


def _dynamic_shapes(part: ExportPart) -> tuple[dict[int, Any] | None, ...] | None:
    if not part.dynamic_batch:
        return None
    batch = torch.export.Dim("batch", min=1)
    return tuple({0: batch} if n in part.dynamic_batch else None for n in part.input_names)


def export_part(part: ExportPart, path: Path, fmt: str) -> Path:
    """Write ``part`` to ``path`` as ONNX (dynamo exporter) or a torch.export program (``.pt2``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        require_onnx()
        folding = logging.getLogger("onnxscript.optimizer._constant_folding")  # "Skipping constant folding ..."
        level = folding.level
        folding.setLevel(logging.ERROR)  # notes of the graph optimiser; the parity check says what matters
        try:
            with warnings.catch_warnings():  # every dynamic input shares the one `batch` symbol, on purpose
                warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
                torch.onnx.export(part.module, part.args, str(path), dynamo=True, verbose=False,
                                  input_names=list(part.input_names), output_names=list(part.output_names),
                                  dynamic_shapes=_dynamic_shapes(part))
        finally:
            folding.setLevel(level)
    elif fmt == "torch_export":
        program = torch.export.export(part.module, part.args, dynamic_shapes=_dynamic_shapes(part))
        torch.export.save(program, str(path))
    else:
        raise ConfigError(f"--format {fmt!r}; expected one of {sorted(FORMATS)}")
    return path


def run_export(path: Path, fmt: str, inputs: dict[str, Tensor], input_names: Sequence[str],
               output_names: Sequence[str]) -> list[Tensor]:
    """Run an exported file in its own runtime (ONNX Runtime on CPU / ``torch.export.load``) on ``inputs``."""
    if fmt == "onnx":
        require_onnx()
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        wanted = [i.name for i in session.get_inputs()]
        missing = [n for n in wanted if n not in inputs]
        if missing:
            raise ParityError(f"{path}: the ONNX graph wants inputs {missing} that the reference inputs lack "
                              f"({sorted(inputs)})")
        outs = session.run(None, {n: inputs[n].detach().cpu().numpy() for n in wanted})
        return [torch.from_numpy(o) for o in outs]
    program = torch.export.load(str(path))
    with torch.no_grad():
        return flatten_outputs(program.module()(*[inputs[n] for n in input_names]), output_names)


# ---------------------------------------------------------------------- the parity check (F43)
def compare(eager: Sequence[Tensor], got: Sequence[Tensor], names: Sequence[str]) -> dict[str, Any]:
    """Max abs / relative error per output and over all outputs. ``max_rel_err`` = max abs error / max
    ``|eager|`` of the output; a shape mismatch or a NaN where eager has none counts as an infinite error."""
    per: dict[str, Any] = {}
    for i, name in enumerate(names):
        e = eager[i] if i < len(eager) else None
        g = got[i] if i < len(got) else None
        if e is None or g is None or tuple(e.shape) != tuple(g.shape):
            per[name] = {"shape": list(e.shape) if e is not None else None,
                         "export_shape": list(g.shape) if g is not None else None,
                         "max_abs_err": float("inf"), "max_rel_err": float("inf")}
            continue
        e64, g64 = e.detach().double().cpu(), g.detach().double().cpu()
        diff = (g64 - e64).abs()
        diff = torch.where(torch.isnan(e64) & torch.isnan(g64), torch.zeros_like(diff), diff)
        diff = torch.nan_to_num(diff, nan=float("inf"))
        err = float(diff.max()) if diff.numel() else 0.0
        scale = float(torch.nan_to_num(e64.abs(), nan=0.0).max()) if e64.numel() else 0.0
        per[name] = {"shape": list(e.shape), "dtype": str(e.dtype).replace("torch.", ""), "max_abs_err": err,
                     "max_rel_err": err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))}
    if len(got) != len(names):
        per["_count"] = {"expected": len(names), "export": len(got), "max_abs_err": float("inf"),
                         "max_rel_err": float("inf")}
    return {"max_abs_err": max((v["max_abs_err"] for v in per.values()), default=0.0),
            "max_rel_err": max((v["max_rel_err"] for v in per.values()), default=0.0), "outputs": per}


def _grow_batch(part: ExportPart, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inputs with one more row in every dynamic-batch input (the first row repeated)."""
    return {n: torch.cat([t, t[:1]]) if n in part.dynamic_batch else t for n, t in inputs.items()}


def _describe(inputs: dict[str, Tensor]) -> list[dict[str, Any]]:
    return [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")} for n, t in
            inputs.items()]


def check_parity(path: Path, fmt: str, part: ExportPart, tolerance: float = DEFAULT_TOLERANCE,
                 inputs_path: Path | None = None, raise_on_failure: bool = True) -> dict[str, Any]:
    """Run the export at ``path`` on the saved reference inputs (``<name>.inputs.pt`` beside it) and compare it
    with the eager part; write ``<name>.parity.json`` beside it; raise :class:`ParityError` over ``tolerance``."""
    path = Path(path)
    inputs_path = inputs_path or path.with_suffix(".inputs.pt")
    inputs = torch.load(inputs_path, map_location="cpu", weights_only=True)
    report: dict[str, Any] = {"file": path.name, "format": fmt, "tolerance": float(tolerance),
                              "inputs": _describe(inputs), "reference_inputs": inputs_path.name}
    report.update(compare(eager_outputs(part, inputs), run_export(path, fmt, inputs, part.input_names,
                                                                  part.output_names), part.output_names))
    worst = report["max_abs_err"]
    if part.dynamic_batch:
        grown = _grow_batch(part, inputs)
        other = compare(eager_outputs(part, grown), run_export(path, fmt, grown, part.input_names,
                                                               part.output_names), part.output_names)
        n = int(next(grown[k] for k in part.dynamic_batch).shape[0])
        report["dynamic_batch"] = {"inputs": list(part.dynamic_batch), "batch": n,
                                   "max_abs_err": other["max_abs_err"], "max_rel_err": other["max_rel_err"]}
        worst = max(worst, other["max_abs_err"])
    report["passed"] = bool(worst <= tolerance)
    report["postprocess"] = part.postprocess_name()
    parity_path = path.with_suffix(".parity.json")
    parity_path.write_text(json.dumps(report, indent=1))
    if raise_on_failure and not report["passed"]:
        raise ParityError(parity_failure(path, report))
    return report


def parity_failure(path: Path, report: dict[str, Any]) -> str:
    bad = sorted(((v["max_abs_err"], k) for k, v in report["outputs"].items()), reverse=True)[0]
    extra = "" if "dynamic_batch" not in report else (f"; at batch {report['dynamic_batch']['batch']}: "
                                                      f"{report['dynamic_batch']['max_abs_err']:.3g}")
    return (f"{path}: the export differs from eager by max abs {report['max_abs_err']:.3g} > tolerance "
            f"{report['tolerance']:.3g} (worst output {bad[1]!r}: {bad[0]:.3g}{extra}; F43); numbers in "
            f"{path.with_suffix('.parity.json')}")


def export_and_check(parts: dict[str, ExportPart], out: Path, fmt: str,
                     tolerance: float = DEFAULT_TOLERANCE,
                     verdicts: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Save the inputs, export, check every part; returns ``{name: parity report}``; raises after all parts
    when one exceeds ``tolerance``. ``verdicts`` (when given) gets each part's verdict as it is reached (``passed``,
    errors, or the export's error), so a failed export still says which parts passed."""
    out.mkdir(parents=True, exist_ok=True)
    reports, failures = {}, []
    verdicts = {} if verdicts is None else verdicts
    for name, part in parts.items():
        path = out / f"{name}{FORMATS[fmt]}"
        inputs = part.inputs()
        torch.save({k: v.detach().cpu() for k, v in inputs.items()}, path.with_suffix(".inputs.pt"))
        torch.save(dict(zip(part.output_names, eager_outputs(part, inputs))), path.with_suffix(".reference.pt"))
        start = time.perf_counter()
        try:
            export_part(part, path, fmt)
        except LitExpError as err:
            verdicts[name] = {"passed": False, "error": str(err).splitlines()[0][:300]}
            raise
        except Exception as err:  # noqa: BLE001 - an export failure names the part and the exporter's first line
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            verdicts[name] = {"passed": False, "error": f"export failed: {type(err).__name__}: {first}"}
            raise LitExpError(f"part {name!r}: {fmt} export failed: {type(err).__name__}: {first} (run with "
                              "--debug for the exporter's full message)") from err
        seconds = time.perf_counter() - start
        report = check_parity(path, fmt, part, tolerance, raise_on_failure=False)
        report["export_seconds"] = round(seconds, 3)
        path.with_suffix(".parity.json").write_text(json.dumps(report, indent=1))
        reports[name] = report
        verdicts[name] = {k: report[k] for k in ("passed", "max_abs_err", "max_rel_err") if k in report}
        state = "ok" if report["passed"] else "FAILED"
        print(f"{name}: {path} max_abs_err {report['max_abs_err']:.3g} max_rel_err {report['max_rel_err']:.3g} "
              f"(tolerance {tolerance:.3g}) {state}", flush=True)
        if not report["passed"]:
            failures.append(parity_failure(path, report))
    if failures:
        raise ParityError("\n".join(failures))
    return reports


# ---------------------------------------------------------------------- the command
def select_parts(parts: dict[str, ExportPart], wanted: str | None, study: str) -> dict[str, ExportPart]:
    if not wanted:
        return parts
    names = [p.strip() for p in wanted.split(",") if p.strip()]
    unknown = [n for n in names if n not in parts]
    if unknown:
        raise ConfigError(f"--parts: {', '.join(map(repr, unknown))} not a part of {study}; its parts: "
                          f"{', '.join(parts)}")
    return {n: parts[n] for n in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lit-exp export", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", action="append", required=True, help="study YAML (repeatable, composed)")
    parser.add_argument("--ckpt", required=True, help="final.ckpt / last.ckpt, or `init` (untrained, on purpose)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="onnx")
    parser.add_argument("--parts", default=None, help="comma-separated part names (default: every part)")
    parser.add_argument("--out", default=None, help="output folder (default <run_dir>/export/<format>)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max abs error vs eager")
    parser.add_argument("--split", choices=("test", "example"), default="test",
                        help="reference inputs: the first test batch, or the datamodule's example batch")
    args = parser.parse_args(argv)
    if args.format == "onnx":
        require_onnx()  # before anything slow
    model, dm, info = load_study(args.config, args.ckpt)
    parts = select_parts(model.export_parts(reference_batch(dm, args.split)), args.parts, type(model).__name__)
    out = Path(args.out) if args.out else default_out(args.config, info, "export") / args.format
    verdicts: dict[str, dict[str, Any]] = {}
    try:
        reports = export_and_check(parts, out, args.format, args.tolerance, verdicts)
    finally:
        not_reached = {"passed": None, "note": "not reached: an earlier part's export failed"}
        manifest = {"config": list(args.config), "ckpt": args.ckpt, "study": type(model).__name__,
                    "format": args.format, "tolerance": args.tolerance,
                    "status": "passed" if len(verdicts) == len(parts) and all(v.get("passed") for v in
                                                                              verdicts.values()) else "failed",
                    "parts": {
                        n: {"file": f"{n}{FORMATS[args.format]}", "inputs": list(p.input_names),
                            "outputs": list(p.output_names), "dynamic_batch": list(p.dynamic_batch),
                            "postprocess": p.postprocess_name(), "verdict": verdicts.get(n, not_reached)}
                        for n, p in parts.items()}}
        out.mkdir(parents=True, exist_ok=True)
        (out / "export.json").write_text(json.dumps(manifest, indent=1))
    worst = max(r["max_abs_err"] for r in reports.values())
    print(f"export: {len(reports)} part(s) -> {out} (worst max_abs_err {worst:.3g} <= {args.tolerance:.3g})")
    return 0
