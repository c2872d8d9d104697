"""Matching of the distill study: predictions to ground truth, and student queries to kept teacher queries.

Output contract (teacher and student, SAM3-style), per batch::

    pred_masks      (B, Q, h, w)  mask logits
    pred_boxes      (B, Q, 4)     normalised cxcywh in [0, 1]
    pred_logits     (B, Q)        query logits
    presence_logits (B,) or (B, 1) image-level presence logit (optional: absent or None)

A *unit* is one (image, prompt) pair; its target is ``{"masks": (n, H, W), "boxes": (n, 4) cxcywh}`` with
``n >= 0`` (``n = 0``: a negative unit). Functions here work on ONE unit (``outputs_b``: the same keys without
the batch dim, see :func:`unit`), except :func:`teacher_scores`.

Mask resolution: prediction and target masks may differ in size. :func:`align_masks` resizes the predicted
*logits* bilinearly (``align_corners=False``) to the target size (``resize="pred_to_target"``, the default), or
the targets bilinearly down to the prediction size (``"target_to_pred"``; binary targets become soft fractions
in [0, 1]). Costs and losses use the same helper.

Costs (:func:`pair_costs`, all ``(P, n)``, computed without gradient for the assignment):

* ``mask``: mean over pixels of the BCE of a predicted logit map against a target map; with ``soft=True``
  (soft teacher targets) the target's own entropy is subtracted, i.e. the binary KL (0 when equal);
* ``dice``: ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` (DETR / Mask2Former), or with ``soft=True``
  the squared-denominator dice ``1 - (2 sum(p t) + 1) / (sum(p^2) + sum(t^2) + 1)`` (V-Net), which is 0 when
  the student's probabilities equal the teacher's soft masks (the plain form is not);
* ``box``: L1 distance of the cxcywh boxes (summed over the 4 coordinates, ``torch.cdist(p=1)``);
* ``giou``: ``-GIoU`` (``torchvision.ops.generalized_box_iou`` on xyxy from ``box_convert``; 1 for a pair of
  zero-area boxes, whose GIoU is 0 / 0);
* ``class``: ``-sigmoid(pred_logits)``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou

Resize = Literal["pred_to_target", "target_to_pred"]
RESIZES: tuple[str, ...] = ("pred_to_target", "target_to_pred")
_EMPTY = torch.empty(0, dtype=torch.long)


def unit(outputs: Mapping[str, Tensor | None], b: int) -> dict[str, Tensor | None]:
    """The outputs of unit ``b`` of a batch (``presence_logits`` as a 0-d tensor, or None)."""
    out: dict[str, Tensor | None] = {k: outputs[k][b] for k in ("pred_masks", "pred_boxes", "pred_logits")}
    presence = outputs.get("presence_logits")
    out["presence_logits"] = None if presence is None else presence.reshape(len(outputs["pred_logits"]))[b]
    return out


def presence_of(outputs: Mapping[str, Tensor | None]) -> Tensor | None:
    """``presence_logits`` as (B,) (SAM3 returns (B, 1)), or None when absent."""
    presence = outputs.get("presence_logits")
    if presence is None:
        return None
    batch = outputs["pred_logits"].shape[0]
    if presence.numel() != batch:
        raise ValueError(f"presence_logits {tuple(presence.shape)}: expected (B,) or (B, 1) with B = {batch}")
    return presence.reshape(batch)


def teacher_scores(outputs: Mapping[str, Tensor | None]) -> Tensor:
    """(B, Q) teacher confidence ``sigmoid(pred_logits) * sigmoid(presence_logits)``; without presence
    ``sigmoid(pred_logits)`` (the SAM3 score, LESSONS F25)."""
    scores = outputs["pred_logits"].sigmoid()
    presence = presence_of(outputs)
    return scores if presence is None else scores * presence.sigmoid()[:, None]


def greedy_teacher_match(teacher_scores: Tensor, max_matches: int, min_teacher_score: float) -> Tensor:
    """Teacher query indices kept for distillation: score >= ``min_teacher_score``, sorted by score
    (descending), at most ``max_matches`` (F25: the seed paired all 100 queries and over-segmented).

    Args:
        teacher_scores: (Q,) scores of one unit (see :func:`teacher_scores`).
        max_matches: cap on the kept queries (>= 0).
        min_teacher_score: minimum score in [0, 1].
    """
    if teacher_scores.ndim != 1:
        raise ValueError(f"greedy_teacher_match: teacher_scores {tuple(teacher_scores.shape)}; expected (Q,)")
    if int(max_matches) != max_matches or max_matches < 0:
        raise ValueError(f"greedy_teacher_match: max_matches={max_matches!r}; expected an integer >= 0")
    if not 0.0 <= min_teacher_score <= 1.0:
        raise ValueError(f"greedy_teacher_match: min_teacher_score={min_teacher_score!r}; expected 0..1")
    scores = teacher_scores.detach()
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[scores[order] >= min_teacher_score]
    return order[: int(max_matches)].to(torch.long)


def align_masks(pred_logits: Tensor, target: Tensor, resize: Resize = "pred_to_target") -> tuple[Tensor, Tensor]:
    """Prediction logits (P, h, w) and target masks (n, H, W) brought to one size, targets as float.

    ``pred_to_target``: logits resized bilinearly to (H, W); ``target_to_pred``: targets resized bilinearly to
    (h, w) (soft fractions). Equal sizes are returned unchanged.
    """
    if resize not in RESIZES:
        raise ValueError(f"resize={resize!r}; expected one of {RESIZES}")
    if pred_logits.ndim != 3 or target.ndim != 3:
        raise ValueError(f"masks {tuple(pred_logits.shape)} / {tuple(target.shape)}: expected (P, h, w) / (n, H, W)")
    target = target.to(pred_logits.dtype)
    if pred_logits.shape[-2:] == target.shape[-2:]:
        return pred_logits, target
    if resize == "pred_to_target":
        size = tuple(target.shape[-2:])
        return F.interpolate(pred_logits[None], size=size, mode="bilinear", align_corners=False)[0], target
    size = tuple(pred_logits.shape[-2:])
    if len(target) == 0:
        return pred_logits, target.new_zeros((0, *size))
    return pred_logits, F.interpolate(target[None], size=size, mode="bilinear", align_corners=False)[0]


def binary_entropy(t: Tensor) -> Tensor:
    """Binary entropy (nats) elementwise, 0 at t in {0, 1}."""
    return -(torch.xlogy(t, t) + torch.xlogy(1 - t, 1 - t))


def mask_bce_cost(logits: Tensor, target: Tensor, soft: bool = False) -> Tensor:
    """(P, n) mean-over-pixels BCE of every logit map (P, H, W) against every target (n, H, W) (same size);
    ``soft``: minus the target's mean entropy (the binary KL, 0 for equal maps)."""
    x, t = logits.flatten(1), target.flatten(1).to(logits.dtype)
    cost = (F.softplus(-x) @ t.T + F.softplus(x) @ (1 - t).T) / x.shape[1]
    return cost - binary_entropy(t).mean(1)[None] if soft else cost


