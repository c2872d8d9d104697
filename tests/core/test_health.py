"""Each TrainingHealth guard fires on a deliberately broken toy module, naming the tensor and the LESSONS id."""

from __future__ import annotations

import pytest
import torch

from lit_experiments.core.health import TrainingHealth, TrainingHealthError

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
