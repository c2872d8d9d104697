"""Toy modules for the core tests, including deliberately broken variants (one per guarded bug)."""

from __future__ import annotations

import torch
from torch import nn

from lit_experiments.core.lazy import LazyBuild
from lit_experiments.core.specs import OptimSpec, StageSpec
from lit_experiments.core.trainer import LitTrainer
from lit_experiments.studies.toy.datamodule import ToyDataModule
from lit_experiments.studies.toy.module import ToyModule

FAST = dict(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
            logger=None, log_every_n_steps=1, num_sanity_val_steps=0)


def trainer(tmp_path, **kw) -> LitTrainer:
    name = kw.pop("name", "run")
    return LitTrainer(run_dir=str(tmp_path / name), **{**FAST, **kw})


def stages(*specs: tuple[str, int, list[str]], lr: float = 1e-2) -> list[StageSpec]:
    return [StageSpec(name=n, max_epochs=e, trainable=t, optimizer=OptimSpec(lr=lr)) for n, e, t in specs]


def data(**kw) -> ToyDataModule:
    return ToyDataModule(**{"n_train": 64, "n_val": 21, "n_test": 21, "batch_size": 16, **kw})


class RecordingToy(ToyModule):
    """Records, per stage, the optimizer's parameter names and the trainable names at train start."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.records: list[dict] = []

    def on_train_start(self) -> None:
        names = {id(p): n for n, p in self.named_parameters()}
        opt = self.trainer.optimizers[0]
        self.records.append({
            "stage": self.stage.name,
            "optimizer_id": id(opt),
            "in_optimizer": sorted(names[id(p)] for g in opt.param_groups for p in g["params"]),
            "trainable": sorted(n for n, p in self.named_parameters() if p.requires_grad),
        })


class CachedOptimizerToy(ToyModule):
    """F08 put back: the optimizer is built once and reused in later stages."""

    _cached = None

    def configure_optimizers(self):
        if self._cached is None:
            self._cached = super().configure_optimizers()
        return self._cached


class DetachedLogToy(ToyModule):
    """F07 put back: an auxiliary head is trained by a loss read from a detached trajectory log."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.aux = nn.Linear(32, 32)

    def training_step(self, batch, batch_idx):
        features = self.encoder(batch["x"])
        log = [self.aux(features).detach()]  # the "log" keeps detached copies
        stability = (log[-1] - features.detach()).pow(2).mean()  # computed from the log: no graph
        loss = nn.functional.cross_entropy(self.head(features), batch["y"]) + 0.1 * stability
        self.track(losses={"stability": stability})
        return loss


class LateBuiltToy(ToyModule):
    """F09: a sub-network created in Python on first use (as the seed's lazily built Vipassana)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.late: nn.Module | None = None

    def forward(self, batch):
        features = self.encoder(batch["x"])
        if self.late is None:
            self.late = nn.Linear(features.shape[1], self.head.out_features)
        return self.head(features) + self.late(features)

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self(batch), batch["y"])
        return loss


class TrainableTargetToy(ToyModule):
    """F01 put back: the reconstruction target goes through a trainable projection."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.projection = nn.Linear(8, 8)
        self.decoder = nn.Linear(32, 8)

    def training_step(self, batch, batch_idx):
        features = self.encoder(batch["x"])
        target = self.projection(batch["x"])  # should be the frozen input, detached
        loss = (self.decoder(features) - target).pow(2).mean()
        self.track(targets={"recon_target": target})
        return loss


class NaNLossToy(ToyModule):
    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) * float("nan")


class CollapsedToy(ToyModule):
    """F10 put back: a closed gate multiplies every representation by 0, so all samples look alike."""

    def training_step(self, batch, batch_idx):
        features = self.encoder(batch["x"])
        gated = features * 0.0 + self.head.bias.sum()  # identical rows
        self.track(representations={"s0": gated})
        return nn.functional.cross_entropy(self.head(features), batch["y"])


class NegativeLossToy(ToyModule):
    """A loss declared >= 0 that goes negative (as the seed's collapsing CLIP target did)."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) - 10.0


def no_lazy_build(monkeypatch) -> None:
    """Put the F09 bug back: skip the dry run before freezing."""
    monkeypatch.setattr(LazyBuild, "setup", lambda self, trainer, pl_module, stage: None)


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
