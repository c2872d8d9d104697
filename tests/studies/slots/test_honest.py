"""Honest numbers for the slots study (issue 22): splits that cannot leak (F47), floors beside every headline
(F49), every random choice from ``seed_everything`` (F50), per-clip scores for the paired bootstrap (F51).

The MOVi data is written by the product's own writer (``lit-exp data shapes --format movi``); the floors are read
from the results.json of a real (tiny) demo run and checked against sklearn and against ``lit-exp test
--ckpt_path init`` (the untrained model as the config builds it).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import adjusted_rand_score

from lit_experiments.cli import main
from lit_experiments.core.configs import load_composed
from lit_experiments.core.results import check_floors, read_per_item
from lit_experiments.core.seeding import RUN_SEED_ENV
from lit_experiments.core.splits import SplitOverlapError
from lit_experiments.data.shapes import ShapesWorld
from lit_experiments.data.tools import write_shapes
from lit_experiments.studies.slots.datamodule import SlotsDataModule
from lit_experiments.studies.slots.evaluation import grid_partition
from lit_experiments.studies.slots.slot_attention import LearnedPositionalEmbedding
from lit_experiments.studies.slots.sources import MoviClipSplits

from .helpers import tiny_data

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "configs" / "slots"


def _movi(tmp: Path) -> Path:
    """MOVi-format clips written by the product's writer: 8 in ``train``, 4 in ``validation``."""
    root = tmp / "movi"
    write_shapes(root / "train", "movi", n=8, seed=0, image_size=32, num_frames=2)
    write_shapes(root / "validation", "movi", n=4, seed=1, image_size=32, num_frames=2)
    return root


def _movi_dm(root: Path, folders: dict[str, str] | None = None, val_fraction: float | None = None,
             **kw) -> SlotsDataModule:
    source = MoviClipSplits(str(root), folders, val_fraction, reader={"max_objects": 3})
    return SlotsDataModule(source=source, frozen=None, batch_size=2, **kw)


# ------------------------------------------------------------------------------------------------ F47
def test_f47_slots_movi_val_equals_test_refused(tmp_path):
    root = _movi(tmp_path)
    same = {"train": "train", "val": "validation", "test": "validation"}  # the seed's MOVi default
    with pytest.raises(SplitOverlapError) as err:
        _movi_dm(root, folders=same).setup("fit")
    msg = str(err.value)
    assert msg.count(f"{root}/validation") == 2 and "allow_val_test_overlap" in msg  # names both splits

    accepted = _movi_dm(root, folders=same, allow_val_test_overlap=True)
    accepted.setup("fit")
    assert accepted.split_info["tuned_on_test"] is True and accepted.split_info["overlap"] == 4

    # validation as a held-out part of the test folder: test is the rest, disjoint, nothing lost
    split_val = _movi_dm(root, folders=same, val_fraction=0.25)
    split_val.setup("fit")
    val, test = set(split_val.item_ids("val")), set(split_val.item_ids("test"))
    assert len(val) == 1 and not val & test and val | test == {f"validation/{i:06d}.npz" for i in range(4)}
    assert split_val.split_info["overlap"] == 0 and split_val.split_info["tuned_on_test"] is False


def test_f47_slots_seed_base_config_splits_are_disjoint(tmp_path, monkeypatch):
    root = _movi(tmp_path)
    args = dict(load_composed(CONFIGS / "_base_movi.yaml")["data"]["init_args"])
    source = args["source"]
    assert source["class_path"].endswith("sources.MoviClipSplits")
    # the config's source with its own folders / held-out fraction; the frozen network is not needed for the splits
    args.update(source=MoviClipSplits(**{**source["init_args"], "root": str(root), "reader": {"max_objects": 3}}),
                frozen=None, cache_dir=str(tmp_path / "cache"), num_workers=0)
    dm = SlotsDataModule(**args)
    dm.resolve_splits()
    train, val, test = (set(dm.item_ids(s)) for s in ("train", "val", "test"))
    assert val and test and not val & test and not val & train
    assert train | val == {f"train/{i:06d}.npz" for i in range(8)}  # the held-out clips left training
    assert test == {f"validation/{i:06d}.npz" for i in range(4)}  # the official split, whole
    assert dm.split_info["overlap"] == 0 and dm.split_info["tuned_on_test"] is False
    assert "held-out" in dm.split_info["validation"]
    holdout = root / "val_holdout_train.json"
    assert json.loads(holdout.read_text())["validation_ids"] == sorted(val, key=dm.item_ids("val").index)

    monkeypatch.setenv("PL_GLOBAL_SEED", "7")  # another run's seed reads the ids written once
    monkeypatch.setenv(RUN_SEED_ENV, "7")
    again = SlotsDataModule(**args)
    again.resolve_splits()
    assert again.item_ids("val") == dm.item_ids("val")


# ------------------------------------------------------------------------------------------------ F49 / F51
SHAPES = {"image_size": 32, "num_frames": 3, "min_objects": 3, "max_objects": 5, "size_range": [0.3, 0.5]}


