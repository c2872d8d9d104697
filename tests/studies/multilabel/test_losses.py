"""Losses of the multi-label study against references: ASL from the paper's equations (numpy), BCE from torch,
cosine and hash terms by hand; CombinedLoss's weights really switch terms off."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_experiments.core.errors import ConfigError
from lit_experiments.studies.multilabel.heads import AGCHHead
from lit_experiments.studies.multilabel.losses import CombinedLoss, CosineLoss, HashLoss, MultiLabelLoss


def _data(b: int = 8, c: int = 6, scale: float = 4.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, generator=g, dtype=torch.float64) * scale,
            (torch.rand(b, c, generator=g) < 0.3).double())


def _asl_paper(x: np.ndarray, y: np.ndarray, gamma_neg: float, gamma_pos: float, clip: float) -> float:
    """Ridnik et al. 2021, Eq. (3)-(4), written out: p_m = max(p - m, 0); L+ = (1-p)^g+ log p;
    L- = p_m^g- log(1 - p_m); loss = -(y L+ + (1-y) L-), averaged over all entries."""
    p = 1.0 / (1.0 + np.exp(-x))
    p_m = np.maximum(p - clip, 0.0)
    l_pos = (1.0 - p) ** gamma_pos * np.log(p)
    l_neg = p_m ** gamma_neg * np.log(1.0 - p_m)
    return float(np.mean(-(y * l_pos + (1.0 - y) * l_neg)))


@pytest.mark.parametrize("gamma_neg,gamma_pos,clip", [(4, 0, 0.05), (4, 1, 0.05), (2, 0, 0.0), (0, 0, 0.2),
                                                      (3.5, 0.5, 0.1)])
def test_asl_matches_the_paper_equations(gamma_neg: float, gamma_pos: float, clip: float) -> None:
    x, y = _data()
    ours = MultiLabelLoss("asl", gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip)(x, y)
    reference = _asl_paper(x.numpy(), y.numpy(), gamma_neg, gamma_pos, clip)
    assert ours.item() == pytest.approx(reference, rel=1e-9)


def test_asl_without_focusing_or_clip_equals_bce_with_logits() -> None:
    x, y = _data()
    x_asl, x_bce = x.clone().requires_grad_(), x.clone().requires_grad_()
    asl = MultiLabelLoss("asl", gamma_neg=0, gamma_pos=0, clip=0)(x_asl, y)
    bce = F.binary_cross_entropy_with_logits(x_bce, y)  # mean reduction, the same as ours
    torch.testing.assert_close(asl, bce)
    asl.backward()
    bce.backward()
    torch.testing.assert_close(x_asl.grad, x_bce.grad)
    torch.testing.assert_close(MultiLabelLoss("bce")(x, y), bce.detach())


def test_asl_clip_discards_easy_negatives_and_focusing_down_weights_them() -> None:
    x = torch.tensor([[-4.0, -1.0, 2.0]], requires_grad=True)  # p = 0.018, 0.27, 0.88
    y = torch.zeros(1, 3)
    MultiLabelLoss("asl", gamma_neg=0, clip=0.05)(x, y).backward()
    assert x.grad[0, 0] == 0 and x.grad[0, 1] > 0 and x.grad[0, 2] > 0  # p < clip: no loss, no gradient
    per_entry_bce = F.binary_cross_entropy_with_logits(x.detach(), y, reduction="none")
    focal = MultiLabelLoss("asl", gamma_neg=4, clip=0)
    per_entry_asl = torch.stack([focal(x.detach()[:, i:i + 1], y[:, i:i + 1]) for i in range(3)])
    ratio = per_entry_asl / per_entry_bce[0]
    torch.testing.assert_close(ratio, torch.sigmoid(x.detach()[0]) ** 4)  # the focusing factor p^gamma_neg


def test_asl_detach_focusing_keeps_the_value_and_changes_the_gradient() -> None:
    x, y = _data(seed=1)
    grads = []
    for detach in (False, True):
        xi = x.clone().requires_grad_()
        loss = MultiLabelLoss("asl", gamma_neg=4, gamma_pos=1, detach_focusing=detach)(xi, y)
        loss.backward()
        grads.append((loss.detach(), xi.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    assert not torch.allclose(grads[0][1], grads[1][1])


def test_asl_is_finite_for_saturated_logits() -> None:
    x = torch.tensor([[60.0, -60.0, 60.0, -60.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    for clip in (0.0, 0.05):
        loss = MultiLabelLoss("asl", gamma_neg=4, gamma_pos=1, clip=clip)(x, y)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
        # the wrong, confident entries are bounded by the eps clamp: -log(1e-8) each, weighted by the focusing
        assert loss.item() <= 2 * -math.log(1e-8) / 4 + 1e-4


def test_hash_loss_against_hand_computation() -> None:
    h = torch.tensor([[0.5, -1.0], [0.0, 0.5]])
    terms = HashLoss().terms(h)
    # (|h| - 1)^2 = .25, 0, 1, .25 -> 0.375 ; bit means .25, -.25 -> squares .0625 each -> 0.0625
    assert terms["quantization"].item() == pytest.approx(0.375)
    assert terms["balance"].item() == pytest.approx(0.0625)
    assert HashLoss(quantization_weight=2.0, balance_weight=3.0)(h).item() == pytest.approx(0.75 + 0.1875)
    assert HashLoss()(torch.tensor([[1.0, -1.0], [-1.0, 1.0]])).item() == 0.0  # binary and balanced


def test_cosine_loss_against_hand_computation() -> None:
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    # cos f: (0,1)=0, (0,2)=1/sqrt2, (1,2)=1/sqrt2 ; cos y: (0,1)=1/sqrt2, (0,2)=0, (1,2)=1/sqrt2
    # squared differences .5, .5, 0, each twice among the 6 off-diagonal pairs -> 2/6
    assert CosineLoss()(f, y).item() == pytest.approx(1 / 3)
    scaled = f * torch.tensor([[3.0], [0.2], [7.0]])
    assert CosineLoss()(scaled, y).item() == pytest.approx(1 / 3)  # scale-free
    assert CosineLoss()(y.clone(), y).item() == pytest.approx(0.0, abs=1e-7)  # embedding = labels: perfect


def test_cosine_loss_targets_zero_for_a_sample_without_labels_and_handles_one_sample() -> None:
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert CosineLoss()(f, y).item() == pytest.approx(1.0)  # cos f = 1, target 0 (no labels in sample 1)
    one = torch.randn(1, 4, requires_grad=True)
    loss = CosineLoss()(one, torch.ones(1, 3))
    loss.backward()
    assert loss.item() == 0.0 and one.grad is not None


def _head_outputs(hash_bits: int | None = 8) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    head = AGCHHead(dim=8, hash_bits=hash_bits)
    head.build(6, 5, 4)
    y = (torch.rand(5, 4) < 0.5).float()
    return head(torch.randn(5, 6), torch.randn(5, 5)), y


def test_combined_loss_total_is_the_weighted_sum_of_the_parts() -> None:
    out, y = _head_outputs()
    cls, hash_loss = MultiLabelLoss("asl"), HashLoss(quantization_weight=0.5, balance_weight=2.0)
    res = CombinedLoss(cls, cosine_weight=0.3, hash_weight=0.1, hash_loss=hash_loss)(out, y)
    expected = (cls(out["logits"], y) + 0.3 * CosineLoss()(out["fused"], y) + 0.1 * hash_loss(out["hash"]))
    torch.testing.assert_close(res["loss"], expected)
    assert set(res) == {"cls", "cosine", "hash", "hash_quantization", "hash_balance", "loss"}
    on_hash = CombinedLoss(cls, cosine_weight=1.0, cosine_on="hash")(out, y)
    torch.testing.assert_close(on_hash["cosine"], CosineLoss()(out["hash"], y))


@pytest.mark.parametrize("zero", ["cosine", "hash"])
def test_combined_loss_weight_zero_removes_the_term_from_the_graph(zero: str, monkeypatch) -> None:
    out, y = _head_outputs()
    weights = {"cosine_weight": 0.5, "hash_weight": 0.1} | {f"{zero}_weight": 0.0}
    key = "fused" if zero == "cosine" else "hash"
    loss = CombinedLoss(MultiLabelLoss(), **weights)
    res = loss(out, y)
    assert not res[zero].requires_grad  # reported for the log, computed without gradient
    others = res["cls"] + sum(weights[f"{k}_weight"] * res[k] for k in ("cosine", "hash") if k != zero)
    torch.testing.assert_close(res["loss"], others)
    # no gradient reaches the term's input through the total (with the weight on, one does)
    for w, reaches in ((0.0, False), (0.2, True)):
        x = out[key].detach().requires_grad_()
        loss_w = CombinedLoss(MultiLabelLoss(), **(weights | {f"{zero}_weight": w}))
        loss_w(out | {key: x}, y)["loss"].backward(retain_graph=True)
        assert (x.grad is not None and bool(x.grad.abs().sum() > 0)) == reaches
    # a term that would poison the total (NaN) cannot reach it when its weight is 0
    part = CosineLoss if zero == "cosine" else HashLoss
    method = "forward" if zero == "cosine" else "terms"
    orig = getattr(part, method)

    def poisoned(self, *args):
        r = orig(self, *args)
        return {k: v * float("nan") for k, v in r.items()} if isinstance(r, dict) else r * float("nan")

    monkeypatch.setattr(part, method, poisoned)
    res = loss(out, y)
    assert torch.isfinite(res["loss"]) and torch.isnan(res[zero])


def test_combined_loss_ablations_ab1_and_ab3() -> None:
    out, y = _head_outputs(hash_bits=None)  # AB-1: no hash layer
    res = CombinedLoss(MultiLabelLoss(), cosine_weight=0.5, hash_weight=0.0)(out, y)
    assert "hash" not in res and torch.isfinite(res["loss"])
    with pytest.raises(ConfigError, match="hash_weight=0.1.*hash_bits"):
        CombinedLoss(MultiLabelLoss(), hash_weight=0.1)(out, y)
    out, y = _head_outputs()  # AB-3: hash layer, BCE only
    res = CombinedLoss(MultiLabelLoss("bce"), cosine_weight=0.0, hash_weight=0.0)(out, y)
    torch.testing.assert_close(res["loss"], F.binary_cross_entropy_with_logits(out["logits"], y))


@pytest.mark.parametrize("make,match", [
    (lambda: MultiLabelLoss("focal"), "kind='focal'"),
    (lambda: MultiLabelLoss("asl", gamma_neg=-1), "gamma_neg=-1"),
    (lambda: MultiLabelLoss("asl", clip=1.0), "clip=1.0"),
    (lambda: HashLoss(balance_weight=-1), "balance_weight=-1"),
    (lambda: CombinedLoss(MultiLabelLoss(), hash_weight=-0.1), "hash_weight=-0.1"),
    (lambda: CombinedLoss(MultiLabelLoss(), cosine_on="codes"), "cosine_on='codes'"),
])
def test_bad_loss_options_are_config_errors(make, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()


def test_combined_loss_is_built_from_a_class_path_config() -> None:
    """The seed's ablations are YAML deltas of this config: AB-3 sets both weights to 0, the sweep hash_weight."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--loss", type=CombinedLoss)
    mod = "lit_experiments.studies.multilabel.losses"
    cfg = parser.parse_object({"loss": {"class_path": f"{mod}.CombinedLoss", "init_args": {
        "cls": {"class_path": f"{mod}.MultiLabelLoss", "init_args": {"kind": "asl", "gamma_neg": 2}},
        "cosine_weight": 0.5, "hash_weight": 0.001,
        "hash_loss": {"class_path": f"{mod}.HashLoss", "init_args": {"balance_weight": 0.0}}}}})
    loss = parser.instantiate_classes(cfg).loss
    assert loss.cls.kind == "asl" and loss.cls.gamma_neg == 2 and loss.hash_weight == 0.001
    assert loss.hash_loss.balance_weight == 0.0 and loss.cosine_weight == 0.5
