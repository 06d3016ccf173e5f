"""One event-time tumbling window of one model: counts and per-feature sketches."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.core.signals import signal_rows
from app.errors import StateError
from app.reference import Reference
from app.sketches import BinnedHistogram, CategoryCounts

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
class Window:
    start_ms: int
    end_ms: int
    sketches: dict[str, Sketch]
    n: int = 0
    versions: Counter[str] = field(default_factory=Counter)
    first_event_ms: int | None = None
    last_event_ms: int | None = None

    @classmethod
    def open(cls, start_ms: int, size_ms: int, reference: Reference) -> Window:
        return cls(start_ms, start_ms + size_ms,
                   {name: ref.sketch() for name, ref in reference.features.items()})

    def update(self, events: Sequence[Mapping[str, Any]], versions: Sequence[str],
               times_ms: np.ndarray[Any, Any]) -> None:
        """Add a batch of events (with their versions and event times)."""
        features = signal_rows(events, list(self.sketches))
        self.n += len(features)
        self.versions.update(versions)
        lo, hi = int(times_ms.min()), int(times_ms.max())
        self.first_event_ms = lo if self.first_event_ms is None else min(self.first_event_ms, lo)
        self.last_event_ms = hi if self.last_event_ms is None else max(self.last_event_ms, hi)
        for name, sketch in self.sketches.items():
            if isinstance(sketch, BinnedHistogram):
                sketch.update(numeric_column(features, name))
            else:
                sketch.update([row.get(name) for row in features])

    def dominant_version(self) -> str | None:
        return self.versions.most_common(1)[0][0] if self.versions else None

    def to_state(self) -> dict[str, Any]:
        return {"start": self.start_ms, "end": self.end_ms, "n": self.n,
                "versions": dict(self.versions), "first": self.first_event_ms,
                "last": self.last_event_ms,
                "sketches": {k: s.to_state() for k, s in self.sketches.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Window:
        try:
            sketches: dict[str, Sketch] = {}
            for name, st in state["sketches"].items():
                kind = st.get("kind") if isinstance(st, dict) else None
                if kind == BinnedHistogram.KIND:
                    sketches[name] = BinnedHistogram.from_state(st)
                elif kind == CategoryCounts.KIND:
                    sketches[name] = CategoryCounts.from_state(st)
                else:
                    raise StateError(f"unknown sketch kind {kind!r} for feature {name!r}")
            return cls(int(state["start"]), int(state["end"]), sketches, int(state["n"]),
                       Counter({str(k): int(v) for k, v in state["versions"].items()}),
                       state["first"], state["last"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"corrupt window state: {exc!r}") from None
