"""Evaluation of the Satipatthana study: plain baseline parts, DDP-safe test metrics and figures."""

from .baseline import CNNBaseline, MLPBaseline
from .metrics import SatipatthanaTestMetrics

__all__ = ["CNNBaseline", "MLPBaseline", "SatipatthanaTestMetrics"]
