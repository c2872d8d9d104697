"""The datamodule and its sources (circles / digits / ShapesWorld, void sets)."""

from __future__ import annotations

import pytest
import torch

from lit_experiments.studies.satipatthana.datamodule import (
    CirclesSource,
    DigitsSource,
    SatipatthanaDataModule,
    ShapesObjectSource,
    min_distance_to,
)

from .helpers import circles_dm


def test_circles_splits_and_void_sets_away_from_the_data():
    dm = circles_dm(n_samples=400, void_min_distance=0.1, batch_size=16, train_void_factor=2)
    dm.setup()
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes == {"train": 280, "val": 40, "test": 80}
    train = dm.splits["train"]
    assert len(train.x_void) == 2 * len(train.x)
    for split in dm.splits.values():
        assert (min_distance_to(split.x_void, train.x) > 0.1).all()
        assert set(split.void_kind.unique().tolist()) == {0, 1, 2}
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x", "y", "x_void", "void_kind", "index", "x_partner"} and batch["x"].shape == (16, 2)
    item = dm.splits["test"][3]
    assert int(item["index"]) == 3 and torch.equal(item["x_partner"], dm.splits["test"].x[(3 + 40) % 80])
    test = dm.splits["test"]
    assert torch.bincount(test.y).tolist() == [40, 40]  # stratified
    only = circles_dm(n_samples=400, batch_size=16, train_void_kinds=["filtered"])
    only.setup()
    assert set(only.splits["train"].void_kind.tolist()) == {2} and only.splits["test"].void_kind.unique().numel() == 3
    again = circles_dm(n_samples=400, batch_size=16, train_void_factor=2)
    again.setup()
    assert torch.equal(again.splits["test"].x_void, test.x_void)  # seeded


@pytest.mark.parametrize("kwargs", [{"void_kinds": ["gaussian", "nope"]}, {"test_fraction": 0.0},
                                    {"val_fraction": 0.6, "test_fraction": 0.5}, {"factor": 1.5},
                                    {"train_void_factor": 0}, {"batch_size": 0}, {"train_void_kinds": ["x"]}])
def test_circles_bad_config_values(kwargs):
    with pytest.raises(ValueError):
        circles_dm(**kwargs)


def test_digits_images_and_image_voids():
    dm = SatipatthanaDataModule(DigitsSource(image_size=16))
    dm.setup()
    train = dm.splits["train"]
    assert dm.input_shape == (1, 16, 16) and dm.num_classes == 10 and dm.is_image
    assert train.x.min() >= 0 and train.x.max() <= 1
    kinds = dict(enumerate(dm.void_kinds))
    scrambled = train.x_void[train.void_kind == [k for k, v in kinds.items() if v == "scrambled"][0]]
    # a scrambled void image keeps a real digit's intensities but none of its layout
    assert scrambled.shape[1:] == (1, 16, 16) and scrambled.max() > 0.5
    with pytest.raises(ValueError):
        SatipatthanaDataModule(DigitsSource(), void_kinds=["filtered"])


def test_shapes_datamodule_classifies_the_object_category():
    dm = SatipatthanaDataModule(ShapesObjectSource(n_samples=60, image_size=16), batch_size=8)
    dm.setup()
    assert dm.input_shape == (3, 16, 16)
    y = torch.cat([dm.splits[k].y for k in dm.splits])
    assert y.min() >= 0 and y.max() < 6 and y.unique().numel() > 1


def test_the_source_is_a_part_and_circles_is_the_default():
    dm = SatipatthanaDataModule(batch_size=8)
    assert isinstance(dm.source, CirclesSource) and dm.void_kinds == ["gaussian", "uniform", "filtered"]
    assert SatipatthanaDataModule(DigitsSource()).void_kinds == ["gaussian", "uniform", "scrambled"]
    for bad in (lambda: CirclesSource(n_samples=5), lambda: DigitsSource(image_size=4),
                lambda: ShapesObjectSource(n_samples=5)):
        with pytest.raises(ValueError):
            bad()
