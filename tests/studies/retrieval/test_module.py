"""Retrieval study end to end through the product's CLI: the stop-gradient target and collapse guards (F19), scores of any sign (F21),
and ``lit-exp retrieval-report`` comparing two checkpoints of one run against CSVs and sklearn."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

import lit_experiments.metrics.retrieval as retrieval_mod
import lit_experiments.studies.retrieval.losses as losses
from lit_experiments.cli import main
from lit_experiments.metrics import retrieval_metrics
from lit_experiments.studies.retrieval import report

from .helpers import results, run_curriculum, tiny_overlay

# Measured on the demo config made small (32 px, narrow ResNet-18 [8-64], projector 64 -> 64, predictor 16, batch
# 64, SGD lr 0.5 unscaled), 30 steps: without the stop-gradient the batch's effective rank of normalised z falls
# from 22 to 2.3-5.8 after ~10 steps and the loss sits at -0.8 to -0.93; with it the rank stays >= 7.4 (falling
# slowly as SimSiam learns). The std ratio does not separate them (0.5-1.0 in both): the projector's last
# BatchNorm gives every dimension unit variance in training mode, so the collapse is onto a line, which the rank
# sees. Threshold 6.5 with patience 5 lies between the two.
COLLAPSE = {"collapse_ratio": 0.1, "collapse_rank": 6.5, "collapse_patience": 5}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: the tiny convolutions spend ~10x longer in thread hand-offs on a shared 2-core box
    (measured: 6 SimSiam steps 22.6 s with 2 threads under load, 4.0 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def simsiam_only(tmp: Path, steps: int) -> dict:
    stage = {"name": "simsiam", "args": COLLAPSE, "optimizer": {"lr": 0.5, "lr_batch": 64}}
    overlay = tiny_overlay(tmp, [stage], steps=steps, limit_val_batches=0, enable_model_summary=False)
    model = overlay["model"]["init_args"]
    model["projector"]["init_args"].update(hidden=64, out_dim=64)
    model["predictor"]["init_args"].update(hidden=16)
    overlay["data"]["init_args"]["batch_size"] = 64
    overlay["data"]["init_args"]["source"]["init_args"]["n_train"] = 16
    return overlay


def run_split(tmp: Path, overlay: dict, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    try:
        code = run_curriculum(tmp, overlay) and 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return int(code or 0), captured.out + captured.err


def no_stop_gradient(z: torch.Tensor) -> torch.Tensor:
    return z  # the bug put into the product's stop_gradient: the target branch keeps its gradient


def test_f19_a_simsiam_target_that_keeps_its_gradient_is_caught_by_the_health_guard(tmp_path, monkeypatch, capsys):
    """The stop-gradient branch is the SimSiam loss's declared target: without the stop-gradient it carries a
    gradient and the TrainingHealth guard stops the stage at its first step, naming the target."""
    monkeypatch.setattr(losses, "stop_gradient", no_stop_gradient)
    code, text = run_split(tmp_path / "bug", simsiam_only(tmp_path / "bug", 2), capsys)
    assert code != 0, text[-2000:]
    assert "TrainingHealth:target_grad" in text and "target 'stop_gradient(z1)' requires grad" in text, text[-2000:]
    monkeypatch.undo()
    run_dir = run_curriculum(tmp_path / "ok", simsiam_only(tmp_path / "ok", 2))
    assert results(run_dir)["stages"]["simsiam"]["status"] == "done"


def test_f19_without_stop_gradient_simsiam_collapses_and_the_guard_says_so(tmp_path, monkeypatch, capsys):
    """With the target guard off (``trainer.health: {target_grad: off}``), the run without the stop-gradient
    collapses within 30 steps and the module's collapse guard names it; with it, the rank stays above the floor."""
    monkeypatch.setattr(losses, "stop_gradient", no_stop_gradient)
    bug = simsiam_only(tmp_path / "bug", 30)
    bug["trainer"]["health"] = {"target_grad": "off"}
    code, text = run_split(tmp_path / "bug", bug, capsys)
    assert code != 0, text[-2000:]
    assert "representation collapse" in text and "(F19)" in text and "collapse_rank 6.5" in text, text[-2000:]
    monkeypatch.undo()

    run_dir = run_curriculum(tmp_path / "ok", simsiam_only(tmp_path / "ok", 30))
    assert results(run_dir)["stages"]["simsiam"]["status"] == "done"
    rows = list(csv.DictReader(next(run_dir.rglob("metrics.csv")).open()))
    ranks = [float(r["simsiam/train/z_effective_rank_step"]) for r in rows if r.get("simsiam/train/z_effective_rank_step")]
    assert len(ranks) == 30
    assert min(ranks) > COLLAPSE["collapse_rank"], ranks


def _mean_ap_sklearn(q: torch.Tensor, g: torch.Tensor, ql: torch.Tensor, gl: torch.Tensor) -> float:
    s = (q @ g.T).double().numpy()
    aps = [average_precision_score((gl == ql[i]).numpy(), s[i]) for i in range(len(ql)) if (gl == ql[i]).any()]
    return float(np.mean(aps))


