"""CloudEvents for model performance: checkpoint evaluations and their alerts.

Ids are deterministic. A window's performance is evaluated at several checkpoints as its
labels come in: every evaluation of one window and version carries the same
``window_id`` (the drift evaluation's too) and its own ``revision`` (the checkpoint), and
its CloudEvent id is the hash of both. A ``performance_drop`` or ``label_coverage``
alert's id is the hash of (model, version, kind, subject, window start): a window fires
each kind at most once, however many revisions follow.
"""

from __future__ import annotations

from typing import Any

from app.core.versions import OutputRollback
from app.durations import format_duration
from app.outputs.cloudevents import (
    ALERT_FIRING,
    EVALUATION,
    _labels,
    _owners,
    envelope,
    iso,
    stable_id,
    window_id,
)
from app.performance.tracker import ConceptDetection, PerformanceEvaluation
from app.policy.performance import PerformanceDecision
from app.settings import ModelSettings


def _after(ms: int) -> str:
    return format_duration(ms / 1000) if ms else "0s"


def performance_alert_id(ev: PerformanceEvaluation, d: PerformanceDecision) -> str:
    return stable_id(ev.model, ev.model_version, d.kind, d.subject, ev.start_ms)


def performance_evaluation_event(ev: PerformanceEvaluation, *, source: str) -> dict[str, Any]:
    wid = window_id(ev.model, ev.model_version, ev.start_ms)
    evaluation_id = stable_id(wid, "performance", ev.checkpoint)
    data = {
        "evaluation_id": evaluation_id,
        "kind": "performance", "window_id": wid, "revision": ev.checkpoint,
        "after": _after(ev.after_ms), "final": ev.final,
        "model": ev.model, "model_version": ev.model_version,
        "window": {"start": iso(ev.start_ms), "end": iso(ev.end_ms),
                   "start_ms": ev.start_ms, "end_ms": ev.end_ms},
        "n": ev.labelled, "predictions": ev.predictions, "labelled": ev.labelled,
        "new_labels": ev.new_labels, "label_coverage": ev.coverage,
        "label_delay_seconds": ev.delay_quantiles,
        "performance": {
            "metric": ev.metric, "value": ev.value,
            "interval": None if ev.interval is None else list(ev.interval),
            "baseline": ev.baseline, "baseline_source": ev.baseline_source,
            "min_labels": ev.min_labels, "sufficient": ev.labelled >= ev.min_labels,
            "figures": ev.figures},
        "alerts": [performance_alert_id(ev, d) for d in ev.decisions],
    }
    return envelope(type_=EVALUATION, id_=evaluation_id, source=source,
                    subject=ev.model, time_ms=ev.end_ms + ev.after_ms, data=data)


def performance_alert_event(d: PerformanceDecision, ev: PerformanceEvaluation,
                            model: ModelSettings, *, source: str) -> dict[str, Any]:
    alert_id = performance_alert_id(ev, d)
    summary = f"{ev.model}: {d.kind.replace('_', ' ')}: {d.summary} ({d.severity})"
    owners = _owners(model)
    labels = _labels(d.kind, ev.model, d.severity, d.subject, owners,
                     model_version=ev.model_version)
    interval = None if ev.interval is None else list(ev.interval)
    data = {
        "alert_id": alert_id, "status": "firing", "severity": d.severity, "kind": d.kind,
        "model": ev.model, "model_version": ev.model_version, "feature": d.subject,
        "window": {"start": iso(ev.start_ms), "end": iso(ev.end_ms)},
        "evidence": {"statistic": d.subject, "value": d.value, "threshold": d.threshold,
                     "reference_value": d.reference_value, "n": ev.labelled,
                     "interval": interval if d.kind == "performance_drop" else None,
                     "predictions": ev.predictions, "label_coverage": ev.coverage,
                     "baseline_source": ev.baseline_source, "after": _after(ev.after_ms),
                     "rollback_to": d.target_version,
                     "window_id": window_id(ev.model, ev.model_version, ev.start_ms)},
        "owners": owners, "affected_models": [ev.model], "summary": summary,
        "labels": labels,
        "annotations": {"summary": summary,
                        "description": f"Window {iso(ev.start_ms)}..{iso(ev.end_ms)}, version "
                                       f"{ev.model_version}: {ev.labelled} of "
                                       f"{ev.predictions} predictions labelled "
                                       f"{_after(ev.after_ms)} after the window."},
        "startsAt": iso(ev.end_ms + ev.after_ms), "endsAt": None,
    }
    return envelope(type_=ALERT_FIRING, id_=alert_id, source=source,
                    subject=f"{ev.model}/{d.subject}", time_ms=ev.end_ms + ev.after_ms,
                    data=data)


