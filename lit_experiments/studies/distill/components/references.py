"""Floors beside the distill headline (F49), per-unit scores for the report (F51) and the teacher's score on every
prompt family before distillation (F53).

* :func:`predict_nothing` / :func:`prompt_blind`: the two floors of the test, as :class:`~.evaluation.UnitPrediction`
  lists fed to the same metric (:func:`~.evaluation.unit_metric`) on the same test units as the student. Predict
  nothing keeps no mask for any unit (positive units IoU 0, negative units 1: all-units mIoU = the share of
  negative units). Prompt-blind is a perfect segmenter that ignores the text: for every prompt it returns every
  visible object of the image (the generic prompt's ground truth), so it is right on generic units, over-segments
  concept units whose image holds other objects and fails every negative unit.
* The module's ``test_unit_rows`` (a :class:`~lit_experiments.metrics.gathered.GatheredRows`): the (image,
  vocabulary word) of every test unit, gathered over ranks, so the per-unit IoUs of the student, the teacher and
  the floors are saved with ids (``<run_dir>/per_item/test_units*.json``).
* :func:`family_scores`: the teacher's outputs (cached) against ground truth on every (image, vocabulary word) of a
  split, at the uncalibrated 0.5, per prompt family: ``category`` (a concept present in the image, mIoU on those
  positive units), ``negative`` (an absent concept: the share of units with nothing predicted), ``generic/<word>``
  (every object), and per concept word (``category/<name>``). ``trained_on`` marks the families the student's
  prompt sampler draws (ratio > 0), so an A/B that distils a family the teacher never learned shows it (F53).
"""
from __future__ import annotations

from typing import Any

import torch

from ..evaluation import UnitPrediction, postprocess, unit_metric, update_metric
from .prompts import Prompt


def predict_nothing(targets: list[dict[str, torch.Tensor]]) -> list[UnitPrediction]:
    """No kept prediction for any unit (the masks' size is the ground truth's)."""
    out = []
    for t in targets:
        size = t["masks"].shape[-2:]
        out.append(UnitPrediction(torch.zeros(0, *size, dtype=torch.bool), torch.zeros(0), torch.zeros(0, 4), None,
                                  torch.tensor(0.0)))
    return out


def every_object(source: Any, index: int) -> torch.Tensor:
    """(n, H, W) bool: every visible object of image ``index`` of a :class:`~.datamodule.UnitSource`."""
    return source.targets(index, Prompt("*", "generic"))["masks"].bool()


def prompt_blind(source: Any, index: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> list[UnitPrediction]:
    """Every visible object of the unit's image with score 1, whatever the prompt (see the module docstring)."""
    out = []
    for i, t in zip(index.tolist(), targets):
        masks = every_object(source, int(i))
        if masks.shape[-2:] != t["masks"].shape[-2:]:
            raise ValueError(f"prompt_blind: image {i} masks {tuple(masks.shape[-2:])} vs targets "
                             f"{tuple(t['masks'].shape[-2:])}")
        n = masks.shape[0]
        out.append(UnitPrediction(masks, torch.ones(n), torch.zeros(n, 4), None, torch.tensor(float(n > 0))))
    return out


def unit_ious(metric: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit semantic IoU (negative-unit convention) and has-ground-truth of a ``PromptableSegMetric``, gathered
    over ranks."""
    with metric.sync_context():
        stats = metric.stats()
    return stats.iou.double().cpu(), stats.has_gt.bool().cpu()


@torch.no_grad()
def family_scores(dm: Any, split: str = "val", score_threshold: float = 0.5) -> dict[str, Any]:
    """The teacher per prompt family on ``split`` (module docstring); ``{"split", "score_threshold",
    "families": {name: {"miou_pos" | "miou", "n_units", "trained_on"}}}``."""
    dm.prepare()
    src, cache = dm.unit_source(split), dm.teacher_cache(split)
    if cache is None:
        raise ValueError("family_scores: the datamodule has no teacher")
    metrics: dict[str, Any] = {}
    ratios = dm.prompt_sampler.ratios
    for i in range(len(src)):
        size = tuple(src.image(i).shape[-2:])
        for v, word in enumerate(dm.vocab):
            if word in dm.categories:
                kind = "category" if word in src.present[i] else "negative"
                prompt, names = Prompt(word, kind, word), [kind] + ([f"category/{word}"] if kind == "category" else [])
            else:
                prompt, names = Prompt(word, "generic"), [f"generic/{word}"]
                if not src.present[i]:
                    continue  # an image without objects: no positive generic unit
            out = {k: x[None] for k, x in cache(i * len(dm.vocab) + v).items()}
            pred = postprocess(out, size=size, score_threshold=score_threshold)
            target = src.targets(i, prompt)
            for name in names:
                update_metric(metrics.setdefault(name, unit_metric()), pred, [target])
    families: dict[str, Any] = {}
    for name, metric in sorted(metrics.items()):
        values = {k: float(x) for k, x in metric.compute().items()}
        kind = name.split("/")[0]
        key = "miou" if kind == "negative" else "miou_pos"
        families[name] = {key: values[key], "n_units": int(values["n_units"]),
                          "trained_on": bool(ratios.get(kind, 0.0) > 0)}
    return {"split": split, "score_threshold": score_threshold, "families": families}