def _shift(x: torch.Tensor, c: float) -> torch.Tensor:
    return torch.cat([x, torch.full((x.shape[0], 1), c, dtype=x.dtype)], dim=1)


def _drop_non_positive(orig):
    """torchmetrics >= 1.7.4's behaviour put into the product: scores <= 0 are dropped (never retrieved)."""
    def wrapped(scores, rel, kidx):
        drop = scores <= 0
        return orig(scores.masked_fill(drop, -math.inf), rel & ~drop, kidx)
    return wrapped


def test_f21_raw_cosine_with_negatives_equals_shifted_scores(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 16, generator=gen, dtype=torch.float64), dim=1)
    gl = torch.arange(200) % 4
    ql = torch.arange(40) % 4
    g = F.normalize(centres[gl] + 0.9 * torch.randn(200, 16, generator=gen, dtype=torch.float64), dim=1)
    q = F.normalize(centres[ql] + 0.9 * torch.randn(40, 16, generator=gen, dtype=torch.float64), dim=1)
    assert ((q @ g.T) < 0).double().mean() > 0.3  # many raw cosines are negative
    ks = (1, 5, 10)
    raw = retrieval_metrics(q, g, ql, gl, ks=ks)
    shifted = retrieval_metrics(_shift(q, 2.0), _shift(g, 2.0), ql, gl, ks=ks)  # scores + 4 > 0
    assert ((_shift(q, 2.0) @ _shift(g, 2.0).T) > 0).all()
    keys = ["map", "map@r", "r_precision"] + [f"{m}@{k}" for m in ("precision", "recall", "hit_rate") for k in ks]
    for k in keys:
        assert float(raw[k]) == pytest.approx(float(shifted[k]), abs=1e-12), k
    assert torch.allclose(raw["per_query_ap"], shifted["per_query_ap"], atol=1e-12)
    assert float(raw["map"]) == pytest.approx(_mean_ap_sklearn(q, g, ql, gl), abs=1e-12)

    monkeypatch.setattr(retrieval_mod, "_rank_chunk", _drop_non_positive(retrieval_mod._rank_chunk))
    raw_bug = retrieval_metrics(q, g, ql, gl, ks=ks)
    shifted_bug = retrieval_metrics(_shift(q, 2.0), _shift(g, 2.0), ql, gl, ks=ks)
    assert float(shifted_bug["map"]) == pytest.approx(float(shifted["map"]), abs=1e-12)  # nothing <= 0 there
    assert abs(float(raw_bug["map"]) - float(shifted_bug["map"])) > 1e-3


# ------------------------------------------------------------------------------------------------ the report
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("demo")
    return run_curriculum(tmp, tiny_overlay(tmp, steps=2, limit_val_batches=0, enable_model_summary=False))


def _csv(path: Path) -> dict[str, float]:
    with path.open() as fh:
        return {r["frame"]: float(r["ap_embedding"]) for r in csv.DictReader(fh)}


def test_report_compares_two_checkpoints_like_the_csvs_and_sklearn(demo_run, tmp_path, capsys):
    ckpt_a = next(demo_run.glob("stages/*simsiam/final.ckpt"))
    ckpt_b = next(demo_run.glob("stages/*fastap/final.ckpt"))
    config = demo_run / "config.yaml"
    out = tmp_path / "report"
    assert report.main(["-c", str(config), "--ckpt", str(ckpt_a), "--ckpt_b", str(ckpt_b), "--out", str(out),
                        "--query", "0", "--top", "5"]) == 0
    assert "queries improved" in capsys.readouterr().out

    a, b = _csv(out / "a" / "per_query_ap.csv"), _csv(out / "b" / "per_query_ap.csv")
    assert a.keys() == b.keys()
    cmp = json.loads((out / "compare.json").read_text())
    both = [k for k in a if not (math.isnan(a[k]) or math.isnan(b[k]))]
    assert cmp["n_compared"] == len(both) > 0
    assert cmp["n_improved"] + cmp["n_degraded"] + cmp["n_unchanged"] == cmp["n_compared"]
    up = sum(b[k] - a[k] > 2e-6 for k in both)
    up_or_tie = sum(b[k] - a[k] > -2e-6 and b[k] != a[k] for k in both)
    down = sum(b[k] - a[k] < -2e-6 for k in both)
    down_or_tie = sum(b[k] - a[k] < 2e-6 and b[k] != a[k] for k in both)
    assert up <= cmp["n_improved"] <= up_or_tie and down <= cmp["n_degraded"] <= down_or_tie
    assert cmp["n_improved"] + cmp["n_degraded"] > 0  # the FastAP stage moved the embedding
    for key, sign in (("improved", 1), ("degraded", -1)):
        assert len(cmp[key]) == min(5, cmp[f"n_{key}"])
        deltas = [abs(vb - va) for _, va, vb in cmp[key]]
        assert deltas == sorted(deltas, reverse=True)
        for name, va, vb in cmp[key]:
            assert va == pytest.approx(a[name], abs=1e-6) and vb == pytest.approx(b[name], abs=1e-6)
            assert sign * (vb - va) > 0

    ranking = (out / "a" / "ranking.md").read_text()
    rows = [line for line in ranking.splitlines() if line.startswith("| ") and line[2].isdigit()]
    # the internal query, then the datamodule's two external query images (tiny.py keeps n_queries at 2)
    assert [int(r.split("|")[1]) for r in rows] == [1, 2, 3, 4, 5] * 3
    assert "external:query00" in ranking and "external:query01" in ranking
    assert (out / "a" / "ranking_external_query01.png").stat().st_size > 0

    for side, ckpt in (("a", ckpt_a), ("b", ckpt_b)):
        model, dm = report._load(str(config), str(ckpt))
        _, z, _, labels, _ = report._embed_split(model, dm)
        # float32 scores, as the product computes them: the tiny run's cosines spread by ~0.003 only, so a
        # float64 reference breaks float32 ties differently (mAP 0.5670 vs 0.5724 measured)
        zn = F.normalize(z.float(), dim=1)
        s = (zn @ zn.T).numpy()
        aps = []
        for i in range(len(labels)):
            keep = np.arange(len(labels)) != i
            y = (labels[keep] == labels[i]).numpy()
            if y.any():
                aps.append(average_precision_score(y, s[i][keep]))
        metrics = json.loads((out / side / "metrics.json").read_text())
        assert metrics["map"] == pytest.approx(float(np.mean(aps)), abs=1e-9)
        assert metrics["checkpoint"] == str(ckpt)


