"""retrieval: SimSiam pre-training of a timm backbone, then FastAP fine-tuning of its projector (seed 002).

A ``RetrievalModule`` receives its parts by constructor (``class_path`` in the YAML):

* backbone      ``parts.TimmBackbone`` (any timm model; ``resnet18`` by default, a narrow one in the CPU demo)
* projector     ``parts.Projector`` (3 layers, last BN without affine; input width = the backbone's)
* predictor     ``parts.Predictor`` (bottleneck)
* simsiam_loss  ``losses.SimSiamLoss`` (the stop-gradient lives in ``losses.stop_gradient``)
* fastap_loss   ``losses.FastAPLoss`` (``bins``; kernel width = bin spacing by default, other widths normalised)

``datamodule.RetrievalDataModule`` takes its parts by constructor too: a ``source`` (``sources.ShapesClipFrames``:
frames of ShapesWorld clips, label ``phase`` made visible in one frame by motion blur, the kNN monitor's label the
nearest object's category; or ``sources.VideoFrameFolder``: a frames folder with labels.csv, a video id per frame
(videos.csv or the file-name prefix) and external queries), a ``sampler`` (``null`` = shuffled frames,
``sampler.MPerClassBatches`` = the rank-aware ``sampler.MPerClassBatchSampler``: m frames per label, or blocks of m
consecutive frames of one video) and ``positives`` (labels or a temporal window). The FastAP stage
(``data: {features: true}``) reads the ``frozen`` backbone's features, handed over by the module, from the on-disk
cache. ``evaluation.py`` is the test-time evaluation (numbers, per-query AP, files; figures in ``figures.py``);
``report.py`` is ``lit-exp retrieval-report``. Configs: ``configs/retrieval/seed_resnet18.yaml`` (the seed's run,
224 px), ``demo.yaml`` (CPU, the seed's unlabelled FastAP) as a delta that swaps the source and
``demo_labelled.yaml`` (its labelled variant).

Honest numbers (issue 22): a frames folder is split by whole videos and validation / test are checked disjoint
(``core.splits.check_disjoint``; F47), so temporal positives and ``*_xclip`` never cross a video. The headline
(``test/map``, ``test/map_xclip``) carries its floors (expected AP of a random ranking in closed form, the random-init
backbone) and references (SimSiam's own embedding, kept as a frozen copy of the projector when FastAP starts; the
backbone's features; a linear probe), all by the same metric code on the same queries, and the per-query AP of
each is saved for paired bootstraps (F49, F51). Samplers and the backbone's initialisation follow
``seed_everything`` (``core.seeding.run_seed``) unless pinned (F50). On the demo, unlabelled FastAP (temporal
positives) does not beat SimSiam's embedding on the phase label: the phase changes every 2-4 frames while
everything a clip's frames share is what temporal positives teach (README, retrieval section).

Where it departs from the seed: FastAP's kernel width defaults to the bin spacing 4/bins (the seed's 0.05 at 100
bins overfilled the histogram; other widths are normalised per pair and FastAP outside [0, 1] is refused); the
embedding spread, its effective rank and a weighted kNN monitor are logged every epoch and a collapse stops the
run; the evaluation names Recall@K and HitRate@K apart and never drops non-positive scores; batches hold m samples
per class (or video block) on every rank. The CPU demo uses a narrow ResNet-18 at 32 px, one object per frame and
grouped augmentation draws (``augment.group``) so that it learns within minutes.

LESSONS rows covered (tests in ``tests/studies/retrieval/``): F19 (collapse monitor + guard
``core.health.check_collapse``, checkpoint comparison), F20 (``losses.FastAPLoss``), F21
(``lit_experiments.metrics.retrieval``), F39 (FastAP counts, sampler), F40 (``sampler.MPerClassBatchSampler``; a stage's ``data: {sampler: ...}`` reaches the loader), F47
(``test_honest.py``: video ids, positives within a video, val / test overlap refused), F49 (floors and references,
the random-ranking closed form against brute force), F50 (sampler and initialisation follow the run's seed).
"""
