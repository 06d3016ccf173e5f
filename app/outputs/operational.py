"""CloudEvents for operational alerts: sources (schema, volume, freshness), silent models,
and the retrain lifecycle. Firing and resolved events of one problem share its id.

Source alerts are keyed by the source: ``model`` is null, ``source`` names it, and
``affected_models`` / ``affected_features`` come from the dependency map; the owners are
the source's owner (as ``data``) and the on-call owners of the affected models.
"""

from __future__ import annotations

from typing import Any

from app.core.lifecycle import LifecycleFinding
from app.durations import format_duration
from app.outputs.cloudevents import ALERT_FIRING, ALERT_RESOLVED, _owners, envelope, iso, stable_id
from app.settings import ModelSettings, MonitorSettings
from app.sources.dependencies import affected
from app.sources.monitor import SourceFinding


def _alert(*, alert_id: str, status: str, severity: str, kind: str, model: str | None,
           model_version: str | None, subject: str | None, source_name: str | None,
           start_ms: int, end_ms: int, time_ms: int, evidence: dict[str, Any],
           owners: dict[str, str], affected_models: list[str], summary: str,
           description: str, labels: dict[str, str], uri: str,
           extra: dict[str, Any] | None = None) -> dict[str, Any]:
    labels = {"alertname": f"driftwarden_{kind}", "kind": kind, "severity": severity,
              **labels}
    if "on_call" in owners:
        labels["team"] = owners["on_call"]
    data = {
        "alert_id": alert_id, "status": status, "severity": severity, "kind": kind,
        "model": model, "model_version": model_version, "feature": subject,
        "source": source_name, "window": {"start": iso(start_ms), "end": iso(end_ms)},
        "evidence": evidence, "owners": owners, "affected_models": affected_models,
        "summary": summary, "labels": labels,
        "annotations": {"summary": summary, "description": description},
        "startsAt": iso(start_ms if status == "firing" else time_ms),
        "endsAt": iso(time_ms) if status == "resolved" else None,
        **(extra or {}),
    }
    return envelope(type_=ALERT_FIRING if status == "firing" else ALERT_RESOLVED,
                    id_=alert_id if status == "firing" else stable_id(alert_id, "resolved"),
                    source=uri, subject=f"{model or source_name}/{subject or kind}",
                    time_ms=time_ms, data=data)


def source_alert_id(source: str, f: SourceFinding) -> str:
    """Deterministic: (source, kind, [field,] window start or, when stale, last record)."""
    if f.kind == "source_stale":
        return stable_id(source, f.kind, f.since_ms)
    if f.feature is not None:
        return stable_id(source, f.kind, f.feature, f.start_ms)
    return stable_id(source, f.kind, f.start_ms)


def source_alert_event(f: SourceFinding, source: str, settings: MonitorSettings, *,
                       uri: str, time_ms: int | None = None) -> dict[str, Any]:
    """An alert about a source, naming the models and features that depend on it."""
    deps = affected(settings, source)
    owner = settings.sources[source].owner if source in settings.sources else None
    owners = {"data": owner} if owner else {}
    on_call = sorted({m.owners.on_call for name, m in settings.models.items()
                      if name in deps and m.owners.on_call})
    if on_call:
        owners["on_call"] = ", ".join(on_call)
    alert_id = source_alert_id(source, f)
    evidence: dict[str, Any] = {"statistic": f.kind, "value": f.value,
                                "threshold": f.threshold, "reference_value": f.reference_value,
                                "n": f.n}
    if f.diff is not None:
        evidence.update(added=f.diff.added, removed=f.diff.removed,
                        changed={k: list(v) for k, v in f.diff.changed.items()})
    if f.since_ms is not None:
        evidence["last_record"] = iso(f.since_ms) if f.since_ms >= 0 else None
    affected_features = {m: fs for m, fs in deps.items()}
    summary = f"{source}: {f.summary} ({f.severity}); affects " + (
        ", ".join(f"{m} ({', '.join(fs)})" for m, fs in deps.items()) or "no configured model")
    if f.statistic is not None:
        evidence["statistic"] = f.statistic
    return _alert(
        alert_id=alert_id, status=f.status, severity=f.severity, kind=f.kind, model=None,
        model_version=None, subject=f.feature, source_name=source, start_ms=f.start_ms,
        end_ms=f.end_ms, time_ms=f.end_ms if time_ms is None else time_ms, evidence=evidence,
        owners=owners, affected_models=sorted(deps), summary=summary,
        description=f"Source {source}. Dependent features: " + (
            "; ".join(f"{m}: {', '.join(fs)}" for m, fs in deps.items()) or "none") + ".",
        labels={"source": source}, uri=uri, extra={"affected_features": affected_features})


def model_silent_event(model: str, settings: ModelSettings, *, status: str, since_ms: int,
                       silent_ms: int, slo_ms: int, time_ms: int, uri: str) -> dict[str, Any]:
    alert_id = stable_id(model, "model_silent", since_ms)
    summary = (f"{model}: no prediction for {format_duration(silent_ms / 1000)} "
               f"(SLO {format_duration(slo_ms / 1000)}) (critical)"
               if status == "firing" else f"{model}: predictions resumed")
    owners = _owners(settings)
    return _alert(
        alert_id=alert_id, status=status, severity="critical", kind="model_silent",
        model=model, model_version=None, subject="predictions", source_name=None,
        start_ms=since_ms, end_ms=since_ms, time_ms=time_ms,
        evidence={"statistic": "silence_seconds", "value": silent_ms / 1000,
                  "threshold": slo_ms / 1000, "reference_value": None, "n": 0,
                  "last_prediction": iso(since_ms)},
        owners=owners, affected_models=[model], summary=summary,
        description=f"The last prediction of {model} has event time {iso(since_ms)}.",
        labels={"model": model}, uri=uri)


def lifecycle_event(f: LifecycleFinding, model: str, settings: ModelSettings, *,
                    time_ms: int, uri: str) -> dict[str, Any]:
    alert_id = stable_id(model, f.kind, f.subject, f.since_ms)
    age, limit = format_duration(round(f.age_ms / 1000)), format_duration(f.limit_ms / 1000)
    if f.kind == "retrain_overdue":
        summary = (f"{model}: live version {f.subject} was trained {age} ago, over the "
                   f"{limit} allowed (warning)") if f.status == "firing" else \
            f"{model}: a newer version is live"
    elif f.kind == "retrain_failed":
        summary = (f"{model}: retrain {f.subject} failed (warning)" if f.status == "firing"
                   else f"{model}: a retrain completed after the failure of {f.subject}")
    elif f.subject.startswith("trigger:"):
        summary = (f"{model}: retrain trigger {f.subject[8:]} not started after {age} "
                   f"(expected within {limit}) (warning)") if f.status == "firing" else \
            f"{model}: retrain {f.subject[8:]} started"
    else:
        summary = (f"{model}: retrain {f.subject} started {age} ago and has not finished "
                   f"(expected within {limit}) (warning)") if f.status == "firing" else \
            f"{model}: retrain {f.subject} finished"
    return _alert(
        alert_id=alert_id, status=f.status, severity="warning", kind=f.kind, model=model,
        model_version=f.version, subject=f.subject, source_name=None, start_ms=f.since_ms,
        end_ms=f.since_ms, time_ms=time_ms,
        evidence={"statistic": "age_seconds", "value": f.age_ms / 1000,
                  "threshold": f.limit_ms / 1000, "reference_value": None, "n": 0,
                  "since": iso(f.since_ms)},
        owners=_owners(settings), affected_models=[model], summary=summary,
        description=summary, labels={"model": model}, uri=uri)
