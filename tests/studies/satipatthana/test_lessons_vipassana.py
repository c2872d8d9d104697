"""Regression tests for the Vipassana / decoder LESSONS rows: F11, F12, F13, F15, F18 (each fails on the bug)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_experiments.core.specs import StageSpec
from lit_experiments.studies.satipatthana.components import ConvDecoder, TaskDecoder
from lit_experiments.studies.satipatthana.components.vipassana import VipassanaInput, trust_features
from lit_experiments.studies.satipatthana.losses import PATHS, path_sizes

from .helpers import circles_batch, circles_dm, make_module


def _samatha_run(module, x):
    module.eval()
    with torch.no_grad():
        return module.samatha(x)


def test_f11_trust_sees_only_two_per_sample_features_and_ignores_the_batch():
    module = make_module()
    x = circles_batch(32)["x"]
    out = _samatha_run(module, x)
    vip = module.vipassana
    assert vip.trust_head[0].in_features == 2  # [log1p(velocity), log1p(avg_energy)], not s* (F11)
    feats = trust_features(out.s_star, out.santana)
    expected = torch.stack([torch.log1p((out.s_star - out.santana.before_final()).norm(dim=1)),
                            torch.log1p(out.santana.avg_energy())], dim=1)
    assert torch.allclose(feats, expected)
    vip.train()  # even in training mode nothing mixes samples
    full = vip(VipassanaInput(out.s_star, out.santana)).trust_logit
    for i in (0, 7, 31):
        alone = vip(VipassanaInput(out.s_star[i:i + 1], out.santana.select(torch.tensor([i])))).trust_logit
        assert torch.allclose(full[i:i + 1], alone, atol=1e-6)
    # the seed's bug: trust inputs normalised over the batch -> a sample's trust depends on its neighbours
    def buggy(feats_batch):
        return vip.trust_head((feats_batch - feats_batch.mean(0)) / (feats_batch.std(0) + 1e-6))[:, 0]

    full_b = buggy(feats)
    sub_b = buggy(feats[:8])
    assert not torch.allclose(full_b[:8], sub_b, atol=1e-4)


def _train_trust(lr: float, steps: int = 120) -> float:
    module = make_module()
    module.set_stage(StageSpec("vipassana", max_epochs=1, optimizer={"lr": lr}), in_curriculum=False)
    from lit_experiments.core.freezing import apply_stage_freeze

    apply_stage_freeze(module, ["vipassana.trust_head"])
    opt = module.stage.optimizer.build(module.trainable_parameters())
    batch = circles_batch(128)
    module.path_ratios = {"clean": 0.5, "drunk": 0.5}
    torch.manual_seed(0)
    for _ in range(steps):
        loss = module.vipassana_loss(batch)["trust_bce"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


class _LrRecorder(L.Callback):
    """Reads the Trainer's optimizer learning rate in every stage (class-level: callbacks are copied per stage)."""

    seen: dict[str, tuple[float, float]] = {}

    def on_train_start(self, trainer, pl_module):
        group = trainer.optimizers[0].param_groups[0]
        _LrRecorder.seen[pl_module.stage.name] = (group["lr"], group.get("initial_lr", group["lr"]))


def _stage_lrs(tmp_path, stages: list[StageSpec]) -> dict[str, tuple[float, float]]:
    from lit_experiments.core.trainer import LitTrainer
    
    _LrRecorder.seen = {}
    trainer = LitTrainer(run_dir=str(tmp_path), accelerator="cpu", devices=1, logger=None, limit_val_batches=0,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[_LrRecorder()])
    trainer.curriculum(make_module(baseline=True), circles_dm(n_samples=100, batch_size=32), stages,
                       test_after=False)
    return dict(_LrRecorder.seen)


def test_f12_each_stage_trains_at_the_yaml_learning_rate(tmp_path, monkeypatch):
    """A real curriculum with demo.yaml's stages (1 step each): the Trainer's optimizer lr per stage is the YAML's
    (``initial_lr`` where a scheduler scales it); the seed's one-lr-for-all, put back into the module, fails."""
    import yaml

    raw = yaml.safe_load(open(_config("demo.yaml")))["stages"]
    stages = [StageSpec(**{**s, "max_epochs": None, "max_steps": 1}) for s in raw]
    want = {s.name: s.optimizer.lr for s in stages}
    assert len(set(want.values())) > 2 and want["vipassana"] == pytest.approx(1e-2)
    seen = _stage_lrs(tmp_path / "ok", stages)
    assert set(seen) == set(want)
    for s in stages:
        lr, initial = seen[s.name]
        assert initial == pytest.approx(want[s.name]), s.name
        if s.optimizer.scheduler is None:
            assert lr == pytest.approx(want[s.name]), s.name
    from lit_experiments.studies.satipatthana.module import SatipatthanaModule

    def one_lr(self):  # the seed's bug: the plain-fit optimizer in every stage
        return self.default_optimizer.build(self.trainable_parameters())

    monkeypatch.setattr(SatipatthanaModule, "configure_optimizers", one_lr)
    buggy = _stage_lrs(tmp_path / "bug", stages)
    assert any(buggy[n][1] != pytest.approx(want[n]) for n in want)


