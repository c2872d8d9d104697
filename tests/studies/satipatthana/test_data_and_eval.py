"""Datamodules (circles / digits / ShapesWorld, void sets) and the evaluation helpers."""

from __future__ import annotations

import pytest
import torch

from lit_experiments.studies.satipatthana.datamodule import (
    CirclesDataModule,
    DigitsDataModule,
    ShapesDataModule,
    min_distance_to,
)
from lit_experiments.studies.satipatthana.evaluation import BaselineSpec, EvalCollector, train_baseline
from lit_experiments.studies.satipatthana.evaluation.report import auroc, psnr


def test_circles_splits_and_void_sets_away_from_the_data():
    dm = CirclesDataModule(n_samples=400, void_min_distance=0.1, batch_size=16, train_void_factor=2)
    dm.setup()
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes == {"train": 280, "val": 40, "test": 80}
    train = dm.splits["train"]
    assert len(train.x_void) == 2 * len(train.x)
    for split in dm.splits.values():
        assert (min_distance_to(split.x_void, train.x) > 0.1).all()
        assert set(split.void_kind.unique().tolist()) == {0, 1, 2}
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x", "y", "x_void", "void_kind"} and batch["x"].shape == (16, 2)
    test = dm.splits["test"]
    assert torch.bincount(test.y).tolist() == [40, 40]  # stratified
    only = CirclesDataModule(n_samples=400, batch_size=16, train_void_kinds=["filtered"])
    only.setup()
    assert set(only.splits["train"].void_kind.tolist()) == {2} and only.splits["test"].void_kind.unique().numel() == 3
    again = CirclesDataModule(n_samples=400, batch_size=16, train_void_factor=2)
    again.setup()
    assert torch.equal(again.splits["test"].x_void, test.x_void)  # seeded


@pytest.mark.parametrize("kwargs", [{"void_kinds": ["gaussian", "nope"]}, {"test_fraction": 0.0},
                                    {"val_fraction": 0.6, "test_fraction": 0.5}, {"factor": 1.5},
                                    {"train_void_factor": 0}, {"batch_size": 0}, {"train_void_kinds": ["x"]}])
def test_circles_bad_config_values(kwargs):
    with pytest.raises(ValueError):
        CirclesDataModule(**kwargs)


def test_digits_images_and_image_voids():
    dm = DigitsDataModule(image_size=16)
    dm.setup()
    train = dm.splits["train"]
    assert dm.input_shape == (1, 16, 16) and dm.num_classes == 10 and dm.is_image
    assert train.x.min() >= 0 and train.x.max() <= 1
    kinds = dict(enumerate(dm.void_kinds))
    scrambled = train.x_void[train.void_kind == [k for k, v in kinds.items() if v == "scrambled"][0]]
    # a scrambled void image keeps a real digit's intensities but none of its layout
    assert scrambled.shape[1:] == (1, 16, 16) and scrambled.max() > 0.5
    with pytest.raises(ValueError):
        DigitsDataModule(void_kinds=["filtered"])


def test_shapes_datamodule_classifies_the_object_category():
    pytest.importorskip("lit_experiments.data.shapes")
    dm = ShapesDataModule(n_samples=60, image_size=16, batch_size=8)
    dm.setup()
    assert dm.input_shape == (3, 16, 16)
    y = torch.cat([dm.splits[k].y for k in dm.splits])
    assert y.min() >= 0 and y.max() < 6 and y.unique().numel() > 1


def test_auroc_psnr_and_collector_metrics():
    assert auroc(torch.tensor([0.9, 0.8]), torch.tensor([0.1, 0.2])) == 1.0
    assert auroc(torch.tensor([0.1]), torch.tensor([0.9])) == 0.0
    x = torch.rand(2, 1, 4, 4)
    assert torch.allclose(psnr(x + 0.1, x).clamp(max=100), psnr(x + 0.1, x))
    assert psnr(x, x).min() > 90
    c = EvalCollector(void_kinds=["a", "b"])
    c.logits.append(torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]))
    c.y.append(torch.tensor([0, 1, 1]))
    c.trust["clean"].append(torch.tensor([0.9, 0.8, 0.7]))
    c.trust["void"].append(torch.tensor([0.1, 0.75, 0.2]))
    c.void_kind.append(torch.tensor([0, 1, 0]))
    m = c.metrics(baseline_preds=torch.tensor([0, 1, 1]))
    assert m["acc"] == pytest.approx(2 / 3) and m["baseline_acc"] == 1.0
    assert m["trust_auroc"] == pytest.approx(8 / 9) and m["trust_auroc_a"] == 1.0
    assert m["trust_void"] == pytest.approx(1.05 / 3)


def test_baseline_trains_inside_inference_mode():
    from sklearn.datasets import make_circles

    x, y = make_circles(300, noise=0.05, factor=0.5, random_state=0)
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    with torch.inference_mode():  # Lightning's test loop
        preds = train_baseline(BaselineSpec(epochs=40), x[:200], y[:200], x[200:], 2)
    assert (preds == y[200:]).float().mean() > 0.95
    with pytest.raises(ValueError):
        BaselineSpec(kind="svm")
