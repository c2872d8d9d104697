"""Regression tests for the Samatha-side LESSONS rows: F07, F10, F14, F16, F17 (each fails on the bug)."""

from __future__ import annotations

import pytest
import torch

from lit_experiments.core.health import TrainingHealth, TrainingHealthError
from lit_experiments.studies.satipatthana.components import DrunkConfig, SantanaLog, Sati, Vicara, Vitakka
from lit_experiments.studies.satipatthana.components.vitakka import VitakkaOutput
from lit_experiments.studies.satipatthana.losses import probe_diversity_loss

from .helpers import circles_batch, circles_dm, make_module


def _run(dim: int = 8, batch: int = 16, drunk: DrunkConfig | None = None, steps: int = 5, seed: int = 0):
    torch.manual_seed(seed)
    vitakka, vicara = Vitakka(num_probes=4).build(dim), Vicara(hidden_dim=16).build(dim)
    z = torch.randn(batch, dim)
    return Sati(max_steps=steps)(vicara, vitakka(z), drunk), (vitakka, vicara)


def test_f07_samatha_stage_loss_trains_through_stability_pair_and_the_guard_catches_the_log_bug(tmp_path,
                                                                                                    monkeypatch):
    """Through the module's stage loss; then the seed's bug put back into the product's Sati (stability_pair
    made of the detached log's states): the same value, no gradient, and TrainingHealth stops the stage."""
    from dataclasses import replace

    import lit_experiments.studies.satipatthana.components.sati as sati_mod
    from lit_experiments.core.freezing import apply_stage_freeze
    from lit_experiments.core.specs import StageSpec
    from lit_experiments.core.trainer import LitTrainer

    trainable = ["adapter", "vitakka", "vicara", "recon_decoder", "aux_head"]
    stage = StageSpec("samatha", max_steps=2, trainable=trainable)
    module = make_module()
    module.set_stage(stage, in_curriculum=False)
    apply_stage_freeze(module, trainable)
    batch = circles_batch()
    good = module.stage_terms(batch)["stability"]
    assert good.requires_grad
    good.backward()
    grads = [p.grad for p in module.vicara.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0

    original = sati_mod.Sati.forward

    def from_the_log(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        return replace(out, stability_pair=(out.santana.final(), out.santana.before_final()))

    monkeypatch.setattr(sati_mod.Sati, "forward", from_the_log)
    buggy = module.stage_terms(batch)["stability"]
    assert not buggy.requires_grad and torch.allclose(buggy, good.detach())  # the seed's flat 1.023
    trainer = LitTrainer(run_dir=str(tmp_path / "run"), accelerator="cpu", devices=1, logger=None,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    with pytest.raises(TrainingHealthError, match="stability"):
        trainer.curriculum(make_module(), circles_dm(n_samples=100, batch_size=32), [stage],
                           test_after=False)
    log = module.samatha(batch["x"]).santana
    with pytest.raises(ValueError, match="detached"):
        SantanaLog(states=log.states.requires_grad_(), steps=log.steps, step_energy=log.step_energy)


class _SharedHardGateVitakka(Vitakka):
    """The seed's bug: one threshold (0.6) and a hard gate in training too."""

    def forward(self, z):
        out = super().forward(z)
        gate = (out.max_similarity > 0.6).float()
        s0 = out.s0 * gate.unsqueeze(1)
        return VitakkaOutput(s0=s0, probs=out.probs, winner=out.winner, confidence=out.confidence,
                             max_similarity=out.max_similarity, gate=gate)


def test_f10_training_gate_open_by_default_and_the_collapse_guard_catches_the_closed_gate():
    torch.manual_seed(0)
    dim = 64  # random probes: the best cosine similarity at initialisation is ~0.3, below the seed's 0.6
    z = torch.randn(64, dim)
    vitakka = Vitakka(num_probes=8).build(dim)
    assert vitakka.train_gate_threshold != vitakka.eval_gate_threshold or vitakka.train_gate_threshold == -1.0
    vitakka.train()
    assert vitakka(z).gate.min() > 0.99  # open at initialisation
    strict = Vitakka(num_probes=8, train_gate_threshold=-1.0, eval_gate_threshold=0.9).build(dim).eval()
    assert strict(z).gate.max() == 0.0 and set(strict(z).gate.unique().tolist()) <= {0.0, 1.0}
    strict.train()
    assert strict(z).gate.min() > 0.99  # separate thresholds: the eval one does not act in training
    guard = TrainingHealth()
    module = make_module(dim)
    good = Sati(6)(Vicara(32).build(dim), vitakka(z)).s_star
    guard._check_collapse(module, "s_star", good)  # healthy: no error
    bad_vitakka = _SharedHardGateVitakka(num_probes=8).build(dim).train()
    assert bad_vitakka(z).gate.max() == 0.0
    bad = Sati(6)(Vicara(32).build(dim), bad_vitakka(z)).s_star
    with pytest.raises(TrainingHealthError, match="collapse"):
        guard._check_collapse(module, "s_star", bad)


def test_f14_avg_energy_is_per_sample():
    out, _ = _run(batch=12)
    log = out.santana
    manual = ((log.states[1:] - log.states[:-1]) ** 2).sum(dim=2).sum(dim=0) / log.num_steps
    assert torch.allclose(log.avg_energy(), manual, atol=1e-6)
    assert torch.allclose(out.avg_energy.detach(), manual, atol=1e-6)
    assert log.avg_energy().std() > 0  # samples differ
    buggy = torch.full((log.batch_size,), float(log.step_energy.sum() / log.num_steps))
    assert (buggy == buggy[0]).all() and not torch.allclose(buggy, log.avg_energy())


def test_f14_early_stopping_counts_steps_per_sample():
    torch.manual_seed(0)
    dim = 8
    vitakka, vicara = Vitakka(num_probes=2).build(dim), Vicara(hidden_dim=16, beta=0.5).build(dim)
    z = torch.cat([torch.zeros(4, dim) + 1e-3, 5 * torch.randn(4, dim)])
    out = Sati(max_steps=20, energy_threshold=1e-3, min_steps=1)(vicara, vitakka(z))
    steps = out.santana.steps
    assert steps.min() >= 1 and steps.max() <= 20 and steps.unique().numel() > 1
    e = out.santana.step_energy
    expected = e.sum(0) / steps
    assert torch.allclose(out.santana.avg_energy(), expected)


def test_f16_probe_diversity_loss_spreads_collapsed_probes():
    torch.manual_seed(0)
    base = torch.randn(1, 8)
    probes = torch.nn.Parameter(base + 0.01 * torch.randn(6, 8))
    assert probe_diversity_loss(probes.detach()) > 0.99  # buggy state: every probe points the same way
    ortho = torch.eye(6, 8)
    assert probe_diversity_loss(ortho).abs() < 1e-6
    opt = torch.optim.Adam([probes], lr=0.05)
    for _ in range(100):
        loss = probe_diversity_loss(probes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert probe_diversity_loss(probes.detach()) < 0.1
    # without the term (the seed's bug) nothing spreads them
    still = torch.nn.Parameter(base + 0.01 * torch.randn(6, 8))
    assert probe_diversity_loss(still.detach()) > 0.99


def test_f16_samatha_stage_includes_the_diversity_term():
    from lit_experiments.core.specs import StageSpec

    module = make_module()
    module.set_stage(StageSpec("samatha", max_epochs=1), in_curriculum=False)
    terms = module.stage_terms(circles_batch())
    assert "diversity" in terms and terms["diversity"].requires_grad
    terms["diversity"].backward()
    assert module.vitakka.probes.grad is not None and module.vitakka.probes.grad.abs().sum() > 0


def test_f17_drunk_constants_come_from_config_and_skips_are_per_sample():
    clean, _ = _run(batch=32, drunk=None, seed=1)
    off, _ = _run(batch=32, drunk=DrunkConfig(s0_noise_std=0.0, skip_prob=0.0, perturbation_std=0.0), seed=1)
    assert torch.allclose(clean.s_star, off.s_star)  # all constants at 0: drunk mode is a no-op
    skip_only, _ = _run(batch=32, drunk=DrunkConfig(s0_noise_std=0.0, skip_prob=0.5, perturbation_std=0.0), seed=1)
    skipped = skip_only.santana.step_energy == 0  # (T, B): a skipped step leaves the state unchanged
    mixed = [(0 < row.sum() < row.numel()) for row in skipped]
    assert any(mixed), "every step skipped all or none of the samples: one draw per batch (the seed's bug)"
    assert 0.3 < skipped.float().mean() < 0.7  # the configured probability is the one used
    weak, _ = _run(batch=32, drunk=DrunkConfig(0.0, 0.0, 0.05), seed=1)
    strong, _ = _run(batch=32, drunk=DrunkConfig(0.0, 0.0, 0.5), seed=1)
    base = clean.santana.avg_energy().mean()
    assert strong.santana.avg_energy().mean() > 3 * weak.santana.avg_energy().mean()
    assert weak.santana.avg_energy().mean() < 1.5 * base  # the std in the config is the std applied
    for bad in ({"skip_prob": 1.5}, {"perturbation_std": -0.1}, {"s0_noise_std": -1.0}):
        with pytest.raises(ValueError):
            DrunkConfig(**bad)
