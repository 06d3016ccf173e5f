"""Event-time windows of one model: per-version slices of per-signal sketches."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.core.signals import signal_rows
from app.errors import StateError
from app.reference import NumericReference, Reference
from app.sketches import BinnedHistogram, CategoryCounts, QuantileSketch

Sketch = BinnedHistogram | CategoryCounts

_NUMERIC_TYPES = (int, float, bool)

def numeric_column(rows: Sequence[Mapping[str, Any]], name: str) -> np.ndarray[Any, Any]:
    """A float column; missing, null and non-numeric values become NaN."""
    out = np.empty(len(rows), dtype=np.float64)
    for i, row in enumerate(rows):
        v: Any = row.get(name)
        if type(v) in _NUMERIC_TYPES:
            try:
                out[i] = v
            except OverflowError:  # an integer beyond the float range
                out[i] = np.inf if v > 0 else -np.inf
        else:
            out[i] = np.nan
    return out


@dataclass
class Slice:
    """The sketches of one model version's events in a window.

    ``reference`` names the reference whose bins the sketches use (the version's own, or
    the one it fell back to when the slice opened); it stays fixed for the slice's life,
    so the window is always compared with the reference it was binned for.
    """

    reference: str
    sketches: dict[str, Sketch]
    quantiles: dict[str, QuantileSketch] = field(default_factory=dict)  # numeric signals
    n: int = 0

    @classmethod
    def open(cls, reference_key: str, reference: Reference) -> Slice:
        return cls(reference_key,
                   {name: ref.sketch() for name, ref in reference.features.items()},
                   {name: ref.empty_quantile_sketch()
                    for name, ref in reference.features.items()
                    if isinstance(ref, NumericReference)})

    def update(self, events: Sequence[Mapping[str, Any]]) -> None:
        rows = signal_rows(events, list(self.sketches))
        self.n += len(rows)
        for name, sketch in self.sketches.items():
            if isinstance(sketch, BinnedHistogram):
                column = numeric_column(rows, name)
                sketch.update(column)
                quantiles = self.quantiles.get(name)
                if quantiles is not None:
                    quantiles.update(column)
            else:
                sketch.update([row.get(name) for row in rows])

    def to_state(self) -> dict[str, Any]:
        return {"reference": self.reference, "n": self.n,
                "sketches": {k: s.to_state() for k, s in self.sketches.items()},
                "quantiles": {k: q.to_state() for k, q in self.quantiles.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Slice:
        sketches: dict[str, Sketch] = {}
        for name, st in state["sketches"].items():
            kind = st.get("kind") if isinstance(st, dict) else None
            if kind == BinnedHistogram.KIND:
                sketches[name] = BinnedHistogram.from_state(st)
            elif kind == CategoryCounts.KIND:
                sketches[name] = CategoryCounts.from_state(st)
            else:
                raise StateError(f"unknown sketch kind {kind!r} for feature {name!r}")
        quantiles = {str(k): QuantileSketch.from_state(q) for k, q in state["quantiles"].items()}
        return cls(str(state["reference"]), sketches, quantiles, int(state["n"]))


ReferenceLookup = Callable[[str], "tuple[str, Reference] | None"]


@dataclass
class Window:
    """One event-time window of one model: a slice per model version."""

    start_ms: int
    end_ms: int
    slices: dict[str, Slice] = field(default_factory=dict)  # version -> slice
    n: int = 0
    first_event_ms: int | None = None
    last_event_ms: int | None = None

    @property
    def versions(self) -> dict[str, int]:
        return {v: s.n for v, s in self.slices.items()}

    def update(self, events: Sequence[Mapping[str, Any]], times_ms: np.ndarray[Any, Any],
               reference_for: ReferenceLookup) -> int:
        """Add a batch of events; returns how many had a reference to be compared with."""
        by_version: dict[str, list[int]] = {}
        for i, e in enumerate(events):
            by_version.setdefault(e["model_version"], []).append(i)
        added = 0
        for version, idx in by_version.items():
            sl = self.slices.get(version)
            if sl is None:
                found = reference_for(version)
                if found is None:
                    continue  # no reference yet (the model's first warm-up): not windowed
                sl = self.slices[version] = Slice.open(*found)
            sl.update([events[i] for i in idx] if len(idx) < len(events) else events)
            added += len(idx)
            lo, hi = int(times_ms[idx].min()), int(times_ms[idx].max())
            self.first_event_ms = lo if self.first_event_ms is None else \
                min(self.first_event_ms, lo)
            self.last_event_ms = hi if self.last_event_ms is None else max(self.last_event_ms, hi)
        self.n += added
        return added

    def to_state(self) -> dict[str, Any]:
        return {"start": self.start_ms, "end": self.end_ms, "n": self.n,
                "first": self.first_event_ms, "last": self.last_event_ms,
                "slices": {v: sl.to_state() for v, sl in self.slices.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Window:
        try:
            slices = {str(v): Slice.from_state(st) for v, st in state["slices"].items()}
            return cls(int(state["start"]), int(state["end"]), slices, int(state["n"]),
                       state["first"], state["last"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"corrupt window state: {exc!r}") from None
