"""Test-time evaluation of the Satipatthana study: the test metrics and the figures.

Every test number is a torchmetrics ``Metric`` object, reduced across ranks, so a 2-rank test run reports what a
1-rank run reports (F44). No per-rank Python lists.

* ``acc`` / ``baseline_acc``: ``MulticlassAccuracy(average="micro")``.
* ``trust_<path>`` / ``trust_void_<kind>``: ``MeanMetric`` of per-sample trust.
* ``trust_auroc`` (clean vs void), ``trust_auroc_<kind>``, ``trust_auroc_drunk``: ``BinaryAUROC`` (exact,
  ``thresholds=None``), clean samples as positives.
* ``psnr`` (images): ``PeakSignalNoiseRatio(data_range=1, dim=(1, 2, 3))``, the mean of per-image PSNR.
* per-sample values the figures and the paired bootstrap need (trust per path, energy trajectories, sample index,
  correctness of the model / baseline / floor): ``sample_rows``, a :class:`~lit_experiments.metrics.gathered.GatheredRows`
  gathered from every rank and sorted by sample index, so neither depends on the rank count.
* floors and references (F49), with the same metric classes on the same test samples: ``majority_acc`` (the most
  frequent training class for every sample), ``constant_trust_auroc`` (one trust value for every input: 0.5),
  ``baseline_msp_auroc`` (the baseline's max softmax probability as the trust score, clean vs void) and
  ``psnr_mean_image`` (the mean training image as every reconstruction).

Figures: trust histograms per path, energy trajectories, the circles decision boundary with its trust heat-map.
The plain baselines the references come from are model parts (``components/baselines.py``), trained in their own
stage.
"""

from __future__ import annotations

from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402
from torchmetrics import MeanMetric  # noqa: E402
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy  # noqa: E402
from torchmetrics.image import PeakSignalNoiseRatio  # noqa: E402

from lit_experiments.metrics.gathered import GatheredRows  # noqa: E402

from .losses import PATHS  # noqa: E402


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
        columns = ["index", *(f"trust_{p}" for p in PATHS), *correct, "energy_clean", "energy_drunk", "energy_void"]
        self.sample_rows = GatheredRows(columns, dtypes={"index": torch.long}, order_by="index")

    def update(self, *, index: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, trust: dict[str, torch.Tensor],
               void_kind: torch.Tensor, energy: dict[str, torch.Tensor], baseline_logits: torch.Tensor | None = None,
               recon: torch.Tensor | None = None, x: torch.Tensor | None = None,
               baseline_void_logits: torch.Tensor | None = None) -> None:
        """One batch: ``trust[path]`` (B,) per path, ``energy[clean|drunk|void]`` (T, B) step energies;
        ``baseline_void_logits`` the baseline on the void inputs (its max-softmax reference)."""
        rows = {"index": index}
        self.acc.update(logits, y)
        rows["correct"] = (logits.argmax(1) == y).to(trust["clean"].dtype)
        if self.majority_acc is not None:
            majority = torch.full_like(y, int(self.majority_class))
            self.majority_acc.update(majority, y)
            rows["majority_correct"] = (majority == y).to(trust["clean"].dtype)
        if self.baseline_acc is not None and baseline_logits is not None:
            self.baseline_acc.update(baseline_logits, y)
            rows["baseline_correct"] = (baseline_logits.argmax(1) == y).to(trust["clean"].dtype)
            if self.baseline_msp_auroc is not None and baseline_void_logits is not None:
                msp_clean = baseline_logits.softmax(1).amax(1)
                msp_void = baseline_void_logits.softmax(1).amax(1)
                self.baseline_msp_auroc.update(torch.cat([msp_clean, msp_void]),
                                               torch.cat([torch.ones_like(y), torch.zeros_like(y)]))
        for path, values in trust.items():
            self.trust[path].update(values)
            rows[f"trust_{path}"] = values
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
        for path, e in energy.items():
            padded = nn.functional.pad(e, (0, 0, 0, self.max_steps - e.shape[0]))  # (T_max, B)
            rows[f"energy_{path}"] = padded.T
        self.sample_rows.update(**rows)

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
        return {name: v.cpu() for name, v in self.sample_rows.compute().items()}


# ------------------------------------------------------------------ figures
def trust_histograms(trust: dict[str, torch.Tensor]) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = torch.linspace(0, 1, 26).numpy()
    for path, values in trust.items():
        ax.hist(values.numpy(), bins=bins, alpha=0.5, label=f"{path} (mean {values.mean():.2f})")
    ax.set_xlabel("trust")
    ax.set_ylabel("samples")
    ax.legend(fontsize=7)
    ax.set_title("Vipassana trust per path")
    return fig


def energy_trajectories(energy: dict[str, torch.Tensor]) -> Figure:
    """``energy[path]`` is (T, N): per-step ``||s_t - s_{t-1}||^2`` of N samples."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (path, e) in enumerate(energy.items()):
        steps = torch.arange(1, e.shape[0] + 1).numpy()
        color = colors[i % len(colors)]
        ax.plot(steps, e.numpy(), color=color, alpha=0.15, linewidth=0.8)
        ax.plot(steps, e.median(dim=1).values.numpy(), color=color, linewidth=2, label=f"{path} (median)")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel("Vicara step t")
    ax.set_ylabel("||s_t - s_{t-1}||^2")
    ax.legend(fontsize=7)
    ax.set_title("Samatha energy trajectories")
    return fig


def decision_boundary(predict: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor,
                      y: torch.Tensor, x_void: torch.Tensor | None = None, resolution: int = 120) -> Figure:
    """2-D inputs only. ``predict(points) -> (class probability of class 1, trust)``."""
    lo = torch.minimum(x.min(dim=0).values, x_void.min(dim=0).values if x_void is not None else x.min(dim=0).values)
    hi = torch.maximum(x.max(dim=0).values, x_void.max(dim=0).values if x_void is not None else x.max(dim=0).values)
    gx, gy = torch.meshgrid(torch.linspace(lo[0] - 0.2, hi[0] + 0.2, resolution),
                            torch.linspace(lo[1] - 0.2, hi[1] + 0.2, resolution), indexing="xy")
    grid = torch.stack([gx.flatten(), gy.flatten()], dim=1)
    prob, trust = predict(grid)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    ext = (float(gx.min()), float(gx.max()), float(gy.min()), float(gy.max()))
    for ax, values, title, cmap in ((axes[0], prob, "P(class 1) and decision boundary", "RdBu"),
                                    (axes[1], trust, "trust heat-map", "viridis")):
        im = ax.imshow(values.reshape(resolution, resolution).numpy(), origin="lower", extent=ext, cmap=cmap,
                       vmin=0, vmax=1, aspect="auto")
        ax.contour(gx.numpy(), gy.numpy(), prob.reshape(resolution, resolution).numpy(), levels=[0.5],
                   colors="k", linewidths=1)
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), c=y.numpy(), s=4, cmap="coolwarm", edgecolors="none")
        if x_void is not None and ax is axes[1]:
            ax.scatter(x_void[:, 0].numpy(), x_void[:, 1].numpy(), s=3, c="red", marker="x", linewidths=0.5)
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    return fig
