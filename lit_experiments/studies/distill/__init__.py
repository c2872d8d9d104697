"""distill study: SAM3 teacher into a mobile student (seed 003); see docs/architecture.md.

Parts: ``teacher`` (``Sam3Teacher``), ``standin`` (``StandinTeacher``, the demo's trained tiny SAM3), ``student``
(``ImageEncoder``, ``TextEncoder``, ``PromptDecoder``, ``Student``), ``prompts`` (``PromptSampler``,
``DualTokenizer``), ``matching`` and ``losses``, ``datamodule`` (``DistillDataModule``: units, both ids, cached
teacher outputs) and ``clips`` (ShapesWorld clips), ``module`` (``DistillModule``: ``encoder``, ``decoder`` and
``video`` objectives, calibrations stored with the weights) with ``testing`` (the test's reporting),
``evaluation`` / ``calibration`` / ``gallery`` (SA-Co metrics, ECE, F46 numbers, masks per prompt), ``deploy``
(exportable parts, latency card) and ``demo`` (``lit-exp distill-demo``).
"""
