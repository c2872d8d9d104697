"""Embedding-collapse diagnostics (F19).

``embedding_stats(emb)`` L2-normalises the rows of ``emb`` (N, D) and reports:

* ``std``: mean over dimensions of the per-dimension standard deviation across samples (population
  std, ``correction=0``). Collapse drives it to 0; for directions spread uniformly on the sphere it
  is ``1/sqrt(D)`` (each coordinate has mean 0 and variance 1/D). ``std_expected`` = ``1/sqrt(D)`` and
  ``std_ratio`` = ``std * sqrt(D)`` (about 1 healthy, about 0 collapsed) are returned too.
* pairwise cosine similarity over distinct pairs (i < j): ``cos_mean``, ``cos_p05``, ``cos_p50``,
  ``cos_p95`` (linear-interpolated quantiles, ``torch.quantile``), and a histogram over [-1, 1]
  (``hist_counts`` int64 (bins,), ``hist_edges`` (bins + 1,)). With more than ``max_samples`` rows the
  pairwise part uses a seeded random subset of ``max_samples`` rows (``n_pair_samples`` says how many).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def embedding_stats(emb: Tensor, bins: int = 40, max_samples: int = 2048, seed: int = 0) -> dict[str, Tensor | int]:
    """Spread and similarity statistics of a set of embeddings; see the module docstring."""
    if emb.dim() != 2 or emb.shape[0] < 2:
        raise ValueError(f"emb must be (N, D) with N >= 2, got shape {tuple(emb.shape)}")
    if not 2 <= max_samples <= 5000:  # torch.quantile takes at most 2**24 values
        raise ValueError(f"max_samples must be in [2, 5000], got {max_samples}")
    if not torch.isfinite(emb).all():
        raise ValueError("emb contains NaN or inf")
    z = F.normalize(emb.detach().double(), dim=1)
    n, d = z.shape
    std = z.std(dim=0, correction=0).mean()
    if n > max_samples:
        g = torch.Generator(device="cpu").manual_seed(seed)
        z = z[torch.randperm(n, generator=g)[:max_samples].to(z.device)]
    m = z.shape[0]
    iu = torch.triu_indices(m, m, offset=1, device=z.device)
    cos = (z @ z.t())[iu[0], iu[1]].clamp(-1.0, 1.0)
    q = torch.quantile(cos, torch.tensor([0.05, 0.5, 0.95], dtype=cos.dtype, device=z.device))
    edges = torch.linspace(-1.0, 1.0, bins + 1, dtype=torch.float64, device=z.device)
    counts = torch.histc(cos, bins=bins, min=-1.0, max=1.0).long()
    return {
        "std": std,
        "std_expected": torch.tensor(1.0 / math.sqrt(d), dtype=torch.float64),
        "std_ratio": std * math.sqrt(d),
        "cos_mean": cos.mean(),
        "cos_p05": q[0].double(),
        "cos_p50": q[1].double(),
        "cos_p95": q[2].double(),
        "hist_counts": counts,
        "hist_edges": edges,
        "n_pair_samples": m,
    }


def effective_rank(emb: Tensor, eps: float = 1e-12) -> Tensor:
    """Effective rank (Roy and Vetterli, 2007) of ``emb`` (N, D): ``exp(H(p))`` with ``p`` the singular values of the
    column-centred embeddings divided by their sum and ``H`` the Shannon entropy (natural log). It lies in
    ``[1, min(N, D)]``: 1 when every sample lies on one line (collapse), ``min(N, D)`` for isotropic spread."""
    if emb.dim() != 2 or emb.shape[0] < 2:
        raise ValueError(f"emb must be (N, D) with N >= 2, got shape {tuple(emb.shape)}")
    x = emb.detach().double()
    s = torch.linalg.svdvals(x - x.mean(dim=0, keepdim=True))
    if float(s.sum()) <= eps:
        return torch.tensor(1.0, dtype=torch.float64)
    p = s / s.sum()
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum())
