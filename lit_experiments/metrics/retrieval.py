"""Exact embedding-retrieval metrics, chunked over queries (F19, F21).

Conventions:

* Score of a (query, gallery) pair = dot product of the two embeddings, in the embeddings' dtype.
  Any sign is fine: nothing is fed to torchmetrics retrieval, which silently drops scores <= 0 (F21).
  L2-normalise first for cosine scores.
* Relevant = same label. With ``exclude_self=True`` (self-retrieval, ``query_emb`` is ``gallery_emb``)
  gallery item ``i`` is removed from query ``i``'s ranking entirely: it is neither a candidate nor a
  positive.
* Queries without any positive are skipped: excluded from every mean, counted in
  ``n_skipped_queries``, ``NaN`` in ``per_query_ap``.
* ``map``: mean over queries of average precision, AP = (1 / #positives) * sum over positives of the
  precision at the *end of that positive's tie group* (items with exactly equal scores). This is
  ``sklearn.metrics.average_precision_score`` exactly, ties included, and does not depend on item
  order.
* ``@k`` metrics cut the ranking "score descending, then gallery index ascending" (a stable sort), so
  ties at the cut are broken deterministically by gallery index.
  ``precision@k`` = hits in top k / k; ``recall@k`` = hits in top k / all positives (torchmetrics'
  ``RetrievalRecall``); ``hit_rate@k`` = 1 if any hit in top k (the "Recall@K" of the metric-learning
  literature, e.g. FastAP). ``k`` larger than the number of candidates is an error.
* ``map@r`` (Musgrave et al. 2020, "A metric learning reality check"): for a query with ``R``
  positives, ``(1 / R) * sum_{i=1..R} P(i) * rel(i)`` over the top ``R`` of the same ranking as the
  ``@k`` metrics (score desc, gallery index asc), where ``P(i)`` = hits in the top ``i`` / ``i`` and
  ``rel(i)`` = 1 if the item at rank ``i`` is a positive. ``r_precision`` = hits in the top ``R`` / ``R``.
  Both are averaged over the queries that have positives (pytorch-metric-learning's
  ``AccuracyCalculator`` gives the same values on tie-free data).
* Memory: one chunk of ``chunk_size`` queries x all gallery items is materialised at a time (about
  20 bytes per pair); the default chunk (2**23 pairs) keeps that near 200 MB, whatever ``R`` is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

_PAIRS_PER_CHUNK = 1 << 23


def _check(query_emb: Tensor, gallery_emb: Tensor, query_labels: Tensor, gallery_labels: Tensor) -> None:
    if query_emb.dim() != 2 or gallery_emb.dim() != 2:
        raise ValueError(
            f"query_emb and gallery_emb must be (N, D): got {tuple(query_emb.shape)} and {tuple(gallery_emb.shape)}"
        )
    if query_emb.shape[1] != gallery_emb.shape[1]:
        raise ValueError(f"embedding dims differ: query_emb {tuple(query_emb.shape)}, gallery_emb {tuple(gallery_emb.shape)}")
    if query_labels.shape != (query_emb.shape[0],):
        raise ValueError(f"query_labels must be ({query_emb.shape[0]},), got {tuple(query_labels.shape)}")
    if gallery_labels.shape != (gallery_emb.shape[0],):
        raise ValueError(f"gallery_labels must be ({gallery_emb.shape[0]},), got {tuple(gallery_labels.shape)}")
    if not (torch.isfinite(query_emb).all() and torch.isfinite(gallery_emb).all()):
        raise ValueError("embeddings contain NaN or inf")


def retrieval_metrics(
    query_emb: Tensor,
    gallery_emb: Tensor,
    query_labels: Tensor,
    gallery_labels: Tensor,
    ks: Sequence[int] = (1, 5, 10, 20, 50),
    exclude_self: bool = False,
    chunk_size: int | None = None,
    query_groups: Tensor | None = None,
    gallery_groups: Tensor | None = None,
) -> dict[str, Tensor | int]:
    """mAP, precision@k, recall@k, hit_rate@k and per-query AP; see the module docstring.

    Args:
        query_emb: ``(Nq, D)``; gallery_emb: ``(Ng, D)``; labels: int ``(Nq,)`` / ``(Ng,)``.
        ks: cut-offs; each must be <= the number of candidates of every query.
        exclude_self: drop gallery item ``i`` from query ``i`` (requires ``Nq == Ng``).
        chunk_size: queries per chunk (default: ``2**23 // Ng``).
        query_groups / gallery_groups: int ``(Nq,)`` / ``(Ng,)`` (both or neither): gallery items of the query's
            own group (e.g. the frames of its video) are dropped from its ranking like the query itself: neither
            candidates nor positives. Near-duplicate neighbours then cannot make the numbers.

    Returns:
        ``{"map", "map@r", "r_precision", "precision@k", "recall@k", "hit_rate@k" (float64 scalars),
        "per_query_ap" (Nq,)
        float64 with NaN for skipped queries, "n_skipped_queries" (int), "n_queries" (int)}``.
    """
    _check(query_emb, gallery_emb, query_labels, gallery_labels)
    nq, ng = query_emb.shape[0], gallery_emb.shape[0]
    if exclude_self and nq != ng:
        raise ValueError(f"exclude_self needs query_emb and gallery_emb of equal length, got {nq} and {ng}")
    n_cand = ng - int(exclude_self)
    if (query_groups is None) != (gallery_groups is None):
        raise ValueError("give both query_groups and gallery_groups, or neither")
    if query_groups is not None:
        if query_groups.shape != (nq,) or gallery_groups.shape != (ng,):
            raise ValueError(f"query_groups must be ({nq},) and gallery_groups ({ng},), got "
                             f"{tuple(query_groups.shape)} and {tuple(gallery_groups.shape)}")
        uniq, counts = torch.unique(gallery_groups, return_counts=True)
        pos = torch.searchsorted(uniq, query_groups).clamp_max(len(uniq) - 1)
        own = torch.where(uniq[pos] == query_groups, counts[pos], torch.zeros_like(pos))
        n_cand = ng - int(own.max()) if nq else ng
    ks = tuple(int(k) for k in ks)
    if any(k < 1 or k > n_cand for k in ks):
        raise ValueError(f"every k must be in [1, {n_cand}] (candidates per query), got ks={ks}")
    step = chunk_size or max(1, _PAIRS_PER_CHUNK // max(ng, 1))
    dev = query_emb.device
    ap = torch.empty(nq, dtype=torch.float64, device=dev)
    ap_r = torch.empty(nq, dtype=torch.float64, device=dev)
    hits_r = torch.empty(nq, dtype=torch.long, device=dev)
    hits_at = torch.empty(nq, len(ks), dtype=torch.long, device=dev)
    n_pos = torch.empty(nq, dtype=torch.long, device=dev)
    kidx = torch.tensor(ks, device=dev) - 1
    g_t = gallery_emb.t()
    for lo in range(0, nq, step):
        hi = min(nq, lo + step)
        scores = query_emb[lo:hi] @ g_t  # (q, Ng)
        rel = query_labels[lo:hi, None] == gallery_labels[None, :]
        if exclude_self:
            rows = torch.arange(hi - lo, device=dev)
            scores[rows, rows + lo] = -math.inf  # ranked last; no tie with finite scores
            rel[rows, rows + lo] = False
        if query_groups is not None:
            same = query_groups[lo:hi, None] == gallery_groups[None, :]
            scores = scores.masked_fill(same, -math.inf)
            rel = rel & ~same
        ap[lo:hi], hits_at[lo:hi], n_pos[lo:hi], ap_r[lo:hi], hits_r[lo:hi] = _rank_chunk(scores, rel, kidx)
    valid = n_pos > 0
    ap = torch.where(valid, ap, torch.full_like(ap, math.nan))
    out: dict[str, Tensor | int] = {"map": ap[valid].mean() if valid.any() else torch.tensor(math.nan, dtype=torch.float64)}
    hv, pv = hits_at[valid].double(), n_pos[valid].double()
    out["map@r"] = (ap_r[valid] / pv).mean()
    out["r_precision"] = (hits_r[valid].double() / pv).mean()
    for j, k in enumerate(ks):
        out[f"precision@{k}"] = (hv[:, j] / k).mean()
        out[f"recall@{k}"] = (hv[:, j] / pv).mean()
        out[f"hit_rate@{k}"] = (hv[:, j] > 0).double().mean()
    out["per_query_ap"] = ap
    out["n_skipped_queries"] = int((~valid).sum())
    out["n_queries"] = nq
    return out


def _sorted_values(scores: Tensor) -> Tensor:
    """Row-wise ascending sort, values only. On CPU numpy's SIMD sort is ~10x faster than torch.sort."""
    if scores.device.type == "cpu" and scores.dtype != torch.bfloat16:  # numpy has no bfloat16
        return torch.from_numpy(np.sort(scores.numpy(), axis=1))
    return torch.sort(scores, dim=1).values


def _rank_chunk(scores: Tensor, rel: Tensor, kidx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """AP (tie-group exact), hits at each k, #positives, R * AP@R and hits in the top R for one chunk.

    Per positive with score v: ``count_ge`` = items scoring >= v (its whole tie group included), found
    by binary search in the row's sorted scores; ``hits_ge`` = positives scoring >= v, by search among
    the positives. AP = mean over positives of ``hits_ge / count_ge``.
    """
    q, ng = scores.shape
    r, c = rel.nonzero(as_tuple=True)  # row-major: rows ascending
    n_pos = torch.bincount(r, minlength=q)
    ap = torch.zeros(q, dtype=torch.float64, device=scores.device)
    ap_r = torch.zeros(q, dtype=torch.float64, device=scores.device)
    hits_r = torch.zeros(q, dtype=torch.long, device=scores.device)
    pmax = int(n_pos.max()) if q else 0
    if pmax > 0:
        start = torch.cumsum(n_pos, 0) - n_pos
        slot = torch.arange(r.numel(), device=r.device) - start[r]
        u = torch.full((q, pmax), math.inf, dtype=scores.dtype, device=scores.device)
        u[r, slot] = -scores[r, c]
        u = torch.sort(u, dim=1).values  # negated positive scores ascending; padding (+inf) last
        hits_ge = torch.searchsorted(u, u, right=True).double()
        sv = _sorted_values(scores)
        count_ge = ng - torch.searchsorted(sv, torch.neg(u).contiguous())
        valid = torch.arange(pmax, device=scores.device)[None, :] < n_pos[:, None]
        ap = torch.where(valid, hits_ge / count_ge.clamp_min(1).double(), torch.zeros_like(hits_ge)).sum(1)
        ap = ap / n_pos.clamp_min(1).double()
        # @R without ties: the positive at slot s has rank count_ge and s + 1 = hits_ge hits up to it.
        in_r = valid & (count_ge <= n_pos[:, None])
        ap_r = torch.where(in_r, hits_ge / count_ge.clamp_min(1).double(), torch.zeros_like(hits_ge)).sum(1)
        hits_r = in_r.sum(1)
        # A positive tied with another item at a rank that matters: exact ranking for that row instead.
        first = (ng - count_ge).clamp(0, ng - 1)
        v = torch.neg(u)
        tied = valid & (sv.gather(1, (first + 1).clamp_max(ng - 1)) == v) & (first + 1 < ng)
        t = sv.gather(1, (ng - n_pos.clamp_min(1))[:, None])
        redo = (tied & (in_r | (v == t))).any(1).nonzero(as_tuple=True)[0]
        if redo.numel():
            ap_r[redo], hits_r[redo] = _at_r_exact(_rows(scores, redo), _rows(rel, redo), t[redo], n_pos[redo])
        hits_at = _hits_at(scores, rel, kidx, sv, u)
    else:
        hits_at = torch.zeros(q, kidx.numel(), dtype=torch.long, device=scores.device)
    return ap, hits_at, n_pos, ap_r, hits_r


def _rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x[idx]`` for sorted unique row indices, without a copy when they are all the rows."""
    return x if idx.numel() == x.shape[0] else x[idx]


def _at_r_exact(scores: Tensor, rel: Tensor, t: Tensor, n_pos: Tensor) -> tuple[Tensor, Tensor]:
    """``R * AP@R`` and hits in the top R per query (R = ``n_pos`` >= 1), ranking score desc, index asc.

    ``t`` (q, 1) is the R-th largest score of each row. The items scoring above ``t`` (fewer than R) take
    the first ranks, stably sorted by score (index asc within ties); the remaining ranks go to the items
    scoring exactly ``t`` in gallery-index order. No full-row sort, so all-tied rows stay cheap.
    """
    q, dev = scores.shape[0], scores.device
    ap_r = torch.zeros(q, dtype=torch.float64, device=dev)
    hits_g = torch.zeros(q, dtype=torch.long, device=dev)
    r, c = (scores > t).nonzero(as_tuple=True)
    n_gt = torch.bincount(r, minlength=q)
    if r.numel():
        gmax = int(n_gt.max())
        slot = torch.arange(r.numel(), device=dev) - (torch.cumsum(n_gt, 0) - n_gt)[r]
        vals = torch.full((q, gmax), -math.inf, dtype=scores.dtype, device=dev)
        relg = torch.zeros((q, gmax), dtype=torch.bool, device=dev)
        vals[r, slot], relg[r, slot] = scores[r, c], rel[r, c]
        relg = relg.gather(1, torch.sort(vals, dim=1, descending=True, stable=True).indices)
        cum = relg.long().cumsum(1)
        ap_r = (cum.double() / torch.arange(1, gmax + 1, device=dev)).masked_fill(~relg, 0.0).sum(1)
        hits_g = cum[:, -1]
    tie = scores == t
    nth = tie.cumsum(1, dtype=torch.int32)  # position among the tied items
    hit = tie & rel & (nth <= (n_pos - n_gt).to(torch.int32)[:, None])
    r, c = hit.nonzero(as_tuple=True)
    h_before = hit.cumsum(1, dtype=torch.int32)[r, c]  # positives taken so far, tied part
    prec = (hits_g[r] + h_before).double() / (n_gt[r] + nth[r, c]).double()
    ap_r.index_add_(0, r, prec)
    return ap_r, hits_g + torch.bincount(r, minlength=q)


def _hits_at(scores: Tensor, rel: Tensor, kidx: Tensor, sv: Tensor, u: Tensor) -> Tensor:
    """Hits in the top k (order: score desc, gallery index asc) for every k in ``kidx + 1``.

    With ``t`` the k-th largest score (from the sorted rows ``sv``) and no other item tied with it, the top
    k is every item scoring >= t, so hits = positives scoring >= t: a search in ``u`` (negated positive
    scores, ascending). Rows where the cut falls inside a tie group take the lowest gallery indices.
    """
    q, ng = scores.shape
    out = torch.empty(q, kidx.numel(), dtype=torch.long, device=scores.device)
    for j, k0 in enumerate(kidx.tolist()):
        t = sv[:, ng - 1 - k0 : ng - k0]  # (q, 1)
        out[:, j] = torch.searchsorted(u, torch.neg(t).contiguous(), right=True)[:, 0]
        if k0 + 1 >= ng:
            continue  # every candidate is in the top k
        tied = (sv[:, ng - 2 - k0] == t[:, 0]).nonzero(as_tuple=True)[0]
        if tied.numel() == 0:
            continue
        t = t[tied]
        n_gt = ng - torch.searchsorted(sv[tied], t, right=True)  # items above t: all in the top k
        hits_gt = torch.searchsorted(u[tied], torch.neg(t).contiguous())  # positives above t
        tie = _rows(scores, tied) == t
        take = tie & _rows(rel, tied) & (tie.cumsum(1, dtype=torch.int32) <= ((k0 + 1) - n_gt).to(torch.int32))
        out[tied, j] = hits_gt[:, 0] + torch.count_nonzero(take, dim=1)
    return out


def compare_per_query_ap(
    ap_a: Tensor,
    ap_b: Tensor,
    query_ids: Tensor | Sequence[int] | None = None,
    min_delta: float = 0.0,
) -> dict[str, object]:
    """Query-by-query comparison of two checkpoints' AP on the same queries (F19).

    Args:
        ap_a, ap_b: per-query AP (e.g. ``retrieval_metrics(...)["per_query_ap"]``) of checkpoints A and B,
            aligned query by query. Queries that are NaN in either are not compared.
        query_ids: ids reported in the lists (default: positions).
        min_delta: a change must be strictly larger than this to count.

    Returns:
        ``improved`` / ``degraded``: lists of ``(query_id, ap_a, ap_b)`` sorted by ``|ap_b - ap_a|``
        descending; ``n_unchanged``, ``n_compared``, ``mean_delta`` (mean of ``ap_b - ap_a``).
    """
    if ap_a.shape != ap_b.shape or ap_a.dim() != 1:
        raise ValueError(f"ap_a and ap_b must be equal-length 1-D, got {tuple(ap_a.shape)} and {tuple(ap_b.shape)}")
    ids = list(range(ap_a.numel())) if query_ids is None else [int(i) for i in query_ids]
    if len(ids) != ap_a.numel():
        raise ValueError(f"query_ids has {len(ids)} entries for {ap_a.numel()} queries")
    a, b = ap_a.double().cpu(), ap_b.double().cpu()
    ok = ~(torch.isnan(a) | torch.isnan(b))
    delta = b - a
    order = torch.argsort(delta.abs().nan_to_num(-1.0), descending=True, stable=True).tolist()
    improved = [(ids[i], float(a[i]), float(b[i])) for i in order if ok[i] and delta[i] > min_delta]
    degraded = [(ids[i], float(a[i]), float(b[i])) for i in order if ok[i] and delta[i] < -min_delta]
    n = int(ok.sum())
    return {
        "improved": improved,
        "degraded": degraded,
        "n_unchanged": n - len(improved) - len(degraded),
        "n_compared": n,
        "mean_delta": float(delta[ok].mean()) if n else math.nan,
    }


class RetrievalMetrics(Metric):
    """Accumulates embeddings + labels (+ optional sample ids) and runs :func:`retrieval_metrics` at
    :meth:`compute` as self-retrieval over everything seen (all ranks gathered).

    ``exclude_self=True`` by default (each sample queries all others). With ``ids`` given, queries are
    ordered by id in ``per_query_ap`` and ``query_ids``, so results do not depend on how samples were
    spread over ranks; without ids the order is rank-concatenated (only the scalars are comparable).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        ks: Sequence[int] = (1, 5, 10, 20, 50),
        exclude_self: bool = True,
        normalize: bool = False,
        chunk_size: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.ks, self.exclude_self, self.normalize, self.chunk_size = tuple(ks), exclude_self, normalize, chunk_size
        self.add_state("emb", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("ids", default=[], dist_reduce_fx="cat")

    def update(self, embeddings: Tensor, labels: Tensor, ids: Tensor | None = None) -> None:
        """Add ``embeddings`` (N, D), int ``labels`` (N,) and optional unique int ``ids`` (N,)."""
        if embeddings.dim() != 2 or labels.shape != (embeddings.shape[0],):
            raise ValueError(f"embeddings (N, D) and labels (N,) expected, got {tuple(embeddings.shape)} and {tuple(labels.shape)}")
        if ids is not None and ids.shape != labels.shape:
            raise ValueError(f"ids must be ({labels.shape[0]},), got {tuple(ids.shape)}")
        self.emb.append(embeddings.detach())
        self.labels.append(labels.detach().long())
        self.ids.append(ids.detach().long() if ids is not None else torch.full_like(labels, -1, dtype=torch.long))

    def compute(self) -> dict[str, Tensor | int]:
        if isinstance(self.emb, list) and not self.emb:
            raise RuntimeError("RetrievalMetrics.compute() called before any update()")
        emb = torch.cat(self.emb) if isinstance(self.emb, list) else self.emb
        labels = torch.cat(self.labels) if isinstance(self.labels, list) else self.labels
        ids = torch.cat(self.ids) if isinstance(self.ids, list) else self.ids
        if bool((ids >= 0).all()):
            order = torch.argsort(ids)
            emb, labels, ids = emb[order], labels[order], ids[order]
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, dim=1)
        out = retrieval_metrics(emb, emb, labels, labels, self.ks, self.exclude_self, self.chunk_size)
        out["query_ids"] = ids
        return out


def expected_random_ap(n_pos: Tensor, n_gallery: Tensor) -> Tensor:
    """Expected average precision of a uniformly random ranking of ``n_gallery`` items, ``n_pos`` of them positive
    (elementwise; NaN where ``n_pos`` is 0).

    With ``rel(r)`` the relevance at rank r, ``AP = (1/R) sum_r rel(r) (sum_{s<=r} rel(s)) / r`` and, for a random
    ranking, ``E[rel(r)] = R/N`` and ``E[rel(r) rel(s)] = R(R-1) / (N(N-1))`` for ``s != r``, so
    ``E[AP] = (H_N + (R - 1)(N - H_N) / (N - 1)) / N`` with the harmonic number ``H_N`` (1 when R = N; ``H_N / N``
    when R = 1). It lies above the positive rate ``R/N`` (the mean over ranks of the precision is not the
    precision's mean at the positives' ranks).
    """
    r, n = n_pos.double(), n_gallery.double()
    top = int(n.max()) if n.numel() else 0
    harmonic = torch.cat([torch.zeros(1, dtype=torch.float64),
                          torch.cumsum(1.0 / torch.arange(1, top + 1, dtype=torch.float64), 0)])
    h = harmonic[n_gallery.long()]
    slope = torch.where(n > 1, (r - 1) / (n - 1).clamp(min=1), torch.zeros_like(r))
    out = (h + slope * (n - h)) / n.clamp(min=1)
    return torch.where(r > 0, out, torch.full_like(out, float("nan")))
