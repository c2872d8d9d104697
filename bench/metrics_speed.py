"""Speed of the metrics library against the straightforward alternatives, one process per variant.

* ARI: ``ari`` (FG-ARI) on 256 samples of 128x128 int label maps vs a per-sample loop over
  ``sklearn.metrics.adjusted_rand_score`` on the foreground pixels.
* Retrieval: exact self-retrieval mAP on 20,000 L2-normalised embeddings (dim 128, 100 classes) with
  ``retrieval_metrics`` vs torchmetrics ``RetrievalMAP`` over the flattened query x gallery pairs.
  torchmetrics needs all N*N pairs in memory at once (4e8 pairs: ~5 GB of preds + indexes), so it runs
  on a subset of queries against the full gallery and its time is scaled linearly to all queries.
  Its scores are shifted by +2 (cosine in [-1, 1]) because it drops scores <= 0 (F21).

Every variant uses one thread by default (``--threads``): the sklearn loop is single-threaded, and on
a shared 2-core machine a second torch thread mostly adds contention.
Each variant runs in a fresh child process so its peak RSS (``ru_maxrss``, includes the ~0.3-0.5 GB
of the interpreter + torch) is its own. Ratios are what to compare; absolute times drift on a shared
machine. The last line prints the ARI speed ratio.

Usage: ``python bench/metrics_speed.py [--n-ret 20000] [--tm-queries 400] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch


def _ari_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 8, (256, 16, 16), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    noise = torch.rand(target.shape, generator=g) < 0.25
    pred = torch.where(noise, torch.randint(0, 11, target.shape, generator=g), target + 3)
    return pred, target


def _ret_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 100, (n,), generator=g)
    centers = torch.randn(100, 128, generator=g)
    emb = torch.nn.functional.normalize(centers[labels] * 0.35 + torch.randn(n, 128, generator=g), dim=1)
    return emb, labels


def _best(fn, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def part(name: str, args: argparse.Namespace) -> dict:
    """Run one variant in this process; returns seconds, a checksum value and peak RSS (GB)."""
    torch.set_num_threads(args.threads)
    res: dict = {"part": name}
    if name == "ari_ours":
        from lit_experiments.metrics import ari

        pred, target = _ari_data()
        ari(pred, target, True)  # warm-up
        res["s"], v = _best(lambda: ari(pred, target, foreground_only=True), 7)
        res["value"] = float(v.mean())
    elif name == "ari_sklearn":
        from sklearn.metrics import adjusted_rand_score

        pred, target = (x.reshape(256, -1).numpy() for x in _ari_data())

        def loop() -> float:
            vals = [adjusted_rand_score(t[t != 0], p[t != 0]) for p, t in zip(pred, target)]
            return float(np.mean(vals))

        res["s"], res["value"] = _best(loop, 3)
    elif name == "ret_ours":
        from lit_experiments.metrics import retrieval_metrics

        emb, labels = _ret_data(args.n_ret)
        t0 = time.perf_counter()
        out = retrieval_metrics(emb, emb, labels, labels, ks=(1, 10), exclude_self=True)
        res["s"] = time.perf_counter() - t0
        res["value"] = float(out["map"])
        res["subset_map"] = float(out["per_query_ap"][: args.tm_queries].mean())
    elif name == "ret_torchmetrics":
        from torchmetrics.retrieval import RetrievalMAP

        emb, labels = _ret_data(args.n_ret)
        q = args.tm_queries
        t0 = time.perf_counter()
        scores = emb[:q] @ emb.t() + 2.0  # shift: torchmetrics drops scores <= 0 (F21)
        target = (labels[:q, None] == labels[None, :]).long()
        target[torch.arange(q), torch.arange(q)] = -1  # the query itself, ignored below
        idx = torch.arange(q)[:, None].expand_as(scores)
        m = RetrievalMAP(empty_target_action="skip", ignore_index=-1)
        m.update(scores.reshape(-1), target.reshape(-1), indexes=idx.reshape(-1))
        res["value"] = float(m.compute())
        res["s"] = time.perf_counter() - t0
    res["rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return res


def _child(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--part", name, "--n-ret", str(args.n_ret), "--tm-queries", str(args.tm_queries),
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default=None)
    ap.add_argument("--n-ret", type=int, default=20000)
    ap.add_argument("--tm-queries", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.part:
        print(json.dumps(part(args.part, args)))
        return
    r = {n: _child(n, args) for n in ("ari_ours", "ari_sklearn", "ret_ours", "ret_torchmetrics")}
    a, s = r["ari_ours"], r["ari_sklearn"]
    print(f"ARI, 256 x 128x128, FG-ARI: ours {a['s'] * 1e3:.1f} ms (peak RSS {a['rss_gb']:.2f} GB), "
          f"sklearn loop {s['s'] * 1e3:.1f} ms (peak RSS {s['rss_gb']:.2f} GB); mean FG-ARI {a['value']:.6f} vs "
          f"{s['value']:.6f}")
    o, t = r["ret_ours"], r["ret_torchmetrics"]
    scale = args.n_ret / args.tm_queries
    print(f"Retrieval, self-retrieval N={args.n_ret} dim 128: ours (all {args.n_ret} queries, chunked) {o['s']:.1f} s, "
          f"peak RSS {o['rss_gb']:.2f} GB, mAP {o['value']:.4f}")
    print(f"  torchmetrics RetrievalMAP on {args.tm_queries} queries x {args.n_ret} gallery = "
          f"{args.tm_queries * args.n_ret:.2e} pairs: {t['s']:.1f} s, peak RSS {t['rss_gb']:.2f} GB; scaled x{scale:.0f} "
          f"to all queries: {t['s'] * scale:.1f} s (estimate, not run: 4e8 pairs do not fit)")
    print(f"  subset mAP check: torchmetrics {t['value']:.6f} vs ours {o['subset_map']:.6f}")
    print(f"Retrieval speed ratio (torchmetrics scaled / ours): {t['s'] * scale / o['s']:.1f}x")
    print(f"ARI speed ratio (sklearn loop / ours): {s['s'] / a['s']:.1f}x")


if __name__ == "__main__":
    main()
