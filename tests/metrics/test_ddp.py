"""Every Metric class gives the same result in a 2-process CPU DDP run (gloo, uneven shards) as in one
process. One spawn runs all classes to keep the test short."""

from __future__ import annotations

import math
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lit_experiments.metrics import (
    ARIMetric,
    MBOMetric,
    MultilabelMetrics,
    PromptableSegMetric,
    RetrievalMetrics,
)

N = 19  # samples; rank 0 gets 0..6 (two batches), rank 1 gets 7..18 (three batches)
RANK_BATCHES = {0: [(0, 4), (4, 7)], 1: [(7, 10), (10, 15), (15, 19)]}


def _data() -> dict:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (N, 8, 8), generator=g)
    target[3] = 0  # no foreground -> skipped
    pred = torch.randint(0, 5, (N, 8, 8), generator=g)
    groups = [("metal", "rubber")[i % 2] if i < 7 else ("mixed" if i % 3 else 7) for i in range(N)]
    gt_units, pm_units, sc_units = [], [], []
    for i in range(N):
        n_gt = i % 3  # 0: a negative unit
        gt = torch.rand(n_gt, 6, 6, generator=g) < 0.4
        noisy = gt ^ (torch.rand(gt.shape, generator=g) < 0.1)
        extra = torch.rand(i % 2, 6, 6, generator=g) < 0.3
        gt_units.append(gt)
        pm_units.append(torch.cat([noisy, extra]))
        sc_units.append(torch.rand(n_gt + i % 2, generator=g))
    return {
        "pred": pred, "target": target, "groups": groups,
        "emb": torch.randn(N, 4, generator=g), "labels": torch.randint(0, 3, (N,), generator=g),
        "ids": torch.randperm(N, generator=g),
        "scores": torch.rand(N, 5, generator=g), "multi": (torch.rand(N, 5, generator=g) < 0.4).long(),
        "units": (pm_units, sc_units, gt_units),
    }


def _run(batches: list[tuple[int, int]]) -> dict[str, dict]:
    d = _data()
    metrics = {
        "fg_ari": ARIMetric(foreground_only=True), "ari": ARIMetric(foreground_only=False), "mbo": MBOMetric(),
        "retrieval": RetrievalMetrics(ks=(1, 3)), "multilabel": MultilabelMetrics(),
        "promptable": PromptableSegMetric(),
    }
    for lo, hi in batches:
        soft = F.one_hot(d["pred"][lo:hi], 5).permute(0, 3, 1, 2).float()
        metrics["fg_ari"].update(soft, d["target"][lo:hi], d["groups"][lo:hi])
        metrics["ari"].update(d["pred"][lo:hi], d["target"][lo:hi], d["groups"][lo:hi])
        metrics["mbo"].update(d["pred"][lo:hi], d["target"][lo:hi], d["groups"][lo:hi])
        metrics["retrieval"].update(d["emb"][lo:hi], d["labels"][lo:hi], d["ids"][lo:hi])
        metrics["multilabel"].update(d["scores"][lo:hi], d["multi"][lo:hi])
        metrics["promptable"].update(*(u[lo:hi] for u in d["units"]))
    return {k: {n: (v.clone() if torch.is_tensor(v) else v) for n, v in m.compute().items()} for k, m in metrics.items()}


def _worker(rank: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        out = _run(RANK_BATCHES[rank])
        if rank == 0:
            torch.save(out, path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metric_classes_agree_under_ddp(tmp_path):
    path = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(_free_port(), path), nprocs=2, join=True)
    got = torch.load(path, weights_only=False)
    ref = _run([(0, N)])
    assert ref["fg_ari"]["fg_ari_skipped"] == 1 and "fg_ari/mixed" in ref["fg_ari"] and "fg_ari/7" in ref["fg_ari"]
    assert ref["promptable"]["n_negative"] > 0 and ref["retrieval"]["n_queries"] == N
    for name, r in ref.items():
        assert set(got[name]) == set(r), name
        for k, v in r.items():
            g = got[name][k]
            if torch.is_tensor(v):
                torch.testing.assert_close(g, v, equal_nan=True, msg=f"{name}/{k}")
            elif isinstance(v, float) and math.isnan(v):
                assert math.isnan(g), f"{name}/{k}"
            else:
                assert g == v, f"{name}/{k}"
