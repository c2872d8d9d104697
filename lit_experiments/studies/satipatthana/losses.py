"""Stage losses of the Satipatthana curriculum and the stage-2 path split."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Stage-2 paths and their trust targets (augmented: ``clamp(1 - severity, 0, 1)``) (F13).
PATHS = ("clean", "augmented", "drunk", "mismatch", "void")


def stability_loss(stability_pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``mean_b ||s_T - s_{T-1}||^2`` from the pair that carries gradients, never from the log (F07)."""
    s_t, s_prev = stability_pair
    return ((s_t - s_prev) ** 2).sum(dim=1).mean()


def probe_diversity_loss(probes: torch.Tensor) -> torch.Tensor:
    """Mean off-diagonal cosine similarity between probes; lower is more diverse (F16)."""
    k = probes.shape[0]
    if k < 2:
        return probes.sum() * 0.0
    p = F.normalize(probes, dim=1)
    sim = p @ p.T
    off = ~torch.eye(k, dtype=torch.bool, device=probes.device)
    return sim[off].mean()


def void_energy_loss(energy_in: torch.Tensor, energy_void: torch.Tensor, margin: float) -> torch.Tensor:
    """Outlier exposure on trajectory energy: in-distribution ``log1p(E)`` down, void ``log1p(E)`` above ``margin``.

    Samatha is frozen in stage 2, so the energy seen by the trust head must already separate data from void;
    this term (weight ``void_energy`` in stage 1, 0 disables it) shapes that.
    """
    return torch.log1p(energy_in).mean() + F.relu(margin - torch.log1p(energy_void)).mean()


def recon_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(x_hat, x.reshape(x_hat.shape))


def per_sample_recon_error(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return ((x_hat - x.reshape(x_hat.shape)) ** 2).flatten(1).mean(dim=1)


def trust_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE on trust logits (the sigmoid lives inside the loss for numerical stability)."""
    return F.binary_cross_entropy_with_logits(logits, targets)


def path_sizes(batch_size: int, ratios: dict[str, float], require_clean: bool = True) -> dict[str, int]:
    """How many of ``batch_size`` samples each path gets, exactly proportional to ``ratios`` (largest remainder).

    Ratios are normalised to sum 1; unknown path names or negative ratios are errors (F13).
    """
    unknown = set(ratios) - set(PATHS)
    if unknown:
        raise ValueError(f"stage-2 path ratios name unknown paths {sorted(unknown)}; expected a subset of {PATHS}")
    if any(r < 0 for r in ratios.values()):
        raise ValueError(f"stage-2 path ratios must be >= 0, got {ratios}")
    total = sum(ratios.values())
    if total <= 0:
        raise ValueError(f"stage-2 path ratios sum to {total}; at least one must be > 0")
    if require_clean and ratios.get("clean", 0.0) <= 0:
        raise ValueError("stage-2 needs a clean path (ratio > 0): without it trust has no notion of 'good' (F13)")
    exact = {k: batch_size * v / total for k, v in ratios.items()}
    sizes = {k: int(v) for k, v in exact.items()}
    left = batch_size - sum(sizes.values())
    for k in sorted(exact, key=lambda k: exact[k] - sizes[k], reverse=True)[:left]:
        sizes[k] += 1
    return {k: sizes.get(k, 0) for k in PATHS}
