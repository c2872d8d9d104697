"""Evaluation of the Satipatthana study: the plain baseline, test metrics and figures."""

from .baseline import BaselineSpec, train_baseline
from .report import EvalCollector

__all__ = ["BaselineSpec", "EvalCollector", "train_baseline"]
