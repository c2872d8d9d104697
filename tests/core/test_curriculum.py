"""The curriculum engine: fresh optimizer per stage, freezing, BN stats, handover, resume, results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lit_experiments.cli import main
from lit_experiments.core.curriculum import parse_only
from lit_experiments.core.rundir import RunDirError
from lit_experiments.core.specs import StageSpec, matches_any
from lit_experiments.core.trainer import LitTrainer
from lit_experiments.experiments.curves import read_curves

from .toys import RecordingToy, data, stages, trainer, weights

CURRICULUM_YAML = Path(__file__).resolve().parents[2] / "configs" / "toy" / "curriculum.yaml"
THREE = (("encoder", 1, ["encoder", "head"]), ("head", 1, ["head"]), ("all", 1, ["*"]))


def test_f08_each_stage_optimizer_holds_exactly_the_trainable_parameters(tmp_path):
    model = RecordingToy()
    trainer(tmp_path).curriculum(model, data(), stages(*THREE), test_after=False)
    assert [r["stage"] for r in model.records] == ["encoder", "head", "all"]
    for record in model.records:
        assert record["in_optimizer"] == record["trainable"]
    assert model.records[1]["trainable"] == ["head.bias", "head.weight"]
    # a new optimizer object per stage (F08, F33)
    assert len({r["optimizer_id"] for r in model.records}) == 3


def test_trained_change_frozen_bit_identical_and_bn_stats_frozen(tmp_path):
    model = RecordingToy(dropout=0.5)
    dm = data()
    t = trainer(tmp_path)
    t.curriculum(model, dm, stages(("encoder", 1, ["encoder", "head"])), test_after=False)
    after_one = weights(model)
    t2 = trainer(tmp_path, name="run2")
    t2.curriculum(model, dm, stages(("head", 2, ["head"])), test_after=False)
    after_two = weights(model)
    for key, value in after_one.items():
        if key.startswith("encoder"):
            # weights and BatchNorm running statistics of the frozen encoder do not move
            assert torch.equal(value, after_two[key]), key
    assert not torch.equal(after_one["head.weight"], after_two["head.weight"])
    assert model.encoder[1].running_mean.abs().sum() > 0  # stats did move in the stage that trained it


def test_f35_metrics_prefixed_by_stage_and_results_json(tmp_path):
    model = RecordingToy()
    out = trainer(tmp_path).curriculum(model, data(), stages(*THREE[:2]))
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["plan"] == ["encoder", "head"]
    for name in ("encoder", "head"):
        stage = saved["stages"][name]
        assert stage["status"] == "done" and stage["steps"] > 0 and stage["wall_s"] > 0
        assert stage["metrics"] and all(k.startswith(f"{name}/") for k in stage["metrics"])
        assert (tmp_path / "run" / stage["checkpoint"]).exists()
        assert (tmp_path / "run" / stage["dir"] / "metrics.csv").exists()  # one log dir per stage (F34)
    assert "test/acc" in saved["test"] and 0.0 <= saved["test"]["test/acc"] <= 1.0
    assert out["test"] == saved["test"]
    assert {"torch", "lightning"} <= set(saved["versions"])


def test_weights_handed_forward_not_optimizer_state(tmp_path):
    model = RecordingToy()
    t = trainer(tmp_path)
    t.curriculum(model, data(), stages(*THREE[:1]), test_after=False)
    ckpt = torch.load(tmp_path / "run" / "stages" / "00_encoder" / "final.ckpt", weights_only=True)
    assert set(ckpt) == {"state_dict", "study"}  # the stage hand-over carries weights only (and the study)
    assert ckpt["study"] == "RecordingToy"
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(value, model.state_dict()[key])


def test_resume_gives_the_same_final_weights_as_one_run(tmp_path):
    torch.manual_seed(0)
    full_model = RecordingToy()
    trainer(tmp_path, name="full").curriculum(full_model, data(), stages(*THREE), test_after=False)

    torch.manual_seed(0)
    part_model = RecordingToy()
    trainer(tmp_path, name="part").curriculum(part_model, data(), stages(*THREE), only="encoder,head",
                                              test_after=False)
    partial = json.loads((tmp_path / "part" / "results.json").read_text())
    assert "all" not in partial["stages"]

    torch.manual_seed(1)  # a fresh process would start with different initial weights
    resumed = RecordingToy()
    trainer(tmp_path, name="elsewhere").curriculum(resumed, data(), stages(*THREE),
                                                   resume=str(tmp_path / "part"), test_after=False)
    assert [r["stage"] for r in resumed.records] == ["all"]
    full, res = weights(full_model), weights(resumed)
    assert full.keys() == res.keys()
    for key in full:
        assert torch.equal(full[key], res[key]), key


def test_resume_refuses_a_different_plan_and_unknown_stage_names(tmp_path):
    trainer(tmp_path).curriculum(RecordingToy(), data(), stages(*THREE[:1]), test_after=False)
    before = (tmp_path / "run" / "results.json").read_bytes()
    with pytest.raises(RunDirError, match="differ"):
        trainer(tmp_path, name="x").curriculum(RecordingToy(), data(), stages(*THREE),
                                               resume=str(tmp_path / "run"))
    assert (tmp_path / "run" / "results.json").read_bytes() == before  # a refused resume writes nothing
    with pytest.raises(ValueError, match="nope"):
        parse_only("encoder,nope", stages(*THREE))
    with pytest.raises(RunDirError, match="results.json"):
        trainer(tmp_path, name="y").curriculum(RecordingToy(), data(), stages(*THREE), resume=str(tmp_path / "no"))


def test_stage_data_overrides_and_bad_override(tmp_path):
    dm = data()
    spec = StageSpec(name="big", max_epochs=1, data={"batch_size": 32})
    trainer(tmp_path).curriculum(RecordingToy(), dm, [spec], test_after=False)
    assert dm.batch_size == 32
    bad = StageSpec(name="bad", max_epochs=1, data={"batch_sise": 32})
    with pytest.raises(ValueError, match="batch_sise"):
        trainer(tmp_path, name="b").curriculum(RecordingToy(), data(), [bad], test_after=False)


def test_glob_semantics_and_stage_validation():
    assert matches_any("adapter.net.0.weight", ["adapter"])
    assert matches_any("vitakka.probes", ["vitakka.*"])
    assert not matches_any("adapter_extra.weight", ["adapter"])
    with pytest.raises(ValueError, match="max_epochs or max_steps"):
        StageSpec(name="x")
    with pytest.raises(ValueError, match="Adamm"):
        StageSpec(name="x", max_epochs=1, optimizer={"name": "Adamm"}).optimizer.build([torch.nn.Parameter(torch.ones(1))])


def test_f33_every_stage_gets_new_callback_instances_and_a_new_trainer(tmp_path):
    import lightning as L

    class Probe(L.Callback):
        def __init__(self):
            self.fits = 0

        def on_fit_start(self, trainer, pl_module):
            self.fits += 1
            pl_module.records.append({"stage": pl_module.stage.name, "callback": id(self), "fits": self.fits,
                                      "trainer": id(trainer), "start_step": trainer.global_step})

    model = RecordingToy()
    trainer(tmp_path, callbacks=[Probe()]).curriculum(model, data(), stages(*THREE), test_after=False)
    probes = [r for r in model.records if "callback" in r]
    assert [p["stage"] for p in probes] == ["encoder", "head", "all"]
    assert len({p["callback"] for p in probes}) == 3 and len({p["trainer"] for p in probes}) == 3
    assert all(p["fits"] == 1 and p["start_step"] == 0 for p in probes)  # nothing carried over


def test_resume_mid_stage_continues_from_the_last_checkpoint_and_appends_to_its_curve(tmp_path):
    import csv

    import lightning as L

    class Crash(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if pl_module.stage.name == "head" and trainer.current_epoch == 1:
                raise RuntimeError("power cut")

    spec = stages(("encoder", 1, ["encoder", "head"]), ("head", 2, ["head"]))
    with pytest.raises(RuntimeError, match="power cut"):
        trainer(tmp_path, callbacks=[Crash()]).curriculum(RecordingToy(), data(), spec, test_after=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["stages"]["encoder"]["status"] == "done"  # nothing written before the error is lost
    head = saved["stages"]["head"]
    assert head["status"] == "failed" and head["error"] == "RuntimeError: power cut" and head["failed_at"]
    assert saved["status"] == "failed"
    assert (tmp_path / "run" / "stages" / "01_head" / "checkpoints" / "last.ckpt").exists()
    log = tmp_path / "run" / "stages" / "01_head" / "metrics.csv"
    with log.open(newline="") as fh:
        first_rows = list(csv.DictReader(fh))
    steps_per_epoch = saved["stages"]["encoder"]["steps"]
    first_losses = {int(r["step"]): r["head/train/loss"] for r in first_rows if r.get("head/train/loss")}
    assert sorted(first_losses) == list(range(steps_per_epoch))  # epoch 0 of the head stage was logged

    model = RecordingToy()
    trainer(tmp_path, name="again").curriculum(model, data(), spec, resume=str(tmp_path / "run"), test_after=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["stage"] for r in model.records] == ["head"]
    assert saved["stages"]["head"]["status"] == "done"
    assert saved["stages"]["head"]["epochs"] == 2 and saved["stages"]["head"]["steps"] == 2 * steps_per_epoch
    # the stage's curve before the crash is still there, continued by the resume: one row per step, no gap
    with log.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    losses = {int(r["step"]): r["head/train/loss"] for r in rows if r.get("head/train/loss")}
    assert sorted(losses) == list(range(2 * steps_per_epoch))
    assert all(losses[step] == value for step, value in first_losses.items())
    assert len([r for r in rows if r.get("head/train/loss")]) == 2 * steps_per_epoch
    curve = read_curves(tmp_path / "run", ["head/train/loss"])[0]  # what `lit-exp curves` draws
    assert len(curve.steps) == 2 * steps_per_epoch and curve.steps == sorted(set(curve.steps))


def test_f33_a_stage_trainer_used_twice_is_an_error(tmp_path, monkeypatch):
    original = LitTrainer.stage_trainer
    cache = {}

    def reused(self, stage, stage_dir, shared_loggers=None, checkpoint=True):  # F33 put back
        if "trainer" not in cache:
            cache["trainer"] = original(self, stage, stage_dir, shared_loggers, checkpoint)
        return cache["trainer"]

    monkeypatch.setattr(LitTrainer, "stage_trainer", reused)
    with pytest.raises(RuntimeError, match="F33"):
        trainer(tmp_path).curriculum(RecordingToy(), data(), stages(*THREE), test_after=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["stages"]["encoder"]["status"] == "done" and saved["stages"]["head"]["status"] == "failed"
    assert "F33" in saved["stages"]["head"]["error"]


def test_stage_lengths_follow_an_explicit_trainer_length(tmp_path):
    out = trainer(tmp_path, max_steps=2).curriculum(RecordingToy(), data(), stages(*THREE), test_after=False)
    assert [out["stages"][s]["steps"] for s in ("encoder", "head", "all")] == [2, 2, 2]
    assert out["length_override"] == {"max_steps": 2}
    plain = trainer(tmp_path, name="plain").curriculum(RecordingToy(), data(), stages(*THREE[:1]), test_after=False)
    assert plain["stages"]["encoder"]["steps"] == 4 and "length_override" not in plain  # 64 samples / 16


def test_a_nan_metric_leaves_strict_json_with_a_note(tmp_path):
    class NaNMetricToy(RecordingToy):
        def validation_step(self, batch, batch_idx):
            super().validation_step(batch, batch_idx)
            self.log("val/ratio", float("nan"), on_epoch=True)

    out = trainer(tmp_path).curriculum(NaNMetricToy(), data(), stages(*THREE[:1]), test_after=False)
    assert out["status"] == "done"

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    saved = json.loads((tmp_path / "run" / "results.json").read_text(), parse_constant=refuse)
    assert saved["stages"]["encoder"]["metrics"]["encoder/val/ratio"] is None
    assert saved["stages"]["encoder"]["metrics"]["encoder/val/acc"] >= 0.0
    assert saved["nonfinite"]["stages.encoder.metrics.encoder/val/ratio"] == "nan"


def _sampler_seeds(tmp_path, seed: int, name: str) -> list[int]:
    """run_seed(None, "sampler") as the toy datamodule sees it at the start of each curriculum stage."""
    import lightning as L

    from lit_experiments.core.seeding import run_seed
    from lit_experiments.studies.toy.datamodule import ToyDataModule

    seen: list[int] = []
    original = ToyDataModule.train_dataloader

    class Recording(ToyDataModule):
        def train_dataloader(self):
            seen.append(run_seed(None, "sampler"))
            return original(self)

    dm = Recording(n_train=64, n_val=21, n_test=21, batch_size=16)
    L.seed_everything(seed, verbose=False)
    trainer(tmp_path, name=name).curriculum(RecordingToy(), dm, stages(*THREE[:2]), test_after=False)
    return seen


def test_f50_a_curriculum_stage_keys_run_seed_on_the_run_not_the_stage(tmp_path, monkeypatch):
    """Stage i reseeds with seed + i; a run_seed() inside a stage still keys on the run's seed, so seed 0's second
    stage does not share its sampler order with seed 1's first stage."""
    monkeypatch.delenv("LIT_EXP_RUN_SEED", raising=False)
    zero = _sampler_seeds(tmp_path, 0, "s0")
    one = _sampler_seeds(tmp_path, 1, "s1")
    assert len(zero) >= 2 and len(set(zero)) == 1, zero  # every stage of one run: one sampler seed
    assert len(set(one)) == 1 and one[0] != zero[0]


