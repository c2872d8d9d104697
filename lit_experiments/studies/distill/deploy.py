"""Deployment of the distilled student: its exportable parts and a latency card (teacher vs student variants).

* :func:`export_parts` (``DistillModule.export_parts``, used by ``lit-exp export``): the student's three parts,
  each exported on its own with plain tensors in and out - ``image_encoder`` (images -> features),
  ``text_encoder`` (student ids -> tokens, pooled), ``decoder`` (features, tokens, pooled, padding mask -> the
  output contract). The padding mask (``ids == pad_id``) and the calibrated post-processing
  (:func:`~.evaluation.postprocess` with the stored calibration, F42) stay outside the graphs. Every input has
  a dynamic batch dimension. Units: the batch's images are per (image, prompt) unit, so the decoder's features
  are per unit too (one image prompted twice is encoded twice; a deployment caches its features).
* :func:`latency_card`: teacher, student fp32, student int8 weight-only (torchao) and the student's ONNX export
  run by ONNX Runtime, measured in one process on one batch: latency per unit (median), size, a metric.
"""
from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from lit_experiments.deploy.export import ExportPart, export_and_check
from lit_experiments.deploy.latency import describe_threads, file_mb, measure_latency, state_dict_mb

from .components.student import OUTPUT_KEYS
from .evaluation import postprocess

Predict = Callable[[dict], dict[str, torch.Tensor]]
CARD_ROWS = ("teacher", "student_fp32", "student_int8_weight_only", "student_onnx")


def export_parts(module: Any, batch: dict) -> dict[str, ExportPart]:
    """The student's parts on ``batch`` (``image`` (U, 3, H, W), ``student_input_ids`` (U, L)) as
    :class:`~lit_experiments.deploy.export.ExportPart`; the decoder's example inputs are the encoders' outputs."""
    student = module.student.eval()
    images, ids = batch["image"].cpu(), module.student_ids(batch).cpu()
    with torch.no_grad():
        features = student.encode_image(images)
        tokens, pooled, pad = student.encode_text(ids)
    size = tuple(images.shape[-2:])
    calibration = getattr(module, "calibration", None)
    kwargs = calibration.postprocess_kwargs() if calibration is not None else {}
    return {
        "image_encoder": ExportPart(student.image_encoder, (images,), ["images"], ["image_features"],
                                    dynamic_batch=["images"]),
        "text_encoder": ExportPart(student.text_encoder, (ids,), ["student_input_ids"], ["text_tokens",
                                                                                          "text_pooled"],
                                   dynamic_batch=["student_input_ids"]),
        "decoder": ExportPart(student.decoder, (features, tokens, pooled, pad),
                              ["image_features", "text_tokens", "text_pooled", "text_padding_mask"], list(OUTPUT_KEYS),
                              dynamic_batch=["image_features", "text_tokens", "text_pooled", "text_padding_mask"],
                              postprocess=functools.partial(postprocess, size=size, **kwargs)),
    }


