"""Many runs and their tables: ``lit-exp sweep``, ``cv``, ``report``, ``curves`` and the demo's seed tables.

A wing above the core: it imports :mod:`lit_experiments.core`, never the CLI, a study or :mod:`deploy`."""
