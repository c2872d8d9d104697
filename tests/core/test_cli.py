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


# ------------------------------------------------------------------ errors fit on one screen (issue 11, item 3)
def run_split(args, capsys):
    # Lightning's console handlers follow the current sys.stderr (core/loggers.follow_stderr), so capsys sees them
    try:
        code = main([str(a) for a in args]) or 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _bad_yaml(tmp):
    path = tmp / "broken.yaml"
    path.write_text("model:\n  init_args: {hidden: 3\ntrainer:\n  max_epochs: 1\n")
    return path


def _unknown_key(tmp):
    path = tmp / "hiden.yaml"
    path.write_text(TOY.read_text().replace("hidden: 32", "hiden: 32"))
    return path


def _batch_zero(tmp):
    path = tmp / "bs0.yaml"
    path.write_text("data:\n  init_args: {batch_size: 0}\n")
    return path


FIT = TOY.with_name("fit.yaml")
ERROR_CASES = {
    "abbreviated option": (lambda tmp: ["fit", "-c", FIT, "--trainer.max_epoch", "1"], 2,
                           ["--trainer.max_epoch", "did you mean --trainer.max_epochs"]),
    "wrong type": (lambda tmp: ["fit", "-c", FIT, "--model.init_args.hidden", "many"], 2,
                   ["model.init_args.hidden", "many"]),
    "unknown key": (lambda tmp: ["curriculum", "-c", _unknown_key(tmp)], 2, ["hiden"]),
    "missing config": (lambda tmp: ["fit", "-c", tmp / "nope.yaml"], 2, ["nope.yaml", "not found"]),
    "yaml syntax": (lambda tmp: ["fit", "-c", FIT, "-c", _bad_yaml(tmp)], 2, ["broken.yaml", "line 3"]),
    "fit with a curriculum": (lambda tmp: ["fit", "-c", TOY], 2, ["stages", "lit-exp curriculum"]),
    "unknown subcommand": (lambda tmp: ["fitt", "-c", FIT], 2, ["fitt", "curriculum"]),
    "bad value in a constructor": (lambda tmp: ["fit", "-c", FIT, "-c", _batch_zero(tmp)], 1,
                                   ["batch_size=0", "study.py"]),
    "curriculum without stages": (lambda tmp: ["curriculum", "-c", FIT, f"--trainer.run_dir={tmp / 'r'}"], 1,
                                  ["stages"]),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_are_one_short_block_without_traceback(case, tmp_path, capsys):
    make_args, expected_code, needles = ERROR_CASES[case]
    code, out, err = run_split(make_args(tmp_path), capsys)
    assert code == expected_code, err
    block = err[err.index("lit-exp: error:"):].strip().splitlines()
    assert len(block) <= 8, err
    assert "Traceback" not in err and "usage:" not in err and "NoneType" not in err
    for needle in needles:
        assert needle in err, (needle, err)


def test_debug_flag_and_env_show_the_traceback(tmp_path, monkeypatch):
    args = ["fit", "-c", str(FIT), "-c", str(_batch_zero(tmp_path))]
    with pytest.raises(ValueError, match="batch_size=0"):
        main([*args, "--debug"])
    monkeypatch.setenv("LIT_EXP_DEBUG", "1")
    with pytest.raises(ValueError, match="batch_size=0"):
        main(args)


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only known error kinds are shortened; an unexpected TypeError (a bug) propagates untouched."""
    import lit_experiments.core.litcli as litcli

    def broken(args=None, run=True, description=None):
        raise TypeError("a bug")

    monkeypatch.setattr(litcli, "build_cli", broken)
    with pytest.raises(TypeError, match="a bug"):
        main(["fit", "-c", str(FIT)])


def test_guard_error_with_a_lessons_id_is_short(monkeypatch, capsys):
    import lit_experiments.core.litcli as litcli

    def guard(args=None, run=True, description=None):
        raise RuntimeError("stage 'head': parameter head.weight got no gradient (F07)\nlikely cause: detached loss")

    monkeypatch.setattr(litcli, "build_cli", guard)
    code, out, err = run_split(["fit", "-c", FIT], capsys)
    assert code == 1 and "head.weight" in err and "(F07)" in err and "Traceback" not in err


# ----------------------------------------------------------------------- progress and output (item 7)
def test_progress_bar_policy():
    from lit_experiments.core.litcli import progress_bar_wanted

    assert progress_bar_wanted([], env={}, tty=True) is True
    assert progress_bar_wanted([], env={"CI": "true"}, tty=True) is False
    assert progress_bar_wanted([], env={}, tty=False) is False
    assert progress_bar_wanted(["--trainer.enable_progress_bar", "false"], env={}, tty=True) is None
    assert progress_bar_wanted(["--trainer.enable_progress_bar=true"], env={"CI": "1"}, tty=False) is None


def test_progress_bar_on_a_terminal_despite_the_yaml(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert yaml.safe_load(FIT.read_text())["trainer"].get("enable_progress_bar", True) in (False, True)
    cli = build_cli(["-c", str(FIT)], run=False)
    assert cli.trainer.progress_bar_callback is not None
    monkeypatch.setenv("CI", "true")
    assert build_cli(["-c", str(FIT)], run=False).trainer.progress_bar_callback is None
    explicit = build_cli(["-c", str(FIT), "--trainer.enable_progress_bar=true"], run=False)
    assert explicit.trainer.progress_bar_callback is not None


def test_lightning_advertising_tips_are_silenced(tmp_path, capsys, caplog):
    import logging

    caplog.set_level(logging.INFO)
    code, out, err = run_split(["fit", "-c", FIT, f"--trainer.run_dir={tmp_path / 'r'}", "--trainer.max_steps=1"],
                               capsys)
    assert code == 0, err
    assert "GPU available" in caplog.text  # Lightning's other info lines still come through
    for text in (out, err, caplog.text):
        assert "Tip:" not in text and "litlogger" not in text and "litmodels" not in text
    assert out.count("results.json:") == 1


def test_help_starts_fast_without_torch_or_lightning():
    code = ("import sys, time; t = time.perf_counter(); from lit_experiments.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('SECONDS', time.perf_counter() - t, 'torch' in sys.modules, 'lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith("SECONDS"))
    _, seconds, torch_loaded, lightning_loaded = line.split()
    print(f"lit-exp --help in-process: {float(seconds):.2f} s")
    assert torch_loaded == "False" and lightning_loaded == "False"
    assert float(seconds) < 10  # loose bound for a loaded machine; measured ~0.1 s
    for word in ("fit", "validate", "test", "predict", "curriculum", "data", "curves", "demo", "--debug"):
        assert word in out.stdout


def test_a_delta_run_records_its_files_and_says_its_bases_on_stderr(tmp_path, capsys):
    """`-c delta.yaml` (a `# base:` line): the bases are said on stderr (stdout stays the run's own output), the
    run records every composed file in results.json and one composed config.yaml (core/configs, F48)."""
    delta = tmp_path / "delta.yaml"
    delta.write_text(f"# base: {FIT}\nmodel:\n  init_args:\n    hidden: 7\n")
    run_dir = tmp_path / "r"
    code, out, err = run_split(["fit", "-c", delta, f"--trainer.run_dir={run_dir}", "--trainer.max_steps=1"], capsys)
    assert code == 0, err
    assert f"composing {FIT}" in err and "composing" not in out
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config_files"] == [str(FIT), str(delta)]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["init_args"]["hidden"] == 7 and not saved.get("config")


def test_a_nested_key_typo_names_the_file_line_and_the_nearest_key(tmp_path, capsys):
    """A misspelt key inside a part (or the trainer group) of a config file: the error says which file and line
    set it and which accepted key is nearest (it named neither and dumped the whole composed part)."""
    part = tmp_path / "part.yaml"
    part.write_text("# a delta\nmodel:\n  init_args: {hiden: 3}\n")
    code, out, err = run_split(["fit", "-c", FIT, "-c", part, "--print_config"], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{part}:3" in err and "did you mean 'hidden'" in err and "Given value" not in err
    group = tmp_path / "group.yaml"
    group.write_text("trainer:\n  max_epoch: 3\n")
    code, out, err = run_split(["fit", "-c", FIT, "-c", group, "--print_config"], capsys)
    assert code == 2 and f"{group}:2" in err and "did you mean 'max_epochs'" in err


# ------------------------------------------------------------------ every failure leaves a record (issue 25)
def test_a_failed_fit_writes_results_json_with_status_and_error(tmp_path, capsys, monkeypatch):
    from lit_experiments.studies.toy.module import ToyModule

    def broken(self, batch, batch_idx):
        raise RuntimeError("the loss went sideways")

    monkeypatch.setattr(ToyModule, "training_step", broken)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="sideways"):  # a bug keeps its traceback, and its record
        main(["fit", "-c", str(FIT), f"--trainer.run_dir={run_dir}", "--trainer.max_epochs=1"])
    data = json.loads((run_dir / "results.json").read_text())
    assert data["status"] == "failed" and "the loss went sideways" in data["error"]
    assert data["stages"]["fit"]["status"] == "failed" and data["subcommand"] == "fit"


def test_fit_prints_its_metrics(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = run_split(["fit", "-c", FIT, f"--trainer.run_dir={run_dir}", "--trainer.max_epochs=1"], capsys)
    data = json.loads((run_dir / "results.json").read_text())
    assert code == 0 and data["status"] == "done"
    line = next(line for line in out.splitlines() if line.strip().startswith("val/acc"))
    assert float(line.split()[1]) == pytest.approx(data["final"]["val/acc"], abs=5e-5)


def test_validate_and_test_print_one_short_table_not_lightnings(tmp_path, capsys):
    """Issue 25: each metric once, under one name, in the workbench's short table (Lightning's own table is off)."""
    run_dir = tmp_path / "run"
    code, out, err = run_split(["fit", "-c", FIT, f"--trainer.run_dir={run_dir}", "--trainer.max_epochs=1"], capsys)
    assert code == 0, err
    ckpt = str(next(run_dir.rglob("*.ckpt")))
    for sub, title in (("validate", "validate metrics ("), ("test", "test metrics (")):
        eval_dir = tmp_path / sub
        code, out, err = run_split([sub, "-c", FIT, f"--trainer.run_dir={eval_dir}", f"--ckpt_path={ckpt}"], capsys)
        assert code == 0, err
        assert title in out, out
        assert "metric" not in out.replace(title, "").replace("metrics (", ""), out  # no "Validate metric" table
        path = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("results.json: "))
        data = json.loads(Path(path).read_text())
        shown = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and "/" in line.split()[0]]
        assert sorted(shown) == sorted(data["validate" if sub == "validate" else "test"]), (shown, data)
