"""Joining outcomes (ground-truth labels) to earlier predictions, in either order.

The join is local to a model's state (predictions and outcomes are co-partitioned by
model). Memory is bounded: a pending prediction keeps only what the metrics need (event
time, version, predicted value, the positive-class score), and leaves when it is
labelled or when the event-time watermark passes it by more than the label horizon
(counted as unlabelled). An outcome that arrives first waits, for at most the orphan
horizon and at most ``max_orphans`` of them, then is counted as an orphan. A second
outcome for the same prediction is counted as a duplicate and ignored.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.errors import StateError
from app.sketches._state import check_state

STATE_KIND = "label-join"
STATE_VERSION = 1


@dataclass(frozen=True)
class Labelled:
    """A prediction joined to its label: what the metrics of its window need."""

    prediction_id: str
    event_ms: int  # the prediction's event time: its window
    version: str
    predicted: Any
    score: float | None
    label: Any
    label_ms: int  # when the label came (its event time)

    @property
    def delay_ms(self) -> int:
        return self.label_ms - self.event_ms


@dataclass
class JoinResult:
    labelled: list[Labelled] = field(default_factory=list)
    expired: int = 0  # predictions past the horizon without a label
    orphans: int = 0  # outcomes whose prediction never came
    duplicates: int = 0  # second outcomes for the same prediction


class LabelJoin:
    """Pending predictions and early outcomes of one model.

    >>> j = LabelJoin(horizon_ms=1000, orphan_horizon_ms=1000, max_pending=10, max_orphans=10)
    >>> _ = j.add_outcome("p1", 1, label_ms=50)          # the label comes first
    >>> [x.label for x in j.add_prediction("p1", 10, "v1", 1, 0.9).labelled]
    [1]
    """

    def __init__(self, *, horizon_ms: int, orphan_horizon_ms: int, max_pending: int,
                 max_orphans: int) -> None:
        for name, v in (("horizon_ms", horizon_ms), ("orphan_horizon_ms", orphan_horizon_ms),
                        ("max_pending", max_pending), ("max_orphans", max_orphans)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.horizon_ms = horizon_ms
        self.orphan_horizon_ms = orphan_horizon_ms
        self.max_pending = max_pending
        self.max_orphans = max_orphans
        # prediction_id -> (event_ms, version, predicted, score); insertion (arrival) order
        self.pending: OrderedDict[str, tuple[int, str, Any, float | None]] = OrderedDict()
        # prediction_id -> (label, label_ms)
        self.orphans: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        # recently joined ids, to recognise duplicate outcomes (bounded like pending)
        self.joined: OrderedDict[str, int] = OrderedDict()

    def add_prediction(self, prediction_id: str, event_ms: int, version: str, predicted: Any,
                       score: float | None) -> JoinResult:
        out = JoinResult()
        early = self.orphans.pop(prediction_id, None)
        if early is not None:
            out.labelled.append(Labelled(prediction_id, event_ms, version, predicted, score,
                                         early[0], early[1]))
            self._remember(prediction_id, event_ms)
            return out
        if prediction_id in self.pending or prediction_id in self.joined:
            return out  # a redelivered prediction
        self.pending[prediction_id] = (event_ms, version, predicted, score)
        while len(self.pending) > self.max_pending:  # over budget: the oldest go unlabelled
            self.pending.popitem(last=False)
            out.expired += 1
        return out

    def add_outcome(self, prediction_id: str, label: Any, *, label_ms: int) -> JoinResult:
        out = JoinResult()
        hit = self.pending.pop(prediction_id, None)
        if hit is not None:
            event_ms, version, predicted, score = hit
            out.labelled.append(Labelled(prediction_id, event_ms, version, predicted, score,
                                         label, label_ms))
            self._remember(prediction_id, event_ms)
        elif prediction_id in self.joined or prediction_id in self.orphans:
            out.duplicates += 1
        else:
            self.orphans[prediction_id] = (label, label_ms)
            while len(self.orphans) > self.max_orphans:
                self.orphans.popitem(last=False)
                out.orphans += 1
        return out

    def expire(self, watermark_ms: int) -> JoinResult:
        """Drop predictions older than the horizon and outcomes older than theirs."""
        out = JoinResult()
        for pid in [p for p, v in self.pending.items() if v[0] + self.horizon_ms < watermark_ms]:
            del self.pending[pid]
            out.expired += 1
        for pid in [p for p, v in self.orphans.items()
                    if v[1] + self.orphan_horizon_ms < watermark_ms]:
            del self.orphans[pid]
            out.orphans += 1
        for pid in [p for p, t in self.joined.items() if t + self.horizon_ms < watermark_ms]:
            del self.joined[pid]
        return out

    def _remember(self, prediction_id: str, event_ms: int) -> None:
        self.joined[prediction_id] = event_ms
        while len(self.joined) > self.max_pending:
            self.joined.popitem(last=False)

    def to_state(self) -> dict[str, Any]:
        return {"kind": STATE_KIND, "v": STATE_VERSION,
                "pending": [[k, *v] for k, v in self.pending.items()],
                "orphans": [[k, *v] for k, v in self.orphans.items()],
                "joined": [[k, v] for k, v in self.joined.items()]}

    def load(self, state: Mapping[str, Any]) -> None:
        check_state(state, STATE_KIND, frozenset({STATE_VERSION}))
        try:
            self.pending = OrderedDict((str(k), (int(t), str(v), p, s))
                                       for k, t, v, p, s in state["pending"])
            self.orphans = OrderedDict((str(k), (lab, int(t))) for k, lab, t in state["orphans"])
            self.joined = OrderedDict((str(k), int(t)) for k, t in state["joined"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"corrupt label-join state: {exc!r}") from None
