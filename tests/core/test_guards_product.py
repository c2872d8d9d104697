"""Product-path twins of the guard tests: each bug is put back into the product's own code (the core classes
or the real toy study), the run goes through ``lit_experiments.cli.main`` or the curriculum runner, and the
guard must stop it with the LESSONS id in the message. The twins of tests/core/test_health.py, whose bugs
live in test-owned toys."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import yaml

from lit_experiments.cli import main
from lit_experiments.core.health import HealthError, TrainingHealthError
from lit_experiments.core.lazy import LazyBuild
from lit_experiments.core.specs import StageSpec
from lit_experiments.core.study import StudyModule
from lit_experiments.core.trainer import LitTrainer
from lit_experiments.studies.toy.datamodule import ToyDataModule
from lit_experiments.studies.toy.module import ToyModule

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "configs" / "toy" / "curriculum.yaml"
FAST = dict(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, log_every_n_steps=1)


def toy_stages(**change) -> list[StageSpec]:
    """The stages of configs/toy/curriculum.yaml, with ``{stage name: {key: value}}`` changes."""
    stages = yaml.safe_load(TOY.read_text())["stages"]
    return [StageSpec(**{**s, **change.get(s["name"], {})}) for s in stages]


def run_toy(tmp_path: Path, stages: list[StageSpec] | None = None, **trainer_kw) -> dict:
    """The real toy study through the curriculum runner (small data)."""
    trainer = LitTrainer(run_dir=str(tmp_path / "run"), **{**FAST, **trainer_kw})
    return trainer.curriculum(ToyModule(hidden=32, num_classes=3), ToyDataModule(n_train=64, batch_size=16),
                              stages or toy_stages(), test_after=False)


def cli_error(tmp_path: Path, monkeypatch, *extra: str) -> BaseException:
    """Run ``lit-exp curriculum -c configs/toy/curriculum.yaml`` (small data) and return the error it raised."""
    monkeypatch.setenv("LIT_EXP_DEBUG", "1")  # the exception itself, not the one-block report
    args = ["curriculum", "-c", str(TOY), *extra, "--trainer.run_dir", str(tmp_path / "cli"),
            "--data.init_args.n_train", "64"]
    with pytest.raises(BaseException) as info:
        main(args)
    return info.value


def detach_encoder_output(monkeypatch) -> None:
    """F07 put back into the toy study: its training step reads the encoder output as a detached copy."""
    original = ToyModule.training_step

    def step(self, batch, batch_idx):
        hook = self.encoder.register_forward_hook(lambda module, args, out: out.detach())
        try:
            return original(self, batch, batch_idx)
        finally:
            hook.remove()

    monkeypatch.setattr(ToyModule, "training_step", step)


def wrap_step(monkeypatch, after) -> None:
    """Run the toy study's own training step, then ``after(self, batch, loss) -> loss``."""
    original = ToyModule.training_step
    monkeypatch.setattr(ToyModule, "training_step",
                        lambda self, batch, batch_idx: after(self, batch, original(self, batch, batch_idx)))


@pytest.fixture(scope="module")
def clean_product_run(tmp_path_factory) -> dict:
    """The product twin every guard twin starts from: the real toy curriculum with nothing injected must run every
    stage to its end with every guard passing. A bug put into the product's own code (the optimizer built once,
    the dry run skipped or missing a part, a stage trainer reused, a loss term read from a detached log) stops
    this run, so each twin below fails on a product regression, not only when its guard is removed."""
    results = run_toy(tmp_path_factory.mktemp("clean"))
    assert results["status"] == "done" and results["plan"] == ["encoder", "head"]
    assert set(results["stages"]) == {"encoder", "head"}
    for key in ("encoder/train/loss", "head/train/loss", "head/val/acc"):
        assert key in results["final"], key
    return results


# ------------------------------------------------------------------- F08 / F32 / F33: optimizer and Trainer
def test_f08_optimizer_built_once_and_reused_product(tmp_path, monkeypatch, clean_product_run):
    assert clean_product_run["status"] == "done"  # the product passes first
    original = StudyModule.configure_optimizers

    def built_once(self):
        if "_f08_optimizer" not in self.__dict__:
            self.__dict__["_f08_optimizer"] = original(self)
        return self.__dict__["_f08_optimizer"]

    monkeypatch.setattr(StudyModule, "configure_optimizers", built_once)
    err = cli_error(tmp_path, monkeypatch)
    assert isinstance(err, TrainingHealthError)
    assert "optimizer_mismatch" in str(err) and "stage 'head'" in str(err) and "encoder." in str(err)
    assert "F08" in str(err)


