"""``lit-exp slots-analyze`` (F06): per-layer spatial statistics rank structured features above flat ones."""
from __future__ import annotations

import torch

from lit_experiments.cli import main as cli_main
from lit_experiments.studies.slots.analyze import feature_stats
from lit_experiments.studies.slots.analyze import main as analyze_main


def test_f06_analysis_ranks_structured_features_above_flat(tmp_path, capsys):
    torch.manual_seed(0)
    ids = torch.randint(0, 4, (4, 64))
    codes = torch.randn(4, 32) * 3
    structured = codes[ids] + 0.1 * torch.randn(4, 64, 32)  # objects with distinct features
    flat = torch.randn(1, 1, 32) * 3 + 0.1 * torch.randn(4, 64, 32)  # the same feature everywhere
    assert feature_stats(structured)["ratio"] > 5 * feature_stats(flat)["ratio"]
    # the command writes a CSV + plot and ranks layers by ratio
    code = analyze_main(["--backbone", "colour_edge", "--n", "4", "--image-size", "32", "--out", str(tmp_path)])
    assert code == 0
    assert cli_main(["slots-analyze", "--backbone", "colour_edge", "--n", "2", "--image-size", "32",
                     "--out", str(tmp_path / "cli")]) == 0
    csv_text = (tmp_path / "colour_edge_layers.csv").read_text()
    assert "spatial_std" in csv_text and (tmp_path / "colour_edge_layers.png").stat().st_size > 0
    assert "ratio" in capsys.readouterr().out
