"""Vitakka: pick the nearest probe and mix it into the initial state ``s0`` (with a gate)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class VitakkaOutput:
    """What Vitakka decided for each sample.

    Attributes:
        s0: initial Samatha state (B, D), with grad.
        probs: softmax over probes (B, K), with grad; Vicara's per-probe refiners are mixed with it.
        winner: index of the most similar probe (B,), for analysis.
        confidence: probability of the winner (B,).
        max_similarity: cosine similarity to the winner probe (B,).
        gate: gate value per sample (B,): soft in training, 0/1 in eval.
    """

    s0: torch.Tensor
    probs: torch.Tensor
    winner: torch.Tensor
    confidence: torch.Tensor
    max_similarity: torch.Tensor
    gate: torch.Tensor


class Vitakka(nn.Module):
    """K trainable probes, similarity softmax with temperature, ``s0 = (alpha z + (1 - alpha) probs @ P) * gate``.

    The gate has **separate** thresholds for training (soft sigmoid gate, default open: -1 is below every
    cosine similarity) and evaluation (hard 0/1 gate), so a closed gate at initialisation can never stop
    the probes from learning (F10).

    The state size D is the adapter's ``dim``: :meth:`build` creates the probes (the module's dry run calls it,
    F09; a first forward builds them from its input otherwise).

    Args:
        num_probes: number of probes K.
        temperature: softmax temperature on cosine similarities.
        alpha: weight of the input ``z`` in ``s0``.
        train_gate_threshold: soft-gate threshold used in training mode.
        eval_gate_threshold: hard-gate threshold used in eval mode.
        gate_sharpness: slope of the soft gate ``sigmoid(sharpness * (sim - threshold))``.
        seed: optional seed of the probe initialisation (default: the global RNG).
    """

    def __init__(self, num_probes: int = 8, temperature: float = 0.2, alpha: float = 0.5,
                 train_gate_threshold: float = -1.0, eval_gate_threshold: float = -1.0,
                 gate_sharpness: float = 10.0, seed: int | None = None) -> None:
        super().__init__()
        if num_probes < 1:
            raise ValueError(f"Vitakka: num_probes={num_probes} must be >= 1")
        if temperature <= 0:
            raise ValueError(f"Vitakka: temperature={temperature} must be > 0")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Vitakka: alpha={alpha} must lie in [0, 1]")
        self.num_probes = num_probes
        self.seed = seed
        self.register_parameter("probes", None)
        self.temperature = temperature
        self.alpha = alpha
        self.train_gate_threshold = train_gate_threshold
        self.eval_gate_threshold = eval_gate_threshold
        self.gate_sharpness = gate_sharpness

    def build(self, dim: int, device: torch.device | None = None) -> Vitakka:
        """Create the K probes in a state of size ``dim`` (once)."""
        if self.probes is None:
            if dim < 1:
                raise ValueError(f"Vitakka: dim={dim} must be >= 1")
            gen = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
            probes = F.normalize(torch.randn(self.num_probes, dim, generator=gen), dim=1)
            self.probes = nn.Parameter(probes.to(device) if device is not None else probes)
        return self

    @property
    def normalized_probes(self) -> torch.Tensor:
        return F.normalize(self.probes, dim=1)

    def forward(self, z: torch.Tensor) -> VitakkaOutput:
        self.build(z.shape[1], z.device)
        probes = self.normalized_probes
        sims = F.normalize(z, dim=1) @ probes.T  # (B, K) cosine similarities, per sample
        probs = torch.softmax(sims / self.temperature, dim=1)
        max_sim, winner = sims.max(dim=1)
        if self.training:
            gate = torch.sigmoid(self.gate_sharpness * (max_sim - self.train_gate_threshold))
        else:
            gate = (max_sim > self.eval_gate_threshold).to(z.dtype)
        s0 = (self.alpha * z + (1.0 - self.alpha) * probs @ probes) * gate.unsqueeze(1)
        return VitakkaOutput(s0=s0, probs=probs, winner=winner, confidence=probs.gather(1, winner[:, None])[:, 0],
                             max_similarity=max_sim, gate=gate)
