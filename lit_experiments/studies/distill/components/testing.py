"""The distill test's reporting, as a mixin of :class:`~.module.DistillModule`: clip scores (F27), the F46 probes,
the gallery, ECE and the reliability plot, and ``teacher_vs_student.{md,csv}`` (every test number of both models).

Everything here reads the module's state (student, calibrations, torchmetrics states, ``trainer.datamodule``)
and logs or writes through it; ``DistillModule.on_test_epoch_end`` calls it in order.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..evaluation import (
    concept_responsiveness,
    paraphrase_stability,
    postprocess,
    update_metric,
    write_sections,
)
from .calibration import ece, ece_note, reliability_plot, unit_scores
from .clips import temporal_change
from .gallery import visual_check

METRICS = ("miou", "miou_pos", "presence_f1", "il_mcc", "pmf1", "cgf1")


class DistillTestMixin:
    """Test-time reporting of :class:`~.module.DistillModule` (see the module docstring)."""

    def _clip_test_step(self, batch: dict) -> None:
        out, size, t = self(batch), self._size(batch), batch["frames"]
        clips = batch["image"].shape[0] // t  # each clip weighs the same, however the ranks batch them (F44)
        update_metric(self.video_student, postprocess(out, size=size, **self.calibration.postprocess_kwargs()),
                      batch["targets"])
        self.video_change["student"].update(temporal_change(out, t), weight=clips)
        if "teacher" in batch:
            update_metric(self.video_teacher, postprocess(batch["teacher"], size=size,
                                                          **self.teacher_calibration.postprocess_kwargs()),
                          batch["targets"])
            self.video_change["teacher"].update(temporal_change(batch["teacher"], t), weight=clips)

    def _clip_results(self, undefined: dict[str, str]) -> None:
        for who, metric in (("student", self.video_student), ("teacher", self.video_teacher)):
            if not metric.update_count:
                continue
            for name, value in metric.compute().items():
                if name in METRICS:
                    self._log_defined(f"test/video/{who}/{name}", float(value), undefined)
            self._log_defined(f"test/video/{who}/temporal_stability",
                              1.0 - float(self.video_change[who].compute()), undefined)
        for m in (self.video_student, self.video_teacher, *self.video_change.values()):
            m.reset()

    def _score_fns(self, dm: Any) -> tuple[Any, Any]:
        """Student and teacher as ``(images, prompts) -> outputs`` (each model's own ids of the same strings)."""
        from .prompts import DualTokenizer

        text, teacher = self.student.text_encoder, self.frozen
        tok = DualTokenizer(teacher.tokenizer, text.tokenizer(), teacher.text_max_length, text.context_length)

        def student_fn(imgs: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
            return self.student(imgs.to(self.device), tok.student_encode(prompts).to(self.device))

        def teacher_fn(imgs: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
            ids, mask = tok.teacher_encode(prompts)
            return teacher(images=imgs.to(teacher.model.device), input_ids=ids, attention_mask=mask)

        return student_fn, teacher_fn

    def _probe_set(self, dm: Any, n: int) -> tuple[list[int], Any]:
        """The first ``n`` test images with some but not every concept present."""
        src = dm.unit_source("test")
        keep = [i for i in range(len(src)) if src.present[i] and len(src.present[i]) < len(dm.categories)]
        return keep[:n], src

    def prompt_probes(self) -> dict[str, float]:
        """F46 on the first ``probe_images`` test images, for student and teacher, each at its calibration
        (temperatures, threshold): concept responsiveness (mean score of present-concept prompts minus absent ones;
        0 = the prompt is ignored) and paraphrase stability (agreement of the masks of ``c`` / ``a c`` / ``the c``
        on images that contain ``c``; 1.0 for a model that ignores the prompt, so it is read only beside concept
        responsiveness). ``test/<who>_blind/*``: the same code on the model with its prompt replaced by one fixed
        word (a prompt-blind model: the floor rows, F49)."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or self.frozen is None:
            return {}
        keep, src = self._probe_set(dm, self.probe_images)
        if not keep:
            return {}
        images = torch.stack([src.image(i) for i in keep])
        present = [src.present[i] for i in keep]
        absent = [[c for c in dm.categories if c not in p] for p in present]
        student_fn, teacher_fn = self._score_fns(dm)
        groups = [[c, f"a {c}", f"the {c}"] for c in dm.categories]
        where = [[j for j, p in enumerate(present) if c in p] for c in dm.categories]
        groups, where = [g for g, w in zip(groups, where) if w], [w for w in where if w]
        out = {}
        fixed = dm.vocab[0]
        with torch.no_grad():
            for who, fn, cal in (("student", student_fn, self.calibration),
                                 ("teacher", teacher_fn, self.teacher_calibration)):
                kw = cal.postprocess_kwargs()
                temps = {"temperature": kw["temperature"], "presence_temperature": kw["presence_temperature"]}

                def blind(imgs: torch.Tensor, prompts: list[str], fn: Any = fn) -> dict[str, torch.Tensor]:
                    return fn(imgs, [fixed] * len(prompts))

                for tag, f in (("", fn), ("_blind", blind)):
                    pre = f"test/{who}_blind/" if tag else ("test/" if who == "student" else "test/teacher_")
                    out[f"{pre}concept_responsiveness"] = concept_responsiveness(f, images, present, absent, **temps)
                    out[f"{pre}paraphrase_stability"] = paraphrase_stability(f, images, groups, group_images=where,
                                                                             **kw)
        return out

    def _references(self, student: dict[str, float], teacher: dict[str, float] | None) -> None:
        """Floors and references of the headline (F49) and the per-unit scores (F51): see :mod:`.references`."""
        from .references import unit_ious

        if not self.test_floors["predict_nothing"].update_count:
            return
        floors = {name: {k: float(v) for k, v in m.compute().items()} for name, m in self.test_floors.items()
                  if m.update_count}
        what = {"predict_nothing": "no mask for any unit (same metric, same test units)",
                "prompt_blind": "every object of the image for every prompt, score 1 (a perfect segmenter that "
                                "ignores the text)"}
        t_pos = teacher.get("miou_pos", float("nan")) if teacher else float("nan")
        # test/miou_pos_ratio (student / teacher on positive units) is logged with the other ratios
        for name, values in floors.items():
            for metric in ("miou_pos", "miou"):
                self.add_reference(f"test/{metric}", name, values[metric], "floor", what[name])
                if teacher:
                    self.add_reference(f"test/teacher_{metric}", name, values[metric], "floor", what[name])
            if t_pos > 0:
                self.add_reference("test/miou_pos_ratio", name, values["miou_pos"] / t_pos, "floor",
                                   f"{name.replace('_', ' ')} floor / the teacher's mIoU on positive units")
        if teacher:
            for metric in ("miou_pos", "miou"):
                self.add_reference(f"test/{metric}", "teacher", teacher[metric], "reference",
                                   "the teacher at its validation calibration, same units")
        logged = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}
        for who, dst in (("student", ""), ("teacher", "teacher_")):
            for metric in ("concept_responsiveness", "paraphrase_stability"):
                key = f"test/{who}_blind/{metric}"
                if key in logged:
                    self.add_reference(f"test/{dst}{metric}", "prompt_blind", logged[key], "floor",
                                       f"the {who} with one fixed prompt for every unit (ignores the text)")
        if teacher and "test/teacher_concept_responsiveness" in logged:
            self.add_reference("test/concept_responsiveness", "teacher", logged["test/teacher_concept_responsiveness"],
                               "reference", "the teacher at its validation calibration")
        rows = self.test_unit_rows.compute()
        index, unit = rows["index"], rows["unit"]
        dm = getattr(self.trainer, "datamodule", None)
        vocab = list(getattr(dm, "vocab", []))
        ids = [f"{int(i)}:{vocab[int(u)] if int(u) < len(vocab) else int(u)}" for i, u in zip(index, unit)]
        models = {"student": self.test_student, "predict_nothing": self.test_floors["predict_nothing"],
                  "prompt_blind": self.test_floors["prompt_blind"]}
        if teacher:
            models["teacher"] = self.test_teacher
        ious = {name: unit_ious(m) for name, m in models.items() if m.update_count}
        pos = ious["student"][1]
        keys = {"student": "test/miou", "teacher": "test/teacher_miou"}
        all_units = {keys.get(n, f"floor/{n}/miou"): v[0] for n, v in ious.items()}
        meta = {"metric": "semantic IoU per (image, prompt) unit; negative units 1 when nothing is predicted",
                "units": "<image index>:<prompt>"}
        self.save_per_item("test_units", ids, all_units, meta)
        pos_ids = [u for u, p in zip(ids, pos.tolist()) if p]
        self.save_per_item("test_units_pos", pos_ids, {k.replace("miou", "miou_pos"): v[pos] for k, v in
                                                       all_units.items()}, {**meta, "units": "positive units only"})

    def write_gallery(self) -> dict[str, Any]:
        """Teacher and student masks for every vocabulary prompt on the first ``gallery_images`` probe images:
        two PNG grids and a static HTML gallery in ``<run_dir>/distill/gallery`` (the seed's visual check)."""
        dm = getattr(self.trainer, "datamodule", None)
        if self.gallery_images <= 0 or dm is None or self.frozen is None:
            return {}
        keep, src = self._probe_set(dm, self.gallery_images)
        if not keep:
            return {}
        student_fn, teacher_fn = self._score_fns(dm)
        with torch.no_grad():
            res = visual_check(teacher_fn, student_fn, torch.stack([src.image(i) for i in keep]), list(dm.vocab),
                               self.run_dir / "distill" / "gallery",
                               student_kwargs=self.calibration.postprocess_kwargs())
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in res.items()}

    def _calibration_results(self) -> str:
        """ECE of the unit scores (``max_q sigmoid(logit_q / T) * sigmoid(presence / Tp)`` against "the prompt
        has ground truth") of student and teacher, at their calibrations (``test/ece``, ``test/teacher_ece``) and at
        T = 1 (``test/<who>_raw/ece``), and one reliability plot of the four in
        ``<run_dir>/distill/reliability.png``. Returns :func:`~.calibration.ece_note` (empty when calibration did
        not raise an ECE), which the plot and ``teacher_vs_student.md`` print."""
        curves, eces = {}, {}
        for who, cal in (("student", self.calibration), ("teacher", self.teacher_calibration)):
            if not self.test_rows[who].update_count:
                continue
            rec = self.test_rows[who].compute()
            records = {k: v for k, v in rec.items() if k != "presence_logits" or v.numel()}
            labels = records["presence_labels"]
            for tag, (t, tp) in (("", (cal.temperature, cal.presence_temperature)), ("_raw", (1.0, 1.0))):
                probs = unit_scores(records, t, tp)
                value = ece(probs, labels)
                name = f"test/{who}_raw/ece" if tag else ("test/ece" if who == "student" else "test/teacher_ece")
                self.log(name, value)
                eces[f"{who}{tag}"] = float(value)
                curves[f"{who} at T = 1 (raw)" if tag else f"{who} at its calibration"] = (probs, labels)
        note = ece_note(eces)
        if curves and self._is_rank_zero():
            path = reliability_plot(curves, self.run_dir / "distill" / "reliability.png",
                                    title="unit scores vs prompt has ground truth (test)", note=note)
            self.add_results("reliability_plot", {"path": str(path), **({"note": note} if note else {})})
        return note

    def write_teacher_vs_student(self, rows: list[dict[str, Any]], raw_rows: list[dict[str, Any]],
                                 note: str) -> None:
        """``<run_dir>/distill/teacher_vs_student.{md,csv}``: every test number of both models, one section each:
        at their calibrations with ratios, at 0.5 (raw), ECE (at their calibrations and at T = 1), the prompt
        numbers (F46) with the prompt-blind floors, and the clips (F27); ``note`` (ECE raised) under ECE."""
        logged = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}

        def row(metric: str, s_key: str, t_key: str, ratio: bool = True) -> dict[str, Any] | None:
            if s_key not in logged and t_key not in logged:
                return None
            s, t = logged.get(s_key, math.nan), logged.get(t_key, math.nan)
            r = s / t if ratio and math.isfinite(s) and math.isfinite(t) and t > 0 else "-"
            return {"metric": metric, "teacher": t, "student": s, "ratio": r}

        prompt = [row(m, f"test/{m}", f"test/teacher_{m}") for m in ("concept_responsiveness",
                                                                     "paraphrase_stability")]
        prompt += [row(f"{m} (prompt-blind floor)", f"test/student_blind/{m}", f"test/teacher_blind/{m}", False)
                   for m in ("concept_responsiveness", "paraphrase_stability")]
        clips = [row(m, f"test/video/student/{m}", f"test/video/teacher/{m}")
                 for m in (*METRICS, "temporal_stability")]
        sections = [
            ("at each model's validation calibration", rows, ""),
            ("at the uncalibrated threshold 0.5 (raw)", raw_rows, ""),
            ("calibration: ECE of the unit scores (lower is better)",
             [row("ece (at its calibration)", "test/ece", "test/teacher_ece", False),
              row("ece (raw, T = 1)", "test/student_raw/ece", "test/teacher_raw/ece", False)], note),
            ("prompt (F46), each at its calibration", prompt, ""),
            ("clips (F27), each frame a unit, each at its calibration", clips, ""),
        ]
        write_sections([(title, [r for r in rs if r], text) for title, rs, text in sections],
                       self.run_dir / "distill", "teacher_vs_student")

    def _log_defined(self, name: str, value: float, undefined: dict[str, str]) -> None:
        """Log a finite metric; an undefined one (NaN: e.g. IL_MCC when no unit is predicted present, an empty
        marginal) is listed in results.json ``undefined`` instead of being logged as a number."""
        if math.isfinite(value):
            self.log(name, value)
        else:
            undefined[name] = "undefined on this split (an empty confusion-matrix marginal or no positive unit)"
