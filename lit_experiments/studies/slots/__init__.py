"""slots: SAVi / DINOSAUR slot attention on frozen features (or pixels), scored by FG-ARI (seed 000).

A ``SlotsModule`` receives its parts by constructor (``class_path`` in the YAML; sizes that follow from the
data or from another part are built from the first batch by the module's dry run, never typed twice):

* encoder   ``encoders.FeatureInput`` (frozen features, optional trainable projection) | ``encoders.PixelEncoder``
* grouper   ``slot_attention.SlotAttention`` with its init part ``GaussianSlotInit`` | ``LearnedSlotInit``
* predictor ``predictor.TransformerPredictor`` (SAVi) | null (each frame grouped on its own, DINOSAUR)
* decoder   ``decoders.MLPDecoder`` | ``decoders.TransformerDecoder``
* loss      ``losses.ReconstructionLoss(kind=mse | cosine | channel_norm)``

``datamodule.SlotsDataModule`` takes its parts by constructor too:

* source    ``sources.ShapesClipSplits`` (ShapesWorld videos) | ``sources.MoviClipSplits`` (converted MOVi clips;
            validation a seeded held-out 2.5 % of ``train``, ids written once; test the official ``validation``
            folder; a validation equal to or overlapping test is refused, F47)
* frozen    ``datamodule.RegistryBackbone`` (a timm / open_clip ViT by name, built on first use; it owns the
            input resolution ``image_size``) | ``datamodule.ColourEdgeBackbone`` (the fixed CPU encoder) | null
            (the pixel path); its features are cached on disk and are the reconstruction target

``plugin.py`` registers the ``colour_edge`` backbone and the ``slots-analyze`` tool. Configs:
``configs/slots/_base_movi.yaml`` (the seed's real run) with one delta per seed run, ``demo.yaml`` (CPU: the base
with its source and frozen parts swapped) with ``shapes_long`` / ``pixels_demo`` as deltas.

Where it departs from the seed: the reconstruction target is the frozen feature itself, never a trainable
projection's output (the seed's CLIP bug); scale is handled per position over channels, spatial
normalisation is refused; the loss is also reported relative to the target's variance; a learned positional
embedding (initialised as a smooth Fourier code) is added to the slot-attention input; evaluation upsamples
soft masks bilinearly before the argmax and ignores the background in FG-ARI; both mask sources (decoder
alphas and slot attention) are scored, against a fixed grid partition with one region per slot; optional
BO-QSA (``bilevel``) training and learned slot queries; a pixel path; a CPU demo on ShapesWorld with a fixed
colour/edge encoder instead of MOVi + pretrained ViTs.

Honest numbers (issue 22): every FG-ARI headline (overall, per material group, per clip, the other mask source)
has two floors in results.json ``references``, scored by the same metric on the same frames: the grid partition
and the untrained model (the weights before the first step); per-clip scores go to ``per_item/slots_test.json``
for the paired bootstrap; the ShapesWorld worlds, the training order and the positional code's frequencies come
from ``seed_everything`` (``core.seeding.run_seed``) unless ``data.init_args.seed`` pins them, so the 3-seed
spread of the demo includes the data.

LESSONS rows covered (tests in ``tests/studies/slots/``): F01 (``encoders.FeatureInput`` + the TrainingHealth
target guard; ``test_module.py::test_f01_*``), F02 / F03 (``losses``; ``test_losses.py``), F04
(``slot_attention.LearnedPositionalEmbedding``; ``test_slot_attention.py``), F05 (``evaluation.predicted_labels``;
``test_evaluation.py::test_f05_*`` with four wrong-resize mutants), F06 (``analyze``; ``test_analyze.py``), F44
(every val / test number through a torchmetrics ``Metric``, the per-clip rows through ``GatheredRows``;
``test_ddp.py::test_f44_*``), F47 / F49 / F50 (``test_honest.py``).
"""