def output_rollback_event(advice: OutputRollback, model_name: str, model: ModelSettings, *,
                          source: str) -> dict[str, Any]:
    """``rollback_recommended`` from prediction drift: the new live version's outputs moved
    far from the previous version's recent outputs (see ``app.core.versions``)."""
    worst = advice.comparisons[0]
    alert_id = stable_id(model_name, advice.version, "rollback_recommended", "outputs",
                         advice.target)
    moved = "; ".join(f"{c.signal} {c.statistic} {c.value:.3f} >= {c.threshold:g} "
                      f"({c.summary})" for c in advice.comparisons)
    summary = (f"{model_name}: rollback recommended: roll back to {advice.target}: the "
               f"outputs of {advice.version} moved from those of {advice.target}: {moved} "
               "(critical)")
    owners = _owners(model)
    labels = _labels("rollback_recommended", model_name, "critical", worst.signal, owners,
                     statistic=worst.statistic, model_version=advice.version)
    start, end = advice.window_start_ms, advice.window_end_ms
    data = {
        "alert_id": alert_id, "status": "firing", "severity": "critical",
        "kind": "rollback_recommended", "model": model_name,
        "model_version": advice.version, "feature": worst.signal,
        "window": {"start": iso(start), "end": iso(end)},
        "evidence": {"statistic": worst.statistic, "value": worst.value,
                     "threshold": worst.threshold, "reference_value": 0.0, "n": worst.n,
                     "reference_n": worst.previous_n,
                     "reference": f"{advice.target} over its last {advice.previous_windows} "
                                  "windows",
                     "window": worst.summary, "rollback_to": advice.target,
                     "window_id": window_id(model_name, advice.version, start),
                     "signals": [{"signal": c.signal, "statistic": c.statistic,
                                 "value": c.value, "threshold": c.threshold,
                                 "p_adjusted": c.p_adjusted, "n": c.n,
                                 "reference_n": c.previous_n, "moved": c.summary}
                                for c in advice.comparisons]},
        "owners": owners, "affected_models": [model_name], "summary": summary,
        "labels": labels,
        "annotations": {"summary": summary,
                        "description": f"Window {iso(start)}..{iso(end)}: predictions of "
                                       f"{advice.version} (live since its deploy) against "
                                       f"{worst.previous_n} predictions of {advice.target} "
                                       f"in its last {advice.previous_windows} windows; "
                                       "labels are not needed for this advice."},
        "startsAt": iso(end), "endsAt": None,
    }
    return envelope(type_=ALERT_FIRING, id_=alert_id, source=source,
                    subject=f"{model_name}/{worst.signal}", time_ms=end, data=data)


def concept_alert_event(det: ConceptDetection, model_name: str, model: ModelSettings,
                        window_ms: int, *, source: str) -> dict[str, Any]:
    """A ``concept_drift`` alert: a detector saw the error stream of a version change."""
    subject = det.signal  # "error" or "loss"
    alert_id = stable_id(model_name, det.model_version, "concept_drift", det.identity,
                         det.index)
    start = det.event_ms // window_ms * window_ms
    before = "n/a" if det.before_mean is None else f"{det.before_mean:.4g}"
    recent = "n/a" if det.recent_mean is None else f"{det.recent_mean:.4g}"
    what = "error rate" if det.signal == "error" else "loss"
    summary = (f"{model_name}: concept drift: {det.detector} saw the {what} of version "
               f"{det.model_version} change at labelled prediction {det.index} "
               f"({before} -> recent {recent}) ({det.severity})")
    owners = _owners(model)
    labels = _labels("concept_drift", model_name, det.severity, subject, owners,
                     statistic=det.detector, model_version=det.model_version)
    data = {
        "alert_id": alert_id, "status": "firing", "severity": det.severity,
        "kind": "concept_drift", "model": model_name, "model_version": det.model_version,
        "feature": subject,
        "window": {"start": iso(start), "end": iso(start + window_ms)},
        "evidence": {"statistic": det.detector, "value": det.recent_mean or 0.0,
                     "threshold": det.before_mean or 0.0,
                     "reference_value": det.before_mean, "n": det.index,
                     "reference": f"mean {what} {before}",
                     "window": f"recent mean {what} {recent}",
                     "detected_at": iso(det.event_ms)},
        "owners": owners, "affected_models": [model_name], "summary": summary,
        "labels": labels,
        "annotations": {"summary": summary,
                        "description": f"{det.detector} on the per-prediction {what} of "
                                       f"version {det.model_version}, fed in prediction "
                                       f"event-time order; detected at the prediction of "
                                       f"{iso(det.event_ms)}."},
        "startsAt": iso(det.event_ms), "endsAt": None,
    }
    return envelope(type_=ALERT_FIRING, id_=alert_id, source=source,
                    subject=f"{model_name}/{subject}", time_ms=det.event_ms, data=data)
