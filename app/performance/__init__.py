"""Model performance from delayed ground truth: the label join and per-window metrics (pure)."""

from app.performance.join import JoinResult, LabelJoin, Labelled
from app.performance.metrics import ClassificationMetrics, RegressionMetrics

__all__ = ["ClassificationMetrics", "JoinResult", "LabelJoin", "Labelled",
           "RegressionMetrics"]