def reuse_first_stage_trainer(monkeypatch) -> None:
    """F33 put back into ``LitTrainer.stage_trainer``: every stage gets the first stage's Trainer (a shallow
    copy: a new object that shares its loops, so the runner's identity check does not see it)."""
    original = LitTrainer.stage_trainer
    made: list[LitTrainer] = []

    def reused(self, *args, **kwargs):
        if not made:
            made.append(original(self, *args, **kwargs))
            return made[0]
        return copy.copy(made[0])

    monkeypatch.setattr(LitTrainer, "stage_trainer", reused)


def test_f33_reused_stage_trainer_is_a_zero_step_error_product(tmp_path, monkeypatch, clean_product_run):
    assert clean_product_run["status"] == "done"  # the product passes first
    reuse_first_stage_trainer(monkeypatch)
    err = cli_error(tmp_path, monkeypatch)
    assert isinstance(err, TrainingHealthError), err
    assert "zero_steps" in str(err) and "stage 'head'" in str(err) and "0 optimizer steps" in str(err)
    assert "reused" in str(err) and "F33" in str(err)


def test_f33_one_block_report_without_debug_product(tmp_path, monkeypatch, capsys, clean_product_run):
    assert clean_product_run["status"] == "done"  # the product passes first
    reuse_first_stage_trainer(monkeypatch)
    monkeypatch.delenv("LIT_EXP_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["curriculum", "-c", str(TOY), "--trainer.run_dir", str(tmp_path / "cli"), "--data.init_args.n_train",
              "64"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "zero_steps" in err and "F33" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------- F09: lazy parts
def test_f09_lazy_build_skipped_product(tmp_path, monkeypatch, clean_product_run):
    assert clean_product_run["status"] == "done"  # the product passes first
    monkeypatch.setattr(LazyBuild, "setup", lambda self, trainer, pl_module, stage: None)
    err = cli_error(tmp_path, monkeypatch)
    assert isinstance(err, HealthError), err
    assert "uninitialised" in str(err) and "head.weight" in str(err) and "F09" in str(err)


def test_f09_dry_run_that_misses_a_lazy_part_product(tmp_path, monkeypatch, clean_product_run):
    assert clean_product_run["status"] == "done"  # the product passes first
    monkeypatch.setattr(ToyModule, "dry_run", lambda self, batch: self.encoder(batch["x"]))  # head never reached
    err = cli_error(tmp_path, monkeypatch)
    assert isinstance(err, HealthError), err
    assert "LazyBuild" in str(err) and "head.weight" in str(err) and "F09" in str(err)


def test_f09_dead_glob_among_others_product(tmp_path, monkeypatch, clean_product_run):
    assert clean_product_run["status"] == "done"  # the product passes first
    stages = yaml.safe_load(TOY.read_text())["stages"]
    stages[0]["trainable"] = ["head", "encoder.99.*"]
    extra = tmp_path / "dead_glob.yaml"
    extra.write_text(yaml.safe_dump({"stages": stages}))
    err = cli_error(tmp_path, monkeypatch, "-c", str(extra))
    assert isinstance(err, HealthError), err
    message = str(err)
    assert "'encoder.99.*' matches no parameter" in message and "stage 'encoder'" in message
    assert re.search(r"nearest names: \['encoder\.\d", message) and "F09" in message  # real module names


# ------------------------------------------------------------------------- F07: losses without a graph
def test_f07_detached_loss_term_product(tmp_path, monkeypatch, clean_product_run):
    assert clean_product_run["status"] == "done"  # the product passes first
    original = StudyModule.track

    def track_detached_copies(self, *, losses=None, **kw):  # the "log" keeps detached copies of the terms
        losses = {k: v.detach() for k, v in (losses or {}).items()}
        return original(self, losses=losses, **kw)

    monkeypatch.setattr(StudyModule, "track", track_detached_copies)
    with pytest.raises(TrainingHealthError, match=r"detached_loss.*stage 'encoder'.*'ce'.*F07"):
        run_toy(tmp_path)


def test_f07_encoder_reached_only_through_a_detached_copy_gets_no_grad_product(tmp_path, monkeypatch, clean_product_run):
    assert clean_product_run["status"] == "done"  # the product passes first
    detach_encoder_output(monkeypatch)
    with pytest.raises(TrainingHealthError, match=r"no_grad.*stage 'encoder'.*encoder\.0\.weight.*F07"):
        run_toy(tmp_path)


def test_short_stage_with_an_untrained_param_product(tmp_path, monkeypatch, clean_product_run):
    assert clean_product_run["status"] == "done"  # the product passes first
    detach_encoder_output(monkeypatch)
    stages = toy_stages(encoder={"max_epochs": None, "max_steps": 1})
    with pytest.raises(TrainingHealthError, match=r"no_grad.*stage 'encoder'.*in 1 step.*encoder\.0\.weight"):
        run_toy(tmp_path, stages)


# ------------------------------------------------------------------------------ F01: targets
def test_f01_target_that_requires_grad_product(tmp_path, monkeypatch, clean_product_run):
    assert clean_product_run["status"] == "done"  # the product passes first
    def declare_target(self, batch, loss):
        self.track(targets={"recon_target": self.head(self.encoder(batch["x"]))})  # through trainable parts
        return loss

    wrap_step(monkeypatch, declare_target)
    with pytest.raises(TrainingHealthError, match=r"target_grad.*'recon_target' requires grad.*F01"):
        run_toy(tmp_path)


def test_f01_target_via_trainable_projection_under_no_grad_product(tmp_path, monkeypatch, clean_product_run):
    assert clean_product_run["status"] == "done"  # the product passes first
    def declare_target(self, batch, loss):
        with torch.no_grad():  # hides the dependence from requires_grad
            target = self.head(self.encoder(batch["x"]))
        self.track(targets={"recon_target": (target, self.head)})
        return loss

    wrap_step(monkeypatch, declare_target)
    with pytest.raises(TrainingHealthError, match=r"target_grad.*'recon_target'.*head\.weight.*F01"):
        run_toy(tmp_path)


# ----------------------------------------------------------------------- losses and representations
def test_nan_loss_at_step_5_of_8_product(tmp_path, monkeypatch, clean_product_run):
    assert clean_product_run["status"] == "done"  # the product passes first
    wrap_step(monkeypatch, lambda self, batch, loss: loss * float("nan") if self.global_step == 4 else loss)
    stages = toy_stages(encoder={"max_epochs": None, "max_steps": 8})
    with pytest.raises(TrainingHealthError, match=r"nonfinite_loss.*stage 'encoder'.*not finite at step 5 "):
        run_toy(tmp_path, stages, log_every_n_steps=50)  # read at the end of the stage


def test_loss_below_its_declared_floor_product(tmp_path, monkeypatch, clean_product_run):
    assert clean_product_run["status"] == "done"  # the product passes first
    wrap_step(monkeypatch, lambda self, batch, loss: loss - 10.0)
    with pytest.raises(TrainingHealthError, match=r"loss_bound.*'loss'.*floor 0.0.*F01/F20"):
        run_toy(tmp_path)


def test_f10_collapsed_representation_product(tmp_path, monkeypatch, clean_product_run):
    assert clean_product_run["status"] == "done"  # the product passes first
    original = ToyModule.training_step

    def closed_gate(self, batch, batch_idx):  # every sample's features equal: a gate closed at init
        hook = self.encoder.register_forward_hook(lambda module, args, out: out * 0.0 + 1.0)
        try:
            return original(self, batch, batch_idx)
        finally:
            hook.remove()

    monkeypatch.setattr(ToyModule, "training_step", closed_gate)
    with pytest.raises(TrainingHealthError, match=r"collapse.*'features'.*F10"):
        run_toy(tmp_path)


def test_toy_curriculum_passes_every_guard_product(tmp_path, clean_product_run):
    assert clean_product_run["status"] == "done"  # the product passes first
    results = run_toy(tmp_path)
    assert [results["stages"][n]["status"] for n in ("encoder", "head")] == ["done", "done"]
    assert results["stages"]["head"]["steps"] > 0
