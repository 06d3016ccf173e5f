"""The monitoring engine: validated prediction events in, CloudEvents out.

Pure (no faust, no Kafka): the workers' faust agents and ``driftwarden replay`` drive the
same engine, so every decision a worker makes can be reproduced offline.

One batch goes through three steps::

    batch = engine.batch()
    batch.add(event, default_ms, position=("mlmon.predictions:0", 1234))  # per event
    engine.apply(batch, now)                                              # per batch
    for model in batch.models:
        for start in engine.due(model, now):
            closed = engine.begin_close(model, start)    # figures, alerts, CloudEvents
            ...publish closed.alerts and closed.evaluation...
            engine.finish_close(model, start)            # or abort_close on failure

``now`` is wall-clock seconds in a worker (idle streams close by wall clock), and
``None`` offline, where only event time moves windows.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.core.evaluation import WindowEvaluation
from app.core.monitor import IngestResult, ModelMonitor
from app.core.signals import is_output_signal, public_name
from app.errors import StateError
from app.events.block import EventBlock
from app.events.checks import timestamp_ms
from app.events.fields import concat, field_values
from app.outputs.cloudevents import (
    _segment_dict,
    alert_event,
    change_alert_event,
    evaluation_event,
    event_ms,
)
from app.outputs.operational import lifecycle_event, model_silent_event
from app.outputs.performance import (
    concept_alert_event,
    output_rollback_event,
    performance_alert_event,
    performance_evaluation_event,
)
from app.outputs.quality import quality_alert_event
from app.outputs.retrain import retrain_trigger_event
from app.outputs.serving import serving_section, slo_alert_event
from app.performance.tracker import MAX_VERSIONS, PerformanceEvaluation, PerformanceUpdate
from app.policy.alerts import AlertBook, alert_key
from app.policy.drift import AlertDecision, decide_drift_alerts
from app.policy.performance import performance_healthy
from app.policy.slo import COST_SUBJECT, LATENCY_SUBJECT, judge_serving
from app.reference import Reference
from app.settings import MonitorSettings

_MODEL = operator.itemgetter("model")

StateLoader = Callable[[str], Any]  # model -> saved state (parsed JSON) or None
RecordsLoader = Callable[[str], dict[str, Any]]  # model -> its side records (suffix -> value)
StateErrorHook = Callable[[str, StateError], None]


def drop_positions(monitors: Iterable[Any], topic: str) -> int:
    """Drop every ``<topic>:<partition>`` applied position of ``monitors`` (their
    ``positions`` dicts); returns how many held one."""
    prefix = f"{topic}:"
    touched = 0
    for m in monitors:
        stale = [s for s in m.positions if s.startswith(prefix)]
        for source in stale:
            del m.positions[source]
        touched += bool(stale)
    return touched


class _Parts(list):  # type: ignore[type-arg]
    """A run's events as the parts they came in (blocks, or lists of events), to be
    joined by :meth:`Batch.finish`."""


def _joined(events: Sequence[dict[str, Any]]) -> Sequence[dict[str, Any]]:
    return concat(events) if type(events) is _Parts else events  # type: ignore[return-value]


@dataclass
class Batch:
    """Valid events of one batch grouped by model, with what was refused."""

    engine: Engine
    # model -> runs of one kind in arrival order: (kind, events, event times). Kept in
    # order because labels are judged against how far event time had moved when they
    # came; a batch of predictions only is one run.
    # (An array message decoded elsewhere is an EventBlock: a sequence of its events.)
    runs: dict[str, list[tuple[str, Sequence[dict[str, Any]], list[int]]]] = \
        field(default_factory=dict)
    unknown: list[dict[str, Any]] = field(default_factory=list)
    # dead-lettered for NaN / infinity, yet attributable: model -> (version, time, features)
    non_finite: dict[str, list[tuple[str, int, list[str]]]] = field(default_factory=dict)
    positions: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> source -> offset
    duplicates: int = 0
    # (kind, model) -> redelivered events skipped, for the ingest metrics
    duplicated: dict[tuple[str, str], int] = field(default_factory=dict)
    accepted: int = 0
    _parts: bool = False  # a run holds blocks not joined yet (see finish)

    def _duplicate(self, kind: str, model: str, n: int) -> None:
        self.duplicates += n
        self.duplicated[kind, model] = self.duplicated.get((kind, model), 0) + n

    def add_non_finite(self, raw: bytes, default_ms: int) -> bool:
        """Count a prediction refused for NaN or infinity in its model's window quality
        (the element, decoded leniently); False when it cannot be attributed."""
        try:
            obj = json.loads(raw.decode("utf-8"))
            model, version = obj["model"], obj["model_version"]
            features = obj["features"]
            t = obj.get("timestamp")
            t_ms = default_ms if t is None else timestamp_ms(t)
        except (ValueError, KeyError, TypeError, AttributeError):
            return False
        if not isinstance(model, str) or model not in self.engine.settings.models or \
                not isinstance(version, str) or not isinstance(features, dict):
            return False
        names = [k for k, v in features.items()
                 if isinstance(v, float) and not math.isfinite(v)]
        if not names:
            return False
        self.non_finite.setdefault(model, []).append((version, t_ms, names))
        return True

    def finish(self) -> None:
        """Join each run's blocks into one (at most once per run, not per message added:
        joining as each came copied the first ones again for every later one)."""
        if self._parts:
            for runs in self.runs.values():
                runs[:] = [(kind, _joined(events), times) for kind, events, times in runs]
            self._parts = False

    @property
    def models(self) -> list[str]:
        """Models with anything in this batch."""
        return list(dict.fromkeys([*self.runs,
                                   *[m for m in self.non_finite if m in self.engine.monitors]]))

    def add(self, event: dict[str, Any], default_ms: int, *,
            position: tuple[str, int] | None = None, partition: int | None = None,
            kind: str = "prediction") -> str | None:
        """Route one validated event; returns a rejection reason or ``None``.

        ``kind`` is ``prediction``, ``outcome`` or ``model_event`` (the schema the event
        was validated with).

        ``position`` (source, offset) lets a redelivered record be recognised: an event
        whose position is already applied to its model's saved state is skipped. Several
        events may share a position (the elements of one array message); positions are
        applied to the state with the batch, in :meth:`Engine.apply`.
        """
        model = event["model"]
        if model not in self.engine.settings.models:
            self.unknown.append(event)
            return "unknown_model"
        m = self.engine.monitor(model, partition)
        if position is not None and m.applied(*position):
            self._duplicate(kind, model, 1)
            return None
        runs = self.runs.setdefault(model, [])
        if not runs or runs[-1][0] != kind:
            runs.append((kind, [], []))
        run = runs[-1]
        if type(run[1]) is not list:  # a block's events, then this one: a list of them
            run = runs[-1] = (kind, list(_joined(run[1])), run[2])
        run[1].append(event)  # type: ignore[attr-defined]
        ts = event.get("timestamp")
        run[2].append(default_ms if ts is None else timestamp_ms(ts))
        if position is not None:
            self.positions.setdefault(model, {})[position[0]] = position[1]
        self.accepted += 1
        return None

    def add_many(self, events: Sequence[dict[str, Any]], default_ms: int, *,
                 position: tuple[str, int] | None = None, partition: int | None = None,
                 kind: str = "prediction") -> list[int]:
        """:meth:`add` for the validated events of one message (they share its position);
        returns the indices of those refused (``unknown_model``).

        The usual message holds one model's events: routed together, with one lookup.
        """
        if not events:
            return []
        if type(events) is EventBlock:  # one model's, known without building them
            model = events.model
        else:
            model = events[0]["model"]
            if list(map(_MODEL, events)).count(model) != len(events):  # mixed: one by one
                return [i for i, e in enumerate(events)
                        if self.add(e, default_ms, position=position, partition=partition,
                                    kind=kind) is not None]
        if model not in self.engine.settings.models:
            self.unknown.extend(events)  # (a block's events are built: the rare case)
            return list(range(len(events)))
        m = self.engine.monitor(model, partition)
        if position is not None and m.applied(*position):
            self._duplicate(kind, model, len(events))
            return []
        runs = self.runs.setdefault(model, [])
        if not runs or runs[-1][0] != kind:
            runs.append((kind, [], []))
        run = runs[-1]
        if type(run[1]) is list and type(events) is list:
            run[1].extend(events)
        elif type(run[1]) is _Parts:
            run[1].append(events)
        else:  # a block, and what came before it: joined once, when the run is read
            run = runs[-1] = (kind, _Parts([run[1], events]), run[2])
            self._parts = True
        stamps = field_values(events, "timestamp")
        if set(map(type, stamps)) != {int}:  # (epoch milliseconds: the usual stamps)
            stamps = [ts if type(ts) is int else default_ms if ts is None
                      else timestamp_ms(ts) for ts in stamps]
        run[2].extend(stamps)
        if position is not None:
            self.positions.setdefault(model, {})[position[0]] = position[1]
        self.accepted += len(events)
        return []


@dataclass(frozen=True)
class ClosedWindow:
    """A closed window's outputs: per model version, its evaluation and alerts."""

    evaluations: list[WindowEvaluation]
    decisions: list[AlertDecision]
    alerts: list[dict[str, Any]]  # CloudEvents
    evaluation_events: list[dict[str, Any]]
    due_since: float | None
    triggers: list[dict[str, Any]] = field(default_factory=list)  # retrain requests
    policy_state: dict[str, Any] | None = None  # alert book and retrain policy before it


