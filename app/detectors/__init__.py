"""Drift statistics: numbers only; the policy layer judges them against thresholds."""

from app.detectors.statistics import STATISTICS, psi

__all__ = ["STATISTICS", "psi"]
