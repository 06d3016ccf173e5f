"""Streaming change detection on per-event signals, inside a model's state.

Each configured detector reads one signal — a feature (``feature.<name>``), the
predicted value (``prediction``) or a class score (``scores.<class>``) — from every
event in arrival order (every ``every``-th value, for costly detectors such as KSWIN),
and reports the values at which it detects a change. Detections wait in the state until
their alerts are published, so a worker that dies in between publishes them after its
restart, with the same deterministic ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from app.errors import MALFORMED_STATE, StateError
from app.settings import ChangeDetectorSettings
from app.sketches._state import integer, json_float, read_float

if TYPE_CHECKING:
    from app.detectors.streaming import RiverDetector

# river (with pandas and scipy, ~140 MB resident) is imported only by models that
# configure change detectors.

RECENT_ALPHA = 0.05  # weight of the newest value in the "recent" mean shown as evidence


@dataclass(frozen=True)
class Detection:
    detector: str  # registry name, e.g. "adwin"
    signal: str  # as configured: feature.x, prediction, scores.churn
    index: int  # the detector's value count at the detection (deterministic)
    event_ms: int
    model_version: str
    before_mean: float | None  # mean of the signal since the previous detection
    recent_mean: float | None  # exponentially weighted recent mean (evidence)
    severity: str
    config: str = ""  # the detector's identity (signal, params, every): part of alert ids

    def to_dict(self) -> dict[str, Any]:
        return {"detector": self.detector, "signal": self.signal, "index": self.index,
                "event_ms": self.event_ms, "model_version": self.model_version,
                "before_mean": self.before_mean, "recent_mean": self.recent_mean,
                "severity": self.severity, "config": self.config}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Detection:
        try:
            return cls(str(d["detector"]), str(d["signal"]),
                       integer(d["index"], "index", minimum=0),
                       integer(d["event_ms"], "event_ms"), str(d["model_version"]),
                       _mean(d["before_mean"]), _mean(d["recent_mean"]), str(d["severity"]),
                       str(d["config"]))
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt change detection: {exc!r}") from None


def _mean(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"a mean must be a number or null, got {str(value)[:50]!r}")
    return float(value)


def detector_identity(cfg: ChangeDetectorSettings) -> str:
    """What makes a configured detector the same one across restarts."""
    return orjson.dumps({"detector": cfg.detector, "signal": cfg.signal, "every": cfg.every,
                         "params": cfg.params}, option=orjson.OPT_SORT_KEYS).decode()


def signal_value(event: Mapping[str, Any], signal: str) -> float | None:
    """The numeric value of ``signal`` in a prediction event, or None when absent."""
    if signal.startswith("feature."):
        v = event["features"].get(signal[8:])
    elif signal == "prediction":
        v = event.get("prediction")
    else:  # scores.<class>
        v = (event.get("scores") or {}).get(signal[7:])
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, int | float):
        try:
            f = float(v)
        except OverflowError:
            return None
        return f if f == f and abs(f) != float("inf") else None
    return None


class DetectorRun:
    """A detector over one value stream with the evidence kept around it: the mean since
    the previous detection and an exponentially weighted recent mean."""

    def __init__(self, detector: RiverDetector) -> None:
        self.detector = detector
        self.since_sum = 0.0
        self.since_n = 0
        self.recent: float | None = None

    def step(self, x: float) -> tuple[float | None, float | None] | None:
        """Feed one value; on a detection, ``(mean before, recent mean)``, else None."""
        self.recent = x if self.recent is None else \
            self.recent + RECENT_ALPHA * (x - self.recent)
        found = None
        if self.detector.update(x):
            found = (self.since_sum / self.since_n if self.since_n else None, self.recent)
            self.since_sum, self.since_n = 0.0, 0
        self.since_sum += x
        self.since_n += 1
        return found

    def step_many(self, values: Sequence[float]
                  ) -> list[tuple[int, float | None, float | None]]:
        """Feed values in order (the detector takes them as one batch); per detection,
        ``(offset, mean before, recent mean)``: the same as :meth:`step` value by value.

        >>> from app.detectors.streaming import make_detector
        >>> a, b = DetectorRun(make_detector("hddm_a")), DetectorRun(make_detector("hddm_a"))
        >>> xs = [0.0] * 300 + [1.0] * 60
        >>> hits = a.step_many(xs)
        >>> hits == [(i, *h) for i, x in enumerate(xs) if (h := b.step(x)) is not None]
        True
        >>> [h[0] for h in hits], a.to_state() == b.to_state()
        ([303], True)
        """
        hits = self.detector.update_many(values)
        out: list[tuple[int, float | None, float | None]] = []
        recent, total, n = self.recent, self.since_sum, self.since_n
        start = 0
        for stop in [*hits, len(values)]:
            for x in values[start:stop]:  # (the same sums, in the same order, as ``step``)
                recent = x if recent is None else recent + RECENT_ALPHA * (x - recent)
                total += x
            n += stop - start
            if stop == len(values):
                break
            x = values[stop]
            recent = x if recent is None else recent + RECENT_ALPHA * (x - recent)
            out.append((stop, total / n if n else None, recent))
            total, n = 0.0 + x, 1  # (as ``step``: -0.0 becomes 0.0)
            start = stop + 1
        self.recent, self.since_sum, self.since_n = recent, total, n
        return out

    def to_state(self) -> dict[str, Any]:
        # values near the float max make the sums infinite: written as "inf", not null
        return {"detector": self.detector.to_state(), "since_sum": json_float(self.since_sum),
                "since_n": self.since_n,
                "recent": None if self.recent is None else json_float(self.recent)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> DetectorRun:
        from app.detectors.streaming import detector_from_state

        try:
            run = cls(detector_from_state(state["detector"]))
            run.since_sum = read_float(state["since_sum"])
            run.since_n = integer(state["since_n"], "since_n", minimum=0)
            recent = state["recent"]
            run.recent = None if recent is None else read_float(recent)
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt change-detector state: {exc!r}") from None
        return run


class ChangeTracker:
    """One configured detector with its sampling counter and evidence means."""

    def __init__(self, cfg: ChangeDetectorSettings) -> None:
        from app.detectors.streaming import make_detector

        self.cfg = cfg
        self.identity = detector_identity(cfg)
        self.run = DetectorRun(make_detector(cfg.detector, **cfg.params))
        self.seen = 0  # values of the signal seen (the sampling counter)

    @property
    def detector(self) -> RiverDetector:
        return self.run.detector

    def feed(self, events: Sequence[Mapping[str, Any]], times_ms: Sequence[int]
             ) -> list[Detection]:
        found = []
        every = self.cfg.every
        for event, t in zip(events, times_ms, strict=True):
            x = signal_value(event, self.cfg.signal)
            if x is None:
                continue
            self.seen += 1
            if self.seen % every:
                continue
            hit = self.run.step(x)
            if hit is not None:
                found.append(Detection(self.cfg.detector, self.cfg.signal, self.detector.n,
                                       int(t), str(event["model_version"]), hit[0], hit[1],
                                       self.cfg.severity, self.identity))
        return found

    def to_state(self) -> dict[str, Any]:
        return {"identity": self.identity, "seen": self.seen, **self.run.to_state()}

    def load(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, dict):
            raise StateError(f"not a change-detector state: {str(state)[:200]}")
        if state.get("identity") != self.identity:
            return  # another detector's state: this one starts afresh
        self.run = DetectorRun.from_state(state)
        try:
            self.seen = int(state["seen"])
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt change-detector state: {exc!r}") from None