class Engine:
    def __init__(self, settings: MonitorSettings, references: Mapping[str, Reference | None],
                 *, source: str, load_state: StateLoader | None = None,
                 load_records: RecordsLoader | None = None,
                 on_state_error: StateErrorHook | None = None) -> None:
        self.settings = settings
        self.references = references
        self.source = source
        self.load_state = load_state
        self.load_records = load_records
        self.on_state_error = on_state_error
        self.monitors: dict[str, ModelMonitor] = {}
        # Per-version references installed from files or the references topic; applied to
        # each model's monitor when it is loaded (never loading one early for them).
        self.installed: dict[str, dict[str, Reference]] = {}

    # -- state ----------------------------------------------------------------------
    def monitor(self, model: str, partition: int | None = None) -> ModelMonitor:
        m = self.monitors.get(model)
        if m is None:
            m = self.monitors[model] = self._restore(model)
            for version, ref in self.installed.get(model, {}).items():
                m.install_reference(version, ref)
        if partition is not None:
            m.partition = partition
        return m

    def _restore(self, model: str) -> ModelMonitor:
        ref = self.references.get(model)
        try:
            saved = self.load_state(model) if self.load_state else None
            if saved is not None:
                records = self.load_records(model) if self.load_records else None
                return ModelMonitor.from_state(saved, self.settings, ref, records)
        except StateError as exc:
            # A state this build cannot read: say so loudly, then start the model afresh
            # rather than stop monitoring every model of the partition.
            if self.on_state_error is not None:
                self.on_state_error(model, exc)
        return ModelMonitor(model, self.settings, ref)

    def forget(self, models: Iterable[str]) -> None:
        for model in list(models):
            self.monitors.pop(model, None)

    def rewind(self, topic: str) -> int:
        """Forget the applied positions of ``topic``'s partitions (a broker that lost its
        data numbers a partition from 0 again); returns how many models held one."""
        return drop_positions(self.monitors.values(), topic)

    # -- the batch path -------------------------------------------------------------
    def batch(self) -> Batch:
        return Batch(self)

    def apply(self, batch: Batch, now: float | None) -> dict[str, IngestResult]:
        """Update each model's state with its events of the batch, run by run in arrival
        order, the window sketches once for all its prediction runs (numpy over the
        batch, see ``ModelMonitor.ingest``); then evaluate the performance checkpoints
        that became due."""
        batch.finish()
        results: dict[str, IngestResult] = {}
        for model in batch.models:
            m = self.monitors[model]
            result = results[model] = IngestResult()
            for kind, events, times in batch.runs.get(model, []):
                if kind == "prediction":
                    _add(result, m.ingest(events, times, now, defer=True))
                elif kind == "outcome":
                    _add(result, m.ingest_outcomes(events, times, now))
                else:
                    _add(result, m.ingest_model_events(events, times, now))
            _add(result, m.window_deferred())
            if model in batch.non_finite:
                m.count_non_finite(batch.non_finite[model])
            self._queue_operational(model, result)
            result.performance = _merge(result.performance, self._advance(model, now))
            for source, offset in batch.positions.get(model, {}).items():
                m.advance(source, offset)
        return results

    def check_time(self, model: str, now: float | None, global_ms: int | None = None
                   ) -> IngestResult:
        """Clock-driven checks of one model (``model_silent``, retrain lifecycle); their
        alerts wait in the model's state like every other output."""
        result = self.monitor(model).check_time(now, global_ms)
        self._queue_operational(model, result, now=now, global_ms=global_ms)
        return result

    def _queue_operational(self, model: str, result: IngestResult, *, now: float | None = None,
                           global_ms: int | None = None) -> None:
        m = self.monitor(model)
        ms = self.settings.models[model]
        at = int(now * 1000) if now is not None else (global_ms or m.clock_ms or 0)
        events = [model_silent_event(
            model, ms, status=status, since_ms=since, silent_ms=at - since,
            slo_ms=m.freshness_ms or 0, time_ms=max(at, since), uri=self.source)
            for status, since in result.freshness]
        events += [lifecycle_event(f, model, ms, time_ms=max(at, f.since_ms), uri=self.source)
                   for f in result.lifecycle]
        m.pending_outputs += [("alerts", e) for e in m.alerts.passthrough(events)]

    def advance(self, model: str, now: float | None) -> PerformanceUpdate | None:
        """Wall-clock pass: evaluate performance checkpoints of an idle model."""
        return self._advance(model, now)

    def flush(self, model: str) -> PerformanceUpdate | None:
        """End of input (offline replay): every performance checkpoint left."""
        m = self.monitor(model)
        return self._queue(model, m.flush_performance())

    def _advance(self, model: str, now: float | None) -> PerformanceUpdate | None:
        return self._queue(model, self.monitor(model).advance_performance(now))

    def _queue(self, model: str, update: PerformanceUpdate | None) -> PerformanceUpdate | None:
        """Turn a performance update into CloudEvents waiting in the model's state."""
        if update is None:
            return None
        m = self.monitor(model)
        model_settings = self.settings.models[model]
        perf = model_settings.performance
        alerts: list[dict[str, Any]] = []
        evaluations = []
        for ev in update.evaluations:
            events = [performance_alert_event(d, ev, model_settings, source=self.source)
                      for d in ev.decisions]
            windowed = [e for e in events if e["data"]["kind"] != "rollback_recommended"]
            at = ev.end_ms + ev.after_ms
            goods = _performance_goods(ev, perf.max_drop if perf else 0.0)
            published, ids = m.alerts.window(at, ev.start_ms, windowed, goods)
            alerts += published
            advice = [e for e in events if e["data"]["kind"] == "rollback_recommended"]
            for e in advice:  # not advised again on output evidence
                m.versions.mark_advised(f"{e['data']['model_version']}>"
                                        f"{e['data']['evidence']['rollback_to']}")
            alerts += m.alerts.detections(advice, at)
            ids.update({e["id"]: e["id"] for e in advice})
            evaluation = performance_evaluation_event(ev, source=self.source)
            _episode_ids(evaluation["data"], ids)
            evaluations.append(evaluation)
        alerts += m.alerts.detections([concept_alert_event(
            d, model, model_settings, m.window_ms, source=self.source)
            for d in update.detections])
        m.pending_outputs += [("alerts", a) for a in alerts]
        m.pending_outputs += [("evaluations", e) for e in evaluations]
        if alerts:
            at = max(event_ms(e) for e in alerts)
            m.pending_outputs += [("retrain_triggers", t)
                                  for t in self._retrain(model, alerts, at)]
        return update

    # -- closing --------------------------------------------------------------------
    def due(self, model: str, now: float | None) -> list[int]:
        m = self.monitor(model)
        return m.due_by_watermark() if now is None else m.due(now)

    def begin_close(self, model: str, start_ms: int, now: float | None = None) -> ClosedWindow:
        m = self.monitor(model)
        due_since = m.due_since(start_ms) if now is not None else None
        saved = _policy_state(m)  # restored if publishing fails (abort_close)
        evaluations = m.begin_close(start_ms)
        model_settings = self.settings.models[model]
        decisions, candidates, events = [], [], []
        per_evaluation = []
        goods = _window_goods(evaluations, m.alerts)
        slo = model_settings.slo
        for ev in evaluations:
            found = decide_drift_alerts(ev, model_settings.drift)
            decisions += found
            drift = [alert_event(d, ev, model_settings, source=self.source) for d in found]
            quality = [quality_alert_event(f, ev, self.settings, uri=self.source)
                       for f in ev.quality]
            serving = None
            if ev.segment is None:
                judged = judge_serving(ev.serving, slo, min_samples=m.min_samples)
                slo_alerts = [slo_alert_event(d, ev, model_settings, source=self.source)
                              for d in judged.decisions]
                quality += slo_alerts
                goods += [alert_key({"kind": SLO_KINDS[subject], "feature": subject,
                                     "model_version": ev.model_version})
                          for subject in judged.good]
                serving = serving_section(ev, slo, [a["id"] for a in slo_alerts])
            candidates += drift + quality
            per_evaluation.append((ev, found, serving))
        window = m.windows[start_ms]
        end = window.end_ms
        alerts, ids = m.alerts.window(end, start_ms, candidates, goods)
        tracker = m.performance
        advice = m.versions.close(window, model_settings.drift, min_samples=m.min_samples,
                                  already=set(tracker.rollbacks) if tracker else set())
        if advice is not None:
            if tracker is not None:  # not advised again on performance evidence
                tracker.rollbacks = [*tracker.rollbacks,
                                     f"{advice.version}>{advice.target}"][-MAX_VERSIONS:]
            alerts += m.alerts.detections(
                [output_rollback_event(advice, model, model_settings, source=self.source)], end)
        alerts += m.alerts.expire(end)
        for ev, found, serving in per_evaluation:
            event = evaluation_event(ev, found, source=self.source, serving=serving)
            _episode_ids(event["data"], ids)
            events.append(event)
        return ClosedWindow(evaluations, decisions, alerts, events, due_since,
                            self._retrain(model, alerts, end), saved)

    def _retrain(self, model: str, alerts: list[dict[str, Any]], at_ms: int
                 ) -> list[dict[str, Any]]:
        """A retrain trigger when the model's policy says these alerts call for one."""
        m = self.monitor(model)
        firing = [a["data"] for a in alerts if a["data"].get("status") == "firing"]
        if m.retrain is None or not firing:
            return []
        decision = m.retrain.consider(firing, at_ms)
        if decision is None:
            return []
        lc = m.lifecycle
        live = lc.live if lc is not None else None
        version = live or firing[0].get("model_version")
        last = lc.trained_ms.get(live) if lc is not None and live is not None else None
        if lc is not None:
            lc.track_trigger(decision.trigger_id, at_ms, version)
        return [retrain_trigger_event(decision, model, version, last, source=self.source)]

    def detections(self, model: str) -> list[tuple[str, dict[str, Any]]]:
        """(target, CloudEvent) waiting to be published: alerts for streaming change
        detections, then performance evaluations and their alerts."""
        m = self.monitor(model)
        if m.pending_detections:  # through the alert book, into the outputs
            m.pending_outputs += [("alerts", e) for e in m.alerts.detections(
                [change_alert_event(d, model, self.settings.models[model], m.window_ms,
                                    source=self.source) for d in m.pending_detections])]
            m.pending_detections = []
        return list(m.pending_outputs)

    def ack_detections(self, model: str, count: int) -> None:
        """The first ``count`` outputs of :meth:`detections` are published."""
        del self.monitor(model).pending_outputs[:count]

    def abort_close(self, model: str, start_ms: int, closed: ClosedWindow) -> None:
        m = self.monitor(model)
        m.abort_close(start_ms, closed.evaluations)
        if closed.policy_state is not None:  # the window closes again, judged afresh
            m.alerts.load(closed.policy_state["alerts"])
            m.versions.load(closed.policy_state["versions"])
            if m.performance is not None and closed.policy_state["rollbacks"] is not None:
                m.performance.rollbacks = closed.policy_state["rollbacks"]
            if m.retrain is not None and closed.policy_state["retrain"] is not None:
                m.retrain.load(closed.policy_state["retrain"])

    def finish_close(self, model: str, start_ms: int) -> None:
        self.monitor(model).finish_close(start_ms)

    def install_reference(self, reference: Reference) -> bool:
        """Install a version's own reference; False when its model or version is unknown."""
        if reference.model not in self.settings.models or reference.version is None:
            return False
        self.installed.setdefault(reference.model, {})[reference.version] = reference
        m = self.monitors.get(reference.model)
        if m is not None:
            m.install_reference(reference.version, reference)
        return True

    def open_windows(self, model: str) -> list[int]:
        return sorted(self.monitor(model).windows)


