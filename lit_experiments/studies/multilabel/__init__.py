"""multilabel: heads on frozen SigLIP / SigLIP2 towers, k-fold CV, the seed's ablations as YAML (seed 004).

A ``MultilabelModule`` (``module.py``) receives its parts by constructor: ``head`` (``heads.MLPHead``, the
baseline, or ``heads.AGCHHead``: direction / magnitude decomposition, Hadamard or concat fusion, optional tanh
hash layer), ``loss`` (``losses.CombinedLoss``: BCE / ASL plus cosine and hash terms, ``<term>_weight``, the total
under ``loss``) and ``knn`` (``module.MultilabelKnn``). The ``MultilabelDataModule`` (``datamodule.py``) takes its
parts by constructor: the frozen towers as ``frozen`` (``towers.SiglipTowers`` / ``towers.Siglip2Towers`` /
``standin.StandinTowers``; the module reads them as ``self.frozen``) and the data as ``source``
(``sources.ShapesCaptionSource`` with noisy side captions, ``FileCaptionSource`` for csv / jsonl,
``CocoCaptionSource``); it serves the towers' cached image and caption embeddings, so every fold, ablation and
seed reads one embedding pass. Widths come from the towers and the number of classes from the data (the head is
built at the dry run). Per-class thresholds are tuned on the fold's validation split and stored with the weights
(``evaluation.ThresholdPolicy``, F41); the test (``evaluation.evaluate_test``, rows gathered over every rank) adds
kNN inference over the hash codes (Hamming) or the fused embedding (cosine, ``knn.py``) and a per-class table.

Honest numbers (issue 22). ``floors.py``: every test writes the floors of each headline metric on its test images,
by the same metric code, into results.json ``references`` (chance: the closed-form expected AP of a random ranking,
AUC 0.5, the mean positive rate for F1; predict every label / nothing; the caption keyword rule), and per-image
scores into ``per_item/`` (paired bootstraps over images). The demo's captions name each object with probability
0.5 (``standin.side_caption``), sometimes by a colour-only phrase, so the text is not a label oracle. Every random
choice (stand-in training, caption noise, validation split, training order) follows ``seed_everything`` through
``core.seeding.run_seed`` unless the YAML pins it; the stand-in trains with a fixed thread count. Validation and
test never share an image (``core.splits.check_disjoint``).

``standin.py``: the demo's tiny SigLIP towers trained on ShapesWorld image-caption pairs (cached);
``demo.py``: ``lit-exp multilabel-demo`` (stand-in, ``lit-exp cv --folds 5`` of the variants, ``lit-exp report``,
floors, references and the paired bootstrap in ``<run_dir>/results.json``; ``--seed_everything N``).
Configs: ``configs/multilabel/seed_siglip2.yaml`` and one delta per row of the seed's table, ``demo.yaml``.

LESSONS rows covered (tests in ``tests/studies/multilabel/``): F28 (ablations as YAML deltas), F29 (equal epochs),
F30 (excluded classes counted), F31 (one folds file for every variant), F41 (thresholds from validation only),
F47 (validation never overlaps test), F49 (floors beside every headline), F50 (seeds vary every random choice;
thread-invariant stand-in), F51 (per-image scores, paired bootstrap over images), F52 (captions not an oracle).
"""
