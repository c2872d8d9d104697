"""DDP-safe evaluation of slots (F44): a 2-rank test run reports the 1-rank run's test metrics.

Same tiny model and weights, same 5 held-out clips (uneven across 2 ranks, eval batches of 2): every number
(FG-ARI / ARI / mBO per frame and video, per group, the eval losses) goes through torchmetrics and is reduced
across ranks, and the per-sample table holds every clip once.
"""
from __future__ import annotations

import csv

import pytest
import torch

from lit_experiments.core.trainer import LitTrainer

from .helpers import tiny_data, tiny_module, tiny_parts

FAST = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, logger=False,
            enable_checkpointing=False)
N_TEST = 5


def _test(module, run_dir, **kw) -> dict[str, float]:
    dm = tiny_data(n_test=N_TEST, eval_batch_size=2)
    trainer = LitTrainer(run_dir=str(run_dir), **{**FAST, "devices": 1, **kw})
    return trainer.test(module, datamodule=dm, verbose=False)[0]


def _rows(run_dir) -> list[dict[str, str]]:
    (path,) = list(run_dir.rglob("*per_sample.csv"))
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_f44_two_rank_test_metrics_equal_the_one_rank_run(tmp_path):
    torch.manual_seed(0)
    # learned slot queries: the forward is deterministic, so both runs see the same slots for a clip
    module = tiny_module(parts=tiny_parts(learned=True), eval_masks="attn")
    dm = tiny_data(n_test=N_TEST)
    module.dry_run(dm.example_batch())
    one = _test(module, tmp_path / "one")  # builds the feature cache the spawned ranks then read
    two = _test(module, tmp_path / "two", strategy="ddp_spawn", devices=2)
    keys = [k for k in one if not k.endswith(("_count", "_skipped"))]
    assert {"test/fg_ari", "test/ari", "test/mbo", "test/video_fg_ari", "test/fg_ari_decoder", "test/loss",
            "test/recon_rel"} <= set(keys)
    assert set(keys) == {k for k in two if not k.endswith(("_count", "_skipped"))}
    for key in keys:
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
    rows_one, rows_two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert len(rows_one) == len(rows_two) == N_TEST
    assert [r["index"] for r in rows_two] == [r["index"] for r in rows_one]
    for a, b in zip(rows_one, rows_two):
        assert float(b["video_fg_ari"]) == pytest.approx(float(a["video_fg_ari"]), abs=1e-5)
