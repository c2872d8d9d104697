"""The satipatthana configs: contents and stage order (running them is the every-config test's job, via tiny.py),
sizes said once."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_experiments.core.configs import load_composed
from lit_experiments.core.specs import StageSpec

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "satipatthana"
SIZES = ("in_dim", "latent_dim", "state_dim", "out_dim", "out_shape", "in_channels", "out_channels", "n_probes")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_config_contents_stage_order_and_stage_2_learning_rate(path):
    """Content of every satipatthana YAML (running them is the every-config test's job, via tiny.py)."""
    raw = load_composed(path)  # the product's `# base:` composition
    stages = [StageSpec(**s) for s in raw["stages"]]
    assert [s.name for s in stages] == ["adapter", "samatha", "vipassana", "decoder", "baseline"]
    assert stages[2].optimizer.lr >= 1e-3  # F12: stage 2 runs at its own, higher rate
    assert stages[4].trainable == ["baseline"] and "baseline" in raw["model"]["init_args"]
    assert "in_dim" not in raw["model"]["init_args"]["task_decoder"].get("init_args", {})  # filled in, not typed


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_sizes_are_said_once(path):
    """The state size is the adapter's ``dim`` alone; sizes that follow from the data or another part are not typed."""
    model = load_composed(path)["model"]["init_args"]
    assert "dim" in model["adapter"]["init_args"]
    for name, part in model.items():
        args = part.get("init_args", {}) if isinstance(part, dict) else {}
        typed = sorted(set(args) & set(SIZES)) + (["dim"] if "dim" in args and name != "adapter" else [])
        assert not typed, f"{path.name}: model.{name} types {typed}"
    assert "num_classes" not in model["task_decoder"].get("init_args", {})  # the module's num_classes
