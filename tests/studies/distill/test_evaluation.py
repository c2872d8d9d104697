"""Evaluation of the distill study: post-processing, SA-Co wrapper, teacher / student table, F46 numbers."""
from __future__ import annotations

import csv
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_experiments.metrics.promptable import UnitStats, promptable_metrics, unit_stats
from lit_experiments.studies.distill import evaluation as E
from lit_experiments.studies.distill.components.calibration import Calibration

SIZE = 16


def _outputs(b: int, q: int, h: int, gen: torch.Generator, presence: bool = True) -> dict[str, torch.Tensor]:
    out = {"pred_masks": torch.randn(b, q, h, h, generator=gen) * 3, "pred_boxes": torch.rand(b, q, 4, generator=gen),
           "pred_logits": torch.randn(b, q, generator=gen) * 2}
    if presence:
        out["presence_logits"] = torch.randn(b, 1, generator=gen) * 2  # SAM3's (B, 1)
    return out


@pytest.mark.parametrize("presence", [True, False])
def test_postprocess_keeps_scores_masks_and_boxes_by_the_definition(presence: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    out = _outputs(3, 6, 8, gen, presence)
    t, tp, thr = 1.7, 0.6, 0.3
    units = E.postprocess(out, score_threshold=thr, temperature=t, presence_temperature=tp, size=(16, 16))
    for b, u in enumerate(units):
        s = torch.sigmoid(out["pred_logits"][b] / t)
        if presence:
            s = s * torch.sigmoid(out["presence_logits"][b, 0] / tp)
            assert float(u.presence) == pytest.approx(float(torch.sigmoid(out["presence_logits"][b, 0] / tp)))
        else:
            assert u.presence is None
        keep = s >= thr
        up = F.interpolate(out["pred_masks"][b:b + 1], size=(16, 16), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(u.scores, s[keep])
        assert torch.equal(u.masks, up[keep] > 0) and u.masks.shape[-2:] == (16, 16)
        torch.testing.assert_close(u.boxes, out["pred_boxes"][b][keep])
        assert float(u.unit_score) == pytest.approx(float(s.max()))
        assert torch.equal(u.union(), (up[keep] > 0).any(0))


def test_postprocess_bad_outputs_are_clear_errors() -> None:
    with pytest.raises(KeyError, match="pred_boxes"):
        E.postprocess({"pred_masks": torch.zeros(1, 2, 4, 4), "pred_logits": torch.zeros(1, 2)})
    with pytest.raises(ValueError, match="temperature=0"):
        E.postprocess(_outputs(1, 2, 4, torch.Generator()), temperature=0)


def _units(n: int, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    out = _outputs(n, 5, 8, gen)
    gts = []
    for i in range(n):
        k = i % 3  # 0, 1 or 2 objects: negative units included (F26)
        gts.append({"masks": torch.rand(k, SIZE, SIZE, generator=gen) > 0.6})
    return out, gts


def test_evaluate_units_matches_promptable_metrics_directly() -> None:
    gen = torch.Generator().manual_seed(1)
    out, gts = _units(12, gen)
    got = E.evaluate_units(E.postprocess(out, size=(SIZE, SIZE)), gts)
    probs = F.interpolate(out["pred_masks"], size=(SIZE, SIZE), mode="bilinear", align_corners=False).sigmoid()
    scores = out["pred_logits"].sigmoid() * out["presence_logits"].sigmoid()
    ref = promptable_metrics(UnitStats.cat([unit_stats(probs[i], scores[i], g["masks"]) for i, g in enumerate(gts)]))
    assert got.keys() == ref.keys()
    for k in ref:
        assert (math.isnan(got[k]) and math.isnan(ref[k])) or got[k] == pytest.approx(ref[k]), k
    assert got["n_negative"] == 4


def test_f26_negative_unit_without_prediction_is_a_true_negative() -> None:
    out = {"pred_masks": torch.full((2, 1, 4, 4), 5.0), "pred_boxes": torch.rand(2, 1, 4),
           "pred_logits": torch.tensor([[5.0], [-5.0]]), "presence_logits": torch.tensor([5.0, -5.0])}
    m = E.evaluate_units(E.postprocess(out), [torch.ones(1, 4, 4, dtype=torch.bool), torch.zeros(0, 4, 4)])
    assert (m["presence_tp"], m["presence_tn"], m["presence_fp"], m["presence_fn"]) == (1, 1, 0, 0)
    assert m["presence_f1"] == 1.0 and m["il_mcc"] == 1.0 and m["miou"] == 1.0


def test_update_metric_refuses_a_metric_that_thresholds_again() -> None:
    from lit_experiments.metrics.promptable import PromptableSegMetric

    with pytest.raises(ValueError, match="unit_metric"):
        E.update_metric(PromptableSegMetric(), [], [])


def test_comparison_table_ratios_and_files(tmp_path) -> None:
    teacher = {"miou": 0.6, "miou_pos": 0.5, "presence_f1": 0.0, "il_mcc": -0.2, "pmf1": float("nan"), "cgf1": 0.4}
    student = {"miou": 0.3, "miou_pos": 0.45, "presence_f1": 0.1, "il_mcc": 0.1, "pmf1": 0.3, "cgf1": float("nan")}
    keys = list(teacher)
    rows = E.comparison_table(teacher, student, keys)
    ratio = {r["metric"]: r["ratio"] for r in rows}
    assert ratio["miou"] == pytest.approx(0.5) and ratio["miou_pos"] == pytest.approx(0.9)
    assert all(math.isnan(ratio[k]) for k in ("presence_f1", "il_mcc", "pmf1", "cgf1"))  # 0, < 0, NaN, NaN
    md, csv_path = E.write_table(rows, tmp_path / "out")
    text = md.read_text()
    assert "| miou | 0.6000 | 0.3000 | 0.5000 |" in text and text.count("nan") == 6
    with csv_path.open() as fh:
        back = list(csv.DictReader(fh))
    assert [r["metric"] for r in back] == keys and float(back[1]["ratio"]) == pytest.approx(0.9)
    with pytest.raises(KeyError, match="'cgf1' missing from the student"):
        E.comparison_table(teacher, {k: v for k, v in student.items() if k != "cgf1"}, keys)


# ----------------------------------------------------------------------------- F46
def _images(n: int) -> torch.Tensor:
    """Image i holds category i % 3 (stored in pixel (0, 0, 0)) as a square at a position depending on i."""
    img = torch.zeros(n, 3, SIZE, SIZE, dtype=torch.uint8)
    for i in range(n):
        img[i, 0, 0, 0] = i % 3
        img[i, 1, 2 + i % 5:8 + i % 5, 3:9] = 255
    return img


def _toy(respond: bool = True, unstable: bool = False):
    """A score_fn: query 0 segments the square; its score is high when the prompt names the image's category
    (``respond``); ``unstable``: the mask shifts with the prompt's length (paraphrases disagree)."""
    def score_fn(images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        b = images.shape[0]
        obj = images[:, 1] > 0
        if unstable:
            obj = torch.stack([torch.roll(o, len(p) % 4, dims=1) for o, p in zip(obj, prompts)])
        masks = torch.stack([torch.where(obj, 6.0, -6.0), torch.full_like(obj, -6.0, dtype=torch.float)], 1)
        hit = torch.tensor([p.split()[-1] == f"c{int(im[0, 0, 0])}" for im, p in zip(images, prompts)])
        sign = hit.float() * 2 - 1 if respond else torch.zeros(b)
        logits = torch.stack([2.0 * sign + 1.0, torch.full((b,), -4.0)], 1)
        return {"pred_masks": masks, "pred_boxes": torch.rand(b, 2, 4), "pred_logits": logits,
                "presence_logits": 3.0 * sign}
    return score_fn


def _reference_responsiveness(fn, images, present, absent) -> float:
    def score(i: int, p: str) -> float:
        o = fn(images[i:i + 1], [p])
        return float((o["pred_logits"].sigmoid() * o["presence_logits"].sigmoid()[:, None]).max())
    return float(np.mean([np.mean([score(i, p) for p in present[i]]) - np.mean([score(i, p) for p in absent[i]])
                          for i in range(len(images))]))


def test_f46_concept_responsiveness_positive_when_the_model_responds_zero_when_it_ignores() -> None:
    images = _images(7)
    present = [[f"c{i % 3}", f"a c{i % 3}"] for i in range(7)]
    absent = [f"c{(i + 1) % 3}" for i in range(7)]
    r = E.concept_responsiveness(_toy(), images, present, absent, batch_size=3)
    assert r > 0.5
    assert r == pytest.approx(_reference_responsiveness(_toy(), images, present, [[a] for a in absent]), abs=1e-6)
    assert E.concept_responsiveness(_toy(respond=False), images, present, absent) == pytest.approx(0.0, abs=1e-12)
    rp = E.concept_responsiveness(_toy(), images, present, absent, score="presence")
    assert rp == pytest.approx(float(torch.sigmoid(torch.tensor(3.0)) - torch.sigmoid(torch.tensor(-3.0))))
    with pytest.raises(ValueError, match="absent_prompts: 6 entries for 7 images"):
        E.concept_responsiveness(_toy(), images, present, absent[:6])


def _pairwise_iou(masks: list[torch.Tensor]) -> float:
    vals = []
    for a, b in itertools.combinations(masks, 2):
        union = int((a | b).sum())
        vals.append(int((a & b).sum()) / union if union else 1.0)
    return float(np.mean(vals))


def test_f46_paraphrase_stability_one_for_identical_outputs_lower_when_they_differ() -> None:
    images = _images(5)
    groups = [["c0", "a c0", "round c0"], ["c1", "the c1"]]
    on = [[0, 3], [1, 4]]  # the images that contain each group's concept
    for mode in ("mask", "score"):
        assert E.paraphrase_stability(_toy(), images, groups, mode=mode, group_images=on) == 1.0
    unstable = E.paraphrase_stability(_toy(unstable=True), images, groups, group_images=on, batch_size=2)
    ref = []
    for g, imgs in zip(groups, on):
        for i in imgs:
            ref.append(_pairwise_iou([E.postprocess(_toy(unstable=True)(images[i:i + 1], [p]))[0].union() for p in g]))
    assert unstable == pytest.approx(float(np.mean(ref))) and unstable < 0.9
    # score mode: "c0" scores like a hit, "round c0" too; a prompt that names another category drops the score
    mixed = [["c0", "a c2"]]
    s = E.paraphrase_stability(_toy(), images, mixed, mode="score", group_images=[[0]])
    o = [_toy()(images[:1], [p]) for p in mixed[0]]
    sc = [float((x["pred_logits"].sigmoid() * x["presence_logits"].sigmoid()[:, None]).max()) for x in o]
    assert s == pytest.approx(1 - abs(sc[0] - sc[1])) and s < 0.5
    with pytest.raises(ValueError, match="expected a list of >= 2 non-empty prompts"):
        E.paraphrase_stability(_toy(), images, [["c0"]])


def test_f46_the_two_numbers_separate_what_one_prompt_sensitivity_mixed() -> None:
    """A model that ignores the prompt is perfectly stable but unresponsive; one that responds but whose masks
    move with the wording is responsive but unstable: each number catches the failure the other misses."""
    images = _images(6)
    present = [f"c{i % 3}" for i in range(6)]
    absent = [f"c{(i + 1) % 3}" for i in range(6)]
    groups, on = [["c0", "a c0", "the c0 c0"]], [[0, 3]]
    deaf, jittery = _toy(respond=False), _toy(unstable=True)
    assert E.concept_responsiveness(deaf, images, present, absent) == pytest.approx(0.0, abs=1e-12)
    assert E.paraphrase_stability(deaf, images, groups, group_images=on) == 1.0
    assert E.concept_responsiveness(jittery, images, present, absent) > 0.5
    assert E.paraphrase_stability(jittery, images, groups, group_images=on) < 0.9


def test_calibration_kwargs_feed_postprocess() -> None:
    cal = Calibration(temperature=2.0, presence_temperature=0.5, threshold=0.05)
    out = _outputs(2, 4, 8, torch.Generator().manual_seed(3))
    a = E.postprocess(out, **cal.postprocess_kwargs())
    b = E.postprocess(out, score_threshold=0.05, temperature=2.0, presence_temperature=0.5)
    assert all(torch.equal(x.scores, y.scores) for x, y in zip(a, b))
