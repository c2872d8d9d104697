"""Reduced learning check of the slots study, in the default suite (~25 s): 150 steps of the demo config.

The full-length target (demo FG-ARI >= 0.5 and above the grid baseline) is the slow test in test_targets_slow.py.
Here the trained model must group objects clearly better than the same model untrained, scored by the product's
own `lit-exp test --ckpt_path init` on the same held-out clips (measured: FG-ARI 0.107 -> 0.279, relative
reconstruction error 1.65 -> 0.92).
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from lit_experiments.cli import main

ROOT = Path(__file__).resolve().parents[3]


def test_slots_demo_learns_to_group_in_150_steps(tmp_path):
    run = tmp_path / "run"
    steps = 150
    override = {
        "data": {"init_args": {"source": {"init_args": {"n_train": 160, "n_val": 16, "n_test": 48}},
                               "cache_dir": str(tmp_path / "cache")}},
        "trainer": {"run_dir": str(run), "val_check_interval": steps, "limit_val_batches": 1},
        "stages": [{"name": "slots", "max_steps": steps,
                    "optimizer": {"name": "AdamW", "lr": 2.0e-3, "scheduler": "warmup_cosine", "warmup_steps": 30,
                                  "scheduler_kwargs": {"eta_min_ratio": 0.05}}}],
    }
    (tmp_path / "reduced.yaml").write_text(yaml.safe_dump(override))
    cfg = ["-c", str(ROOT / "configs" / "slots" / "demo.yaml"), "-c", str(tmp_path / "reduced.yaml")]
    main(["curriculum", *cfg])
    trained = json.loads((run / "results.json").read_text())["test"]
    main(["test", *cfg, "--ckpt_path", "init"])
    (init_results,) = list((run / "eval").glob("test-*/results.json"))
    init = json.loads(init_results.read_text())["test"]
    assert trained["test/grid_fg_ari"] == init["test/grid_fg_ari"]  # same held-out clips
    assert trained["test/fg_ari"] >= init["test/fg_ari"] + 0.1, (init["test/fg_ari"], trained["test/fg_ari"])
    assert trained["test/recon_rel"] < 0.8 * init["test/recon_rel"], (init["test/recon_rel"], trained["test/recon_rel"])
