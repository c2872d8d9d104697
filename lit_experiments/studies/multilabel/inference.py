"""Inference of the multi-label study: threshold policies (F41), kNN scores, the per-class table (F30).

* :class:`ThresholdPolicy`: the fixed 0.5 threshold on probabilities and per-class thresholds tuned with
  :func:`lit_experiments.metrics.tune_thresholds` on the fold's *validation* split only. ``evaluate``
  never calls the tuner, and ``fit`` refuses to run once ``evaluate`` has, so test labels cannot reach
  the thresholds (F41). ``state_dict`` stores the thresholds with the run and the checkpoint.
* :func:`knn_scores`: class scores of a query = (weighted) mean of its ``k`` nearest bank items' label
  vectors, over L2-normalised embeddings (cosine) or sign codes of tanh hash outputs (Hamming), with torch
  ``topk`` chunked over queries, or with faiss when installed. :class:`ProductQuantizerIndex` is the
  seed's planned product-quantisation alternative to the hash layer (faiss ``IndexPQ``).
* :func:`per_class_table` / :func:`write_per_class`: AP, support, tuned threshold and F1 at both policies
  per class, as rows, a CSV and a bar chart (``matplotlib.figure.Figure``, Agg canvas, no pyplot).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lit_experiments.metrics import multilabel_metrics, tune_thresholds
from lit_experiments.metrics.knn import top_k_stable

FIXED_THRESHOLD = 0.5
PREFIX = {"fixed": "t05/", "tuned": "tuned/"}
# Metrics that depend on the threshold get a policy prefix; the ranking metrics are reported once.
THRESHOLDED = ("f1_macro", "precision_macro", "recall_macro", "hamming")
_PAIRS_PER_CHUNK = 1 << 23
_FAISS_HINT = "faiss is not installed: `pip install faiss-cpu` (or pass use_faiss=False for torch topk)"


def _probabilities(scores: Tensor, name: str) -> Tensor:
    if scores.dim() != 2:
        raise ValueError(f"{name} must be (N, C), got shape {tuple(scores.shape)}")
    if scores.numel() and (scores.min() < 0 or scores.max() > 1):
        raise ValueError(
            f"{name} must be probabilities in [0, 1] (apply torch.sigmoid to logits): "
            f"got min {float(scores.min()):.4g}, max {float(scores.max()):.4g}"
        )
    return scores


class ThresholdPolicy:
    """Two threshold policies for one fold: ``"fixed"`` (0.5 on probabilities) and ``"tuned"``.

    Use one instance per fold: ``fit(val_scores, val_targets)`` on the validation split, then
    ``evaluate(test_scores, test_targets)`` on the test split. Scores are probabilities; on DDP pass the
    scores gathered over all ranks (e.g. the states of a ``MultilabelMetrics``).
    """

    def __init__(self) -> None:
        self._tuned: Tensor | None = None
        self._n_fit = 0
        self._evaluated = False

    @property
    def fitted(self) -> bool:
        return self._tuned is not None

    def fit(self, val_scores: Tensor, val_targets: Tensor) -> ThresholdPolicy:
        """Tune per-class thresholds on the validation split (classes without positives keep 0.5)."""
        if self._evaluated:
            raise RuntimeError(
                "ThresholdPolicy.fit() after evaluate(): thresholds must be tuned before any test labels "
                "are seen (F41); use a fresh ThresholdPolicy per fold"
            )
        _probabilities(val_scores, "val_scores")
        self._tuned = tune_thresholds(val_scores.detach(), val_targets.detach(), default=FIXED_THRESHOLD).cpu()
        self._n_fit = int(val_scores.shape[0])
        return self

    def thresholds(self, policy: str = "tuned") -> Tensor:
        """float64 ``(C,)`` thresholds of ``policy`` (``"fixed"`` or ``"tuned"``)."""
        tuned = self._require_fit()
        if policy == "tuned":
            return tuned.clone()
        if policy == "fixed":
            return torch.full_like(tuned, FIXED_THRESHOLD)
        raise ValueError(f"policy must be 'fixed' or 'tuned', got {policy!r}")

    def apply(self, scores: Tensor, policy: str = "tuned") -> Tensor:
        """0/1 predictions ``(N, C)`` (int64): ``score >= threshold`` of ``policy``."""
        _probabilities(scores, "scores")
        th = self.thresholds(policy)
        if scores.shape[1] != th.numel():
            raise ValueError(f"scores have {scores.shape[1]} classes, the thresholds {th.numel()}")
        return (scores.double() >= th.to(scores.device)).long()

    def evaluate(self, test_scores: Tensor, test_targets: Tensor) -> dict[str, Tensor | int]:
        """Metrics of :func:`multilabel_metrics` at both policies, side by side.

        Threshold-free metrics (``map``, ``auc_macro``, ``lrap`` and the excluded-class counts) appear once,
        unprefixed; ``f1_macro``, ``precision_macro``, ``recall_macro`` and ``hamming`` appear as ``t05/...``
        and ``tuned/...``. The thresholds are read, never tuned, here.
        """
        tuned = self._require_fit()
        _probabilities(test_scores, "test_scores")
        if test_scores.shape[1] != tuned.numel():
            raise ValueError(f"test_scores have {test_scores.shape[1]} classes, the thresholds {tuned.numel()}")
        self._evaluated = True
        out: dict[str, Tensor | int] = {}
        for policy, prefix in PREFIX.items():
            th = self.thresholds(policy).to(test_scores.device)
            metrics = multilabel_metrics(test_scores.detach(), test_targets.detach(), th)
            for key, value in metrics.items():
                if key in THRESHOLDED:
                    out[prefix + key] = value
                else:
                    out.setdefault(key, value)
        return out

    def state_dict(self) -> dict[str, Any]:
        """``{"thresholds": float64 (C,), "fixed": 0.5, "n_fit_samples", "evaluated"}`` (fit first)."""
        return {
            "thresholds": self._require_fit().clone(),
            "fixed": FIXED_THRESHOLD,
            "n_fit_samples": self._n_fit,
            "evaluated": self._evaluated,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"thresholds", "n_fit_samples", "evaluated"} - set(state)
        if missing:
            raise KeyError(f"ThresholdPolicy state is missing {sorted(missing)}")
        th = torch.as_tensor(state["thresholds"], dtype=torch.float64).cpu()
        if th.dim() != 1:
            raise ValueError(f"ThresholdPolicy state 'thresholds' must be (C,), got shape {tuple(th.shape)}")
        self._tuned, self._n_fit, self._evaluated = th.clone(), int(state["n_fit_samples"]), bool(state["evaluated"])

    def _require_fit(self) -> Tensor:
        if self._tuned is None:
            raise RuntimeError("ThresholdPolicy is not fitted: call fit(val_scores, val_targets) first")
        return self._tuned


# --------------------------------------------------------------------------------------------- kNN
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


# ----------------------------------------------------------------------------------- per-class table
def per_class_table(
    scores: Tensor, targets: Tensor, thresholds: Tensor, class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per class: ``class``, ``ap``, ``auc``, ``support``, ``threshold`` (tuned), ``f1_t05``,
    ``f1_tuned``, ``excluded``.

    ``ap`` / ``auc`` / F1 are :func:`multilabel_metrics` on that class's column (AP = sklearn's
    ``average_precision_score``). A class without positives has ``ap = NaN`` and ``excluded = True``: it
    is left out of ``map`` (F30). ``auc`` is NaN also for a class without negatives.
    """
    if scores.dim() != 2 or targets.shape != scores.shape:
        raise ValueError(f"scores and targets must both be (N, C): got {tuple(scores.shape)} and {tuple(targets.shape)}")
    c = scores.shape[1]
    th = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
    if th.numel() != c or len(class_names) != c:
        raise ValueError(f"need {c} thresholds and {c} class names, got {th.numel()} and {len(class_names)}")
    rows = []
    for j, name in enumerate(class_names):
        col_s, col_t = scores[:, j : j + 1], targets[:, j : j + 1]
        fixed = multilabel_metrics(col_s, col_t, FIXED_THRESHOLD)
        tuned = multilabel_metrics(col_s, col_t, th[j : j + 1].to(scores.device))
        rows.append({
            "class": str(name),
            "ap": float(fixed["map"]),
            "auc": float(fixed["auc_macro"]),
            "support": int(col_t.sum()),
            "threshold": float(th[j]),
            "f1_t05": float(fixed["f1_macro"]),
            "f1_tuned": float(tuned["f1_macro"]),
            "excluded": bool(fixed["map_excluded_classes"]),
        })
    return rows


def write_per_class(rows: Sequence[dict[str, Any]], csv_path: str | Path, png_path: str | Path) -> None:
    """The per-class table as a CSV (NaN written as ``nan``) and a horizontal bar chart of AP and F1 at
    both policies; excluded classes (no positives) are labelled as such."""
    if not rows:
        raise ValueError("write_per_class: no rows")
    csv_path, png_path = Path(csv_path), Path(png_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(rows)
    fig = Figure(figsize=(7, 1.2 + 0.35 * n))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(n)
    h = 0.27
    for off, key, label in ((-h, "ap", "AP"), (0.0, "f1_t05", "F1 @ 0.5"), (h, "f1_tuned", "F1 @ tuned")):
        vals = [0.0 if math.isnan(r[key]) else r[key] for r in rows]
        ax.barh(y + off, vals, height=h, label=label)
    ax.set_yticks(y, [f"{r['class']} (n={r['support']}){' excluded' if r['excluded'] else ''}" for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score")
    ax.set_title("Per-class AP and F1 (thresholds tuned on validation)")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
