"""F44: a 2-rank test run (ddp_spawn, gloo, CPU) reports the same test metrics as a 1-rank run on the same data
and weights: every test number is a torchmetrics Metric reduced across ranks, each sample's noise is seeded by
its index, and the evaluation loader never pads (F37)."""

from __future__ import annotations

import copy
import json

import pytest

from lit_experiments.core.trainer import LitTrainer
from lit_experiments.studies.satipatthana.datamodule import SatipatthanaDataModule

from .helpers import circles_dm, make_module


def _dm() -> SatipatthanaDataModule:
    # 31 test samples in batches of 6: uneven across 2 ranks and across batches
    return circles_dm(n_samples=155, batch_size=16, eval_batch_size=6)


def _test(module, tmp_path, devices: int) -> dict[str, float]:
    extra = {"strategy": "ddp_spawn"} if devices > 1 else {}
    trainer = LitTrainer(run_dir=str(tmp_path / f"r{devices}"), accelerator="cpu", devices=devices, logger=None,
                         enable_progress_bar=False, enable_model_summary=False, **extra)
    return trainer.test(copy.deepcopy(module), datamodule=_dm(), verbose=False)[0]


@pytest.fixture(scope="module")
def built_module():
    module = make_module(baseline=True, lazy=True)
    dm = _dm()
    module.dry_run(dm.example_batch())  # build the lazy parts once, so both runs test the same weights
    module.baseline.trained_steps += 1  # score the (untrained) baseline too: its number must also agree
    return module


def test_f44_two_rank_test_metrics_equal_one_rank(built_module, tmp_path):
    one = _test(built_module, tmp_path, 1)
    two = _test(built_module, tmp_path, 2)
    keys = {k for k in one if k.startswith("test/")}
    assert {"test/acc", "test/baseline_acc", "test/trust_clean", "test/trust_drunk", "test/trust_augmented",
            "test/trust_mismatch", "test/trust_void", "test/trust_auroc", "test/trust_auroc_drunk"} <= keys
    assert keys == {k for k in two if k.startswith("test/")}
    for k in sorted(keys):
        assert two[k] == pytest.approx(one[k], abs=1e-5), k
    # the per-sample rows behind the floors and the per-item file are gathered from both ranks as well
    items = [json.loads((tmp_path / f"r{n}" / "per_item" / "satipatthana_test.json").read_text()) for n in (1, 2)]
    assert items[1]["ids"] == items[0]["ids"] and len(items[0]["ids"]) == 31
    for name, values in items[0]["scores"].items():
        assert items[1]["scores"][name] == pytest.approx(values, abs=1e-5), name
    # the counts behind the means: one rank's share alone would give another accuracy on this split
    assert 0.0 < one["test/acc"] < 1.0 or one["test/trust_auroc"] not in (0.0, 1.0)
