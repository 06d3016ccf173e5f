"""Feature-drift alerts from a window evaluation."""

from __future__ import annotations

from dataclasses import dataclass

from app.core.evaluation import FeatureEvaluation, WindowEvaluation
from app.core.signals import is_output_signal, public_name
from app.settings import DriftSettings


@dataclass(frozen=True)
class AlertDecision:
    kind: str
    severity: str  # warning | critical
    subject: str  # the feature (or source) the alert is about
    statistic: str
    value: float
    threshold: float
    evidence: FeatureEvaluation


def severity_of(value: float, drift: DriftSettings) -> tuple[str, float] | None:
    """``(severity, threshold crossed)`` or ``None`` under the warning threshold.

    >>> severity_of(0.3, DriftSettings(warning=0.1, critical=0.25))
    ('critical', 0.25)
    >>> severity_of(0.05, DriftSettings()) is None
    True
    """
    if value >= drift.critical:
        return "critical", drift.critical
    if value >= drift.warning:
        return "warning", drift.warning
    return None


def decide_drift_alerts(evaluation: WindowEvaluation, drift: DriftSettings) -> list[AlertDecision]:
    """One alert per signal whose statistic crosses a threshold: ``feature_drift`` for an
    input feature, ``prediction_drift`` for the predicted class or value or a class score.

    A window with fewer than ``min_samples`` events reports its figures but never
    alerts: small samples make distances noisy.
    """
    if not evaluation.sufficient:
        return []
    out = []
    for fe in evaluation.features:
        if fe.value is None or fe.n < evaluation.min_samples:
            continue
        hit = severity_of(fe.value, drift)
        if hit is None:
            continue
        severity, threshold = hit
        kind = "prediction_drift" if is_output_signal(fe.feature) else "feature_drift"
        out.append(AlertDecision(kind, severity, public_name(fe.feature), fe.statistic,
                                 fe.value, threshold, fe))
    return out
