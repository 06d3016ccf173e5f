"""Judging a window's performance: ``performance_drop`` and ``label_coverage`` (pure).

The metric's figures are computed elsewhere (``app.performance``); here they meet their
thresholds. A drop is judged on the confidence interval, not on the point value: with
few labels a window's accuracy easily looks 5 points low by chance, so a window fires
only when even the *best* end of its interval is worse than ``baseline - max_drop``
(``baseline + max_drop`` for losses and errors), and only with at least ``min_labels``
labels. It is ``critical`` when the interval clears twice the allowed drop.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.durations import format_duration
from app.performance.metrics import HIGHER_IS_BETTER


@dataclass(frozen=True)
class PerformanceDecision:
    kind: str  # performance_drop | label_coverage
    severity: str
    subject: str  # the metric, or "label_coverage"
    value: float
    threshold: float  # the bound the value (its interval) crossed
    reference_value: float | None  # the baseline, or the coverage floor
    summary: str
    target_version: str | None = None  # rollback_recommended: the version to return to


def decide_performance(metric: str, value: float | None, interval: tuple[float, float] | None,
                       baseline: float, max_drop: float, *, n: int,
                       min_labels: int) -> PerformanceDecision | None:
    """A ``performance_drop`` when the window's interval is entirely past the bound.

    >>> d = decide_performance("accuracy", 0.81, (0.79, 0.83), 0.88, 0.03, n=1500,
    ...                        min_labels=200)
    >>> d.severity, d.threshold
    ('warning', 0.85)
    >>> decide_performance("accuracy", 0.84, (0.80, 0.88), 0.88, 0.03, n=300,
    ...                    min_labels=200) is None
    True
    """
    if value is None or interval is None or n < min_labels:
        return None
    higher = HIGHER_IS_BETTER[metric]
    low, high = interval
    sign = 1 if higher else -1
    bound = round(baseline - sign * max_drop, 12)  # 0.88 - 0.03 is 0.85, not 0.8500000001
    # The interval's best end: high for accuracy-like metrics, low for losses.
    best = high if higher else low
    if (best - bound) * sign >= 0:
        return None
    severe = round(baseline - sign * 2 * max_drop, 12)
    severity = "critical" if (best - severe) * sign < 0 else "warning"
    threshold = severe if severity == "critical" else bound
    summary = (f"{metric} {value:.3f} (95% interval {low:.3f}..{high:.3f}, n={n}) is "
               f"{'below' if higher else 'above'} {threshold:.3f}: baseline {baseline:.3f} "
               f"{'-' if higher else '+'} {'2x ' if severity == 'critical' else ''}"
               f"allowed {max_drop:g}")
    return PerformanceDecision("performance_drop", severity, metric, value, threshold,
                               baseline, summary)


def decide_rollback(metric: str, value: float | None, interval: tuple[float, float] | None,
                    previous: str, previous_value: float | None, max_drop: float, *, n: int,
                    min_labels: int) -> PerformanceDecision | None:
    """``rollback_recommended``: the live version's window is significantly worse than the
    previous known-good version's pooled figure (the whole interval past it by more than
    ``max_drop``), with enough labels.

    >>> decide_rollback("accuracy", 0.7, (0.67, 0.73), "v1", 0.88, 0.03, n=900,
    ...                 min_labels=200).summary
    'roll back to v1: accuracy 0.700 (95% interval 0.670..0.730, n=900) against 0.880 for v1'
    """
    if value is None or interval is None or previous_value is None or n < min_labels:
        return None
    higher = HIGHER_IS_BETTER[metric]
    bound = round(previous_value - max_drop if higher else previous_value + max_drop, 12)
    best = interval[1] if higher else interval[0]
    if (best < bound) if higher else (best > bound):
        summary = (f"roll back to {previous}: {metric} {value:.3f} (95% interval "
                   f"{interval[0]:.3f}..{interval[1]:.3f}, n={n}) against "
                   f"{previous_value:.3f} for {previous}")
        return PerformanceDecision("rollback_recommended", "critical", metric, value, bound,
                                   previous_value, summary, previous)
    return None


def decide_coverage(coverage: float | None, floor: float, after_ms: int
                    ) -> PerformanceDecision | None:
    """A ``label_coverage`` alert when too few of a window's predictions are labelled.

    >>> decide_coverage(0.2, 0.5, 86_400_000).summary
    'label coverage 20.0% is under 50.0% 1d after the window'
    """
    if coverage is None or coverage >= floor:
        return None
    severity = "critical" if coverage < floor / 2 else "warning"
    summary = (f"label coverage {coverage:.1%} is under {floor:.1%} "
               f"{format_duration(after_ms / 1000) if after_ms else 'at the end of'}"
               f"{' after' if after_ms else ''} the window")
    return PerformanceDecision("label_coverage", severity, "label_coverage", coverage, floor,
                               floor, summary)


def performance_healthy(metric: str, value: float | None, interval: tuple[float, float] | None,
                        baseline: float | None, max_drop: float, *, n: int, min_labels: int,
                        final: bool) -> bool:
    """A window that counts as good for the ``performance_drop`` episode: enough labels
    and either the whole interval within the bound, or the window's last checkpoint
    without a drop (later labels cannot change its verdict any more).

    >>> performance_healthy("accuracy", 0.88, (0.87, 0.89), 0.88, 0.03, n=5000,
    ...                     min_labels=200, final=False)
    True
    >>> performance_healthy("accuracy", 0.86, (0.80, 0.92), 0.88, 0.03, n=300,
    ...                     min_labels=200, final=False)
    False
    """
    if value is None or interval is None or baseline is None or n < min_labels:
        return False
    higher = HIGHER_IS_BETTER[metric]
    bound = round(baseline - max_drop if higher else baseline + max_drop, 12)
    worst = interval[0] if higher else interval[1]
    if (worst >= bound) if higher else (worst <= bound):
        return True
    return final and decide_performance(metric, value, interval, baseline, max_drop, n=n,
                                        min_labels=min_labels) is None
