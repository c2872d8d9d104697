"""Optimizer parameter groups (``StudyModule.param_groups``, ``fixed_lr``) and ``OptimSpec.lr_batch``, through a
real fit of a toy study: the learning rate of every group at every step against torch's own schedulers."""
from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from lit_experiments.core.specs import OptimSpec
from lit_experiments.studies.toy.module import ToyModule

from .toys import data, trainer

STEPS = 12


class FixedHeadToy(ToyModule):
    """The encoder anneals; the head is a ``fixed_lr`` group (as SimSiam's predictor)."""

    def param_groups(self, params):
        head = {id(p) for p in self.head.parameters()}
        return [{"params": [p for p in params if id(p) not in head]},
                {"params": [p for p in params if id(p) in head], "fixed_lr": True}]


class LrRecorder(Callback):
    """The lr of every group before each optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.initial: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        groups = trainer.optimizers[0].param_groups
        self.lrs.append([g["lr"] for g in groups])
        self.initial = [g.get("initial_lr", math.nan) for g in groups]


def fit(tmp_path, spec: OptimSpec, cls=FixedHeadToy, batch_size: int = 16, steps: int = STEPS,
        **trainer_kw) -> LrRecorder:
    rec = LrRecorder()
    model = cls(head=nn.Linear(32, 3), optimizer=spec)
    t = trainer(tmp_path, max_steps=steps, callbacks=[rec], enable_checkpointing=False, limit_val_batches=0,
                **trainer_kw)
    t.fit(model, datamodule=data(n_train=max(64, 2 * batch_size), batch_size=batch_size))
    assert len(rec.lrs) == steps * trainer_kw.get("accumulate_grad_batches", 1)  # one entry per batch
    return rec


def twin_lrs(lr: float, make) -> list[float]:
    """The lr torch's scheduler ``make(optimizer)`` gives before each of STEPS steps."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make(opt)
    out = []
    for _ in range(STEPS):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("kind", ["cosine", "step", "warmup_cosine"])
def test_fixed_lr_group_keeps_its_lr_while_the_other_follows_the_schedule(tmp_path, kind):
    lr, warm = 0.1, 3
    spec = OptimSpec(name="SGD", lr=lr, scheduler=kind, warmup_steps=warm,
                     scheduler_kwargs={"step_size": 5, "gamma": 0.5} if kind == "step" else {})
    rec = fit(tmp_path, spec)
    if kind == "cosine":
        expect = twin_lrs(lr, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=STEPS))
        closed = [lr * 0.5 * (1 + math.cos(math.pi * t / STEPS)) for t in range(STEPS)]
        assert expect == pytest.approx(closed, rel=1e-9)
    elif kind == "step":
        expect = twin_lrs(lr, lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5))
    else:
        expect = twin_lrs(lr, lambda o: torch.optim.lr_scheduler.SequentialLR(o, [
            torch.optim.lr_scheduler.LinearLR(o, start_factor=1 / (warm + 1), total_iters=warm),
            torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=STEPS - warm)], milestones=[warm]))
    annealed, fixed = [r[0] for r in rec.lrs], [r[1] for r in rec.lrs]
    assert annealed == pytest.approx(expect, rel=1e-9, abs=1e-12)
    assert fixed == [lr] * STEPS
    assert len(set(annealed)) > 2  # the schedule really moved


def test_without_a_fixed_group_every_group_follows_the_schedule(tmp_path):
    rec = fit(tmp_path, OptimSpec(name="SGD", lr=0.1, scheduler="cosine"), cls=ToyModule)
    expect = twin_lrs(0.1, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=STEPS))
    assert [r[0] for r in rec.lrs] == pytest.approx(expect, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("accumulate, expected", [(1, 0.1), (2, 0.2)])
def test_lr_batch_scales_the_lr_by_the_global_batch(tmp_path, accumulate, expected):
    spec = OptimSpec(name="SGD", lr=0.2, lr_batch=256)
    rec = fit(tmp_path, spec, batch_size=128, steps=2, accumulate_grad_batches=accumulate)
    assert rec.lrs[0] == pytest.approx([expected, expected], rel=1e-12)  # both groups, no scheduler


def test_lr_batch_with_a_fixed_group_keeps_the_scaled_lr(tmp_path):
    spec = OptimSpec(name="SGD", lr=0.2, lr_batch=256, scheduler="cosine")
    rec = fit(tmp_path, spec, batch_size=128)
    assert rec.initial == pytest.approx([0.1, 0.1], rel=1e-12)
    assert [r[1] for r in rec.lrs] == pytest.approx([0.1] * STEPS, rel=1e-12)
    expect = twin_lrs(0.1, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=STEPS))
    assert [r[0] for r in rec.lrs] == pytest.approx(expect, rel=1e-9, abs=1e-12)


def test_cosine_eta_min_with_a_fixed_group_and_lr_batch_ends_at_eta_min(tmp_path):
    spec = OptimSpec(name="SGD", lr=0.2, lr_batch=256, scheduler="cosine", scheduler_kwargs={"eta_min": 0.01})
    rec = fit(tmp_path, spec, batch_size=128)
    expect = twin_lrs(0.1, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=STEPS, eta_min=0.01))
    assert [r[0] for r in rec.lrs] == pytest.approx(expect, rel=1e-9, abs=1e-12)
