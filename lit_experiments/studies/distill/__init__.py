"""distill study: SAM3 teacher into a mobile student (seed 003); see docs/architecture.md.

Top level: ``module`` (``DistillModule``: ``encoder``, ``decoder`` and ``video`` objectives, calibrations stored
with the weights; the teacher read as ``self.frozen``), ``datamodule`` (``DistillDataModule``: parts ``source``,
``frozen``, ``sampler``, ``prompts``; units, both ids, cached teacher outputs, validation held out of training and
checked disjoint from test), ``losses``, ``evaluation`` (SA-Co metrics, F46 numbers; the test-time entry),
``deploy`` (exportable parts, latency card), ``demo`` (``lit-exp distill-demo``) and ``plugin``.
``components/``: ``sources`` (``DistillShapes`` with its ``ClipSizes``, ``DistillCoco``), ``teacher``
(``Sam3Teacher``), ``standin`` (``StandinTeacher``, the demo's trained tiny SAM3; its prompt vocabulary: colours
or shape categories plus generic words) with ``standin_bank`` and ``standin_curve`` (its learning curve per prompt
family), ``student`` (``ImageEncoder``, ``TextEncoder``, ``PromptDecoder``, ``Student``: the width ``dim`` said
once), ``prompts`` (``PromptSettings``, ``PromptSampler``, ``DualTokenizer``), ``units`` (``EpochOrder``, the unit
dataset), ``clips`` (ShapesWorld clips), ``teacher_cache``, ``matching``, and the test's helpers ``testing`` (the
test's reporting), ``references`` (floors, per-unit scores, the teacher per prompt family), ``calibration`` (ECE,
fitted thresholds) and ``gallery`` (masks per prompt).

Honest numbers (issue 22):

* F47: validation never overlaps test. The seed config validates on a seeded 4% of train2017 (ids written once
  next to the annotations) and tests on val2017; the datamodule refuses validation equal to or sharing images with
  test unless ``allow_val_test_overlap: true`` (then results.json ``splits.tuned_on_test``).
* F49: THE headline is the student's mIoU on positive units (``test/miou_pos``); the student / teacher ratio is
  taken on it (``test/miou_pos_ratio``). results.json ``references`` holds, for each headline metric, the floors
  computed by the same metric on the same test units (predict nothing; prompt-blind: every object for every prompt;
  for concept responsiveness the model with one fixed prompt) and the teacher as a reference row. Paraphrase
  stability is reported only beside concept responsiveness (a prompt-blind model scores 1.0 on it), both at each
  model's validation calibration.
* F51: per-unit IoUs of student, teacher and floors in ``<run_dir>/per_item/test_units{,_pos}.json``.
* F50: the training order, the training prompts and the stand-in teacher's training follow ``seed_everything``
  unless the YAML pins them; the data (worlds, fixed validation / test units) is the data seed's.
* F53: before distillation the teacher is scored against ground truth on every prompt family of the validation
  images (``results.json["teacher_families"]``, ``trained_on`` marks the families the student draws); the
  demo's stand-in learns the colours and the A/B's generic words. Shape-category prompts stay at chance for the
  stand-in on this CPU budget (``docs/figures/distill/standin_curve_*.png``), so the demo's concept is colour.
"""
