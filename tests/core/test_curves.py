"""`lit-exp curves`: metric curves read from the runs' CSV logs, stages laid end to end."""
from __future__ import annotations

import csv

import pytest

from lit_experiments.cli import main as cli_main
from lit_experiments.experiments.curves import read_curves


def _write_log(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = ["epoch", "step", "a/val/acc", "a/train/loss"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys})


def _run(tmp_path):
    run = tmp_path / "run"
    _write_log(run / "stages/00_a/metrics.csv", [
        {"step": 9, "a/train/loss": 1.0}, {"step": 9, "a/val/acc": 0.25}, {"step": 19, "a/val/acc": 0.5},
    ])
    _write_log(run / "stages/01_b/metrics.csv", [{"step": 4, "a/val/acc": 0.75}])
    return run


def test_curves_follow_the_logs_and_chain_stages(tmp_path):
    (curve,) = read_curves(_run(tmp_path), ["a/val/acc"])
    assert curve.values == [0.25, 0.5, 0.75]
    assert curve.steps == [9, 19, 20 + 4]  # stage 01 starts after stage 00's last step
    assert curve.stages == ["00_a", "00_a", "01_b"]


def test_curves_command_writes_csv_and_plot(tmp_path, capsys):
    run = _run(tmp_path)
    out = tmp_path / "out"
    assert cli_main(["curves", f"mine={run}", "--metric", "a/val/acc", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "curves.csv").open()))
    assert [float(r["value"]) for r in rows] == [0.25, 0.5, 0.75] and {r["run"] for r in rows} == {"mine"}
    assert (out / "curves.png").stat().st_size > 1000
    assert "last 0.7500 at step 24" in capsys.readouterr().out


def test_curves_errors_name_the_path_and_the_logged_metrics(tmp_path, capsys):
    run = _run(tmp_path)
    with pytest.raises(KeyError, match="a/val/acc"):
        read_curves(run, ["a/val/nope"])
    assert cli_main(["curves", str(tmp_path / "missing"), "--metric", "x"]) == 2
    assert "missing does not exist" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="stages/\\*/metrics.csv"):
        read_curves(tmp_path / "empty", ["x"])
