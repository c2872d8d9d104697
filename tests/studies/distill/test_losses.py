"""Losses of the distill study against direct formulas and torch / torchvision references."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from lit_experiments.core.errors import ConfigError
from lit_experiments.studies.distill.components import matching
from lit_experiments.studies.distill.losses import (
    DistillLoss,
    FeatureDistillLoss,
    SetLoss,
    dice_loss,
    soft_bce,
)


def _boxes(*shape: int, gen: torch.Generator) -> torch.Tensor:
    centre = torch.rand(*shape, 2, generator=gen) * 0.5 + 0.25
    size = torch.rand(*shape, 2, generator=gen) * 0.3 + 0.05
    return torch.cat([centre, size], -1)


def _outputs(b: int, q: int, size: int = 8, seed: int = 0, grad: bool = True) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {"pred_masks": torch.randn(b, q, size, size, generator=gen) * 2, "pred_boxes": _boxes(b, q, gen=gen),
           "pred_logits": torch.randn(b, q, generator=gen), "presence_logits": torch.randn(b, 1, generator=gen)}
    return {k: v.requires_grad_(grad) for k, v in out.items()}


def _targets(ns: list[int], size: int = 16, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [{"masks": torch.rand(n, size, size, generator=gen) > 0.6, "boxes": _boxes(n, gen=gen)} for n in ns]


def _direct_dice(p: torch.Tensor, t: torch.Tensor, soft: bool) -> torch.Tensor:
    num = 2 * (p * t).sum() + 1
    den = (p ** 2).sum() + (t ** 2).sum() if soft else p.sum() + t.sum()
    return 1 - num / (den + 1)


@pytest.mark.parametrize("soft", [False, True])
def test_dice_loss_equals_the_direct_formula(soft):
    gen = torch.Generator().manual_seed(0)
    logits, target = torch.randn(4, 6, 6, generator=gen), torch.rand(4, 6, 6, generator=gen)
    ref = torch.stack([_direct_dice(logits[i].sigmoid(), target[i], soft) for i in range(4)])
    assert torch.allclose(dice_loss(logits, target, soft=soft), ref, atol=1e-6)


def test_soft_bce_is_the_binary_kl():
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(50, generator=gen), torch.rand(50, generator=gen)
    p = x.sigmoid().double()
    kl = t.double() * (t.double() / p).log() + (1 - t.double()) * ((1 - t.double()) / (1 - p)).log()
    assert torch.allclose(soft_bce(x, t).double(), kl.mean(), atol=1e-6)
    assert soft_bce(torch.logit(t), t).abs() < 1e-5


@pytest.mark.parametrize("query_loss", ["bce", "focal"])
def test_set_loss_terms_equal_a_reference_on_the_hungarian_pairs(query_loss):
    outputs, targets = _outputs(3, 5), _targets([2, 0, 4])
    weights = {"mask_bce_weight": 2.0, "dice_weight": 1.5, "box_l1_weight": 5.0, "giou_weight": 2.0,
               "query_weight": 0.7, "presence_weight": 0.3}
    terms = SetLoss(**weights, query_loss=query_loss)(outputs, targets)
    bce, dice, l1, giou = [], [], [], []
    query_target = torch.zeros(3, 5)
    for b, tgt in enumerate(targets):
        out_b = {k: v[b] for k, v in outputs.items()}
        pi, ti = matching.hungarian_match(out_b, tgt)  # checked against brute force in test_matching
        query_target[b, pi] = 1
        for i, j in zip(pi.tolist(), ti.tolist()):
            x = F.interpolate(out_b["pred_masks"][i][None, None], size=(16, 16), mode="bilinear")[0, 0]
            t = tgt["masks"][j].float()
            bce.append(F.binary_cross_entropy_with_logits(x, t))
            dice.append(_direct_dice(x.sigmoid(), t, soft=False))
            l1.append(F.l1_loss(out_b["pred_boxes"][i], tgt["boxes"][j], reduction="sum"))
            g = generalized_box_iou(box_convert(out_b["pred_boxes"][i:i + 1], "cxcywh", "xyxy"),
                                    box_convert(tgt["boxes"][j:j + 1], "cxcywh", "xyxy"))
            giou.append(1 - g[0, 0])
    assert query_target.sum() == terms["n_matched"] == 6
    if query_loss == "bce":
        query = F.binary_cross_entropy_with_logits(outputs["pred_logits"], query_target)
    else:
        query = sigmoid_focal_loss(outputs["pred_logits"], query_target, reduction="mean")
    presence = F.binary_cross_entropy_with_logits(outputs["presence_logits"][:, 0], torch.tensor([1.0, 0.0, 1.0]))
    ref = {"mask_bce": torch.stack(bce).mean(), "dice": torch.stack(dice).mean(), "box_l1": torch.stack(l1).mean(),
           "giou": torch.stack(giou).mean(), "query": query, "presence": presence}
    for key, value in ref.items():
        assert torch.allclose(terms[key], value, atol=1e-5), key
    total = sum(weights[f"{k}_weight"] * v for k, v in ref.items())
    assert torch.allclose(terms["loss"], total, atol=1e-4)


def test_set_loss_gradient_reaches_every_output():
    outputs = _outputs(2, 4)
    SetLoss()(outputs, _targets([3, 1]))["loss"].backward()
    for key, value in outputs.items():
        assert value.grad is not None and torch.isfinite(value.grad).all() and value.grad.abs().sum() > 0, key


def test_set_loss_on_empty_targets_is_zero_with_grad_for_masks_and_boxes():
    outputs = _outputs(2, 4)
    terms = SetLoss()(outputs, _targets([0, 0]))
    for key in ("mask_bce", "dice", "box_l1", "giou"):
        assert terms[key].requires_grad and terms[key].item() == 0.0, key
    assert terms["n_matched"] == 0
    assert torch.allclose(terms["query"], F.binary_cross_entropy_with_logits(outputs["pred_logits"],
                                                                             torch.zeros(2, 4)))
    assert torch.allclose(terms["presence"], F.softplus(outputs["presence_logits"][:, 0]).mean())  # target 0
    terms["loss"].backward()
    assert outputs["pred_masks"].grad is not None and torch.isfinite(outputs["pred_masks"].grad).all()


def test_set_loss_without_presence_head_and_with_focal_masks():
    outputs, targets = _outputs(2, 4), _targets([2, 1], size=8)
    outputs.pop("presence_logits")
    terms = SetLoss(mask_loss="focal", focal_alpha=0.4, focal_gamma=1.5)(outputs, targets)
    assert terms["presence"].item() == 0.0 and terms["presence"].requires_grad
    ref = []
    for b, tgt in enumerate(targets):
        out_b = {k: v[b] for k, v in outputs.items()}
        for i, j in zip(*matching.hungarian_match(out_b, tgt)):
            ref.append(sigmoid_focal_loss(out_b["pred_masks"][i], tgt["masks"][j].float(), 0.4, 1.5, "mean"))
    assert len(ref) == 3 and torch.allclose(terms["mask_bce"], torch.stack(ref).mean(), atol=1e-6)


@pytest.mark.parametrize("kwargs,key", [({"dice_weight": -1.0}, "dice_weight"), ({"query_loss": "ce"}, "query_loss"),
                                        ({"cost_box": -2}, "cost_box"), ({"resize": "nearest"}, "resize")])
def test_set_loss_rejects_bad_config_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        SetLoss(**kwargs)


def test_distill_loss_is_zero_when_the_student_equals_the_teacher():
    teacher = _outputs(2, 6, grad=False)
    student = {k: v.clone().requires_grad_(True) for k, v in teacher.items()}
    terms = DistillLoss(max_matches=6, min_teacher_score=0.0, logit_queries="matched")(student, teacher)
    assert terms["n_matched"] == terms["n_kept"] == 12
    for key in ("mask_bce", "dice", "box_l1", "giou", "logit", "presence"):
        assert abs(terms[key].item()) < 1e-5, key
    # a different student is not at zero
    other = DistillLoss(max_matches=6, min_teacher_score=0.0)(_outputs(2, 6, seed=5), teacher)
    for key in ("mask_bce", "dice", "box_l1", "giou", "logit", "presence"):
        assert other[key].item() > 1e-3, key


def test_distill_logits_on_all_queries_silence_the_unpaired_ones():
    teacher = _outputs(2, 6, grad=False)
    student = {k: v.clone().requires_grad_(True) for k, v in teacher.items()}
    terms = DistillLoss(max_matches=2, min_teacher_score=0.0)(student, teacher)
    scores = matching.teacher_scores(teacher)
    target = torch.zeros(2, 6)
    for b in range(2):
        kept = torch.argsort(scores[b], descending=True)[:2]  # identity pairing: student query = teacher query
        target[b, kept] = teacher["pred_logits"][b, kept].sigmoid()
    ref = soft_bce(teacher["pred_logits"], target)
    assert terms["n_matched"] == 4 and torch.allclose(terms["logit"], ref, atol=1e-6) and ref > 0.05
    terms["loss"].backward()
    assert all(torch.isfinite(v.grad).all() for v in student.values())


def _f25_check() -> None:
    teacher = _outputs(2, 20, grad=False)
    teacher["pred_logits"] = torch.full((2, 20), 6.0)
    teacher["pred_logits"][1, 3:] = -6.0  # unit 1: only 3 confident queries
    teacher["presence_logits"] = torch.full((2, 1), 6.0)
    terms = DistillLoss(max_matches=4, min_teacher_score=0.5)(_outputs(2, 20, seed=3), teacher)
    assert terms["n_kept"] == 4 + 3 and terms["n_matched"] == 4 + 3


def _all_queries(scores, max_matches, min_teacher_score):  # the seed: every query paired
    return torch.argsort(scores, descending=True)


def _no_cap(scores, max_matches, min_teacher_score):
    order = torch.argsort(scores, descending=True)
    return order[scores[order] >= min_teacher_score]


def test_f25_distillation_pairs_at_most_max_matches_confident_teacher_queries():
    _f25_check()


@pytest.mark.parametrize("mutant", [_all_queries, _no_cap])
def test_f25_an_uncapped_matcher_put_into_the_product_fails_the_check(monkeypatch, mutant):
    monkeypatch.setattr(matching, "greedy_teacher_match", mutant)  # the function DistillLoss calls
    with pytest.raises(AssertionError):
        _f25_check()


def test_distill_loss_guards_and_ground_truth_term():
    teacher, student, targets = _outputs(2, 4, grad=False), _outputs(2, 4, seed=2), _targets([1, 0], size=8)
    with pytest.raises(ValueError, match="F01"):
        DistillLoss()(student, {k: v.clone().requires_grad_(True) for k, v in teacher.items()})
    gt = SetLoss()
    combined = DistillLoss(gt_loss=gt, gt_weight=0.5)(student, teacher, targets)
    plain = DistillLoss()(student, teacher)
    assert torch.allclose(combined["loss"], plain["loss"] + 0.5 * gt(student, targets)["loss"], atol=1e-5)
    with pytest.raises(ValueError, match="targets"):
        DistillLoss(gt_loss=gt, gt_weight=0.5)(student, teacher)
    with pytest.raises(ConfigError, match="max_matches"):
        DistillLoss(max_matches=-1)


def test_distill_loss_across_mask_resolutions_and_without_presence():
    teacher, student = _outputs(2, 5, size=16, grad=False), _outputs(2, 5, size=8, seed=4)
    student.pop("presence_logits")
    terms = DistillLoss(min_teacher_score=0.0)(student, teacher)
    assert terms["presence"].item() == 0.0 and terms["n_matched"] == 10
    terms["loss"].backward()
    assert torch.isfinite(student["pred_masks"].grad).all() and student["pred_masks"].grad.abs().sum() > 0


@pytest.mark.parametrize("shape,dim", [((2, 8, 4, 4), 1), ((2, 16, 8), -1)])
def test_feature_distill_loss_equals_mse_plus_one_minus_cosine(shape, dim):
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)
    terms = FeatureDistillLoss(mse_weight=2.0, cosine_weight=0.5, channel_dim=dim)(s, t)
    cos = (s * t).sum(dim) / (s.norm(dim=dim) * t.norm(dim=dim))
    assert torch.allclose(terms["mse"], ((s - t) ** 2).mean())
    assert torch.allclose(terms["cosine"], (1 - cos).mean(), atol=1e-6)
    assert torch.allclose(terms["loss"], 2 * terms["mse"] + 0.5 * terms["cosine"])
    assert FeatureDistillLoss(channel_dim=dim)(t, t)["loss"].abs() < 1e-5


def test_feature_distill_loss_needs_equal_shapes_and_a_frozen_teacher():
    with pytest.raises(ValueError, match=r"\(2, 8, 4, 4\).*\(2, 16, 4, 4\).*project"):
        FeatureDistillLoss()(torch.randn(2, 8, 4, 4), torch.randn(2, 16, 4, 4))
    with pytest.raises(ValueError, match="F01"):
        FeatureDistillLoss()(torch.randn(2, 8), torch.randn(2, 8, requires_grad=True))
