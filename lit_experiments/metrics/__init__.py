"""Metrics checked against reference implementations: ARI / mBO, retrieval, promptable segmentation,
multi-label classification, weighted kNN and embedding diagnostics. Each module docstring states its conventions."""

from lit_experiments.metrics.ari import ari, mbo, resize_masks
from lit_experiments.metrics.ari_metric import ARIMetric, MBOMetric
from lit_experiments.metrics.embedding import embedding_stats
from lit_experiments.metrics.knn import WeightedKNNAccuracy, weighted_knn_predict
from lit_experiments.metrics.multilabel import MultilabelMetrics, multilabel_metrics, tune_thresholds
from lit_experiments.metrics.promptable import (
    IOU_THRESHOLDS,
    PromptableSegMetric,
    UnitStats,
    cgf1,
    il_mcc,
    miou,
    pmf1,
    pmf1_per_threshold,
    presence_counts,
    presence_scores,
    prompt_sensitivity,
    promptable_metrics,
    unit_stats,
)
from lit_experiments.metrics.retrieval import (
    RetrievalMetrics,
    compare_per_query_ap,
    expected_random_ap,
    retrieval_metrics,
)

__all__ = [
    "ARIMetric",
    "IOU_THRESHOLDS",
    "MBOMetric",
    "MultilabelMetrics",
    "PromptableSegMetric",
    "RetrievalMetrics",
    "UnitStats",
    "WeightedKNNAccuracy",
    "ari",
    "cgf1",
    "compare_per_query_ap",
    "expected_random_ap",
    "embedding_stats",
    "il_mcc",
    "mbo",
    "miou",
    "multilabel_metrics",
    "pmf1",
    "pmf1_per_threshold",
    "presence_counts",
    "presence_scores",
    "prompt_sensitivity",
    "promptable_metrics",
    "resize_masks",
    "retrieval_metrics",
    "tune_thresholds",
    "unit_stats",
    "weighted_knn_predict",
]
