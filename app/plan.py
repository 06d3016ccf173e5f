"""``driftwarden plan``: each model's operating plan, read from the monitor file.

Before a model goes to production its operators must be able to answer three questions
(DESIGN §1). ``driftwarden plan -c monitor.yaml`` prints the answers the configuration
gives, model by model, and lists what it leaves unanswered::

    driftwarden plan -c monitor.yaml                  # every model, as text
    driftwarden plan -c monitor.yaml --model churn    # one model (unknown name: exit 2)
    driftwarden plan -c monitor.yaml --format json    # one JSON document
    driftwarden plan -c monitor.yaml --strict         # exit 1 when any gap is listed

1. **How is it monitored**: the windows (length, hop, lateness, ``min_samples``); feature
   and prediction drift (statistic, warning/critical thresholds, false-discovery rate);
   streaming change detectors; data-quality rules and their thresholds; performance from
   delayed labels (metric, baseline or where it comes from, allowed drop, ``min_labels``,
   label horizon, checkpoints, label-coverage floor, concept-drift detectors); the model's
   freshness SLO (``model_silent``); and who is alerted (owners ``monitoring``,
   ``on_call``, ``data``).
2. **Its data-dependency map**: the features grouped by source system, each source's
   owner, freshness SLO (``source_stale``), volume and schema window and expected
   volume, and which other models share the source.
3. **What happens when it degrades**: the retrain policy (the alert kinds that call for
   a retrain, cooldown, ``max_age``, ``expected_duration``), rollback advice (on the
   outputs after a deploy, on per-version performance, or neither), and how old the
   last retrain is. That last answer needs the broker: with ``--bootstrap H:P`` or
   ``kafka.bootstrap`` the command reads the model-events topic from the beginning (no
   consumer group, at most ``--timeout`` seconds, default 5) and reports the newest
   ``retrain_completed`` event of each model, its version and age. Without a reachable
   broker it says ``unknown (no broker reachable)`` and carries on.

**Gaps** are what the plan cannot answer, each with a short code: ``no_label_source``
(no ``performance`` section: no labels, no performance or concept-drift monitoring),
``no_reference`` (the reference file does not exist), ``no_alert_owner`` (neither
``owners.on_call`` nor ``owners.monitoring``), ``source_without_owner``,
``source_without_freshness``, ``feature_without_source`` (a hole in the dependency map),
``no_retrain_policy`` (``retrain`` absent or ``retrain.on`` empty),
``retrain_trigger_never_fires`` (``retrain.on`` names an alert kind the configuration
never raises) and ``no_model_freshness`` (no ``freshness`` SLO for the model).

The JSON document is ``{"config", "models": {name: {"task", "monitoring",
"dependencies", "degradation", "gaps"}}, "gap_count"}``; durations in it are seconds,
and the keys follow the monitor file's. Configuration errors exit 2 like every command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from app.detectors.statistics import LARGE_N, STATISTICS
from app.durations import format_duration
from app.errors import DriftwardenError
from app.events.checks import utc_datetime
from app.performance.metrics import HIGHER_IS_BETTER
from app.settings import ModelSettings, MonitorSettings

NO_BROKER = "unknown (no broker reachable)"
OWNER_ROLES = ("monitoring", "on_call", "data")
QUALITY_RULES = (("null", "max_null_rate"), ("type", "max_type_error_rate"),
                 ("out_of_range", "max_out_of_range_rate"), ("unseen", "max_unseen_rate"),
                 ("missing", "max_missing_rate"), ("unexpected", "max_unexpected_rate"))


@dataclass(frozen=True)
class Gap:
    """Something the configuration leaves unanswered for a model."""

    code: str
    subject: str
    message: str


@dataclass
class LastRetrain:
    """The newest ``retrain_completed`` event of a model, as far as it could be read.

    ``status``: ``not_checked`` (no broker configured), ``unknown`` (no broker reachable,
    or the read failed), ``none`` (the topic holds no such event) or ``found``.
    """

    status: str
    detail: str = ""
    version: str | None = None
    timestamp_ms: int | None = None
    age: float | None = None  # seconds, at the time of the read
    complete: bool = True  # False: the read timed out before the topic's end


# -- 1. monitoring --------------------------------------------------------------------
def _owners(model: ModelSettings) -> dict[str, str | None]:
    return {role: getattr(model.owners, role) for role in OWNER_ROLES}


def _statistics_in_effect(settings: MonitorSettings, name: str) -> list[dict[str, Any]]:
    """The statistics a window of this model can be judged by, with their thresholds."""
    model = settings.models[name]
    drift = model.drift
    types = sorted({f.type for f in model.features.values()} | _output_types(model))
    auto = {"numeric": ("ks", "wasserstein"), "categorical": ("chi2", "jensen_shannon")}
    rows: list[dict[str, Any]] = []
    for ftype in types:
        named: str = drift.statistic
        choices: list[tuple[str, str]]
        if named != "auto" and ftype in STATISTICS[named].feature_types:
            choices = [(named, f"{ftype} signals")]
        else:
            small, large = auto[ftype]
            choices = [(small, f"{ftype} signals, windows under {LARGE_N} values"),
                       (large, f"{ftype} signals, windows of {LARGE_N}+ values")]
        for statistic, applies in choices:
            warning, critical = drift.thresholds_for(statistic)
            rows.append({"statistic": statistic, "applies_to": applies, "warning": warning,
                         "critical": critical})
    return rows


def _output_types(model: ModelSettings) -> set[str]:
    if not model.prediction_drift:
        return set()
    # classes are categorical, class scores and regression values numeric
    return {"numeric"} if model.task == "regression" else {"numeric", "categorical"}


def _performance(settings: MonitorSettings, name: str) -> dict[str, Any] | None:
    model = settings.models[name]
    perf = model.performance
    if perf is None:
        return None
    from app.performance.tracker import checkpoint_delays

    metric = model.performance_metric
    higher = HIGHER_IS_BETTER[metric]
    out: dict[str, Any] = {
        "label_source": settings.topics.name("outcomes"),
        "metric": metric,
        "higher_is_better": higher,
        "baseline": perf.baseline,
        "baseline_from": "configured" if perf.baseline is not None else (
            f"the '{metric}' of the version's deployed or retrain_completed event metrics, "
            f"else learned from the version's first {perf.baseline_windows} settled windows"),
        "max_drop": perf.max_drop,
        "warning_bound": None,
        "critical_bound": None,
        "min_labels": perf.min_labels,
        "label_horizon": perf.label_horizon,
        "checkpoints": [d / 1000 for d in checkpoint_delays(
            perf, round(settings.window_of(name) * 1000))],
        "min_coverage": perf.min_coverage,
        "coverage_after": (perf.coverage_after if perf.coverage_after is not None
                           else perf.label_horizon) if perf.min_coverage is not None else None,
        "concept_drift": [{"detector": d.detector, "signal": d.signal, "params": dict(d.params),
                           "severity": d.severity} for d in model.concept_detectors],
    }
    if model.task != "regression":
        out["positive_class"] = perf.positive_class if model.task == "binary_classification" \
            else None
    if perf.baseline is not None:
        sign = 1 if higher else -1
        out["warning_bound"] = round(perf.baseline - sign * perf.max_drop, 12)
        out["critical_bound"] = round(perf.baseline - sign * 2 * perf.max_drop, 12)
    return out


def _monitoring(settings: MonitorSettings, name: str) -> dict[str, Any]:
    model = settings.models[name]
    ref = model.reference
    reference: dict[str, Any] = {"file": ref.file, "warmup": ref.warmup}
    if ref.file is not None:
        reference["exists"] = settings.resolve_path(ref.file).exists()
    quality: dict[str, Any] = {"enabled": model.quality.enabled}
    if model.quality.enabled:
        quality.update({key: getattr(model.quality, key) for _, key in QUALITY_RULES})
        quality["range_margin"] = model.quality.range_margin
        quality["critical_factor"] = model.quality.critical_factor
    return {
        "owners": _owners(model),
        "reference": reference,
        "windows": {"window": settings.window_of(name), "hop": settings.hop_of(name),
                    "lateness": settings.lateness_of(name),
                    "min_samples": settings.min_samples_of(name)},
        "segments": list(model.segments),
        "drift": {"statistic": model.drift.statistic, "fdr": model.drift.fdr,
                  "bins": model.drift.bins, "max_categories": model.drift.max_categories,
                  "thresholds": _statistics_in_effect(settings, name)},
        "prediction_drift": model.prediction_drift,
        "change_detectors": [{"signal": c.signal, "detector": c.detector,
                              "params": dict(c.params), "every": c.every,
                              "severity": c.severity} for c in model.change_detectors],
        "quality": quality,
        "performance": _performance(settings, name),
        "freshness": None if model.freshness is None else {"model_silent": model.freshness},
        "slo": {"latency_p99_ms": model.slo.latency_p99_ms,
                "cost_per_1k": model.slo.cost_per_1k,
                "critical_factor": model.slo.critical_factor},
    }


# -- 2. dependencies ------------------------------------------------------------------
def _dependencies(settings: MonitorSettings, name: str) -> dict[str, Any]:
    model = settings.models[name]
    by_source: dict[str, list[str]] = {}
    unsourced: list[str] = []
    for fname, feat in model.features.items():
        if feat.source is None:
            unsourced.append(fname)
        else:
            by_source.setdefault(feat.source, []).append(fname)
    sources = []
    for sname, features in by_source.items():
        src = settings.sources[sname]
        shared = sorted(other for other, m in settings.models.items() if other != name
                        and any(f.source == sname for f in m.features.values()))
        sources.append({
            "name": sname, "owner": src.owner, "freshness": src.freshness,
            "window": src.window if src.window is not None else settings.defaults.window,
            "volume": {"expected": src.volume.expected,
                       "learn_windows": src.volume.learn_windows,
                       "min_ratio": src.volume.min_ratio, "max_ratio": src.volume.max_ratio},
            "features": features, "shared_with": shared,
        })
    return {"sources": sources, "unsourced_features": unsourced}


# -- 3. degradation -------------------------------------------------------------------
def _degradation(settings: MonitorSettings, name: str,
                 last: LastRetrain) -> dict[str, Any]:
    model = settings.models[name]
    rt = model.retrain
    retrain = None if rt is None else {"on": list(rt.on), "cooldown": rt.cooldown,
                                       "max_age": rt.max_age,
                                       "expected_duration": rt.expected_duration}
    rb = model.rollback
    outputs = rb.on_prediction_drift and model.prediction_drift
    evidence = []
    if outputs:
        evidence.append(f"the new version's outputs against the previous version's last "
                        f"{rb.previous_windows} windows, in its first {rb.judge_windows} "
                        "windows")
    if model.performance is not None:
        evidence.append(f"{model.performance_metric} of each window against the previous "
                        "version's pooled figure")
    if evidence:
        note = "rollback advice after a deploy: " + "; ".join(evidence)
    else:
        note = ("off: rollback.on_prediction_drift or prediction_drift is off, and no "
                "label source (no per-version performance)")
    last_out: dict[str, Any] = {k: v for k, v in asdict(last).items() if k != "timestamp_ms"}
    last_out["timestamp"] = None if last.timestamp_ms is None else _iso(last.timestamp_ms)
    last_out["overdue"] = (last.age > rt.max_age
                           if last.age is not None and rt is not None and rt.max_age is not None
                           else None)
    return {"retrain": retrain,
            "rollback": {"outputs": outputs, "performance": model.performance is not None,
                         "previous_windows": rb.previous_windows,
                         "judge_windows": rb.judge_windows, "note": note},
            "last_retrain": last_out}


# -- gaps -----------------------------------------------------------------------------
def _never_raised(settings: MonitorSettings, name: str, kind: str) -> str | None:
    """Why the configuration never raises ``kind`` for this model, or None."""
    model = settings.models[name]
    perf = model.performance
    if kind in ("performance_drop", "concept_drift", "label_coverage") and perf is None:
        return "there is no performance section (no label source)"
    if kind == "concept_drift" and not model.concept_detectors:
        return "performance.concept_drift is empty"
    if kind == "label_coverage" and perf is not None and perf.min_coverage is None:
        return "performance.min_coverage is not set"
    if kind == "model_silent" and model.freshness is None:
        return "the model has no freshness SLO"
    if kind == "prediction_drift" and not model.prediction_drift:
        return "prediction_drift is off"
    if kind == "data_quality" and not model.quality.enabled:
        return "quality is disabled"
    if kind == "source_stale" and not any(
            f.source is not None and settings.sources[f.source].freshness is not None
            for f in model.features.values()):
        return "none of its sources has a freshness SLO"
    if kind == "latency_slo" and model.slo.latency_p99_ms is None:
        return "slo.latency_p99_ms is not set"
    if kind == "cost_budget" and model.slo.cost_per_1k is None:
        return "slo.cost_per_1k is not set"
    if kind == "retrain_overdue" and (model.retrain is None or model.retrain.max_age is None):
        return "retrain.max_age is not set"
    return None


def find_gaps(settings: MonitorSettings, name: str) -> list[Gap]:
    """What the configuration leaves unanswered for the model ``name``."""
    model = settings.models[name]
    gaps: list[Gap] = []
    if model.performance is None:
        gaps.append(Gap("no_label_source", name,
                        f"model {name!r} has no label source: without a performance section "
                        f"the outcomes on {settings.topics.name('outcomes')} are not joined, "
                        "so performance and concept drift are not monitored"))
    ref = model.reference
    if ref.file is not None and not settings.resolve_path(ref.file).exists():
        gaps.append(Gap("no_reference", ref.file,
                        f"model {name!r} has no reference: {ref.file} does not exist "
                        "(relative to the monitor file)"))
    if model.owners.on_call is None and model.owners.monitoring is None:
        gaps.append(Gap("no_alert_owner", name,
                        f"model {name!r} has no owner for its alerts: set owners.on_call or "
                        "owners.monitoring"))
    deps = _dependencies(settings, name)
    for src in deps["sources"]:
        if src["owner"] is None:
            gaps.append(Gap("source_without_owner", src["name"],
                            f"source {src['name']!r} (features {', '.join(src['features'])}) "
                            "has no owner"))
        if src["freshness"] is None:
            gaps.append(Gap("source_without_freshness", src["name"],
                            f"source {src['name']!r} has no freshness SLO: a silent source "
                            "is not noticed"))
    if deps["unsourced_features"]:
        feats = deps["unsourced_features"]
        gaps.append(Gap("feature_without_source", ", ".join(feats),
                        f"feature{'s' if len(feats) > 1 else ''} {', '.join(feats)} of model "
                        f"{name!r} name{'' if len(feats) > 1 else 's'} no source: a gap in the "
                        "data-dependency map"))
    rt = model.retrain
    if rt is None or not rt.on:
        gaps.append(Gap("no_retrain_policy", name,
                        f"model {name!r} has no retrain policy: "
                        + ("no retrain section" if rt is None else "retrain.on is empty")))
    else:
        for kind in rt.on:
            why = _never_raised(settings, name, kind)
            if why is not None:
                gaps.append(Gap("retrain_trigger_never_fires", kind,
                                f"retrain.on of model {name!r} names {kind}, which is never "
                                f"raised: {why}"))
    if model.freshness is None:
        gaps.append(Gap("no_model_freshness", name,
                        f"model {name!r} has no freshness SLO: a model that stops predicting "
                        "is not noticed (set freshness)"))
    return gaps


# -- the plan -------------------------------------------------------------------------
def build_plan(settings: MonitorSettings, models: list[str],
               last_retrains: dict[str, LastRetrain], *, config: str = "") -> dict[str, Any]:
    """The operating plan of ``models`` as one JSON-able document."""
    out: dict[str, Any] = {}
    total = 0
    for name in models:
        model = settings.models[name]
        gaps = find_gaps(settings, name)
        total += len(gaps)
        last = last_retrains.get(name) or LastRetrain("not_checked")
        out[name] = {
            "task": model.task,
            "features": len(model.features),
            "monitoring": _monitoring(settings, name),
            "dependencies": _dependencies(settings, name),
            "degradation": _degradation(settings, name, last),
            "gaps": [asdict(g) for g in gaps],
        }
    return {"config": config, "models": out, "gap_count": total}


def render_json(plan: dict[str, Any]) -> str:
    return json.dumps(plan, indent=2, ensure_ascii=False)


# -- text -----------------------------------------------------------------------------
def _d(seconds: float | None) -> str:
    """A duration as the monitor file would spell it (days rather than weeks)."""
    if seconds is None:
        return "-"
    if seconds == 0:
        return "0s"
    if seconds % 86400 == 0:
        return f"{int(seconds // 86400)}d"
    return format_duration(seconds)


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"


def _table(header: list[str], rows: list[list[str]], indent: int) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    pad = " " * indent
    return [(pad + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))).rstrip()
            for r in [header, *rows]]


def _kv(label: str, value: str, indent: int = 2) -> str:
    return f"{' ' * indent}{label:<18}{value}".rstrip()


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _iso(ms: int) -> str:
    """To the second; a record's timestamp outside 0001..9999 (any int64 a producer set)
    is clamped rather than failing the plan.

    >>> _iso(1_767_225_600_000), _iso(-2**63), _iso(2**63 - 1)
    ('2026-01-01T00:00:00Z', '0001-01-01T00:00:00Z', '9999-12-31T23:59:59Z')
    """
    return utc_datetime(ms).isoformat(timespec="seconds").replace("+00:00", "Z")


def _text_monitoring(name: str, m: dict[str, Any], out: list[str]) -> None:
    out.append("1. How it is monitored")
    owners = m["owners"]
    out.append(_kv("alerts go to", ""))
    out.extend(_table(["role", "owner"], [[r, owners[r] or "(none)"] for r in OWNER_ROLES], 4))
    ref = m["reference"]
    if ref["file"] is not None:
        refs = f"file {ref['file']}" + ("" if ref.get("exists") else " (not found)")
    else:
        refs = f"warm-up: the first {ref['warmup']} events of each version"
    out.append(_kv("reference", refs))
    w = m["windows"]
    kind = "tumbling" if w["hop"] == w["window"] else f"hopping every {_d(w['hop'])}"
    out.append(_kv("windows", f"{_d(w['window'])} {kind}, lateness {_d(w['lateness'])}, "
                              f"alerts need {w['min_samples']}+ events a window"))
    if m["segments"]:
        out.append(_kv("segments", ", ".join(m["segments"])))
    drift = m["drift"]
    out.append(_kv("feature drift", f"statistic {drift['statistic']}; a signal alerts at its "
                                    f"warning threshold with BH-adjusted p <= fdr "
                                    f"{drift['fdr']:g}"))
    out.extend(_table(["statistic", "applies to", "warning", "critical"],
                      [[t["statistic"], t["applies_to"], _g(t["warning"]), _g(t["critical"])]
                       for t in drift["thresholds"]], 4))
    out.append(_kv("prediction drift", "on (predicted classes or values and class scores, "
                                       "same statistics)" if m["prediction_drift"] else "off"))
    cds = m["change_detectors"]
    out.append(_kv("change detectors", "" if cds else "none"))
    if cds:
        out.extend(_table(["signal", "detector", "params", "every", "severity"],
                          [[c["signal"], c["detector"], _params(c["params"]), str(c["every"]),
                            c["severity"]] for c in cds], 4))
    q = m["quality"]
    if q["enabled"]:
        out.append(_kv("data quality", f"warning above the rate, critical at "
                                       f"{q['critical_factor']:g}x it (at least 10 points)"))
        out.extend(_table(["rule", "max rate"],
                          [[rule, _g(q[key])] for rule, key in QUALITY_RULES], 4))
    else:
        out.append(_kv("data quality", "disabled"))
    p = m["performance"]
    if p is None:
        out.append(_kv("performance", "not monitored (no label source)"))
    else:
        out.append(_kv("performance", f"{p['metric']} from labels on {p['label_source']}"))
        base = (f"{p['baseline']:g} (configured)" if p["baseline"] is not None
                else p["baseline_from"])
        out.append(_kv("baseline", base, 4))
        word = "below" if p["higher_is_better"] else "above"
        if p["warning_bound"] is not None:
            bound = (f"{word} {p['warning_bound']:g} (critical: {word} "
                     f"{p['critical_bound']:g})")
        else:
            bound = (f"{word} baseline {'-' if p['higher_is_better'] else '+'} "
                     f"{p['max_drop']:g} (critical: twice that)")
        out.append(_kv("performance_drop", f"when a window's 95% interval is entirely {bound}, "
                                           f"with {p['min_labels']}+ labels", 4))
        out.append(_kv("label horizon", _d(p["label_horizon"]), 4))
        out.append(_kv("checkpoints", ", ".join(_d(c) for c in p["checkpoints"])
                       + " after each window", 4))
        cov = ("none" if p["min_coverage"] is None else
               f"label_coverage under {p['min_coverage']:.0%} labelled "
               f"{_d(p['coverage_after'])} after the window")
        out.append(_kv("coverage floor", cov, 4))
        cd = p["concept_drift"]
        out.append(_kv("concept drift", "" if cd else "off", 4))
        if cd:
            out.extend(_table(["detector", "signal", "params", "severity"],
                              [[c["detector"], c["signal"], _params(c["params"]),
                                c["severity"]] for c in cd], 6))
    f = m["freshness"]
    out.append(_kv("freshness SLO", "none" if f is None else
                   f"model_silent after {_d(f['model_silent'])} without a prediction"))
    slo = m["slo"]
    objectives = []
    if slo["latency_p99_ms"] is not None:
        objectives.append(f"latency_slo when a window's p99 latency is above "
                          f"{slo['latency_p99_ms']:g}ms")
    if slo["cost_per_1k"] is not None:
        objectives.append(f"cost_budget above {slo['cost_per_1k']:g} per 1000 predictions")
    out.append(_kv("serving SLOs", "; ".join(objectives) + f" (critical at "
                   f"{slo['critical_factor']:g}x)" if objectives else "none"))


def _text_dependencies(name: str, d: dict[str, Any], out: list[str]) -> None:
    out.append("2. Data dependencies")
    rows = []
    for s in d["sources"]:
        v = s["volume"]
        expected = (f"{v['expected']}/window" if v["expected"] is not None
                    else f"learned ({v['learn_windows']} windows)")
        rows.append([s["name"], s["owner"] or "(none)",
                     _d(s["freshness"]) if s["freshness"] is not None else "(none)",
                     _d(s["window"]),
                     f"{expected}, alert <{v['min_ratio']:g}x or >{v['max_ratio']:g}x",
                     ", ".join(s["features"]), ", ".join(s["shared_with"]) or "-"])
    if d["unsourced_features"]:
        rows.append(["(no source)", "-", "-", "-", "-", ", ".join(d["unsourced_features"]), "-"])
    out.extend(_table(["source", "owner", "freshness SLO", "window", "expected volume",
                       "features", "shared with"], rows, 2))


def _text_degradation(name: str, g: dict[str, Any], out: list[str]) -> None:
    out.append("3. When it degrades")
    rt = g["retrain"]
    if rt is None:
        out.append(_kv("retrain", "no retrain policy"))
    else:
        out.append(_kv("retrain on", ", ".join(rt["on"]) or "(nothing)"))
        out.append(_kv("cooldown", _d(rt["cooldown"]) if rt["cooldown"] is not None
                       else "none"))
        out.append(_kv("max age", f"{_d(rt['max_age'])} (then retrain_overdue)"
                       if rt["max_age"] is not None else "none"))
        out.append(_kv("expected duration", f"{_d(rt['expected_duration'])} (then "
                       "retrain_stuck)" if rt["expected_duration"] is not None else "none"))
    out.append(_kv("rollback", g["rollback"]["note"]))
    last = g["last_retrain"]
    status = last["status"]
    if status == "found":
        text = f"version {last['version']}, {_age(last['age'])} ago ({last['timestamp']})"
        if last["overdue"]:
            text += ", older than max_age"
    elif status == "unknown":
        text = last["detail"] or NO_BROKER
    else:
        text = last["detail"]
    if not last["complete"]:
        text += " (read incomplete: timed out)"
    out.append(_kv("last retrain", text))


def render_text(plan: dict[str, Any]) -> str:
    out: list[str] = []
    for name, m in plan["models"].items():
        title = f"model {name} ({m['task']}, {m['features']} features)"
        out += [title, "=" * len(title)]
        _text_monitoring(name, m["monitoring"], out)
        out.append("")
        _text_dependencies(name, m["dependencies"], out)
        out.append("")
        _text_degradation(name, m["degradation"], out)
        out.append("")
        gaps = m["gaps"]
        out.append(f"Gaps ({len(gaps)})" if gaps else "Gaps: none")
        if gaps:
            out.extend(_table(["code", "what"], [[g["code"], g["message"]] for g in gaps], 2))
        out.append("")
    n = plan["gap_count"]
    out.append(f"{len(plan['models'])} model(s), {n} gap(s)")
    return "\n".join(out)


# -- the last retrain, from the model-events topic ------------------------------------
@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Silence a library logger: an unreachable broker is reported once, by us."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


async def read_last_retrains(settings: MonitorSettings, bootstrap: str, models: list[str],
                             timeout: float, *, now: float | None = None
                             ) -> dict[str, LastRetrain]:
    """The newest ``retrain_completed`` event of each model on the model-events topic.

    Reads the topic from the beginning without a consumer group, for at most ``timeout``
    seconds. "Newest" is by event time (the event's ``timestamp``, else the record's).
    Records that do not decode or validate are skipped. Never raises for an unreachable
    broker: every model's answer is then ``unknown``.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    from app.events.checks import MODEL_EVENT, timestamp_ms
    from app.events.decode import decode_message
    from app.kafka import client_kwargs

    def everyone(status: str, detail: str, complete: bool = True) -> dict[str, LastRetrain]:
        return {m: LastRetrain(status, detail, complete=complete) for m in models}

    try:
        kwargs = client_kwargs(settings.kafka)
    except DriftwardenError as exc:
        return everyone("unknown", f"unknown ({exc})")
    topic = settings.topics.name("model_events")
    wanted = set(models)
    newest: dict[str, tuple[int, str]] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                request_timeout_ms=max(1000, int(timeout * 1000)), **kwargs)

    async def scan() -> bool:
        """Read to the end offsets as of the start; False when the topic does not exist."""
        if topic not in await consumer.topics():
            return False
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return True
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    decoded = decode_message(
                        record.value, MODEL_EVENT,
                        max_bytes=settings.worker.max_message_bytes,
                        max_elements=settings.worker.max_array_elements)
                    for event in decoded.events:
                        if event["event"] != "retrain_completed" or event["model"] not in wanted:
                            continue
                        t = (timestamp_ms(event["timestamp"]) if "timestamp" in event
                             else int(record.timestamp))
                        best = newest.get(event["model"])
                        if best is None or t >= best[0]:
                            newest[event["model"]] = (t, str(event["version"]))
        return True

    with _quiet("aiokafka"):
        try:
            try:
                await asyncio.wait_for(consumer.start(), max(0.1, deadline - loop.time()))
            except (KafkaError, OSError, TimeoutError):
                return everyone("unknown", NO_BROKER)
            complete = True
            try:
                exists = await asyncio.wait_for(scan(), max(0.1, deadline - loop.time()))
            except TimeoutError:
                complete, exists = False, True
            except (KafkaError, OSError) as exc:
                return everyone("unknown", f"unknown (reading {topic} failed: {exc})")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 1.0)
    if not exists:
        return everyone("none", f"none found: topic {topic} does not exist")
    now_ms = (time.time() if now is None else now) * 1000
    out = {}
    for m in models:
        if m in newest:
            t, version = newest[m]
            out[m] = LastRetrain("found", "", version, t, round((now_ms - t) / 1000, 3), complete)
        else:
            out[m] = LastRetrain("none", f"none found on {topic}", complete=complete)
    return out


def last_retrains(settings: MonitorSettings, bootstrap: str | None, models: list[str],
                  timeout: float) -> dict[str, LastRetrain]:
    if not bootstrap:
        return {m: LastRetrain("not_checked", "not checked (no broker configured: pass "
                                              "--bootstrap or set kafka.bootstrap)")
                for m in models}
    return asyncio.run(read_last_retrains(settings, bootstrap, models, timeout))
