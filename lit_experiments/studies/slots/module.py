"""SlotsModule: SAVi / DINOSAUR slot attention on frozen features (or pixels), evaluated by FG-ARI.

Batch keys (from :class:`~.datamodule.SlotsDataModule`): ``features`` float (B,T,N,C) frozen backbone
features (feature path), ``video`` uint8 (B,T,3,H,W), ``instances`` int64 (B,T,H,W) (0 = background),
optional ``material`` / ``category`` / ``num_objects`` / ``index``. Images are clips with T = 1.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torchmetrics import MeanMetric

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
    headline_metrics: ClassVar[list[str]] = [
        "test/fg_ari", "test/fg_ari/metal", "test/fg_ari/non-metal", "test/grid_fg_ari", "test/video_fg_ari",
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
        self.test_scores = SegmentationScores(num_slots, alt_masks=self.alt_masks)
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

    def losses(self, out: SlotOutput) -> dict[str, torch.Tensor]:
        rl = self.recon_loss(out.recon, out.target)
        div = slot_diversity_loss(out.slots)
        w_div = self.loss_weight("diversity", self.diversity_weight)
        total = self.loss_weight("recon", 1.0) * rl.loss + w_div * div
        return {"loss": total, "recon": rl.loss, "diversity": div, "recon_rel": rl.relative}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self(batch)
        terms = self.losses(out)
        # F01: the guard fails the run if the reconstruction target carries grad
        self.track(
            targets={"recon_target": out.target},
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
        scores.update(pred.cpu(), target.cpu(), _cpu_meta(batch), alt_pred.cpu())
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
            self.log_table("test/per_sample", scores.all_rows())
            self.add_results("slots_test", values)
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

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_scores, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end(self.test_scores, "test")


_META_KEYS = ("material", "category", "num_objects", "index")


def _cpu_meta(batch: dict) -> dict:
    return {k: batch[k].cpu() for k in _META_KEYS if k in batch and isinstance(batch[k], torch.Tensor)} | {
        "instances": batch["instances"]
    }


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
