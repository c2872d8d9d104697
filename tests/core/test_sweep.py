"""`lit-exp sweep`: grid x seeds as real toy runs, sweep.json, resume, failures, --print, --wandb-sweep, bad input."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from lit_experiments.cli import main
from lit_experiments.experiments import sweep

ROOT = Path(__file__).resolve().parents[2]
CURRICULUM = str(ROOT / "configs" / "toy" / "curriculum.yaml")
REAL_EXECUTE = sweep.execute


def tiny(tmp_path: Path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text("data: {init_args: {n_train: 32, n_val: 16, n_test: 16, batch_size: 8}}\n")
    return str(path)


def base_args(tmp_path: Path) -> list[str]:
    return ["sweep", "-c", CURRICULUM, "-c", tiny(tmp_path)]


def index(out: Path) -> dict:
    return json.loads((out / "sweep.json").read_text())


def counting(monkeypatch: pytest.MonkeyPatch, stop_after: int | None = None) -> list[list[str]]:
    """Wrap the product's `sweep.execute`: record each call; optionally interrupt after ``stop_after`` runs."""
    calls: list[list[str]] = []
    real = REAL_EXECUTE

    def wrapped(args: list[str]) -> None:
        if stop_after is not None and len(calls) >= stop_after:
            raise KeyboardInterrupt
        calls.append(args)
        real(args)

    monkeypatch.setattr(sweep, "execute", wrapped)
    return calls


