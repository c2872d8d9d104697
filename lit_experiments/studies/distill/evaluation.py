"""Evaluation of the distill study: SA-Co metrics, teacher / student table and the two prompt numbers (F26, F46).

* :func:`postprocess`: the output contract -> per unit the *kept* predictions (:class:`UnitPrediction`). Score
  of query ``q`` = ``sigmoid(pred_logits_q / T) * sigmoid(presence_logits / Tp)`` (no presence head: factor 1);
  kept when score >= ``score_threshold``; masks are the mask logits resized bilinearly (``align_corners=False``)
  to ``size`` and binarised at ``sigmoid > mask_threshold`` (as in ``promptable``). A
  :class:`~.calibration.Calibration` supplies ``T``, ``Tp`` and the threshold
  (``postprocess(out, **cal.postprocess_kwargs())``, F42).
* :func:`evaluate_units` / :func:`update_metric`: SA-Co metrics of kept predictions against ground truth through
  :class:`~lit_experiments.metrics.promptable.PromptableSegMetric` (definitions there; negative units count
  at image level, F26). The threshold is applied once, in :func:`postprocess`; the metric gets threshold 0.
* :func:`evaluate_calibrated` (F42): fit a :class:`~.calibration.Calibration` on validation batches only, then
  report test metrics with it (plain keys), at the uncalibrated 0.5 (``raw/``) and the ECE before / after.
* :func:`comparison_table`: teacher, student and ``ratio = student / teacher`` per metric. The ratio is NaN when
  either value is NaN or the teacher's value is <= 0 (0: undefined; negative, e.g. an IL_MCC below chance:
  a ratio would flip its meaning). :func:`write_table` writes it as Markdown and CSV; :func:`write_sections`
  writes several such tables under headings (the test's ``teacher_vs_student.{md,csv}``).
* F46 replaces the seed's single "prompt sensitivity" with two numbers, both "higher is better", both computed
  for any ``score_fn(images uint8 (N, 3, H, W), prompts list[str]) -> output contract`` (teacher or student):

  - :func:`concept_responsiveness` in [-1, 1]: mean over images of (mean unit score for prompts of categories
    present in the image) minus (mean unit score for prompts of absent categories), unit score =
    ``max_q score_q`` (``score="max_query"``) or ``sigmoid(presence / Tp)`` (``score="presence"``). 0 for a model
    that ignores the prompt; > 0 when it responds to the concept.
  - :func:`paraphrase_stability` in [0, 1]: agreement between paraphrases of one concept ("circle", "a circle",
    "round shape") on the same image, averaged over prompt pairs, groups and images. ``mode="mask"``: IoU of the
    units' predicted masks (union of kept predictions; two empty masks agree: IoU 1), i.e. ``1 -``
    :func:`~lit_experiments.metrics.promptable.prompt_sensitivity`; ``mode="score"``: ``1 - |s_a - s_b|`` of
    the unit scores. 1.0 for identical outputs.
"""
from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_experiments.metrics.promptable import PromptableSegMetric, prompt_sensitivity

from .components.calibration import (
    Calibration,
    ThresholdMetric,
    calibration_records,
    cat_records,
    ece,
    fit_calibration,
)
from .components.matching import presence_of

ScoreFn = Callable[[Tensor, list[str]], Mapping[str, Tensor]]
#: the metrics of the teacher / student table (keys of :func:`evaluate_units`)
TABLE_METRICS: tuple[str, ...] = ("miou", "miou_pos", "presence_precision", "presence_recall", "presence_f1",
                                  "il_mcc", "pmf1", "cgf1")


@dataclass
class UnitPrediction:
    """The kept predictions of one unit: ``masks`` (P, H, W) bool, ``scores`` (P,), ``boxes`` (P, 4) normalised
    cxcywh, ``presence`` (0-d, ``sigmoid(presence / Tp)``; None without presence head) and ``unit_score`` (0-d:
    the highest score of all queries, kept or not)."""

    masks: Tensor
    scores: Tensor
    boxes: Tensor
    presence: Tensor | None
    unit_score: Tensor

    def union(self) -> Tensor:
        """(H, W) bool union of the kept masks (all False when nothing is kept)."""
        return self.masks.any(0)


