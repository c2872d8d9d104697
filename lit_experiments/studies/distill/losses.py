"""Losses of the distill study, each an ``nn.Module`` whose constructor arguments are weights (YAML parts).

* :class:`SetLoss`: DETR / SAM3-style set loss on ground truth (trains the stand-in teacher; optional ground-truth
  term of the student). Hungarian matching per unit (:func:`matching.hungarian_match`).
* :class:`DistillLoss`: student outputs vs frozen teacher outputs. Teacher queries kept by
  :func:`matching.greedy_teacher_match` (score ``sigmoid(logit) * sigmoid(presence)`` >= ``min_teacher_score``,
  at most ``max_matches``: F25), paired with student queries (:func:`matching.match_student_to_teacher`).
* :class:`FeatureDistillLoss`: encoder feature distillation, MSE + (1 - cosine) (EfficientSAM3's first stage).

Every ``forward`` returns a dict of **unweighted** terms, ``loss`` (the weighted sum, the only term to back-
propagate; each term's weight is the constructor's ``<term>_weight``) and detached counts (``n_matched`` ...; counts are not losses). A term with weight 0 stays in the dict
(for logging) but not in ``loss``'s graph. Terms without pairs are ``0`` attached to the graph, never NaN.

Mask resolution: predicted mask logits are resized bilinearly to the target's (ground truth or teacher) size
(``resize="pred_to_target"``) or targets down to the prediction's (``"target_to_pred"``), see
:func:`matching.align_masks`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from lit_experiments.core.errors import ConfigError

from .components import matching
from .components.matching import Resize, align_masks, binary_entropy, presence_of, unit

Outputs = Mapping[str, Tensor | None]
Target = Mapping[str, Tensor]


def _check_weights(owner: str, **weights: float) -> None:
    for key, value in weights.items():
        if not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{owner}: {key}={value!r}; expected a number >= 0")


def _choice(owner: str, key: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ConfigError(f"{owner}: {key}={value!r}; expected one of {tuple(allowed)}")
    return value


def soft_bce(logits: Tensor, target: Tensor, reduction: Literal["mean", "none"] = "mean") -> Tensor:
    """BCE-with-logits against soft targets minus the targets' entropy (= binary KL(target || sigmoid(logits))).

    Same gradient as the BCE; 0 when ``sigmoid(logits) == target``, so a distillation term reads 0 when the
    student equals the teacher instead of the teacher's entropy.
    """
    value = F.binary_cross_entropy_with_logits(logits, target, reduction="none") - binary_entropy(target)
    return value.mean() if reduction == "mean" else value


def dice_loss(logits: Tensor, target: Tensor, soft: bool = False) -> Tensor:
    """Per-pair dice loss of ``sigmoid(logits)`` (P, H, W) against targets (P, H, W) -> (P,).

    ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)``; ``soft=True``: ``sum(p^2) + sum(t^2)`` in the
    denominator (V-Net form, 0 when ``p == t`` for soft targets).
    """
    p, t = logits.flatten(1).sigmoid(), target.flatten(1).to(logits.dtype)
    den = (p * p).sum(1) + (t * t).sum(1) if soft else p.sum(1) + t.sum(1)
    return 1 - (2 * (p * t).sum(1) + 1) / (den + 1)


def _zero(outputs: Outputs) -> Tensor:
    """0 attached to the graph of every output tensor (a term without pairs still back-propagates)."""
    return sum(v.sum() * 0.0 for k, v in outputs.items() if isinstance(v, Tensor) and k.startswith(("pred", "pres")))


def pair_terms(outputs_b: Outputs, target_b: Target, pred_idx: Tensor, tgt_idx: Tensor, soft: bool = False,
               mask_loss: Literal["bce", "focal"] = "bce", resize: Resize = "pred_to_target",
               focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> dict[str, Tensor]:
    """Per-pair terms (P,) of one unit: ``mask_bce`` (mean over pixels; ``soft``: binary KL, ``focal``:
    ``sigmoid_focal_loss``), ``dice``, ``box_l1`` (summed over the 4 cxcywh coordinates, DETR) and ``giou``
    (``1 - GIoU`` on xyxy, ``torchvision.ops.generalized_box_iou_loss``)."""
    logits, masks = align_masks(outputs_b["pred_masks"][pred_idx], target_b["masks"][tgt_idx], resize)
    if soft:
        mask = soft_bce(logits, masks, reduction="none").flatten(1).mean(1)
    elif mask_loss == "focal":
        mask = sigmoid_focal_loss(logits, masks, focal_alpha, focal_gamma, reduction="none").flatten(1).mean(1)
    else:
        mask = F.binary_cross_entropy_with_logits(logits, masks, reduction="none").flatten(1).mean(1)
    pb = outputs_b["pred_boxes"][pred_idx]
    tb = target_b["boxes"][tgt_idx].to(pb.dtype)
    giou = generalized_box_iou_loss(box_convert(pb, "cxcywh", "xyxy"), box_convert(tb, "cxcywh", "xyxy"))
    return {"mask_bce": mask, "dice": dice_loss(logits, masks, soft=soft), "box_l1": (pb - tb).abs().sum(1),
            "giou": giou}


def _mean_pairs(per_pair: list[dict[str, Tensor]], zero: Tensor) -> dict[str, Tensor]:
    keys = ("mask_bce", "dice", "box_l1", "giou")
    parts = {k: [p[k] for p in per_pair if len(p[k])] for k in keys}
    return {k: torch.cat(v).mean() if v else zero for k, v in parts.items()}


class SetLoss(nn.Module):
    """Set loss on ground truth: Hungarian matching per unit, then mask BCE (or focal) + dice, box L1 + GIoU on
    matched pairs, query BCE (or focal) on all queries, presence BCE.

    * mask / box terms: mean over the matched pairs of the whole batch (0 with grad when there is none);
    * ``query``: matched queries target 1, all others 0; ``bce`` = mean BCE over the B x Q queries, ``focal`` =
      ``torchvision.ops.sigmoid_focal_loss`` (``focal_alpha``, ``focal_gamma``) with the same mean;
    * ``presence``: BCE of ``presence_logits`` against 1 if the unit has ground truth (n > 0) else 0 (0 when the
      model has no presence head).

    Default weights follow DETR (box L1 5, GIoU 2) and Mask2Former (mask BCE 5, dice 5, class 2); presence 1.

    Args:
        *_weight: weights of the terms in ``loss`` (>= 0).
        cost_*: weights of the matching cost (:func:`matching.hungarian_match`).
        query_loss / mask_loss: ``"bce"`` or ``"focal"``.
        resize: mask resolution policy (module doc).
    """

    TERMS = ("mask_bce", "dice", "box_l1", "giou", "query", "presence")

    def __init__(self, mask_bce_weight: float = 5.0, dice_weight: float = 5.0, box_l1_weight: float = 5.0,
                 giou_weight: float = 2.0, query_weight: float = 2.0, presence_weight: float = 1.0,
                 cost_mask: float = 1.0, cost_dice: float = 1.0, cost_box: float = 1.0, cost_giou: float = 1.0,
                 cost_class: float = 1.0, query_loss: Literal["bce", "focal"] = "bce",
                 mask_loss: Literal["bce", "focal"] = "bce", focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 resize: Resize = "pred_to_target") -> None:
        super().__init__()
        weights = {"mask_bce_weight": mask_bce_weight, "dice_weight": dice_weight, "box_l1_weight": box_l1_weight,
                   "giou_weight": giou_weight, "query_weight": query_weight, "presence_weight": presence_weight}
        costs = {"cost_mask": cost_mask, "cost_dice": cost_dice, "cost_box": cost_box, "cost_giou": cost_giou,
                 "cost_class": cost_class}
        _check_weights("SetLoss", **weights, **costs, focal_gamma=focal_gamma)
        if not 0.0 <= focal_alpha <= 1.0:
            raise ConfigError(f"SetLoss: focal_alpha={focal_alpha!r}; expected 0..1")
        self.weights = {k.removesuffix("_weight"): float(v) for k, v in weights.items()}
        self.costs = {k: float(v) for k, v in costs.items()}
        self.query_loss = _choice("SetLoss", "query_loss", query_loss, ("bce", "focal"))
        self.mask_loss = _choice("SetLoss", "mask_loss", mask_loss, ("bce", "focal"))
        self.resize = _choice("SetLoss", "resize", resize, matching.RESIZES)
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)

    def forward(self, outputs: Outputs, targets: Sequence[Target]) -> dict[str, Tensor]:
        logits = outputs["pred_logits"]
        if len(targets) != logits.shape[0]:
            raise ValueError(f"SetLoss: {len(targets)} targets for a batch of {logits.shape[0]} units")
        zero = _zero(outputs)
        query_target = torch.zeros_like(logits)
        per_pair = []
        for b, target in enumerate(targets):
            out_b = unit(outputs, b)
            pred_idx, tgt_idx = matching.hungarian_match(out_b, target, resize=self.resize, **self.costs)
            query_target[b, pred_idx] = 1.0
            if len(pred_idx):
                per_pair.append(pair_terms(out_b, target, pred_idx, tgt_idx, mask_loss=self.mask_loss,
                                           resize=self.resize, focal_alpha=self.focal_alpha,
                                           focal_gamma=self.focal_gamma))
        terms = _mean_pairs(per_pair, zero)
        if self.query_loss == "focal":
            terms["query"] = sigmoid_focal_loss(logits, query_target, self.focal_alpha, self.focal_gamma, "mean")
        else:
            terms["query"] = F.binary_cross_entropy_with_logits(logits, query_target)
        presence = presence_of(outputs)
        if presence is None:
            terms["presence"] = zero
        else:
            present = torch.tensor([len(t["masks"]) > 0 for t in targets], dtype=presence.dtype,
                                   device=presence.device)
            terms["presence"] = F.binary_cross_entropy_with_logits(presence, present)
        terms["loss"] = zero + sum(w * terms[k] for k, w in self.weights.items() if w)
        terms["n_matched"] = query_target.sum().detach()
        return terms


class DistillLoss(nn.Module):
    """Student outputs vs frozen teacher outputs (same contract), per unit:

    1. teacher queries kept by :func:`matching.greedy_teacher_match` on the teacher score
       ``sigmoid(pred_logits) * sigmoid(presence_logits)`` (>= ``min_teacher_score``, at most ``max_matches``;
       F25: the seed paired all 100 queries);
    2. kept teacher queries paired with student queries (``method``: ``"hungarian"`` or ``"greedy"``) on the
       mask / dice / box / GIoU cost (``cost_*``);
    3. on the pairs: ``mask_bce`` = binary KL of the student's mask logits to the teacher's ``sigmoid`` masks
       (BCE minus the teacher's entropy: same gradient, 0 when equal), ``dice`` (squared-denominator soft dice,
       0 when equal), ``box_l1``, ``giou`` against the teacher's boxes; mean over the batch's pairs;
    4. ``logit``: binary KL of the student's query logits to ``sigmoid`` of the paired teacher query logits.
       ``logit_queries="all"`` (default): every student query, unpaired ones with target 0 (they learn to stay
       silent, as in DETR's no-object class; the F25 over-segmentation guard); ``"matched"``: paired queries
       only. Mean over the queries used;
    5. ``presence``: binary KL of the student's presence logit to ``sigmoid`` of the teacher's (0 when either
       has no presence head);
    6. optional ``gt``: ``gt_loss`` (a :class:`SetLoss`) on ground-truth ``targets``, total weighted by
       ``gt_weight`` (only computed when ``gt_loss`` is given and ``gt_weight > 0``).

    Teacher tensors must not require grad (F01: targets are detached at the source; a teacher that still has a
    graph is a bug upstream and raises). Counts: ``n_kept`` (teacher queries kept), ``n_matched`` (pairs).
    """

    def __init__(self, mask_bce_weight: float = 5.0, dice_weight: float = 5.0, box_l1_weight: float = 5.0,
                 giou_weight: float = 2.0, logit_weight: float = 2.0, presence_weight: float = 1.0,
                 max_matches: int = 10, min_teacher_score: float = 0.3,
                 method: Literal["hungarian", "greedy"] = "hungarian",
                 logit_queries: Literal["all", "matched"] = "all", cost_mask: float = 1.0, cost_dice: float = 1.0,
                 cost_box: float = 1.0, cost_giou: float = 1.0, gt_loss: SetLoss | None = None,
                 gt_weight: float = 0.0, resize: Resize = "pred_to_target") -> None:
        super().__init__()
        weights = {"mask_bce_weight": mask_bce_weight, "dice_weight": dice_weight, "box_l1_weight": box_l1_weight,
                   "giou_weight": giou_weight, "logit_weight": logit_weight, "presence_weight": presence_weight}
        costs = {"cost_mask": cost_mask, "cost_dice": cost_dice, "cost_box": cost_box, "cost_giou": cost_giou}
        _check_weights("DistillLoss", **weights, **costs, gt_weight=gt_weight)
        if isinstance(max_matches, bool) or int(max_matches) != max_matches or max_matches < 0:
            raise ConfigError(f"DistillLoss: max_matches={max_matches!r}; expected an integer >= 0")
        if not 0.0 <= min_teacher_score <= 1.0:
            raise ConfigError(f"DistillLoss: min_teacher_score={min_teacher_score!r}; expected 0..1")
        self.weights = {k.removesuffix("_weight"): float(v) for k, v in weights.items()}
        self.costs = {k: float(v) for k, v in costs.items()}
        self.max_matches, self.min_teacher_score = int(max_matches), float(min_teacher_score)
        self.method = _choice("DistillLoss", "method", method, ("hungarian", "greedy"))
        self.logit_queries = _choice("DistillLoss", "logit_queries", logit_queries, ("all", "matched"))
        self.resize = _choice("DistillLoss", "resize", resize, matching.RESIZES)
        self.gt_loss, self.gt_weight = gt_loss, float(gt_weight)

    @staticmethod
    def _check_teacher(teacher: Outputs) -> None:
        for key, value in teacher.items():
            if isinstance(value, Tensor) and value.requires_grad:
                raise ValueError(f"DistillLoss: teacher output {key!r} requires grad; teacher outputs are "
                                 "targets and must be computed under no_grad / detached (LESSONS F01)")

    def forward(self, student: Outputs, teacher: Outputs,
                targets: Sequence[Target] | None = None) -> dict[str, Tensor]:
        self._check_teacher(teacher)
        s_logits = student["pred_logits"]
        if teacher["pred_logits"].shape[0] != s_logits.shape[0]:
            raise ValueError(f"DistillLoss: student batch {s_logits.shape[0]} != teacher batch "
                             f"{teacher['pred_logits'].shape[0]}")
        zero = _zero(student)
        scores = matching.teacher_scores(teacher)
        logit_target = torch.zeros_like(s_logits)
        used = torch.zeros_like(s_logits, dtype=torch.bool)
        per_pair, n_kept = [], 0
        for b in range(s_logits.shape[0]):
            s_b, t_b = unit(student, b), unit(teacher, b)
            keep = matching.greedy_teacher_match(scores[b], self.max_matches, self.min_teacher_score)
            n_kept += len(keep)
            s_idx, t_idx = matching.match_student_to_teacher(s_b, t_b, keep, method=self.method,
                                                             resize=self.resize, **self.costs)
            logit_target[b, s_idx] = teacher["pred_logits"][b, t_idx].sigmoid().to(s_logits.dtype)
            used[b, s_idx] = True
            if len(s_idx):
                target = {"masks": t_b["pred_masks"].sigmoid(), "boxes": t_b["pred_boxes"]}
                per_pair.append(pair_terms(s_b, target, s_idx, t_idx, soft=True, resize=self.resize))
        terms = _mean_pairs(per_pair, zero)
        if self.logit_queries == "all":
            terms["logit"] = soft_bce(s_logits, logit_target)
        else:
            terms["logit"] = soft_bce(s_logits[used], logit_target[used]) if used.any() else zero
        s_presence, t_presence = presence_of(student), presence_of(teacher)
        if s_presence is None or t_presence is None:
            terms["presence"] = zero
        else:
            terms["presence"] = soft_bce(s_presence, t_presence.sigmoid().to(s_presence.dtype))
        total = zero + sum(w * terms[k] for k, w in self.weights.items() if w)
        if self.gt_loss is not None and self.gt_weight > 0:
            if targets is None:
                raise ValueError("DistillLoss: gt_weight > 0 needs ground-truth targets in forward(...)")
            gt = self.gt_loss(student, targets)
            terms["gt"] = gt["loss"]
            total = total + self.gt_weight * gt["loss"]
        terms["loss"] = total
        terms["n_kept"] = torch.tensor(float(n_kept), device=s_logits.device)
        terms["n_matched"] = used.sum().detach().to(s_logits.dtype)
        return terms


class FeatureDistillLoss(nn.Module):
    """Encoder feature distillation: ``mse_weight * MSE + cosine_weight * (1 - cosine)``.

    ``student`` and ``teacher`` must have the SAME shape (e.g. (B, C, H, W) maps or (B, N, C) tokens): a
    projection or resize of the student's features to the teacher's is the caller's part (a trainable
    module of the student), never done here. The cosine is taken over ``channel_dim`` (1 for (B, C, H, W),
    -1 for tokens) and averaged over the other positions. The teacher features must not require grad (F01).
    Returns ``{"mse", "cosine", "loss"}``.
    """

    def __init__(self, mse_weight: float = 1.0, cosine_weight: float = 1.0, channel_dim: int = 1) -> None:
        super().__init__()
        _check_weights("FeatureDistillLoss", mse_weight=mse_weight, cosine_weight=cosine_weight)
        self.mse_weight, self.cosine_weight, self.channel_dim = float(mse_weight), float(cosine_weight), channel_dim

    def forward(self, student: Tensor, teacher: Tensor) -> dict[str, Tensor]:
        if student.shape != teacher.shape:
            raise ValueError(f"FeatureDistillLoss: student features {tuple(student.shape)} and teacher features "
                             f"{tuple(teacher.shape)} differ; project / resize the student's features to the "
                             "teacher's shape first (a trainable projection of the student)")
        if teacher.requires_grad:
            raise ValueError("FeatureDistillLoss: teacher features require grad; compute them under no_grad "
                             "(LESSONS F01)")
        teacher = teacher.to(student.dtype)
        mse = F.mse_loss(student, teacher)
        cosine = (1 - F.cosine_similarity(student, teacher, dim=self.channel_dim)).mean()
        return {"mse": mse, "cosine": cosine, "loss": self.mse_weight * mse + self.cosine_weight * cosine}