def dice_cost(logits: Tensor, target: Tensor, soft: bool = False) -> Tensor:
    """(P, n) dice loss between ``sigmoid(logits)`` (P, H, W) and targets (n, H, W) (see the module doc)."""
    p, t = logits.flatten(1).sigmoid(), target.flatten(1).to(logits.dtype)
    num = 2 * p @ t.T + 1
    den = ((p * p).sum(1)[:, None] + (t * t).sum(1)[None]) if soft else (p.sum(1)[:, None] + t.sum(1)[None])
    return 1 - num / (den + 1)


def pair_costs(outputs_b: Mapping[str, Tensor | None], target_b: Mapping[str, Tensor], soft: bool = False,
               resize: Resize = "pred_to_target") -> dict[str, Tensor]:
    """Unweighted (P, n) cost matrices ``mask``, ``dice``, ``box``, ``giou``, ``class`` of one unit."""
    logits, masks = align_masks(outputs_b["pred_masks"], target_b["masks"], resize)
    pb, tb = outputs_b["pred_boxes"].to(logits.dtype), target_b["boxes"].to(logits.dtype)
    giou = generalized_box_iou(box_convert(pb, "cxcywh", "xyxy"), box_convert(tb, "cxcywh", "xyxy"))
    # two zero-area boxes at one point have no GIoU (0 / 0): the worst value, so matching does not fail on them
    giou = torch.where(torch.isnan(giou) & torch.isfinite(pb).all(1)[:, None] & torch.isfinite(tb).all(1)[None],
                       -1.0, giou)
    return {"mask": mask_bce_cost(logits, masks, soft), "dice": dice_cost(logits, masks, soft),
            "box": torch.cdist(pb, tb, p=1), "giou": -giou,
            "class": -outputs_b["pred_logits"].sigmoid()[:, None].expand(-1, len(tb))}


def _check_unit(outputs_b: Mapping[str, Tensor | None], target_b: Mapping[str, Tensor]) -> int:
    q = outputs_b["pred_logits"].shape[0]
    if outputs_b["pred_masks"].shape[0] != q or outputs_b["pred_boxes"].shape != (q, 4):
        raise ValueError(f"unit outputs: pred_masks {tuple(outputs_b['pred_masks'].shape)}, pred_boxes "
                         f"{tuple(outputs_b['pred_boxes'].shape)}, pred_logits ({q},) disagree on Q")
    n = target_b["masks"].shape[0]
    if target_b["boxes"].shape != (n, 4):
        raise ValueError(f"target: masks {tuple(target_b['masks'].shape)} and boxes "
                         f"{tuple(target_b['boxes'].shape)}; expected (n, H, W) and (n, 4)")
    return n


