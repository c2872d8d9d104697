"""Evaluation of slot masks against instance ground truth (F05) and mask-overlay figures.

Masks (B,T,K,N) on the feature grid are upsampled bilinearly to the GT size and reduced by argmax
(``metrics.resize_masks``); GT is resized nearest only if its size differs. Scores are FG-ARI (GT id 0
dropped), full ARI and mBO, per frame (every frame a sample) and per video (a clip is one sample).
Samples are grouped by material (``metal`` / ``non-metal`` / ``mixed`` clips) when the data knows
materials, else by the category of object 1 (``cat<k>``).

Floors (F49), scored by the same metric code on the same frames: ``grid_fg_ari`` / ``grid_video_fg_ari`` (a
fixed partition into one rectangle per slot, :func:`grid_partition`) and, at test, ``untrained_fg_ari`` /
``untrained_fg_ari_<alt>`` / ``untrained_video_fg_ari`` (the same model at its initial weights). The per-sample
rows carry every score per clip (the per-item file of the paired bootstrap, F51); they are gathered over the epoch
and every rank by ``metrics.gathered.GatheredRows`` (``clip_rows``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lit_experiments.metrics import ARIMetric, MBOMetric, ari, mbo, resize_masks
from lit_experiments.metrics.gathered import GatheredRows

METAL = 1
GROUPS = ("metal", "non-metal", "mixed")  # a clip's group in the gathered rows: its index here, cat<k> -> 3 + k
ROW_NUMBERS = ("index", "group", "num_objects")
ROW_SCORES = ("video_fg_ari", "video_ari", "video_mbo", "frame_fg_ari_mean")


def material_group(material: torch.Tensor, num_objects: torch.Tensor | int | None = None) -> str | None:
    """'metal' (every object metal), 'non-metal' (none), 'mixed'; None when materials are unknown (-1)."""
    m = material[material >= 0] if num_objects is None else material[: int(num_objects)]
    if m.numel() == 0 or bool((m < 0).any()):
        return None
    metal = m == METAL
    if bool(metal.all()):
        return "metal"
    if not bool(metal.any()):
        return "non-metal"
    return "mixed"


def sample_groups(batch: dict) -> list[str] | None:
    """One group name per clip of the batch (material split, else category of object 1), or None."""
    b = batch["instances"].shape[0]
    nums = batch.get("num_objects")
    groups: list[str] = []
    for i in range(b):
        g = None
        if "material" in batch:
            g = material_group(batch["material"][i], None if nums is None else nums[i])
        if g is None and "category" in batch and int(batch["category"][i][0]) >= 0:
            g = f"cat{int(batch['category'][i][0])}"
        if g is None:
            return None
        groups.append(g)
    return groups


def group_code(group: str) -> int:
    """The integer a group name is gathered as ("" -> -1)."""
    if not group:
        return -1
    return GROUPS.index(group) if group in GROUPS else len(GROUPS) + int(group[3:])


def group_name(code: int) -> str:
    if code < 0:
        return ""
    return GROUPS[code] if code < len(GROUPS) else f"cat{code - len(GROUPS)}"


def predicted_labels(masks: torch.Tensor, grid: tuple[int, int], gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,T,K,N) soft masks + (B,T,H,W) GT -> int label maps (B,T,H,W) for both, via the F05 path."""
    b, t, k, n = masks.shape
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {grid} does not match {n} mask positions")
    soft = masks.reshape(b * t, k, grid[0], grid[1]).float()
    pred, target = resize_masks(soft, gt=gt.reshape(b * t, *gt.shape[-2:]))
    return pred.view(b, t, *pred.shape[-2:]), target.view(b, t, *target.shape[-2:])


