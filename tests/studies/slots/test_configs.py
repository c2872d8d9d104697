"""The slots configs: a one-step run of the two demos writes the study's tables and figures (every config of
every study runs one step in tests/test_every_config.py), and the seed variants are deltas of one MOVi base
that keep the seed's settings."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from lit_experiments.cli import main
from lit_experiments.core.configs import composition, load_composed, merge

from .tiny import tiny

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "slots"
CONFIGS = [CONFIG_DIR / "demo.yaml", CONFIG_DIR / "pixels_demo.yaml"]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_demo_one_step_writes_scores_tables_and_figures(config, tmp_path):
    raw = load_composed(config)
    assert raw["model"]["class_path"].endswith("SlotsModule")
    override = merge(tiny(config, raw, tmp_path), {"stages": [{**raw["stages"][0], "max_steps": 1}],
                                                   "test_after": True})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(override))
    run_dir = tmp_path / "run"
    args = [a for f in [*composition(config), path] for a in ("-c", str(f))]
    main(["curriculum", *args, f"--trainer.run_dir={run_dir}"])
    results = json.loads((run_dir / "results.json").read_text())
    stage = results["stages"][raw["stages"][0]["name"]]
    assert stage["status"] == "done" and stage["steps"] == 1
    test = results["test"]
    assert 0.0 <= test["test/fg_ari"] <= 1.0 or np.isnan(test["test/fg_ari"])
    assert "test/video_fg_ari" in test and "test/mbo" in test
    assert list((run_dir / "tables").rglob("*per_sample.csv")), "per-sample table missing"
    assert list((run_dir / "figures").rglob("*.png")), "mask overlay figure missing"


def _model(name: str) -> dict:
    return load_composed(CONFIG_DIR / f"{name}.yaml")


def test_seed_configs_are_small_deltas_of_one_movi_base_with_the_seed_settings():
    for name in ("dinov2_mse", "dinov1_channel_norm", "clip_mse", "movi_c_dinosaur"):
        assert composition(CONFIG_DIR / f"{name}.yaml")[0].name == "_base_movi.yaml", name
        assert len((CONFIG_DIR / f"{name}.yaml").read_text().splitlines()) < 25, f"{name} is not a small delta"
    for name in ("dinov2_mse", "dinov1_channel_norm", "clip_mse"):
        cfg = _model(name)
        model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
        assert model["grouper"]["init_args"]["tau"] == 0.5 and model["diversity_weight"] == 0.1
        assert model["optimizer"]["lr"] == pytest.approx(4e-4)
        assert data["frozen"]["init_args"]["image_size"] == 224 and data["source"]["class_path"].endswith("MoviClipSplits")
        assert cfg["trainer"]["run_dir"].endswith(name)
    assert _model("dinov1_channel_norm")["model"]["init_args"]["loss"]["init_args"]["kind"] == "channel_norm"
    assert _model("clip_mse")["model"]["init_args"]["encoder"]["init_args"]["projection_dim"] == 384
    dino = _model("movi_c_dinosaur")["model"]["init_args"]
    assert dino["grouper"]["init_args"]["num_slots"] == 11 and dino["decoder"]["class_path"].endswith("MLPDecoder")
    assert dino["predictor"] is None


def test_no_config_picks_a_part_by_string():
    for config in sorted(CONFIG_DIR.glob("*.yaml")):
        model = load_composed(config)["model"]["init_args"]
        for key in ("decoder", "slot_init", "input", "predictor", "loss"):
            value = model.get(key)
            assert value is None or isinstance(value, dict), f"{config.name}: model.{key} = {value!r}"


def _keys(tree: object, key: str) -> int:
    if isinstance(tree, dict):
        return sum((k == key) + _keys(v, key) for k, v in tree.items())
    if isinstance(tree, list):
        return sum(_keys(v, key) for v in tree)
    return 0


def test_demo_swaps_the_source_and_frozen_parts_of_the_movi_base():
    """The demo is a delta of the MOVi run that swaps class_paths (no field nulled one by one) and is shorter than
    it; every config names its data source and frozen network as parts, and says each size once."""
    assert composition(CONFIG_DIR / "demo.yaml")[0].name == "_base_movi.yaml"
    lines = {n: len((CONFIG_DIR / f"{n}.yaml").read_text().splitlines()) for n in ("demo", "_base_movi")}
    assert lines["demo"] < lines["_base_movi"], lines
    base, demo = (load_composed(CONFIG_DIR / f"{n}.yaml")["data"]["init_args"] for n in ("_base_movi", "demo"))
    assert base["source"]["class_path"].endswith("MoviClipSplits")
    assert base["frozen"]["class_path"].endswith("RegistryBackbone")
    assert demo["source"]["class_path"].endswith("ShapesClipSplits")
    assert demo["frozen"]["class_path"].endswith("ColourEdgeBackbone")
    assert "root" not in demo["source"]["init_args"] and "name" not in demo["frozen"]["init_args"]  # dropped whole
    delta = yaml.safe_load((CONFIG_DIR / "demo.yaml").read_text())
    assert _keys(delta, "image_size") == 1 and None not in delta["data"]["init_args"].values()
    for config in sorted(CONFIG_DIR.glob("*.yaml")):
        data = load_composed(config)["data"]["init_args"]
        assert not {"dataset", "input", "backbone", "img_size"} & set(data), config.name
        assert isinstance(data["source"], dict) and (data["frozen"] is None or isinstance(data["frozen"], dict))
        assert _keys(data, "image_size") == 1, f"{config.name}: the input size is said more than once"
        assert _keys(load_composed(config)["model"], "num_slots") == 1, config.name
