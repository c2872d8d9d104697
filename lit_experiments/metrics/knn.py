"""Weighted k-nearest-neighbour classification of embeddings (the kNN monitor of InstDisc / SimSiam).

Definition (Wu et al. 2018, "Unsupervised feature learning via non-parametric instance
discrimination"; the kNN monitor of SimSiam's and solo-learn's training loops):

* Bank ``(Nb, D)`` with labels in ``[0, C)``, queries ``(Nq, D)``. Both are L2-normalised, so the
  similarity of a (query, bank item) pair is the cosine ``s`` in [-1, 1].
* The neighbours of a query are its ``k`` most similar bank items, ranked by similarity descending and
  then bank index ascending (a tie at the k-th place is broken by the lower bank index, so the result
  is deterministic). ``k`` is clipped to ``Nb``.
* Class score ``score_c = sum over neighbours n with label c of exp(s_n / temperature)`` (float64);
  the prediction is ``argmax_c score_c``, the lowest class id among equal scores.
* Accuracy = fraction of queries whose prediction equals their label.

Memory: one chunk of queries x the whole bank is materialised at a time (default 2**23 pairs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

_PAIRS_PER_CHUNK = 1 << 23


def top_k_stable(sims: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top ``k`` per row by (similarity desc, column asc): values and column indices."""
    n = sims.shape[1]
    if k == n:
        return sims, torch.arange(n, device=sims.device).expand_as(sims)
    vals, idx = torch.topk(sims, k + 1, dim=1)
    tied = (vals[:, k - 1] == vals[:, k]).nonzero(as_tuple=True)[0]  # cut inside a tie group
    vals, idx = vals[:, :k].clone(), idx[:, :k].clone()
    if tied.numel():
        # A stable descending sort keeps equal similarities in column order.
        v, i = torch.sort(sims[tied], dim=1, descending=True, stable=True)
        vals[tied], idx[tied] = v[:, :k], i[:, :k]
    return vals, idx


def weighted_knn_predict(
    bank_emb: Tensor,
    bank_labels: Tensor,
    query_emb: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.2,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Weighted kNN prediction; see the module docstring for the definition.

    Args:
        bank_emb: ``(Nb, D)``; bank_labels: int ``(Nb,)`` in ``[0, num_classes)``; query_emb: ``(Nq, D)``.
        k: neighbours per query (clipped to ``Nb``); temperature: > 0.
        chunk_size: queries per chunk (default ``2**23 // Nb``).

    Returns:
        ``pred`` int64 ``(Nq,)`` and ``class_scores`` float64 ``(Nq, num_classes)``.
    """
    if bank_emb.dim() != 2 or query_emb.dim() != 2 or bank_emb.shape[1] != query_emb.shape[1]:
        raise ValueError(
            f"bank_emb and query_emb must be (N, D) with equal D, got {tuple(bank_emb.shape)} and {tuple(query_emb.shape)}"
        )
    if bank_emb.shape[0] == 0:
        raise ValueError("bank_emb is empty: the kNN bank needs at least one item")
    if bank_labels.shape != (bank_emb.shape[0],):
        raise ValueError(f"bank_labels must be ({bank_emb.shape[0]},), got {tuple(bank_labels.shape)}")
    if num_classes < 1 or k < 1 or not temperature > 0:
        raise ValueError(f"need num_classes >= 1, k >= 1, temperature > 0; got {num_classes}, {k}, {temperature}")
    bank_labels = bank_labels.long()
    if bank_labels.numel() and (bank_labels.min() < 0 or bank_labels.max() >= num_classes):
        raise ValueError(
            f"bank_labels must lie in [0, {num_classes}), got min {int(bank_labels.min())} max {int(bank_labels.max())}"
        )
    nb, nq = bank_emb.shape[0], query_emb.shape[0]
    k = min(k, nb)
    bank_t = F.normalize(bank_emb.detach(), dim=1).t()
    query = F.normalize(query_emb.detach(), dim=1)
    step = chunk_size or max(1, _PAIRS_PER_CHUNK // nb)
    scores = torch.zeros(nq, num_classes, dtype=torch.float64, device=query.device)
    for lo in range(0, nq, step):
        sims, idx = top_k_stable(query[lo : lo + step] @ bank_t, k)
        weights = torch.exp(sims.double() / temperature)
        scores[lo : lo + step].scatter_add_(1, bank_labels[idx], weights)
    return scores.argmax(dim=1), scores


class WeightedKNNAccuracy(Metric):
    """Accuracy of :func:`weighted_knn_predict` with a bank and queries gathered over all updates.

    ``update(embeddings, labels, role)`` adds samples to the bank (``role="bank"``, e.g. the training
    set) or to the queries (``role="query"``, e.g. the validation set). States are lists reduced with
    ``cat``, so under DDP every rank sees the whole bank and all queries at ``compute()``, which returns
    the accuracy as a float tensor.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self, num_classes: int, k: int = 200, temperature: float = 0.2, chunk_size: int | None = None, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if num_classes < 1 or k < 1 or not temperature > 0:
            raise ValueError(f"need num_classes >= 1, k >= 1, temperature > 0; got {num_classes}, {k}, {temperature}")
        self.num_classes, self.k, self.temperature, self.chunk_size = num_classes, k, temperature, chunk_size
        for name in ("bank_emb", "bank_labels", "query_emb", "query_labels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, embeddings: Tensor, labels: Tensor, role: str) -> None:
        """Add ``embeddings`` (N, D) with int ``labels`` (N,) to the ``"bank"`` or the ``"query"`` set."""
        if role not in ("bank", "query"):
            raise ValueError(f"role must be 'bank' or 'query', got {role!r}")
        if embeddings.dim() != 2 or labels.shape != (embeddings.shape[0],):
            raise ValueError(f"embeddings (N, D) and labels (N,) expected, got {tuple(embeddings.shape)} and {tuple(labels.shape)}")
        getattr(self, f"{role}_emb").append(embeddings.detach())
        getattr(self, f"{role}_labels").append(labels.detach().long())

    @staticmethod
    def _cat(state: list[Tensor] | Tensor) -> Tensor | None:
        if isinstance(state, list):
            return torch.cat(state) if state else None
        return state

    def compute(self) -> Tensor:
        bank, bank_labels = self._cat(self.bank_emb), self._cat(self.bank_labels)
        query, query_labels = self._cat(self.query_emb), self._cat(self.query_labels)
        if bank is None or bank.shape[0] == 0:
            raise RuntimeError("WeightedKNNAccuracy.compute() needs a bank: call update(..., role='bank') first")
        if query is None or query.shape[0] == 0:
            raise RuntimeError("WeightedKNNAccuracy.compute() needs queries: call update(..., role='query') first")
        pred, _ = weighted_knn_predict(
            bank, bank_labels, query, self.num_classes, self.k, self.temperature, self.chunk_size
        )
        return (pred == query_labels).float().mean()
