"""Alert episodes: one firing alert per problem, hysteresis, resolution, cooldown,
silences and routes (pure: alert CloudEvents in, the lifecycle to publish out).

The judges (drift, quality, performance) say, window by window, which signals are bad;
the book turns those verdicts into an alert lifecycle:

- a problem (model, kind, subject, segment; the version too for performance kinds) fires
  after ``fire_after`` consecutive bad windows, once: later bad windows continue the same
  alert (an escalation from warning to critical is published once, same ``alert_id``);
- it resolves after ``resolve_after`` consecutive good windows, with an
  ``io.driftwarden.alert.resolved`` event; windows without a verdict (too few events)
  change nothing;
- after resolving, it does not fire again for ``cooldown``;
- detections (a change detector, concept drift, rollback advice) fire at once and
  resolve ``hold`` after the last detection of the same problem;
- an alert silenced by a maintenance window is tracked but not published; one still
  firing when the silence ends is published then; its resolution is published only if
  its firing was.

Ids are deterministic: an episode's ``alert_id`` hashes the model, the problem and the
start of its first bad window, so a window closed again after a restart re-emits the
same ids, and the book itself is saved with the model's state so that a restarted
worker neither fires an open alert again nor forgets to resolve it.

>>> from app.policy.routing import EpisodePolicy
>>> book = AlertBook("churn", lambda kind: EpisodePolicy(fire_after=2, resolve_after=2))
>>> def bad(start):
...     return {"id": f"w{start}", "type": FIRING, "time": "2024-01-01T00:00:00Z",
...             "data": {"alert_id": f"w{start}", "status": "firing", "kind": "feature_drift",
...                      "feature": "plan", "severity": "warning", "summary": "churn: plan",
...                      "labels": {}, "owners": {}}}
>>> key = alert_key(bad(0)["data"])
>>> [len(book.window(s + 60, s, [bad(s)] if b else [], [] if b else [key])[0])
...  for s, b in [(0, 1), (60, 0), (120, 1), (180, 0)]]  # flapping: nothing
[0, 0, 0, 0]
>>> [[e["type"].rsplit(".")[-1] for e in book.window(s + 60, s, [bad(s)] if b else [],
...                                       [] if b else [key])[0]]
...  for s, b in [(240, 1), (300, 1), (360, 1), (420, 0), (480, 0)]]
[[], ['firing'], [], [], ['resolved']]
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from app.errors import MALFORMED_STATE, StateError
from app.outputs.cloudevents import ALERT_FIRING, ALERT_RESOLVED, event_ms, iso, stable_id
from app.policy.routing import EpisodePolicy, apply_route, silence_of
from app.settings_alerting import RouteSettings, SilenceSettings
from app.sketches._state import check_state

FIRING, RESOLVED = ALERT_FIRING, ALERT_RESOLVED
STATE_KIND = "alert-book"
STATE_VERSION = 1
VERSIONED_KINDS = frozenset({"performance_drop", "label_coverage", "concept_drift",
                             "rollback_recommended", "latency_slo", "cost_budget"})
MAX_SILENCED_IDS = 1000
SEVERITY_RANK = {"warning": 1, "critical": 2}
Event = dict[str, Any]


def alert_key(data: dict[str, Any], *, detection: bool = False) -> str:
    """The problem an alert is about: kind, subject, source and segment; the rule for
    data quality; the version for performance kinds; the detector for detections.

    >>> alert_key({"kind": "feature_drift", "feature": "plan", "segment": {"region": "eu"}})
    'feature_drift|plan||region=eu'
    """
    kind = data.get("kind") or ""
    # A model's alert is about its subject (the upstream source it names may vary);
    # a source's alert (no model) is about the source.
    source = "" if data.get("model") else data.get("source") or ""
    parts = [kind, data.get("feature") or "", source]
    segment = data.get("segment")
    if segment:
        parts.append(",".join(f"{k}={v}" for k, v in sorted(segment.items())))
    evidence = data.get("evidence") or {}
    if kind == "data_quality" or detection:
        parts.append(str(evidence.get("statistic") or ""))
    if kind in VERSIONED_KINDS:
        parts.append(str(data.get("model_version") or ""))
    return ("detect|" if detection else "") + "|".join(parts)


@dataclass
class Episode:
    """One problem's state: counting towards firing, firing, or cooling down."""

    key: str
    status: str = "pending"  # pending | firing
    bad: int = 0  # consecutive bad windows (pending) ...
    good: int = 0  # ... consecutive good windows (firing)
    streak_start: int | None = None  # first bad window of the current streak
    last_window: int | None = None  # the last window counted, and its verdict
    last_bad: bool = False
    alert_id: str | None = None
    severity: str = "warning"
    published: bool = False  # firing published (not silenced)
    held: bool = False  # firing held back by a silence
    event: Event | None = None  # the newest firing event (published or held back)
    quiet_until: int = 0  # cooldown: no new firing before this event time
    expires: int | None = None  # detections: resolves at this event time
    windows: int = 0  # bad windows in this episode

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AlertBook:
    """The alert episodes of one model (or one source)."""

    model: str
    policy_of: Callable[[str], EpisodePolicy]
    routes: Sequence[RouteSettings] = ()
    silences: Sequence[SilenceSettings] = ()
    episodes: dict[str, Episode] = field(default_factory=dict)
    silenced_ids: list[str] = field(default_factory=list)  # operational alerts held back
    # Since the last drain: alerts not published, by reason (for metrics).
    suppressed: dict[str, int] = field(default_factory=dict)

    # -- verdicts of one window ---------------------------------------------------------
    def window(self, at_ms: int, start_ms: int, bad: Iterable[Event], good: Iterable[str]
               ) -> tuple[list[Event], dict[str, str | None]]:
        """Apply one window's verdicts: ``bad`` candidate alert events (one per bad signal
        and version), ``good`` keys of signals judged fine. Returns the events to
        publish, and for each candidate's id the alert id of its firing episode (None
        while the problem is still counting towards ``fire_after``)."""
        worst: dict[str, Event] = {}
        for ev in bad:
            key = alert_key(ev["data"])
            held = worst.get(key)
            if held is None or _rank(ev) > _rank(held):
                worst[key] = ev
        out: list[Event] = []
        for key, ev in worst.items():
            out += self._bad(key, ev, at_ms, start_ms)
        for key in good:
            if key not in worst:
                out += self._good(key, at_ms, start_ms)
        ids = {ev["id"]: self._firing_id(alert_key(ev["data"])) for ev in bad}
        return out, ids

    def open_keys(self, kind: str) -> list[str]:
        """Keys of this kind's episodes that a good window would change."""
        return [k for k, e in self.episodes.items()
                if k.startswith(kind + "|") and (e.status == "firing" or e.bad)]

    def _firing_id(self, key: str) -> str | None:
        ep = self.episodes.get(key)
        return ep.alert_id if ep is not None and ep.status == "firing" else None

    def _bad(self, key: str, event: Event, at_ms: int, start_ms: int) -> list[Event]:
        ep = self.episodes.setdefault(key, Episode(key))
        if ep.last_window is not None and start_ms <= ep.last_window:
            # A revision of a window already counted: only a good verdict turning bad counts.
            if start_ms < ep.last_window or ep.last_bad:
                return self._unsilence(ep, at_ms)
            if ep.status == "firing":
                ep.good = max(0, ep.good - 1)
        policy = self.policy_of(event["data"]["kind"])
        ep.last_window, ep.last_bad = start_ms, True
        if ep.status == "firing":
            ep.good = 0
            ep.windows += 1
            return self._continue(ep, event, at_ms)
        if ep.bad == 0:
            ep.streak_start = start_ms
        ep.bad += 1
        ep.event = event
        if ep.bad < policy.fire_after:
            return []
        if at_ms < ep.quiet_until:
            self._count("cooldown")
            return []
        ep.windows = ep.bad
        return self._fire(ep, event, at_ms, start_ms, policy)

    def _good(self, key: str, at_ms: int, start_ms: int) -> list[Event]:
        ep = self.episodes.get(key)
        if ep is None or (ep.last_window is not None and start_ms <= ep.last_window):
            return []
        ep.last_window, ep.last_bad = start_ms, False
        if ep.status == "pending":
            ep.bad = 0
            if at_ms >= ep.quiet_until:
                del self.episodes[key]
            return []
        ep.good += 1
        out = self._unsilence(ep, at_ms)
        kind = ep.event["data"]["kind"] if ep.event else ""
        policy = self.policy_of(kind)
        if ep.good >= policy.resolve_after:
            out += self._resolve(ep, at_ms, policy, f"after {ep.good} good windows")
        return out

    # -- detections and operational alerts ---------------------------------------------
    def detections(self, events: Iterable[Event], at_ms: int | None = None) -> list[Event]:
        """Point alerts (change detectors, concept drift, rollback advice): fire at once
        unless the same problem is firing already; resolve ``hold`` later."""
        out: list[Event] = []
        for event in events:
            data = event["data"]
            when = at_ms if at_ms is not None else event_ms(event)
            key = alert_key(data, detection=True)
            policy = self.policy_of(data["kind"])
            ep = self.episodes.setdefault(key, Episode(key))
            if ep.status == "firing":
                ep.expires = max(ep.expires or 0, when + policy.hold_ms)
                ep.windows += 1
                self._count("deduplicated")
                out += self._continue(ep, event, when)
                continue
            if when < ep.quiet_until:
                self._count("cooldown")
                continue
            ep.expires = when + policy.hold_ms
            ep.windows = 1
            out += self._fire(ep, event, when, None, policy)
        return out

    def passthrough(self, events: Iterable[Event]) -> list[Event]:
        """Alerts with a lifecycle of their own (silence, freshness, retrain): routed, and
        held back while silenced (their resolution too, when their firing was)."""
        out = []
        for event in events:
            data = event["data"]
            if data.get("status") == "resolved":
                if data["alert_id"] in self.silenced_ids:
                    self.silenced_ids.remove(data["alert_id"])
                    continue
            elif silence_of(data, event_ms(event), self.silences) is not None:
                self.silenced_ids = [*self.silenced_ids, data["alert_id"]][-MAX_SILENCED_IDS:]
                self._count("silenced")
                continue
            event = copy.deepcopy(event)
            apply_route(event["data"], self.routes)
            out.append(event)
        return out

    def expire(self, at_ms: int) -> list[Event]:
        """Event time moved to ``at_ms``: detections past their hold resolve, silences
        that ended publish what they held back, finished cooldowns are forgotten."""
        out: list[Event] = []
        for ep in list(self.episodes.values()):
            if ep.status == "firing":
                out += self._unsilence(ep, at_ms)
                if ep.expires is not None and at_ms >= ep.expires:
                    kind = ep.event["data"]["kind"] if ep.event else ""
                    out += self._resolve(ep, at_ms, self.policy_of(kind),
                                         "no new detection within the hold time")
            elif ep.bad == 0 and at_ms >= ep.quiet_until:
                del self.episodes[ep.key]
        return out

    # -- transitions -------------------------------------------------------------------
    def _fire(self, ep: Episode, event: Event, at_ms: int, start_ms: int | None,
              policy: EpisodePolicy) -> list[Event]:
        first = ep.streak_start if start_ms is not None else None
        ep.alert_id = event["data"]["alert_id"] if first is None else \
            stable_id(self.model, ep.key, first)
        ep.status, ep.good, ep.bad = "firing", 0, 0
        ep.severity = event["data"].get("severity", "warning")
        ev = copy.deepcopy(event)
        data = ev["data"]
        ev["id"] = data["alert_id"] = ep.alert_id
        data["episode"] = {"bad_windows": ep.windows, "fire_after": policy.fire_after,
                           "resolve_after": policy.resolve_after,
                           "first_window": None if first is None else iso(first)}
        apply_route(data, self.routes)
        ep.event = ev
        ep.published = False
        return self._unsilence(ep, at_ms)

    def _continue(self, ep: Episode, event: Event, at_ms: int) -> list[Event]:
        """A bad window (or detection) of a firing problem: published only when it
        escalates to a higher severity."""
        out = self._unsilence(ep, at_ms)
        severity = event["data"].get("severity", "warning")
        if SEVERITY_RANK.get(severity, 0) <= SEVERITY_RANK.get(ep.severity, 0) or \
                ep.event is None:
            return out
        ep.severity = severity
        ev = copy.deepcopy(event)
        data = ev["data"]
        data["alert_id"] = ep.alert_id
        data["startsAt"] = ep.event["data"].get("startsAt")
        data["episode"] = {**ep.event["data"].get("episode", {}), "bad_windows": ep.windows,
                           "escalated": True}
        ev["id"] = stable_id(ep.alert_id, "escalated", severity)
        apply_route(data, self.routes)
        ep.event = ev
        if ep.published:
            ep.published = False  # published again below, as the escalation
        return out + self._unsilence(ep, at_ms)

    def _unsilence(self, ep: Episode, at_ms: int) -> list[Event]:
        """The held-back firing event of ``ep`` when no silence applies (any more)."""
        if ep.status != "firing" or ep.published or ep.event is None:
            return []
        if silence_of(ep.event["data"], at_ms, self.silences) is not None:
            if not ep.held:
                ep.held = True
                self._count("silenced")
            return []
        ep.held, ep.published = False, True
        return [copy.deepcopy(ep.event)]

    def _resolve(self, ep: Episode, at_ms: int, policy: EpisodePolicy, why: str
                 ) -> list[Event]:
        out = []
        if ep.published and ep.event is not None:
            ev = copy.deepcopy(ep.event)
            data = ev["data"]
            ev["type"] = RESOLVED
            ev["id"] = stable_id(ep.alert_id, "resolved")
            ev["time"] = iso(at_ms)
            data["status"] = "resolved"
            data["endsAt"] = iso(at_ms)
            data["summary"] = f"resolved ({why}): {data.get('summary', '')}"
            data.setdefault("annotations", {})["summary"] = data["summary"]
            data["episode"] = {**data.get("episode", {}), "good_windows": ep.good,
                               "bad_windows": ep.windows}
            out.append(ev)
        ep.status, ep.bad, ep.good, ep.published = "pending", 0, 0, False
        ep.alert_id, ep.event, ep.expires, ep.windows = None, None, None, 0
        ep.quiet_until = at_ms + policy.cooldown_ms
        if policy.cooldown_ms == 0:
            self.episodes.pop(ep.key, None)
        return out

    def _count(self, reason: str) -> None:
        self.suppressed[reason] = self.suppressed.get(reason, 0) + 1

    def drain_suppressed(self) -> dict[str, int]:
        out, self.suppressed = self.suppressed, {}
        return out

    def firing(self) -> list[Event]:
        """The firing events of the problems firing now (published ones)."""
        return [e.event for e in self.episodes.values()
                if e.status == "firing" and e.published and e.event is not None]

    # -- state -------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {"kind": STATE_KIND, "v": STATE_VERSION,
                "episodes": [e.to_dict() for e in self.episodes.values()],
                "silenced_ids": list(self.silenced_ids)}

    def load(self, state: Any) -> None:
        check_state(state, STATE_KIND, frozenset({STATE_VERSION}))
        names = set(Episode.__dataclass_fields__)
        episodes = {}
        try:
            for raw in state["episodes"]:
                if not isinstance(raw, dict) or not set(raw) <= names or "key" not in raw:
                    raise StateError(f"not an alert episode: {str(raw)[:200]}")
                ep = _episode(raw)
                episodes[ep.key] = ep
            silenced = [str(i) for i in state.get("silenced_ids", [])]
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt alert book: {exc!r}") from None
        self.episodes = episodes
        self.silenced_ids = silenced