def grid_partition(k: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Label map that splits every frame into ``k`` fixed rectangles (rows x cols ~ k), ignoring the image.

    The trivial reference for FG-ARI: objects that lie in different parts of the frame are "separated"
    by position alone, so a model's FG-ARI means little unless it beats this partition.
    """
    h, w = shape[-2:]
    rows = max(1, int(k**0.5))
    cols = -(-k // rows)
    ys = torch.arange(h) * rows // h
    xs = torch.arange(w) * cols // w
    return (ys[:, None] * cols + xs[None, :]).expand(*shape).contiguous()


class SegmentationScores(torch.nn.Module):
    """FG-ARI / ARI / mBO per frame and per video, overall and per group, plus a per-sample table.

    The scores are torchmetrics ``Metric`` states (``dist_reduce_fx="cat"``), so :meth:`compute` returns
    values reduced over every rank's samples; :meth:`all_rows` reads the per-sample table of every rank from
    ``clip_rows`` (a ``GatheredRows``).

    ``grid_fg_ari`` / ``grid_video_fg_ari`` score :func:`grid_partition` with as many regions as slots (a
    position-only floor that a useful model has to beat). With ``untrained=True`` the ``untrained_*`` scores of
    the labels passed as ``untrained`` to :meth:`update` (the model at its initial weights) are kept too.
    """

    def __init__(self, num_slots: int = 7, alt_masks: str | None = None, untrained: bool = False) -> None:
        super().__init__()
        self.num_slots, self.alt_masks = num_slots, alt_masks
        self.frame = torch.nn.ModuleDict({
            "fg_ari": ARIMetric(True), "ari": ARIMetric(False), "mbo": MBOMetric(),
            "grid_fg_ari": ARIMetric(True, name="grid_fg_ari"),
        })
        # FG-ARI of the other mask source (decoder alphas vs slot-attention weights), frame level
        self.alt = ARIMetric(True, name=f"fg_ari_{alt_masks}") if alt_masks else None
        self.video = torch.nn.ModuleDict({
            "fg_ari": ARIMetric(True, name="video_fg_ari"), "ari": ARIMetric(False, name="video_ari"),
            "mbo": MBOMetric(name="video_mbo"), "grid_fg_ari": ARIMetric(True, name="grid_video_fg_ari"),
        })
        self.untrained = torch.nn.ModuleDict()
        if untrained:  # floors: the model at its initial weights, both mask sources, frame and clip level
            self.untrained["frame"] = ARIMetric(True, name="untrained_fg_ari")
            self.untrained["video"] = ARIMetric(True, name="untrained_video_fg_ari")
            if alt_masks:
                self.untrained["alt"] = ARIMetric(True, name=f"untrained_fg_ari_{alt_masks}")
        # per-clip scores, in the order the per-sample table shows them; the optional ones (the other mask source,
        # the untrained model) are dropped from the rows when their metric saw no batch
        self.optional = {f"fg_ari_{alt_masks}": self.alt} if self.alt is not None else {}
        if untrained:
            self.optional |= {"untrained_fg_ari": self.untrained["frame"],
                              "untrained_video_fg_ari": self.untrained["video"]}
            if alt_masks:
                self.optional[f"untrained_fg_ari_{alt_masks}"] = self.untrained["alt"]
        alt_clip = [f"fg_ari_{alt_masks}"] if alt_masks else []
        self.clip_keys = ["fg_ari", "grid_fg_ari", *alt_clip, "video_fg_ari", "grid_video_fg_ari",
                          *[k for k in self.optional if k.startswith("untrained")]]
        columns = [*ROW_NUMBERS, *ROW_SCORES, *[f"clip/{k}" for k in self.clip_keys]]
        self.clip_rows = GatheredRows(columns, dtypes={c: torch.long if c in ROW_NUMBERS else torch.float64
                                                       for c in columns}, order_by="index")
        self._seen = 0  # row index of a batch without ``index``

    def _metrics(self) -> list[torch.nn.Module]:
        return [*self.frame.values(), *self.video.values(), *([self.alt] if self.alt is not None else []),
                *self.untrained.values()]

    def reset(self) -> None:
        for m in self._metrics():
            m.reset()
        self.clip_rows.reset()
        self._seen = 0

    def update(
        self, pred: torch.Tensor, target: torch.Tensor, batch: dict, alt_pred: torch.Tensor | None = None,
        untrained: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> None:
        """``pred``/``target`` int (B,T,H,W); ``alt_pred`` the labels of the other mask source; ``untrained`` the
        labels of the untrained model ``(eval masks, other source)`` (scored when built with ``untrained=True``)."""
        b, t = target.shape[:2]
        groups = sample_groups(batch)
        frame_groups = None if groups is None else [g for g in groups for _ in range(t)]
        grid = grid_partition(self.num_slots, tuple(target.shape))
        per_clip: dict[str, torch.Tensor] = {}  # (B,) scores of each clip, for the per-sample rows

        def frames(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(b * t, *x.shape[2:])

        def clip_mean(name: str, frame_scores: torch.Tensor) -> None:
            per_clip[name] = torch.nanmean(frame_scores.view(b, t), dim=1) if t else torch.full((b,), float("nan"))

        pf, tf = frames(pred), frames(target)
        for name, m in self.frame.items():
            m.update(frames(grid) if name == "grid_fg_ari" else pf, tf, frame_groups)
        for name, m in self.video.items():
            m.update(grid if name == "grid_fg_ari" else pred, target, groups)
        clip_mean("fg_ari", ari(pf, tf, True))
        clip_mean("grid_fg_ari", ari(frames(grid), tf, True))
        if self.alt is not None and alt_pred is not None:
            self.alt.update(frames(alt_pred), tf, frame_groups)
            clip_mean(self.alt.name, ari(frames(alt_pred), tf, True))
        per_clip["video_fg_ari"] = ari(pred, target, True)
        per_clip["grid_video_fg_ari"] = ari(grid, target, True)
        if len(self.untrained) and untrained is not None:
            u_pred, u_alt = untrained
            self.untrained["frame"].update(frames(u_pred), tf, frame_groups)
            self.untrained["video"].update(u_pred, target, groups)
            clip_mean("untrained_fg_ari", ari(frames(u_pred), tf, True))
            per_clip["untrained_video_fg_ari"] = ari(u_pred, target, True)
            if "alt" in self.untrained and u_alt is not None:
                self.untrained["alt"].update(frames(u_alt), tf, frame_groups)
                clip_mean(self.untrained["alt"].name, ari(frames(u_alt), tf, True))
        idx = batch.get("index")
        nan = torch.full((b,), float("nan"), dtype=torch.float64)
        rows = {
            "index": idx.reshape(-1) if idx is not None else torch.arange(self._seen, self._seen + b),
            "group": torch.tensor([group_code(g) for g in groups] if groups else [-1] * b),
            "num_objects": batch["num_objects"].reshape(-1) if "num_objects" in batch else torch.full((b,), -1),
            "video_fg_ari": per_clip["video_fg_ari"], "video_ari": ari(pred, target, False),
            "video_mbo": mbo(pred, target), "frame_fg_ari_mean": per_clip["fg_ari"],
            **{f"clip/{k}": per_clip.get(k, nan) for k in self.clip_keys},
        }
        self.clip_rows.update(**{k: v.to(self.clip_rows.device) for k, v in rows.items()})
        self._seen += b

    def compute(self) -> dict[str, float]:
        """Every score over the samples of all ranks (torchmetrics syncs the states in ``compute``)."""
        out: dict[str, float] = {}
        for m in self._metrics():
            if m.update_called:  # metric saw at least one batch
                out.update({k: float(v) for k, v in m.compute().items()})
        return out

    def all_rows(self) -> list[dict[str, Any]]:
        """The per-sample rows of every rank (gathered under DDP), sorted by sample index."""
        if self.clip_rows.empty:
            return []
        cols = self.clip_rows.compute()
        skip = {f"clip/{k}" for k, metric in self.optional.items() if not metric.update_called}
        names = [c for c in self.clip_rows.names if c not in skip]
        values = {c: cols[c].tolist() for c in names}
        values["group"] = [group_name(g) for g in values["group"]]
        return [{c: values[c][i] for c in names} for i in range(len(values["index"]))]


def overlay_figure(video: torch.Tensor, gt: torch.Tensor, pred: torch.Tensor, max_clips: int = 4, max_frames: int = 4):
    """Matplotlib figure: per clip three rows (the image, the ground-truth objects and the predicted slots blended
    over it), one column per frame ``t``; each block of three rows is labelled with its clip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    video = video[:max_clips, :max_frames]
    gt, pred = gt[: len(video), : video.shape[1]], pred[: len(video), : video.shape[1]]
    n, t = video.shape[:2]
    fig, axes = plt.subplots(n * 3, t, figsize=(1.6 * t, 1.6 * 3 * n), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for i in range(n):
        for j in range(t):
            img = video[i, j].permute(1, 2, 0).float().cpu().numpy()
            img = img / 255.0 if img.max() > 1.0 else img
            for r, (title, lab) in enumerate((("image", None), ("GT objects", gt[i, j]), ("slots", pred[i, j]))):
                ax = axes[3 * i + r, j]
                shown = img
                if lab is not None:
                    colours = cmap(lab.cpu().numpy() % 20)[..., :3]
                    shown = 0.4 * img + 0.6 * colours
                ax.imshow(np.clip(shown, 0, 1))
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(f"clip {i}\n{title}", fontsize=7)
                if i == 0 and r == 0:
                    ax.set_title(f"frame t={j}", fontsize=7)
    fig.tight_layout()
    return fig
