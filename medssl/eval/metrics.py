"""Classification metrics; they live in :mod:`medssl.stats.metrics`, re-exported here for the callers."""

from __future__ import annotations

from medssl.stats.metrics import (
    Confusion,
    classification_metrics,
    confusion_at,
    expected_calibration_error,
    multilabel_metrics,
    operating_points,
    rates,
    threshold_for_sensitivity,
    youden_threshold,
)

__all__ = ["Confusion", "classification_metrics", "confusion_at", "expected_calibration_error",
           "multilabel_metrics", "operating_points", "rates", "threshold_for_sensitivity",
           "youden_threshold"]
