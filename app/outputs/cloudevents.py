"""CloudEvents 1.0 (structured mode) for alerts and evaluations.

Ids are deterministic: an alert id is a hash of (model, kind, subject, window start),
so a window closed again after a restart or a redelivery re-emits the same id.
"""

from __future__ import annotations

import hashlib
from typing import Any

from app.core.changes import Detection
from app.core.evaluation import WindowEvaluation
from app.events.checks import utc_datetime
from app.policy.drift import AlertDecision
from app.settings import ModelSettings

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"
ALERT_FIRING = "io.driftwarden.alert.firing"
ALERT_RESOLVED = "io.driftwarden.alert.resolved"
EVALUATION = "io.driftwarden.evaluation.completed"


def stable_id(*parts: object) -> str:
    """A deterministic 32-hex-digit id from its parts.

    >>> stable_id("churn", "feature_drift", "plan", 0)
    '872e5ee4be6f7346eeaaadd3e83ffbda'

    """
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]


def window_id(model: str, version: str, start_ms: int) -> str:
    """The id of one window of one model version: shared by its drift evaluation and all
    its performance evaluations (which come later, as labels arrive)."""
    return stable_id(model, version, "window", start_ms)


def iso(ms: int) -> str:
    """RFC 3339 in UTC, to the millisecond; a time past 9999-12-31 (a window ending after
    the last time events may carry) is written as its last millisecond.

    >>> iso(0), iso(10**15)
    ('1970-01-01T00:00:00.000Z', '9999-12-31T23:59:59.999Z')
    """
    return utc_datetime(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_ms(event: dict[str, Any]) -> int:
    """A CloudEvent's ``time`` (RFC 3339) in epoch ms: the inverse of :func:`iso`."""
    from app.events.checks import timestamp_ms

    return timestamp_ms(event["time"])


def envelope(*, type_: str, id_: str, source: str, subject: str, time_ms: int,
             data: dict[str, Any]) -> dict[str, Any]:
    return {"specversion": SPEC_VERSION, "type": type_, "source": source, "id": id_,
            "subject": subject, "time": iso(time_ms), "datacontenttype": "application/json",
            "data": data}


def _owners(model: ModelSettings) -> dict[str, str]:
    return {k: v for k, v in model.owners.model_dump().items() if v is not None}


def alert_summary(d: AlertDecision, model: str) -> str:
    ev = d.evidence
    moved = f" ({ev.reference_summary} -> {ev.window_summary})" if ev.window_summary else ""
    return (f"{model}: {d.kind.replace('_', ' ')} on {d.subject}: {d.statistic} "
            f"{d.value:.3f} >= {d.threshold:g} ({d.severity}){moved}")


def _segment_dict(label: str | None) -> dict[str, str] | None:
    if not label:
        return None
    key, _, value = label.partition("=")
    return {key: value}


def _labels(kind: str, model: str, severity: str, subject: str, owners: dict[str, str],
            **extra: str | None) -> dict[str, str]:
    """Alertmanager-shaped labels: bounded values only, the on-call owner as ``team``."""
    labels = {"alertname": f"driftwarden_{kind}", "model": model, "kind": kind,
              "severity": severity, "feature": subject}
    labels.update({k: v for k, v in extra.items() if v})
    if "on_call" in owners:
        labels["team"] = owners["on_call"]
    return labels


def _window_alert_id(ev: WindowEvaluation, d: AlertDecision) -> str:
    parts: tuple[object, ...] = (ev.model, ev.model_version, d.kind, d.subject, ev.start_ms)
    return stable_id(*parts, ev.segment) if ev.segment else stable_id(*parts)


def alert_event(d: AlertDecision, ev: WindowEvaluation, model: ModelSettings, *,
                source: str) -> dict[str, Any]:
    alert_id = _window_alert_id(ev, d)
    summary = alert_summary(d, ev.model)
    if ev.segment:
        summary = summary.replace(f" on {d.subject}:", f" on {d.subject} in {ev.segment}:", 1)
    owners = _owners(model)
    labels = _labels(d.kind, ev.model, d.severity, d.subject, owners,
                     model_version=ev.model_version, segment=ev.segment)
    data = {
        "alert_id": alert_id, "status": "firing", "severity": d.severity, "kind": d.kind,
        "model": ev.model, "model_version": ev.model_version, "feature": d.subject,
        "segment": _segment_dict(ev.segment),
        "window": {"start": iso(ev.start_ms), "end": iso(ev.end_ms)},
        "evidence": {"statistic": d.statistic, "value": d.value, "threshold": d.threshold,
                     "reference_value": 0.0, "n": d.evidence.n,
                     "reference_n": d.evidence.reference_n,
                     "reference": d.evidence.reference_summary,
                     "window": d.evidence.window_summary},
        "owners": owners, "affected_models": [ev.model], "summary": summary,
        "labels": labels,
        "annotations": {"summary": summary,
                        "description": f"Window {iso(ev.start_ms)}..{iso(ev.end_ms)}, version "
                                       f"{ev.model_version}, n={ev.n}, reference "
                                       f"{ev.reference_origin}"
                                       + (f" (fallback to {ev.reference_version})"
                                          if ev.fallback else "") + "."},
        "startsAt": iso(ev.end_ms), "endsAt": None,
    }
    return envelope(type_=ALERT_FIRING, id_=alert_id, source=source,
                    subject=f"{ev.model}/{d.subject}", time_ms=ev.end_ms, data=data)


def change_alert_event(det: Detection, model_name: str, model: ModelSettings, window_ms: int,
                       *, source: str) -> dict[str, Any]:
    """An alert for a streaming change detection on one per-event signal."""
    subject = det.signal[8:] if det.signal.startswith("feature.") else det.signal
    kind = "feature_drift" if det.signal.startswith("feature.") else "prediction_drift"
    alert_id = stable_id(model_name, kind, subject, det.config, det.index)
    start = det.event_ms // window_ms * window_ms
    before = "n/a" if det.before_mean is None else f"{det.before_mean:.4g}"
    recent = "n/a" if det.recent_mean is None else f"{det.recent_mean:.4g}"
    summary = (f"{model_name}: change in {subject} detected by {det.detector} at value "
               f"{det.index} (mean {before} -> recent {recent}) ({det.severity})")
    owners = _owners(model)
    labels = _labels(kind, model_name, det.severity, subject, owners,
                     statistic=det.detector, model_version=det.model_version)
    data = {
        "alert_id": alert_id, "status": "firing", "severity": det.severity, "kind": kind,
        "model": model_name, "model_version": det.model_version, "feature": subject,
        "window": {"start": iso(start), "end": iso(start + window_ms)},
        "evidence": {"statistic": det.detector, "value": det.recent_mean or 0.0,
                     "threshold": det.before_mean or 0.0,
                     "reference_value": det.before_mean, "n": det.index,
                     "reference": f"mean {before}", "window": f"recent mean {recent}",
                     "detected_at": iso(det.event_ms)},
        "owners": owners, "affected_models": [model_name], "summary": summary,
        "labels": labels,
        "annotations": {"summary": summary,
                        "description": f"Streaming {det.detector} on {det.signal}: a change "
                                       f"in its mean, detected at {iso(det.event_ms)}."},
        "startsAt": iso(det.event_ms), "endsAt": None,
    }
    return envelope(type_=ALERT_FIRING, id_=alert_id, source=source,
                    subject=f"{model_name}/{subject}", time_ms=det.event_ms, data=data)


def evaluation_event(ev: WindowEvaluation, alerts: list[AlertDecision], *,
                     source: str, serving: dict[str, Any] | None = None) -> dict[str, Any]:
    """A window's drift evaluation; ``serving`` is its serving section (see
    ``app.outputs.serving.serving_section``), for the version's unsegmented evaluation."""
    parts: tuple[object, ...] = (ev.model, ev.model_version, "evaluation", ev.start_ms)
    evaluation_id = stable_id(*parts, ev.segment) if ev.segment else stable_id(*parts)
    alert_ids = [_window_alert_id(ev, a) for a in alerts]
    data = {
        "evaluation_id": evaluation_id, "kind": "drift",
        "window_id": window_id(ev.model, ev.model_version, ev.start_ms),
        "model": ev.model, "model_version": ev.model_version, "versions": ev.versions,
        "segment": _segment_dict(ev.segment),
        "window": {"start": iso(ev.start_ms), "end": iso(ev.end_ms),
                   "start_ms": ev.start_ms, "end_ms": ev.end_ms},
        "n": ev.n, "min_samples": ev.min_samples, "sufficient": ev.sufficient,
        "late_events": ev.late_events, "reference": ev.reference_origin,
        "reference_version": ev.reference_version, "reference_fallback": ev.fallback,
        "features": [f.to_dict() for f in ev.features],
        "alerts": alert_ids,
    }
    ids = list(alert_ids)
    if ev.quality_rates is not None:
        from app.outputs.quality import quality_section

        quality = quality_section(ev)
        data["quality"] = quality
        ids += quality["alerts"] if quality else []
    if serving is not None:
        data["serving"] = serving
        ids += serving["alerts"]
    data["alerts"] = ids
    return envelope(type_=EVALUATION, id_=evaluation_id, source=source,
                    subject=ev.model, time_ms=ev.end_ms, data=data)
