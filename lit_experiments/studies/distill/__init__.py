"""distill study (issue 15, in progress): SAM3 teacher into a mobile student (seed 003).

Built so far (groundwork, with their own tests; no LightningModule, configs or demo yet):

* ``matching``: teacher scores ``sigmoid(logit) * sigmoid(presence)``, the capped greedy choice of teacher
  queries (``max_matches``, ``min_teacher_score``: F25), Hungarian matching (scipy) of predictions to ground
  truth and of student queries to kept teacher queries (greedy as an option), the mask-resolution policy.
* ``losses``: ``SetLoss`` (ground truth: mask BCE / focal + dice, box L1 + GIoU, query and presence BCE),
  ``DistillLoss`` (student vs teacher: mask, box, logit and presence distillation, optional ground-truth term),
  ``FeatureDistillLoss`` (encoder features, MSE + cosine).
* ``prompts``: ``PromptSampler`` (category / generic / negative prompts at configured ratios, deterministic per
  seed, index and epoch: F24) and ``DualTokenizer`` (teacher and student ids from the same string, each by its
  own tokenizer, no silent truncation: F22, F23).
* ``datamodule``: ``DistillDataModule``: (image, prompt) units of ShapesWorld or COCO-style instances, prompts
  drawn per epoch by ``PromptSampler`` through an epoch-carrying sampler, both models' ids per unit, the frozen
  teacher's outputs for every (image, vocabulary prompt) computed once into the frozen-feature cache.
* ``evaluation``: post-processing, the SA-Co table of teacher / student / ratio, ``evaluate_calibrated``, concept
  responsiveness and paraphrase stability (F26, F42, F46); ``calibration``: ECE, temperatures and a threshold
  fitted on validation (``Calibration``, stored with a checkpoint), the reliability plot; ``gallery``: PNG grid
  and static HTML gallery of masks per prompt.

* ``teacher``: ``Sam3Teacher``, a frozen transformers ``Sam3Model`` answering the output contract (a real
  checkpoint with its processor's tokenizer, or a tiny config with a word-level ShapesWorld tokenizer).
* ``student``: ``ImageEncoder`` (timm mobile, ``features_only``; blocks past the last used level are trimmed, or
  they would never get a gradient), ``TextEncoder`` (open_clip MobileCLIP text tower, its own CLIP-BPE tokenizer,
  context 32), ``PromptDecoder`` (DETR-style, prompt-conditioned), ``Student``; parts with plain-tensor
  signatures so they export separately (``torch.export`` tested).

* ``module``: ``DistillModule`` with the ``encoder`` objective (student image features through a 1x1 projection
  against the teacher's cached vision features, MSE + cosine) and the ``decoder`` objective (distillation of the
  cached teacher outputs, an optional ground-truth set loss), a calibration fitted on validation and stored in
  a buffer (F42), and a test that scores student (calibrated and at 0.5) and teacher in one table, with the two
  F46 numbers for both.

* ``standin``: training and evaluation of a tiny ``Sam3Model`` stand-in teacher on ShapesWorld units with
  ``SetLoss`` (cached by config, data and training). Default recipe: colour prompts (3 colours), 2 queries, 600
  steps (~64 s on 1 thread): held-out mIoU on positive units 0.57, presence F1 0.84, IL_MCC 0.73. Shape-category
  prompts stay on the presence plateau within minutes, and 8 queries score nothing (each query stays at ~1/Q);
  measured in its docstring.

Still to build (issue 15): the ``video`` objective and its clip evaluation (F27), the demo (stand-in teacher +
three stages + evaluation within 6 minutes), the gallery in the test, running the A/B sweep. A ground-truth probe
of the tiny student learned masks but not yet the prompt within a minute (with category prompts).
"""
