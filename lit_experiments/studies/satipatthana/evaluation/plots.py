"""Figures of the study: trust histograms per path, energy trajectories, circles decision boundary + trust."""

from __future__ import annotations

from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


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
