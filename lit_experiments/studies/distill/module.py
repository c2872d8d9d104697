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
* ``video`` is not built yet (issue 15): choosing it is a config error that says so.

Validation: SA-Co metrics of the student at the threshold 0.5 (``val/miou`` ...) and a
:class:`~.calibration.Calibration` (query / presence temperatures, threshold) fitted on the validation units
only and stored in buffers, so every checkpoint carries the calibration of its own weights (F42). Test: the
student's metrics at its stored calibration (``test/student/*``) and at 0.5 (``test/student_raw/*``), the
teacher's at 0.5 (``test/teacher/*``), ratios student / teacher (``test/ratio/*``), and a table in
``<run_dir>/distill/teacher_vs_student.{md,csv}``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torchmetrics import Metric

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.specs import OptimSpec, StageSpec, stage_args
from lit_experiments.core.study import StudyModule

from .calibration import Calibration, calibration_records, cat_records, fit_calibration
from .evaluation import (
    comparison_table,
    concept_responsiveness,
    paraphrase_stability,
    postprocess,
    unit_metric,
    update_metric,
    write_table,
)
from .losses import DistillLoss, FeatureDistillLoss, SetLoss
from .student import Student

OBJECTIVES = ("decoder", "encoder", "video")
BUILT = ("encoder", "decoder")
METRICS = ("miou", "miou_pos", "presence_f1", "il_mcc", "pmf1", "cgf1")


@dataclass
class StageArgs:
    """Allowed ``stage.args`` keys: ``objective`` (default: the stage name when it is one), ``gt_weight``
    (weight of the ground-truth set loss beside distillation)."""

    objective: str = "decoder"
    gt_weight: float = 0.0