def _check_positive(**values: float) -> None:
    for k, v in values.items():
        if not v > 0:
            raise ValueError(f"{k}={v!r}; expected > 0")


@torch.no_grad()
def query_scores(outputs: Mapping[str, Tensor | None], temperature: float = 1.0,
                 presence_temperature: float = 1.0) -> Tensor:
    """(B, Q) scores ``sigmoid(pred_logits / T) * sigmoid(presence_logits / Tp)`` (see the module docstring)."""
    _check_positive(temperature=temperature, presence_temperature=presence_temperature)
    scores = (outputs["pred_logits"].float() / temperature).sigmoid()
    presence = presence_of(outputs)
    return scores if presence is None else scores * (presence.float() / presence_temperature).sigmoid()[:, None]


@torch.no_grad()
def postprocess(outputs: Mapping[str, Tensor | None], score_threshold: float = 0.5, mask_threshold: float = 0.5,
                temperature: float = 1.0, presence_temperature: float = 1.0,
                size: tuple[int, int] | None = None) -> list[UnitPrediction]:
    """Per unit of the batch the kept predictions (module docstring); ``size``: mask size (default: as predicted)."""
    for key in ("pred_masks", "pred_boxes", "pred_logits"):
        if key not in outputs or outputs[key] is None:
            raise KeyError(f"postprocess: outputs lack {key!r} (output contract: pred_masks, pred_boxes, "
                           f"pred_logits, presence_logits)")
    masks, boxes, logits = outputs["pred_masks"], outputs["pred_boxes"], outputs["pred_logits"]
    if masks.dim() != 4 or boxes.shape != (*logits.shape, 4) or masks.shape[:2] != logits.shape:
        raise ValueError(f"postprocess: pred_masks {tuple(masks.shape)}, pred_boxes {tuple(boxes.shape)}, pred_logits "
                         f"{tuple(logits.shape)}; expected (B, Q, h, w), (B, Q, 4), (B, Q)")
    scores = query_scores(outputs, temperature, presence_temperature)
    presence = presence_of(outputs)
    if size is not None and tuple(size) != tuple(masks.shape[-2:]):
        masks = F.interpolate(masks.float(), size=tuple(size), mode="bilinear", align_corners=False)
    binary = masks.float().sigmoid() > mask_threshold
    out = []
    for b in range(logits.shape[0]):
        keep = scores[b] >= score_threshold
        pres = None if presence is None else (presence[b].float() / presence_temperature).sigmoid()
        out.append(UnitPrediction(binary[b][keep], scores[b][keep], boxes[b][keep].float(), pres, scores[b].max()))
    return out


def _gt_masks(gt: Mapping[str, Tensor] | Tensor, i: int) -> Tensor:
    m = gt["masks"] if isinstance(gt, Mapping) else gt
    if not isinstance(m, Tensor) or m.dim() != 3:
        raise ValueError(f"ground truth {i}: expected masks (n, H, W) (or a dict with 'masks'), got "
                         f"{type(m).__name__} {tuple(m.shape) if isinstance(m, Tensor) else ''}")
    return m


def unit_metric(**kwargs) -> PromptableSegMetric:
    """A :class:`PromptableSegMetric` for post-processed predictions (threshold already applied: 0 here)."""
    return PromptableSegMetric(score_threshold=0.0, **kwargs)


def update_metric(metric: PromptableSegMetric, predictions: Sequence[UnitPrediction],
                  ground_truths: Sequence[Mapping[str, Tensor] | Tensor]) -> None:
    """Feed kept predictions and ground truths (``{"masks": (n, H, W)}`` or the masks) to ``metric`` (use
    :func:`unit_metric`: a metric with its own threshold > 0 would drop calibrated predictions below it)."""
    if metric.score_threshold > 0:
        raise ValueError(f"update_metric: metric.score_threshold={metric.score_threshold}; predictions are already "
                         f"thresholded by postprocess, build the metric with unit_metric()")
    if len(predictions) != len(ground_truths):
        raise ValueError(f"update_metric: {len(predictions)} predictions for {len(ground_truths)} ground truths")
    gts = [_gt_masks(g, i) for i, g in enumerate(ground_truths)]
    metric.update([p.masks for p in predictions], [p.scores for p in predictions], gts)


