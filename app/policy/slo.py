"""Serving objectives judged per window: ``latency_slo`` and ``cost_budget`` (pure).

A version's window breaks its latency objective when the window's p99 latency is above
``slo.latency_p99_ms``, and its cost budget when its cost per 1 000 predictions is above
``slo.cost_per_1k``; ``critical`` from ``critical_factor`` times the objective. A window
with fewer than ``min_samples`` predictions carrying the figure is not judged (nor is it
good: it neither fires nor resolves an alert).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.serving import ServingStats
from app.settings import SloSettings

LATENCY_SUBJECT = "latency_p99_ms"
COST_SUBJECT = "cost_per_1k"


@dataclass(frozen=True)
class SloDecision:
    kind: str  # latency_slo | cost_budget
    severity: str
    subject: str  # latency_p99_ms | cost_per_1k
    value: float
    threshold: float  # the bound crossed: the objective, or critical_factor times it
    objective: float
    n: int  # predictions behind the value
    summary: str


@dataclass(frozen=True)
class SloJudgement:
    decisions: list[SloDecision]
    good: list[str]  # subjects judged within their objective


def judge_serving(stats: ServingStats | None, slo: SloSettings, *, min_samples: int
                  ) -> SloJudgement:
    """Judge one version's window.

    >>> s = ServingStats()
    >>> s.update([{"latency_ms": 120.0, "cost": 0.001}] * 300 + [{"latency_ms": 900.0}] * 10)
    >>> j = judge_serving(s, SloSettings(latency_p99_ms=250, cost_per_1k=2), min_samples=200)
    >>> [(d.kind, d.severity) for d in j.decisions], j.good
    ([('latency_slo', 'critical')], ['cost_per_1k'])
    >>> j.decisions[0].summary
    'p99 latency 907ms over 310 predictions is above 500ms: 2x the 250ms objective'
    """
    decisions: list[SloDecision] = []
    good: list[str] = []
    if stats is None:
        return SloJudgement(decisions, good)
    need = slo.min_samples or min_samples
    if slo.latency_p99_ms is not None and stats.latency.n >= need:
        p99 = stats.latency_quantile(0.99)
        assert p99 is not None
        d = _decide("latency_slo", LATENCY_SUBJECT, p99, slo.latency_p99_ms,
                    slo.critical_factor, stats.latency.n)
        if d is None:
            good.append(LATENCY_SUBJECT)
        else:
            decisions.append(d)
    if slo.cost_per_1k is not None and stats.cost_n >= need:
        per_1k = stats.cost_per_1k()
        assert per_1k is not None
        d = _decide("cost_budget", COST_SUBJECT, per_1k, slo.cost_per_1k,
                    slo.critical_factor, stats.cost_n)
        if d is None:
            good.append(COST_SUBJECT)
        else:
            decisions.append(d)
    return SloJudgement(decisions, good)


def _decide(kind: str, subject: str, value: float, objective: float, factor: float,
            n: int) -> SloDecision | None:
    if value <= objective:
        return None
    severe = objective * factor
    critical = value > severe
    threshold = severe if critical else objective
    if kind == "latency_slo":
        what, unit = "p99 latency", "ms"
        shown = f"{value:.0f}{unit}"
        bound, goal = f"{threshold:g}{unit}", f"{objective:g}{unit}"
    else:
        what = "cost per 1000 predictions"
        shown, bound, goal = f"{value:.4g}", f"{threshold:.4g}", f"{objective:.4g}"
    summary = (f"{what} {shown} over {n} predictions is above {bound}: "
               f"{f'{factor:g}x the ' if critical else 'the '}{goal} "
               f"{'objective' if kind == 'latency_slo' else 'budget'}")
    return SloDecision(kind, "critical" if critical else "warning", subject, value,
                       threshold, objective, n, summary)
