"""Calibration of the distill study (F42) against numpy, torchmetrics, sklearn and brute force."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import f1_score, matthews_corrcoef
from torchmetrics.classification import BinaryCalibrationError

from lit_experiments.studies.distill import evaluation as E
from lit_experiments.studies.distill.components import calibration as C


def _numpy_ece(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    """Direct reference: equal-width bins [lo, hi), the last closed at 1."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        sel = (p >= lo) & ((p < hi) if b < n_bins - 1 else (p <= hi))
        if sel.any():
            total += sel.sum() / len(p) * abs(y[sel].mean() - p[sel].mean())
    return float(total)


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_matches_numpy_reference(n_bins: int) -> None:
    rng = np.random.default_rng(n_bins)
    p = np.concatenate([rng.beta(0.5, 2.0, 3000), [0.0, 1.0], np.arange(n_bins + 1) / n_bins])
    y = (rng.random(len(p)) < np.clip(p * 1.3, 0, 1)).astype(float)
    assert C.ece(p, y, n_bins) == pytest.approx(_numpy_ece(p, y, n_bins), abs=1e-12)


@pytest.mark.parametrize("n_bins", [5, 15])
def test_ece_matches_torchmetrics(n_bins: int) -> None:
    gen = torch.Generator().manual_seed(n_bins)
    p = torch.rand(5000, generator=gen) ** 2  # < 1.0: torchmetrics gives exactly 1.0 a bin of its own
    y = (torch.rand(5000, generator=gen) < p.sqrt()).long()
    ref = BinaryCalibrationError(n_bins=n_bins, norm="l1")(p, y)
    assert C.ece(p, y, n_bins) == pytest.approx(float(ref), abs=1e-6)
    assert C.ece(p, y, n_bins) > 0.05  # miscalibrated on purpose: the comparison is not 0 == 0