def evaluate_units(predictions: Sequence[UnitPrediction],
                   ground_truths: Sequence[Mapping[str, Tensor] | Tensor]) -> dict[str, float]:
    """SA-Co metrics (``miou``, ``miou_pos``, ``presence_*``, ``il_mcc``, ``pmf1``, ``cgf1``, counts) of
    :func:`postprocess` outputs; masks must have the ground truth's size (``postprocess(size=...)``)."""
    metric = unit_metric()
    update_metric(metric, predictions, ground_truths)
    return {k: float(v) for k, v in metric.compute().items()}


def comparison_table(teacher_metrics: Mapping[str, float], student_metrics: Mapping[str, float],
                     metrics: Sequence[str] = TABLE_METRICS) -> list[dict[str, float | str]]:
    """Rows ``{"metric", "teacher", "student", "ratio"}`` (ratio rule in the module docstring)."""
    rows: list[dict[str, float | str]] = []
    for key in metrics:
        missing = [who for who, m in (("teacher", teacher_metrics), ("student", student_metrics)) if key not in m]
        if missing:
            raise KeyError(f"comparison_table: metric {key!r} missing from the {' and '.join(missing)} metrics")
        t, s = float(teacher_metrics[key]), float(student_metrics[key])
        ratio = s / t if (math.isfinite(t) and math.isfinite(s) and t > 0) else math.nan
        rows.append({"metric": key, "teacher": t, "student": s, "ratio": ratio})
    return rows


def _fmt(v: float | str) -> str:
    return v if isinstance(v, str) else ("nan" if math.isnan(v) else f"{v:.4f}")


def to_markdown(rows: Sequence[Mapping[str, float | str]]) -> str:
    """A Markdown table of :func:`comparison_table` rows."""
    lines = ["| metric | teacher | student | student / teacher |", "|---|---:|---:|---:|"]
    lines += [f"| {r['metric']} | {_fmt(r['teacher'])} | {_fmt(r['student'])} | {_fmt(r['ratio'])} |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[Mapping[str, float | str]], directory: str | Path,
                name: str = "teacher_vs_student") -> tuple[Path, Path]:
    """Write ``<name>.md`` and ``<name>.csv`` (full precision) into ``directory``; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    md, csv_path = directory / f"{name}.md", directory / f"{name}.csv"
    md.write_text(to_markdown(rows))
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["metric", "teacher", "student", "ratio"])
        writer.writeheader()
        writer.writerows(rows)
    return md, csv_path


Section = tuple[str, Sequence[Mapping[str, float | str]], str]


def write_sections(sections: Sequence[Section], directory: str | Path,
                   name: str = "teacher_vs_student") -> tuple[Path, Path]:
    """Write ``<name>.md`` (per ``(title, rows, note)`` a heading, ``note`` when given, and the
    :func:`to_markdown` table of ``rows``; a section without rows is left out) and ``<name>.csv`` (full
    precision, a ``section`` column) into ``directory``; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    md, csv_path = directory / f"{name}.md", directory / f"{name}.csv"
    parts = ["# teacher vs student (test)\n"]
    for title, rows, note in sections:
        if rows:
            parts.append(f"## {title}\n" + (f"\n{note}\n" if note else "") + "\n" + to_markdown(rows))
    md.write_text("\n".join(parts))
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["section", "metric", "teacher", "student", "ratio"])
        writer.writeheader()
        writer.writerows({"section": title, **r} for title, rows, _ in sections for r in rows)
    return md, csv_path


# --------------------------------------------------------------------------- F42: calibrated evaluation
Batches = Sequence[tuple[Mapping[str, Tensor | None], Sequence[Mapping[str, Tensor] | Tensor]]]


def _records(batches: Batches, name: str) -> dict[str, Tensor]:
    if not batches:
        raise ValueError(f"evaluate_calibrated: no {name} batches")
    return cat_records([calibration_records(out, tgts) for out, tgts in batches])