def onnx_predict(folder: Path, pad_id: int) -> Predict:
    """The student as three ONNX Runtime sessions (``image_encoder`` / ``text_encoder`` / ``decoder.onnx`` in
    ``folder``), chained as :class:`~.student.Student` chains its parts; returns the output contract."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sessions = {n: ort.InferenceSession(str(folder / f"{n}.onnx"), opts, providers=["CPUExecutionProvider"])
                for n in ("image_encoder", "text_encoder", "decoder")}

    def predict(batch: dict) -> dict[str, torch.Tensor]:
        ids = batch["student_input_ids"].cpu().numpy()
        (features,) = sessions["image_encoder"].run(None, {"images": batch["image"].cpu().numpy()})
        tokens, pooled = sessions["text_encoder"].run(None, {"student_input_ids": ids})
        outs = sessions["decoder"].run(None, {"image_features": features, "text_tokens": tokens,
                                              "text_pooled": pooled, "text_padding_mask": ids == pad_id})
        return {k: torch.from_numpy(v) for k, v in zip(OUTPUT_KEYS, outs)}

    return predict


def _teacher_predict(teacher: Any) -> Predict:
    def predict(batch: dict) -> dict[str, torch.Tensor]:
        return teacher(images=batch["image"], input_ids=batch["teacher_input_ids"],
                       attention_mask=batch["teacher_attention_mask"])
    return predict


def _student_predict(student: torch.nn.Module) -> Predict:
    def predict(batch: dict) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            out = student(batch["image"], batch["student_input_ids"])
        return {k: out[k] for k in OUTPUT_KEYS}
    return predict


def _metric(value: float | Callable[[Predict], float] | None, predict: Predict) -> float | None:
    if value is None:
        return None
    return float(value(predict)) if callable(value) else float(value)


def latency_card(teacher: Any, module: Any, batch: dict, out_dir: str | Path,
                 metrics: Mapping[str, float | Callable[[Predict], float]] | None = None, metric_name: str = "miou",
                 repeats: int = 20, tolerance: float = 1e-4) -> list[dict[str, Any]]:
    """Teacher vs student fp32 vs student int8 weight-only vs the student's ONNX export (ONNX Runtime).

    Args:
        teacher: a :class:`~.teacher.Sam3Teacher` (its ``model``'s state dict gives the size), or None (no row).
        module: the :class:`~.module.DistillModule` whose ``student`` is measured (not modified).
        batch: one collated batch of units (``image``, ``student_input_ids``; ``teacher_input_ids`` /
            ``teacher_attention_mask`` for the teacher row); every row is timed on it.
        out_dir: receives ``latency_card.md`` / ``.json``, the int8 state dict and the ONNX export of the
            student's parts (with their ``parity.json``, checked at ``tolerance``).
        metrics: per row name (``teacher``, ``student_fp32``, ``student_int8_weight_only``, ``student_onnx``)
            the metric value, or a callable ``f(predict) -> float`` where ``predict(batch) -> output contract``
            runs that row's model (e.g. the caller's test loop); rows without an entry get None.
        metric_name: the metric's column name.
        repeats: timed forwards per row (after one warm-up); the latency is the median / units of the batch.

    Returns the rows: ``model``, ``metric_name``, ``metric``, ``latency_ms`` (per unit), ``batch_ms`` (median),
    ``size_mb``, ``latency_ratio`` / ``size_ratio`` (vs ``student_fp32``), ``threads``.
    """
    from lit_experiments.deploy.quantize import quantize_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = dict(metrics or {})
    student = module.student.eval()
    units = int(batch["image"].shape[0])
    int8 = quantize_model(copy.deepcopy(student), "int8_weight_only")
    torch.save(student.state_dict(), out / "student_fp32.pt")
    torch.save(int8.state_dict(), out / "student_int8_weight_only.pt")
    export_and_check(export_parts(module, batch), out / "onnx", "onnx", tolerance)
    onnx_mb = sum(file_mb(p) for p in (out / "onnx").glob("*.onnx*"))
    entries: list[tuple[str, Predict, float]] = []
    if teacher is not None:
        entries.append(("teacher", _teacher_predict(teacher), state_dict_mb(getattr(teacher, "model", teacher))))
    entries += [("student_fp32", _student_predict(student), file_mb(out / "student_fp32.pt")),
                ("student_int8_weight_only", _student_predict(int8), file_mb(out / "student_int8_weight_only.pt")),
                ("student_onnx", onnx_predict(out / "onnx", student.text_encoder.pad_id), onnx_mb)]
    rows = []
    for name, predict, size in entries:
        timing = measure_latency(lambda p=predict: p(batch), per=units, repeats=repeats)
        rows.append({"model": name, "metric_name": metric_name, "metric": _metric(metrics.get(name), predict),
                     "latency_ms": timing["per_item_ms"], "batch_ms": timing["median_ms"], "size_mb": size,
                     "threads": timing["threads"]})
    base = next(r for r in rows if r["model"] == "student_fp32")
    for r in rows:
        r["latency_ratio"] = r["latency_ms"] / base["latency_ms"] if base["latency_ms"] else None
        r["size_ratio"] = r["size_mb"] / base["size_mb"] if base["size_mb"] else None
    note = (f"latency per unit = median of {repeats} forwards of one batch of {units} (image, prompt) units / "
            f"{units}, {describe_threads()}; sizes: state dicts saved with torch.save (teacher: in memory), ONNX: "
            "the .onnx files and their external data")
    (out / "latency_card.json").write_text(json.dumps({"rows": rows, "note": note}, indent=1))
    head = f"| model | {metric_name} | latency ms / unit | x fp32 | size MB | x fp32 |"
    lines = ["# Latency card", "", note, "", head, "|---|---|---|---|---|---|"]
    for r in rows:
        metric = "-" if r["metric"] is None else f"{r['metric']:.4f}"
        lines.append(f"| {r['model']} | {metric} | {r['latency_ms']:.3f} | {r['latency_ratio']:.2f} | "
                     f"{r['size_mb']:.2f} | {r['size_ratio']:.2f} |")
    (out / "latency_card.md").write_text("\n".join(lines) + "\n")
    return rows