def assign(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost assignment of a (P, n) matrix with scipy (``linear_sum_assignment``)."""
    if cost.numel() == 0:
        return _EMPTY.to(cost.device), _EMPTY.to(cost.device)
    c = cost.detach().double().cpu()
    if not torch.isfinite(c).all():
        raise ValueError("matching cost has non-finite entries (NaN / inf in the masks, boxes or logits)")
    rows, cols = linear_sum_assignment(c.numpy())
    return (torch.as_tensor(rows, dtype=torch.long, device=cost.device),
            torch.as_tensor(cols, dtype=torch.long, device=cost.device))


@torch.no_grad()
def hungarian_match(outputs_b: Mapping[str, Tensor | None], target_b: Mapping[str, Tensor], cost_mask: float = 1.0,
                    cost_dice: float = 1.0, cost_box: float = 1.0, cost_giou: float = 1.0, cost_class: float = 1.0,
                    soft: bool = False, resize: Resize = "pred_to_target") -> tuple[Tensor, Tensor]:
    """Hungarian matching of ONE unit's predictions to its targets (scipy ``linear_sum_assignment``).

    Cost = ``cost_mask * mask + cost_dice * dice + cost_box * box + cost_giou * giou + cost_class * class``
    (see the module doc). Returns ``(pred_idx, tgt_idx)`` LongTensors of length ``min(Q, n)``, ``pred_idx``
    ascending; an empty target gives two empty tensors.
    """
    n = _check_unit(outputs_b, target_b)
    if n == 0 or outputs_b["pred_logits"].shape[0] == 0:
        device = outputs_b["pred_logits"].device
        return _EMPTY.to(device), _EMPTY.to(device)
    costs = pair_costs(outputs_b, target_b, soft=soft, resize=resize)
    weights = {"mask": cost_mask, "dice": cost_dice, "box": cost_box, "giou": cost_giou, "class": cost_class}
    total = sum(w * costs[k] for k, w in weights.items() if w)
    if isinstance(total, int):  # every weight 0: any assignment is optimal
        total = torch.zeros_like(costs["box"])
    return assign(total)


def teacher_targets(teacher_b: Mapping[str, Tensor | None], keep_idx: Tensor) -> dict[str, Tensor]:
    """The kept teacher queries as a soft target: ``sigmoid`` masks and boxes (detached)."""
    return {"masks": teacher_b["pred_masks"][keep_idx].detach().sigmoid(),
            "boxes": teacher_b["pred_boxes"][keep_idx].detach()}


@torch.no_grad()
def match_student_to_teacher(student_b: Mapping[str, Tensor | None], teacher_b: Mapping[str, Tensor | None],
                             keep_idx: Tensor, method: Literal["hungarian", "greedy"] = "hungarian",
                             cost_mask: float = 1.0, cost_dice: float = 1.0, cost_box: float = 1.0,
                             cost_giou: float = 1.0, resize: Resize = "pred_to_target") -> tuple[Tensor, Tensor]:
    """Pairs student queries with the kept teacher queries ``keep_idx`` of one unit.

    The cost is the weighted mask (binary KL), soft dice, box L1 and -GIoU cost of every student query against
    every kept teacher query (``soft=True`` in :func:`pair_costs`; no class term: the student's query logit is
    what the logit distillation teaches). ``method="hungarian"``: optimal assignment (scipy);
    ``"greedy"``: the kept teacher queries, in the order of ``keep_idx`` (score descending), each take the
    cheapest student query still free. Returns ``(student_idx, teacher_idx)`` (teacher indices are into the
    teacher's Q, i.e. values of ``keep_idx``), at most ``min(Q_student, len(keep_idx))`` pairs.
    """
    if method not in ("hungarian", "greedy"):
        raise ValueError(f"match_student_to_teacher: method={method!r}; expected 'hungarian' or 'greedy'")
    keep_idx = keep_idx.to(torch.long)
    target = teacher_targets(teacher_b, keep_idx)
    _check_unit(student_b, target)
    if len(keep_idx) == 0 or student_b["pred_logits"].shape[0] == 0:
        return _EMPTY.to(keep_idx.device), _EMPTY.to(keep_idx.device)
    costs = pair_costs(student_b, target, soft=True, resize=resize)
    weights = {"mask": cost_mask, "dice": cost_dice, "box": cost_box, "giou": cost_giou}
    total = sum(w * costs[k] for k, w in weights.items() if w)
    if isinstance(total, int):
        total = torch.zeros_like(costs["box"])
    if method == "hungarian":
        rows, cols = assign(total)
    else:
        rows, cols = greedy_assign(total)
    return rows, keep_idx[cols]


def greedy_assign(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Greedy assignment of a (P, n) cost: columns in order, each takes the cheapest free row.
    Returns ``(rows, cols)`` sorted by row."""
    free = torch.ones(cost.shape[0], dtype=torch.bool)
    c = cost.detach().cpu()
    rows, cols = [], []
    for j in range(cost.shape[1]):
        if not free.any():
            break
        col = c[:, j].masked_fill(~free, float("inf"))
        i = int(torch.argmin(col))
        free[i] = False
        rows.append(i)
        cols.append(j)
    r = torch.tensor(rows, dtype=torch.long)
    order = torch.argsort(r)
    return r[order].to(cost.device), torch.tensor(cols, dtype=torch.long)[order].to(cost.device)
