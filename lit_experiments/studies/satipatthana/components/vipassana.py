"""Vipassana: reads a Samatha run (s*, detached SantanaLog) and says how much to trust it, plus a context vector.

* v4.0 (:class:`VipassanaV40`): the trust head sees **only** per-sample ``[log1p(velocity), log1p(avg_energy)]``
  (F11, F14); ``v_ctx`` comes from a separate context encoder on ``[s*; trust features]``.
* v4.1 (:class:`VipassanaV41`): GRU over the trajectory, 8 per-sample grounding metrics, trust /
  conformity / confidence heads; ``v_ctx = [GRU state; projected metrics]``.

Nothing here normalises across the batch: a sample's outputs never depend on the rest of its batch.
Both are built lazily: the state size is the adapter's ``dim``, which the module's dry run passes to :meth:`build`
(or the first forward reads it off ``s*``), so the core's LazyBuild dry run must happen before freezing and
before the optimizer (F09).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torchvision.ops import MLP

from .santana import SantanaLog


@dataclass
class VipassanaInput:
    """What Vipassana reads. ``probes``/``recon_error``/``s0`` are only used by v4.1."""

    s_star: torch.Tensor
    santana: SantanaLog
    probes: torch.Tensor | None = None
    recon_error: torch.Tensor | None = None


@dataclass
class VipassanaOutput:
    """Attributes:
        trust_logit: (B,) logit of the trust score; the BCE loss reads this.
        v_ctx: (B, context_dim) context vector for the task decoder.
        trust_features: (B, F) the trust head's input, detached (analysis / tests).
        conformity_logit / confidence_logit: (B,) v4.1 extra heads, else None.
    """

    trust_logit: torch.Tensor
    v_ctx: torch.Tensor
    trust_features: torch.Tensor
    conformity_logit: torch.Tensor | None = None
    confidence_logit: torch.Tensor | None = None

    @property
    def trust(self) -> torch.Tensor:
        return torch.sigmoid(self.trust_logit)


def trust_features(s_star: torch.Tensor, santana: SantanaLog) -> torch.Tensor:
    """Per-sample ``[log1p(velocity), log1p(avg_energy)]`` (B, 2), detached (F11, F14)."""
    velocity = santana.velocity(s_star)
    energy = santana.avg_energy()
    return torch.stack([torch.log1p(velocity), torch.log1p(energy)], dim=1).detach()


def _head(in_dim: int, hidden: int) -> nn.Module:
    return MLP(in_dim, [hidden, 1])


class VipassanaV40(nn.Module):
    """v4.0 trust head (2 -> hidden -> 1) and context encoder.

    Args:
        context_dim: size of ``v_ctx``.
        hidden_dim: width of the trust head and of the context encoder.
    """

    trust_input_dim = 2

    def __init__(self, context_dim: int = 16, hidden_dim: int = 32) -> None:
        super().__init__()
        if context_dim < 1 or hidden_dim < 1:
            raise ValueError(f"VipassanaV40: context_dim={context_dim}, hidden_dim={hidden_dim} must be >= 1")
        self.context_dim = context_dim
        self.hidden_dim = hidden_dim
        self.trust_head: nn.Module | None = None
        self.context: nn.Module | None = None

    @property
    def is_built(self) -> bool:
        return self.trust_head is not None

    def build(self, state_dim: int, device: torch.device | None = None) -> VipassanaV40:
        """Create the networks for states of size ``state_dim`` (once; forward calls it when not built)."""
        if self.is_built:
            return self
        self.trust_head = _head(self.trust_input_dim, self.hidden_dim).to(device)
        self.context = MLP(state_dim + self.trust_input_dim, [self.hidden_dim, self.context_dim]).to(device)
        return self

    def forward(self, inp: VipassanaInput) -> VipassanaOutput:
        self.build(inp.s_star.shape[1], inp.s_star.device)
        feats = trust_features(inp.s_star, inp.santana)
        trust_logit = self.trust_head(feats)[:, 0]
        v_ctx = self.context(torch.cat([inp.s_star, feats], dim=1))
        return VipassanaOutput(trust_logit=trust_logit, v_ctx=v_ctx, trust_features=feats)


class VipassanaV41(nn.Module):
    """v4.1: GRU over the trajectory + 8 grounding metrics, trust / conformity / confidence heads.

    Metrics (per sample): log1p(velocity), log1p(avg_energy), steps / max steps, log1p(min distance of s*
    to a probe), entropy of softmax(-distances), log1p(min distance of s0 to a probe), log1p(||s* - s0||),
    log1p(reconstruction error).

    Args:
        gru_hidden_dim: GRU width (dynamic context).
        metric_proj_dim: width of the projected metrics (static context).
    """

    num_metrics = 8

    def __init__(self, gru_hidden_dim: int = 16, metric_proj_dim: int = 8) -> None:
        super().__init__()
        if gru_hidden_dim < 1 or metric_proj_dim < 1:
            raise ValueError(f"VipassanaV41: gru_hidden_dim={gru_hidden_dim}, metric_proj_dim={metric_proj_dim} "
                             "must be >= 1")
        self.gru_hidden_dim = gru_hidden_dim
        self.metric_proj_dim = metric_proj_dim
        self.context_dim = gru_hidden_dim + metric_proj_dim
        self.gru: nn.GRU | None = None

    @property
    def is_built(self) -> bool:
        return self.gru is not None

    def build(self, state_dim: int, device: torch.device | None = None) -> VipassanaV41:
        """Create the networks for states of size ``state_dim`` (once; forward calls it when not built)."""
        if self.is_built:
            return self
        m, h = self.num_metrics, self.gru_hidden_dim
        self.gru = nn.GRU(state_dim, h).to(device)
        self.trust_head = _head(m, 2 * m).to(device)
        self.conformity_head = _head(h, h).to(device)
        self.confidence_head = _head(h + m, h).to(device)
        self.context = MLP(m, [2 * self.metric_proj_dim, self.metric_proj_dim]).to(device)
        return self

    def metrics(self, inp: VipassanaInput) -> torch.Tensor:
        log, s_star = inp.santana, inp.s_star.detach()
        zeros = torch.zeros(s_star.shape[0], device=s_star.device, dtype=s_star.dtype)
        s0 = log.initial()
        if inp.probes is not None:
            probes = inp.probes.detach()
            dists = torch.cdist(s_star, probes)
            min_dist = dists.min(dim=1).values
            p = torch.softmax(-dists, dim=1)
            entropy = -(p * torch.log(p + 1e-9)).sum(dim=1)
            s0_min = torch.cdist(s0, probes).min(dim=1).values
        else:
            min_dist, entropy, s0_min = zeros, zeros, zeros
        recon = inp.recon_error.detach() if inp.recon_error is not None else zeros
        cols = [torch.log1p(log.velocity(s_star)), torch.log1p(log.avg_energy()),
                log.steps.to(s_star.dtype) / max(1, log.num_steps), torch.log1p(min_dist), entropy,
                torch.log1p(s0_min), torch.log1p((s_star - s0).norm(dim=1)), torch.log1p(recon)]
        return torch.stack(cols, dim=1).detach()

    def encode_trajectory(self, log: SantanaLog) -> torch.Tensor:
        lengths = (log.steps + 1).clamp(max=log.num_steps + 1).cpu()
        packed = pack_padded_sequence(log.states, lengths, enforce_sorted=False)
        _, hidden = self.gru(packed)
        return hidden[0]

    def forward(self, inp: VipassanaInput) -> VipassanaOutput:
        self.build(inp.s_star.shape[1], inp.s_star.device)
        metrics = self.metrics(inp)
        dynamic = self.encode_trajectory(inp.santana)
        v_ctx = torch.cat([dynamic, self.context(metrics)], dim=1)
        return VipassanaOutput(
            trust_logit=self.trust_head(metrics)[:, 0], v_ctx=v_ctx, trust_features=metrics,
            conformity_logit=self.conformity_head(dynamic)[:, 0],
            confidence_logit=self.confidence_head(torch.cat([dynamic, metrics], dim=1))[:, 0],
        )


__all__ = ["VipassanaInput", "VipassanaOutput", "VipassanaV40", "VipassanaV41", "trust_features"]
