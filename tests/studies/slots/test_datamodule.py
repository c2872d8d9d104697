"""SlotsDataModule: its parts (``source``, ``frozen``) by constructor, the frozen part's cache key and resolution,
and reproducibility: the slots demo gives the same numbers whether or not its feature cache had to be built.

Found before the fix: the same command gave train loss 1.0217 / 0.9972 / 0.9893 for all / none / some
caches built in the process (cache files byte-identical), because building the cache drew from the global
torch RNG (the build DataLoader's base seed) after ``seed_everything`` and before training.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lit_experiments.backbones import build_backbone
from lit_experiments.cli import main
from lit_experiments.studies.slots.datamodule import ColourEdgeBackbone, RegistryBackbone, SlotsDataModule
from lit_experiments.studies.slots.sources import MoviClipSplits, ShapesClipSplits

from .helpers import tiny_data
from .tiny import TINY_VIT

DEMO = Path(__file__).resolve().parents[3] / "configs" / "slots" / "demo.yaml"


def _run(tmp: Path, name: str, cache_dir: Path) -> dict:
    """The demo config, shrunk through data init_args / trainer / stages only (the model stays the demo's)."""
    run_dir = tmp / name
    override = {
        "data": {"init_args": {"source": {"init_args": {"n_train": 16, "n_val": 4, "n_test": 4,
                                                        "world": {"image_size": 32}}},
                               "cache_dir": str(cache_dir), "batch_size": 4, "eval_batch_size": 4}},
        "trainer": {"limit_val_batches": 1, "run_dir": str(run_dir)},
        "stages": [{**yaml.safe_load(DEMO.read_text())["stages"][0], "max_steps": 5}],
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(override))
    main(["curriculum", "-c", str(DEMO), "-c", str(path)])
    return json.loads((run_dir / "results.json").read_text())


def _numbers(results: dict) -> str:
    """Train metrics per stage and test metrics, as text (so NaN compares equal to NaN)."""
    stages = {name: (s["status"], s["steps"], s["metrics"]) for name, s in results["stages"].items()}
    return json.dumps({"stages": stages, "test": results.get("test")}, sort_keys=True)


def _cache_files(cache_dir: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(cache_dir)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(cache_dir.rglob("*")) if p.is_file()}


def test_slots_demo_same_numbers_with_and_without_prebuilt_cache(tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    built = _run(tmp_path, "built_in_process", cache_dir)
    assert "[feature-cache] building" in capsys.readouterr().out
    files = _cache_files(cache_dir)
    assert sum(name.endswith("manifest.json") for name in files) == 3  # train, val and test caches

    prebuilt = _run(tmp_path, "prebuilt", cache_dir)
    assert "[feature-cache] building" not in capsys.readouterr().out
    assert _cache_files(cache_dir) == files  # the second run read the first run's caches, untouched

    assert built["stages"]["slots"]["status"] == "done" and built["stages"]["slots"]["steps"] == 5
    assert "test/fg_ari" in built["test"]
    assert _numbers(prebuilt) == _numbers(built)  # exact: same bits whether or not the cache was built here


def test_datamodule_takes_its_source_and_frozen_network_as_parts():
    import inspect

    params = [p for p in inspect.signature(SlotsDataModule.__init__).parameters if p != "self"]
    assert len(params) <= 10, params
    assert {"source", "frozen"} <= set(params)
    assert not {"dataset", "input", "backbone", "img_size", "movi_root", "shapes"} & set(params)  # no string picks
    dm = tiny_data()
    assert isinstance(dm.source, ShapesClipSplits) and isinstance(dm.frozen, ColourEdgeBackbone)
    batch = dm.example_batch()
    assert batch["features"].shape[-1] == 16 and tuple(batch["feature_grid"][0].tolist()) == (8, 8)
    pixels = tiny_data(pixels=True)  # no frozen part: frames only
    pixels.setup("fit")
    item = pixels.splits["train"][0]
    assert "features" not in item and item["video"].shape == (2, 3, 32, 32)


def test_movi_source_needs_its_folder():
    with pytest.raises(ValueError, match="movi_root"):
        MoviClipSplits()


def test_colour_edge_frozen_part_keeps_the_demo_cache_key():
    """The demo's features are cached under this key: a refactor that changes it would rebuild the cache."""
    frozen = ColourEdgeBackbone(patch=4, dim=64, bandwidth=8.0)
    assert frozen.cache_key() == frozen.name == "colour_edge_p4_d64_b8_e1_s0"
    assert frozen.image_size is None  # clips read at their own size
    assert build_backbone("colour_edge", model_kwargs={"patch": 4, "dim": 64, "bandwidth": 8.0}).cache_key() == \
        frozen.cache_key()


def test_registry_frozen_part_is_built_on_first_use_and_owns_the_resolution(tmp_path):
    frozen = RegistryBackbone("vit_small_patch14_dinov2", image_size=28, model_kwargs=TINY_VIT)
    assert not frozen._built  # nothing built (no weights read) when the config is parsed
    torch.manual_seed(0)
    key = frozen.cache_key()
    torch.manual_seed(0)
    same = build_backbone("vit_small_patch14_dinov2", img_size=28, model_kwargs=TINY_VIT)
    assert key == same.cache_key() and frozen.name == same.name  # the cache sees the backbone itself
    assert frozen.out_dim == TINY_VIT["embed_dim"] and frozen.grid_size(28, 28) == (2, 2)
    dm = tiny_data(frozen=frozen, cache_dir=str(tmp_path / "cache"))  # 32 px clips resized to the part's 28 px
    batch = dm.example_batch()
    assert tuple(batch["feature_grid"][0].tolist()) == (2, 2) and batch["features"].shape[-2:] == (4, 48)