SLO_KINDS = {LATENCY_SUBJECT: "latency_slo", COST_SUBJECT: "cost_budget"}


def _policy_state(m: ModelMonitor) -> dict[str, Any]:
    return {"alerts": m.alerts.to_state(), "versions": m.versions.to_state(),
            "rollbacks": None if m.performance is None else list(m.performance.rollbacks),
            "retrain": None if m.retrain is None else m.retrain.to_state()}


def _window_goods(evaluations: list[WindowEvaluation], book: AlertBook) -> list[str]:
    """Keys of the signals a closed window judged (enough events, a figure): the drift
    of each evaluated signal, and the data quality of a window with enough events."""
    goods = []
    for ev in evaluations:
        if not ev.sufficient:
            continue
        segment = _segment_dict(ev.segment)
        for fe in ev.features:
            if fe.value is not None and fe.n >= ev.min_samples:
                kind = "prediction_drift" if is_output_signal(fe.feature) else "feature_drift"
                goods.append(alert_key({"kind": kind, "feature": public_name(fe.feature),
                                        "segment": segment}))
    if any(ev.sufficient and ev.segment is None and ev.quality_rates is not None
           for ev in evaluations):
        goods += book.open_keys("data_quality")
    return list(dict.fromkeys(goods))


def _performance_goods(ev: PerformanceEvaluation, max_drop: float) -> list[str]:
    goods = []
    if performance_healthy(ev.metric, ev.value, ev.interval, ev.baseline, max_drop,
                           n=ev.labelled, min_labels=ev.min_labels, final=ev.final):
        goods.append(alert_key({"kind": "performance_drop", "feature": ev.metric,
                                "model_version": ev.model_version}))
    if ev.coverage_judged and not any(d.kind == "label_coverage" for d in ev.decisions):
        goods.append(alert_key({"kind": "label_coverage", "feature": "label_coverage",
                                "model_version": ev.model_version}))
    return goods


def _episode_ids(data: dict[str, Any], ids: dict[str, str | None]) -> None:
    """An evaluation names the alerts firing for its bad signals (episode ids)."""
    data["alerts"] = [i for i in dict.fromkeys(ids.get(a) for a in data["alerts"]) if i]
    for section in ("quality", "serving"):
        part = data.get(section)
        if part:
            part["alerts"] = [i for i in dict.fromkeys(ids.get(a) for a in part["alerts"]) if i]


def _merge(a: PerformanceUpdate | None, b: PerformanceUpdate | None) -> PerformanceUpdate | None:
    if a is None or b is None:
        return a if b is None else b
    a.evaluations += b.evaluations
    a.detections += b.detections
    for name in ("labelled", "expired", "orphans", "duplicates", "too_late", "late_labels",
                 "invalid_labels"):
        setattr(a, name, getattr(a, name) + getattr(b, name))
    return a


def _add(total: IngestResult, part: IngestResult) -> None:
    """Fold one run's ingest result into the batch's."""
    total.accepted += part.accepted
    total.late += part.late
    total.warmup += part.warmup
    total.problems += part.problems
    total.freshness += part.freshness
    total.lifecycle += part.lifecycle
    total.performance = _merge(total.performance, part.performance)