def test_grid_sweep_three_variants_three_seeds_end_to_end_and_rerun_skips(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sw"
    argv = base_args(tmp_path) + ["--grid", "model.init_args.hidden=8,16,24", "--seeds", "0,1,2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    data = index(out)
    assert data["kind"] == "sweep" and data["seeds"] == [0, 1, 2] and data["base"][0] == CURRICULUM
    assert data["grid"] == {"model.init_args.hidden": ["8", "16", "24"]}
    assert data["variants"] == ["hidden=8", "hidden=16", "hidden=24"]
    assert len(data["runs"]) == 9
    for run in data["runs"]:
        hidden, seed = run["overrides"]["model.init_args.hidden"], run["seed"]
        assert run["name"] == f"hidden={hidden}__seed{seed}" and run["status"] == "done" and run["fold"] is None
        assert run["error"] is None and run["run_dir"] == run["name"]
        results = json.loads((out / run["results"]).read_text())
        assert results["seed"] == seed and results["status"] == "done"
        assert run["headline"] == results["headline"] and "test/acc" in run["headline"]
        saved = yaml.safe_load((out / run["run_dir"] / "config.yaml").read_text())
        assert saved["model"]["init_args"]["hidden"] == hidden  # the override reached the run
        assert saved["data"]["init_args"]["n_train"] == 32
        assert f"run {data['runs'].index(run) + 1}/9: {run['name']}" in printed
    assert printed.count(" -> done, test/acc=") == 9
    calls = counting(monkeypatch)
    assert main(argv) == 0
    assert calls == []  # every run was done: nothing re-runs
    assert capsys.readouterr().out.count("done (skipped") == 9


def test_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    out = tmp_path / "sw"
    code = main(base_args(tmp_path) + ["--grid", "data.init_args.batch_size=0,8", "--seeds", "0", "--out", str(out)])
    assert code == 1
    runs = {r["name"]: r for r in index(out)["runs"]}
    bad, good = runs["batch_size=0__seed0"], runs["batch_size=8__seed0"]
    assert bad["status"] == "failed" and "batch_size=0" in bad["error"]
    assert good["status"] == "done" and (out / good["results"]).is_file()
    text = capsys.readouterr().out
    assert "run 1/2: batch_size=0__seed0" in text and "-> failed" in text


def test_resume_of_a_half_finished_sweep(tmp_path, monkeypatch):
    out = tmp_path / "sw"
    argv = base_args(tmp_path) + ["--grid", "model.init_args.hidden=8,16", "--seeds", "0,1", "--out", str(out)]
    first = counting(monkeypatch, stop_after=2)
    with pytest.raises(SystemExit) as exc:  # Ctrl-C after two runs: the CLI exits 130
        main(argv)
    assert exc.value.code == 130 and len(first) == 2
    assert [r["status"] for r in index(out)["runs"]] == ["done", "done", "interrupted", "pending"]
    second = counting(monkeypatch)
    assert main(argv) == 0
    assert [c[c.index("--trainer.run_dir") + 1] for c in second] == [str(out / "hidden=16__seed0"),
                                                                      str(out / "hidden=16__seed1")]
    assert all(r["status"] == "done" for r in index(out)["runs"])


def test_rerun_of_a_failed_run_moves_its_old_folder_aside(tmp_path):
    out = tmp_path / "sw"
    argv = base_args(tmp_path) + ["--grid", "model.init_args.hidden=8", "--seeds", "0", "--out", str(out)]
    assert main(argv) == 0
    results = out / "hidden=8__seed0" / "results.json"
    data = json.loads(results.read_text())
    data.update(status="failed", error="RuntimeError: boom")  # the run's own record says failed
    results.write_text(json.dumps(data))
    assert sweep.load_index(out)["runs"][0]["status"] == "done"
    old = data["created"]
    assert main(argv) == 0
    run = index(out)["runs"][0]
    assert run["status"] == "done" and run["superseded"] == ["superseded/hidden=8__seed0-1"]
    assert json.loads((out / "superseded/hidden=8__seed0-1/results.json").read_text())["created"] == old
    assert not (out / "hidden=8__seed0-2").exists()  # never a silent sibling


def test_list_variants_with_base(tmp_path):
    out = tmp_path / "sw"
    for name, hidden in (("narrow", 8), ("wide", 24)):
        (tmp_path / f"{name}.yaml").write_text(f"model: {{init_args: {{hidden: {hidden}}}}}\n")
    code = main(base_args(tmp_path) + ["--list", str(tmp_path / "narrow.yaml"), str(tmp_path / "wide.yaml"),
                                       "--with-base", "--seeds", "0", "--out", str(out)])
    assert code == 0
    runs = index(out)["runs"]
    assert [r["name"] for r in runs] == ["base__seed0", "narrow__seed0", "wide__seed0"]
    hidden = [yaml.safe_load((out / r["run_dir"] / "config.yaml").read_text())["model"]["init_args"]["hidden"]
              for r in runs]
    assert hidden == [32, 8, 24]


def test_print_writes_one_command_per_run_and_runs_nothing(tmp_path, capsys, monkeypatch):
    calls = counting(monkeypatch)
    out = tmp_path / "sw"
    assert main(base_args(tmp_path) + ["--grid", "model.init_args.hidden=8,16", "--seeds", "0,1", "--out", str(out),
                                       "--print"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("lit-exp")]
    assert len(lines) == 4 and calls == []
    parsed = [shlex.split(line) for line in lines]
    assert all(p[1] == "curriculum" and p[p.index("--trainer.run_dir") + 1].startswith(str(out)) for p in parsed)
    assert sorted((p[p.index("--model.init_args.hidden") + 1], p[p.index("--seed_everything") + 1])
                  for p in parsed) == [("16", "0"), ("16", "1"), ("8", "0"), ("8", "1")]
    assert not (out / "hidden=8__seed0").exists()


def test_wandb_sweep_file_gives_every_agent_run_its_own_folder(tmp_path, monkeypatch):
    path, out = tmp_path / "wb.yaml", tmp_path / "sw"
    assert main(base_args(tmp_path) + ["--grid", "model.init_args.hidden=8,16", "--seeds", "0,1", "--out", str(out),
                                       "--trainer.max_epochs", "1", "--wandb-sweep", str(path)]) == 0
    spec = yaml.safe_load(path.read_text())
    assert spec["method"] == "grid" and spec["program"] == "lit-exp"
    assert spec["parameters"] == {"model.init_args.hidden": {"values": [8, 16]},
                                  "seed_everything": {"values": [0, 1]}}
    assert spec["command"] == ["${program}", "curriculum", "-c", CURRICULUM, "-c", tiny(tmp_path),
                               "--trainer.max_epochs", "1", "--trainer.run_dir", str(out.resolve() / "{wandb_run_id}"),
                               "${args}"]
    for run_id, hidden in (("abc123", "8"), ("def456", "16")):  # what two agents run (they all got one run_dir)
        monkeypatch.setenv("WANDB_RUN_ID", run_id)
        args = [a for a in spec["command"][1:] if a != "${args}"]
        assert main(args + ["--model.init_args.hidden", hidden, "--seed_everything", "0"]) is None
    assert sorted(p.parent.name for p in out.glob("*/results.json")) == ["abc123", "def456"]
    monkeypatch.delenv("WANDB_RUN_ID")
    with pytest.raises(SystemExit):  # outside an agent the placeholder is an error, not a folder named {wandb_run_id}
        main([a for a in spec["command"][1:] if a != "${args}"])


def test_unknown_grid_key_names_it_and_the_nearest_keys(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(base_args(tmp_path) + ["--grid", "model.init_args.hiden=8,16"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "model.init_args.hiden" in err and "model.init_args.hidden" in err and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [([], "grid is empty"),
                                            (["--grid", "model.init_args.hidden="], "no values")])
def test_empty_grid_is_an_error(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        main(base_args(tmp_path) + extra)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# ------------------------------------------------------------------ a sweep folder is a record (issue 25, item 1)
def test_ctrl_c_inside_a_run_records_interrupted_stops_and_says_how_to_continue(tmp_path, monkeypatch, capsys):
    """Lightning answers Ctrl-C by writing results.json `interrupted` and exiting 1: the sweep must stop and record
    `interrupted` (it recorded `failed` and went on)."""
    out = tmp_path / "sw"
    argv = base_args(tmp_path) + ["--grid", "model.init_args.hidden=8,16", "--seeds", "0", "--out", str(out)]

    import lit_experiments.core.litcli as litcli

    def interrupted_run(args, **kw):  # what LightningCLI does on Ctrl-C: results.json `interrupted`, exit 1
        run_dir = Path(args[args.index("--trainer.run_dir") + 1])
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(json.dumps({"status": "interrupted", "error": "KeyboardInterrupt"}))
        raise SystemExit(1)

    monkeypatch.setattr(litcli, "run_command", interrupted_run)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 130
    runs = index(out)["runs"]
    assert [r["status"] for r in runs] == ["interrupted", "pending"]
    assert "run the same command again to continue" in capsys.readouterr().out
    monkeypatch.undo()
    calls = counting(monkeypatch)
    assert main(argv) == 0 and len(calls) == 2  # the interrupted run starts again, then the pending one
    assert [r["status"] for r in index(out)["runs"]] == ["done", "done"]


def test_two_sweeps_cannot_write_one_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sw"
    argv = base_args(tmp_path) + ["--grid", "model.init_args.hidden=8", "--seeds", "0", "--out", str(out)]
    calls = counting(monkeypatch)
    holder = sweep.lock_folder(out)  # another sweep holds the folder
    try:
        with pytest.raises(SystemExit) as exc:
            main(argv)
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and calls == [] and "being written by another sweep" in err and "pid" in err
    assert not (out / "sweep.json").exists()
    assert main(argv) == 0  # the lock goes with its holder


def test_states_follow_the_runs_own_results_and_a_truncated_one_is_named_and_rerun(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sw"
    argv = base_args(tmp_path) + ["--grid", "model.init_args.hidden=8,16", "--seeds", "0", "--out", str(out)]
    assert main(argv) == 0
    data = index(out)
    data["runs"][0]["status"] = "running"  # a sweep killed mid-run left this behind; the run itself finished
    (out / "sweep.json").write_text(json.dumps(data))
    second = out / data["runs"][1]["results"]
    second.write_text(second.read_text()[:40])  # truncated
    capsys.readouterr()
    calls = counting(monkeypatch)
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert len(calls) == 1 and calls[0][calls[0].index("--trainer.run_dir") + 1] == str(out / "hidden=16__seed0")
    assert f"{second} is unreadable" in text
    assert [r["status"] for r in index(out)["runs"]] == ["done", "done"]


def test_print_writes_the_planned_runs_into_sweep_json_for_report(tmp_path, capsys):
    out = tmp_path / "sw"
    argv = base_args(tmp_path) + ["--grid", "model.init_args.hidden=8,16", "--seeds", "0", "--out", str(out)]
    assert main(argv + ["--print"]) == 0
    commands = [shlex.split(line)[1:] for line in capsys.readouterr().out.splitlines() if line.startswith("lit-exp")]
    data = index(out)
    assert [r["status"] for r in data["runs"]] == ["pending", "pending"]
    assert [shlex.split(r["command"])[1:] for r in data["runs"]] == commands
    for args in commands:  # what a SLURM array would do
        main(args)
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.md").is_file()
    assert main(argv) == 0  # the sweep itself now finds every run done
    assert [r["status"] for r in index(out)["runs"]] == ["done", "done"]


def test_per_run_overrides_reach_every_run_and_a_wrong_key_is_refused_first(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sw"
    argv = base_args(tmp_path) + ["--grid", "model.init_args.hidden=8,16", "--seeds", "0", "--out", str(out)]
    calls = counting(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--trainer.max_epoch", "1"])
    assert exc.value.code == 2 and calls == []
    assert "--trainer.max_epoch" in capsys.readouterr().err
    assert main(argv + ["--trainer.max_epochs", "1"]) == 0
    assert index(out)["overrides"] == ["--trainer.max_epochs", "1"]
    for run in index(out)["runs"]:
        saved = yaml.safe_load((out / run["run_dir"] / "config.yaml").read_text())
        assert saved["trainer"]["max_epochs"] == 1
