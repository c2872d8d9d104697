"""SA-Co promptable-segmentation metrics on small hand-computed cases (F26)."""

from __future__ import annotations

import math

import pytest
import torch

from lit_experiments.metrics import (
    PromptableSegMetric,
    UnitStats,
    cgf1,
    il_mcc,
    miou,
    pmf1,
    pmf1_per_threshold,
    presence_scores,
    prompt_sensitivity,
    promptable_metrics,
    unit_stats,
)


def _mask(*cells: tuple[int, int]) -> torch.Tensor:
    m = torch.zeros(4, 4, dtype=torch.bool)
    for r, c in cells:
        m[r, c] = True
    return m


G1 = _mask((0, 0), (0, 1), (1, 0), (1, 1))  # top-left 2x2
G2 = _mask((2, 2), (2, 3), (3, 2), (3, 3))  # bottom-right 2x2
P2 = G2 | _mask((1, 2), (1, 3))  # G2 plus 2 px: IoU 4/6
NONE = torch.zeros(0, 4, 4, dtype=torch.bool)


def _units() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(pred_masks, pred_scores, gt_masks) of five units.

    A: positive, 2 GT; preds G1 (0.9), P2 (0.8), a 0.3-score mask (ignored).
    B: negative prompt, no prediction (TN).   C: negative prompt, one false positive (FP).
    D: an image with no ground truth at all, no prediction (TN).   E: positive, nothing predicted (FN).
    """
    a = (torch.stack([G1, P2, G2]), torch.tensor([0.9, 0.8, 0.3]), torch.stack([G1, G2]))
    b = (NONE, torch.zeros(0), NONE)
    c = (_mask((0, 3), (1, 3), (2, 3))[None], torch.tensor([0.7]), NONE)
    d = (NONE, torch.zeros(0), NONE)
    e = (NONE, torch.zeros(0), G1[None])
    return [a, b, c, d, e]


def _stats(units) -> UnitStats:
    return UnitStats.cat([unit_stats(*u) for u in units])


def test_hand_computed_case():
    st = _stats(_units())
    # Presence: A TP, B TN, C FP, D TN, E FN -> tp=1 fp=1 tn=2 fn=1.
    ps = presence_scores(st)
    assert ps["presence_precision"] == pytest.approx(1 / 2)
    assert ps["presence_recall"] == pytest.approx(1 / 2)
    assert ps["presence_f1"] == pytest.approx(2 / (2 + 1 + 1))
    assert ps["presence_accuracy"] == pytest.approx(3 / 5)
    # MCC = (1*2 - 1*1) / sqrt((1+1)(1+1)(2+1)(2+1)) = 1/6.
    assert il_mcc(st) == pytest.approx(1 / 6)
    # pmF1 over positive units A and E. A: IoU(G1)=1, IoU(P2,G2)=4/6=0.667.
    # tau <= 0.65 (4 thresholds): TP 2, FP 0, FN 0+1 -> 4/5.  tau >= 0.70 (6): TP 1, FP 1, FN 1+1 -> 2/5.
    per = pmf1_per_threshold(st)
    assert per[:4].tolist() == pytest.approx([0.8] * 4) and per[4:].tolist() == pytest.approx([0.4] * 6)
    assert pmf1(st) == pytest.approx((4 * 0.8 + 6 * 0.4) / 10)
    assert cgf1(st) == pytest.approx(0.56 / 6)
    # Semantic IoU: A 8/10, B 1, C 0, D 1, E 0.
    assert miou(st) == pytest.approx((0.8 + 1 + 0 + 1 + 0) / 5)
    assert miou(st, positives_only=True) == pytest.approx(0.4)
    out = promptable_metrics(st)
    assert out["pmf1@0.5"] == pytest.approx(0.8) and out["pmf1@0.75"] == pytest.approx(0.4)
    assert (out["n_units"], out["n_positive"], out["n_negative"]) == (5, 2, 3)
    assert (out["presence_tp"], out["presence_fp"], out["presence_tn"], out["presence_fn"]) == (1, 1, 2, 1)


def test_false_positive_on_negative_prompt_only_counts_at_image_level():
    a, _, c, _, _ = _units()
    with_fp = _stats([a, c])
    without = _stats([a])
    assert torch.equal(pmf1_per_threshold(with_fp), pmf1_per_threshold(without))
    assert presence_scores(with_fp)["presence_precision"] == pytest.approx(1 / 2)
    assert presence_scores(without)["presence_precision"] == 1.0


def test_f26_image_without_ground_truth_is_a_true_negative():
    a, b, _, d, _ = _units()
    perfect_a = (a[0][:1], a[1][:1], a[2][:1])  # G1 predicted exactly, one GT
    st = _stats([perfect_a, d])
    ps = presence_scores(st)
    assert ps["presence_f1"] == 1.0 and ps["presence_precision"] == 1.0 and ps["presence_recall"] == 1.0
    assert il_mcc(st) == 1.0 and cgf1(st) == 1.0
    # The old evaluation scored the empty-GT image as a failed unit: mean per-unit F1 = (1 + 0) / 2,
    # and over a negatives-only set exactly 0.0000. Here negatives-only is *undefined* (NaN), not 0,
    # and accuracy shows every decision was right.
    neg = _stats([b, d])
    ps = presence_scores(neg)
    assert math.isnan(ps["presence_f1"]) and ps["presence_f1"] != 0.0
    assert ps["presence_accuracy"] == 1.0
    assert math.isnan(pmf1(neg)) and math.isnan(il_mcc(neg))


def test_score_threshold_and_bad_shapes():
    st = unit_stats(torch.stack([G1]), torch.tensor([0.49]), torch.stack([G1]))
    assert not bool(st.has_pred[0]) and st.fn[0, 0] == 1 and st.tp.sum() == 0
    st = unit_stats(torch.stack([G1]).float() * 0.8, torch.tensor([0.5]), torch.stack([G1]))
    assert st.tp[0].tolist() == [1] * 10  # float masks binarised at 0.5; score 0.5 is kept
    with pytest.raises(ValueError, match=r"pred_scores must be \(1,\)"):
        unit_stats(torch.stack([G1]), torch.tensor([0.9, 0.1]), torch.stack([G1]))
    with pytest.raises(ValueError, match="spatial shapes differ"):
        unit_stats(torch.stack([G1]), torch.tensor([0.9]), torch.zeros(1, 3, 3, dtype=torch.bool))


def test_hungarian_beats_greedy_on_overlapping_gt():
    # Overlapping GT masks (allowed in SA-Co), built so that the highest-IoU pair (p1, gx) blocks p2,
    # while the assignment p1->gy (IoU 1/2), p2->gx (IoU 3/7) matches both at tau = 0.4.
    gx = _mask((0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1))
    gy = _mask((0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2))
    p1 = _mask((0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (2, 0))  # IoU gx 5/7, gy 4/8
    p2 = _mask((0, 3), (1, 0), (1, 1), (1, 2))  # IoU gx 3/7, gy 0
    st = unit_stats(torch.stack([p1, p2]), torch.tensor([0.9, 0.9]), torch.stack([gx, gy]), iou_thresholds=(0.4,))
    assert st.tp[0, 0] == 2  # greedy on IoU would give 1 (p1->gx, p2 left with gy at 0)


def test_prompt_sensitivity():
    a, b = _mask((0, 0), (0, 1)), _mask((0, 0))
    # IoU(a,a)=1, IoU(a,b)=1/2 twice -> 1 - IoU: 0, 1/2, 1/2 -> 1/3.
    assert prompt_sensitivity(torch.stack([a, a, b])) == pytest.approx(1 / 3)
    empty = torch.zeros(2, 4, 4, dtype=torch.bool)
    assert prompt_sensitivity([torch.stack([a, a, b]), empty]) == pytest.approx((1 / 3 + 0) / 2)
    with pytest.raises(ValueError, match=">= 2 prompts"):
        prompt_sensitivity(a[None])


def test_metric_class_matches_functional():
    units = _units()
    m = PromptableSegMetric()
    m.update(*zip(*units[:2]))
    m.update(*zip(*units[2:]))
    out = m.compute()
    ref = promptable_metrics(_stats(units))
    for k, v in ref.items():
        assert float(out[k]) == pytest.approx(v, nan_ok=True), k
