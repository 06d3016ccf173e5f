"""CloudEvents for data-quality alerts (``data_quality``) on a model's predictions.

The id hashes (model, version, rule, feature, window start). When every quality problem
of the window is on features of one source, the alert names that upstream source in
``source`` (and its summary), so the data owner sees where to look.
"""

from __future__ import annotations

from typing import Any

from app.core.evaluation import WindowEvaluation
from app.outputs.cloudevents import ALERT_FIRING, _labels, _owners, envelope, iso, stable_id
from app.quality import QualityFinding
from app.settings import ModelSettings, MonitorSettings
from app.sources.dependencies import upstream_source


def quality_alert_id(ev: WindowEvaluation, f: QualityFinding) -> str:
    return stable_id(ev.model, ev.model_version, "data_quality", f.rule, f.feature or "",
                     ev.start_ms)


def quality_upstream(ev: WindowEvaluation, model: ModelSettings) -> str | None:
    """The one source every feature-level finding of the window comes from, if any."""
    features = [f.feature for f in ev.quality if f.feature is not None]
    return upstream_source(model, features) if features else None


def quality_alert_event(f: QualityFinding, ev: WindowEvaluation, settings: MonitorSettings,
                        *, uri: str) -> dict[str, Any]:
    model = settings.models[ev.model]
    alert_id = quality_alert_id(ev, f)
    upstream = quality_upstream(ev, model)
    subject = f.feature or "unexpected_features"
    where = f" (upstream source {upstream})" if upstream else ""
    summary = f"{ev.model}: data quality: {subject}: {f.detail}{where} ({f.severity})"
    owners = _owners(model)
    if upstream and upstream in settings.sources and settings.sources[upstream].owner:
        owners.setdefault("data", settings.sources[upstream].owner or "")
    labels = _labels("data_quality", ev.model, f.severity, subject, owners,
                     statistic=f.rule, model_version=ev.model_version, source=upstream)
    data = {
        "alert_id": alert_id, "status": "firing", "severity": f.severity,
        "kind": "data_quality", "model": ev.model, "model_version": ev.model_version,
        "feature": subject, "source": upstream,
        "window": {"start": iso(ev.start_ms), "end": iso(ev.end_ms)},
        "evidence": {"statistic": f.rule, "value": f.rate, "threshold": f.threshold,
                     "reference_value": None, "n": f.n, "count": f.count,
                     "detail": f.detail},
        "owners": owners, "affected_models": [ev.model], "summary": summary,
        "labels": labels,
        "annotations": {"summary": summary,
                        "description": f"Window {iso(ev.start_ms)}..{iso(ev.end_ms)}, version "
                                       f"{ev.model_version}: rule {f.rule}, {f.count} of "
                                       f"{f.n} events."},
        "startsAt": iso(ev.end_ms), "endsAt": None,
    }
    return envelope(type_=ALERT_FIRING, id_=alert_id, source=uri,
                    subject=f"{ev.model}/{subject}", time_ms=ev.end_ms, data=data)


def quality_section(ev: WindowEvaluation) -> dict[str, Any] | None:
    """The evaluation's ``quality`` part: rates per feature and what was broken."""
    if ev.quality_rates is None:
        return None
    return {"rates": ev.quality_rates,
            "findings": [{"rule": f.rule, "feature": f.feature, "rate": f.rate,
                          "threshold": f.threshold, "count": f.count,
                          "severity": f.severity} for f in ev.quality],
            "alerts": [quality_alert_id(ev, f) for f in ev.quality]}
