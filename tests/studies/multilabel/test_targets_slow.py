"""The demo's targets (issue 14), slow: `lit-exp multilabel-demo` on configs/multilabel/demo.yaml as `make demo`
runs it (~3 min, the stand-in trained once into the shared cache).

The stand-in's linear probe beats the same probe on the towers at random initialisation by >= 0.15 mAP; its
zero-shot accuracy is above chance; the baseline (MLP on image + caption embeddings) beats the linear probe on
image embeddings only, and the AGCH-style head, on every fold; cv.json holds `test/map` for `mlp` and `agch`.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_experiments.cli import main

DEMO = Path(__file__).resolve().parents[3] / "configs" / "multilabel" / "demo.yaml"


@pytest.mark.slow
def test_demo_meets_its_targets(tmp_path):
    run = tmp_path / "run"
    assert main(["multilabel-demo", "-c", str(DEMO), "--run_dir", str(run)]) == 0
    head = json.loads((run / "results.json").read_text())["headline"]
    standin = json.loads((run / "standin" / "results.json").read_text())["test"]
    assert standin["test/probe_map"] >= standin["test/probe_map_init"] + 0.15
    assert standin["test/zero_shot_acc"] > standin["test/zero_shot_chance"]
    cv = json.loads((run / "cv" / "cv.json").read_text())["variants"]
    assert {"mlp", "agch", "probe"} <= set(cv)
    mlp, probe = cv["mlp"]["test/map"]["values"], cv["probe"]["test/map"]["values"]
    assert all(m > p for m, p in zip(mlp, probe))
    assert head["mlp/test/map"] == pytest.approx(cv["mlp"]["test/map"]["mean"])
    assert head["agch/test/map"] == pytest.approx(cv["agch"]["test/map"]["mean"])
