"""Event-time windows of one model: per-version slices of per-signal sketches."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.core.partials import Binning, Counted, add_counts, tallies_of
from app.core.serving import ServingStats
from app.core.signals import OTHER_SEGMENT, Columns, segment_label
from app.errors import MALFORMED_STATE, StateError
from app.events.fields import take, version_indices
from app.quality import QualityCounts
from app.reference import NumericReference, Reference
from app.sketches import BinnedHistogram, CategoryCounts, QuantileSketch
from app.sketches._state import integer

Sketch = BinnedHistogram | CategoryCounts

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
    segment: str | None = None  # "region=emea" for a segment's slice
    # the last binning its sketches were found to fit (not state: checked again after)
    _fitted: Binning | None = field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, reference_key: str, reference: Reference,
             segment: str | None = None) -> Slice:
        return cls(reference_key,
                   {name: ref.sketch() for name, ref in reference.features.items()},
                   {name: ref.empty_quantile_sketch()
                    for name, ref in reference.features.items()
                    if isinstance(ref, NumericReference)}, 0, segment)

    def update(self, events: Sequence[Mapping[str, Any]], columns: Columns | None = None,
               counted: Sequence[Counted] | None = None) -> None:
        """Add events; ``columns``: theirs, when already read (shared with the quality
        counts); ``counted``: their numeric signals' counts, made by decode processes
        (:mod:`app.core.partials`), added instead of counting the values when the
        sketches are binned as they were counted, and their categorical signals'
        tallies, added instead of the values when they are of all the events."""
        cols = Columns(events) if columns is None else columns
        numeric = [name for name, sk in self.sketches.items() if isinstance(sk, BinnedHistogram)]
        tallies = tallies_of(counted, [n for n in self.sketches if n not in numeric],
                             len(events))
        cols.read([name for name in self.sketches if name not in numeric
                   and name not in tallies])
        self.n += len(events)
        if numeric and counted and self._fits(numeric, counted, len(events)):
            add_counts([self.sketches[name] for name in numeric],  # type: ignore[misc]
                       [self.quantiles[name] for name in numeric], [c.counts for c in counted],
                       cols.float_rows(numeric))
        elif numeric:  # as one array: the quantile sketches are updated all at once
            x = cols.float_rows(numeric)
            BinnedHistogram.update_rows(
                [self.sketches[name] for name in numeric],  # type: ignore[misc]
                x)
            if all(name in self.quantiles for name in numeric):
                QuantileSketch.update_rows([self.quantiles[name] for name in numeric], x,
                                           cols.bucket_rows(numeric))
            else:
                for name, row in zip(numeric, x, strict=True):
                    quantiles = self.quantiles.get(name)
                    if quantiles is not None:
                        quantiles.update(row)
        for name, sketch in self.sketches.items():
            if isinstance(sketch, BinnedHistogram):
                continue
            tally = tallies.get(name)
            if tally is None:
                sketch.update(cols.signal(name))
            else:  # tallied where the events were decoded
                sketch.add_tally(tally)

    def _fits(self, numeric: list[str], counted: Sequence[Counted], n: int) -> bool:
        """Whether counts of ``n`` events fit this slice's numeric sketches."""
        if sum(c.counts.n for c in counted) != n:
            return False
        for c in counted:
            if c.binning is self._fitted:
                continue
            quantiles = [self.quantiles[name] for name in numeric if name in self.quantiles]
            histograms = [self.sketches[name] for name in numeric]
            if not c.binning.fits(numeric, histograms, quantiles):  # type: ignore[arg-type]
                return False
            self._fitted = c.binning
        return True

    def to_state(self) -> dict[str, Any]:
        return {"reference": self.reference, "n": self.n, "segment": self.segment,
                "sketches": {k: s.to_state() for k, s in self.sketches.items()},
                "quantiles": {k: q.to_state() for k, q in self.quantiles.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Slice:
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
            quantiles = {str(k): QuantileSketch.from_state(q)
                         for k, q in state["quantiles"].items()}
            return cls(str(state["reference"]), sketches, quantiles, int(state["n"]),
                       state["segment"])
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt slice state: {exc!r}") from None


ReferenceLookup = Callable[[str], "tuple[str, Reference] | None"]
SegmentLabels = Callable[[Mapping[str, Any]], list[str]]
SEP = "\x1f"  # slice keys: "<version>" or "<version>\x1f<key>=<value>"


@dataclass
class Window:
    """One event-time window of one model: a slice per model version."""

    start_ms: int
    end_ms: int
    slices: dict[str, Slice] = field(default_factory=dict)  # version -> slice
    n: int = 0
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    quality: dict[str, QualityCounts] = field(default_factory=dict)  # version -> counts
    # Dead-lettered events with NaN / infinite feature values: version -> feature -> count
    non_finite: dict[str, dict[str, int]] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)  # version -> such events
    serving: dict[str, ServingStats] = field(default_factory=dict)  # version -> latency, cost

    @property
    def versions(self) -> dict[str, int]:
        return {v: s.n for v, s in self.slices.items() if s.segment is None}

    def update(self, events: Sequence[Mapping[str, Any]], times_ms: np.ndarray[Any, Any],
               reference_for: ReferenceLookup, segments: SegmentLabels | None = None,
               columns: Columns | None = None,
               counted: Mapping[str, Sequence[Counted]] | None = None) -> int:
        """Add a batch of events; returns how many had a reference to be compared with.
        ``columns``: the events' columns, when already read; ``counted``: per version,
        the numeric counts of all its events here (see :meth:`Slice.update`).

        Each event goes to its version's slice and, per configured segment key it is
        tagged with, to that segment's slice: the reference's part for that value, or its
        ``__other__`` part for values outside the reference's most frequent ones (when
        the reference has neither, the event is in the version's slice only).
        """
        if segments is None:  # per version, without a per-event loop in the usual batch
            return self._add(version_indices(events) if columns is None else columns.versions(),
                             events, times_ms, reference_for, columns, counted)
        groups: dict[str, list[int]] = {}  # keys in order of first appearance
        refs: dict[str, tuple[str, Reference] | None] = {}
        for i, e in enumerate(events):
            version = e["model_version"]
            groups.setdefault(version, []).append(i)
            labels = segments(e)
            if not labels:
                continue
            if version not in refs:
                refs[version] = reference_for(version)
            found = refs[version]
            if found is None:
                continue
            parts = found[1].segments
            for label in labels:
                if label not in parts:  # not among the reference's frequent values
                    label = segment_label(label.partition("=")[0], OTHER_SEGMENT)
                    if label not in parts:
                        continue
                groups.setdefault(version + SEP + label, []).append(i)
        return self._add(groups, events, times_ms, reference_for, columns, counted)

    def _add(self, groups: Mapping[str, Sequence[int]], events: Sequence[Mapping[str, Any]],
             times_ms: np.ndarray[Any, Any], reference_for: ReferenceLookup,
             columns: Columns | None,
             counted: Mapping[str, Sequence[Counted]] | None = None) -> int:
        """Add each group of events (its indices) to its slice."""
        added = 0
        for key, idx in groups.items():
            version, _, label = key.partition(SEP)
            sl = self.slices.get(key)
            if sl is None:
                found = reference_for(version)
                if found is None:
                    continue  # no reference yet (the model's first warm-up): not windowed
                ref_key, ref = found
                if label:
                    segment_ref = ref.segments.get(label)
                    if segment_ref is None:
                        continue  # the reference has too few rows of this segment
                    sl = self.slices[key] = Slice.open(ref_key, segment_ref, label)
                else:
                    sl = self.slices[key] = Slice.open(ref_key, ref)
            mine = None if label or counted is None else counted.get(version)
            if len(idx) < len(events):
                sl.update(take(events, idx), counted=mine)
            else:
                sl.update(events, columns, mine)
            if label:
                continue
            added += len(idx)
            times = times_ms if len(idx) == len(events) else times_ms[idx]
            lo, hi = int(times.min()), int(times.max())
            self.first_event_ms = lo if self.first_event_ms is None else \
                min(self.first_event_ms, lo)
            self.last_event_ms = hi if self.last_event_ms is None else max(self.last_event_ms, hi)
        self.n += added
        return added

    def to_state(self) -> dict[str, Any]:
        return {"start": self.start_ms, "end": self.end_ms, "n": self.n,
                "first": self.first_event_ms, "last": self.last_event_ms,
                "slices": {v: sl.to_state() for v, sl in self.slices.items()},
                "quality": {v: q.to_state() for v, q in self.quality.items()},
                "non_finite": self.non_finite, "rejected": self.rejected,
                "serving": {v: st.to_state() for v, st in self.serving.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Window:
        try:
            slices = {str(v): Slice.from_state(st) for v, st in state["slices"].items()}
            quality = {str(v): QualityCounts.from_state(q)
                       for v, q in state.get("quality", {}).items()}
            return cls(integer(state["start"], "start"), integer(state["end"], "end"), slices,
                       integer(state["n"], "n", minimum=0),
                       integer(state["first"], "first", nullable=True),
                       integer(state["last"], "last", nullable=True), quality,
                       {str(v): {str(f): int(c) for f, c in d.items()}
                        for v, d in state.get("non_finite", {}).items()},
                       {str(v): int(c) for v, c in state.get("rejected", {}).items()},
                       {str(v): ServingStats.from_state(st)
                        for v, st in state.get("serving", {}).items()})
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt window state: {exc!r}") from None
