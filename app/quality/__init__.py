"""Data quality of the prediction events: per-window counts and the rules that judge them."""

from app.quality.counts import COUNTERS, EVENTS, QualityCounts
from app.quality.rules import RULES, FeatureRule, QualityFinding, QualityRules, evaluate

__all__ = ["COUNTERS", "EVENTS", "RULES", "FeatureRule", "QualityCounts", "QualityFinding",
           "QualityRules", "evaluate"]