def test_f50_a_finished_runs_seed_record_is_not_read_by_a_later_seed_everything(monkeypatch):
    """The run's seed recorded by a curriculum stage is ignored once someone else calls seed_everything."""
    import lightning as L

    from lit_experiments.core.seeding import mark_run_seed, run_seed

    monkeypatch.delenv("LIT_EXP_RUN_SEED", raising=False)
    L.seed_everything(5, verbose=False)
    mark_run_seed(4, 5)  # stage 1 of a run with seed 4
    in_stage = run_seed(None, "sampler")
    L.seed_everything(4, verbose=False)
    assert run_seed(None, "sampler") == in_stage  # run 4 == its stage 1
    L.seed_everything(9, verbose=False)
    mark_run_seed(9)
    L.seed_everything(2, verbose=False)  # a later tool seeds itself
    assert run_seed(None, "sampler") == _fresh(2) != in_stage


def _fresh(seed: int) -> int:
    import os

    from lit_experiments.core.seeding import run_seed

    old = os.environ.pop("LIT_EXP_RUN_SEED", None)
    try:
        os.environ["PL_GLOBAL_SEED"] = str(seed)
        return run_seed(None, "sampler")
    finally:
        if old is not None:
            os.environ["LIT_EXP_RUN_SEED"] = old


