"""The issue's targets, measured from results.json of the full configs (slow: `make test-full`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "satipatthana"


def _run(name: str, tmp_path: Path) -> dict:
    from lit_experiments.cli import main

    run_dir = tmp_path / name
    main(["curriculum", "-c", str(CONFIGS / f"{name}.yaml"), f"--trainer.run_dir={run_dir}"])
    return json.loads((run_dir / "results.json").read_text())["test"]


@pytest.mark.slow
def test_demo_circles_meets_the_targets(tmp_path):
    t = _run("demo", tmp_path)
    assert t["test/acc"] >= 0.99  # reference 0.8625
    assert t["test/trust_clean"] >= 0.75  # reference 0.75
    assert t["test/trust_drunk"] <= 0.05  # reference 0.04
    assert t["test/trust_void"] <= 0.05  # reference 0.03
    assert t["test/trust_auroc"] >= 0.95
    assert t["test/baseline_acc"] >= 0.98


@pytest.mark.slow
def test_digits_meets_the_targets(tmp_path):
    t = _run("digits", tmp_path)
    assert t["test/acc"] >= 0.95
    assert "test/baseline_acc" in t and t["test/psnr"] > 10.0
