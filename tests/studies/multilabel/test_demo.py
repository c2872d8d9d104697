"""The multilabel demo end to end through `lit-exp demo` (tiny sizes): stand-in, k-fold CV of the variants on
one folds file (F31), the report, and a headline that agrees with the fold runs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from lit_experiments import registry
from lit_experiments.core.results import check_floors
from lit_experiments.demo import main as demo_main
from lit_experiments.studies.multilabel.towers import tiny_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "multilabel"


def tiny_demo(tmp: Path) -> Path:
    """configs/multilabel/{demo,mlp,agch}.yaml under ``tmp`` at tiny sizes (the real seed config as base)."""
    folder = tmp / "configs" / "multilabel"
    folder.mkdir(parents=True)
    shutil.copy(CONFIGS / "seed_siglip2.yaml", folder / "seed_siglip2.yaml")
    for name in ("mlp.yaml", "agch.yaml", "probe.yaml"):
        shutil.copy(CONFIGS / name, folder / name)
    demo = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    towers = demo["data"]["init_args"]["frozen"]["init_args"]
    towers.update(steps=6, batch_size=16, cache_dir=str(tmp / "standins"),
                  config=tiny_config(image_size=16, patch_size=8, hidden=16, vision_layers=1, text_layers=1, heads=2),
                  data={"n_train": 32, "n_eval": 16, "image_size": 16})
    demo["data"]["init_args"]["source"]["init_args"].update(n_pool=40, n_test=16, world={"image_size": 16})
    demo["data"]["init_args"].update(batch_size=16, cache_dir=str(tmp / "features"))
    demo["trainer"].update(max_epochs=2, enable_progress_bar=False)
    (folder / "demo.yaml").write_text("# base: seed_siglip2.yaml\n" + yaml.safe_dump(demo))
    return tmp / "configs"


def test_f31_demo_runs_every_variant_on_one_folds_file_and_reports_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert registry.demo_tool("multilabel") == "multilabel-demo"
    configs = tiny_demo(tmp_path)
    out = tmp_path / "demo"
    assert demo_main(["--configs", str(configs), "--only", "multilabel", "--out", str(out), "--folds", "2",
                      "--variants", "mlp.yaml", "agch.yaml", "probe.yaml", "--bootstrap", "50"]) == 0
    run = out / "multilabel"
    results = json.loads((run / "results.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary[0]["ok"] and summary[0]["headline"] == results["headline"]
    standin = json.loads((run / "standin" / "results.json").read_text())
    for key in ("test/zero_shot_acc", "test/probe_map", "test/probe_map_init"):
        assert 0.0 <= standin["test"][key] <= 1.0
    for key in ("test/zero_shot_acc", "test/probe_map"):
        assert results["headline"][f"standin/{key}"] == standin["test"][key]
    refs = results["references"]
    assert refs["standin/test/probe_map"][0]["value"] == standin["test"]["test/probe_map_init"]
    assert check_floors(results) == []  # F49: every headline key of the demo has its floors
    cv = json.loads((run / "cv" / "cv.json").read_text())
    assert set(cv["variants"]) == {"mlp", "agch", "probe"}
    index = json.loads((run / "cv" / "sweep.json").read_text())["runs"]
    assert len(index) == 6 and all(r["status"] == "done" for r in index)
    assert {r["seed"] for r in index} == {results["seed"]} == {0}  # the demo's seed reaches every fold run
    fingerprints = set()
    for r in index:
        rec = json.loads((run / "cv" / r["results"]).read_text())["folds"]
        fingerprints.add(rec["fingerprint"])
        assert rec["index"] == r["fold"]
    assert fingerprints == {cv["folds"]["fingerprint"]}  # one folds file for every variant and fold
    for variant in ("mlp", "agch", "probe"):
        values = [r["test_metrics"]["test/map"] for r in index if r["variant"] == variant]
        assert cv["variants"][variant]["test/map"]["mean"] == pytest.approx(np.mean(values))
        assert results["headline"][f"{variant}/test/map"] == pytest.approx(np.mean(values))
        assert results["spread"][f"{variant}/test/map"]["std"] == pytest.approx(np.std(values, ddof=1))
        names = {r["name"]: r for r in refs[f"{variant}/test/map"]}
        assert {"chance: random ranking", "caption keyword rule"} <= set(names)
        tests = [json.loads((run / "cv" / r["test"]).read_text()) for r in index if r["variant"] == variant]
        rule = [row["value"] for t in tests for row in t["references"]["test/map"] if row["name"] == "caption keyword rule"]
        assert names["caption keyword rule"]["value"] == pytest.approx(np.mean(rule))
        assert names["caption keyword rule"]["kind"] == ("reference" if variant == "probe" else "floor")
        if variant != "probe":
            assert names["image-only probe"]["kind"] == "reference"
            assert names["image-only probe"]["value"] == pytest.approx(cv["variants"]["probe"]["test/map"]["mean"])
    diffs = [a["test_metrics"]["test/map"] - b["test_metrics"]["test/map"]
             for a in index if a["variant"] == "agch" for b in index if b["variant"] == "mlp" and b["fold"] == a["fold"]]
    assert results["paired"]["agch-mlp/test/map"]["mean_diff"] == pytest.approx(np.mean(diffs))
    boot = results["bootstrap"]
    best = max(("mlp", "agch"), key=lambda v: cv["variants"][v]["test/map"]["mean"])
    assert boot["best"] == best
    for name, key in (("caption keyword rule", "caption keyword rule"), ("image-only probe", "probe")):
        other = cv["variants"]["probe"]["test/map"]["mean"] if key == "probe" else names["caption keyword rule"]["value"]
        assert boot[name]["diff"] == pytest.approx(cv["variants"][best]["test/map"]["mean"] - other, abs=1e-5)
        assert boot[name]["ci95"][0] <= boot[name]["diff"] <= boot[name]["ci95"][1] and boot[name]["n_boot"] == 50
    assert (run / "cv" / "report" / "report.md").is_file()
    assert "mlp" in (run / "cv" / "report" / "report.md").read_text()
