"""Study-level tests: stage optimizers (F08), lazy Vipassana built before freezing (F09), config contents, and the
reduced learning check of the demo (default suite)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from lit_experiments.core.configs import load_composed
from lit_experiments.core.health import TrainingHealthError
from lit_experiments.core.specs import StageSpec, matches_any
from lit_experiments.core.trainer import LitTrainer
from lit_experiments.studies.satipatthana.datamodule import CirclesDataModule
from lit_experiments.studies.satipatthana.module import SatipatthanaModule

from .conftest import make_module

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "satipatthana"
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
    dm = CirclesDataModule(n_samples=200, batch_size=32)
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
    dm = CirclesDataModule(n_samples=100, batch_size=32)
    done = _trainer(tmp_path / "ok").curriculum(make_module(lazy=True), dm, stage, test_after=False)
    assert done["stages"]["vipassana"]["status"] == "done"
    monkeypatch.setattr(lazy, "lazy_build", lambda module, batch: None)
    with pytest.raises((RuntimeError, ValueError), match="F09|match nothing|trust_head"):
        _trainer(tmp_path / "bug").curriculum(make_module(lazy=True), CirclesDataModule(n_samples=100, batch_size=32),
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
        _trainer(tmp_path).curriculum(make_module(), CirclesDataModule(n_samples=100, batch_size=32), stages,
                                      test_after=False)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_config_contents_stage_order_and_stage_2_learning_rate(path):
    """Content of every satipatthana YAML (running them is the every-config test's job, via tiny.py)."""
    raw = load_composed(path)  # the product's `# base:` composition
    stages = [StageSpec(**s) for s in raw["stages"]]
    assert [s.name for s in stages] == ["adapter", "samatha", "vipassana", "decoder", "baseline"]
    assert stages[2].optimizer.lr >= 1e-3  # F12: stage 2 runs at its own, higher rate
    assert stages[4].trainable == ["baseline"] and "baseline" in raw["model"]["init_args"]
    assert "in_dim" not in raw["model"]["init_args"]["task_decoder"].get("init_args", {})  # filled in, not typed


def test_bad_stage_config_values_fail_clearly():
    module = make_module()
    with pytest.raises(ValueError, match="unknown"):
        module.set_stage(StageSpec("stage2", max_epochs=1))
    with pytest.raises(ValueError, match="stage args"):
        module.set_stage(StageSpec("vipassana", max_epochs=1, args={"ratio": 1}))
    with pytest.raises(ValueError, match="clean"):
        module.set_stage(StageSpec("vipassana", max_epochs=1, args={"path_ratios": {"drunk": 1.0}}))
    module.set_stage(StageSpec("vipassana", max_epochs=1, args={"path_ratios": {"clean": 1, "void": 1}}))
    assert module.path_ratios == {"clean": 1, "void": 1}


def test_demo_curriculum_end_to_end(tmp_path):
    """Reduced learning check (default suite): the demo YAML through `lit-exp curriculum` with fewer epochs on
    a smaller circles set; accuracy clears chance (0.5) by a wide margin and trust separates the paths."""
    from lit_experiments.cli import main

    raw = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    epochs = {"adapter": 2, "samatha": 12, "vipassana": 4, "decoder": 6, "baseline": 20}
    for stage in raw["stages"]:
        stage["max_epochs"] = epochs[stage["name"]]
    override = tmp_path / "short.yaml"
    override.write_text(yaml.safe_dump({"stages": raw["stages"]}))
    run_dir = tmp_path / "demo"
    main(["curriculum", "-c", str(CONFIGS / "demo.yaml"), "-c", str(override), f"--trainer.run_dir={run_dir}"])
    res = json.loads((run_dir / "results.json").read_text())
    assert [res["stages"][n]["status"] for n in epochs] == ["done"] * 5
    test = res["test"]
    for key in ("test/acc", "test/baseline_acc", "test/trust_clean", "test/trust_void", "test/trust_auroc"):
        assert key in test, key
    assert test["test/acc"] >= 0.9  # chance is 0.5
    assert test["test/baseline_acc"] >= 0.9
    assert test["test/trust_clean"] > test["test/trust_void"] + 0.3
    assert test["test/trust_clean"] > test["test/trust_drunk"] + 0.3
    assert test["test/trust_auroc"] > 0.85
    figures = {p.name for p in (run_dir / "figures").rglob("*.png")}
    assert {"trust_histograms.png", "energy_trajectories.png", "decision_boundary.png"} <= figures


def test_plain_fit_trains_every_part_at_once(tmp_path):
    """`lit-exp fit` (one implicit stage named `fit`): all losses, every parameter gets a gradient."""
    module = make_module(v41=True)
    dm = CirclesDataModule(n_samples=200, batch_size=32)
    trainer = _trainer(tmp_path, max_steps=4)  # TrainingHealth would raise on a parameter without gradient
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 4 and module.stage.name == "fit"
