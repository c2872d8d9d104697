"""DDP-safe evaluation of the retrieval study (F44): a 2-rank test run reports the 1-rank run's numbers.

Same tiny model and weights, same held-out frames split unevenly over 2 ranks (25 frames, eval batches of 4):
mAP, mAP@R, the @k metrics, kNN accuracies (trained and random-init backbone), chance level and embedding spread
all come from torchmetrics states gathered across ranks.
"""
from __future__ import annotations

import pytest
import torch

from lit_experiments.core.trainer import LitTrainer
from lit_experiments.studies.retrieval.datamodule import RetrievalDataModule
from lit_experiments.studies.retrieval.module import RetrievalKnn, RetrievalModule
from lit_experiments.studies.retrieval.parts import Predictor, Projector, TimmBackbone
from lit_experiments.studies.retrieval.sources import ShapesClipFrames

FAST = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, logger=False,
            enable_checkpointing=False)


class OddTest(RetrievalDataModule):
    """25 test frames (3 clips of 8 + 1), so the ranks get unequal shares."""

    def setup(self, stage=None):
        super().setup(stage)
        from torch.utils.data import Subset

        test = self.splits["test"]
        if not isinstance(test, Subset):
            sub = Subset(test, list(range(25)))
            sub.labels, sub.class_labels, sub.class_names = test.labels[:25], test.class_labels[:25], test.class_names
            self.splits["test"] = _Reindexed(sub)


class _Reindexed(torch.utils.data.Dataset):
    def __init__(self, sub):
        self.sub, self.labels, self.class_labels, self.class_names = sub, sub.labels, sub.class_labels, sub.class_names

    def __len__(self):
        return len(self.sub)

    def __getitem__(self, i):
        return self.sub[i]

    def frame_name(self, i):
        return self.sub.dataset.frame_name(self.sub.indices[i])


def _data() -> RetrievalDataModule:
    return OddTest(source=ShapesClipFrames(n_train=2, n_val=1, n_test=4, shapes={"image_size": 32}), eval_batch_size=4,
                   batch_size=8, cache_dir="cache")


def _test(module, run_dir, **kw) -> dict[str, float]:
    trainer = LitTrainer(run_dir=str(run_dir), **{**FAST, "devices": 1, **kw})
    return trainer.test(module, datamodule=_data(), verbose=False)[0]


def test_f44_two_rank_test_metrics_equal_the_one_rank_run(tmp_path):
    torch.manual_seed(0)
    module = RetrievalModule(TimmBackbone(model_kwargs={"channels": [8, 16, 32, 64]}), Projector(out_dim=16, hidden=32),
                             Predictor(8), knn=RetrievalKnn(k=5), ks=[1, 5, 10])
    module.eval()
    one = _test(module, tmp_path / "one")
    two = _test(module, tmp_path / "two", strategy="ddp_spawn", devices=2)
    assert {"test/map", "test/map@r", "test/map_simsiam", "test/map_backbone", "test/map_init", "test/map_probe",
            "test/map_random", "test/knn_acc", "test/knn_acc_init", "test/map_chance", "test/precision@5",
            "test/hit_rate@10", "test/z_std"} <= set(one)
    assert one["test/n_queries"] == 25
    assert set(one) == set(two)
    for key in one:
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
