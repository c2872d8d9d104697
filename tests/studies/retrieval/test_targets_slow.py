"""The demo's targets (issue 12), slow: configs/retrieval/demo.yaml exactly as `make demo` runs it (~1.5 min).

kNN accuracy of the SimSiam backbone above the same backbone at random initialisation; FastAP's mAP above the
SimSiam-only features on the same held-out frames; both above the chance level (the positive rate); the SimSiam
collapse monitor (std of normalised z, epoch mean) above 0.5 / sqrt(d).
"""
from __future__ import annotations

import json

import pytest

from lit_experiments.cli import main

from .test_learning import DEMO


@pytest.mark.slow
def test_demo_meets_its_targets(tmp_path):
    run = tmp_path / "run"
    main(["curriculum", "-c", str(DEMO), "--trainer.run_dir", str(run), "--data.init_args.cache_dir",
          str(tmp_path / "cache")])
    res = json.loads((run / "results.json").read_text())
    t = res["test"]
    assert res["status"] == "done"
    assert t["test/knn_acc"] > t["test/knn_acc_init"] + 0.05
    assert t["test/map"] > t["test/map_simsiam"] + 0.02
    assert t["test/map_simsiam"] > t["test/map_chance"] and t["test/map"] > t["test/map_chance"]
    assert t["test/map_xclip"] > t["test/map_simsiam_xclip"] + 0.02 and t["test/map_simsiam_xclip"] > t["test/map_chance_xclip"]
    assert res["stages"]["simsiam"]["metrics"]["simsiam/train/z_std_ratio_epoch"] > 0.5
