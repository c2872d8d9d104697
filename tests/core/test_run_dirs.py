"""Run directories are append-only records, through the real `lit-exp curriculum` entry point (issue 11 item 1).

Every test runs in its own temporary working directory (tests/conftest.py), so the toy YAML's fixed
``run_dir: runs/toy/curriculum`` is fresh at the start of each test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lit_experiments.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TOY = str(CONFIGS / "toy" / "curriculum.yaml")
RUN = Path("runs/toy/curriculum")


def lit(args: list[str], capsys) -> tuple[int, str]:
    """Run ``lit-exp`` in-process; (exit code, stdout + stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def strict_json(path: Path) -> dict:
    def refuse(name: str):
        raise ValueError(f"{path}: non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_rerun_without_resume_writes_a_new_suffixed_dir_and_leaves_the_first_untouched(capsys):
    code, _ = lit(["curriculum", "-c", TOY, "--trainer.max_epochs", "1"], capsys)
    assert code == 0
    before = snapshot(RUN)
    code, out = lit(["curriculum", "-c", TOY, "--trainer.max_epochs", "1", "--model.init_args.hidden", "16"], capsys)
    assert code == 0, out
    second = Path("runs/toy/curriculum-2")
    assert snapshot(RUN) == before  # not one byte of the first run changed
    assert out.count(str(second)) >= 1 and sum("already holds a run" in line for line in out.splitlines()) == 1
    saved = yaml.safe_load((second / "config.yaml").read_text())
    assert saved["model"]["init_args"]["hidden"] == 16 and saved["trainer"]["run_dir"] == str(second)
    results = strict_json(second / "results.json")
    assert all(results["stages"][s]["status"] == "done" and results["stages"][s]["steps"] > 0
               for s in ("encoder", "head"))  # the new settings were trained, not skipped
    assert "test/acc" in results["test"]


def test_existing_run_dir_refused_when_asked(capsys, monkeypatch):
    assert lit(["curriculum", "-c", TOY, "--trainer.max_steps", "2"], capsys)[0] == 0
    before = snapshot(RUN)
    code, out = lit(["curriculum", "-c", TOY, "--trainer.max_steps", "2", "--on_existing", "refuse"], capsys)
    assert code != 0 and str(RUN) in out and "--resume" in out and "run_dir" in out
    monkeypatch.setenv("LIT_EXP_ON_EXISTING", "refuse")
    code, out = lit(["curriculum", "-c", TOY, "--trainer.max_steps", "2"], capsys)
    assert code != 0 and "already holds a run" in out
    assert snapshot(RUN) == before and not Path("runs/toy/curriculum-2").exists()


def test_resume_with_a_changed_config_is_refused_naming_the_keys_unless_resume_changed(capsys, tmp_path):
    code, _ = lit(["curriculum", "-c", TOY, "--only", "encoder"], capsys)
    assert code == 0
    assert "only" not in yaml.safe_load((RUN / "config.yaml").read_text())  # never carried into a resume
    before = snapshot(RUN)
    changed = tmp_path / "head_lr.yaml"
    stages = yaml.safe_load(Path(TOY).read_text())["stages"]
    stages[1]["optimizer"]["lr"] = 0.05
    changed.write_text(yaml.safe_dump({"stages": stages}))
    args = ["curriculum", "-c", TOY, "-c", str(changed), "--resume", str(RUN)]
    code, out = lit(args, capsys)
    assert code != 0
    assert "stages.head.optimizer.lr" in out and "0.01 -> 0.05" in out and "--resume_changed" in out
    assert snapshot(RUN) == before  # a refused resume writes nothing, config.yaml included

    code, out = lit(args + ["--resume_changed", "true"], capsys)
    assert code == 0, out
    results = strict_json(RUN / "results.json")
    assert results["resumes"][-1]["changed"] == {"stages.head.optimizer.lr": [0.01, 0.05]}
    assert (RUN / "config.yaml").read_bytes() == before["config.yaml"]  # the run's own config is kept
    accepted = yaml.safe_load((RUN / results["resumes"][-1]["config"]).read_text())
    assert accepted["stages"][1]["optimizer"]["lr"] == 0.05
    assert results["stages"]["head"]["status"] == "done" and results["status"] == "done"


def test_only_head_then_resume_gives_the_uninterrupted_result(capsys):
    full = Path("runs/full")
    assert lit(["curriculum", "-c", TOY, "--trainer.run_dir", str(full)], capsys)[0] == 0
    code, out = lit(["curriculum", "-c", TOY, "--only", "head"], capsys)
    assert code == 0 and "out_of_order" in out
    partial = strict_json(RUN / "results.json")
    assert partial["stages"]["head"]["out_of_order"] is True and "test" not in partial
    assert partial["status"] == "partial"

    # resumed from the run's own saved config: its `only: head` must not come back
    code, out = lit(["curriculum", "-c", str(RUN / "config.yaml"), "--resume", str(RUN)], capsys)
    assert code == 0, out
    resumed, reference = strict_json(RUN / "results.json"), strict_json(full / "results.json")
    assert [resumed["stages"][s]["status"] for s in ("encoder", "head")] == ["done", "done"]
    assert "out_of_order" not in resumed["stages"]["head"]
    assert resumed["test"] == reference["test"] and reference["test"]["test/acc"] == 1.0
    for stage in ("00_encoder", "01_head"):
        mine = torch.load(RUN / "stages" / stage / "final.ckpt", weights_only=True)["state_dict"]
        theirs = torch.load(full / "stages" / stage / "final.ckpt", weights_only=True)["state_dict"]
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), stage
    # the out-of-order head is kept aside, not deleted
    assert resumed["superseded"][0]["stage"] == "head" and (RUN / resumed["superseded"][0]["dir"] / "final.ckpt").exists()


def test_a_crashing_stage_is_recorded_failed_with_its_message(capsys, tmp_path):
    bad = tmp_path / "nothing_trainable.yaml"
    stages = yaml.safe_load(Path(TOY).read_text())["stages"]
    stages[1]["trainable"] = []  # the head stage crashes when it builds its optimizer
    bad.write_text(yaml.safe_dump({"stages": stages}))
    code, out = lit(["curriculum", "-c", TOY, "-c", str(bad)], capsys)
    assert code != 0 and "no trainable parameters" in out
    results = strict_json(RUN / "results.json")
    assert results["stages"]["encoder"]["status"] == "done"
    head = results["stages"]["head"]
    assert head["status"] == "failed" and "no trainable parameters" in head["error"] and "\n" not in head["error"]
    assert head["failed_at"] and results["status"] == "failed"


def test_a_bad_optimizer_of_a_later_stage_is_refused_before_anything_trains(capsys, tmp_path):
    bad = tmp_path / "bad_optimizer.yaml"
    stages = yaml.safe_load(Path(TOY).read_text())["stages"]
    stages[1]["optimizer"]["name"] = "Adamm"
    bad.write_text(yaml.safe_dump({"stages": stages}))
    code, out = lit(["curriculum", "-c", TOY, "-c", str(bad)], capsys)
    assert code != 0 and "stage 'head'" in out and "Adamm" in out
    assert not (RUN / "stages").exists()


def test_trainer_max_epochs_and_max_steps_apply_to_every_stage_said_once(capsys):
    code, out = lit(["curriculum", "-c", TOY, "--trainer.max_epochs", "1"], capsys)
    assert code == 0
    results = strict_json(RUN / "results.json")
    # 256 samples: batch 32 in the encoder stage, 64 (the stage's data override) in the head stage
    assert results["stages"]["encoder"]["steps"] == 8 and results["stages"]["encoder"]["epochs"] == 1
    assert results["stages"]["head"]["steps"] == 4
    assert results["length_override"] == {"max_epochs": 1}
    assert sum("applies to every stage" in line for line in out.splitlines()) == 1

    code, _ = lit(["curriculum", "-c", TOY, "--trainer.max_steps", "3", "--trainer.run_dir", "runs/steps"], capsys)
    assert code == 0
    results = strict_json(Path("runs/steps/results.json"))
    assert [results["stages"][s]["steps"] for s in ("encoder", "head")] == [3, 3]


def test_curriculum_prints_its_test_table_and_the_results_path_once(capsys):
    code, out = lit(["curriculum", "-c", TOY, "--trainer.max_epochs", "1"], capsys)
    assert code == 0
    lines = out.splitlines()
    table = [line for line in lines if line.strip().startswith("test/acc")]
    assert len(table) == 1
    acc = strict_json(RUN / "results.json")["test"]["test/acc"]
    assert table[0].split()[1] == f"{acc:.4f}"  # name, value (then a note such as "headline")
    assert sum(str(RUN / "results.json") in line for line in lines) == 1


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_metrics_are_written_as_null_with_a_note(tmp_path, value):
    from lit_experiments.core.results import RunResults

    results = RunResults(tmp_path / "r")
    results.set_stage("a", {"status": "done", "metrics": {"a/val/loss": value, "a/val/acc": 0.5}})
    results.merge("final", {"a/val/loss": value})
    results.save()
    saved = strict_json(results.path)
    assert saved["stages"]["a"]["metrics"] == {"a/val/loss": None, "a/val/acc": 0.5}
    assert saved["nonfinite"] == {"stages.a.metrics.a/val/loss": str(value), "final.a/val/loss": str(value)}
    again = RunResults(tmp_path / "r")  # the note survives a reload and a later save
    again.merge("final", {"a/val/acc": 0.7})
    again.save()
    assert strict_json(again.path)["nonfinite"]["final.a/val/loss"] == str(value)


def test_ddp_ranks_launched_later_write_where_rank_zero_chose(tmp_path, monkeypatch):
    from lit_experiments.core import rundir

    taken = tmp_path / "taken"
    (taken / "stages").mkdir(parents=True)
    chosen = rundir.resolve_run_dir(taken)
    assert chosen == tmp_path / "taken-2"
    chosen.mkdir()
    (chosen / "results.json").write_text("{}")  # rank zero has started writing there
    monkeypatch.setattr(rundir.rank_zero_only, "rank", 1)
    assert rundir.resolve_run_dir(taken) == chosen  # not taken-3
    assert rundir.resolve_run_dir(tmp_path / "fresh") == tmp_path / "fresh"


def test_an_option_added_since_the_run_was_saved_is_not_a_change_at_its_default():
    """A config.yaml written before a new trainer option existed (e.g. `trainer.compile`, off by default) resumes
    without --resume_changed; the same option switched on, or a changed value, is still a difference."""
    from lit_experiments.core.rundir import config_diff

    saved = {"trainer": {"max_epochs": 2}, "model": {"init_args": {"hidden": 8}}}
    assert config_diff(saved, {**saved, "trainer": {"max_epochs": 2, "compile": False, "loader": None}}) == {}
    assert config_diff(saved, {**saved, "trainer": {"max_epochs": 2, "compile": True}}) == {
        "trainer.compile": ["<absent>", True]}
    assert "trainer.max_epochs" in config_diff(saved, {**saved, "trainer": {"max_epochs": 3}})
    assert "model.init_args.hidden" in config_diff(saved, {"trainer": {"max_epochs": 2}, "model": {"init_args": {}}})
