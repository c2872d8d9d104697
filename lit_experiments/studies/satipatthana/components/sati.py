"""Sati: runs the Vitakka -> Vicara loop, decides when each sample stops, applies drunk mode.

Returns a :class:`SamathaOutput` whose fields separate what a loss may use (with gradients) from the
detached log (F07).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .santana import SantanaLog
from .vicara import Vicara
from .vitakka import VitakkaOutput


@dataclass
class DrunkConfig:
    """Drunk mode (internal dysfunction for Stage 2's drunk path); every constant lives here (F17).

    Attributes:
        s0_noise_std: std of Gaussian noise added to s0.
        skip_prob: per sample and step, probability that the refinement step is skipped (drawn per sample).
        perturbation_std: std of Gaussian noise added to the state at every step.
    """

    s0_noise_std: float = 0.5
    skip_prob: float = 0.3
    perturbation_std: float = 0.2

    def __post_init__(self) -> None:
        if self.s0_noise_std < 0 or self.perturbation_std < 0:
            raise ValueError(f"DrunkConfig: noise stds must be >= 0, got {self.s0_noise_std}, {self.perturbation_std}")
        if not 0.0 <= self.skip_prob <= 1.0:
            raise ValueError(f"DrunkConfig: skip_prob={self.skip_prob} must lie in [0, 1]")


@dataclass
class SamathaOutput:
    """Result of one Samatha run.

    Attributes:
        s_star: converged state (B, D), with grad (feeds decoders and Vipassana).
        s0: initial state (B, D), with grad.
        stability_pair: ``(s_T, s_{T-1})`` per sample, **with grad**: the stability loss reads this (F07).
        avg_energy: per-sample mean step energy (B,), with grad (the void-energy loss reads it; F14).
        santana: detached trajectory log, for Vipassana and plots only.
        vitakka: Vitakka's decision (probs, winner, gate, ...).
    """

    s_star: torch.Tensor
    s0: torch.Tensor
    stability_pair: tuple[torch.Tensor, torch.Tensor]
    avg_energy: torch.Tensor
    santana: SantanaLog
    vitakka: VitakkaOutput


class Sati(nn.Module):
    """Fixed number of steps, or per-sample stop once a step's energy falls below ``energy_threshold``.

    Args:
        max_steps: maximum refinement steps T (>= 1).
        energy_threshold: stop a sample when ``||s_t - s_{t-1}||^2 < threshold`` (None: always ``max_steps``).
        min_steps: steps every sample takes before it may stop.
        drunk: constants of drunk mode (stage 2's drunk path and the test; F17).
    """

    def __init__(self, max_steps: int = 10, energy_threshold: float | None = None, min_steps: int = 2,
                 drunk: DrunkConfig | None = None) -> None:
        super().__init__()
        if max_steps < 1:
            raise ValueError(f"Sati: max_steps={max_steps} must be >= 1")
        if not 1 <= min_steps <= max_steps:
            raise ValueError(f"Sati: min_steps={min_steps} must lie in [1, max_steps={max_steps}]")
        if energy_threshold is not None and energy_threshold <= 0:
            raise ValueError(f"Sati: energy_threshold={energy_threshold} must be > 0 (or null for fixed steps)")
        self.max_steps = max_steps
        self.energy_threshold = energy_threshold
        self.min_steps = min_steps
        self.drunk = drunk or DrunkConfig()

    def forward(self, vicara: Vicara, vitakka_out: VitakkaOutput, drunk: bool | DrunkConfig | None = None,
                generator: torch.Generator | PerSampleNoise | None = None) -> SamathaOutput:
        """One Samatha run. ``drunk``: True uses ``self.drunk``, a DrunkConfig that one, None/False none.
        ``generator``: a generator for the batch, or :class:`PerSampleNoise` (each sample its own draws)."""
        if drunk is True:
            drunk = self.drunk
        elif drunk is False:
            drunk = None
        s = vitakka_out.s0
        probs = vitakka_out.probs
        batch = s.shape[0]
        if drunk is not None and drunk.s0_noise_std > 0:
            s = s + drunk.s0_noise_std * _randn(s, generator)
        s_start = s
        states = [s.detach()]
        energies: list[torch.Tensor] = []
        energies_log: list[torch.Tensor] = []
        active = torch.ones(batch, dtype=torch.bool, device=s.device)
        steps = torch.zeros(batch, dtype=torch.long, device=s.device)
        prev = s
        for t in range(self.max_steps):
            update = vicara(s, probs)
            if drunk is not None:
                if drunk.skip_prob > 0:  # one draw per sample, not one per batch (F17)
                    skip = _rand(batch, s, generator) < drunk.skip_prob
                    update = torch.where(skip.unsqueeze(1), s, update)
                if drunk.perturbation_std > 0:
                    update = update + drunk.perturbation_std * _randn(s, generator)
            mask = active.unsqueeze(1)
            s_next = torch.where(mask, update, s)
            prev = torch.where(mask, s, prev)
            step_e = ((s_next - s) ** 2).sum(dim=1) * active.to(s.dtype)
            energies.append(step_e)
            energies_log.append(step_e.detach())
            steps = steps + active.long()
            s = s_next
            states.append(s.detach())
            if self.energy_threshold is not None and t + 1 >= self.min_steps:
                active = active & (step_e.detach() >= self.energy_threshold)
                if not bool(active.any()):
                    break
        energy = torch.stack(energies).sum(dim=0) / steps.clamp(min=1).to(s.dtype)
        log = SantanaLog(states=torch.stack(states), steps=steps, step_energy=torch.stack(energies_log))
        return SamathaOutput(s_star=s, s0=s_start, stability_pair=(s, prev), avg_energy=energy, santana=log,
                             vitakka=vitakka_out)


class PerSampleNoise:
    """Random draws where row ``i`` comes from its own generator, seeded by ``seeds[i]``.

    A sample's noise then does not depend on which batch (or which rank) it is evaluated in, so a 2-rank
    test reports what a 1-rank test reports (F44).
    """

    def __init__(self, seeds: torch.Tensor | list[int]) -> None:
        values = seeds.tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
        self.generators = [torch.Generator().manual_seed(int(v)) for v in values]

    def randn(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        self._check(shape)
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in self.generators])

    def rand(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        self._check(shape)
        return torch.stack([torch.rand(tuple(shape[1:]), generator=g) for g in self.generators])

    def _check(self, shape: tuple[int, ...] | torch.Size) -> None:
        if shape[0] != len(self.generators):
            raise ValueError(f"PerSampleNoise holds {len(self.generators)} generators, asked for {shape[0]} rows")


def _randn(like: torch.Tensor, generator: torch.Generator | PerSampleNoise | None) -> torch.Tensor:
    if isinstance(generator, PerSampleNoise):
        return generator.randn(like.shape).to(like)
    if generator is None:
        return torch.randn(like.shape, device=like.device, dtype=like.dtype)
    return torch.randn(like.shape, generator=generator, device=generator.device).to(like)


def _rand(n: int, like: torch.Tensor, generator: torch.Generator | PerSampleNoise | None) -> torch.Tensor:
    if isinstance(generator, PerSampleNoise):
        return generator.rand((n,)).to(like)
    if generator is None:
        return torch.rand(n, device=like.device, dtype=like.dtype)
    return torch.rand(n, generator=generator, device=generator.device).to(like)
