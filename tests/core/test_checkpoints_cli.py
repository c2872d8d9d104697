"""`lit-exp validate / test / predict` on every kind of checkpoint of a run (issue 11, item 2).

A short toy curriculum and a 1-step satipatthana curriculum are run once per module; their `final.ckpt`
(weights only) and `last.ckpt` (Lightning) are then scored through the CLI and compared with the run's own
test metrics, which are the reference. Predictions are checked against the test labels with numpy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lit_experiments.cli import main
from lit_experiments.core import checkpoints
from tests.studies.satipatthana.tiny import tiny as sati_tiny

ROOT = Path(__file__).resolve().parents[2]
TOY_CUR = ROOT / "configs" / "toy" / "curriculum.yaml"
TOY_FIT = ROOT / "configs" / "toy" / "fit.yaml"
SATI = ROOT / "configs" / "satipatthana" / "demo.yaml"


def run(args: list[str], capsys) -> tuple[int, str, str]:
    """``lit-exp ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args]) or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    # Lightning's own start-up lines ("INFO: GPU available ...") precede an error raised after the Trainer exists;
    # the error block the CLI prints is what is measured
    err = "".join(line for line in out.err.splitlines(keepends=True) if not line.startswith("INFO: "))
    return code, out.out, err


def snapshot(run_dir: Path) -> dict[str, str]:
    """Hash of every file of a run outside its eval/ directory."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and "eval" not in p.relative_to(run_dir).parts}


def eval_results(stdout: str) -> dict:
    paths = [line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith("results.json: ")]
    assert len(paths) == 1, stdout  # the results path is printed once
    return json.loads(Path(paths[0]).read_text())


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """A toy curriculum of 3 + 2 steps: not converged, so its test accuracy is not a trivial 1.0."""
    tmp = tmp_path_factory.mktemp("toy")
    stages = yaml.safe_load(TOY_CUR.read_text())["stages"]
    short = {"stages": [{**s, "max_epochs": None, "max_steps": n} for s, n in zip(stages, (3, 2))],
             "data": {"init_args": {"n_train": 96}}}
    override = tmp / "short.yaml"
    override.write_text(yaml.safe_dump(short))
    run_dir = tmp / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        assert main(["curriculum", "-c", str(TOY_CUR), "-c", str(override), f"--trainer.run_dir={run_dir}"]) is None
    (run_dir / "override.yaml").write_text(override.read_text())
    return run_dir


@pytest.fixture(scope="module")
def sati_run(tmp_path_factory) -> Path:
    """A satipatthana curriculum of one step per stage (its baseline is a lazily built part)."""
    tmp = tmp_path_factory.mktemp("sati")
    override = tmp / "tiny.yaml"
    override.write_text(yaml.safe_dump(sati_tiny(SATI, yaml.safe_load(SATI.read_text()), tmp)))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        assert main(["curriculum", "-c", str(SATI), "-c", str(override)]) is None
    (tmp / "run" / "override.yaml").write_text(override.read_text())
    return tmp / "run"


def toy_args(run_dir: Path) -> list[str]:
    return ["-c", str(TOY_CUR), "-c", str(run_dir / "override.yaml")]


@pytest.mark.parametrize("ckpt", ["stages/01_head/final.ckpt", "stages/01_head/checkpoints/last.ckpt"])
def test_test_of_final_and_last_ckpt_equals_the_curriculum_test(toy_run, ckpt, capsys):
    reference = json.loads((toy_run / "results.json").read_text())["test"]["test/acc"]
    assert 0.0 < reference < 1.0  # a number a wrong load would change
    before = snapshot(toy_run)
    code, out, err = run(["test", *toy_args(toy_run), "--ckpt_path", toy_run / ckpt], capsys)
    assert code == 0, err
    results = eval_results(out)
    assert results["test"]["test/acc"] == pytest.approx(reference, abs=1e-7)
    assert results["evaluated"]["stage"] == "head" and results["evaluated"]["run_dir"] == str(toy_run)
    assert snapshot(toy_run) == before  # the run's logs, metrics.csv, results.json and config are untouched
    assert len(list((toy_run / "eval").glob("test-*/results.json"))) >= 1


def test_validate_of_a_stage_checkpoint_uses_that_stage(toy_run, capsys):
    code, out, err = run(["validate", *toy_args(toy_run), "--ckpt_path",
                          toy_run / "stages" / "00_encoder" / "final.ckpt"], capsys)
    assert code == 0, err
    results = eval_results(out)
    assert results["evaluated"]["stage"] == "encoder"
    stage_val = json.loads((toy_run / "results.json").read_text())["stages"]["encoder"]["metrics"]
    assert results["validate"]["val/acc"] == pytest.approx(stage_val["encoder/val/acc"], abs=1e-7)


def test_predict_writes_logits_that_score_the_test_accuracy(toy_run, capsys):
    from lit_experiments.studies.toy.datamodule import ToyDataModule

    code, out, err = run(["predict", *toy_args(toy_run), "--ckpt_path",
                          toy_run / "stages" / "01_head" / "final.ckpt"], capsys)
    assert code == 0, err
    path = Path(next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("predictions: ")))
    assert path.parent.parent == toy_run / "eval" and path.name == "predictions.pt"
    predictions = torch.load(path, weights_only=True)
    dm = ToyDataModule(n_train=96)
    dm.setup("test")
    labels = dm.test_set.y.numpy()
    assert predictions["output"].shape == (len(labels), 3)
    accuracy = float(np.mean(predictions["output"].numpy().argmax(1) == labels))
    reference = json.loads((toy_run / "results.json").read_text())["test"]["test/acc"]
    assert accuracy == pytest.approx(reference, abs=1e-6)
    summary = json.loads((path.parent / "predictions.json").read_text())
    assert summary["predictions.pt"]["fields"]["output"]["shape"] == [len(labels), 3]


def test_validate_without_ckpt_refuses_and_writes_nothing(tmp_path, capsys):
    code, out, err = run(["validate", "-c", TOY_FIT], capsys)
    assert code == 2
    assert "--ckpt_path" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 5
    assert not (tmp_path / "runs").exists()


def test_ckpt_path_init_scores_the_untrained_model_on_purpose(tmp_path, capsys):
    code, out, err = run(["validate", "-c", TOY_FIT, "--ckpt_path", "init",
                          f"--trainer.run_dir={tmp_path / 'r'}"], capsys)
    assert code == 0, err
    results = eval_results(out)
    assert results["evaluated"]["checkpoint"] == "init" and "val/acc" in results["validate"]
    assert not (tmp_path / "r" / "results.json").exists()  # written under r/eval/, not as the run's record


@pytest.mark.parametrize("ckpt", ["stages/04_baseline/final.ckpt", "stages/04_baseline/checkpoints/last.ckpt"])
def test_satipatthana_ckpt_with_lazy_parts_gives_the_curriculum_test(sati_run, ckpt, capsys):
    reference = json.loads((sati_run / "results.json").read_text())["test"]
    code, out, err = run(["test", "-c", SATI, "-c", sati_run / "override.yaml", "--ckpt_path", sati_run / ckpt],
                         capsys)
    assert code == 0, err
    results = eval_results(out)["test"]
    for key in ("test/acc", "test/baseline_acc", "test/trust_auroc"):
        assert results[key] == pytest.approx(reference[key], abs=1e-6), key


def test_satipatthana_predict_writes_logits_trust_and_states_that_score_the_test_accuracy(sati_run, capsys):
    reference = json.loads((sati_run / "results.json").read_text())["test"]
    code, out, err = run(["predict", "-c", SATI, "-c", sati_run / "override.yaml", "--ckpt_path",
                          sati_run / "stages" / "04_baseline" / "final.ckpt"], capsys)
    assert code == 0, err
    path = Path(next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("predictions: ")))
    predictions = torch.load(path, weights_only=True)
    n = len(predictions["y"])
    assert predictions["logits"].shape == (n, 2) and predictions["trust"].shape[0] == n
    assert predictions["s_star"].shape[0] == n and sorted(predictions["index"].tolist()) == list(range(n))
    accuracy = float((predictions["logits"].argmax(1) == predictions["y"]).float().mean())
    assert reference["test/n_test"] == n  # every test sample predicted once: the same accuracy as `test`
    assert accuracy == pytest.approx(reference["test/acc"], abs=1e-6)


def test_f09_lazy_parts_are_built_before_the_weights_load(sati_run, capsys, monkeypatch):
    """The product builds the lazy parts before the weights load, so the stage-4 checkpoint (its lazily built
    baseline included) loads and scores; with the bug put back into the product's checkpoints module (no dry run
    before loading) the same command fails naming the missing baseline."""
    args = ["test", "-c", SATI, "-c", sati_run / "override.yaml", "--ckpt_path",
            sati_run / "stages" / "04_baseline" / "final.ckpt"]
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert eval_results(out)["test"]
    monkeypatch.setattr(checkpoints, "lazy_build", lambda model, batch: None)
    code, out, err = run(args, capsys)
    assert code == 2 and "unexpected" in err and "baseline" in err


@pytest.mark.parametrize("ckpt", ["stages/04_baseline/final.ckpt", "stages/04_baseline/checkpoints/last.ckpt"])
def test_checkpoint_of_another_study_is_one_line_naming_both(sati_run, ckpt, capsys):
    code, out, err = run(["test", "-c", TOY_FIT, "--ckpt_path", sati_run / ckpt], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0].startswith("lit-exp: error:") and len(lines) <= 3, err
    assert "SatipatthanaModule" in lines[0] and "ToyModule" in lines[0] and "Traceback" not in err


def test_unknown_checkpoint_outside_a_run_is_refused_by_its_parts(sati_run, tmp_path, capsys):
    state = torch.load(sati_run / "stages" / "04_baseline" / "final.ckpt", weights_only=True)["state_dict"]
    torch.save({"state_dict": state}, tmp_path / "anonymous.ckpt")  # no study name, no results.json around
    code, out, err = run(["test", "-c", TOY_FIT, "--ckpt_path", tmp_path / "anonymous.ckpt"], capsys)
    assert code == 2 and "another model" in err and "ToyModule" in err and len(err.strip().splitlines()) <= 3


def test_missing_or_garbage_checkpoint_is_one_line(tmp_path, capsys):
    code, _, err = run(["test", "-c", TOY_FIT, "--ckpt_path", tmp_path / "nope.ckpt"], capsys)
    assert code == 2 and "nope.ckpt" in err and "no such file" in err
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    code, _, err = run(["test", "-c", TOY_FIT, "--ckpt_path", tmp_path / "junk.ckpt"], capsys)
    assert code == 2 and "junk.ckpt" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3


def test_fit_checkpoint_of_a_plain_fit(tmp_path, capsys):
    code, out, err = run(["fit", "-c", TOY_FIT, f"--trainer.run_dir={tmp_path / 'fit'}", "--trainer.max_steps=3"],
                         capsys)
    assert code == 0, err
    ckpt = next((tmp_path / "fit" / "checkpoints").glob("*.ckpt"))  # Lightning's epoch=..-step=..ckpt
    before = snapshot(tmp_path / "fit")
    code, out, err = run(["test", "-c", TOY_FIT, "--ckpt_path", ckpt], capsys)
    assert code == 0, err
    assert "test/acc" in eval_results(out)["test"]
    assert snapshot(tmp_path / "fit") == before


@pytest.fixture(scope="module")
def slots_run(tmp_path_factory) -> Path:
    """The slots demo, tiny: 2 steps (its slot-attention parts are built on the first batch)."""
    from tests.studies.slots.tiny import tiny as slots_tiny

    tmp = tmp_path_factory.mktemp("slots")
    config = ROOT / "configs" / "slots" / "demo.yaml"
    override = tmp / "tiny.yaml"
    override.write_text(yaml.safe_dump(slots_tiny(config, yaml.safe_load(config.read_text()), tmp)))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        assert main(["curriculum", "-c", str(config), "-c", str(override), "--trainer.max_steps=2",
                     f"--trainer.run_dir={tmp / 'run'}"]) is None
    return tmp / "run"


def slots_args(run_dir: Path) -> list:
    return ["-c", ROOT / "configs" / "slots" / "demo.yaml", "-c", run_dir.parent / "tiny.yaml"]


def test_slots_last_ckpt_test_and_predict_masks(slots_run, capsys):
    reference = json.loads((slots_run / "results.json").read_text())["test"]
    ckpt = slots_run / "stages" / "00_slots" / "checkpoints" / "last.ckpt"
    code, out, err = run(["test", *slots_args(slots_run), "--ckpt_path", ckpt], capsys)
    assert code == 0, err
    assert eval_results(out)["test"]["test/fg_ari"] == pytest.approx(reference["test/fg_ari"], abs=1e-6)
    code, out, err = run(["predict", *slots_args(slots_run), "--ckpt_path", slots_run / "stages" / "00_slots" /
                          "final.ckpt"], capsys)
    assert code == 0, err
    path = Path(next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("predictions: ")))
    out_ = torch.load(path, weights_only=True)
    n_test, frames, slots = 2, 2, 3  # the tiny override's split, clip length and slot count
    assert out_["masks"].shape[:3] == (n_test, frames, slots) and out_["slots"].shape[:3] == (n_test, frames, slots)
    assert torch.allclose(out_["masks"].sum(2), torch.ones(()))  # decoder masks: softmax over slots


def test_f09_slots_parts_exist_before_the_weights_load(slots_run, capsys, monkeypatch):
    """The product loads a slots checkpoint whose data-shaped parts exist only after a dry run; without the dry
    run before loading (the bug put into the product's checkpoints module) the load fails in one block."""
    args = ["test", *slots_args(slots_run), "--ckpt_path", slots_run / "stages" / "00_slots" / "final.ckpt"]
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert eval_results(out)["test"]
    monkeypatch.setattr(checkpoints, "lazy_build", lambda model, batch: None)
    code, out, err = run(args, capsys)
    assert code == 2 and "unexpected" in err and "Traceback" not in err


def test_the_runs_own_config_yaml_scores_its_checkpoint(toy_run, capsys):
    reference = json.loads((toy_run / "results.json").read_text())["test"]["test/acc"]
    code, out, err = run(["test", "-c", toy_run / "config.yaml", "--ckpt_path",
                          toy_run / "stages" / "01_head" / "final.ckpt"], capsys)
    assert code == 0, err
    assert eval_results(out)["test"]["test/acc"] == pytest.approx(reference, abs=1e-7)


@pytest.mark.parametrize("content", [bytes(range(256)) * 16, b"\x80\x04K\x01."])
def test_a_corrupt_checkpoint_is_named_and_never_advised_to_be_unpickled(tmp_path, content):
    """Issue 25: for random bytes the message advised `--weights_only false`, i.e. unpickling an untrusted file."""
    from lit_experiments.core.checkpoints import read_checkpoint
    from lit_experiments.core.errors import CheckpointError

    path = tmp_path / "final.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    text = str(err.value)
    assert str(path) in text and "weights_only" not in text and "trust" not in text
