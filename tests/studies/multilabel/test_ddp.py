"""DDP-safe evaluation of the multilabel study (F44): a 2-rank run reports the 1-rank run's validation and test
numbers.

Same tiny towers, head and weights; 13 held-out test images and 5 validation images split unevenly over 2 ranks
(eval batches of 4). Every number is computed from rows gathered over the ranks (``GatheredRows``: scores,
targets, the kNN bank, in index order) or from a metric reduced across them (``val/loss``): the thresholds tuned
on validation, mAP / AUC / LRAP, F1 at both policies, the kNN inference over the training split, the floors and the
per-image scores. A product that kept each rank's rows to itself fails here (each rank would score its own half).
"""
from __future__ import annotations

import csv
import json

import pytest
import torch

from lit_experiments.core.trainer import LitTrainer
from lit_experiments.studies.multilabel.datamodule import MultilabelDataModule
from lit_experiments.studies.multilabel.heads import AGCHHead
from lit_experiments.studies.multilabel.module import MultilabelModule
from lit_experiments.studies.multilabel.sources import ShapesCaptionSource
from lit_experiments.studies.multilabel.towers import SiglipTowers, tiny_config

FAST = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, logger=False,
            enable_checkpointing=False)
N_POOL, N_TEST = 23, 13  # validation: ceil(0.2 x 23) = 5 images, training (the kNN bank): 18
CFG = tiny_config(image_size=16, patch_size=8, hidden=16, vision_layers=1, text_layers=1, heads=2)


def data(cache) -> MultilabelDataModule:
    towers = SiglipTowers(config=CFG, init_seed=0)
    source = ShapesCaptionSource(n_pool=N_POOL, n_test=N_TEST, world={"image_size": 16})
    return MultilabelDataModule(frozen=towers, source=source, batch_size=8, eval_batch_size=4, cache_dir=str(cache))


def run(what: str, module, run_dir, cache, **kw) -> dict[str, float]:
    trainer = LitTrainer(run_dir=str(run_dir), **{**FAST, "devices": 1, **kw})
    return getattr(trainer, what)(module, datamodule=data(cache), verbose=False)[0]


def close(one: dict[str, float], two: dict[str, float]) -> None:
    assert set(one) == set(two)
    for key in one:
        assert two[key] == pytest.approx(one[key], abs=1e-6), key


def test_f44_two_rank_validation_and_test_metrics_equal_the_one_rank_run(tmp_path):
    torch.manual_seed(0)
    cache = tmp_path / "cache"
    module = MultilabelModule(head=AGCHHead(dim=8, hash_bits=8, dropout=0.0))
    dm = data(cache)
    dm.setup("fit")
    module.dry_run(next(iter(dm.train_dataloader())))  # builds the head and the caches the spawned ranks read
    module.eval()

    val_one = run("validate", module, tmp_path / "v1", cache)
    tuned = module.thresholds.clone()  # tuned at the end of the 1-rank validation
    assert not torch.isnan(tuned).any()
    val_two = run("validate", module, tmp_path / "v2", cache, strategy="ddp_spawn", devices=2)
    assert {"val/loss", "val/map", "val/auc_macro", "val/lrap", "val/t05/f1_macro"} <= set(val_one)
    close(val_one, val_two)
    torch.testing.assert_close(module.thresholds, tuned)  # the 2-rank run tuned the same thresholds

    one = run("test", module, tmp_path / "t1", cache)
    two = run("test", module, tmp_path / "t2", cache, strategy="ddp_spawn", devices=2)
    assert {"test/map", "test/auc_macro", "test/lrap", "test/t05/f1_macro", "test/tuned/f1_macro",
            "test/t05/hamming", "test/knn_map", "test/knn_t05/f1_macro"} <= set(one)
    close(one, two)
    for name in ("test", "caption_rule"):  # written by rank 0 from the gathered rows: every image once, in order
        items = [json.loads((tmp_path / d / "per_item" / f"{name}.json").read_text()) for d in ("t1", "t2")]
        assert items[0]["ids"] == items[1]["ids"] == [str(i) for i in range(N_TEST)]
        assert set(items[0]["scores"]) == set(items[1]["scores"])
        for key, values in items[0]["scores"].items():
            assert items[1]["scores"][key] == pytest.approx(values, abs=1e-6), (name, key)
    tables = [list(csv.DictReader((tmp_path / d / "multilabel" / "per_class.csv").open())) for d in ("t1", "t2")]
    support = dm._base("test").targets.sum(0).long().tolist()
    assert [int(r["support"]) for r in tables[1]] == support  # every positive of every test image counted once
    for a, b in zip(*tables, strict=True):
        assert a["class"] == b["class"] and a["support"] == b["support"] and a["threshold"] == b["threshold"]
        for key in ("ap", "auc", "f1_t05", "f1_tuned"):
            assert float(b[key]) == pytest.approx(float(a[key]), abs=1e-6, nan_ok=True), (a["class"], key)