def _tiny_demo(tmp: Path, lr: float) -> list[str]:
    stage = yaml.safe_load((CONFIGS / "demo.yaml").read_text())["stages"][0]
    stage = {**stage, "max_steps": 3, "optimizer": {**stage["optimizer"], "lr": lr}}
    override = {
        "data": {"init_args": {"source": {"init_args": {"n_train": 8, "n_val": 2, "n_test": 4, "world": SHAPES}},
                               "cache_dir": str(tmp / "cache"), "batch_size": 4, "eval_batch_size": 2}},
        "model": {"init_args": {"figure_clips": 0}},
        "trainer": {"limit_val_batches": 1, "run_dir": str(tmp / f"run_lr{lr:g}"), "enable_progress_bar": False},
        "stages": [stage],
    }
    (tmp / f"tiny_lr{lr:g}.yaml").write_text(yaml.safe_dump(override))
    main(["curriculum", "-c", str(CONFIGS / "demo.yaml"), "-c", str(tmp / f"tiny_lr{lr:g}.yaml")])
    return tmp / f"run_lr{lr:g}"


def test_f49_slots_headline_has_floors(tmp_path):
    run = _tiny_demo(tmp_path, lr=1e-2)
    data = json.loads((run / "results.json").read_text())
    assert "test/fg_ari" in data["headline"] and "test/video_fg_ari" in data["headline"]
    assert check_floors(data) == []  # every headline metric has a floor row
    refs = data["references"]
    rows = {r["name"]: r for r in refs["test/fg_ari"]}
    assert {"grid partition", "untrained model"} <= set(rows) and all(r["kind"] == "floor" for r in rows.values())
    assert rows["grid partition"]["value"] == pytest.approx(data["test"]["test/grid_fg_ari"])
    for group in ("metal", "non-metal"):
        if f"test/fg_ari/{group}" in data["headline"]:
            assert {r["name"] for r in refs[f"test/fg_ari/{group}"]} >= {"grid partition", "untrained model"}

    # the untrained floor is the model at the weights it had before the first step: a run that cannot move its
    # weights (lr 0) scores exactly its floor, and the trained run's floor is that same number
    frozen = json.loads((_tiny_demo(tmp_path, lr=0.0) / "results.json").read_text())
    frozen_rows = {r["name"]: r["value"] for r in frozen["references"]["test/fg_ari"]}
    assert frozen_rows["untrained model"] == rows["untrained model"]["value"]  # same seed, same initial weights
    # (logged test numbers pass through float32)
    assert frozen["test"]["test/fg_ari"] == pytest.approx(frozen_rows["untrained model"], abs=1e-6)
    alt = {r["name"]: r["value"] for r in frozen["references"]["test/fg_ari_decoder"]}
    assert frozen["test"]["test/fg_ari_decoder"] == pytest.approx(alt["untrained model"], abs=1e-6)
    assert abs(data["test"]["test/fg_ari"] - rows["untrained model"]["value"]) > 1e-4  # 3 steps at lr 1e-2 moved it

    # per-clip scores (F51): one per test clip, the grid floor equal to sklearn's ARI on the foreground pixels
    per_item = read_per_item(run)["slots_test"]
    n_test = 4
    assert len(per_item["ids"]) == n_test and len(set(per_item["ids"])) == n_test
    seed = int(per_item["ids"][0].split(":")[1])
    world = ShapesWorld(n_test, seed=seed, **SHAPES)
    k = load_composed(CONFIGS / "demo.yaml")["model"]["init_args"]["grouper"]["init_args"]["num_slots"]
    checked = 0
    for item_id, got in zip(per_item["ids"], per_item["scores"]["grid_fg_ari"]):
        gt = world[int(item_id.split(":")[2])]["instances"].numpy()
        grid = grid_partition(k, gt.shape).numpy()
        frames = [adjusted_rand_score(g[g > 0], p[g > 0]) for g, p in zip(gt, grid) if (g > 0).any()]
        assert got == pytest.approx(float(np.mean(frames)), abs=1e-6)
        checked += 1
    assert checked == n_test
    clip_mean = np.nanmean(per_item["scores"]["fg_ari"])
    assert clip_mean == pytest.approx(data["test"]["test/fg_ari"], abs=1e-6)  # equal frames per clip, no empty one


# ------------------------------------------------------------------------------------------------ F50
def test_f50_slots_seed_everything_varies_the_data_order_and_position_code(monkeypatch):
    def draw(run: str, **kw) -> tuple[dict, list[int], torch.Tensor]:
        monkeypatch.setenv("PL_GLOBAL_SEED", run)  # what seed_everything(run) sets, and the run start's copy
        monkeypatch.setenv(RUN_SEED_ENV, run)
        dm = tiny_data(pixels=True, **kw)
        dm.setup("fit")
        order = torch.cat([b["index"] for b in dm.train_dataloader()]).tolist()
        return dm.source.world_seeds(dm.seed), order, LearnedPositionalEmbedding(16, 4, (4, 4)).weight.detach()

    a, b, pinned_a, pinned_b = draw("0"), draw("1"), draw("0", seed=3), draw("1", seed=3)
    assert a[0] != b[0] and len(set(a[0].values())) == 3  # every split's world follows the run's seed
    assert a[1] != b[1] and sorted(a[1]) == sorted(b[1])  # the training order too
    assert not torch.equal(a[2], b[2])  # and the positional code's random frequencies
    assert draw("0")[:2] == a[:2]  # same seed, same draws
    assert pinned_a[0] == pinned_b[0] == {"train": 3, "val": 4, "test": 5} and pinned_a[1] == pinned_b[1]
