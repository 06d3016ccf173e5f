"""Labels placed into checkpoint buckets a batch at once equal the rule label by label.

``PerformanceTracker._place`` reads a batch as columns. The oracle here is the rule
written out per label: the window of the prediction's event time, the first checkpoint
whose time the label is within (and was seen within its lateness), the version's slice
of that window, then one metrics, rows and delay-sketch update per bucket, buckets in
the order their first label came. Random streams of labelled predictions (late ones,
several versions and windows, scores missing or out of range, unusable regression
values) go through both; every record and figure must be equal.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from app.performance.join import JoinResult, Labelled, _no_labels
from app.performance.metrics import RegressionMetrics, as_class
from app.performance.tracker import Bucket, PerformanceTracker, PerformanceUpdate, _number
from app.settings import settings_from_mapping

HOUR = 3_600_000
T0 = 1_767_225_600_000


def tracker(task: str) -> PerformanceTracker:
    model: dict[str, Any] = {
        "features": {"x": {"type": "numeric"}}, "reference": {"warmup": 200},
        "prediction_drift": False,
        "performance": {"baseline": 0.8, "max_drop": 0.05, "label_horizon": "6h",
                        "after": ["0s", "1h", "3h"]}}
    if task == "regression":
        model.update(task="regression", performance={**model["performance"], "baseline": 1.0,
                                                     "max_drop": 0.5})
    cfg = settings_from_mapping({
        "defaults": {"window": "1h", "lateness": "5m", "min_samples": 10},
        "models": {"m": model}})
    return PerformanceTracker("m", cfg.models["m"], window_ms=HOUR, lateness_ms=300_000)


class OneByOne(PerformanceTracker):
    """The placing rule label by label (the oracle)."""

    def _place(self, labelled: Any, update: PerformanceUpdate) -> None:
        groups: dict[tuple[int, str, int], list[tuple[Labelled, tuple[float, float]]]] = {}
        for x in labelled:
            start = x.event_ms // self.window_ms * self.window_ms
            w = self.windows.get(start)
            k = None
            if w is not None:
                for kk in range(w.next_k, len(self.delays)):
                    at = w.end_ms + self.delays[kk]
                    if x.label_ms <= at and x.seen_ms < at + self.lateness_ms:
                        k = kk
                        break
            if w is None or k is None or x.version not in w.slices:
                update.late_labels += 1
                continue
            row = self._one_row(x)
            if row is None:
                update.invalid_labels += 1
                continue
            groups.setdefault((start, x.version, k), []).append((x, row))
        for (start, version, k), items in groups.items():
            sl = self.windows[start].slices[version]
            bucket = sl.buckets.get(k)
            if bucket is None:
                bucket = sl.buckets[k] = Bucket(self._metrics())
            if isinstance(bucket.metrics, RegressionMetrics):
                bucket.metrics.update([(float(x.label), float(x.predicted)) for x, _ in items])
            else:
                bucket.metrics.update([(x.label, x.predicted, x.score) for x, _ in items])
            bucket.add_rows([x.event_ms for x, _ in items], [row[0] for _, row in items],
                            [row[1] for _, row in items])
            bucket.delays.update([max(0, x.delay_ms) / 1000 for x, _ in items])
            update.labelled += len(items)
            self.dirty.add(start)

    def _one_row(self, x: Labelled) -> tuple[float, float] | None:
        if self.task == "regression":
            label, predicted = _number(x.label), _number(x.predicted)
            if label is None or predicted is None:
                return None
            return abs(predicted - label), abs(predicted - label)
        cls = as_class(x.label)
        error = 0.0 if cls == as_class(x.predicted) else 1.0
        if x.score is None or not 0.0 <= x.score <= 1.0:
            return error, error
        positive = 1.0 if cls == self.perf.positive_class else 0.0
        return error, (x.score - positive) ** 2


def _of(cls: type[PerformanceTracker], task: str) -> PerformanceTracker:
    t = tracker(task)
    t.__class__ = cls
    return t


values = st.sampled_from([0, 1, True, False, "0", "1", "cat", 2.5, math.inf, None])
scores = st.one_of(st.none(), st.floats(-0.5, 1.5), st.sampled_from([0.0, 1.0, math.nan]))


@st.composite
def labels(draw: Any) -> Labelled:
    event = T0 + draw(st.integers(-HOUR, 4 * HOUR))
    label_ms = event + draw(st.integers(-HOUR, 8 * HOUR))
    seen = draw(st.one_of(st.just(label_ms), st.integers(T0 - HOUR, T0 + 12 * HOUR)))
    return Labelled(f"p{draw(st.integers(0, 10**6))}", event, draw(st.sampled_from(
        ["v1", "v2", "v3"])), draw(values), draw(scores), draw(values), label_ms, seen)


@settings(max_examples=150, deadline=None)
@given(task=st.sampled_from(["binary_classification", "regression"]),
       batches=st.lists(st.lists(labels(), max_size=40), max_size=6),
       windows=st.sets(st.sampled_from([T0 - HOUR, T0, T0 + HOUR, T0 + 3 * HOUR]),
                       max_size=4),
       closed=st.integers(0, 2))
def test_placing_a_batch_at_once_equals_the_rule_label_by_label(task, batches, windows,
                                                                closed):
    trackers = [_of(PerformanceTracker, task), _of(OneByOne, task)]
    updates = []
    for t in trackers:
        for start in sorted(windows):
            for version in ("v1", "v3"):  # "v2" has no slice: its labels are late
                t._slice(start, version).predictions += 5
            t.windows[start].next_k = closed  # checkpoints already evaluated
        update = PerformanceUpdate()
        for batch in batches:  # (the oracle reads rows, the tracker columns)
            t._place(batch if isinstance(t, OneByOne) else JoinResult(
                [list(c) for c in zip(*batch, strict=True)] if batch else _no_labels()
            ).columns, update)
        updates.append(update)
    new, old = trackers
    assert updates[0] == updates[1]
    assert new.dirty == old.dirty
    assert orjson.dumps(new.to_state(), option=orjson.OPT_SERIALIZE_NUMPY) == orjson.dumps(
        old.to_state(), option=orjson.OPT_SERIALIZE_NUMPY)
    for start, w in new.windows.items():
        for version, sl in w.slices.items():
            other = old.windows[start].slices[version]
            assert list(sl.buckets) == list(other.buckets)
            for k, b in sl.buckets.items():
                o = other.buckets[k]
                assert (b.event_ms, b.errors, b.losses) == (o.event_ms, o.errors, o.losses)
                assert list(map(type, b.event_ms + b.errors + b.losses)) == \
                    list(map(type, o.event_ms + o.errors + o.losses))
                assert b.unsaved == other.buckets[k].unsaved
                assert orjson.dumps(b.to_state(), option=orjson.OPT_SERIALIZE_NUMPY) == \
                    orjson.dumps(other.buckets[k].to_state(),
                                 option=orjson.OPT_SERIALIZE_NUMPY)
