"""When alerts call for a retrain: the per-model retrain policy (pure).

A firing alert whose kind is in ``retrain.on`` asks for a retrain. A trigger is issued
unless the model is in its ``cooldown`` (since the last trigger), or the UTC day (of the
alert's event time) already had ``max_per_day`` triggers, or — when performance is the
reason (``performance_drop``, ``concept_drift``, ``label_coverage``) — fewer than
``min_label_coverage`` of the window's predictions were labelled. Alerts that arrive
together make one trigger. The trigger id hashes the model, the time and the alert ids:
a window re-closed after a restart issues the same trigger.

>>> from app.settings import RetrainSettings
>>> p = RetrainPolicy(RetrainSettings(on=("feature_drift",), cooldown="1d"))
>>> a = {"alert_id": "a1", "kind": "feature_drift", "status": "firing", "summary": "s"}
>>> p.consider([a], 0) is not None, p.consider([{**a, "alert_id": "a2"}], 3_600_000)
(True, None)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import MALFORMED_STATE, StateError
from app.outputs.cloudevents import stable_id
from app.settings import RetrainSettings
from app.sketches._state import check_state

DAY_MS = 86_400_000
PERFORMANCE_KINDS = frozenset({"performance_drop", "concept_drift", "label_coverage"})


@dataclass(frozen=True)
class TriggerDecision:
    trigger_id: str
    at_ms: int
    reasons: list[Mapping[str, Any]]  # the alerts' data
    cooldown_until_ms: int | None


class RetrainPolicy:
    def __init__(self, settings: RetrainSettings) -> None:
        self.settings = settings
        self.last_trigger_ms: int | None = None
        self.per_day: dict[int, int] = {}  # UTC day number -> triggers
        self.suppressed = 0

    def _eligible(self, alert: Mapping[str, Any]) -> bool:
        if alert.get("status") != "firing" or alert.get("kind") not in self.settings.on:
            return False
        floor = self.settings.min_label_coverage
        if floor is not None and alert.get("kind") in PERFORMANCE_KINDS:
            coverage = (alert.get("evidence") or {}).get("label_coverage")
            return coverage is not None and coverage >= floor
        return True

    def consider(self, alerts: Sequence[Mapping[str, Any]], at_ms: int
                 ) -> TriggerDecision | None:
        """A trigger for these alerts (``data`` of alert CloudEvents), or None."""
        reasons = [a for a in alerts if self._eligible(a)]
        if not reasons:
            return None
        cooldown = self.settings.cooldown
        if cooldown is not None and self.last_trigger_ms is not None and \
                at_ms < self.last_trigger_ms + cooldown * 1000:
            self.suppressed += 1
            return None
        day = at_ms // DAY_MS
        cap = self.settings.max_per_day
        if cap is not None and self.per_day.get(day, 0) >= cap:
            self.suppressed += 1
            return None
        self.last_trigger_ms = at_ms
        self.per_day = {d: n for d, n in self.per_day.items() if d >= day - 1}
        self.per_day[day] = self.per_day.get(day, 0) + 1
        ids = sorted(str(a["alert_id"]) for a in reasons)
        until = None if cooldown is None else at_ms + round(cooldown * 1000)
        return TriggerDecision(stable_id("retrain", at_ms, *ids), at_ms, reasons, until)

    def to_state(self) -> dict[str, Any]:
        return {"kind": "retrain-policy", "v": 1, "last": self.last_trigger_ms,
                "per_day": {str(d): n for d, n in self.per_day.items()},
                "suppressed": self.suppressed}

    def load(self, state: Any) -> None:
        check_state(state, "retrain-policy", frozenset({1}))
        try:
            self.last_trigger_ms = state["last"]
            self.per_day = {int(d): int(n) for d, n in state["per_day"].items()}
            self.suppressed = int(state["suppressed"])
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt retrain-policy state: {exc!r}") from None