def test_ece_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="probabilities, not logits"):
        C.ece(torch.tensor([-1.0, 2.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="differ in length"):
        C.ece(torch.rand(3), torch.tensor([0, 1]))


@pytest.mark.parametrize("t0", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_temperature(t0: float) -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(40000, generator=gen) * 4
    y = (torch.rand(40000, generator=gen) < (z / t0).sigmoid()).double()
    t = C.fit_temperature(z, y)
    assert t == pytest.approx(t0, rel=0.05)
    nll = lambda temp: float(torch.nn.functional.binary_cross_entropy_with_logits(z / temp, y))  # noqa: E731
    assert nll(t) <= min(nll(t0), nll(t * 1.05), nll(t / 1.05)) + 1e-9  # a minimum of the NLL


def test_fit_temperature_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        C.fit_temperature(torch.randn(10), torch.zeros(10))


@pytest.mark.parametrize("metric", ["f1", "mcc"])
def test_fit_threshold_maximises_the_metric_by_brute_force(metric: str) -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.3).astype(int)
    p = np.round(np.clip(rng.normal(0.3 + 0.3 * y, 0.15), 0, 1), 2)  # rounding: ties among the candidates
    ref = f1_score if metric == "f1" else matthews_corrcoef
    best = max(ref(y, (p >= t).astype(int)) for t in np.unique(p))
    t = C.fit_threshold(p, y, metric)
    assert ref(y, (p >= t).astype(int)) == pytest.approx(best, abs=1e-12)
    assert t not in set(np.unique(p).tolist())  # a midpoint: a value a hair off makes the same decisions


def test_calibration_state_dict_round_trip(tmp_path) -> None:
    cal = C.Calibration(temperature=2.0, presence_temperature=0.7, threshold=0.12, fitted_on="validation", n=40)
    torch.save({"calibration": cal.state_dict()}, tmp_path / "ckpt.pt")
    back = C.Calibration()
    back.load_state_dict(torch.load(tmp_path / "ckpt.pt")["calibration"])
    assert back == cal and back.fitted and not C.Calibration().fitted
    with pytest.raises(KeyError, match="unknown keys \\['bogus'\\]"):
        back.load_state_dict({**cal.state_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="temperature=0"):
        back.load_state_dict({**cal.state_dict(), "temperature": 0})


def _square(size: int, y: int, x: int, w: int) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y:y + w, x:x + w] = True
    return m


def test_calibration_records_labels_by_one_to_one_iou_matching() -> None:
    gt = _square(16, 2, 2, 6)
    logit_map = lambda m: torch.where(m, 6.0, -6.0)  # noqa: E731
    masks = torch.stack([logit_map(gt), logit_map(gt), logit_map(_square(16, 9, 9, 6))])  # q0, q1 duplicates
    outputs = {"pred_masks": torch.stack([masks, masks])[:, :, ::2, ::2],  # predicted at half resolution
               "pred_boxes": torch.rand(2, 3, 4), "pred_logits": torch.randn(2, 3),
               "presence_logits": torch.randn(2, 1)}
    rec = C.calibration_records(outputs, [{"masks": gt[None]}, {"masks": torch.zeros(0, 16, 16)}])
    assert rec["query_labels"][0].sum() == 1 and rec["query_labels"][0, 2] == 0  # one of the duplicates only
    assert rec["query_labels"][1].sum() == 0 and rec["presence_labels"].tolist() == [1.0, 0.0]
    assert rec["presence_logits"].shape == (2,)


# ----------------------------------------------------------------------------- F42 end to end
def _student_batch(seed: int, n: int = 48, q: int = 3, size: int = 16, shift: float = -4.0, flip: bool = False):
    """A student whose scores are shifted down by ``shift``: correct masks, but at 0.5 it keeps nothing.
    ``flip``: the ground truth of positive and negative units swapped (the labels of the test split)."""
    gen = torch.Generator().manual_seed(seed)
    masks, logits, presence, targets = [], [], [], []
    for _ in range(n):
        pos = bool(torch.rand((), generator=gen) < 0.6)
        y, x = (int(v) for v in torch.randint(0, size - 6, (2,), generator=gen))
        obj = _square(size, y, x, 6)
        qm = [obj] + [_square(size, *(int(v) for v in torch.randint(0, size - 4, (2,), generator=gen)), 4)
                      for _ in range(q - 1)]
        masks.append(torch.stack([torch.where(m, 6.0, -6.0) for m in qm]))
        noise = torch.randn(q + 1, generator=gen) * 0.5
        logits.append(torch.cat([torch.tensor([2.5 if pos else -2.5]), torch.full((q - 1,), -3.0)]) + noise[:q] + shift)
        presence.append(torch.tensor(3.0 if pos else -3.0) + noise[q])
        targets.append({"masks": obj[None] if pos != flip else torch.zeros(0, size, size, dtype=torch.bool)})
    out = {"pred_masks": torch.stack(masks), "pred_boxes": torch.rand(n, q, 4, generator=gen),
           "pred_logits": torch.stack(logits), "presence_logits": torch.stack(presence)}
    return out, targets


def test_f42_threshold_is_fitted_on_validation_only() -> None:
    val = [_student_batch(0), _student_batch(1)]
    test = [_student_batch(2)]
    flipped = [_student_batch(2, flip=True)]
    cal, _ = E.evaluate_calibrated(val, test)
    cal_flipped, _ = E.evaluate_calibrated(val, flipped)
    assert cal == cal_flipped  # the test labels do not enter the fit
    assert cal.fitted_on == "validation" and cal.n == 96
    on_val = C.fit_calibration(C.cat_records([C.calibration_records(o, t) for o, t in val]))
    assert cal == on_val
    # the check is sensitive: fitted on (flipped) test data the calibration would differ
    assert C.fit_calibration(C.cat_records([C.calibration_records(*flipped[0])])).threshold != cal.threshold


def test_f42_calibrated_threshold_recovers_a_student_that_finds_nothing_at_half() -> None:
    cal, m = E.evaluate_calibrated([_student_batch(0), _student_batch(1)], [_student_batch(2)])
    assert m["raw/presence_recall"] == 0.0 and m["raw/presence_f1"] == 0.0  # finds nothing at 0.5
    assert cal.threshold < 0.2
    assert "presence temperature at the lower bound" in cal.notes  # these presence logits separate the classes
    assert m["presence_f1"] > 0.9 and m["il_mcc"] > 0.8 and m["miou_pos"] > 0.9
    assert m["ece_presence_calibrated"] <= m["ece_presence"] + 1e-9
    # a temperature minimises the NLL, not the ECE, and cannot undo a shift: the query ECE is reported, not bounded
    assert 0 <= m["ece_query_calibrated"] <= 1 and 0 <= m["ece_query"] <= 1


def test_fit_calibration_without_positive_queries_keeps_temperature_and_says_so() -> None:
    out, tgts = _student_batch(0)
    rec = C.calibration_records(out, [{"masks": torch.zeros(0, 16, 16)}] * len(tgts))
    rec["presence_labels"][:5] = 1.0
    cal = C.fit_calibration(rec)
    assert cal.temperature == 1.0 and "query temperature kept at 1.0" in cal.notes


def test_reliability_plot_writes_one_png_for_teacher_and_student(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(500, generator=gen)
    y = (torch.rand(500, generator=gen) < p).long()
    path = C.reliability_plot({"teacher": (p, y), "student": (p * 0.4, y)}, tmp_path / "fig" / "rel.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (450, 620)  # the legend and a note under the axes (issue 25)
    assert not math.isnan(C.ece(p * 0.4, y))
    with pytest.raises(ValueError, match="no models"):
        C.reliability_plot({}, tmp_path / "x.png")


def test_a_calibration_that_raises_ece_says_so_on_the_plot_and_in_words(tmp_path) -> None:
    """Issue 25: the reliability plot showed a calibrated ECE worse than the raw one without a word."""
    from lit_experiments.studies.distill.components.calibration import ece_note, reliability_plot

    note = ece_note({"student": 0.303, "student_raw": 0.253, "teacher": 0.20, "teacher_raw": 0.25})
    assert "raised the student's ECE from 0.253 to 0.303" in note and "teacher" not in note
    assert "fitted by NLL" in note and "scored on test" in note
    assert ece_note({"student": 0.2, "student_raw": 0.25}) == ""
    probs, labels = torch.linspace(0, 1, 50), (torch.arange(50) % 2).float()
    plain = reliability_plot({"a": (probs, labels)}, tmp_path / "plain.png")
    noted = reliability_plot({"a": (probs, labels)}, tmp_path / "noted.png", note=note)
    assert plain.read_bytes() != noted.read_bytes()
