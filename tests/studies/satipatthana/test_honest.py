"""Honest numbers for the satipatthana study (issue 22): floors and references beside every headline metric (F49),
per-sample scores for the paired bootstrap (F51), every random choice from ``seed_everything`` (F50).

The floors are read from the results.json of a real (tiny) circles curriculum and checked against a brute-force
recomputation on the same test samples (majority class, baseline accuracy) and against sklearn (AUROC).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from lit_experiments.cli import main
from lit_experiments.core.configs import load_composed, merge
from lit_experiments.core.results import check_floors, read_per_item
from lit_experiments.core.seeding import RUN_SEED_ENV
from lit_experiments.studies.satipatthana.components import MLPBaseline
from lit_experiments.studies.satipatthana.evaluation import SatipatthanaTestMetrics

from .helpers import circles_dm
from .tiny import tiny

DEMO = Path(__file__).resolve().parents[3] / "configs" / "satipatthana" / "demo.yaml"


def test_f49_satipatthana_headline_has_floors(tmp_path, monkeypatch):
    raw = load_composed(DEMO)
    override = tiny(DEMO, raw, tmp_path)
    override["trainer"]["limit_test_batches"] = None  # every test sample, so the brute force sees the same ones
    override["trainer"]["enable_progress_bar"] = False
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(override))
    main(["curriculum", "-c", str(DEMO), "-c", str(tmp_path / "tiny.yaml"), "--seed_everything=3"])
    run = tmp_path / "run"
    data = json.loads((run / "results.json").read_text())
    assert set(data["headline"]) == {"test/acc", "test/trust_auroc", "test/trust_auroc_drunk"}  # circles: no psnr
    assert check_floors(data) == []  # every headline metric has a floor row
    refs = {m: {r["name"]: r for r in rows} for m, rows in data["references"].items()}
    assert refs["test/acc"]["majority class"]["kind"] == "floor"
    assert refs["test/acc"]["baseline"]["kind"] == "reference"
    assert refs["test/acc"]["baseline"]["value"] == pytest.approx(data["test"]["test/baseline_acc"], abs=1e-6)
    assert refs["test/trust_auroc"]["constant trust"]["value"] == 0.5
    assert refs["test/trust_auroc"]["baseline max softmax"]["kind"] == "reference"
    assert data["splits"]["overlap"] == 0 and data["splits"]["tuned_on_test"] is False

    # brute force on the same test samples: the datamodule as the run built it (seed 3)
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    monkeypatch.setenv(RUN_SEED_ENV, "3")
    data_args = merge(raw["data"]["init_args"], override["data"]["init_args"])
    source = data_args.pop("source")["init_args"]
    dm = circles_dm(**source, **{k: v for k, v in data_args.items() if k not in ("batch_size", "eval_batch_size")})
    dm.setup()
    train_y, test_y = dm.splits["train"].y, dm.splits["test"].y
    majority = int(torch.bincount(train_y).argmax())
    assert refs["test/acc"]["majority class"]["value"] == pytest.approx(float((test_y == majority).float().mean()))

    per_item = read_per_item(run)["satipatthana_test"]
    assert per_item["ids"] == [str(i) for i in dm.split_ids["test"]]  # one row per test sample, in order
    scores = per_item["scores"]
    assert np.mean(scores["correct"]) == pytest.approx(data["test"]["test/acc"], abs=1e-6)
    assert np.mean(scores["baseline_correct"]) == pytest.approx(data["test"]["test/baseline_acc"], abs=1e-6)
    assert np.mean(scores["majority_correct"]) == pytest.approx(refs["test/acc"]["majority class"]["value"])
    trust = np.r_[scores["trust_clean"], scores["trust_void"]]
    auroc = roc_auc_score(np.r_[np.ones(len(test_y)), np.zeros(len(test_y))], trust)
    assert data["test"]["test/trust_auroc"] == pytest.approx(auroc, abs=1e-5)


def test_f49_satipatthana_image_floors_match_brute_force():
    """The image floors of the test metrics: mean-image PSNR and the baseline's max-softmax AUROC."""
    gen = torch.Generator().manual_seed(0)
    x, mean_image = torch.rand(6, 1, 4, 4, generator=gen), torch.rand(1, 4, 4, generator=gen)
    y = torch.tensor([0, 1, 1, 2, 2, 2])
    logits, void_logits = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    m = SatipatthanaTestMetrics(3, ["uniform"], image=True, baseline=True, max_steps=2, majority_class=2,
                                mean_image=mean_image)
    trust = {p: torch.rand(6, generator=gen) for p in ("clean", "augmented", "drunk", "mismatch", "void")}
    m.update(index=torch.arange(6), y=y, logits=logits, trust=trust, void_kind=torch.zeros(6, dtype=torch.long),
             energy={k: torch.rand(2, 6, generator=gen) for k in ("clean", "drunk", "void")}, baseline_logits=logits,
             baseline_void_logits=void_logits, recon=x, x=x)
    out = m.compute()
    mse = ((x - mean_image) ** 2).flatten(1).mean(1)
    assert out["psnr_mean_image"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-5)
    msp = np.r_[logits.softmax(1).amax(1).numpy(), void_logits.softmax(1).amax(1).numpy()]
    assert out["baseline_msp_auroc"] == pytest.approx(roc_auc_score(np.r_[np.ones(6), np.zeros(6)], msp))
    assert out["majority_acc"] == pytest.approx(0.5) and out["constant_trust_auroc"] == 0.5


def test_f50_satipatthana_seed_everything_varies_data_order_baseline_and_test_noise(monkeypatch):
    def draw(run: str, **kw):
        monkeypatch.setenv("PL_GLOBAL_SEED", run)
        monkeypatch.setenv(RUN_SEED_ENV, run)
        dm = circles_dm(n_samples=100, batch_size=16, **kw)
        dm.setup()
        order = torch.cat([b["index"] for b in dm.train_dataloader()]).tolist()
        base = MLPBaseline(hidden_dim=4, num_classes=2)
        base(torch.zeros(1, 2))
        return dm.split_ids["test"], dm.splits["test"].x, order, base.net[1][0].weight.detach()

    a, b, again = draw("0"), draw("1"), draw("0")
    assert a[0] != b[0] and not torch.equal(a[1], b[1])  # the data set and its split follow the run's seed
    assert a[2] != b[2]  # the training order
    assert not torch.equal(a[3], b[3])  # the baseline's initialisation
    assert a[0] == again[0] and torch.equal(a[1], again[1]) and a[2] == again[2] and torch.equal(a[3], again[3])
    pinned = draw("0", seed=5), draw("1", seed=5)
    assert pinned[0][0] == pinned[1][0] and pinned[0][2] == pinned[1][2]  # a YAML seed pins data and order
