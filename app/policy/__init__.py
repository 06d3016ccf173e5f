"""Judging figures against thresholds: which windows raise which alerts (pure)."""

from app.policy.drift import AlertDecision, decide_drift_alerts

__all__ = ["AlertDecision", "decide_drift_alerts"]
