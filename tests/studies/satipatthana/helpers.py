"""Shared builders for the Satipatthana tests: tiny modules and data on circles."""

from __future__ import annotations

import torch

from lit_experiments.core.lazy import lazy_build
from lit_experiments.studies.satipatthana.components import (
    MLPAdapter,
    MLPBaseline,
    ReconMLPDecoder,
    Sati,
    TaskDecoder,
    Vicara,
    VipassanaV40,
    VipassanaV41,
    Vitakka,
)
from lit_experiments.studies.satipatthana.datamodule import CirclesSource, SatipatthanaDataModule
from lit_experiments.studies.satipatthana.module import SatipatthanaModule, SatipatthanaStageArgs

SOURCE_ARGS = ("n_samples", "noise", "factor", "void_min_distance", "gaussian_std", "uniform_range")


def make_module(dim: int = 16, v41: bool = False, lazy: bool = False, baseline: bool = False,
                path_ratios: dict[str, float] | None = None, **kwargs) -> SatipatthanaModule:
    """A tiny module on 2-D inputs; every size but the adapter's ``dim`` is filled in by its dry run (``lazy``:
    left to the run's LazyBuild, else built here on a circles batch)."""
    torch.manual_seed(0)
    vip = (VipassanaV41(gru_hidden_dim=8, metric_proj_dim=4) if v41 else VipassanaV40(context_dim=8, hidden_dim=16))
    if path_ratios is not None:
        kwargs["stage_args"] = SatipatthanaStageArgs(path_ratios=path_ratios)
    module = SatipatthanaModule(
        adapter=MLPAdapter(dim, hidden_dim=32), vitakka=Vitakka(num_probes=4), vicara=Vicara(hidden_dim=32),
        sati=kwargs.pop("sati", Sati(max_steps=6)), vipassana=vip, recon_decoder=ReconMLPDecoder(hidden_dim=32),
        task_decoder=TaskDecoder(hidden_dim=32), num_classes=2,
        baseline=MLPBaseline(hidden_dim=16) if baseline else None, **kwargs)
    if not lazy:
        lazy_build(module, circles_batch(8))
    return module


def circles_dm(**kwargs) -> SatipatthanaDataModule:
    """The circles datamodule; ``CirclesSource`` arguments go to the source, the rest to the datamodule."""
    source = {k: kwargs.pop(k) for k in SOURCE_ARGS if k in kwargs}
    return SatipatthanaDataModule(CirclesSource(**source), **kwargs)


def circles_batch(n: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    from sklearn.datasets import make_circles

    x, y = make_circles(n_samples=n, noise=0.1, factor=0.5, random_state=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(x, dtype=torch.float32)
    return {"x": x, "y": torch.as_tensor(y), "x_void": torch.rand(n, 2, generator=gen) * 4 - 2,
            "void_kind": torch.zeros(n, dtype=torch.long), "index": torch.arange(n), "x_partner": x.roll(n // 2, 0)}
