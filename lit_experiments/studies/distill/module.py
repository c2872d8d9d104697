"""DistillModule: a mobile student trained on the frozen teacher's cached outputs, scored beside the teacher.

The datamodule (:class:`~.datamodule.DistillDataModule`) owns the frozen teacher and serves each unit's image,
both models' token ids, the ground truth and the teacher's outputs (cached). The module owns the student and the
losses (parts by constructor).

Stages (``stage.args.objective``; default: the stage name):

* ``decoder`` (prompt-in-the-loop distillation): :class:`~.losses.DistillLoss` of the student's outputs against
  the teacher's (capped teacher matching, F25), plus ``gt_weight`` x :class:`~.losses.SetLoss` on the ground
  truth when set.
* ``encoder``: :class:`~.losses.FeatureDistillLoss` (MSE + cosine) of the student's image features, through a
  trainable 1x1 projection (``feature_proj``, ``teacher_feature_dim`` channels) resized to the teacher's map,
  against the teacher's cached vision features (the stage sets ``data: {feature_level: ...}``).
* ``video``: the ``decoder`` objective on every frame of ShapesWorld clips (the stage sets ``data: {video:
  true}``), plus ``temporal_weight`` x :func:`~.clips.temporal_change` of the student's presence and query
  scores between consecutive frames.

The teacher's outputs (and vision features) are the targets of these losses: each step of the guard's window declares
them with the frozen teacher as their source (``track(targets=...)``), so a teacher output that requires grad or a
teacher with a trainable parameter stops the stage (F01).

``stage.args.init_from``: a checkpoint of this study (a stage's ``final.ckpt`` or a Lightning ``.ckpt``) whose
student weights the stage starts from (the seed continued from existing checkpoints); a checkpoint of another
study, or one without a student, is an error naming it.

Validation: SA-Co metrics of the student at the threshold 0.5 (``val/miou`` ...) and a
:class:`~.calibration.Calibration` (query / presence temperatures, threshold) of the student and one of the
teacher, fitted on the validation units only and stored in buffers, so every checkpoint carries the calibration of
its own weights (F42). Test (each number under one name): the student's metrics at its stored calibration
(``test/<metric>``) and at 0.5 (``test/student_raw/*``), the teacher's at its calibration
(``test/teacher_<metric>``) and at 0.5 (``test/teacher_raw/*``), ratios student / teacher at their calibrations
(``test/<metric>_ratio``), ECE of both at their calibrations (``test/ece``, ``test/teacher_ece``) and at T = 1
(``test/{student,teacher}_raw/ece``) with a reliability plot (``<run_dir>/distill/reliability.png``), the F46
numbers (each model at its calibration) and the gallery; every one of them in
``<run_dir>/distill/teacher_vs_student.{md,csv}`` (:meth:`~.testing.DistillTestMixin.write_teacher_vs_student`).
The headline is ``test/miou_pos`` with ``test/miou_pos_ratio`` (student / teacher on positive units) and concept
responsiveness; results.json ``references`` holds their floors (predict nothing, prompt-blind) and the teacher,
``per_item/test_units{,_pos}.json`` the per-unit IoUs (:mod:`.references`). Before the first fit, the teacher is
scored on every prompt family of the validation images (results.json ``teacher_families``, F53). With clips (``data.init_args.clips``), the clip frames are
scored apart (F27): ``test/video/{student,teacher}/*`` and ``test/video/{student,teacher}/temporal_stability``
(1 - the mean frame-to-frame change of presence and query scores).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torchmetrics import MeanMetric

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.specs import OptimSpec, StageSpec
from lit_experiments.core.specs import stage_args as read_stage_args
from lit_experiments.core.study import StudyModule
from lit_experiments.metrics.gathered import GatheredRows

from .components.calibration import (
    Calibration,
    calibration_records,
    cat_records,
    fit_calibration,
)
from .components.clips import flatten_clips, temporal_change
from .components.prompts import student_ids
from .components.references import family_scores, predict_nothing, prompt_blind
from .components.student import Student
from .components.testing import METRICS, DistillTestMixin
from .evaluation import (
    comparison_table,
    postprocess,
    unit_metric,
    update_metric,
)
from .losses import DistillLoss, FeatureDistillLoss, SetLoss

OBJECTIVES = ("decoder", "encoder", "video")


@dataclass
class DistillStageArgs:
    """Allowed ``stage.args`` keys: ``objective`` (default: the stage name when it is one), ``gt_weight``
    (weight of the ground-truth set loss beside distillation), ``temporal_weight`` (the video objective's
    temporal term), ``init_from`` (a checkpoint whose student weights the stage starts from)."""

    objective: str = "decoder"
    gt_weight: float = 0.0
    temporal_weight: float = 0.1
    init_from: str | None = None


#: the calibration records of an epoch (query / presence logits and labels), stored as float32 like the records
RECORD_COLUMNS = ("query_logits", "query_labels", "presence_logits", "presence_labels")


def record_rows() -> GatheredRows:
    """Calibration records of the epoch, gathered over ranks (stored ``float32``)."""
    return GatheredRows(RECORD_COLUMNS, dtypes=dict.fromkeys(RECORD_COLUMNS, torch.float32))


class DistillModule(DistillTestMixin, StudyModule):
    """Args:
        student: :class:`~.student.Student` (image encoder, text encoder, prompt decoder).
        distill_loss: :class:`~.losses.DistillLoss` (weights, ``max_matches``, ``min_teacher_score``).
        set_loss: :class:`~.losses.SetLoss` on the ground truth (used with ``gt_weight > 0``).
        feature_loss: :class:`~.losses.FeatureDistillLoss` of the ``encoder`` stage.
        teacher_feature_dim: channels of the teacher's vision features (SAM3's neck: 256); the projection
            ``feature_proj`` maps the student's features to them (``null``: no encoder stage).
        calibration_metric: what the validation threshold maximises (``f1`` or ``mcc``).
        probe_images: test images for the two F46 numbers (concept responsiveness, paraphrase stability) of
            student and teacher (0: skipped).
        gallery_images: test images of the visual check (teacher and student masks for every vocabulary prompt:
            PNG grids and an HTML page in ``<run_dir>/distill/gallery``; 0: skipped).
        stage_args: defaults of the stages' ``args``.
        optimizer: the optimizer of a plain ``fit``.
    """

    #: THE headline is the student's mIoU on positive units; each has floors in results.json ``references`` (F49)
    headline_metrics: ClassVar[list[str]] = [
        "test/miou_pos", "test/teacher_miou_pos", "test/miou_pos_ratio", "test/concept_responsiveness",
        "test/teacher_concept_responsiveness",
    ]

    def __init__(self, student: Student, distill_loss: DistillLoss | None = None, set_loss: SetLoss | None = None,
                 feature_loss: FeatureDistillLoss | None = None, teacher_feature_dim: int | None = None,
                 calibration_metric: str = "f1", probe_images: int = 16, gallery_images: int = 8,
                 stage_args: DistillStageArgs | None = None,
                 optimizer: OptimSpec | None = None) -> None:
        super().__init__(optimizer)
        self.save_hyperparameters(ignore=["student", "distill_loss", "set_loss", "feature_loss"])
        self.feature_loss = feature_loss or FeatureDistillLoss()
        self.feature_proj = (torch.nn.Conv2d(student.image_encoder.feature_dim, int(teacher_feature_dim), 1)
                             if teacher_feature_dim else None)
        if calibration_metric not in ("f1", "mcc"):
            raise ConfigError(f"model.init_args.calibration_metric={calibration_metric!r}; expected 'f1' or 'mcc'")
        self.student = student
        self.distill_loss = distill_loss or DistillLoss()
        self.set_loss = set_loss or SetLoss()
        self.calibration_metric, self.probe_images = calibration_metric, int(probe_images)
        self.gallery_images = int(gallery_images)
        self.stage_defaults = stage_args or DistillStageArgs()
        self.args = read_stage_args(self.stage, self.stage_defaults, OBJECTIVES)
        # the calibration of the current weights (fitted at each validation end; saved with the checkpoint)
        self.register_buffer("calibration_values", torch.tensor([1.0, 1.0, 0.5, 0.0], dtype=torch.float64))
        # the teacher's, fitted on the same validation units (so the table compares calibrated with calibrated)
        self.register_buffer("teacher_calibration_values", torch.tensor([1.0, 1.0, 0.5, 0.0], dtype=torch.float64))
        self.val_metric, self.test_student, self.test_raw, self.test_teacher = (unit_metric() for _ in range(4))
        self.test_teacher_raw = unit_metric()
        self.val_teacher_rows = record_rows()
        self.test_rows = torch.nn.ModuleDict({"student": record_rows(), "teacher": record_rows()})
        self.video_student, self.video_teacher = unit_metric(), unit_metric()
        self.video_change = torch.nn.ModuleDict({"student": MeanMetric(), "teacher": MeanMetric()})
        self.val_rows = record_rows()
        self.test_floors = torch.nn.ModuleDict({"predict_nothing": unit_metric(), "prompt_blind": unit_metric()})
        #: the (image, vocabulary word) of every test unit, gathered over ranks (order = the metrics')
        self.test_unit_rows = GatheredRows(("index", "unit"), dtypes={"index": torch.long, "unit": torch.long},
                                           flatten=("index", "unit"))

    # ------------------------------------------------------------------ stages
    def on_stage(self, stage: StageSpec) -> None:
        self.args = read_stage_args(stage, self.stage_defaults, OBJECTIVES)
        if self.args.init_from and getattr(self, "_in_curriculum", False):
            self.load_student(self.args.init_from, f"stage {stage.name!r}: args.init_from")

    def load_student(self, path: str | Path, what: str = "init_from") -> None:
        """Load the student weights of a checkpoint of this study (the rest of the module is left as it is)."""
        from lit_experiments.core.checkpoints import (
            CheckpointError,
            check_study,
            checkpoint_study,
            find_run_dir,
            read_checkpoint,
        )

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{what}={str(p)!r}: no such checkpoint file")
        ckpt = read_checkpoint(p)
        state = ckpt.get("state_dict", {})
        try:
            check_study(p, self, checkpoint_study(ckpt, find_run_dir(p)), state)
        except CheckpointError as err:
            raise ConfigError(f"{what}: {err}") from None
        student = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
        if not student:
            raise ConfigError(f"{what}={str(p)!r}: the checkpoint holds no student weights (keys student.*)")
        try:
            self.student.load_state_dict(student)
        except RuntimeError as err:
            raise ConfigError(f"{what}={str(p)!r}: its student does not fit this config's student "
                              f"({str(err).splitlines()[0][:160]})") from None

    # ------------------------------------------------------------------ calibration
    def _calibration(self, values: torch.Tensor) -> Calibration:
        t, tp, th, n = values.tolist()
        return Calibration(temperature=t, presence_temperature=tp, threshold=th, metric=self.calibration_metric,
                           fitted_on="validation units" if n else "", n=int(n))

    @property
    def calibration(self) -> Calibration:
        """The student's calibration (fitted at the last validation end; stored with the weights)."""
        return self._calibration(self.calibration_values)

    @property
    def teacher_calibration(self) -> Calibration:
        """The teacher's calibration, fitted on the same validation units."""
        return self._calibration(self.teacher_calibration_values)

    def _fit_into(self, buffer: torch.Tensor, records: dict[str, torch.Tensor]) -> Calibration:
        cal = fit_calibration(cat_records([records]), metric=self.calibration_metric, fitted_on="validation units")
        buffer.copy_(torch.tensor([cal.temperature, cal.presence_temperature, cal.threshold, float(max(cal.n, 1))],
                                  dtype=torch.float64))
        return cal

    # ------------------------------------------------------------------ model
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        if batch["image"].dim() == 5:  # clips: every frame is a unit
            batch = flatten_clips(batch)
        return self.student(batch["image"], self.student_ids(batch))

    def student_ids(self, batch: dict) -> torch.Tensor:
        """The batch's ``student_input_ids``, or its prompts tokenized by the student's own text tower (a
        datamodule used without this module at hand serves no student ids)."""
        if "student_input_ids" in batch:
            return batch["student_input_ids"]
        text = self.student.text_encoder
        if getattr(self, "_tokenizer", None) is None:
            self._tokenizer = text.tokenizer()
        return student_ids(self._tokenizer, batch["prompt"], text.context_length).to(batch["image"].device)

    def dry_run(self, batch: dict) -> None:
        self(batch)

    def export_parts(self, batch: dict) -> dict[str, Any]:
        """The student's image encoder, text encoder and decoder as separate exports (:mod:`.deploy`)."""
        from .deploy import export_parts

        return export_parts(self, batch)

    def _size(self, batch: dict) -> tuple[int, int]:
        return tuple(batch["image"].shape[-2:])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.args.objective == "encoder":
            return self._encoder_step(batch)
        video = self.args.objective == "video"
        if video != (batch["image"].dim() == 5):
            raise ConfigError(f"stage {self.stage_name!r}: the {self.args.objective} objective needs "
                              f"{'clips' if video else 'images'}; set the stage's data: {{video: {str(video).lower()}}}")
        if video:
            batch = flatten_clips(batch)
        if "teacher" not in batch:
            raise ConfigError("the decoder objective distils the teacher's outputs: give data.init_args.teacher")
        out = self(batch)
        terms = self.distill_loss(out, batch["teacher"])
        self.track(targets=self.teacher_targets(batch["teacher"], "teacher"))
        total = terms["loss"]
        if self.args.gt_weight > 0:
            gt = self.set_loss(out, batch["targets"])
            total = total + self.args.gt_weight * gt["loss"]
            self.log("train/gt", gt["loss"].detach(), batch_size=len(batch["prompt"]))
        b = len(batch["prompt"])
        if video and self.args.temporal_weight > 0:
            temporal = temporal_change(out, batch["frames"])
            total = total + self.args.temporal_weight * temporal
            self.log("train/temporal", temporal.detach(), batch_size=b, on_step=False, on_epoch=True)
        self.track(losses={"loss": total})
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=b)
        for name in ("mask_bce", "dice", "box_l1", "giou", "logit", "presence", "n_matched"):
            if name in terms:
                self.log(f"train/{name}", float(terms[name].detach()), batch_size=b, on_step=False, on_epoch=True)
        return total

    def teacher_targets(self, outputs: dict[str, Any], prefix: str) -> dict[str, Any]:
        """The teacher's outputs (cached or computed) as the targets of the loss, each with the frozen teacher
        (``self.frozen``) as its source, for ``track(targets=...)``: a teacher output that requires grad, or a
        teacher with a trainable parameter, stops the run (F01)."""
        source = self.frozen
        return {f"{prefix}/{k}": (v if source is None else (v, source)) for k, v in outputs.items()
                if isinstance(v, torch.Tensor)}

    def _encoder_step(self, batch: dict) -> torch.Tensor:
        if self.feature_proj is None:
            raise ConfigError("the encoder objective needs model.init_args.teacher_feature_dim (the channels of the "
                              "teacher's vision features) for the student's projection")
        if "teacher_features" not in batch:
            raise ConfigError("the encoder objective needs the teacher's vision features: set the stage's "
                              "data: {feature_level: -1} (an FPN level of the teacher's neck)")
        teacher = batch["teacher_features"]
        self.track(targets=self.teacher_targets({"features": teacher}, "teacher"))
        student = self.feature_proj(self.student.encode_image(batch["image"]))
        if student.shape[-2:] != teacher.shape[-2:]:
            student = torch.nn.functional.interpolate(student, size=teacher.shape[-2:], mode="bilinear",
                                                      align_corners=False)
        terms = self.feature_loss(student, teacher)
        b = len(batch["prompt"])
        self.track(losses={"loss": terms["loss"]})
        self.log("train/loss", terms["loss"].detach(), prog_bar=True, batch_size=b)
        self.log("train/feature_mse", terms["mse"].detach(), batch_size=b, on_step=False, on_epoch=True)
        self.log("train/feature_cosine", terms["cosine"].detach(), batch_size=b, on_step=False, on_epoch=True)
        return terms["loss"]

    def on_fit_start(self) -> None:
        """F53: before the first distillation, the teacher against ground truth on every prompt family of the
        validation images (``results.json["teacher_families"]``)."""
        super().on_fit_start()
        if "teacher_families" in self.extra_results or self.frozen is None:
            return
        dm = self.trainer.datamodule
        if hasattr(dm, "prepare"):
            self.add_results("teacher_families", family_scores(dm, "val"))

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self(batch)
        update_metric(self.val_metric, postprocess(out, size=self._size(batch)), batch["targets"])
        self.val_rows.update(**calibration_records(out, batch["targets"]))
        if "teacher" in batch:
            self.val_teacher_rows.update(**calibration_records(batch["teacher"], batch["targets"]))

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_metric.compute()
        for name in METRICS:
            if math.isfinite(float(metrics[name])):
                self.log(f"val/{name}", float(metrics[name]), prog_bar=name == "miou")
        records = self.val_rows.compute()
        teacher = self.val_teacher_rows.compute() if self.val_teacher_rows.update_count else None
        self.val_metric.reset()
        self.val_rows.reset()
        self.val_teacher_rows.reset()
        if self.trainer.sanity_checking:
            return
        cal = self._fit_into(self.calibration_values, records)
        self.log("val/calibrated_threshold", float(cal.threshold))
        if teacher is not None:
            self._fit_into(self.teacher_calibration_values, teacher)

    # ------------------------------------------------------------------ test
    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch["image"].dim() == 5:  # clips: scored apart from images (F27)
            return self._clip_test_step(flatten_clips(batch))
        out, size = self(batch), self._size(batch)
        update_metric(self.test_student, postprocess(out, size=size, **self.calibration.postprocess_kwargs()),
                      batch["targets"])
        update_metric(self.test_raw, postprocess(out, size=size), batch["targets"])
        dm = getattr(self.trainer, "datamodule", None)
        update_metric(self.test_floors["predict_nothing"], predict_nothing(batch["targets"]), batch["targets"])
        if dm is not None and hasattr(dm, "unit_source"):
            update_metric(self.test_floors["prompt_blind"], prompt_blind(dm.unit_source("test"), batch["index"],
                                                                         batch["targets"]), batch["targets"])
        self.test_unit_rows.update(index=batch["index"], unit=batch["unit"])
        self.test_rows["student"].update(**calibration_records(out, batch["targets"]))
        if "teacher" in batch:
            teacher = batch["teacher"]
            update_metric(self.test_teacher, postprocess(teacher, size=size,
                                                         **self.teacher_calibration.postprocess_kwargs()),
                          batch["targets"])
            update_metric(self.test_teacher_raw, postprocess(teacher, size=size), batch["targets"])
            self.test_rows["teacher"].update(**calibration_records(teacher, batch["targets"]))

    def on_test_epoch_end(self) -> None:
        student = {k: float(v) for k, v in self.test_student.compute().items()}
        raw = {k: float(v) for k, v in self.test_raw.compute().items()}
        undefined: dict[str, str] = {}
        for name in METRICS:  # one name per number: the student's as test/<metric>, the teacher's test/teacher_*
            self._log_defined(f"test/{name}", student[name], undefined)
            self._log_defined(f"test/student_raw/{name}", raw[name], undefined)
        teacher: dict[str, float] = {}
        rows: list[dict[str, Any]] = []
        teacher_raw: dict[str, float] = {}
        if self.test_teacher.update_count:
            teacher = {k: float(v) for k, v in self.test_teacher.compute().items()}
            teacher_raw = {k: float(v) for k, v in self.test_teacher_raw.compute().items()}
            for name, value in teacher_raw.items():
                if name in METRICS:
                    self._log_defined(f"test/teacher_raw/{name}", value, undefined)
            rows = comparison_table(teacher, student, METRICS)
            for row in rows:
                self._log_defined(f"test/teacher_{row['metric']}", float(row["teacher"]), undefined)
                if row["ratio"] == row["ratio"]:  # NaN when the teacher's value is <= 0 (no meaningful ratio)
                    self.log(f"test/{row['metric']}_ratio", float(row["ratio"]))
        if self.probe_images > 0:
            for name, value in self.prompt_probes().items():
                self._log_defined(name, value, undefined)
        self._references(student, teacher if self.test_teacher.update_count else None)
        if self._is_rank_zero():
            gallery = self.write_gallery()
            if gallery:
                self.add_results("gallery", gallery)
        if self.frozen is not None and hasattr(self.frozen, "settings"):
            self.add_results("teacher", self.frozen.settings())
        self._clip_results(undefined)
        note = self._calibration_results()
        if rows and self._is_rank_zero():
            self.write_teacher_vs_student(rows, comparison_table(teacher_raw, raw, METRICS), note)
        self.add_results("calibration", self.calibration.state_dict())
        if self.teacher_calibration.fitted:
            self.add_results("teacher_calibration", self.teacher_calibration.state_dict())
        if undefined:
            self.add_results("undefined", undefined)
        for m in (self.test_student, self.test_raw, self.test_teacher, self.test_teacher_raw,
                  *self.test_rows.values(), *self.test_floors.values(), self.test_unit_rows):
            m.reset()
