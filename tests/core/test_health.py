"""Each TrainingHealth guard fires on a deliberately broken toy module, naming the tensor and the LESSONS id."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_experiments.core.health import HealthError, TrainingHealth, TrainingHealthError
from lit_experiments.core.lazy import LazyBuild
from lit_experiments.core.specs import OptimSpec, StageSpec
from lit_experiments.studies.toy.datamodule import ToyDataModule
from lit_experiments.studies.toy.module import ToyModule

from .toys import (
    CachedOptimizerToy,
    CollapsedToy,
    DetachedLogToy,
    LateBuiltToy,
    NaNLossToy,
    NegativeLossToy,
    RecordingToy,
    TrainableTargetToy,
    data,
    no_lazy_build,
    stages,
    trainer,
    weights,
)

TWO = (("encoder", 1, ["encoder", "head"]), ("head", 1, ["head"]))


def run(tmp_path, model, spec=TWO, **kw):
    return trainer(tmp_path, **kw).curriculum(model, data(), stages(*spec), test_after=False)


def test_f07_loss_through_a_detached_log_is_caught(tmp_path):
    with pytest.raises(TrainingHealthError, match=r"detached_loss.*'stability'.*F07"):
        run(tmp_path, DetachedLogToy())


def test_f07_parameter_reached_only_through_a_detached_log_gets_no_grad(tmp_path):
    # with the loss-term check off, the second line of defence names the starved parameter
    with pytest.raises(TrainingHealthError, match=r"no_grad.*aux\.weight"):
        run(tmp_path, DetachedLogToy(), spec=(("all", 1, ["*"]),), health={"detached_loss": "off"})


def test_f08_optimizer_reused_across_stages_is_caught(tmp_path):
    with pytest.raises(TrainingHealthError, match=r"optimizer_mismatch.*stage 'head'.*encoder.*F08"):
        run(tmp_path, CachedOptimizerToy())


def test_f09_lazy_subnetwork_is_built_before_freezing_and_trains(tmp_path):
    model = LateBuiltToy()
    spec = (("encoder", 1, ["encoder", "head"]), ("late", 2, ["late"]))
    run(tmp_path, model, spec=spec[:1])
    assert model.late is not None  # the dry run built it
    before = weights(model)
    trainer(tmp_path, name="b").curriculum(model, data(), stages(*spec[1:]), test_after=False)
    after = weights(model)
    assert not torch.equal(before["late.weight"], after["late.weight"])
    assert torch.equal(before["encoder.0.weight"], after["encoder.0.weight"])


def test_f09_without_the_dry_run_the_stage_has_zero_trainable_params(tmp_path, monkeypatch):
    no_lazy_build(monkeypatch)
    model = LateBuiltToy()
    with pytest.raises((TrainingHealthError, RuntimeError), match=r"F09"):
        run(tmp_path, model, spec=(("late", 1, ["late"]),))


def test_f01_target_that_requires_grad_is_an_error(tmp_path):
    with pytest.raises(TrainingHealthError, match=r"target_grad.*'recon_target'.*F01"):
        run(tmp_path, TrainableTargetToy(), spec=(("all", 1, ["*"]),))


def test_nan_loss_is_an_error(tmp_path):
    with pytest.raises(TrainingHealthError, match=r"nonfinite_loss"):
        run(tmp_path, NaNLossToy(), spec=(("all", 1, ["*"]),), health={"nonfinite_grad": "warn"})


def test_f10_collapsed_representation_is_an_error(tmp_path):
    with pytest.raises(TrainingHealthError, match=r"collapse.*'s0'.*F10"):
        run(tmp_path, CollapsedToy(), spec=(("all", 1, ["*"]),))


def test_loss_below_declared_floor_is_an_error(tmp_path):
    with pytest.raises(TrainingHealthError, match=r"loss_bound.*floor 0.0"):
        run(tmp_path, NegativeLossToy(), spec=(("all", 1, ["*"]),))


def test_warn_policy_warns_and_training_goes_on(tmp_path):
    with pytest.warns(UserWarning, match="collapse"):
        run(tmp_path, CollapsedToy(), spec=(("all", 1, ["*"]),), health={"collapse": "warn"})


def test_healthy_module_passes_every_check(tmp_path):
    run(tmp_path, RecordingToy())  # no exception: the guards do not fire on a correct study


def test_bad_policy_names_the_key():
    with pytest.raises(ValueError, match="colapse"):
        TrainingHealth({"colapse": "error"})
    with pytest.raises(ValueError, match="loud"):
        TrainingHealth({"collapse": "loud"})


# ------------------------------------------------------------------ guards without blind spots (issue 11)
def steps_stage(name: str, steps: int, trainable: list[str]) -> list[StageSpec]:
    return [StageSpec(name=name, max_steps=steps, trainable=trainable, optimizer=OptimSpec(lr=1e-2))]


def test_short_stage_with_an_untrained_param_is_an_error(tmp_path):
    # 1 step < health_steps (3): the no-gradient verdict is given at the end of the stage
    with pytest.raises(TrainingHealthError, match=r"no_grad.*stage 'short'.*in 1 step.*aux\.weight.*F07"):
        trainer(tmp_path, health={"detached_loss": "off"}).curriculum(
            DetachedLogToy(), data(), steps_stage("short", 1, ["*"]), test_after=False)


def test_short_stage_of_a_healthy_module_passes(tmp_path):
    model = RecordingToy()
    trainer(tmp_path).curriculum(model, data(), steps_stage("short", 2, ["*"]), test_after=False)
    assert [r["stage"] for r in model.records] == ["short"]


def test_f33_zero_step_stage_is_an_error(tmp_path):
    # a Trainer reused for a second fit (F33 put back) runs 0 steps: an error naming the stage and the cause
    model, dm = ToyModule(), data()
    reused = trainer(tmp_path, max_epochs=1)
    reused.fit(model, datamodule=dm)
    assert reused.global_step == 4
    model.set_stage(StageSpec(name="second", max_epochs=1, trainable=["head"]))
    with pytest.raises(TrainingHealthError, match=r"zero_steps.*stage 'second'.*0 optimizer steps.*reused.*F33"):
        reused.fit(model, datamodule=dm)


def test_zero_steps_when_asked_for_none_is_not_an_error(tmp_path):
    model = ToyModule()
    trainer(tmp_path, max_steps=0).fit(model, datamodule=data())  # max_steps=0 asks for no step


class EmptyData(ToyDataModule):
    def train_dataloader(self):
        return self.train_loader(self.train_set, shuffle=False)


def test_empty_training_data_names_the_dataloader(tmp_path):
    with pytest.raises(HealthError, match=r"EmptyData is empty"):
        trainer(tmp_path, max_epochs=1).fit(ToyModule(), datamodule=EmptyData(n_train=0))


class NaNAtStepToy(ToyModule):
    """The loss turns NaN from optimizer step ``at`` (1-based) on."""

    def __init__(self, at: int = 5, **kw) -> None:
        super().__init__(**kw)
        self.at = at

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step + 1 >= self.at else loss


def test_nan_loss_at_step_5_of_8_is_an_error_naming_the_step(tmp_path):
    # the detailed window covers steps 1-3; the whole-stage check is read at the end (log_every_n_steps=50)
    model = NaNAtStepToy(at=5)
    with pytest.raises(TrainingHealthError, match=r"nonfinite_loss.*stage 'all'.*not finite at step 5 .*after step 8"):
        trainer(tmp_path, log_every_n_steps=50).curriculum(model, data(), steps_stage("all", 8, ["*"]),
                                                           test_after=False)
    assert model.global_step == 8


def test_nan_loss_is_found_within_the_check_interval(tmp_path):
    import lightning as L

    from .toys import FAST

    model = NaNAtStepToy(at=5)
    fast = {k: v for k, v in FAST.items() if k != "logger"}
    fit = L.Trainer(default_root_dir=str(tmp_path), callbacks=[LazyBuild(), TrainingHealth(finite_every=2)], logger=False,
                    max_steps=12, **fast)
    with pytest.raises(TrainingHealthError, match=r"not finite at step 5 .*after step 6"):
        fit.fit(model, datamodule=data(n_train=256))
    assert model.global_step == 6  # stopped at the first check after the NaN, not at the end


class ProjectedTargetToy(ToyModule):
    """F01 hidden by no_grad: the target goes through a projection computed under ``torch.no_grad``."""

    def __init__(self, style: str = "tuple", **kw) -> None:
        super().__init__(**kw)
        self.style = style
        self.projection = nn.Linear(8, 8)
        self.decoder = nn.Linear(32, 8)

    def training_step(self, batch, batch_idx):
        features = self.encoder(batch["x"])
        with torch.no_grad():
            target = self.projection(batch["x"])  # requires_grad is False: only the source can tell
        loss = (self.decoder(features) - target).pow(2).mean()
        if self.style == "tuple":
            self.track(targets={"recon_target": (target, self.projection)})
        elif self.style == "sources":
            self.track(targets={"recon_target": target}, sources={"recon_target": ["projection"]})
        else:
            self.track(targets={"recon_target": target})
        return loss


@pytest.mark.parametrize("style", ["tuple", "sources"])
def test_f01_target_via_trainable_projection_under_no_grad_is_an_error(tmp_path, style):
    with pytest.raises(TrainingHealthError, match=r"target_grad.*'recon_target'.*projection\.weight.*F01"):
        trainer(tmp_path).curriculum(ProjectedTargetToy(style), data(), steps_stage("all", 2, ["*"]),
                                     test_after=False)


def test_f01_target_from_a_frozen_source_passes(tmp_path):
    model = ProjectedTargetToy("tuple")
    trainer(tmp_path).curriculum(model, data(), steps_stage("s", 4, ["encoder", "decoder"]),
                                 test_after=False)
    assert not model.projection.weight.requires_grad


def test_target_source_name_that_does_not_exist_is_named(tmp_path):
    class Typo(ProjectedTargetToy):
        def training_step(self, batch, batch_idx):
            self.track(targets={"t": batch["x"]}, sources={"t": "projecton"})
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match=r"'projecton'.*'t'.*projection"):
        trainer(tmp_path).curriculum(Typo("plain"), data(), steps_stage("s", 1, ["*"]), test_after=False)
