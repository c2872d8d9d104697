"""SlotsModule: SAVi / DINOSAUR slot attention on frozen features (or pixels), evaluated by FG-ARI.

Batch keys (from :class:`~.datamodule.SlotsDataModule`): ``features`` float (B,T,N,C) frozen backbone
features (feature path), ``video`` uint8 (B,T,3,H,W), ``instances`` int64 (B,T,H,W) (0 = background),
optional ``material`` / ``category`` / ``num_objects`` / ``index``. Images are clips with T = 1.

Test (F49, F51): beside every headline FG-ARI, results.json ``references`` holds two floors scored by the same
metric code on the same frames: a fixed grid partition (one rectangle per slot) and the untrained model (the
same parts at the weights they had before the first step, kept from the first dry run). Per-clip scores of the
model and both floors go to ``<run_dir>/per_item/slots_test.json`` for the paired bootstrap of ``lit-exp report``.
"""
from __future__ import annotations

import copy
import math
from typing import Any, ClassVar, Literal

import torch
from torchmetrics import MeanMetric

from lit_experiments.core.seeding import isolated_rng
from lit_experiments.core.specs import OptimSpec
from lit_experiments.core.study import StudyModule

from .decoders import MLPDecoder, SlotDecoder
from .encoders import FeatureInput, SlotEncoder
from .evaluation import SegmentationScores, overlay_figure, predicted_labels
from .losses import ReconstructionLoss, slot_diversity_loss
from .model import SlotModel, SlotOutput
from .predictor import TransformerPredictor
from .slot_attention import SlotAttention

EVAL_LOSSES = ("loss", "recon", "recon_rel")


