"""Per-source monitoring state: schema, volume per window, and freshness (pure).

Records of ``mlmon.inputs`` (keyed by source) fall into tumbling event-time windows of
the source's ``window``. A window closes when the source's watermark (its latest record
time, plus the wall-clock time since its last record in workers) passes its end plus
lateness; records for a closed window are counted as late. At close:

- **schema**: the window's fields and types against the accepted schema (learned from
  the first window with at least ``min_samples`` records): a ``schema_change`` names
  what was added, removed or changed type, and the new schema is accepted from then on;
- **volume**: records against the expected count (configured, else the median of the
  first ``learn_windows`` complete windows): under ``min_ratio`` x it is a collapse, over
  ``max_ratio`` x a surge (``source_volume``). Windows with no record at all between two
  closed ones count as empty.

**Freshness** (``source_stale``) is judged by the caller's clock: workers pass how long
the source has been silent by the wall clock, ``driftwarden replay`` how far the other
streams' event time has moved past the source's last record. The alert id hashes the
source and its last record's time, so both agree; it resolves when records resume.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.core.evaluation import WindowEvaluation
from app.errors import MALFORMED_STATE, StateError
from app.sketches._state import check_state, integer
from app.sources.drift import SourceDrift
from app.sources.schema import SchemaCounts, SchemaDiff, diff_schema

STATE_KIND = "source-monitor"
STATE_VERSION = 1


@dataclass
class SourceWindow:
    start_ms: int
    end_ms: int
    records: int = 0
    schema: SchemaCounts = field(default_factory=SchemaCounts)


@dataclass(frozen=True)
class SourceFinding:
    """Something a closed window (or the clock) showed about a source."""

    kind: str  # schema_change | source_volume | source_stale
    severity: str
    start_ms: int
    end_ms: int
    summary: str
    value: float
    threshold: float
    reference_value: float | None
    n: int
    diff: SchemaDiff | None = None
    status: str = "firing"  # or "resolved" (source_stale)
    since_ms: int | None = None  # source_stale: the last record's event time
    feature: str | None = None  # feature_drift: the field
    statistic: str | None = None


@dataclass
class ClosedSourceWindow:
    start_ms: int
    end_ms: int
    records: int
    fingerprint: dict[str, str]
    findings: list[SourceFinding]
    drift: WindowEvaluation | None = None


class SourceMonitor:
    """Window and freshness state of one source (see the module docstring)."""

    def __init__(self, source: str, *, window_ms: int, lateness_ms: int, min_samples: int,
                 expected: int | None, learn_windows: int, min_ratio: float,
                 max_ratio: float, freshness_ms: int | None,
                 ignore_fields: Sequence[str] = (), drift: SourceDrift | None = None) -> None:
        self.source = source
        self.window_ms = window_ms
        self.lateness_ms = lateness_ms
        self.min_samples = min_samples
        self.expected_configured = expected
        self.learn_windows = learn_windows
        self.min_ratio = min_ratio
        self.max_ratio = max_ratio
        self.freshness_ms = freshness_ms
        self.ignore_fields = tuple(ignore_fields)
        self.drift = drift
        self.windows: dict[int, SourceWindow] = {}
        self.watermark_ms: int | None = None
        self.last_arrival: float | None = None
        self.closed_through_ms: int | None = None
        self.accepted: dict[str, str] | None = None
        self.learned: list[int] = []  # record counts of the first complete windows
        self.first_event_ms: int | None = None
        self.late = 0
        self.stale_since: int | None = None  # last record time when source_stale fired
        self.positions: dict[str, int] = {}
        self.partition: int | None = None

    @property
    def expected(self) -> float | None:
        if self.expected_configured is not None:
            return float(self.expected_configured)
        if len(self.learned) >= self.learn_windows:
            return float(statistics.median(self.learned))
        return None

    # -- ingest ---------------------------------------------------------------------
    def applied(self, source: str, position: int) -> bool:
        return position <= self.positions.get(source, -1)

    def advance(self, source: str, position: int) -> None:
        if position > self.positions.get(source, -1):
            self.positions[source] = position

    def ingest(self, records: Sequence[Mapping[str, Any]], times_ms: Sequence[int],
               now: float | None) -> list[SourceFinding]:
        """Add a batch of records with their event times; returns a resolution of
        ``source_stale`` when the source was stale."""
        if not records:
            return []
        if now is not None:
            self.last_arrival = now
        out = []
        if self.stale_since is not None:
            out.append(self._stale_finding("resolved", self.stale_since))
            self.stale_since = None
        times = np.asarray(times_ms, dtype=np.int64)
        top = int(times.max())
        self.watermark_ms = top if self.watermark_ms is None else max(self.watermark_ms, top)
        low = int(times.min())
        self.first_event_ms = low if self.first_event_ms is None else \
            min(self.first_event_ms, low)
        starts = times // self.window_ms * self.window_ms
        closed = self.closed_through_ms
        on_time = np.ones(len(records), dtype=bool) if closed is None else \
            starts + self.window_ms > closed
        compared = on_time.copy()  # on time, and not taken by the drift warm-up
        if self.drift is not None:  # the warm-up takes records in arrival order
            in_time = np.flatnonzero(on_time)
            warmed = self.drift.warm([records[i] for i in in_time.tolist()])
            compared[in_time[:warmed]] = False
        for ws in np.unique(starts).tolist():
            idx: list[int] = np.flatnonzero(starts == ws).tolist()
            if not on_time[idx[0]]:
                self.late += len(idx)
                continue
            w = self.windows.get(ws)
            if w is None:
                w = self.windows[ws] = SourceWindow(ws, ws + self.window_ms)
            w.records += len(idx)
            w.schema.update((records[i] for i in idx), self.ignore_fields)
            if self.drift is not None:
                self.drift.update(ws, [records[i] for i in idx if compared[i]])
        return out

    # -- closing --------------------------------------------------------------------
    def effective_watermark(self, now: float | None) -> int | None:
        if self.watermark_ms is None or now is None:
            return self.watermark_ms
        if self.last_arrival is None:
            self.last_arrival = now  # restored state: the idle clock starts now
        return self.watermark_ms + max(0, int((now - self.last_arrival) * 1000))

    def due(self, now: float | None) -> list[int]:
        wm = self.effective_watermark(now)
        if wm is None:
            return []
        return sorted(ws for ws, w in self.windows.items()
                      if w.end_ms + self.lateness_ms <= wm)

    def close(self, start_ms: int) -> ClosedSourceWindow:
        """Close a due window: its schema and volume findings."""
        w = self.windows.pop(start_ms)
        findings: list[SourceFinding] = []
        gap_from = self.closed_through_ms
        if gap_from is not None and gap_from < w.start_ms:  # windows with no record at all
            findings += self._volume(gap_from, w.start_ms, 0, (w.start_ms - gap_from)
                                     // self.window_ms)
        findings += self._volume(w.start_ms, w.end_ms, w.records, 1)
        if self.accepted is None:
            if w.records >= self.min_samples:
                self.accepted = w.schema.fingerprint(min_share=0.5)
        elif w.records >= self.min_samples:
            diff = diff_schema(self.accepted, w.schema)
            if diff:
                findings.append(SourceFinding(
                    "schema_change", "critical" if diff.removed or diff.changed else "warning",
                    w.start_ms, w.end_ms, f"schema of {self.source} changed: {diff.describe()}",
                    float(len(diff.added) + len(diff.removed) + len(diff.changed)), 0.0, None,
                    w.records, diff))
                accepted = {k: t for k, t in self.accepted.items() if k not in diff.removed}
                accepted.update(diff.added)
                accepted.update({k: new for k, (_, new) in diff.changed.items()})
                self.accepted = dict(sorted(accepted.items()))
        complete = self.first_event_ms is not None and self.first_event_ms <= w.start_ms
        if self.expected_configured is None and complete and \
                len(self.learned) < self.learn_windows:
            self.learned.append(w.records)
        drift_ev = None
        if self.drift is not None:
            judged = self.drift.evaluate(w.start_ms, w.end_ms)
            if judged is not None:
                drift_ev, decisions = judged
                findings += [SourceFinding(
                    "feature_drift", d.severity, w.start_ms, w.end_ms,
                    f"{d.subject} of {self.source} drifted: {d.statistic} {d.value:.3f} >= "
                    f"{d.threshold:g} ({d.evidence.reference_summary} -> "
                    f"{d.evidence.window_summary})", d.value, d.threshold, 0.0, d.evidence.n,
                    feature=d.subject, statistic=d.statistic) for d in decisions]
        if self.closed_through_ms is None or w.end_ms > self.closed_through_ms:
            self.closed_through_ms = w.end_ms
        return ClosedSourceWindow(w.start_ms, w.end_ms, w.records, w.schema.fingerprint(0.5),
                                  findings, drift_ev)

    def _volume(self, start: int, end: int, records: int, windows: int) -> list[SourceFinding]:
        expected = self.expected
        if expected is None or windows <= 0:
            return []
        per_window = records / windows
        if per_window < self.min_ratio * expected:
            severity = "critical" if per_window < self.min_ratio * expected / 2 else "warning"
            what = "no records" if records == 0 else f"{per_window:.0f} records per window"
            return [SourceFinding(
                "source_volume", severity, start, end,
                f"volume of {self.source} collapsed: {what}, expected {expected:.0f} "
                f"(floor {self.min_ratio:g} x)", per_window, self.min_ratio * expected,
                expected, records)]
        if per_window > self.max_ratio * expected:
            return [SourceFinding(
                "source_volume", "warning", start, end,
                f"volume of {self.source} surged: {per_window:.0f} records per window, "
                f"expected {expected:.0f} (ceiling {self.max_ratio:g} x)", per_window,
                self.max_ratio * expected, expected, records)]
        return []

    # -- freshness ------------------------------------------------------------------
    def check_stale(self, silent_ms: int | None) -> list[SourceFinding]:
        """``silent_ms``: how long the source has been silent by the caller's clock."""
        if self.freshness_ms is None or silent_ms is None or self.stale_since is not None:
            return []
        if silent_ms <= self.freshness_ms:
            return []
        self.stale_since = self.watermark_ms if self.watermark_ms is not None else -1
        return [self._stale_finding("firing", self.stale_since, silent_ms)]

    def _stale_finding(self, status: str, since: int, silent_ms: int | None = None
                       ) -> SourceFinding:
        assert self.freshness_ms is not None
        what = (f"no record from {self.source} for {silent_ms / 1000:.0f} s"
                if silent_ms is not None else f"records from {self.source} resumed")
        slo = self.freshness_ms / 1000
        return SourceFinding("source_stale", "critical", since, since, f"{what} (SLO {slo:g} s)",
                             (silent_ms or 0) / 1000, slo, None, 0, None, status, since)

    # -- state ----------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {"kind": STATE_KIND, "v": STATE_VERSION, "source": self.source,
                "partition": self.partition, "watermark": self.watermark_ms,
                "closed_through": self.closed_through_ms, "accepted": self.accepted,
                "learned": self.learned, "first_event": self.first_event_ms,
                "late": self.late, "stale_since": self.stale_since,
                "positions": self.positions,
                "windows": [[w.start_ms, w.records, w.schema.to_state()]
                            for w in self.windows.values()],
                "drift": None if self.drift is None else self.drift.to_state()}

    def load(self, state: Any) -> None:
        check_state(state, STATE_KIND, frozenset({STATE_VERSION}))
        try:
            self.partition = integer(state["partition"], "partition", minimum=0, nullable=True)
            self.watermark_ms = integer(state["watermark"], "watermark", nullable=True)
            self.closed_through_ms = integer(state["closed_through"], "closed_through",
                                             nullable=True)
            self.accepted = None if state["accepted"] is None else \
                {str(k): str(v) for k, v in state["accepted"].items()}
            self.learned = [integer(n, "learned", minimum=0) for n in state["learned"]]
            self.first_event_ms = integer(state["first_event"], "first_event", nullable=True)
            self.late = integer(state["late"], "late", minimum=0)
            self.stale_since = integer(state["stale_since"], "stale_since", nullable=True)
            self.positions = {str(k): integer(v, "position") for k, v in state["positions"].items()}
            if self.drift is not None and state.get("drift") is not None:
                self.drift.load(state["drift"])
            self.windows = {}
            for start, records, schema in state["windows"]:
                start = integer(start, "window start")
                self.windows[start] = SourceWindow(
                    start, start + self.window_ms, integer(records, "records", minimum=0),
                    SchemaCounts.from_state(schema))
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt source-monitor state: {exc!r}") from None