# ------------------------------------------------------------------ a stage trains (issue 25, item 3)
@pytest.mark.parametrize("stage, what", [("{name: head, max_epochs: 0}", "max_epochs: 0"),
                                         ("{name: head, max_steps: 0, max_epochs: null}", "max_steps: 0")])
def test_a_stage_configured_to_train_nothing_is_refused_before_anything_is_written(tmp_path, capsys, stage, what):
    delta = tmp_path / "zero.yaml"
    delta.write_text(f"stages:\n  - {stage}\n")
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["curriculum", "-c", str(CURRICULUM_YAML), "-c", str(delta), f"--trainer.run_dir={run_dir}"])
    err = capsys.readouterr().err
    assert exc.value.code != 0 and f"stage 'head': {what} trains nothing" in err and "Traceback" not in err
    assert not run_dir.exists()


def test_a_stage_whose_trainer_runs_no_batch_fails_instead_of_ending_done(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit):
        main(["curriculum", "-c", str(CURRICULUM_YAML), f"--trainer.run_dir={run_dir}",
              "--trainer.limit_train_batches=0"])
    assert "limit_train_batches=0 runs no training batch" in capsys.readouterr().err
    data = json.loads((run_dir / "results.json").read_text())
    assert data["stages"]["encoder"]["status"] == "failed"


