"""Speed of the retrieval study's FastAPLoss against pytorch-metric-learning's FastAPLoss (forward + backward).

Both run in the same process on the same random batches: B in {64, 256} embeddings of dim 256 with labels
of B // 4 classes (4 per class, as the m-per-class sampler gives), bins in {10, 50, 100}. PML builds a dense
``(bins + 1, B, B)`` kernel tensor; ours scatters each pair into the few bins its kernel reaches, so the
gap grows with ``bins``. Each cell is the best of ``--repeats`` timed calls after one warm-up; the loss
difference is printed as a check (must be < 1e-5). Ratios are what to compare; absolute times drift on a
shared machine.

Usage: ``python bench/fastap.py [--repeats 20] [--threads 1] [--device cpu]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from pytorch_metric_learning.losses import FastAPLoss as PMLFastAPLoss

from lit_experiments.studies.retrieval.losses import FastAPLoss


def _best(fn: Callable[[], float], repeats: int, device: torch.device) -> tuple[float, float]:
    value = fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        value = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times), value


def _step(loss_fn: torch.nn.Module, emb: torch.Tensor, labels: torch.Tensor) -> Callable[[], float]:
    def run() -> float:
        x = emb.detach().requires_grad_()
        loss = loss_fn(x, labels)
        loss.backward()
        return float(loss.detach())

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dim", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"FastAP forward+backward, dim {args.dim}, {args.device}, {args.threads} thread(s), "
          f"best of {args.repeats}")
    print(f"{'B':>5} {'bins':>5} {'ours ms':>9} {'PML ms':>9} {'PML/ours':>9} {'|loss diff|':>12}")
    ratios = []
    for batch in (64, 256):
        g = torch.Generator().manual_seed(batch)
        emb = torch.randn(batch, args.dim, generator=g).to(device)
        labels = torch.arange(batch // 4).repeat_interleave(4)[torch.randperm(batch, generator=g)].to(device)
        for bins in (10, 50, 100):
            ours_s, ours_v = _best(_step(FastAPLoss(bins).to(device), emb, labels), args.repeats, device)
            pml_s, pml_v = _best(_step(PMLFastAPLoss(num_bins=bins), emb, labels), args.repeats, device)
            ratios.append(pml_s / ours_s)
            print(f"{batch:>5} {bins:>5} {ours_s * 1e3:>9.2f} {pml_s * 1e3:>9.2f} {pml_s / ours_s:>9.1f} "
                  f"{abs(ours_v - pml_v):>12.1e}")
    print(f"speed ratio PML / ours: min {min(ratios):.1f}x, max {max(ratios):.1f}x")


if __name__ == "__main__":
    main()
