"""The `lit-exp` CLI: subcommands, config composition, print_config round-trip, errors naming the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_experiments.cli import build_cli, main

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "configs" / "toy" / "curriculum.yaml"


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return exc.value.code, captured.out + captured.err


def test_help_lists_curriculum(capsys):
    code, out = run_cli(["--help"], capsys)
    assert code == 0
    for sub in ("fit", "validate", "test", "predict", "curriculum"):
        assert sub in out
    assert "lit-exp data" in out


def test_console_script_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "lit_experiments", "curriculum", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--stages" in out.stdout and "--resume" in out.stdout and "--only" in out.stdout


def test_print_config_round_trips(capsys, tmp_path):
    code, out = run_cli(["curriculum", "-c", str(TOY), "--print_config"], capsys)
    assert code == 0
    printed = yaml.safe_load(out)
    assert [s["name"] for s in printed["stages"]] == ["encoder", "head"]
    assert printed["stages"][1]["optimizer"]["name"] == "SGD"
    again = tmp_path / "again.yaml"
    again.write_text(out)
    code2, out2 = run_cli(["curriculum", "-c", str(again), "--print_config"], capsys)
    assert code2 == 0 and yaml.safe_load(out2) == printed


def test_configs_compose_in_order(capsys, tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text("trainer:\n  max_epochs: 7\nmodel:\n  init_args:\n    hidden: 5\n")
    code, out = run_cli(["curriculum", "-c", str(TOY), "-c", str(override), "--print_config"], capsys)
    printed = yaml.safe_load(out)
    assert printed["model"]["init_args"]["hidden"] == 5 and printed["trainer"]["max_epochs"] == 7
    assert printed["data"]["init_args"]["n_train"] == 256  # from the first file


def test_unknown_key_fails_with_its_name(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TOY.read_text().replace("hidden: 32", "hiden: 32"))
    code, out = run_cli(["curriculum", "-c", str(bad), "--print_config"], capsys)
    assert code != 0 and "hiden" in out


def test_wrong_type_fails_with_its_name(capsys):
    code, out = run_cli(["curriculum", "-c", str(TOY), "--model.init_args.hidden", "many", "--print_config"], capsys)
    assert code != 0 and "hidden" in out


def test_f34_curriculum_run_writes_results_and_one_config(tmp_path, capsys):
    run_dir = tmp_path / "r"
    cli = build_cli(["curriculum", "-c", str(TOY), f"--trainer.run_dir={run_dir}", "--trainer.max_epochs=1"])
    assert cli.trainer.run_dir == run_dir
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results["stages"]) == ["encoder", "head"]
    assert results["config_files"] and results["config_files"][0].endswith("curriculum.yaml")
    assert (run_dir / "config.yaml").exists()
    # one config for the run, no SaveConfigCallback collision in stage directories (F34)
    assert not list((run_dir / "stages").rglob("config.yaml"))
    assert "results.json:" in capsys.readouterr().out


def test_fit_subcommand_writes_results(tmp_path):
    run_dir = tmp_path / "fit"
    build_cli(["fit", "-c", str(TOY.with_name("fit.yaml")), f"--trainer.run_dir={run_dir}", "--trainer.max_epochs=1"])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["stages"]["fit"]["status"] == "done" and results["stages"]["fit"]["steps"] > 0
    assert "val/acc" in results["final"]  # plain fit: no stage prefix


def test_f32_cli_builds_no_optimizer_at_start_up(capsys):
    from lit_experiments.core.study import StudyModule

    cli = build_cli(["-c", str(TOY.with_name("fit.yaml"))], run=False)
    # LightningCLI's automatic optimizer would patch configure_optimizers on the instance
    assert "configure_optimizers" not in vars(cli.model)
    assert type(cli.model).configure_optimizers is StudyModule.configure_optimizers
    code, out = run_cli(["fit", "-c", str(TOY.with_name("fit.yaml")), "--optimizer", "Adam", "--print_config"], capsys)
    assert code != 0 and "optimizer" in out