def test_an_only_that_selects_nothing_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["curriculum", "-c", str(CURRICULUM_YAML), f"--trainer.run_dir={tmp_path / 'run'}", "--only", ","])
    assert exc.value.code != 0 and "selects no stage" in capsys.readouterr().err


def test_samples_skipped_by_a_reader_are_counted_in_results_json(tmp_path, monkeypatch):
    """`on_bad_sample: skip` drops unreadable samples; the run's record says how many and which (it said nothing)."""
    from torch.utils.data import Subset

    from lit_experiments.data.errors import BadSamples
    from lit_experiments.studies.toy.datamodule import ToyDataModule

    class Reader:  # what a file reader holds: its policy with the files it skipped
        def __init__(self, files):
            self.bad = BadSamples("reader", "skip")
            for f in files:
                self.bad.bad(f, OSError("truncated"))

    real_setup = ToyDataModule.setup

    def setup(self, stage=None):
        real_setup(self, stage)
        self.sources = {"train": Subset(Reader(["a.png", "b.png"]), [0]), "test": [Reader(["c.png"])]}

    monkeypatch.setattr(ToyDataModule, "setup", setup)
    run_dir = tmp_path / "run"
    main(["curriculum", "-c", str(CURRICULUM_YAML), f"--trainer.run_dir={run_dir}", "--only", "encoder"])
    data = json.loads((run_dir / "results.json").read_text())["data"]
    assert data == {"skipped_samples": 3, "skipped_files": ["a.png", "b.png", "c.png"]}
