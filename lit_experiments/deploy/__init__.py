"""From a trained run to a deployable model: ``lit-exp export``, ``quantize``, latency and the run loader.

A wing above the core: it imports :mod:`lit_experiments.core`, never the CLI, a study or :mod:`experiments`."""