_EPISODE_TYPES: dict[str, tuple[type, ...]] = {
    "key": (str,), "status": (str,), "bad": (int,), "good": (int,), "windows": (int,),
    "quiet_until": (int,), "streak_start": (int, type(None)), "last_window": (int, type(None)),
    "expires": (int, type(None)), "last_bad": (bool,), "published": (bool,), "held": (bool,),
    "alert_id": (str, type(None)), "severity": (str,), "event": (dict, type(None))}


def _episode(raw: dict[str, Any]) -> Episode:
    """An episode from its saved fields, each of its type (a bool is no count)."""
    for name, value in raw.items():
        types = _EPISODE_TYPES[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise TypeError(f"episode field {name} must be {types}, got {str(value)[:50]!r}")
    ep = Episode(**raw)
    if ep.status not in ("pending", "firing") or (
            ep.event is not None and not is_alert_data(ep.event.get("data"))):
        raise ValueError(f"not an alert episode: {str(raw)[:200]}")
    return ep


def is_alert_data(data: Any) -> bool:
    """An alert's data with the labels the metrics read of it (kind, severity, status):
    what a restored state must hold before anything publishes or counts it."""
    return isinstance(data, dict) and all(
        isinstance(data.get(k), str) for k in ("kind", "severity", "status"))


def _rank(event: Event) -> int:
    return SEVERITY_RANK.get(event["data"].get("severity", ""), 0)