def test_retrieval_report_help_through_the_cli(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["retrieval-report", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--ckpt_b" in out and "--query" in out and "retrieval-report" in out


def test_fastap_on_images_uses_both_views_as_each_others_positive():
    """Image inputs in the FastAP stage (no cache): 2B embeddings, the temporal mask tiled over the views and each
    view positive for its partner, as the seed's use_labels: false mode needs."""
    from lit_experiments.core.specs import StageSpec
    from lit_experiments.studies.retrieval.module import RetrievalModule
    from lit_experiments.studies.retrieval.parts import Predictor, Projector, TimmBackbone

    torch.manual_seed(0)
    module = RetrievalModule(TimmBackbone(model_kwargs={"channels": [8, 16, 32, 64]}), Projector(out_dim=8, hidden=16),
                             Predictor(4))
    module.set_stage(StageSpec(name="fastap", max_steps=1), in_curriculum=False)
    seen = {}

    def capture(z, labels=None, pos_mask=None):
        seen.update(z=z, labels=labels, pos=pos_mask)
        return z.sum() * 0

    module.fastap_loss.forward = capture
    module.fastap_loss.last_stats = {"fastap_mean": 0.0, "n_no_positive": 0, "n_empty_bins": 0}
    b = 4
    clip, t = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 5, 0, 1])
    pos = (clip[:, None] == clip[None, :]) & ((t[:, None] - t[None, :]).abs() <= 1)
    pos.fill_diagonal_(False)
    batch = {"view1": torch.rand(b, 3, 32, 32), "view2": torch.rand(b, 3, 32, 32), "label": torch.zeros(b).long(),
             "pos_mask": pos, "image": torch.zeros(b, 3, 32, 32, dtype=torch.uint8)}
    module._fastap_step(batch)
    assert seen["z"].shape == (2 * b, 8) and seen["labels"] is None
    p = seen["pos"]
    for i in range(b):
        assert p[i, i + b] and p[i + b, i]  # a view and its partner
    assert torch.equal(p[:b, :b], pos) and torch.equal(p[b:, b:], pos) and torch.equal(p[:b, b:] & ~torch.eye(b, dtype=torch.bool), pos)
    assert not p[0, 1] and p[2, 3]  # 5 frames apart: not positive; 1 apart in one clip: positive


def test_random_init_baseline_measures_its_batchnorm_statistics_on_the_data():
    """test/knn_acc_init uses fresh weights with BatchNorm statistics measured on the bank (cumulative average
    over the batches), not the default 0 / 1: the stem BN's running mean equals the stem conv's mean output."""
    from lit_experiments.studies.retrieval.parts import TimmBackbone

    torch.manual_seed(0)
    trained = TimmBackbone(model_kwargs={"channels": [8, 16, 32, 64]})
    init = trained.fresh()
    assert torch.equal(init.model.conv1.weight, TimmBackbone(model_kwargs={"channels": [8, 16, 32, 64]}).model.conv1.weight)
    images = [torch.rand(5, 3, 32, 32), torch.rand(3, 3, 32, 32) * 0.5]
    assert init.calibrate_norm_stats(iter(images)) == 8
    with torch.no_grad():  # cumulative average: every batch's mean counts once (PyTorch's momentum=None rule)
        means = [init.model.conv1((x - init.mean) / init.std).mean(dim=(0, 2, 3)) for x in images]
    torch.testing.assert_close(init.model.bn1.running_mean, torch.stack(means).mean(0), rtol=1e-4, atol=1e-5)
    assert int(init.model.bn1.num_batches_tracked) == 2
