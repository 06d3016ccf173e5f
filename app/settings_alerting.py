"""The ``alerting`` part of the monitor file: episodes, routes and silences.

Top level (defaults for every model)::

    alerting:
      fire_after: 2          # consecutive bad windows before a problem fires
      resolve_after: 2       # consecutive good windows before it resolves
      cooldown: 1h           # after resolving, the same problem does not fire again sooner
      hold: 2h               # detections (concept drift, change detectors, rollback advice)
                             # resolve this long after the last one (default: resolve_after
                             # windows)
      kinds:                 # per alert kind, the same keys
        performance_drop: {fire_after: 1}
      routes:                # first match wins; names the owner role that receives it
        - {match: {kind: [data_quality, schema_change, source_stale]}, owner: data}
        - {match: {severity: [critical]}, owner: on_call, receiver: pager}
      silences:              # maintenance windows: matching alerts are not published
        - {match: {model: [churn]}, starts: 2026-12-24T00:00:00Z,
           ends: 2026-12-27T00:00:00Z, reason: holiday traffic}
        - {match: {kind: [source_volume]}, weekly: {days: [sun], start: "02:00",
           end: "04:00"}, reason: weekly backfill}

A model's ``alerting`` overrides ``fire_after``, ``resolve_after``, ``cooldown``, ``hold``,
``kinds`` and puts its own ``routes`` before the top-level ones.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from app.durations import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]

AlertKind = Literal["feature_drift", "prediction_drift", "performance_drop", "concept_drift",
                    "label_coverage", "data_quality", "schema_change", "source_stale",
                    "source_volume", "model_silent", "retrain_overdue", "retrain_stuck",
                    "retrain_failed",
                    "latency_slo", "cost_budget", "rollback_recommended"]
OwnerRole = Literal["monitoring", "on_call", "data"]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AlertPolicy(_Frozen):
    """Episode settings; any left out come from the next level up."""

    fire_after: int | None = Field(None, ge=1, le=1000)
    resolve_after: int | None = Field(None, ge=1, le=1000)
    cooldown: Duration | None = None
    hold: Duration | None = None


class Matcher(_Frozen):
    """Which alerts a route or silence applies to: every listed field must match (an
    empty list matches anything)."""

    model: tuple[str, ...] = ()
    kind: tuple[AlertKind, ...] = ()
    severity: tuple[Literal["warning", "critical"], ...] = ()
    feature: tuple[str, ...] = ()
    source: tuple[str, ...] = ()

    def matches(self, data: dict[str, Any]) -> bool:
        """True when the alert ``data`` matches.

        >>> Matcher(kind=("feature_drift",)).matches({"kind": "feature_drift"})
        True
        >>> Matcher(model=("churn",)).matches({"model": None, "affected_models": ["churn"]})
        True
        """
        models = [data.get("model")] if data.get("model") else \
            list(data.get("affected_models") or [])
        return ((not self.model or any(m in self.model for m in models))
                and (not self.kind or data.get("kind") in self.kind)
                and (not self.severity or data.get("severity") in self.severity)
                and (not self.feature or data.get("feature") in self.feature)
                and (not self.source or data.get("source") in self.source))


class RouteSettings(_Frozen):
    match: Matcher = Matcher()
    owner: OwnerRole  # the owner role (of the model, or the source) that receives it
    receiver: str | None = None  # an Alertmanager receiver name, as the ``receiver`` label


class WeeklyWindow(_Frozen):
    """A recurring window in UTC: ``start``..``end`` (HH:MM) on each of ``days``; an
    ``end`` before ``start`` runs past midnight."""

    days: tuple[Day, ...] = DAYS
    start: str
    end: str

    @model_validator(mode="after")
    def _times(self) -> WeeklyWindow:
        for name in ("start", "end"):
            if not _HHMM.match(getattr(self, name)):
                raise ValueError(f"{name} must be HH:MM (UTC), got {getattr(self, name)!r}")
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self


class SilenceSettings(_Frozen):
    match: Matcher = Matcher()
    starts: datetime | None = None
    ends: datetime | None = None
    weekly: WeeklyWindow | None = None
    reason: str = Field(min_length=1)

    @model_validator(mode="after")
    def _when(self) -> SilenceSettings:
        absolute = self.starts is not None or self.ends is not None
        if absolute == (self.weekly is not None):
            raise ValueError("give either starts and ends, or weekly")
        if absolute:
            if self.starts is None or self.ends is None:
                raise ValueError("a silence needs both starts and ends")
            if self.starts.tzinfo is None or self.ends.tzinfo is None:
                raise ValueError("starts and ends need a time zone (e.g. ...Z)")
            if self.ends <= self.starts:
                raise ValueError("ends must be after starts")
        return self


class ModelAlerting(AlertPolicy):
    kinds: dict[AlertKind, AlertPolicy] = {}
    routes: tuple[RouteSettings, ...] = ()


class AlertingSettings(ModelAlerting):
    silences: tuple[SilenceSettings, ...] = ()
