"""multilabel (issue 14, IN PROGRESS): heads on frozen SigLIP2 towers, 5-fold CV, ablations as YAML (seed 004).

Built so far, with their own tests (no LightningModule, configs or demo yet):

* ``towers.SiglipTowers``: frozen SigLIP / SigLIP2 image and text towers (``.pooler_output``), the text mask
  policy recorded; ``standin``: the demo's stand-in towers trained on ShapesWorld image-caption pairs.
* ``heads.MLPHead`` (the seed's baseline) and ``heads.AGCHHead`` (AGCH-inspired: direction / magnitude
  decomposition, Hadamard or concat fusion, optional tanh hash layer); sizes from ``build(...)``.
* ``losses``: BCE / ASL, the pairwise cosine loss, the hash loss (quantisation + bit balance), ``CombinedLoss``
  whose zero weights are the seed's ablations.
* ``inference``: ``ThresholdPolicy`` (per-class thresholds tuned on validation only, F41), kNN scores over
  embeddings (cosine) or hash codes (Hamming), optional faiss and its product quantiser, the per-class table.
"""
