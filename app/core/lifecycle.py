"""A model's lifecycle from ``mlmon.model-events``: live version, retrain age, stuck retrains.

- The **live version** is the one of the newest ``deployed`` or ``rolled_back`` event.
- **retrain_overdue**: the live version was trained (its ``retrain_completed`` event, else
  its ``deployed`` event) longer than ``retrain.max_age`` ago. Resolves when a newer
  version is completed and deployed, or the live version changes.
- **retrain_stuck**: a ``retrain_started`` (by ``trigger_id``, else by version) without
  its ``retrain_completed`` or ``retrain_failed`` within ``retrain.expected_duration``,
  or a retrain trigger this model published without its ``retrain_started`` within
  ``retrain.start_within``. Resolves when it starts or finishes.
- **retrain_failed**: a ``retrain_failed`` event. Resolves with the next completion.

Ages are measured on the caller's clock: workers pass the model's event time advanced
by wall-clock idle time, ``driftwarden replay`` the event time of all its streams.

>>> lc = ModelLifecycle(max_age_ms=1000, expected_ms=None)
>>> _ = lc.add({"event": "deployed", "version": "v1"}, 0)
>>> [(f.kind, f.status) for f in lc.check(1500)]
[('retrain_overdue', 'firing')]
>>> _ = lc.add({"event": "retrain_completed", "version": "v2"}, 1600)
>>> [(f.kind, f.status) for f in lc.add({"event": "deployed", "version": "v2"}, 1700)]
[('retrain_overdue', 'resolved')]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.errors import MALFORMED_STATE, StateError
from app.sketches._state import check_state

MAX_TRACKED = 32  # versions and open retrains remembered


@dataclass(frozen=True)
class LifecycleFinding:
    kind: str  # retrain_overdue | retrain_stuck
    status: str  # firing | resolved
    subject: str  # the live version, or the retrain's trigger id / version
    since_ms: int  # when the trained version was produced, or when the retrain started
    age_ms: int
    limit_ms: int
    version: str | None


class ModelLifecycle:
    def __init__(self, *, max_age_ms: int | None, expected_ms: int | None,
                 start_ms: int | None = None) -> None:
        self.max_age_ms = max_age_ms
        self.expected_ms = expected_ms
        self.start_ms = start_ms
        self.triggered: dict[str, tuple[int, str]] = {}  # trigger id -> (time, version)
        self.failed: dict[str, tuple[int, str]] = {}  # failed retrains, until a completion
        self.live: str | None = None
        self.trained_ms: dict[str, int] = {}  # version -> completed (or deployed) time
        self.started: dict[str, tuple[int, str]] = {}  # key -> (start time, version)
        self.overdue: tuple[str, int] | None = None  # firing: (version, trained time)
        self.stuck: set[str] = set()

    def add(self, event: Mapping[str, Any], t_ms: int) -> list[LifecycleFinding]:
        kind, version = event["event"], str(event["version"])
        key = str(event.get("trigger_id") or f"version:{version}")
        out: list[LifecycleFinding] = []
        if kind == "retrain_started":
            self.started[key] = (t_ms, version)
            self._trim(self.started)
            waited = self.triggered.pop(key, None)
            if waited is not None and f"trigger:{key}" in self.stuck:
                self.stuck.discard(f"trigger:{key}")
                out.append(self._stuck("resolved", f"trigger:{key}", waited[0], t_ms,
                                       waited[1], self.start_ms))
        elif kind in ("retrain_completed", "retrain_failed"):
            found = self.started.pop(key, None)
            if found is None:  # finished under another key: match by version
                match = [k for k, (_, v) in self.started.items() if v == version]
                found = self.started.pop(match[0]) if match else None
                key = match[0] if match else key
            if key in self.stuck:
                self.stuck.discard(key)
                start = found[0] if found else t_ms
                out.append(self._stuck("resolved", key, start, t_ms, version))
            self.triggered.pop(key, None)
            if kind == "retrain_completed":
                self.trained_ms[version] = t_ms
                self._trim(self.trained_ms)
                for k, (since, v) in sorted(self.failed.items()):
                    out.append(LifecycleFinding("retrain_failed", "resolved", k, since,
                                                t_ms - since, 0, v))
                self.failed.clear()
            else:
                self.failed[key] = (t_ms, version)
                self._trim(self.failed)
                out.append(LifecycleFinding("retrain_failed", "firing", key, t_ms, 0, 0,
                                            version))
        elif kind in ("deployed", "rolled_back"):
            self.live = version
            self.trained_ms.setdefault(version, t_ms)
            self._trim(self.trained_ms)
        out += self._resolve_overdue(t_ms)
        return out

    def _resolve_overdue(self, now_ms: int) -> list[LifecycleFinding]:
        if self.overdue is None:
            return []
        version, trained = self.overdue
        if self.live == version and self.trained_ms.get(version) == trained:
            return []
        self.overdue = None
        return [LifecycleFinding("retrain_overdue", "resolved", version, trained,
                                 now_ms - trained, self.max_age_ms or 0, version)]

    def check(self, clock_ms: int | None) -> list[LifecycleFinding]:
        """Findings due at ``clock_ms`` (None: no clock yet)."""
        if clock_ms is None:
            return []
        out: list[LifecycleFinding] = []
        live = self.live
        if self.max_age_ms is not None and live is not None and self.overdue is None:
            trained = self.trained_ms.get(live)
            if trained is not None and clock_ms - trained > self.max_age_ms:
                self.overdue = (live, trained)
                out.append(LifecycleFinding("retrain_overdue", "firing", live, trained,
                                            clock_ms - trained, self.max_age_ms, live))
        if self.expected_ms is not None:
            for key, (start, version) in sorted(self.started.items()):
                if key not in self.stuck and clock_ms - start > self.expected_ms:
                    self.stuck.add(key)
                    out.append(self._stuck("firing", key, start, clock_ms, version))
        if self.start_ms is not None:
            for key, (at, version) in sorted(self.triggered.items()):
                stuck_key = f"trigger:{key}"
                if stuck_key not in self.stuck and clock_ms - at > self.start_ms:
                    self.stuck.add(stuck_key)
                    out.append(self._stuck("firing", stuck_key, at, clock_ms, version,
                                           self.start_ms))
        return out

    def track_trigger(self, trigger_id: str, at_ms: int, version: str | None) -> None:
        """A retrain trigger was published: its ``retrain_started`` is awaited."""
        self.triggered[trigger_id] = (at_ms, version or "unknown")
        self._trim(self.triggered)

    def _stuck(self, status: str, key: str, start: int, now_ms: int, version: str,
               limit: int | None = None) -> LifecycleFinding:
        return LifecycleFinding("retrain_stuck", status, key, start, now_ms - start,
                                (self.expected_ms if limit is None else limit) or 0, version)

    @staticmethod
    def _trim(d: dict[str, Any]) -> None:
        while len(d) > MAX_TRACKED:
            d.pop(next(iter(d)))

    def to_state(self) -> dict[str, Any]:
        return {"kind": "model-lifecycle", "v": 1, "live": self.live,
                "trained": self.trained_ms,
                "started": {k: [t, v] for k, (t, v) in self.started.items()},
                "triggered": {k: [t, v] for k, (t, v) in self.triggered.items()},
                "failed": {k: [t, v] for k, (t, v) in self.failed.items()},
                "overdue": None if self.overdue is None else list(self.overdue),
                "stuck": sorted(self.stuck)}

    def load(self, state: Any) -> None:
        check_state(state, "model-lifecycle", frozenset({1}))
        try:
            self.live = state["live"]
            self.trained_ms = {str(k): int(v) for k, v in state["trained"].items()}
            self.started = {str(k): (int(t), str(v)) for k, (t, v) in state["started"].items()}
            self.triggered = {str(k): (int(t), str(v))
                              for k, (t, v) in state.get("triggered", {}).items()}
            self.failed = {str(k): (int(t), str(v))
                           for k, (t, v) in state.get("failed", {}).items()}
            o = state["overdue"]
            self.overdue = None if o is None else (str(o[0]), int(o[1]))
            self.stuck = {str(k) for k in state["stuck"]}
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt model-lifecycle state: {exc!r}") from None
