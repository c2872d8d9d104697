"""Memory and speed of ``retrieval_metrics`` (exact mAP, mAP@R, @k metrics) at retrieval-study scale.

(a) Peak memory: self-retrieval on ``--n`` (default 100,000) random unit embeddings of dim ``--dim``
    (256) with ``--labels`` (50) classes, against the 2 GB target. The measured part runs in a fresh
    child process that reports its own peak RSS (``VmHWM``; includes the ~0.3-0.5 GB of the interpreter
    and torch, and the N x D embeddings). By default the child ranks the first ``--queries`` queries
    against the whole N gallery: memory is set by one chunk (queries x gallery) and does not grow with
    the number of queries, and the time is linear in the number of queries, so the full-N time is the
    measured time scaled by N / queries (printed as extrapolated). ``--full`` ranks all N queries
    (self excluded) instead: about 5 minutes on one core for N = 100,000.
(b) Speed against torchmetrics ``RetrievalMAP`` on an ``--tm-n`` x ``--tm-n`` self-retrieval subset
    (default 3,000), where torchmetrics holds all pairs at once (scores shifted by +2: it drops scores
    <= 0, F21; the query itself marked ``ignore_index``). Both mAPs are printed (they must agree), the
    per-pair time ratio, and torchmetrics' time and memory extrapolated to N (quadratic in N).

One thread per child by default (``--threads``): on a shared 2-core machine a second torch thread mostly
adds contention. Absolute times drift with load; compare the ratios.

Usage: ``python bench/retrieval_eval.py [--n 100000] [--queries 4000] [--full] [--tm-n 3000]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

TARGET_GB = 2.0


def _data(n: int, dim: int, labels: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, labels, (n,), generator=g)
    centers = torch.randn(labels, dim, generator=g)
    emb = torch.nn.functional.normalize(0.3 * centers[lab] + torch.randn(n, dim, generator=g), dim=1)
    return emb, lab


def _peak_gb() -> float:
    """This process's peak resident set size in GB (VmHWM, else ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux ``clear_refs``), so the next peak is the call's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def part(name: str, args: argparse.Namespace) -> dict:
    """One measured variant, run in this (child) process."""
    torch.set_num_threads(args.threads)
    from lit_experiments.metrics import retrieval_metrics

    res: dict = {"part": name}
    if name == "ours_full":
        emb, lab = _data(args.n, args.dim, args.labels)
        q = args.n if args.full else min(args.queries, args.n)
        res["gb_data"] = _peak_gb()  # peak of imports + data generation
        res["peak_reset"] = _reset_peak()
        res["gb_before"] = _peak_gb()
        t0 = time.perf_counter()
        out = retrieval_metrics(emb[:q], emb, lab[:q], lab, ks=(1, 10, 50), exclude_self=args.full)
        res["s"], res["queries"] = time.perf_counter() - t0, q
        res["map"], res["map@r"] = float(out["map"]), float(out["map@r"])
    elif name == "ours_sub":
        emb, lab = _data(args.tm_n, args.dim, args.labels)
        t0 = time.perf_counter()
        out = retrieval_metrics(emb, emb, lab, lab, ks=(1, 10), exclude_self=True)
        res["s"], res["map"] = time.perf_counter() - t0, float(out["map"])
    elif name == "tm_sub":
        from torchmetrics.retrieval import RetrievalMAP

        emb, lab = _data(args.tm_n, args.dim, args.labels)
        n = args.tm_n
        t0 = time.perf_counter()
        scores = emb @ emb.t() + 2.0  # torchmetrics drops scores <= 0 (F21)
        target = (lab[:, None] == lab[None, :]).long()
        target.fill_diagonal_(-1)  # the query itself: ignored
        idx = torch.arange(n)[:, None].expand(n, n)
        m = RetrievalMAP(empty_target_action="skip", ignore_index=-1)
        m.update(scores.reshape(-1), target.reshape(-1), indexes=idx.reshape(-1))
        res["map"] = float(m.compute())
        res["s"] = time.perf_counter() - t0
    else:
        raise ValueError(f"unknown part {name!r}")
    res["peak_gb"] = _peak_gb()
    return res


def _child(name: str, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--part", name, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"part {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--labels", type=int, default=50)
    p.add_argument("--queries", type=int, default=4000, help="queries ranked in (a) unless --full")
    p.add_argument("--full", action="store_true", help="(a) on all N queries, self excluded")
    p.add_argument("--tm-n", type=int, default=3000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.part:
        print(json.dumps(part(args.part, args)))
        return
    argv = [a for a in sys.argv[1:]]
    t_start = time.perf_counter()
    big = _child("ours_full", argv)
    q, n = big["queries"], args.n
    full_s = big["s"] * n / q
    tag = "measured" if q == n else f"extrapolated from {q} queries x {n} gallery"
    print(f"(a) retrieval_metrics self-retrieval, N={n:,} D={args.dim} labels={args.labels}, {args.threads} thread(s)")
    peak = max(big["peak_gb"], big["gb_data"])
    print(f"    peak RSS {peak:.2f} GB vs target {TARGET_GB:.1f} GB: ratio {peak / TARGET_GB:.2f}; during the call "
          f"{big['peak_gb']:.2f} GB = {big['gb_before']:.2f} GB resident before it (interpreter, torch, data) + "
          f"{big['peak_gb'] - big['gb_before']:.2f} GB" + ("" if big["peak_reset"] else " (peak not reset: upper bound)"))
    print(f"    time {big['s']:.1f} s for {q:,} queries = {big['s'] / (q * n) * 1e9:.1f} ns/pair; "
          f"all {n:,} queries: {full_s:.0f} s ({tag})")
    print(f"    mAP {big['map']:.4f}  mAP@R {big['map@r']:.4f}")
    ours, tm = _child("ours_sub", argv), _child("tm_sub", argv)
    pairs = args.tm_n**2
    print(f"(b) {args.tm_n:,} x {args.tm_n:,} self-retrieval subset ({pairs:,} pairs)")
    print(f"    retrieval_metrics {ours['s']:.2f} s, peak {ours['peak_gb']:.2f} GB, mAP {ours['map']:.6f}")
    print(f"    torchmetrics RetrievalMAP {tm['s']:.2f} s, peak {tm['peak_gb']:.2f} GB, mAP {tm['map']:.6f}")
    print(f"    mAP difference {abs(ours['map'] - tm['map']):.2e}; per-pair time ratio torchmetrics / ours: "
          f"{tm['s'] / ours['s']:.1f}x")
    scale = (n / args.tm_n) ** 2
    print(f"    torchmetrics at N={n:,} (extrapolated, quadratic): {tm['s'] * scale / 60:.0f} min and "
          f"~{n * n * 20 / 1e9:.0f} GB of pair tensors (4 B score + 8 B target + 8 B index per pair) "
          f"vs retrieval_metrics {full_s / 60:.1f} min at {big['peak_gb']:.2f} GB")
    print(f"bench wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
