"""Losses of the multi-label study, each a constructor argument (the module never picks one by a string).

* :class:`MultiLabelLoss`: BCE-with-logits or ASL (Ridnik et al., ICCV 2021), mean over all ``B x C`` entries.
* :class:`CosineLoss`: the seed's cosine loss, made precise here as pairwise similarity matching (see below).
* :class:`HashLoss`: quantisation + bit balance on the tanh hash layer's output.
* :class:`CombinedLoss`: ``loss = cls + cosine_weight * cosine + hash_weight * hash`` (the study's loss dict: the
  total under ``loss``, each term unweighted under its name, weights ``<term>_weight``); a weight 0 removes the
  term from the graph (the seed's AB-3 "BCE only" and the hash-weight sweep are YAML deltas, LESSONS F28).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_experiments.core.errors import ConfigError


class MultiLabelLoss(nn.Module):
    """BCE-with-logits or the Asymmetric Loss (ASL) on logits (B, C) and multi-hot targets (B, C).

    ASL (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021, Eq. 3-4), with
    ``p = sigmoid(logit)`` and the shifted probability ``p_m = max(p - clip, 0)``::

        L+ = (1 - p) ** gamma_pos * log(p)              (positives)
        L- = p_m ** gamma_neg * log(1 - p_m)            (negatives)
        loss = -(y L+ + (1 - y) L-)

    As in the reference implementation (Alibaba-MIIL/ASL ``AsymmetricLoss``), probabilities inside the logs
    are clamped at ``eps``; the logs are computed as ``logsigmoid`` clamped at ``log(eps)`` (the same values,
    without the cancellation of ``log(1 - sigmoid(x))`` for large ``x``). ``detach_focusing=True`` stops the
    gradient through the focusing factors (the reference training script's ``disable_torch_grad_focal_loss``);
    the default follows the paper's equations and lets it flow.

    Reduction: the **mean over all B x C entries**, the same as ``F.binary_cross_entropy_with_logits``; the
    reference ASL returns the sum (ours = reference / (B C)). With ``gamma_neg = gamma_pos = 0`` and
    ``clip = 0`` ASL equals BCE (up to the ``eps`` clamp, i.e. for ``|logit| < ~18``).

    Args:
        kind: ``"bce"`` or ``"asl"`` (the ASL options are ignored for ``"bce"``).
        gamma_neg / gamma_pos: focusing exponents for negatives / positives (paper default 4 / 0).
        clip: probability margin ``m`` of the negatives (0 disables the shift).
        eps: clamp of the probabilities inside the logs.
        detach_focusing: no gradient through the focusing factors.
    """

    def __init__(self, kind: Literal["bce", "asl"] = "bce", gamma_neg: float = 4.0, gamma_pos: float = 0.0,
                 clip: float = 0.05, eps: float = 1e-8, detach_focusing: bool = False) -> None:
        super().__init__()
        if kind not in ("bce", "asl"):
            raise ConfigError(f"MultiLabelLoss: kind={kind!r}; expected 'bce' or 'asl'")
        if gamma_neg < 0 or gamma_pos < 0:
            raise ConfigError(f"MultiLabelLoss: gamma_neg={gamma_neg}, gamma_pos={gamma_pos}; "
                              "expected both >= 0")
        if not 0.0 <= clip < 1.0:
            raise ConfigError(f"MultiLabelLoss: clip={clip}; expected 0 <= clip < 1")
        if not 0.0 < eps < 1.0:
            raise ConfigError(f"MultiLabelLoss: eps={eps}; expected 0 < eps < 1")
        self.kind, self.gamma_neg, self.gamma_pos = kind, float(gamma_neg), float(gamma_pos)
        self.clip, self.eps, self.detach_focusing = float(clip), float(eps), bool(detach_focusing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape != targets.shape:
            raise ValueError(f"MultiLabelLoss: logits {tuple(logits.shape)} and targets "
                             f"{tuple(targets.shape)} must have the same shape (B, C)")
        y = targets.to(logits.dtype)
        if self.kind == "bce":
            return F.binary_cross_entropy_with_logits(logits, y)
        log_eps = math.log(self.eps)
        p = torch.sigmoid(logits)
        log_pos = F.logsigmoid(logits).clamp_min(log_eps)
        if self.clip > 0:
            neg_prob = (torch.sigmoid(-logits) + self.clip).clamp(max=1.0)  # 1 - p_m
            log_neg = torch.log(neg_prob.clamp_min(self.eps))
            p_m = 1.0 - neg_prob
        else:
            log_neg = F.logsigmoid(-logits).clamp_min(log_eps)
            p_m = p
        w_pos, w_neg = (1.0 - p) ** self.gamma_pos, p_m ** self.gamma_neg
        if self.detach_focusing:
            w_pos, w_neg = w_pos.detach(), w_neg.detach()
        loss = y * w_pos * log_pos + (1.0 - y) * w_neg * log_neg
        return -loss.mean()


class CosineLoss(nn.Module):
    """The seed's cosine loss, defined here (the seed log names it but does not define it) as AGCH-inspired
    *similarity matching*: the pairwise cosine similarities of the embeddings should equal the pairwise cosine
    similarities of the multi-hot label vectors (AGCH proper reconstructs a feature-derived similarity matrix
    with the cosine similarity of hash codes; here the target comes from the labels)::

        S_ij = cos(y_i, y_j) in [0, 1]   (|y_i & y_j| / sqrt(|y_i| |y_j|); 0 when a row has no label)
        loss = mean over i != j of (cos(f_i, f_j) - S_ij) ** 2

    So images sharing all labels are pulled together, images sharing none are pushed to orthogonal (not
    opposite) directions. The diagonal is left out; a batch of one sample gives 0 (still attached to the
    graph).
    """

    def forward(self, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or targets.ndim != 2 or len(embeddings) != len(targets):
            raise ValueError(f"CosineLoss: embeddings {tuple(embeddings.shape)} and targets "
                             f"{tuple(targets.shape)} must be (B, D) and (B, C)")
        f = F.normalize(embeddings, dim=1)
        y = F.normalize(targets.to(embeddings.dtype), dim=1)
        diff = (f @ f.T - y @ y.T) ** 2
        n = len(f)
        if n < 2:
            return diff.sum() * 0.0
        off = ~torch.eye(n, dtype=torch.bool, device=f.device)
        return diff[off].mean()


class HashLoss(nn.Module):
    """Regularisers of a tanh hash layer's output ``h`` (B, K) in (-1, 1)::

        quantization = mean over B x K of (|h| - 1) ** 2           (push entries towards +-1)
        balance      = mean over K of (mean over B of h) ** 2       (each bit +1 on half of the batch)
        loss = quantization_weight * quantization + balance_weight * balance
    """

    def __init__(self, quantization_weight: float = 1.0, balance_weight: float = 1.0) -> None:
        super().__init__()
        if quantization_weight < 0 or balance_weight < 0:
            raise ConfigError(f"HashLoss: quantization_weight={quantization_weight}, "
                              f"balance_weight={balance_weight}; expected both >= 0")
        self.quantization_weight, self.balance_weight = float(quantization_weight), float(balance_weight)

    def terms(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """The two unweighted terms, ``quantization`` and ``balance``."""
        if h.ndim != 2:
            raise ValueError(f"HashLoss: hash has shape {tuple(h.shape)}; expected (B, bits)")
        return {"quantization": ((h.abs() - 1.0) ** 2).mean(), "balance": (h.mean(dim=0) ** 2).mean()}

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        t = self.terms(h)
        return self.quantization_weight * t["quantization"] + self.balance_weight * t["balance"]


class CombinedLoss(nn.Module):
    """``loss = cls(logits, y) + cosine_weight * cosine(outputs[cosine_on], y) + hash_weight * hash(h)``.

    ``forward(outputs, targets)`` takes a head's output dict and the multi-hot targets and returns a dict:
    ``cls``, ``cosine``, ``hash``, ``hash_quantization``, ``hash_balance`` (each unweighted) and the total ``loss``.
    A term with weight 0 is not part of ``loss``'s graph: it is only reported, computed without gradient,
    when the head provides its input (e.g. the seed's AB-3 "BCE only" still logs how binary the hash is).
    A term with weight > 0 whose input the head does not return (``hash_weight > 0`` with ``hash_bits: null``)
    is a config error.

    Args:
        cls: the classification loss (BCE or ASL).
        cosine_weight / hash_weight: weights of the cosine and hash terms (0: disabled).
        cosine_loss: the cosine loss part (default ``CosineLoss()``).
        hash_loss: the hash loss part (default ``HashLoss()``, its own weights split quantisation / balance).
        cosine_on: the head output the cosine loss reads: ``"fused"`` (the seed's) or ``"hash"``.
    """

    def __init__(self, cls: MultiLabelLoss | None = None, cosine_weight: float = 0.0,
                 hash_weight: float = 0.0,
                 cosine_loss: CosineLoss | None = None, hash_loss: HashLoss | None = None,
                 cosine_on: Literal["fused", "hash"] = "fused") -> None:
        super().__init__()
        if cosine_weight < 0 or hash_weight < 0:
            raise ConfigError(f"CombinedLoss: cosine_weight={cosine_weight}, hash_weight={hash_weight}; "
                              "expected both >= 0 (0 disables a term)")
        if cosine_on not in ("fused", "hash"):
            raise ConfigError(f"CombinedLoss: cosine_on={cosine_on!r}; expected 'fused' or 'hash'")
        self.cls = cls if cls is not None else MultiLabelLoss()
        self.cosine_loss = cosine_loss if cosine_loss is not None else CosineLoss()
        self.hash_loss = hash_loss if hash_loss is not None else HashLoss()
        self.cosine_weight, self.hash_weight = float(cosine_weight), float(hash_weight)
        self.cosine_on = cosine_on

    def _need(self, outputs: dict[str, torch.Tensor], key: str, weight_name: str,
              weight: float) -> torch.Tensor:
        if key not in outputs:
            fix = " or give the head a hash layer (hash_bits)" if key == "hash" else ""
            raise ConfigError(f"CombinedLoss: {weight_name}={weight} needs the head output {key!r}, which "
                              f"the head does not return (it returns {sorted(outputs)}); set {weight_name}: 0"
                              + fix)
        return outputs[key]

    def forward(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"cls": self.cls(outputs["logits"], targets)}
        total = out["cls"]
        on = self.cosine_weight > 0
        if on or self.cosine_on in outputs:
            emb = self._need(outputs, self.cosine_on, "cosine_weight", self.cosine_weight)
            with torch.set_grad_enabled(on and torch.is_grad_enabled()):
                out["cosine"] = self.cosine_loss(emb, targets)
            if on:
                total = total + self.cosine_weight * out["cosine"]
        on = self.hash_weight > 0
        if on or "hash" in outputs:
            h = self._need(outputs, "hash", "hash_weight", self.hash_weight)
            with torch.set_grad_enabled(on and torch.is_grad_enabled()):
                terms = self.hash_loss.terms(h)
                out["hash"] = (self.hash_loss.quantization_weight * terms["quantization"]
                               + self.hash_loss.balance_weight * terms["balance"])
            out["hash_quantization"], out["hash_balance"] = terms["quantization"], terms["balance"]
            if on:
                total = total + self.hash_weight * out["hash"]
        out["loss"] = total
        return out
