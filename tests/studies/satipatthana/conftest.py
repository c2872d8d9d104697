"""Shared builders for the Satipatthana tests: tiny modules on circles, one CPU thread per test."""

from __future__ import annotations

import pytest
import torch

from lit_experiments.studies.satipatthana.components import (
    MLPAdapter,
    MLPDecoder,
    Sati,
    TaskDecoder,
    Vicara,
    VipassanaV40,
    VipassanaV41,
    Vitakka,
)
from lit_experiments.studies.satipatthana.evaluation import MLPBaseline
from lit_experiments.studies.satipatthana.module import SatipatthanaModule, StageArgs


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread avoids oversubscription on the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_module(dim: int = 16, v41: bool = False, lazy: bool = False, baseline: bool = False,
                path_ratios: dict[str, float] | None = None, **kwargs) -> SatipatthanaModule:
    """A tiny module on 2-D inputs; the task decoder's ``in_dim`` is filled in by the module."""
    torch.manual_seed(0)
    vip = (VipassanaV41(None if lazy else dim, gru_hidden_dim=8, metric_proj_dim=4) if v41
           else VipassanaV40(None if lazy else dim, context_dim=8, hidden_dim=16))
    if path_ratios is not None:
        kwargs["stage_args"] = StageArgs(path_ratios=path_ratios)
    return SatipatthanaModule(
        adapter=MLPAdapter(2, dim, hidden_dim=32), vitakka=Vitakka(dim, n_probes=4), vicara=Vicara(dim, hidden_dim=32),
        sati=kwargs.pop("sati", Sati(max_steps=6)), vipassana=vip, recon_decoder=MLPDecoder(dim, 2, hidden_dim=32),
        task_decoder=TaskDecoder(2, hidden_dim=32), num_classes=2,
        baseline=MLPBaseline(hidden_dim=16) if baseline else None, **kwargs)


def circles_batch(n: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    from sklearn.datasets import make_circles

    x, y = make_circles(n_samples=n, noise=0.1, factor=0.5, random_state=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(x, dtype=torch.float32)
    return {"x": x, "y": torch.as_tensor(y), "x_void": torch.rand(n, 2, generator=gen) * 4 - 2,
            "void_kind": torch.zeros(n, dtype=torch.long), "index": torch.arange(n), "x_partner": x.roll(n // 2, 0)}
