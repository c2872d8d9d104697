"""The demo's claims, slow: configs/retrieval/demo.yaml exactly as `make demo` runs it (~1.5 min).

The claims of the reduced run (test_learning.check_claims: kNN accuracy above the random-init backbone, the
SimSiam features above the random-init backbone on the phase, floors beside the headline, a healthy collapse
monitor), plus the headline above its random-ranking floor. Whether unlabelled FastAP beats SimSiam's embedding is
reported over 3 seeds in the README, not asserted.
"""
from __future__ import annotations

import json

import pytest

from lit_experiments.cli import main

from .test_learning import DEMO, check_claims


@pytest.mark.slow
def test_demo_meets_its_targets(tmp_path):
    run = tmp_path / "run"
    main(["curriculum", "-c", str(DEMO), "--trainer.run_dir", str(run), "--data.init_args.cache_dir",
          str(tmp_path / "cache")])
    res = json.loads((run / "results.json").read_text())
    t = check_claims(res)
    assert t["test/map"] > t["test/map_random"] and t["test/map_xclip"] > t["test/map_random_xclip"]
