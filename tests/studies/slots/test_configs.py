"""Every configs/slots/*.yaml parses, builds with pretrained=False and runs one training step + test
through `lit-exp curriculum`, with tiny overrides (tiny backbones, small images, a few clips)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from lit_experiments.cli import main
from lit_experiments.data.movi import write_movi_clip

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs" / "slots").glob("*.yaml"))
TINY_VIT = {"depth": 2, "embed_dim": 48, "num_heads": 2}


def write_movi(root: Path, field: str, values: list[str]) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        (root / split).mkdir(parents=True)
        for i in range(3):
            seg = np.zeros((2, 32, 32, 1), np.uint8)
            seg[:, 4:14, 4:14] = 1
            seg[:, 18:30, 16:28] = 2
            video = (rng.random((2, 32, 32, 3)) * 60 + seg * 80).astype(np.uint8)
            write_movi_clip(root / split / f"clip{i}.npz", video, seg, {field: values})


def tiny_overrides(raw: dict, tmp: Path) -> dict:
    data = raw["data"]["init_args"]
    d: dict = {"batch_size": 2, "eval_batch_size": 2, "cache_dir": str(tmp / "cache"), "num_workers": 0}
    if data["dataset"] == "movi":
        root = tmp / "movi"
        grouped_by_category = "movi_c" in data["movi_root"]
        write_movi(root, "category" if grouped_by_category else "material",
                   ["cube", "sphere"] if grouped_by_category else ["metal", "rubber"])
        d["movi_root"] = str(root)
        d["pretrained"] = False
        d["model_kwargs"] = TINY_VIT
        d["img_size"] = 28 if "patch14" in data["backbone"] else 32
    else:
        d.update(n_train=4, n_val=2, n_test=2)
        d["shapes"] = {**data.get("shapes", {}), "image_size": 32, "num_frames": 2}
        if data.get("backbone", "colour_edge") == "colour_edge" and data.get("input") != "pixels":
            d["model_kwargs"] = {**data.get("model_kwargs", {}), "dim": 16}
    m = {"slot_dim": 16, "mlp_hidden": 16, "decoder_hidden": 16, "num_slots": 3, "pixel_channels": 8}
    return {
        "model": {"init_args": m},
        "data": {"init_args": d},
        "trainer": {"limit_val_batches": 1, "limit_test_batches": 1, "accelerator": "cpu",
                    "enable_progress_bar": False},
        "stages": [{**raw["stages"][0], "max_steps": 1}],
        "test_after": True,
    }


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_parses_builds_and_runs_one_step(config, tmp_path):
    raw = yaml.safe_load(config.read_text())
    assert raw["model"]["class_path"].endswith("SlotsModule")
    assert raw["data"]["init_args"].get("pretrained", False) in (True, False)
    override = tmp_path / "tiny.yaml"
    override.write_text(yaml.safe_dump(tiny_overrides(raw, tmp_path)))
    run_dir = tmp_path / "run"
    main(["curriculum", "-c", str(config), "-c", str(override), f"--trainer.run_dir={run_dir}"])
    results = json.loads((run_dir / "results.json").read_text())
    stage = results["stages"][raw["stages"][0]["name"]]
    assert stage["status"] == "done" and stage["steps"] == 1
    test = results["test"]
    assert 0.0 <= test["test/fg_ari"] <= 1.0 or np.isnan(test["test/fg_ari"])
    assert "test/video_fg_ari" in test and "test/mbo" in test
    assert list((run_dir / "tables").rglob("*per_sample.csv")), "per-sample table missing"
    assert list((run_dir / "figures").rglob("*.png")), "mask overlay figure missing"


def test_seed_configs_match_the_seed_runs():
    by_name = {c.stem: yaml.safe_load(c.read_text()) for c in CONFIGS}
    for name in ("dinov2_mse", "dinov1_channel_norm", "clip_mse"):
        model, data = by_name[name]["model"]["init_args"], by_name[name]["data"]["init_args"]
        assert model["tau"] == 0.5 and model["diversity_weight"] == 0.1
        assert model["optimizer"]["lr"] == pytest.approx(4e-4)
        assert data["img_size"] == 224 and data["dataset"] == "movi"
    assert by_name["dinov1_channel_norm"]["model"]["init_args"]["loss"] == "channel_norm"
    assert by_name["clip_mse"]["model"]["init_args"]["projection_dim"] == 384
    dino = by_name["movi_c_dinosaur"]["model"]["init_args"]
    assert dino["num_slots"] == 11 and dino["decoder"] == "mlp"
