"""Satipatthana study: adapter -> Samatha (Vitakka, Vicara, Sati) -> Vipassana -> task decoder, as a 4-stage
curriculum plus a baseline stage (``configs/satipatthana/``: ``demo.yaml`` the circles base, ``v41.yaml`` a
delta of it; ``digits.yaml`` the image base, ``shapes.yaml`` a delta of it), on make_circles, load_digits and
ShapesWorld: one ``SatipatthanaDataModule`` whose data set is a ``source:`` part (``CirclesSource``,
``DigitsSource``, ``ShapesObjectSource``).

Files: ``module.py`` (what is trained: the stages' losses, the loss dict with its total under ``loss`` and the
weights as ``<term>_weight``, stage args as :class:`SatipatthanaStageArgs` through ``core.specs.stage_args``),
``datamodule.py`` (on what), ``components/`` (the parts and the plain baselines), ``losses.py``,
``evaluation.py`` (test metrics and figures).

Where it departs from tamatebox/satipatthana-framework (on purpose):

* Stage 1 can add a void-energy term (``loss_weights.void_energy`` or the module's ``void_energy_weight``; outlier
  exposure on the trajectory energy).
  Samatha is frozen in stage 2 and the v4.0 trust head sees only ``[log1p(velocity), log1p(avg_energy)]``
  (F11), so the energy itself has to separate data from void before stage 2 starts.
* Stage 2 trains ``vipassana.trust_head`` (v4.1: also the GRU and its two heads); the context encoder that
  makes ``v_ctx`` gets no gradient from the trust BCE, so it trains in stage 3 with the task decoder (the
  health guard rejects a trainable parameter that receives no gradient).
* Vicara's refiner starts with zero biases, and the CNN adapter standardises each image on its own: both stop
  every sample from landing on the same state at initialisation (the collapse guard would stop the run).
* The circles Samatha stage warms its learning rate up (``warmup_cosine``): Adam's first steps move Phi's
  output weights coherently and, without warm-up, some seeds pull every s* onto one state (collapse guard).
* Every void set (Gaussian, uniform, box) is filtered to lie farther than ``void_min_distance`` from the
  training points; the test reports trust / AUROC per void kind.
* The plain baseline (MLP or CNN) is a part of the module trained in its own ``baseline`` stage (same loader,
  optimizer spec and health guards as the other stages), never inside a test hook; its layers are built under
  their own seed so it does not shift the other parts' initialisation.
* Evaluation is DDP-safe (F44): every test number is a torchmetrics ``Metric`` (accuracy, trust means,
  ``BinaryAUROC``, ``PeakSignalNoiseRatio``); the test's augmented / drunk noise is seeded per sample by its
  index in the split and the mismatch path pairs each sample with a fixed partner (``x_partner``), so a 2-rank
  test reports what a 1-rank test reports. The seed drew noise per batch and paired mismatches inside a batch.
* Honest numbers (issue 22): the headline is ``test/acc``, ``test/trust_auroc``, ``test/trust_auroc_drunk`` and
  (images) ``test/psnr``, each beside a floor in results.json ``references`` (majority training class, one constant
  trust, the mean training image) and, where one exists, a reference (the plain baseline's accuracy, its max
  softmax probability as a trust score), all on the same test samples; per-sample correctness and trust go to
  ``per_item/satipatthana_test.json``. The data set, its split, the void pools, the training order, the
  baseline's initialisation and the test's per-sample noise come from ``seed_everything`` unless ``seed`` pins
  them (the configs pin none), so a sweep over seeds varies all of them.
* Sizes are said once: the adapter's ``dim`` is the state size D; the adapter's input and the reconstruction's
  shape come from the data, Vicara's per-probe count from Vitakka's ``num_probes``, the task decoder's input
  (``D + context_dim``) from the adapter and Vipassana, its classes from the module's ``num_classes``. The module's
  ``dry_run`` builds every part in a fixed order (``build(...)``), with their initial weights drawn from the RNG
  state at construction; MLPs are ``torchvision.ops.MLP``.

LESSONS rows covered (tests in ``tests/studies/satipatthana/``): F07 (``SamathaOutput.stability_pair`` vs the
detached ``SantanaLog``, through the module's stage loss), F08 / F09 (per-stage optimizer, lazy Vipassana built
before freezing; bugs put back into the product), F10 (separate train / eval gate thresholds, collapse guard),
F11 / F14 (per-sample trust inputs and energy), F12 (the Trainer's lr per stage equals the YAML's), F13 (paths
and ratios, clean path), F15 (Upsample + Conv2d decoder), F16 (probe diversity), F17 (drunk constants in
``Sati.drunk``, per-sample skips), F18 (unsquashed logits), F37 / F44 (un-padded, rank-reduced test metrics),
F49 / F50 (``test_honest.py``).
"""
