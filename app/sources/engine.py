"""The sources engine: validated input records in, source alerts and evaluations out.

Pure, like the model engine (``app.core.engine``): the workers' inputs agent and
``driftwarden replay`` drive it the same way::

    batch = engine.batch()
    batch.add(record_event, default_ms, position=("mlmon.inputs:0", 7))
    engine.apply(batch, now)                  # windows, schema, resolved staleness
    engine.check(source, now, global_ms)      # closes due windows, judges freshness
    outputs = engine.outputs(source)          # CloudEvents waiting to be published
    engine.ack(source, len(outputs))

Outputs wait in the source's state until acknowledged, so a worker that dies before
publishing them publishes them after its restart, with the same ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.core.engine import drop_positions
from app.core.monitor import saved_outputs
from app.errors import MALFORMED_STATE, StateError
from app.events.checks import timestamp_ms
from app.outputs.cloudevents import EVALUATION, envelope, iso, stable_id
from app.outputs.operational import source_alert_event, source_alert_id
from app.policy.alerts import AlertBook
from app.policy.routing import episode_policy
from app.settings import MonitorSettings
from app.sources.drift import SourceDrift, source_fields
from app.sources.monitor import ClosedSourceWindow, SourceMonitor

StateLoader = Callable[[str], Any]
StateErrorHook = Callable[[str, StateError], None]
OUTPUT_TARGETS = frozenset({"alerts", "evaluations"})


@dataclass
class SourceBatch:
    engine: SourcesEngine
    groups: dict[str, tuple[list[dict[str, Any]], list[int]]] = field(default_factory=dict)
    positions: dict[str, dict[str, int]] = field(default_factory=dict)
    accepted: int = 0
    duplicates: int = 0

    def add(self, event: dict[str, Any], default_ms: int, *,
            position: tuple[str, int] | None = None, partition: int | None = None) -> str | None:
        """Route one validated input event; returns a rejection reason or None."""
        source = event["source"]
        if source not in self.engine.settings.sources:
            return "unknown_source"
        m = self.engine.monitor(source, partition)
        if position is not None and m.applied(*position):
            self.duplicates += 1
            return None
        group = self.groups.setdefault(source, ([], []))
        group[0].append(event["record"])
        ts = event.get("timestamp")
        group[1].append(default_ms if ts is None else timestamp_ms(ts))
        if position is not None:
            self.positions.setdefault(source, {})[position[0]] = position[1]
        self.accepted += 1
        return None


class SourcesEngine:
    def __init__(self, settings: MonitorSettings, *, source_uri: str,
                 load_state: StateLoader | None = None,
                 on_state_error: StateErrorHook | None = None) -> None:
        self.settings = settings
        self.uri = source_uri
        self.load_state = load_state
        self.on_state_error = on_state_error
        self.monitors: dict[str, SourceMonitor] = {}
        self.pending: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.late: dict[str, int] = {}
        self.books: dict[str, AlertBook] = {}  # per source: its alert episodes

    def _new(self, source: str) -> SourceMonitor:
        s = self.settings.sources[source]
        d = self.settings.defaults
        return SourceMonitor(
            source, window_ms=round((s.window or d.window) * 1000),
            lateness_ms=round(d.lateness * 1000), min_samples=d.min_samples,
            expected=s.volume.expected, learn_windows=s.volume.learn_windows,
            min_ratio=s.volume.min_ratio, max_ratio=s.volume.max_ratio,
            freshness_ms=None if s.freshness is None else round(s.freshness * 1000),
            ignore_fields=s.ignore_fields, drift=self._drift(source))

    def _drift(self, source: str) -> SourceDrift | None:
        if not self.settings.sources[source].drift:
            return None
        fields = source_fields(self.settings, source)
        if fields is None:
            return None
        return SourceDrift(source, fields, min_samples=self.settings.defaults.min_samples)

    def _book(self, source: str) -> AlertBook:
        window_ms = self.monitors[source].window_ms
        return AlertBook(source, lambda kind: episode_policy(
            self.settings.alerting, None, kind, window_ms),
            routes=self.settings.alerting.routes, silences=self.settings.alerting.silences)

    def monitor(self, source: str, partition: int | None = None) -> SourceMonitor:
        m = self.monitors.get(source)
        if m is None:
            m = self.monitors[source] = self._new(source)
            self.books[source] = self._book(source)
            try:
                saved = self.load_state(source) if self.load_state else None
                if saved is not None:
                    m.load(saved.get("monitor"))
                    self.pending[source] = saved_outputs(saved.get("outputs", []),
                                                         OUTPUT_TARGETS)
                    if saved.get("alerting") is not None:  # absent before episodes
                        self.books[source].load(saved["alerting"])
                    orjson.dumps(self.to_state(source))  # what loads must save again
            except (StateError, *MALFORMED_STATE) as exc:
                m = self.monitors[source] = self._new(source)
                self.books[source] = self._book(source)
                self.pending.pop(source, None)
                if self.on_state_error is not None:
                    err = exc if isinstance(exc, StateError) else StateError(
                        f"corrupt source state: {exc!r}")
                    self.on_state_error(source, err)
        if partition is not None:
            m.partition = partition
        return m

    def rewind(self, topic: str) -> int:
        """:meth:`app.core.engine.Engine.rewind` for sources."""
        return drop_positions(self.monitors.values(), topic)

    def forget(self, sources: list[str]) -> None:
        for s in sources:
            self.monitors.pop(s, None)
            self.pending.pop(s, None)
            self.books.pop(s, None)

    def batch(self) -> SourceBatch:
        return SourceBatch(self)

    def apply(self, batch: SourceBatch, now: float | None) -> None:
        for source, (records, times) in batch.groups.items():
            m = self.monitors[source]
            before = m.late
            found = m.ingest(records, times, now)  # source_stale resolved
            self._queue(source, self.books[source].passthrough(
                [self._event(source, f) for f in found]))
            self.late[source] = self.late.get(source, 0) + m.late - before
            for pos, offset in batch.positions.get(source, {}).items():
                m.advance(pos, offset)

    def check(self, source: str, now: float | None, global_ms: int | None = None, *,
              since_ms: int | None = None) -> int:
        """Close due windows and judge freshness; returns how many windows closed.

        Offline, a source never heard of is silent since ``since_ms`` (the input's start).
        """
        m = self.monitor(source)
        closed = 0
        for start in m.due(now):
            self._queue_window(source, m.close(start))
            closed += 1
        if now is not None:
            if m.last_arrival is None:
                m.last_arrival = now  # never heard of (or restored): the clock starts now
            silent: int | None = int((now - m.last_arrival) * 1000)
        else:
            last = m.watermark_ms if m.watermark_ms is not None else since_ms
            silent = None if global_ms is None or last is None else global_ms - last
        at = int(now * 1000) if now is not None else global_ms
        self._queue(source, self.books[source].passthrough(
            [self._event(source, f, at) for f in m.check_stale(silent)]))
        return closed

    def flush(self, source: str) -> None:
        """End of input (offline): close every window left."""
        m = self.monitor(source)
        for start in sorted(m.windows):
            self._queue_window(source, m.close(start))

    def _event(self, source: str, f: Any, time_ms: int | None = None) -> dict[str, Any]:
        return source_alert_event(f, source, self.settings, uri=self.uri, time_ms=time_ms)

    def _queue(self, source: str, alerts: list[dict[str, Any]]) -> None:
        self.pending.setdefault(source, []).extend(("alerts", a) for a in alerts)

    def _queue_window(self, source: str, closed: ClosedSourceWindow) -> None:
        """A closed window's volume and drift findings are its bad verdicts, the problems
        of those kinds it did not find are good; a schema change is a detection."""
        book = self.books[source]
        events = [self._event(source, f) for f in closed.findings]
        bad = [e for e in events if e["data"]["kind"] != "schema_change"]
        goods = [*book.open_keys("source_volume"), *book.open_keys("feature_drift")]
        alerts, ids = book.window(closed.end_ms, closed.start_ms, bad, goods)
        alerts += book.detections([e for e in events if e["data"]["kind"] == "schema_change"])
        ids.update({e["id"]: e["id"] for e in events if e["data"]["kind"] == "schema_change"})
        self._queue(source, alerts + book.expire(closed.end_ms))
        m = self.monitors[source]
        evaluation_id = stable_id(source, "source-evaluation", closed.start_ms)
        data = {
            "evaluation_id": evaluation_id, "kind": "source", "source": source,
            "window": {"start": iso(closed.start_ms), "end": iso(closed.end_ms),
                       "start_ms": closed.start_ms, "end_ms": closed.end_ms},
            "n": closed.records, "expected": m.expected, "late_events": m.late,
            "schema": closed.fingerprint, "accepted_schema": m.accepted,
            "alerts": [i for i in dict.fromkeys(
                ids.get(source_alert_id(source, f)) for f in closed.findings) if i],
            "features": None if closed.drift is None else
            [f.to_dict() for f in closed.drift.features],
        }
        self.pending.setdefault(source, []).append(("evaluations", envelope(
            type_=EVALUATION, id_=evaluation_id, source=self.uri, subject=source,
            time_ms=closed.end_ms, data=data)))

    def outputs(self, source: str) -> list[tuple[str, dict[str, Any]]]:
        return list(self.pending.get(source, []))

    def ack(self, source: str, count: int) -> None:
        del self.pending.get(source, [])[:count]

    def to_state(self, source: str) -> dict[str, Any]:
        m = self.monitor(source)
        return {"monitor": m.to_state(),
                "outputs": [[t, e] for t, e in self.pending.get(source, [])],
                "alerting": self.books[source].to_state()}
