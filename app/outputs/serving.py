"""CloudEvents for serving objectives: ``latency_slo`` and ``cost_budget`` alerts, and the
``serving`` section of a window's drift evaluation."""

from __future__ import annotations

from typing import Any

from app.core.evaluation import WindowEvaluation
from app.outputs.cloudevents import ALERT_FIRING, _labels, _owners, envelope, iso, stable_id
from app.policy.slo import SloDecision
from app.settings import ModelSettings, SloSettings


def slo_alert_id(ev: WindowEvaluation, d: SloDecision) -> str:
    return stable_id(ev.model, ev.model_version, d.kind, d.subject, ev.start_ms)


def slo_alert_event(d: SloDecision, ev: WindowEvaluation, model: ModelSettings, *,
                    source: str) -> dict[str, Any]:
    alert_id = slo_alert_id(ev, d)
    what = "latency SLO" if d.kind == "latency_slo" else "cost budget"
    summary = f"{ev.model}: {what}: version {ev.model_version}: {d.summary} ({d.severity})"
    owners = _owners(model)
    labels = _labels(d.kind, ev.model, d.severity, d.subject, owners,
                     model_version=ev.model_version)
    figures = _figures_text(ev.serving.figures() if ev.serving is not None else {})
    data = {
        "alert_id": alert_id, "status": "firing", "severity": d.severity, "kind": d.kind,
        "model": ev.model, "model_version": ev.model_version, "feature": d.subject,
        "window": {"start": iso(ev.start_ms), "end": iso(ev.end_ms)},
        "evidence": {"statistic": d.subject, "value": d.value, "threshold": d.threshold,
                     "reference_value": d.objective, "n": d.n,
                     "window": figures},
        "owners": owners, "affected_models": [ev.model], "summary": summary,
        "labels": labels,
        "annotations": {"summary": summary,
                        "description": f"Window {iso(ev.start_ms)}..{iso(ev.end_ms)}, version "
                                       f"{ev.model_version}: {figures}."},
        "startsAt": iso(ev.end_ms), "endsAt": None,
    }
    return envelope(type_=ALERT_FIRING, id_=alert_id, source=source,
                    subject=f"{ev.model}/{d.subject}", time_ms=ev.end_ms, data=data)


def _figures_text(figures: dict[str, Any]) -> str:
    parts = []
    lat = figures.get("latency_ms")
    if lat:
        parts.append(f"latency p50 {lat['p50']:.0f}ms, p90 {lat['p90']:.0f}ms, "
                     f"p99 {lat['p99']:.0f}ms (n={lat['n']})")
    cost = figures.get("cost")
    if cost:
        parts.append(f"cost {cost['per_1k']:.4g} per 1000 predictions (n={cost['n']})")
    return "; ".join(parts) or "no latency or cost figures"


def serving_section(ev: WindowEvaluation, slo: SloSettings, alert_ids: list[str]
                    ) -> dict[str, Any] | None:
    """Latency quantiles, cost and the objectives of the window's version; ``None`` when
    no prediction carried ``latency_ms`` or ``cost`` and no objective is set."""
    objectives = {"latency_p99_ms": slo.latency_p99_ms, "cost_per_1k": slo.cost_per_1k}
    if ev.serving is None and not any(v is not None for v in objectives.values()):
        return None
    figures = ev.serving.figures() if ev.serving is not None else \
        {"latency_ms": None, "cost": None}
    return {**figures, "objectives": objectives, "alerts": alert_ids}
