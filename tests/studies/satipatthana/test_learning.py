"""The reduced learning check of the demo (default suite): the demo YAML through ``lit-exp curriculum``."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "satipatthana"


def test_demo_curriculum_end_to_end(tmp_path):
    """Reduced learning check (default suite): the demo YAML through `lit-exp curriculum` with fewer epochs on
    a smaller circles set; accuracy clears chance (0.5) by a wide margin and trust separates the paths."""
    from lit_experiments.cli import main

    raw = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    epochs = {"adapter": 2, "samatha": 12, "vipassana": 4, "decoder": 6, "baseline": 20}
    for stage in raw["stages"]:
        stage["max_epochs"] = epochs[stage["name"]]
    override = tmp_path / "short.yaml"
    override.write_text(yaml.safe_dump({"stages": raw["stages"]}))
    run_dir = tmp_path / "demo"
    main(["curriculum", "-c", str(CONFIGS / "demo.yaml"), "-c", str(override), f"--trainer.run_dir={run_dir}"])
    res = json.loads((run_dir / "results.json").read_text())
    assert [res["stages"][n]["status"] for n in epochs] == ["done"] * 5
    test = res["test"]
    for key in ("test/acc", "test/baseline_acc", "test/trust_clean", "test/trust_void", "test/trust_auroc"):
        assert key in test, key
    assert test["test/acc"] >= 0.9  # chance is 0.5
    assert test["test/baseline_acc"] >= 0.9
    assert test["test/trust_clean"] > test["test/trust_void"] + 0.3
    assert test["test/trust_clean"] > test["test/trust_drunk"] + 0.3
    assert test["test/trust_auroc"] > 0.85
    figures = {p.name for p in (run_dir / "figures").rglob("*.png")}
    assert {"trust_histograms.png", "energy_trajectories.png", "decision_boundary.png"} <= figures
