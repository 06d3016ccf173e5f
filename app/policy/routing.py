"""Who hears about an alert, when it is silenced, and the episode settings of its kind
(pure: settings and alert ``data`` in, decisions out).

>>> from app.settings_alerting import AlertingSettings
>>> s = AlertingSettings.model_validate({"routes": [
...     {"match": {"kind": ["data_quality"]}, "owner": "data", "receiver": "data-slack"}]})
>>> alert = {"kind": "data_quality", "owners": {"on_call": "oncall", "data": "data-eng"},
...          "labels": {}}
>>> route(alert, s.routes)
{'owner': 'data', 'to': 'data-eng', 'receiver': 'data-slack'}
>>> route({**alert, "kind": "feature_drift"}, s.routes)["to"]
'oncall'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.events.checks import utc_datetime
from app.settings_alerting import (
    DAYS,
    AlertingSettings,
    AlertPolicy,
    ModelAlerting,
    RouteSettings,
    SilenceSettings,
)

FALLBACK_ROLES = ("on_call", "monitoring", "data")


@dataclass(frozen=True)
class EpisodePolicy:
    """Effective episode settings of one (model, kind)."""

    fire_after: int = 1
    resolve_after: int = 2
    cooldown_ms: int = 0
    hold_ms: int = 0  # detections: how long one keeps its alert firing


def episode_policy(top: AlertingSettings, model: ModelAlerting | None, kind: str,
                   window_ms: int) -> EpisodePolicy:
    """Model kind > model > top-level kind > top level > defaults (1, 2, 0, resolve_after
    windows).

    >>> top = AlertingSettings.model_validate({"resolve_after": 3,
    ...                                        "kinds": {"feature_drift": {"fire_after": 2}}})
    >>> episode_policy(top, None, "feature_drift", 60_000)
    EpisodePolicy(fire_after=2, resolve_after=3, cooldown_ms=0, hold_ms=180000)
    """
    model_kinds: dict[str, AlertPolicy] = {str(k): v for k, v in model.kinds.items()} \
        if model else {}
    top_kinds: dict[str, AlertPolicy] = {str(k): v for k, v in top.kinds.items()}
    levels = [lv for lv in (model_kinds.get(kind), model, top_kinds.get(kind), top)
              if lv is not None]

    def pick(name: str) -> Any:
        return next((getattr(lv, name) for lv in levels if getattr(lv, name) is not None), None)

    fire, resolve = pick("fire_after") or 1, pick("resolve_after") or 2
    cooldown, hold = pick("cooldown"), pick("hold")
    return EpisodePolicy(fire, resolve, round((cooldown or 0) * 1000),
                         round(hold * 1000) if hold is not None else resolve * window_ms)


def route(data: dict[str, Any], routes: Iterable[RouteSettings]) -> dict[str, Any] | None:
    """The route of an alert: the first matching route whose owner role the alert has,
    else its on-call, monitoring or data owner; None when it has no owner at all."""
    owners = data.get("owners") or {}
    for r in routes:
        if r.match.matches(data) and owners.get(r.owner):
            return {"owner": r.owner, "to": owners[r.owner], "receiver": r.receiver}
    for role in FALLBACK_ROLES:
        if owners.get(role):
            return {"owner": role, "to": owners[role], "receiver": None}
    return None


def apply_route(data: dict[str, Any], routes: Iterable[RouteSettings]) -> None:
    """Set ``data.route`` and the ``team`` (and ``receiver``) labels Alertmanager routes on."""
    found = route(data, routes)
    data["route"] = found
    labels = data.setdefault("labels", {})
    labels.pop("team", None)
    labels.pop("receiver", None)
    if found is not None:
        labels["team"] = found["to"]
        if found["receiver"]:
            labels["receiver"] = found["receiver"]


def _in_weekly(s: SilenceSettings, at: datetime) -> bool:
    assert s.weekly is not None
    w = s.weekly
    minute = at.hour * 60 + at.minute
    start = int(w.start[:2]) * 60 + int(w.start[3:])
    end = int(w.end[:2]) * 60 + int(w.end[3:])
    today = DAYS[at.weekday()]
    yesterday = DAYS[(at.weekday() - 1) % 7]
    if start < end:
        return today in w.days and start <= minute < end
    return (today in w.days and minute >= start) or (yesterday in w.days and minute < end)


def silence_of(data: dict[str, Any], at_ms: int, silences: Sequence[SilenceSettings]
               ) -> SilenceSettings | None:
    """The silence in force for this alert at ``at_ms`` (event time), if any.

    >>> s = AlertingSettings.model_validate({"silences": [{"match": {"model": ["churn"]},
    ...     "weekly": {"days": ["sat"], "start": "23:00", "end": "01:00"}, "reason": "r"}]})
    >>> sat_2330 = 1_733_527_800_000  # 2024-12-06 23:30 UTC is a Friday
    >>> silence_of({"model": "churn"}, sat_2330, s.silences) is None
    True
    >>> silence_of({"model": "churn"}, sat_2330 + 86_400_000, s.silences).reason
    'r'
    >>> silence_of({"model": "churn"}, sat_2330 + 2 * 86_400_000 - 3_600_000 * 23,
    ...            s.silences).reason  # Sunday 00:30, the window past midnight
    'r'
    """
    if not silences:
        return None
    at = utc_datetime(at_ms)
    for s in silences:
        if not s.match.matches(data):
            continue
        if s.weekly is not None:
            if _in_weekly(s, at):
                return s
        elif s.starts is not None and s.ends is not None and s.starts <= at < s.ends:
            return s
    return None
