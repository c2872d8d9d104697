"""SantanaLog: the **detached** trajectory of a Samatha run, for Vipassana, analysis and plots.

Detached on purpose (memory, and Samatha is frozen when Vipassana reads it). No loss may read it: the
stability loss uses ``SamathaOutput.stability_pair``, a separate field with gradients (F07).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SantanaLog:
    """Trajectory of one batch.

    Attributes:
        states: (T + 1, B, D) states s_0 .. s_T, detached. A sample that stopped early repeats its last state.
        steps: (B,) number of refinement steps each sample actually took (>= 1).
        step_energy: (T, B) ``||s_t - s_{t-1}||^2`` per step and sample, detached (0 after a sample stopped).
    """

    states: torch.Tensor
    steps: torch.Tensor
    step_energy: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("states", "step_energy"):
            if getattr(self, name).requires_grad:
                raise ValueError(f"SantanaLog.{name} must be detached: the log is not a loss input (F07)")

    @property
    def num_steps(self) -> int:
        return self.states.shape[0] - 1

    @property
    def batch_size(self) -> int:
        return self.states.shape[1]

    def avg_energy(self) -> torch.Tensor:
        """Per-sample ``sum_t ||s_t - s_{t-1}||^2 / steps`` (B,) -- never a batch total (F14)."""
        return self.step_energy.sum(dim=0) / self.steps.clamp(min=1).to(self.step_energy.dtype)

    def initial(self) -> torch.Tensor:
        return self.states[0]

    def final(self) -> torch.Tensor:
        """Each sample's last state (B, D)."""
        idx = self.steps.clamp(min=0, max=self.num_steps)
        return self.states[idx, torch.arange(self.batch_size, device=self.states.device)]

    def before_final(self) -> torch.Tensor:
        """Each sample's state one step before its last (B, D)."""
        idx = (self.steps - 1).clamp(min=0, max=self.num_steps)
        return self.states[idx, torch.arange(self.batch_size, device=self.states.device)]

    def velocity(self, s_star: torch.Tensor) -> torch.Tensor:
        """Per-sample ``||s* - s_{T-1}||`` (B,); ``s_star`` is passed in so a mismatched s* shows up."""
        return (s_star.detach() - self.before_final()).norm(dim=1)

    def select(self, index: torch.Tensor) -> SantanaLog:
        """The log of a subset of samples."""
        return SantanaLog(self.states[:, index], self.steps[index], self.step_energy[:, index])