def test_f12_stage_2_learns_at_1e2_where_the_seeds_5e5_stalls():
    fast, slow = _train_trust(1e-2), _train_trust(5e-5)  # the seed's one-lr-for-all value is 5e-5
    assert slow > 0.5, slow  # stalls near the BCE start, like the seed's 0.65
    assert fast < 0.25, fast


def _config(name: str) -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[3] / "configs" / "satipatthana" / name)


def test_f13_paths_use_the_configured_ratios_and_a_clean_path():
    ratios = {"clean": 0.3, "augmented": 0.3, "drunk": 0.15, "mismatch": 0.1, "void": 0.15}
    sizes = path_sizes(100, ratios)
    assert sizes == {"clean": 30, "augmented": 30, "drunk": 15, "mismatch": 10, "void": 15}
    assert sum(path_sizes(37, ratios).values()) == 37
    module = make_module(path_ratios=ratios)
    module.train()
    batch = circles_batch(100)
    out = module.paths(batch["x"], batch["x_void"], module.path_ratios, torch.Generator().manual_seed(0))
    counts = {p: int((out.path == i).sum()) for i, p in enumerate(PATHS)}
    assert counts == sizes  # the ratios in the config are the ratios used
    t = {p: out.targets[out.path == i] for i, p in enumerate(PATHS)}
    assert (t["clean"] == 1).all() and (t["drunk"] == 0).all() and (t["mismatch"] == 0).all()
    assert (t["void"] == 0).all()
    assert ((t["augmented"] >= 0) & (t["augmented"] <= 1)).all() and t["augmented"].std() > 0
    # the seed's 3-way split (augmented / drunk / mismatch) has no clean path: rejected
    with pytest.raises(ValueError, match="clean"):
        path_sizes(100, {"augmented": 1, "drunk": 1, "mismatch": 1})
    with pytest.raises(ValueError, match="unknown"):
        make_module(path_ratios={"clean": 1.0, "noisy": 1.0})
    buggy = {p: 100 // 3 for p in ("augmented", "drunk", "mismatch")}
    assert buggy != {k: v for k, v in counts.items() if k in buggy}


def test_f13_every_path_gets_rows_of_the_same_batch():
    module = make_module()
    batch = circles_batch(40)
    seen: list[torch.Tensor] = []
    original = module.samatha

    def spy(x, drunk=False, generator=None):
        seen.append(x.detach().clone())
        return original(x, drunk=drunk, generator=generator)

    module.samatha = spy
    ratios = {"clean": 0.25, "augmented": 0.25, "drunk": 0.25, "mismatch": 0.25}
    module.paths(batch["x"], batch["x_void"], ratios, torch.Generator().manual_seed(0))
    clean, aug, drunk, mismatch = seen
    rows = torch.cat([clean, drunk, mismatch])
    assert len(rows) + len(aug) == 40
    same = (rows[:, None, :] == batch["x"][None, :, :]).all(dim=2)  # (rows, batch) exact equality
    assert same.any(dim=1).all()  # clean / drunk / mismatch inputs are the batch's own rows...
    assert torch.unique(same.float().argmax(dim=1)).numel() == len(rows)  # ...each used once


def _checkerboard(img: torch.Tensor, border: int) -> float:
    """Energy of the period-2 pattern in the interior of a (B, C, H, W) image."""
    inner = img.detach()[..., border:-border, border:-border]
    return float((inner[..., ::2, ::2] - inner[..., 1::2, ::2]).abs().mean()
                 + (inner[..., ::2, ::2] - inner[..., ::2, 1::2]).abs().mean())


def test_f15_upsample_conv_decoder_has_no_checkerboard_where_conv_transpose_does():
    torch.manual_seed(0)
    dec = ConvDecoder(channels=[8, 8], output="linear").build(8, (1, 16, 16))
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in dec.modules())
    const = torch.ones(1, 8, dec.base, dec.base)
    ours = dec.net(const)
    buggy = nn.Sequential(nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1), nn.GELU(),
                          nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1), nn.GELU(),
                          nn.Conv2d(8, 1, 3, padding=1))(const)
    assert ours.shape == buggy.shape == (1, 1, 16, 16)
    assert _checkerboard(ours, 4) < 1e-5
    assert _checkerboard(buggy, 4) > 1e-3


def test_f18_task_logits_are_not_squashed():
    torch.manual_seed(0)
    x = torch.randn(256, 6)
    y = (x[:, 0] > 0).long()

    def fit(model: nn.Module) -> tuple[float, float]:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(300):
            loss = F.cross_entropy(model(x[:, :4], x[:, 4:]), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            logits = model(x[:, :4], x[:, 4:])
        return float(F.cross_entropy(logits, y)), float(logits.abs().max())

    ce, top = fit(TaskDecoder(2, hidden_dim=16).build(6))
    floor = float(F.cross_entropy(torch.tensor([[1.0, -1.0]]), torch.tensor([0])))  # best CE with tanh logits
    assert top > 1.0 and ce < floor

    class TanhDecoder(TaskDecoder):  # the reference's task decoder ends in Tanh
        def forward(self, s_star, v_ctx=None):
            return torch.tanh(super().forward(s_star, v_ctx))

    torch.manual_seed(0)
    ce_b, top_b = fit(TanhDecoder(2, hidden_dim=16).build(6))
    assert top_b <= 1.0 and ce_b >= floor - 1e-6
