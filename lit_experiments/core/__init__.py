"""The core every study shares: stage specs, the StudyModule base, curriculum runner and callbacks."""

import warnings

# StageFreeze keeps frozen modules in eval mode on purpose; Lightning warns about exactly that.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")

from .specs import OptimSpec, StageSpec  # noqa: E402
from .study import StudyDataModule, StudyModule  # noqa: E402

__all__ = ["OptimSpec", "StageSpec", "StudyDataModule", "StudyModule"]
