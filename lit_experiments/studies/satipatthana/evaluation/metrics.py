"""Test metrics of the study as torchmetrics ``Metric`` objects: reduced across ranks, so a 2-rank test run
reports what a 1-rank run reports (F44). No per-rank Python lists.

* ``acc`` / ``baseline_acc``: ``MulticlassAccuracy(average="micro")``.
* ``trust_<path>`` / ``trust_void_<kind>``: ``MeanMetric`` of per-sample trust.
* ``trust_auroc`` (clean vs void), ``trust_auroc_<kind>``, ``trust_auroc_drunk``: ``BinaryAUROC`` (exact,
  ``thresholds=None``), clean samples as positives.
* ``psnr`` (images): ``PeakSignalNoiseRatio(data_range=1, dim=(1, 2, 3))``, the mean of per-image PSNR.
* per-sample values the figures and the paired bootstrap need (trust per path, energy trajectories, sample index,
  correctness of the model / baseline / floor): ``CatMetric``, gathered from every rank and sorted by sample index,
  so neither depends on the rank count.
* floors and references (F49), with the same metric classes on the same test samples: ``majority_acc`` (the most
  frequent training class for every sample), ``constant_trust_auroc`` (one trust value for every input: 0.5),
  ``baseline_msp_auroc`` (the baseline's max softmax probability as the trust score, clean vs void) and
  ``psnr_mean_image`` (the mean training image as every reconstruction).
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import CatMetric, MeanMetric
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy
from torchmetrics.image import PeakSignalNoiseRatio

from ..losses import PATHS


class SatipatthanaTestMetrics(nn.Module):
    """Every test number of the study (see the module docstring).

    Args:
        num_classes: classes of the task.
        void_kinds: names of the test split's void kinds (``void_kind`` indexes them).
        image: inputs are images (adds PSNR).
        baseline: a baseline is scored too (adds ``baseline_acc``).
        max_steps: Sati's ``max_steps``; energy trajectories are zero-padded to it before gathering.
    """

    def __init__(self, num_classes: int, void_kinds: list[str], image: bool, baseline: bool, max_steps: int,
                 majority_class: int | None = None, mean_image: torch.Tensor | None = None) -> None:
        super().__init__()
        self.majority_class = majority_class
        self.register_buffer("mean_image", mean_image.clone() if mean_image is not None else None, persistent=False)
        self.majority_acc = MulticlassAccuracy(num_classes, average="micro") if majority_class is not None else None
        self.constant_auroc = BinaryAUROC()
        self.baseline_msp_auroc = BinaryAUROC() if baseline else None
        self.psnr_mean_image = (PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3))
                                if image and mean_image is not None else None)
        self.void_kinds = list(void_kinds)
        self.max_steps = max_steps
        self.acc = MulticlassAccuracy(num_classes, average="micro")
        self.baseline_acc = MulticlassAccuracy(num_classes, average="micro") if baseline else None
        self.trust = nn.ModuleDict({p: MeanMetric() for p in PATHS})
        self.trust_void_kind = nn.ModuleDict({k: MeanMetric() for k in self.void_kinds})
        names = ["void", "drunk", *(f"void_{k}" for k in self.void_kinds)]
        self.auroc = nn.ModuleDict({n: BinaryAUROC() for n in names})
        self.psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)) if image else None
        correct = ["correct", *(["baseline_correct"] if baseline else []),
                   *(["majority_correct"] if majority_class is not None else [])]
        self.samples = nn.ModuleDict({n: CatMetric() for n in ["index", *(f"trust_{p}" for p in PATHS), *correct,
                                                                  "energy_clean", "energy_drunk", "energy_void"]})

    def update(self, *, index: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, trust: dict[str, torch.Tensor],
               void_kind: torch.Tensor, energy: dict[str, torch.Tensor], baseline_logits: torch.Tensor | None = None,
               recon: torch.Tensor | None = None, x: torch.Tensor | None = None,
               baseline_void_logits: torch.Tensor | None = None) -> None:
        """One batch: ``trust[path]`` (B,) per path, ``energy[clean|drunk|void]`` (T, B) step energies;
        ``baseline_void_logits`` the baseline on the void inputs (its max-softmax reference)."""
        self.acc.update(logits, y)
        self.samples["correct"].update((logits.argmax(1) == y).to(trust["clean"].dtype))
        if self.majority_acc is not None:
            majority = torch.full_like(y, int(self.majority_class))
            self.majority_acc.update(majority, y)
            self.samples["majority_correct"].update((majority == y).to(trust["clean"].dtype))
        if self.baseline_acc is not None and baseline_logits is not None:
            self.baseline_acc.update(baseline_logits, y)
            self.samples["baseline_correct"].update((baseline_logits.argmax(1) == y).to(trust["clean"].dtype))
            if self.baseline_msp_auroc is not None and baseline_void_logits is not None:
                msp_clean = baseline_logits.softmax(1).amax(1)
                msp_void = baseline_void_logits.softmax(1).amax(1)
                self.baseline_msp_auroc.update(torch.cat([msp_clean, msp_void]),
                                               torch.cat([torch.ones_like(y), torch.zeros_like(y)]))
        for path, values in trust.items():
            self.trust[path].update(values)
            self.samples[f"trust_{path}"].update(values)
        clean = trust["clean"]
        ones = torch.ones_like(clean, dtype=torch.long)
        for name, negative in (("void", trust["void"]), ("drunk", trust["drunk"])):
            self._auroc(name, clean, ones, negative)
        constant = torch.zeros(2 * len(clean), device=clean.device)  # one trust value for every input
        self.constant_auroc.update(constant, torch.cat([ones, torch.zeros_like(ones)]))
        for i, kind in enumerate(self.void_kinds):
            mine = trust["void"][void_kind == i]
            if len(mine):
                self.trust_void_kind[kind].update(mine)
            self._auroc(f"void_{kind}", clean, ones, mine)
        if self.psnr is not None and recon is not None and x is not None:
            self.psnr.update(recon.clamp(0.0, 1.0), x)
        if self.psnr_mean_image is not None and x is not None:
            self.psnr_mean_image.update(self.mean_image.to(x).expand_as(x), x)
        self.samples["index"].update(index.to(clean.dtype))
        for path, e in energy.items():
            padded = nn.functional.pad(e, (0, 0, 0, self.max_steps - e.shape[0]))  # (T_max, B)
            self.samples[f"energy_{path}"].update(padded.T)

    def _auroc(self, name: str, clean: torch.Tensor, ones: torch.Tensor, negative: torch.Tensor) -> None:
        preds = torch.cat([clean, negative])
        target = torch.cat([ones, torch.zeros_like(negative, dtype=torch.long)])
        self.auroc[name].update(preds, target)

    def compute(self) -> dict[str, float]:
        """Scalar test metrics (names without the ``test/`` prefix). A collective call under DDP: every rank."""
        out = {"acc": float(self.acc.compute())}
        if self.baseline_acc is not None and self.baseline_acc.update_called:
            out["baseline_acc"] = float(self.baseline_acc.compute())
        if self.baseline_msp_auroc is not None and self.baseline_msp_auroc.update_called:
            out["baseline_msp_auroc"] = float(self.baseline_msp_auroc.compute())
        if self.majority_acc is not None:
            out["majority_acc"] = float(self.majority_acc.compute())
        out["constant_trust_auroc"] = float(self.constant_auroc.compute())
        if self.psnr_mean_image is not None:
            out["psnr_mean_image"] = float(self.psnr_mean_image.compute())
        for path in PATHS:
            out[f"trust_{path}"] = float(self.trust[path].compute())
        out["trust_auroc"] = float(self.auroc["void"].compute())
        for kind in self.void_kinds:
            out[f"trust_auroc_{kind}"] = float(self.auroc[f"void_{kind}"].compute())
            out[f"trust_void_{kind}"] = float(self.trust_void_kind[kind].compute())
        out["trust_auroc_drunk"] = float(self.auroc["drunk"].compute())
        if self.psnr is not None:
            out["psnr"] = float(self.psnr.compute())
        return out

    def gathered(self) -> dict[str, torch.Tensor]:
        """Per-sample values from every rank, sorted by sample index (``index``: the sample's index in the split)."""
        values = {name: m.compute() for name, m in self.samples.items()}
        order = torch.argsort(values["index"])
        out = {name: v[order].cpu() for name, v in values.items()}
        out["index"] = out["index"].long()
        return out
