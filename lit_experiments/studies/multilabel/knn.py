"""kNN inference of the multi-label study (a helper of :mod:`.evaluation`).

* :func:`knn_scores`: class scores of a query = (weighted) mean of its ``k`` nearest bank items' label vectors,
  over L2-normalised embeddings (cosine) or sign codes of tanh hash outputs (Hamming), with torch ``topk``
  chunked over queries, or with faiss when installed.
* :class:`ProductQuantizerIndex`: the seed's planned product-quantisation alternative to the hash layer (faiss
  ``IndexPQ``).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lit_experiments.metrics.knn import top_k_stable

_PAIRS_PER_CHUNK = 1 << 23
_FAISS_HINT = "faiss is not installed: `pip install faiss-cpu` (or pass use_faiss=False for torch topk)"


def _faiss(use_faiss: bool | None) -> Any:
    """The faiss module, or None for the torch path; ``use_faiss=True`` without faiss is an error."""
    if use_faiss is False:
        return None
    try:
        import faiss
    except ImportError as err:
        if use_faiss:
            raise ImportError(_FAISS_HINT) from err
        return None
    return faiss


def sign_codes(hash_out: Tensor) -> Tensor:
    """``{-1, +1}`` float32 codes of tanh hash outputs: ``+1`` where ``x >= 0`` (0 maps to +1)."""
    return torch.where(hash_out >= 0, 1.0, -1.0).to(torch.float32)


def _neighbour_scores(sims: Tensor, idx: Tensor, bank_targets: Tensor, temperature: float | None) -> Tensor:
    """Mean (``temperature=None``) or ``softmax(sim / temperature)``-weighted mean of the neighbours'
    label vectors; float64 ``(q, C)``."""
    labels = bank_targets[idx]  # (q, k, C)
    if temperature is None:
        return labels.mean(1)
    w = torch.softmax(sims.double() / temperature, dim=1)
    return torch.einsum("qk,qkc->qc", w, labels)


def knn_scores(
    query_emb: Tensor,
    bank_emb: Tensor,
    bank_targets: Tensor,
    k: int = 10,
    metric: str = "cosine",
    temperature: float | None = None,
    use_faiss: bool | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Multi-label kNN class scores ``(Nq, C)`` float64 in [0, 1].

    Definition:

    * ``metric="cosine"``: similarity = cosine of the L2-normalised embeddings.
      ``metric="hamming"``: embeddings are tanh hash outputs, turned into sign codes (:func:`sign_codes`);
      Hamming distance ``d = (bits - codes_q . codes_b) / 2``; similarity ``s = 1 - 2 d / bits`` (in
      [-1, 1], the cosine of the codes).
    * The neighbours of a query are its ``k`` most similar bank items (``k`` clipped to ``Nb``); in the
      torch path a tie at the k-th place is broken by the lower bank index (deterministic).
    * Score of class ``c`` = mean over neighbours of their 0/1 label ``c``; with ``temperature`` the mean
      is weighted by ``softmax(s / temperature)`` over the ``k`` neighbours.

    ``use_faiss``: ``None`` uses faiss when installed (``IndexFlatIP`` / ``IndexBinaryFlat``), ``True``
    requires it, ``False`` never uses it. faiss breaks ties in its own order, so near ties the two paths
    may pick different neighbours. Torch path memory: one chunk of ``chunk_size`` queries x the whole bank
    (default ``2**23`` pairs).
    """
    if query_emb.dim() != 2 or bank_emb.dim() != 2 or query_emb.shape[1] != bank_emb.shape[1]:
        raise ValueError(
            f"query_emb and bank_emb must be (N, D) with equal D, got {tuple(query_emb.shape)} and {tuple(bank_emb.shape)}"
        )
    nb = bank_emb.shape[0]
    if nb == 0:
        raise ValueError("bank_emb is empty: the kNN bank needs at least one item")
    if bank_targets.dim() != 2 or bank_targets.shape[0] != nb:
        raise ValueError(f"bank_targets must be ({nb}, C), got {tuple(bank_targets.shape)}")
    if metric not in ("cosine", "hamming"):
        raise ValueError(f"metric must be 'cosine' or 'hamming', got {metric!r}")
    if k < 1 or (temperature is not None and not temperature > 0):
        raise ValueError(f"need k >= 1 and temperature None or > 0; got k={k}, temperature={temperature}")
    k = min(k, nb)
    targets = bank_targets.detach().double()
    bits = query_emb.shape[1]
    if metric == "cosine":
        query, bank = F.normalize(query_emb.detach().float(), dim=1), F.normalize(bank_emb.detach().float(), dim=1)
    else:
        query, bank = sign_codes(query_emb.detach()), sign_codes(bank_emb.detach())
    faiss = _faiss(use_faiss)
    if faiss is not None:
        sims, idx = _faiss_search(faiss, query, bank, k, metric)
        return _neighbour_scores(sims.to(query.device), idx.to(query.device), targets, temperature)
    step = chunk_size or max(1, _PAIRS_PER_CHUNK // nb)
    out = torch.empty(query.shape[0], targets.shape[1], dtype=torch.float64, device=query.device)
    bank_t = bank.t()
    for lo in range(0, query.shape[0], step):
        sims, idx = top_k_stable(query[lo : lo + step] @ bank_t, k)  # +-1 codes: exact integer dot products
        if metric == "hamming":
            sims = sims.double() / bits
        out[lo : lo + step] = _neighbour_scores(sims, idx, targets, temperature)
    return out


def _pack(codes: Tensor) -> np.ndarray:
    """``{-1, +1}`` codes ``(N, bits)`` -> uint8 ``(N, ceil(bits / 8))`` (bit 1 for +1, zero padding)."""
    bits = (codes.cpu().numpy() > 0).astype(np.uint8)
    pad = (-bits.shape[1]) % 8
    if pad:
        bits = np.pad(bits, ((0, 0), (0, pad)))
    return np.ascontiguousarray(np.packbits(bits, axis=1))


def _faiss_search(faiss: Any, query: Tensor, bank: Tensor, k: int, metric: str) -> tuple[Tensor, Tensor]:
    """Exact search with faiss: similarities ``(Nq, k)`` (same scale as the torch path) and bank indices."""
    if metric == "cosine":
        index = faiss.IndexFlatIP(bank.shape[1])
        index.add(np.ascontiguousarray(bank.cpu().numpy(), dtype=np.float32))
        sims, idx = index.search(np.ascontiguousarray(query.cpu().numpy(), dtype=np.float32), k)
        return torch.from_numpy(sims).double(), torch.from_numpy(idx).long()
    bits = bank.shape[1]
    packed = _pack(bank)
    index = faiss.IndexBinaryFlat(packed.shape[1] * 8)
    index.add(packed)
    dist, idx = index.search(_pack(query), k)
    return 1.0 - 2.0 * torch.from_numpy(dist).double() / bits, torch.from_numpy(idx).long()


class ProductQuantizerIndex:
    """Product-quantised kNN bank (faiss ``IndexPQ``): the seed's planned alternative to the hash layer.

    Embeddings are L2-normalised and compared by inner product (cosine); each is stored as ``m``
    sub-vector codes of ``nbits`` bits (``m * nbits / 8`` bytes). ``build`` trains the quantiser on the bank
    (needs at least ``2**nbits`` items) and adds it; ``scores`` is :func:`knn_scores` over the bank.
    """

    def __init__(self, m: int = 8, nbits: int = 8) -> None:
        self._faiss = _faiss(True)
        if m < 1 or nbits < 1:
            raise ValueError(f"need m >= 1 and nbits >= 1, got m={m}, nbits={nbits}")
        self.m, self.nbits = m, nbits
        self.index: Any = None
        self.bank_targets: Tensor | None = None

    @property
    def code_bytes(self) -> int:
        return math.ceil(self.m * self.nbits / 8)

    def build(self, bank_emb: Tensor, bank_targets: Tensor) -> ProductQuantizerIndex:
        n, d = bank_emb.shape
        if d % self.m:
            raise ValueError(f"embedding dim {d} must be divisible by m={self.m}")
        if n < 2**self.nbits:
            raise ValueError(f"ProductQuantizerIndex needs >= 2**nbits = {2**self.nbits} bank items to train, got {n}")
        if bank_targets.dim() != 2 or bank_targets.shape[0] != n:
            raise ValueError(f"bank_targets must be ({n}, C), got {tuple(bank_targets.shape)}")
        x = np.ascontiguousarray(F.normalize(bank_emb.detach().float(), dim=1).cpu().numpy())
        self.index = self._faiss.IndexPQ(d, self.m, self.nbits, self._faiss.METRIC_INNER_PRODUCT)
        self.index.train(x)
        self.index.add(x)
        self.bank_targets = bank_targets.detach().double().cpu()
        return self

    def scores(self, query_emb: Tensor, k: int = 10, temperature: float | None = None) -> Tensor:
        if self.index is None or self.bank_targets is None:
            raise RuntimeError("ProductQuantizerIndex is empty: call build(bank_emb, bank_targets) first")
        k = min(k, self.bank_targets.shape[0])
        q = np.ascontiguousarray(F.normalize(query_emb.detach().float(), dim=1).cpu().numpy())
        sims, idx = self.index.search(q, k)
        return _neighbour_scores(torch.from_numpy(sims), torch.from_numpy(idx).long(), self.bank_targets, temperature)
