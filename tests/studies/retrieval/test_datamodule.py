"""RetrievalDataModule on ShapesWorld clips and on a frames folder: labels, bad files, external queries,
m-per-class batches, temporal-window positives and the loader's configuration errors."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from lit_experiments.core.errors import ConfigError
from lit_experiments.data.errors import BadSampleError, DataLayoutError
from lit_experiments.data.shapes import ShapesWorld
from lit_experiments.data.tools import write_shapes
from lit_experiments.studies.retrieval.datamodule import RetrievalDataModule, RetrievalPositives
from lit_experiments.studies.retrieval.sampler import MPerClassBatches
from lit_experiments.studies.retrieval.sources import ShapesClipFrames, ShapesFrames, VideoFrameFolder

SHAPES = {"image_size": 32, "num_frames": 8, "min_objects": 1, "max_objects": 2, "motion_blur": True}


def frames_folder(tmp: Path, n: int = 6, queries: int = 2) -> Path:
    root = tmp / "frames"
    write_shapes(root, "frames", n=n, image_size=32, num_frames=4, max_objects=1, queries=queries)
    return root


def folder_dm(root: Path, **source) -> RetrievalDataModule:
    """A datamodule over a frames folder; ``source``: more ``VideoFrameFolder`` arguments."""
    return RetrievalDataModule(source=VideoFrameFolder(root=str(root), **source), cache_dir=str(root.parent / "cache"))


def shapes_dm(**kw) -> RetrievalDataModule:
    """A datamodule over 6 / 2 / 2 ShapesWorld clips, shuffled batches of 16 unless ``kw`` says otherwise."""
    args = dict(source=ShapesClipFrames(n_train=6, n_val=2, n_test=2, shapes=SHAPES), batch_size=16, cache_dir="cache")
    return RetrievalDataModule(**{**args, **kw})


def fake_trainer(world_size: int = 1, use_distributed_sampler: bool = False, training: bool = True):
    return SimpleNamespace(world_size=world_size, global_rank=0, training=training,
                           _accelerator_connector=SimpleNamespace(use_distributed_sampler=use_distributed_sampler))


# ------------------------------------------------------------------------------------------- frames folder
def test_label_row_naming_no_frame_names_labels_csv_and_the_line(tmp_path):
    root = frames_folder(tmp_path)
    labels = root / "labels.csv"
    lines = labels.read_text().splitlines()
    lines.insert(3, "no_such_frame.png,0")
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataLayoutError) as err:
        folder_dm(root).setup("fit")
    assert f"{labels}:4:" in str(err.value) and "no_such_frame.png" in str(err.value)


def test_unreadable_frame_is_an_error_naming_the_file_or_a_counted_skip(tmp_path):
    root = frames_folder(tmp_path)
    names = sorted(p.name for p in (root / "frames").iterdir())
    bad = root / "frames" / names[5]
    bad.write_bytes(b"not a png at all")
    with pytest.raises(BadSampleError) as err:
        folder_dm(root).setup("fit")
    assert names[5] in str(err.value) and "on_bad_sample" in str(err.value)

    dm = folder_dm(root, on_bad_sample="skip")
    with pytest.warns(UserWarning, match="skipped 1 of"):
        dm.setup("fit")
    folder = dm.frames("train").folder
    assert folder.skipped == 1 and folder.bad.skipped_files == [str(bad)]
    assert sum(len(dm.frames(s)) for s in ("train", "val", "test")) == len(names) - 1
    assert names[5] not in {dm.frames("train")[i]["frame"] for i in range(len(dm.frames("train")))}


def test_external_query_of_another_size_names_the_file_and_both_shapes(tmp_path):
    root = frames_folder(tmp_path)
    query = sorted((root / "queries").glob("*.png"))[1]
    Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(query)
    with pytest.raises(DataLayoutError) as err:
        folder_dm(root).setup("fit")
    msg = str(err.value)
    assert query.name in msg and "(3, 20, 24)" in msg and "(3, 32, 32)" in msg and "image_size" in msg

    dm = folder_dm(root, image_size=32)  # a resize makes both sizes agree
    dm.setup("fit")
    assert dm.queries is not None and tuple(dm.queries[1]["image"].shape) == (3, 32, 32)


# ------------------------------------------------------------------------------------------- ShapesWorld
def test_shapes_frames_labels_are_the_phase_and_the_first_objects_category():
    ds = ShapesFrames(5, seed=3, shapes=SHAPES)
    world = ShapesWorld(5, seed=3, **SHAPES)
    assert len(ds) == 5 * 8
    for clip in range(5):
        item = world[clip]
        for t in range(8):
            frame = ds[clip * 8 + t]
            assert torch.equal(frame["image"], item["video"][t])
            assert int(frame["label"]) == int(item["phase"][t])
            assert int(frame["class_label"]) == int(item["category"][0])
            assert (int(frame["clip"]), int(frame["t"])) == (clip, t)
    assert len({int(x) for x in ds.labels}) > 1  # the phase changes within the clips


def test_m_per_class_batches_hold_batch_size_over_m_labels_times_m():
    dm = shapes_dm(sampler=MPerClassBatches(m=8), batch_size=16)
    batches = list(dm.train_dataloader())
    assert batches
    for batch in batches:
        counts = Counter(batch["label"].tolist())
        assert sorted(counts.values()) == [8, 8], counts


def test_without_labels_positives_are_same_clip_within_the_temporal_window():
    dm = shapes_dm(sampler=MPerClassBatches(m=4), positives=RetrievalPositives(use_labels=False, temporal_window=2),
                   batch_size=16)
    batches = list(dm.train_dataloader())
    assert batches
    dm.trainer = fake_trainer(training=True)
    for batch in batches:
        groups = Counter(zip(batch["clip"].tolist(), (batch["t"] // 4).tolist()))
        assert sorted(groups.values()) == [4, 4, 4, 4], groups  # 4 groups of 4 consecutive frames of a clip
        out = dm.on_after_batch_transfer(dict(batch), 0)
        clip, t = batch["clip"].tolist(), batch["t"].tolist()
        expect = torch.tensor([[clip[i] == clip[j] and abs(t[i] - t[j]) <= 2 for j in range(16)]
                               for i in range(16)])
        assert torch.equal(out["pos_mask"], expect)
        assert out["view1"].shape == out["view2"].shape == (16, 3, 32, 32)
        assert out["view1"].dtype == torch.float32 and not torch.equal(out["view1"], out["view2"])
    dm.trainer = fake_trainer(training=False)  # evaluation: no views, no mask
    out = dm.on_after_batch_transfer(dict(batches[0]), 0)
    assert "pos_mask" not in out and "view1" not in out


def test_feature_inputs_without_a_backbone_is_a_config_error():
    dm = shapes_dm(features=True, sampler=MPerClassBatches(m=8))
    with pytest.raises(ConfigError, match="features=true needs the module to hand over its backbone"):
        dm.train_dataloader()


def test_multi_device_with_lightnings_distributed_sampler_is_a_config_error():
    dm = shapes_dm(sampler=MPerClassBatches(m=8))
    dm.trainer = fake_trainer(world_size=2, use_distributed_sampler=True)
    with pytest.raises(ConfigError, match=re.escape("trainer.use_distributed_sampler: false")):
        dm.train_dataloader()
    dm.trainer = fake_trainer(world_size=2, use_distributed_sampler=False)  # the study's own rank-aware sampler
    loader = dm.train_dataloader()
    assert dm.batch_sampler is not None and loader.batch_sampler is dm.batch_sampler
    assert all(len(b) == 16 for b in loader.batch_sampler)
