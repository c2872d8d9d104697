"""The module: stage optimizers (F08), lazy parts built before freezing (F09), stage names and args, the loss
dict, per-sample outputs, a plain ``fit``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lit_experiments.core.health import TrainingHealthError
from lit_experiments.core.specs import StageSpec, matches_any
from lit_experiments.core.trainer import LitTrainer
from lit_experiments.studies.satipatthana.module import SatipatthanaModule

from .helpers import circles_batch, circles_dm, make_module

STAGES = [
    StageSpec("adapter", max_steps=2, trainable=["adapter", "recon_decoder"]),
    StageSpec("samatha", max_steps=2, trainable=["adapter", "vitakka", "vicara", "recon_decoder", "aux_head"],
              loss_weights={"void_energy": 1.0}),
    StageSpec("vipassana", max_steps=3, optimizer={"lr": 1e-2}, trainable=["vipassana.trust_head"]),
    StageSpec("decoder", max_steps=2, trainable=["task_decoder", "vipassana.context"]),
]



class Recorder(L.Callback):
    """Class-level store: the curriculum deep-copies callbacks per stage (F33)."""

    seen: dict[str, dict] = {}

    def on_train_start(self, trainer, pl_module):
        names = {id(p): n for n, p in pl_module.named_parameters()}
        in_opt = {names[id(p)] for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        head = pl_module.vipassana.trust_head[0].weight.detach().clone()
        Recorder.seen[pl_module.stage.name] = {"optimizer": in_opt, "head_before": head,
                                               "all": [n for n, _ in pl_module.named_parameters()]}

    def on_train_end(self, trainer, pl_module):
        Recorder.seen[pl_module.stage.name]["head_after"] = pl_module.vipassana.trust_head[0].weight.detach().clone()


def _trainer(tmp_path: Path, **kw) -> LitTrainer:
    return LitTrainer(run_dir=str(tmp_path / "run"), accelerator="cpu", devices=1, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1, **kw)


def test_f08_f09_stage_optimizers_hold_exactly_each_stages_modules_and_lazy_vipassana_trains(tmp_path):
    Recorder.seen = {}
    module = make_module(lazy=True)  # Vipassana built on first forward (F09)
    assert not module.vipassana.is_built
    dm = circles_dm(n_samples=200, batch_size=32)
    L.seed_everything(0)
    results = _trainer(tmp_path, callbacks=[Recorder()]).curriculum(module, dm, STAGES, test_after=False)
    assert all(results["stages"][s.name]["status"] == "done" for s in STAGES)
    for stage in STAGES:
        rec = Recorder.seen[stage.name]
        expected = {n for n in rec["all"] if matches_any(n, stage.trainable)}
        assert expected and rec["optimizer"] == expected, stage.name  # exactly this stage's modules (F08)
    vip = Recorder.seen["vipassana"]
    assert any(n.startswith("vipassana.trust_head") for n in vip["optimizer"])
    assert not torch.equal(vip["head_before"], vip["head_after"])  # the lazily built head trained (F09)
    dec = Recorder.seen["decoder"]
    assert torch.equal(dec["head_before"], dec["head_after"])  # frozen outside its stage


def test_f09_lazy_build_skipped_in_the_product_leaves_stage_2_without_parameters(tmp_path, monkeypatch):
    """The bug put back into the product: LazyBuild's dry run does nothing, so the lazily built Vipassana
    does not exist when the stage freezes and builds its optimizer (F09)."""
    import lit_experiments.core.lazy as lazy

    stage = [StageSpec("vipassana", max_steps=1, optimizer={"lr": 1e-2}, trainable=["vipassana.trust_head"])]
    dm = circles_dm(n_samples=100, batch_size=32)
    done = _trainer(tmp_path / "ok").curriculum(make_module(lazy=True), dm, stage, test_after=False)
    assert done["stages"]["vipassana"]["status"] == "done"
    monkeypatch.setattr(lazy, "lazy_build", lambda module, batch: None)
    with pytest.raises((RuntimeError, ValueError), match="F09|match nothing|trust_head"):
        _trainer(tmp_path / "bug").curriculum(make_module(lazy=True), circles_dm(n_samples=100, batch_size=32),
                                              stage, test_after=False)


def test_f08_optimizer_reused_across_stages_in_the_product_is_caught(tmp_path, monkeypatch):
    """The bug put back into the product: the module's configure_optimizers keeps stage 0's optimizer."""
    stages = [StageSpec("adapter", max_steps=1, trainable=["adapter", "recon_decoder"]),
              StageSpec("samatha", max_steps=1, trainable=["adapter", "vitakka", "vicara", "recon_decoder",
                                                           "aux_head"])]
    original = SatipatthanaModule.configure_optimizers

    def reused(self):
        if getattr(self, "_stale_optimizer", None) is None:
            self._stale_optimizer = original(self)
        return self._stale_optimizer

    monkeypatch.setattr(SatipatthanaModule, "configure_optimizers", reused)
    with pytest.raises(TrainingHealthError, match="optimizer"):
        _trainer(tmp_path).curriculum(make_module(), circles_dm(n_samples=100, batch_size=32), stages,
                                      test_after=False)


def test_bad_stage_config_values_fail_clearly():
    module = make_module()
    with pytest.raises(ValueError, match="unknown"):
        module.set_stage(StageSpec("stage2", max_epochs=1))
    with pytest.raises(ValueError, match="unknown args"):  # core.specs.stage_args names the key
        module.set_stage(StageSpec("vipassana", max_epochs=1, args={"ratio": 1}))
    with pytest.raises(ValueError, match="clean"):
        module.set_stage(StageSpec("vipassana", max_epochs=1, args={"path_ratios": {"drunk": 1.0}}))
    module.set_stage(StageSpec("vipassana", max_epochs=1, args={"path_ratios": {"clean": 1, "void": 1}}))
    assert module.path_ratios == {"clean": 1, "void": 1}


@pytest.mark.parametrize("v41", [False, True])
def test_eval_outputs_of_a_sample_do_not_depend_on_its_batch(v41):
    module = make_module(v41=v41).eval()
    batch = circles_batch(24)
    with torch.no_grad():
        full = module(batch["x"])
        for i in (0, 5, 23):
            alone = module(batch["x"][i:i + 1])
            for key in ("logits", "trust", "s_star"):
                assert torch.allclose(full[key][i:i + 1], alone[key], atol=1e-5), key
        shuffled = module(batch["x"].flip(0))
        assert torch.allclose(shuffled["trust"].flip(0), full["trust"], atol=1e-5)


def test_plain_fit_trains_every_part_at_once(tmp_path):
    """`lit-exp fit` (one implicit stage named `fit`): all losses, every parameter gets a gradient."""
    module = make_module(v41=True)
    dm = circles_dm(n_samples=200, batch_size=32)
    trainer = _trainer(tmp_path, max_steps=4)  # TrainingHealth would raise on a parameter without gradient
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 4 and module.stage.name == "fit"


@pytest.mark.parametrize("stage", ["adapter", "samatha", "vipassana", "decoder", "baseline", "fit"])
def test_loss_dict_holds_the_weighted_total_under_loss(stage):
    """The loss-dict contract: the total under ``loss``; a term's weight is the stage's ``loss_weights`` entry,
    else the module's ``<term>_weight`` (1 without one)."""
    module = make_module(baseline=True, diversity_weight=0.3, void_energy_weight=0.5)
    module.set_stage(StageSpec(stage, max_epochs=1, loss_weights={"recon": 2.0}), in_curriculum=False)
    torch.manual_seed(0)
    terms = module.stage_terms(circles_batch(32))
    assert next(iter(terms)) == "loss"
    weights = {"stability": 0.1, "diversity": 0.3, "void_energy": 0.5, "recon": 2.0}
    expected = sum(weights.get(k, 1.0) * v for k, v in terms.items() if k not in ("loss", "acc", "baseline_acc"))
    assert torch.allclose(terms["loss"], expected)
    assert ("void_energy" in terms) == (stage in ("samatha", "fit"))  # void_energy_weight > 0 adds the term
    with pytest.raises(ValueError, match="diversity_weight"):
        make_module(diversity_weight=-1.0)