def split_metrics(batches: Batches, **kwargs: float) -> dict[str, float]:
    """SA-Co metrics of ``(outputs, targets)`` batches post-processed with ``kwargs``."""
    metric = unit_metric()
    for out, tgts in batches:
        size = tuple(_gt_masks(tgts[0], 0).shape[-2:]) if len(tgts) else None
        update_metric(metric, postprocess(out, size=size, **kwargs), tgts)
    return {k: float(v) for k, v in metric.compute().items()}


def evaluate_calibrated(val: Batches, test: Batches,
                        metric: ThresholdMetric = "f1") -> tuple[Calibration, dict[str, float]]:
    """Fit a :class:`Calibration` on the ``val`` batches ONLY (F42) and evaluate the ``test`` batches with it.

    ``val`` / ``test``: sequences of ``(outputs, targets)`` (output contract of B units; ``targets[b]``:
    ``{"masks": (n, H, W)}`` or the masks; the units of one batch share one size). Returns the calibration and
    the test metrics: SA-Co metrics at the calibrated threshold / temperatures (plain keys), at the uncalibrated
    0.5 (``raw/<key>``), and ECE of the query and presence probabilities before and after calibration
    (``ece_query``, ``ece_query_calibrated``, ``ece_presence``, ``ece_presence_calibrated``; labels of
    :func:`~.calibration.calibration_records`)."""
    cal = fit_calibration(_records(val, "validation"), metric=metric, fitted_on="validation")
    rec = _records(test, "test")
    out = split_metrics(test, **cal.postprocess_kwargs())
    out.update({f"raw/{k}": v for k, v in split_metrics(test).items()})
    q, ql = rec["query_logits"].reshape(-1), rec["query_labels"].reshape(-1)
    out["ece_query"], out["ece_query_calibrated"] = ece(q.sigmoid(), ql), ece((q / cal.temperature).sigmoid(), ql)
    if "presence_logits" in rec:
        p, pl = rec["presence_logits"], rec["presence_labels"]
        out["ece_presence"] = ece(p.sigmoid(), pl)
        out["ece_presence_calibrated"] = ece((p / cal.presence_temperature).sigmoid(), pl)
    return cal, out


# --------------------------------------------------------------------------- F46: two prompt numbers
def run_units(score_fn: ScoreFn, images: Tensor, index: Sequence[int], prompts: Sequence[str],
              batch_size: int) -> list[Mapping[str, Tensor]]:
    """``score_fn`` over units (image ``index[u]``, prompt ``prompts[u]``) in chunks of ``batch_size``."""
    outs = []
    for start in range(0, len(prompts), batch_size):
        idx = torch.as_tensor(list(index[start:start + batch_size]), dtype=torch.long)
        outs.append(score_fn(images[idx], list(prompts[start:start + batch_size])))
    return outs


def _unit_scores(outs: Sequence[Mapping[str, Tensor]], score: str, presence_temperature: float,
                 temperature: float = 1.0) -> Tensor:
    vals = []
    for o in outs:
        if score == "presence":
            pres = presence_of(o)
            if pres is None:
                raise ValueError("concept_responsiveness(score='presence'): the outputs have no presence_logits")
            vals.append((pres.float() / presence_temperature).sigmoid())
        else:
            vals.append(query_scores(o, temperature, presence_temperature).amax(1))
    return torch.cat(vals).double()


def _per_image(prompts: Sequence[str] | Sequence[Sequence[str]], n: int, name: str) -> list[list[str]]:
    if len(prompts) != n:
        raise ValueError(f"{name}: {len(prompts)} entries for {n} images (one prompt or list of prompts per image)")
    out = [[p] if isinstance(p, str) else list(p) for p in prompts]
    for i, ps in enumerate(out):
        if not ps or not all(isinstance(p, str) and p.strip() for p in ps):
            raise ValueError(f"{name}[{i}] = {ps!r}; expected at least one non-empty prompt")
    return out


