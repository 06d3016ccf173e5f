"""Per-model monitoring state: the reference, open windows, watermark and lateness.

Pure and explicit: :meth:`ModelMonitor.to_state` is plain JSON-able data with a format
version, written once per batch by the workers and restored after a restart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.changes import ChangeTracker, Detection
from app.core.evaluation import WindowEvaluation, evaluate_window
from app.core.signals import PREDICTION, signal_rows
from app.core.windows import Window
from app.errors import StateError
from app.reference import Reference, build_reference
from app.settings import MonitorSettings

STATE_KIND = "model-monitor"
STATE_VERSION = 1


@dataclass
class IngestResult:
    accepted: int = 0
    late: int = 0
    warmup: int = 0


class ModelMonitor:
    """Window state of one model.

    Windows are tumbling (``hop`` = ``window``) or hopping (a new window every ``hop``,
    each ``window`` long, so an event belongs to ``window / hop`` windows). A window
    ``[start, end)`` closes when the watermark (the latest event time seen,
    advanced by the wall-clock time elapsed since the last event arrived, so idle
    streams close too) passes ``end + lateness``. Events for a window that has closed
    are counted as late, never silently dropped.
    """

    def __init__(self, model: str, settings: MonitorSettings,
                 reference: Reference | None) -> None:
        if model not in settings.models:
            raise ValueError(f"model {model!r} is not configured")
        self.model = model
        self.settings = settings.models[model]
        self.window_ms = int(settings.window_of(model) * 1000)
        self.hop_ms = int(settings.hop_of(model) * 1000)
        self.lateness_ms = int(settings.lateness_of(model) * 1000)
        self.min_samples = settings.min_samples_of(model)
        self.reference = reference
        self.windows: dict[int, Window] = {}
        self.closing: set[int] = set()
        self.watermark_ms: int | None = None
        self.last_arrival: float | None = None
        self.closed_through_ms: int | None = None
        self.late_events = 0
        self.warmup_rows: list[dict[str, Any]] = []
        self.partition: int | None = None
        self.warmup_target = self.settings.reference.warmup
        # Highest source position (e.g. "topic:partition" -> offset) already applied to
        # this state. Saved with the state, so a message redelivered after a restart or a
        # rebalance is recognised and not counted twice.
        self.positions: dict[str, int] = {}
        self.changes = [ChangeTracker(cfg) for cfg in self.settings.change_detectors]
        self.pending_detections: list[Detection] = []

    def applied(self, source: str, position: int) -> bool:
        """True when the record at ``position`` of ``source`` is already in this state."""
        return position <= self.positions.get(source, -1)

    def advance(self, source: str, position: int) -> None:
        if position > self.positions.get(source, -1):
            self.positions[source] = position

    # -- ingest ---------------------------------------------------------------------
    def ingest(self, events: Sequence[Mapping[str, Any]], times_ms: Sequence[int],
               now: float | None) -> IngestResult:
        """Add a batch of validated prediction events with their event times (epoch ms).

        ``now`` is the wall-clock arrival time (``None`` offline: no idle close).
        """
        result = IngestResult()
        if not events:
            return result
        if now is not None:
            self.last_arrival = now
        times = np.asarray(times_ms, dtype=np.int64)
        for tracker in self.changes:  # every event, in arrival order
            self.pending_detections += tracker.feed(events, times.tolist())
        top = int(times.max())
        self.watermark_ms = top if self.watermark_ms is None else max(self.watermark_ms, top)
        start = 0
        if self.reference is None:
            start = self._warm_up(events)
            result.warmup = start
            if self.reference is None:
                return result
        events, times = events[start:], times[start:]
        latest = (times // self.hop_ms) * self.hop_ms  # the newest window holding each event
        for back in range(self.window_ms // self.hop_ms):  # 1 pass when tumbling
            starts = latest - back * self.hop_ms
            for ws in np.unique(starts).tolist():
                idx = np.flatnonzero(starts == ws)
                if self._is_closed(ws):
                    if back == 0:  # its newest window is closed: so are all the others
                        result.late += idx.size
                    continue
                window = self.windows.get(ws)
                if window is None:
                    assert self.reference is not None
                    window = self.windows[ws] = Window.open(ws, self.window_ms, self.reference)
                rows = [events[i] for i in idx.tolist()]
                window.update(rows, [r["model_version"] for r in rows], times[idx])
                if back == 0:
                    result.accepted += idx.size
        self.late_events += result.late
        return result

    def _is_closed(self, start_ms: int) -> bool:
        if start_ms in self.closing:
            return True
        return self.closed_through_ms is not None and start_ms + self.window_ms <= \
            self.closed_through_ms

    def _warm_up(self, events: Sequence[Mapping[str, Any]]) -> int:
        assert self.warmup_target is not None
        take = min(len(events), self.warmup_target - len(self.warmup_rows))
        self.warmup_rows.extend(dict(r) for r in signal_rows(events[:take], [PREDICTION]))
        if len(self.warmup_rows) >= self.warmup_target:
            version = events[take - 1]["model_version"] if take else None
            self.reference = build_reference(self.warmup_rows, self.model, self.settings,
                                             version=version,
                                             origin=f"warmup:{self.warmup_target}")
            self.warmup_rows = []
        return take

    # -- closing --------------------------------------------------------------------
    def effective_watermark(self, now: float) -> int | None:
        if self.watermark_ms is None or self.last_arrival is None:
            return self.watermark_ms
        return self.watermark_ms + max(0, int((now - self.last_arrival) * 1000))

    def due_since(self, start_ms: int) -> float | None:
        """Wall-clock time at which the window became due (for the close-lag metric)."""
        if self.watermark_ms is None or self.last_arrival is None:
            return None
        end = self.windows[start_ms].end_ms + self.lateness_ms
        return self.last_arrival + max(0, end - self.watermark_ms) / 1000

    def due(self, now: float) -> list[int]:
        """Starts of open windows ready to close, oldest first."""
        return self._due(self.effective_watermark(now))

    def due_by_watermark(self) -> list[int]:
        """Like :meth:`due` without a wall clock (offline replay): event time only."""
        return self._due(self.watermark_ms)

    def _due(self, wm: int | None) -> list[int]:
        if wm is None:
            return []
        return sorted(ws for ws, w in self.windows.items()
                      if ws not in self.closing and w.end_ms + self.lateness_ms <= wm)

    def begin_close(self, start_ms: int) -> WindowEvaluation:
        """Evaluate a due window; late events for it from now on are counted as late."""
        assert self.reference is not None
        self.closing.add(start_ms)
        late, self.late_events = self.late_events, 0
        return evaluate_window(self.model, self.windows[start_ms], self.reference,
                               min_samples=self.min_samples, late_events=late,
                               statistic="psi")

    def abort_close(self, start_ms: int, evaluation: WindowEvaluation) -> None:
        """Publishing failed: keep the window open to close again later."""
        self.closing.discard(start_ms)
        self.late_events += evaluation.late_events

    def finish_close(self, start_ms: int) -> None:
        window = self.windows.pop(start_ms)
        self.closing.discard(start_ms)
        if self.closed_through_ms is None or window.end_ms > self.closed_through_ms:
            self.closed_through_ms = window.end_ms

    # -- state ----------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        # A window being closed is saved as open: if the worker dies before its outputs
        # are published, the restarted worker closes it again (same deterministic ids).
        return {
            "kind": STATE_KIND, "v": STATE_VERSION, "model": self.model,
            "partition": self.partition, "watermark": self.watermark_ms,
            "last_arrival": self.last_arrival, "closed_through": self.closed_through_ms,
            "late_events": self.late_events, "positions": self.positions,
            "changes": [t.to_state() for t in self.changes],
            "pending_detections": [d.to_dict() for d in self.pending_detections],
            "windows": [w.to_state() for w in self.windows.values()],
            "warmup_rows": self.warmup_rows,
            "reference": (self.reference.to_dict()
                          if self.reference is not None and self.warmup_target else None),
        }

    @classmethod
    def from_state(cls, state: Any, settings: MonitorSettings,
                   reference: Reference | None) -> ModelMonitor:
        if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
            raise StateError("not a model-monitor state")
        if state.get("v") != STATE_VERSION:
            raise StateError(f"model-monitor state version {state.get('v')!r} is not supported "
                             f"(this build reads {STATE_VERSION})")
        try:
            saved_ref = state.get("reference")
            if reference is None and saved_ref is not None:
                reference = Reference.from_dict(saved_ref)
            m = cls(str(state["model"]), settings, reference)
            m.partition = state["partition"]
            m.watermark_ms = state["watermark"]
            m.last_arrival = state["last_arrival"]
            m.closed_through_ms = state["closed_through"]
            m.late_events = int(state["late_events"])
            m.positions = {str(k): int(v) for k, v in state["positions"].items()}
            saved_changes = state.get("changes", [])
            if len(saved_changes) == len(m.changes):  # else: configuration changed
                for tracker, saved in zip(m.changes, saved_changes, strict=True):
                    tracker.load(saved)
            m.pending_detections = [Detection.from_dict(d)
                                    for d in state.get("pending_detections", [])]
            m.warmup_rows = list(state["warmup_rows"])
            for ws in state["windows"]:
                w = Window.from_state(ws)
                m.windows[w.start_ms] = w
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"corrupt model-monitor state: {exc!r}") from None
        return m