class SlotsModule(StudyModule):
    """Slot attention over frozen features or pixels; every part is a constructor argument.

    Args:
        encoder: ``FeatureInput`` (frozen features, optional trainable projection; F01) or ``PixelEncoder``.
        grouper: ``SlotAttention`` (slot size, slots, iterations, init part, BO-QSA, positional embedding F04);
            its input size and grid are taken from the first batch.
        decoder: ``MLPDecoder`` (DINOSAUR) or ``TransformerDecoder``; slot size, channels and positions inferred.
        predictor: ``TransformerPredictor`` (SAVi: slots carried from frame to frame) or None (each frame
            grouped on its own, DINOSAUR).
        loss: ``ReconstructionLoss(kind=mse | cosine | channel_norm)`` (F02, F03).
        diversity_weight: weight of the slot-diversity term (seed: 0.1); stage ``loss_weights`` override
            it as ``diversity`` (and ``recon`` for the reconstruction term).
        eval_masks: ``decoder`` (alpha masks, DINOSAUR) or ``attn`` (last slot-attention iteration); the
            other source is scored too, as ``fg_ari_<other>``.
        figure_clips: clips drawn in the mask-overlay figure of validation / test (0 = none).
        optimizer: the optimizer of a plain ``fit`` (curriculum stages give their own).
    """

    loss_lower_bounds: ClassVar[dict[str, float]] = {"loss": 0.0, "recon": 0.0, "diversity": 0.0}
    # the grid partition and the untrained model are floors beside these (results.json ``references``), not rows
    headline_metrics: ClassVar[list[str]] = [
        "test/fg_ari", "test/fg_ari/metal", "test/fg_ari/non-metal", "test/video_fg_ari",
        "test/fg_ari_attn", "test/fg_ari_decoder",
    ]

    def __init__(
        self,
        encoder: SlotEncoder | None = None,
        grouper: SlotAttention | None = None,
        decoder: SlotDecoder | None = None,
        predictor: TransformerPredictor | None = None,
        loss: ReconstructionLoss | None = None,
        diversity_weight: float = 0.1,
        eval_masks: Literal["decoder", "attn"] = "decoder",
        figure_clips: int = 4,
        optimizer: OptimSpec | None = None,
    ) -> None:
        super().__init__(optimizer)
        self.save_hyperparameters(ignore=["encoder", "grouper", "decoder", "predictor", "loss"])
        if diversity_weight < 0:
            raise ValueError(f"diversity_weight must be >= 0, got {diversity_weight}")
        if eval_masks not in ("decoder", "attn"):
            raise ValueError(f"eval_masks must be 'decoder' or 'attn', got {eval_masks!r}")
        self.recon_loss = loss or ReconstructionLoss()
        self.diversity_weight, self.eval_masks, self.figure_clips = diversity_weight, eval_masks, figure_clips
        self.model = SlotModel(encoder or FeatureInput(), grouper or SlotAttention(), decoder or MLPDecoder(),
                               predictor)
        self.alt_masks = "attn" if eval_masks == "decoder" else "decoder"  # scored too, as fg_ari_<alt>
        num_slots = self.model.grouper.num_slots
        self.val_scores = SegmentationScores(num_slots, alt_masks=self.alt_masks)
        self.test_scores = SegmentationScores(num_slots, alt_masks=self.alt_masks, untrained=True)
        self._init_state: dict[str, torch.Tensor] | None = None  # the weights before the first step (a floor)
        self._untrained: list[SlotModel] = []  # the untrained copy during a test (a list: not a submodule)
        # eval losses as torchmetrics means (weighted by clips), reduced across ranks like the scores
        self.eval_losses = torch.nn.ModuleDict(
            {f"{split}_{name}": MeanMetric() for split in ("val", "test") for name in EVAL_LOSSES}
        )
        self._figure_batch: dict[str, Any] | None = None

    # ------------------------------------------------------------------ model
    def forward(self, batch: dict) -> SlotOutput:
        return self.model(batch)

    def dry_run(self, batch: dict) -> None:
        self.model.build(_to(batch, self.device))
        self.model(_to(batch, self.device))
        if self._init_state is None:  # the first dry run comes before any step and before any weights load
            self._init_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def untrained_model(self) -> SlotModel | None:
        """A copy of the model at the weights it had at its first dry run (None before one)."""
        if self._init_state is None:
            return None
        model = copy.deepcopy(self.model)
        model.load_state_dict(self._init_state)
        return model.eval().to(self.device)

    def losses(self, out: SlotOutput) -> dict[str, torch.Tensor]:
        rl = self.recon_loss(out.recon, out.target)
        div = slot_diversity_loss(out.slots)
        w_div = self.loss_weight("diversity", self.diversity_weight)
        total = self.loss_weight("recon", 1.0) * rl.loss + w_div * div
        return {"loss": total, "recon": rl.loss, "diversity": div, "recon_rel": rl.relative}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self(batch)
        terms = self.losses(out)
        # F01: the guard fails the run if the reconstruction target carries grad, if its declared source (the
        # batch's frozen features or frames, from the datamodule's frozen part) has trainable parameters, or if
        # the target is the output of a part trainable in this stage (a projection, under no_grad or not)
        frozen = self.frozen
        self.track(
            targets={"recon_target": (out.target, [frozen] if isinstance(frozen, torch.nn.Module) else [])},
            # clips of a batch must differ in what the model groups (a cache or loader returning one clip's
            # features for every clip is caught). The slots are not checked: with a learned init they
            # legitimately barely depend on the input at the first steps, and gaussian noise hides collapse.
            representations={"inputs": out.target[:, 0]},
            losses={"loss": terms["loss"], "recon": terms["recon"], "diversity": terms["diversity"]},
        )
        b = out.slots.shape[0]
        for name, value in terms.items():
            self.log(f"train/{name}", value.detach(), prog_bar=name == "loss", batch_size=b)
        return terms["loss"]

    # ------------------------------------------------------------- evaluation
    def masks_for_eval(self, out: SlotOutput, source: str | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(masks (B,T,K,N), grid)`` of a mask source (default ``eval_masks``): decoder alphas or attention."""
        if (source or self.eval_masks) == "decoder":
            return out.masks, out.grid
        assert out.sa_grid is not None
        return out.attn, out.sa_grid

    def _eval_step(self, batch: dict, scores: SegmentationScores, split: str) -> None:
        out = self(batch)
        terms = self.losses(out)
        b = out.slots.shape[0]
        for name in EVAL_LOSSES:
            self.eval_losses[f"{split}_{name}"].update(terms[name].detach(), b)
        if "instances" not in batch:
            return
        gt = batch["instances"]
        gt = gt.unsqueeze(1) if gt.dim() == 3 else gt
        pred, target = predicted_labels(*self.masks_for_eval(out), gt)
        alt_pred = predicted_labels(*self.masks_for_eval(out, self.alt_masks), gt)[0]
        untrained = None
        if split == "test" and self._untrained:
            with torch.no_grad(), isolated_rng():  # the floor must not move the random state the model sees
                u_out = self._untrained[0](batch)
            untrained = (predicted_labels(*self.masks_for_eval(u_out), gt)[0].cpu(),
                         predicted_labels(*self.masks_for_eval(u_out, self.alt_masks), gt)[0].cpu())
        scores.update(pred.cpu(), target.cpu(), _cpu_meta(batch), alt_pred.cpu(), untrained)
        if self._figure_batch is None and self.figure_clips > 0:
            video = batch.get("video", batch.get("image"))
            if video is not None:
                video = video.unsqueeze(1) if video.dim() == 4 else video
                self._figure_batch = {"video": video[: self.figure_clips].cpu(),
                                      "gt": target[: self.figure_clips].cpu(),
                                      "pred": pred[: self.figure_clips].cpu()}

    def _eval_end(self, scores: SegmentationScores, split: str) -> dict[str, float]:
        # every number below is reduced across ranks by torchmetrics (compute() syncs), so logging it
        # with sync_dist=False is right: a 2-rank run reports what a 1-rank run reports (F44)
        values = {}
        for name in EVAL_LOSSES:
            metric = self.eval_losses[f"{split}_{name}"]
            if metric.update_called:
                values[name] = float(metric.compute())
            metric.reset()
        values.update(scores.compute())
        for key, value in values.items():
            if "_count" in key or "_skipped" in key:
                continue
            self.log(f"{split}/{key}", value, sync_dist=False)
        if split == "test":
            rows = scores.all_rows()
            self.log_table("test/per_sample", rows)
            self.add_results("slots_test", values)
            self._add_floors(values)
            self._save_per_item(rows)
        if self._figure_batch is not None and not self.trainer.sanity_checking:
            fb = self._figure_batch
            self.log_figure(f"{split}/masks", overlay_figure(fb["video"], fb["gt"], fb["pred"], self.figure_clips))
        self._figure_batch = None
        scores.reset()
        return values

    def on_validation_epoch_start(self) -> None:
        self.val_scores.reset()
        self._figure_batch = None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_scores, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end(self.val_scores, "val")

    def on_test_epoch_start(self) -> None:
        self.test_scores.reset()
        self._figure_batch = None
        model = self.untrained_model()
        self._untrained = [model] if model is not None else []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_scores, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end(self.test_scores, "test")
        self._untrained = []

    # ------------------------------------------------------------- floors (F49) and per-clip scores (F51)
    def _add_floors(self, values: dict[str, float]) -> None:
        """``references`` rows beside every FG-ARI the test reports (overall, per group, clip level, other source)."""
        alt = f"fg_ari_{self.alt_masks}"
        k = self.model.grouper.num_slots
        for key in values:
            for base, grid, untrained in (("fg_ari", "grid_fg_ari", "untrained_fg_ari"),
                                          ("video_fg_ari", "grid_video_fg_ari", "untrained_video_fg_ari"),
                                          (alt, "grid_fg_ari", f"untrained_{alt}")):
                if key != base and not key.startswith(base + "/"):
                    continue
                suffix = key[len(base):]
                metric = f"test/{key}"
                self.add_reference(metric, "grid partition", values.get(grid + suffix), "floor",
                                   what=f"{k} fixed rectangles (one per slot) that ignore the image")
                if untrained + suffix in values:
                    self.add_reference(metric, "untrained model", values[untrained + suffix], "floor",
                                       what="the same model at its initial weights (the run's seed), same masks")

    def _save_per_item(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        dm = self.trainer.datamodule if self._trainer is not None else None
        ids: list[Any] = [r["index"] for r in rows]
        if dm is not None and hasattr(dm, "item_ids"):
            known = dm.item_ids("test")
            ids = [known[i] if 0 <= i < len(known) else i for i in ids]
        keys = [c for c in rows[0] if c.startswith("clip/")]
        scores = {c.split("/", 1)[1]: [r.get(c, math.nan) for r in rows] for c in keys}
        self.save_per_item("slots_test", ids, scores,
                           meta={"unit": "clip", "masks": self.eval_masks,
                                 "note": "fg_ari*: mean over the clip's frames; video_*: the clip as one sample"})


_META_KEYS = ("material", "category", "num_objects", "index")


def _cpu_meta(batch: dict) -> dict:
    return {k: batch[k].cpu() for k in _META_KEYS if k in batch and isinstance(batch[k], torch.Tensor)} | {
        "instances": batch["instances"]
    }


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