class Records(Metric):
    """Calibration records (query / presence logits and labels) of the epoch, gathered over ranks."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("query_logits", "query_labels", "presence_logits", "presence_labels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, records: dict[str, torch.Tensor]) -> None:
        for name, value in records.items():
            getattr(self, name).append(value.detach().float())

    def compute(self) -> dict[str, torch.Tensor]:
        return {n: (torch.cat(v) if isinstance(v, list) else v) for n in
                ("query_logits", "query_labels", "presence_logits", "presence_labels") for v in [getattr(self, n)]}


class DistillModule(StudyModule):
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
        stage_args: defaults of the stages' ``args``.
        optimizer: the optimizer of a plain ``fit``.
    """

    headline_metrics: ClassVar[list[str]] = [
        "test/student/miou", "test/teacher/miou", "test/ratio/miou", "test/student/presence_f1",
        "test/teacher/presence_f1", "test/student/cgf1", "test/teacher/cgf1", "test/student/concept_responsiveness",
        "test/teacher/concept_responsiveness", "test/student/paraphrase_stability",
    ]

    def __init__(self, student: Student, distill_loss: DistillLoss | None = None, set_loss: SetLoss | None = None,
                 feature_loss: FeatureDistillLoss | None = None, teacher_feature_dim: int | None = None,
                 calibration_metric: str = "f1", probe_images: int = 16, stage_args: StageArgs | None = None,
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
        self.stage_defaults = stage_args or StageArgs()
        self.args = self._stage_args(self.stage)
        # the calibration of the current weights (fitted at each validation end; saved with the checkpoint)
        self.register_buffer("calibration_values", torch.tensor([1.0, 1.0, 0.5, 0.0], dtype=torch.float64))
        self.val_metric, self.test_student, self.test_raw, self.test_teacher = (unit_metric() for _ in range(4))
        self.val_records = Records()

    # ------------------------------------------------------------------ stages
    def _stage_args(self, stage: StageSpec) -> StageArgs:
        args = stage_args(stage, self.stage_defaults, OBJECTIVES)
        if args.objective not in BUILT:
            what = "is not built yet (issue 15)" if args.objective in OBJECTIVES else "is unknown"
            raise ConfigError(f"stage {stage.name!r}: objective {args.objective!r} {what}; expected one of "
                              f"{list(BUILT)}")
        return args

    def on_stage(self, stage: StageSpec) -> None:
        self.args = self._stage_args(stage)

    # ------------------------------------------------------------------ calibration
    @property
    def calibration(self) -> Calibration:
        t, tp, th, n = self.calibration_values.tolist()
        return Calibration(temperature=t, presence_temperature=tp, threshold=th, metric=self.calibration_metric,
                           fitted_on="validation units" if n else "", n=int(n))

    # ------------------------------------------------------------------ model
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.student(batch["image"], batch["student_input_ids"])

    def dry_run(self, batch: dict) -> None:
        self(batch)

    def _size(self, batch: dict) -> tuple[int, int]:
        return tuple(batch["image"].shape[-2:])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.args.objective == "encoder":
            return self._encoder_step(batch)
        if "teacher" not in batch:
            raise ConfigError("the decoder objective distils the teacher's outputs: give data.init_args.teacher")
        out = self(batch)
        terms = self.distill_loss(out, batch["teacher"])
        total = terms["total"]
        if self.args.gt_weight > 0:
            gt = self.set_loss(out, batch["targets"])
            total = total + self.args.gt_weight * gt["total"]
            self.log("train/gt", gt["total"].detach(), batch_size=len(batch["prompt"]))
        b = len(batch["prompt"])
        self.track(losses={"loss": total})
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=b)
        for name in ("mask_bce", "dice", "box_l1", "giou", "logit", "presence", "n_matched"):
            if name in terms:
                self.log(f"train/{name}", float(terms[name].detach()), batch_size=b, on_step=False, on_epoch=True)
        return total

    def _encoder_step(self, batch: dict) -> torch.Tensor:
        if self.feature_proj is None:
            raise ConfigError("the encoder objective needs model.init_args.teacher_feature_dim (the channels of the "
                              "teacher's vision features) for the student's projection")
        if "teacher_features" not in batch:
            raise ConfigError("the encoder objective needs the teacher's vision features: set the stage's "
                              "data: {feature_level: -1} (an FPN level of the teacher's neck)")
        teacher = batch["teacher_features"]
        student = self.feature_proj(self.student.encode_image(batch["image"]))
        if student.shape[-2:] != teacher.shape[-2:]:
            student = torch.nn.functional.interpolate(student, size=teacher.shape[-2:], mode="bilinear",
                                                      align_corners=False)
        terms = self.feature_loss(student, teacher)
        b = len(batch["prompt"])
        self.track(losses={"loss": terms["total"]})
        self.log("train/loss", terms["total"].detach(), prog_bar=True, batch_size=b)
        self.log("train/feature_mse", terms["mse"].detach(), batch_size=b, on_step=False, on_epoch=True)
        self.log("train/feature_cosine", terms["cosine"].detach(), batch_size=b, on_step=False, on_epoch=True)
        return terms["total"]

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self(batch)
        update_metric(self.val_metric, postprocess(out, size=self._size(batch)), batch["targets"])
        self.val_records.update(calibration_records(out, batch["targets"]))

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_metric.compute()
        for name in METRICS:
            if math.isfinite(float(metrics[name])):
                self.log(f"val/{name}", float(metrics[name]), prog_bar=name == "miou")
        records = self.val_records.compute()
        self.val_metric.reset()
        self.val_records.reset()
        if self.trainer.sanity_checking:
            return
        cal = fit_calibration(cat_records([records]), metric=self.calibration_metric, fitted_on="validation units")
        self.calibration_values.copy_(torch.tensor([cal.temperature, cal.presence_temperature, cal.threshold,
                                                    float(max(cal.n, 1))], dtype=torch.float64))
        self.log("val/calibrated_threshold", float(cal.threshold))

    # ------------------------------------------------------------------ test
    def test_step(self, batch: dict, batch_idx: int) -> None:
        out, size = self(batch), self._size(batch)
        update_metric(self.test_student, postprocess(out, size=size, **self.calibration.postprocess_kwargs()),
                      batch["targets"])
        update_metric(self.test_raw, postprocess(out, size=size), batch["targets"])
        if "teacher" in batch:
            update_metric(self.test_teacher, postprocess(batch["teacher"], size=size), batch["targets"])

    def prompt_probes(self) -> dict[str, float]:
        """F46 on the first ``probe_images`` test images, for student and teacher: concept responsiveness (mean
        score of present-category prompts minus absent ones; 0 = the prompt is ignored) and paraphrase stability
        (agreement of the masks of ``c`` / ``a c`` / ``the c`` on images that contain ``c``)."""
        from .datamodule import student_tokenizer
        from .prompts import DualTokenizer

        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or getattr(dm, "teacher", None) is None:
            return {}
        src = dm.source("test")
        keep = [i for i in range(len(src)) if src.present[i] and len(src.present[i]) < len(dm.categories)]
        keep = keep[: self.probe_images]
        if not keep:
            return {}
        images = torch.stack([src.image(i) for i in keep])
        present = [src.present[i] for i in keep]
        absent = [[c for c in dm.categories if c not in p] for p in present]
        tok = DualTokenizer(dm.teacher.tokenizer, student_tokenizer(dm.student_tokenizer_name, dm.student_context),
                            dm.teacher.text_max_length, dm.student_context)

        def student_fn(imgs: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
            return self.student(imgs.to(self.device), tok.student_encode(prompts).to(self.device))

        def teacher_fn(imgs: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
            ids, mask = tok.teacher_encode(prompts)
            return dm.teacher(images=imgs.to(dm.teacher.model.device), input_ids=ids, attention_mask=mask)

        groups = [[c, f"a {c}", f"the {c}"] for c in dm.categories]
        where = [[j for j, p in enumerate(present) if c in p] for c in dm.categories]
        groups, where = [g for g, w in zip(groups, where) if w], [w for w in where if w]
        out = {}
        with torch.no_grad():
            for who, fn in (("student", student_fn), ("teacher", teacher_fn)):
                out[f"test/{who}/concept_responsiveness"] = concept_responsiveness(fn, images, present, absent)
                out[f"test/{who}/paraphrase_stability"] = paraphrase_stability(fn, images, groups, group_images=where)
        return out

    def _log_defined(self, name: str, value: float, undefined: dict[str, str]) -> None:
        """Log a finite metric; an undefined one (NaN: e.g. IL_MCC when no unit is predicted present, an empty
        marginal) is listed in results.json ``undefined`` instead of being logged as a number."""
        if math.isfinite(value):
            self.log(name, value)
        else:
            undefined[name] = "undefined on this split (an empty confusion-matrix marginal or no positive unit)"

    def on_test_epoch_end(self) -> None:
        student = {k: float(v) for k, v in self.test_student.compute().items()}
        raw = {k: float(v) for k, v in self.test_raw.compute().items()}
        undefined: dict[str, str] = {}
        for name in METRICS:
            self._log_defined(f"test/student/{name}", student[name], undefined)
            self._log_defined(f"test/student_raw/{name}", raw[name], undefined)
        if self.test_teacher.update_count:
            teacher = {k: float(v) for k, v in self.test_teacher.compute().items()}
            rows = comparison_table(teacher, student, METRICS)
            for row in rows:
                self._log_defined(f"test/teacher/{row['metric']}", float(row["teacher"]), undefined)
                if row["ratio"] == row["ratio"]:  # NaN when the teacher's value is <= 0 (no meaningful ratio)
                    self.log(f"test/ratio/{row['metric']}", float(row["ratio"]))
            if self._is_rank_zero():
                write_table(rows, self.run_dir / "distill", "teacher_vs_student")
        if self.probe_images > 0:
            for name, value in self.prompt_probes().items():
                self._log_defined(name, value, undefined)
        self.add_results("calibration", self.calibration.state_dict())
        if undefined:
            self.add_results("undefined", undefined)
        for m in (self.test_student, self.test_raw, self.test_teacher):
            m.reset()
