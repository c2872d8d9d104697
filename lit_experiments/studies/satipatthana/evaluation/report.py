"""Collects test outputs batch by batch and turns them into the study's test metrics."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from sklearn.metrics import roc_auc_score


def psnr(x_hat: torch.Tensor, x: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB (B,) for images in ``[0, data_range]``."""
    mse = ((x_hat.clamp(0, data_range) - x) ** 2).flatten(1).mean(dim=1).clamp(min=1e-10)
    return 10.0 * torch.log10(data_range ** 2 / mse)


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """AUROC of a score that should be higher on ``positive`` than on ``negative``."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    scores = torch.cat([positive, negative]).double().numpy()
    labels = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).numpy()
    return float(roc_auc_score(labels, scores))


@dataclass
class EvalCollector:
    """Everything a test epoch needs to remember (all detached, on CPU).

    ``trust[path]`` holds per-sample trust for every path; ``energy[path]`` the per-step energy (T, B)
    trajectories of the first ``keep_trajectories`` samples; ``x``/``y`` the clean inputs (for 2-D plots).
    """

    void_kinds: list[str]
    keep_trajectories: int = 64
    logits: list[torch.Tensor] = field(default_factory=list)
    y: list[torch.Tensor] = field(default_factory=list)
    x: list[torch.Tensor] = field(default_factory=list)
    x_void: list[torch.Tensor] = field(default_factory=list)
    void_kind: list[torch.Tensor] = field(default_factory=list)
    trust: dict[str, list[torch.Tensor]] = field(default_factory=lambda: defaultdict(list))
    energy: dict[str, list[torch.Tensor]] = field(default_factory=lambda: defaultdict(list))
    psnr: list[torch.Tensor] = field(default_factory=list)

    def add_trajectories(self, path: str, step_energy: torch.Tensor) -> None:
        have = sum(e.shape[1] for e in self.energy[path])
        if have < self.keep_trajectories:
            self.energy[path].append(step_energy[:, : self.keep_trajectories - have].detach().cpu())

    def cat(self, items: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(items) if items else torch.zeros(0)

    def cat_steps(self, items: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate (T_i, n_i) energy chunks along samples, zero-padding shorter runs (early stops)."""
        steps = max(e.shape[0] for e in items)
        return torch.cat([torch.nn.functional.pad(e, (0, 0, 0, steps - e.shape[0])) for e in items], dim=1)

    def metrics(self, baseline_preds: torch.Tensor | None = None) -> dict[str, float]:
        y = self.cat(self.y)
        preds = self.cat(self.logits).argmax(dim=1)
        out: dict[str, float] = {"acc": float((preds == y).float().mean())}
        if baseline_preds is not None:
            out["baseline_acc"] = float((baseline_preds.cpu() == y).float().mean())
        trust = {k: self.cat(v) for k, v in self.trust.items()}
        for path, values in trust.items():
            out[f"trust_{path}"] = float(values.mean())
        if "clean" in trust and "void" in trust:
            out["trust_auroc"] = auroc(trust["clean"], trust["void"])
            kinds = self.cat(self.void_kind)
            for i, kind in enumerate(self.void_kinds):
                out[f"trust_auroc_{kind}"] = auroc(trust["clean"], trust["void"][kinds == i])
                out[f"trust_void_{kind}"] = float(trust["void"][kinds == i].mean())
        if "clean" in trust and "drunk" in trust:
            out["trust_auroc_drunk"] = auroc(trust["clean"], trust["drunk"])
        if self.psnr:
            out["psnr"] = float(self.cat(self.psnr).mean())
        return out
