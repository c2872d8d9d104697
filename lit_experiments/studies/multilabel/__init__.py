"""multilabel: heads on frozen SigLIP / SigLIP2 towers, k-fold CV, the seed's ablations as YAML (seed 004).

A ``MultilabelModule`` (``module.py``) receives its parts by constructor: ``head`` (``heads.MLPHead``, the
baseline, or ``heads.AGCHHead``: direction / magnitude decomposition, Hadamard or concat fusion, optional tanh
hash layer), ``loss`` (``losses.CombinedLoss``: BCE / ASL plus cosine and hash terms with weights) and ``knn``.
The ``MultilabelDataModule`` (``datamodule.py``) owns the frozen ``towers.SiglipTowers`` and serves their cached
image and caption embeddings (ShapesWorld with partial captions, csv / jsonl, COCO with captions), so every fold,
ablation and seed reads one embedding pass. Per-class thresholds are tuned on the fold's validation split and
stored with the weights (``inference.ThresholdPolicy``, F41); the test adds kNN inference over the hash codes
(Hamming) or the fused embedding (cosine) and a per-class table.

``standin.py``: the demo's tiny SigLIP towers trained on ShapesWorld image-caption pairs (cached);
``demo.py``: ``lit-exp multilabel-demo`` (stand-in, ``lit-exp cv --folds 5`` of the variants, ``lit-exp report``).
Configs: ``configs/multilabel/seed_siglip2.yaml`` and one delta per row of the seed's table, ``demo.yaml``.

LESSONS rows covered (tests in ``tests/studies/multilabel/``): F28 (ablations as YAML deltas), F29 (equal epochs),
F30 (excluded classes counted), F31 (one folds file for every variant), F41 (thresholds from validation only).
"""
