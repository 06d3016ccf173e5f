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


def severity_of(value: float, warning: float, critical: float) -> tuple[str, float] | None:
    """``(severity, threshold crossed)`` or ``None`` under the warning threshold.

    >>> severity_of(0.3, 0.1, 0.25)
    ('critical', 0.25)
    >>> severity_of(0.05, 0.1, 0.25) is None
    True
    """
    if value >= critical:
        return "critical", critical
    if value >= warning:
        return "warning", warning
    return None


def decide_drift_alerts(evaluation: WindowEvaluation, drift: DriftSettings) -> list[AlertDecision]:
    """One alert per signal whose drift is both large and real.

    ``feature_drift`` for an input feature, ``prediction_drift`` for the predicted class or
    value or a class score. A signal alerts when its statistic reaches the warning
    threshold (an effect size: at large n everything is "significant", so a p-value alone
    never alerts) **and** its Benjamini-Hochberg adjusted p-value across the window's
    signals is at most ``drift.fdr`` (at small n, noise easily crosses effect thresholds;
    adjusting across signals keeps many features from multiplying false alarms).
    A window with fewer than ``min_samples`` events reports its figures but never alerts.
    """
    if not evaluation.sufficient:
        return []
    out = []
    for fe in evaluation.features:
        if fe.value is None or fe.n < evaluation.min_samples:
            continue
        if fe.p_adjusted is None or fe.p_adjusted > drift.fdr:
            continue
        hit = severity_of(fe.value, *drift.thresholds_for(fe.statistic))
        if hit is None:
            continue
        severity, threshold = hit
        kind = "prediction_drift" if is_output_signal(fe.feature) else "feature_drift"
        out.append(AlertDecision(kind, severity, public_name(fe.feature), fe.statistic,
                                 fe.value, threshold, fe))
    return out