def _check_images(images: Tensor) -> int:
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (N, C, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    return images.shape[0]


@torch.no_grad()
def concept_responsiveness(score_fn: ScoreFn, images: Tensor, present_prompts: Sequence[str] | Sequence[Sequence[str]],
                           absent_prompts: Sequence[str] | Sequence[Sequence[str]],
                           score: Literal["max_query", "presence"] = "max_query", presence_temperature: float = 1.0,
                           batch_size: int = 64, temperature: float = 1.0) -> float:
    """F46 concept responsiveness (module docstring). ``present_prompts[i]`` / ``absent_prompts[i]``: one prompt
    or a list of prompts of categories present in / absent from image ``i``; ``temperature`` /
    ``presence_temperature``: the model's calibration (the unit score of :func:`postprocess`)."""
    if score not in ("max_query", "presence"):
        raise ValueError(f"concept_responsiveness: score={score!r}; expected 'max_query' or 'presence'")
    n = _check_images(images)
    groups = {"present": _per_image(present_prompts, n, "present_prompts"),
              "absent": _per_image(absent_prompts, n, "absent_prompts")}
    means = {}
    for key, per_image in groups.items():
        index = [i for i, ps in enumerate(per_image) for _ in ps]
        flat = [p for ps in per_image for p in ps]
        s = _unit_scores(run_units(score_fn, images, index, flat, batch_size), score, presence_temperature,
                         temperature)
        means[key] = torch.zeros(n, dtype=torch.float64).index_add_(0, torch.as_tensor(index), s) / torch.tensor(
            [len(ps) for ps in per_image], dtype=torch.float64)
    diffs = means["present"] - means["absent"]
    return float(diffs.mean())


@torch.no_grad()
def paraphrase_stability(score_fn: ScoreFn, images: Tensor, paraphrase_groups: Sequence[Sequence[str]],
                         mode: Literal["mask", "score"] = "mask", group_images: Sequence[Sequence[int]] | None = None,
                         score_threshold: float = 0.5, mask_threshold: float = 0.5, temperature: float = 1.0,
                         presence_temperature: float = 1.0, batch_size: int = 64) -> float:
    """F46 paraphrase stability (module docstring). ``paraphrase_groups``: lists of >= 2 prompts naming one concept;
    ``group_images[g]``: the images group ``g`` is evaluated on (default: all; choose images that contain the
    concept, since two empty masks agree perfectly)."""
    if mode not in ("mask", "score"):
        raise ValueError(f"paraphrase_stability: mode={mode!r}; expected 'mask' or 'score'")
    n = _check_images(images)
    if not paraphrase_groups:
        raise ValueError("paraphrase_stability: no paraphrase groups")
    for g, group in enumerate(paraphrase_groups):
        if isinstance(group, str) or len(group) < 2 or not all(isinstance(p, str) and p.strip() for p in group):
            raise ValueError(f"paraphrase_groups[{g}] = {group!r}; expected a list of >= 2 non-empty prompts")
    if group_images is None:
        group_images = [list(range(n))] * len(paraphrase_groups)
    if len(group_images) != len(paraphrase_groups):
        raise ValueError(f"group_images: {len(group_images)} entries for {len(paraphrase_groups)} paraphrase groups")
    kw = {"score_threshold": score_threshold, "mask_threshold": mask_threshold, "temperature": temperature,
          "presence_temperature": presence_temperature}
    values: list[float] = []
    for g, (group, imgs) in enumerate(zip(paraphrase_groups, group_images)):
        if not imgs or any(not 0 <= i < n for i in imgs):
            raise ValueError(f"group_images[{g}] = {list(imgs)!r}; expected image indices in [0, {n})")
        index = [i for i in imgs for _ in group]  # image-major: unit (i, p) at position k * len(group) + p
        prompts = [p for _ in imgs for p in group]
        preds = [u for o in run_units(score_fn, images, index, prompts, batch_size) for u in postprocess(o, **kw)]
        for k in range(len(imgs)):
            units = preds[k * len(group):(k + 1) * len(group)]
            if mode == "mask":
                values.append(1.0 - prompt_sensitivity(torch.stack([u.union() for u in units])))
            else:
                s = [float(u.unit_score) for u in units]
                values.append(1.0 - sum(abs(a - b) for a, b in itertools.combinations(s, 2))
                              / math.comb(len(s), 2))
    return float(sum(values) / len(values))
