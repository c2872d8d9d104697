"""Matching of the distill study against brute force and torchvision / scipy references."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou

from lit_experiments.studies.distill.components import matching


def _outputs(q: int, size: int = 8, gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    return {"pred_masks": torch.randn(q, size, size, generator=gen) * 3,
            "pred_boxes": torch.rand(q, 2, generator=gen).mul(0.5).add(0.25).repeat(1, 2)
            * torch.tensor([1.0, 1.0, 0.6, 0.6]),
            "pred_logits": torch.randn(q, generator=gen)}


def _target(n: int, size: int = 8, gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    return {"masks": torch.rand(n, size, size, generator=gen) > 0.5,
            "boxes": torch.rand(n, 2, generator=gen).mul(0.5).add(0.25).repeat(1, 2)
            * torch.tensor([1.0, 1.0, 0.4, 0.4])}


def _reference_cost(out, tgt, w) -> np.ndarray:
    """Pair by pair with torch's own BCE, a direct dice, L1 and torchvision's GIoU (no shared code)."""
    q, n = len(out["pred_logits"]), len(tgt["boxes"])
    cost = np.zeros((q, n))
    xyxy_p = box_convert(out["pred_boxes"], "cxcywh", "xyxy")
    xyxy_t = box_convert(tgt["boxes"], "cxcywh", "xyxy")
    for i, j in itertools.product(range(q), range(n)):
        x, t = out["pred_masks"][i], tgt["masks"][j].float()
        p = x.sigmoid()
        bce = F.binary_cross_entropy_with_logits(x, t).item()
        dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
        l1 = (out["pred_boxes"][i] - tgt["boxes"][j]).abs().sum()
        giou = generalized_box_iou(xyxy_p[i:i + 1], xyxy_t[j:j + 1])[0, 0]
        cost[i, j] = (w[0] * bce + w[1] * dice.item() + w[2] * l1.item() - w[3] * giou.item()
                      - w[4] * out["pred_logits"][i].sigmoid().item())
    return cost


def _brute_force(cost: np.ndarray) -> tuple[float, set[tuple[int, int]]]:
    q, n = cost.shape
    best, pairs = np.inf, set()
    if q >= n:
        for rows in itertools.permutations(range(q), n):
            total = sum(cost[r, c] for c, r in enumerate(rows))
            if total < best:
                best, pairs = total, {(r, c) for c, r in enumerate(rows)}
    else:
        for cols in itertools.permutations(range(n), q):
            total = sum(cost[r, c] for r, c in enumerate(cols))
            if total < best:
                best, pairs = total, {(r, c) for r, c in enumerate(cols)}
    return best, pairs


@pytest.mark.parametrize("q,n,weights", [(5, 3, (1, 1, 1, 1, 1)), (4, 4, (2, 0.5, 5, 2, 1)), (3, 5, (1, 1, 0, 0, 0)),
                                         (6, 2, (0, 0, 1, 1, 0))])
def test_hungarian_match_equals_brute_force_over_permutations(q, n, weights):
    gen = torch.Generator().manual_seed(q * 10 + n)
    for _ in range(2):
        out, tgt = _outputs(q, gen=gen), _target(n, gen=gen)
        cost = _reference_cost(out, tgt, weights)
        pred_idx, tgt_idx = matching.hungarian_match(out, tgt, *weights)
        best, pairs = _brute_force(cost)
        assert len(pred_idx) == len(tgt_idx) == min(q, n)
        assert set(zip(pred_idx.tolist(), tgt_idx.tolist())) == pairs
        assert cost[pred_idx.numpy(), tgt_idx.numpy()].sum() == pytest.approx(best, rel=1e-5)


def test_empty_target_or_no_query_gives_empty_indices():
    out = _outputs(4)
    for result in (matching.hungarian_match(out, _target(0)),
                   matching.hungarian_match(_outputs(0), _target(3))):
        assert [len(t) for t in result] == [0, 0] and all(t.dtype == torch.long for t in result)


def test_prediction_logits_are_resized_bilinearly_to_the_target_size():
    gen = torch.Generator().manual_seed(3)
    out, tgt = _outputs(5, size=8, gen=gen), _target(3, size=16, gen=gen)
    up = dict(out, pred_masks=F.interpolate(out["pred_masks"][None], size=(16, 16), mode="bilinear",
                                            align_corners=False)[0])
    assert torch.allclose(matching.pair_costs(out, tgt)["mask"], matching.pair_costs(up, tgt)["mask"])
    # the other direction: targets averaged down to the prediction's grid (soft fractions)
    logits, small = matching.align_masks(out["pred_masks"], tgt["masks"], "target_to_pred")
    ref = tgt["masks"].float().view(3, 8, 2, 8, 2).mean((2, 4))  # bilinear 2x down = 2x2 mean
    assert torch.equal(logits, out["pred_masks"]) and torch.allclose(small, ref)
    with pytest.raises(ValueError, match="resize"):
        matching.align_masks(out["pred_masks"], tgt["masks"], "nearest")


def test_soft_costs_are_zero_on_the_diagonal_for_equal_maps():
    out = _outputs(4)
    costs = matching.pair_costs(out, {"masks": out["pred_masks"].sigmoid(), "boxes": out["pred_boxes"]}, soft=True)
    for key in ("mask", "dice", "box"):
        assert torch.allclose(costs[key].diagonal(), torch.zeros(4), atol=1e-5), key
        off = costs[key][~torch.eye(4, dtype=torch.bool)]
        assert (off > 1e-4).all(), key


def test_teacher_scores_multiply_query_and_presence_probabilities():
    logits, presence = torch.randn(3, 7), torch.randn(3, 1)
    ref = torch.sigmoid(logits) * torch.sigmoid(presence)
    assert torch.allclose(matching.teacher_scores({"pred_logits": logits, "presence_logits": presence}), ref)
    assert torch.allclose(matching.teacher_scores({"pred_logits": logits, "presence_logits": presence[:, 0]}), ref)
    for none in ({"pred_logits": logits}, {"pred_logits": logits, "presence_logits": None}):
        assert torch.allclose(matching.teacher_scores(none), logits.sigmoid())


@pytest.mark.parametrize("cap,threshold", [(3, 0.0), (100, 0.5), (5, 0.3), (0, 0.0), (10, 1.0)])
def test_greedy_teacher_match_keeps_the_top_scores_above_threshold_up_to_the_cap(cap, threshold):
    scores = torch.rand(40, generator=torch.Generator().manual_seed(cap))
    kept = matching.greedy_teacher_match(scores, cap, threshold)
    s = scores.numpy()
    ref = [i for i in np.argsort(-s, kind="stable") if s[i] >= threshold][:cap]
    assert kept.dtype == torch.long and kept.tolist() == ref
    assert len(kept) <= cap


def test_greedy_teacher_match_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_matches"):
        matching.greedy_teacher_match(torch.rand(4), -1, 0.5)
    with pytest.raises(ValueError, match="min_teacher_score"):
        matching.greedy_teacher_match(torch.rand(4), 2, 1.5)
    with pytest.raises(ValueError, match=r"\(Q,\)"):
        matching.greedy_teacher_match(torch.rand(2, 4), 2, 0.5)


@pytest.mark.parametrize("method", ["hungarian", "greedy"])
def test_student_equal_to_a_permuted_teacher_is_matched_back(method):
    gen = torch.Generator().manual_seed(1)
    teacher = _outputs(6, gen=gen)
    perm = torch.randperm(6, generator=gen)
    student = {k: v[perm] for k, v in teacher.items()}  # student query i is teacher query perm[i]
    keep = torch.tensor([4, 1, 3])
    s_idx, t_idx = matching.match_student_to_teacher(student, teacher, keep, method=method)
    assert sorted(t_idx.tolist()) == sorted(keep.tolist())
    assert torch.equal(perm[s_idx], t_idx)


def test_hungarian_never_costs_more_than_greedy_and_greedy_can_be_worse():
    gen = torch.Generator().manual_seed(7)
    for _ in range(10):
        cost = torch.rand(5, 4, generator=gen)
        h, g = matching.assign(cost), matching.greedy_assign(cost)
        assert cost[h].sum() <= cost[g].sum() + 1e-6
        assert len(set(g[0].tolist())) == len(g[0]) == 4
    cost = torch.tensor([[0.0, 0.1], [0.2, 5.0]])  # greedy: column 0 takes row 0, column 1 pays 5.0
    assert cost[matching.greedy_assign(cost)].sum() == pytest.approx(5.0)
    assert cost[matching.assign(cost)].sum() == pytest.approx(0.3)


def test_match_student_to_teacher_with_fewer_students_than_kept_queries():
    teacher, student = _outputs(8), _outputs(3)
    s_idx, t_idx = matching.match_student_to_teacher(student, teacher, torch.arange(6))
    assert len(s_idx) == len(t_idx) == 3 and len(set(s_idx.tolist())) == 3
    empty = matching.match_student_to_teacher(student, teacher, torch.empty(0, dtype=torch.long))
    assert [len(t) for t in empty] == [0, 0]


def test_non_finite_cost_and_bad_shapes_raise():
    out = _outputs(3)
    out["pred_boxes"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        matching.hungarian_match(out, _target(2))
    with pytest.raises(ValueError, match="boxes"):
        matching.hungarian_match(_outputs(3), {"masks": torch.zeros(2, 8, 8), "boxes": torch.zeros(3, 4)})


def test_degenerate_boxes_do_not_break_matching_but_nan_inputs_do():
    out, tgt = _outputs(3), _target(2)
    out["pred_boxes"][0] = torch.tensor([0.5, 0.5, 0.0, 0.0])
    tgt["boxes"][1] = torch.tensor([0.5, 0.5, 0.0, 0.0])  # the same point: GIoU 0 / 0
    cost = matching.pair_costs(out, tgt)["giou"]
    assert torch.isfinite(cost).all() and cost[0, 1] == 1.0
    assert len(matching.hungarian_match(out, tgt)[0]) == 2
