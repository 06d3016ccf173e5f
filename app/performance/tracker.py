"""A model's performance from delayed ground truth: join, labelled windows, checkpoints.

Predictions and their labels meet in the :class:`~app.performance.join.LabelJoin`. A
labelled prediction counts in the window of the *prediction's* event time (tumbling
windows of the model's window length, the same ids as the drift windows), for its
version. Labels come late, so a window is evaluated more than once: at **checkpoints**
``end + d`` for each delay ``d`` of the model's ``after`` list (default ``0``, the
window length doubling up to the label horizon, and the horizon itself). A checkpoint
is due when the performance watermark passes ``end + d + lateness`` and every
prediction of the window is in (the prediction watermark passed ``end + lateness``).

Which labels a checkpoint includes depends only on the outcome stream, never on how the
two streams happened to interleave: a label belongs to the first checkpoint ``k`` not
yet evaluated with ``label time <= end + d_k`` that it arrived in time for (the
performance watermark when it arrived was below ``end + d_k + lateness``). So a worker
and ``driftwarden replay`` evaluate the same labels at the same checkpoints.

The **performance watermark** is the outcome stream's event time, or the prediction
watermark minus ``max_label_lag`` when the labels lag further behind than that (labels
that stopped coming must not stop coverage from being judged). Workers also advance it
by wall-clock idle time, like the drift windows.

Each evaluation merges the checkpoint's labels into the window's figures, feeds its
per-prediction errors to the version's concept-drift detectors in prediction event-time
order, and judges ``performance_drop`` (at most once per window and version) and, at the
``coverage_after`` checkpoint, ``label_coverage``. The window is dropped after its last
checkpoint; the version's learned baseline takes its figures if still learning.

State: a small main part (:meth:`PerformanceTracker.to_state`) and **records** (one per
open window, plus the join's segments), written only when they change
(:meth:`PerformanceTracker.drain_records`), so a batch never rewrites the whole join.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.core.changes import DetectorRun
from app.errors import MALFORMED_STATE, StateError
from app.events.fields import field_values, score_values, share_strings
from app.performance.join import JoinResult, LabelJoin
from app.performance.metrics import ClassificationMetrics, RegressionMetrics, as_classes
from app.performance.segments import picker
from app.policy.performance import (
    PerformanceDecision,
    decide_coverage,
    decide_performance,
    decide_rollback,
)
from app.settings import ConceptDetectorSettings, ModelSettings, PerformanceSettings
from app.sketches._state import check_state
from app.sketches.quantile import QuantileSketch

STATE_KIND = "performance"
STATE_VERSION = 1
WINDOW_KIND = "performance-window"
RECORD_PREFIX = "w/"  # a window's figures
CHUNK_PREFIX = "c/"  # labelled rows waiting for the concept-drift detectors
JOIN_PREFIX = "j/"  # the label join's segments
MAX_VERSIONS = 16  # versions whose detectors, learned baselines and model-event metrics are kept

Metrics = ClassificationMetrics | RegressionMetrics


def checkpoint_delays(perf: PerformanceSettings, window_ms: int) -> list[int]:
    """Delays (ms after a window's end) at which its performance is evaluated.

    >>> from app.settings import PerformanceSettings
    >>> checkpoint_delays(PerformanceSettings(label_horizon="1d"), 3_600_000)[:4]
    [0, 3600000, 7200000, 14400000]
    >>> checkpoint_delays(PerformanceSettings(label_horizon="1d", after=["1h"]), 3_600_000)
    [3600000, 86400000]
    """
    horizon = round(perf.label_horizon * 1000)
    if perf.after is not None:
        delays = [round(a * 1000) for a in perf.after]
    else:
        delays, d = [0], window_ms
        while d < horizon:
            delays.append(d)
            d *= 2
    delays.append(horizon)
    if perf.coverage_after is not None:
        delays.append(round(perf.coverage_after * 1000))
    return sorted(set(delays))


_NO_WATERMARK = int(np.iinfo(np.int64).min)  # an outcome that came before any watermark


def _arrival_watermarks(times: list[int], wm: int | None, lagging: int | None
                        ) -> tuple[list[int], int | None]:
    """The watermark each outcome of a batch arrives at (``_NO_WATERMARK``: none yet),
    and the outcome watermark after them: the outcome watermark before each (``wm``, then
    the outcomes before it) and the ``lagging`` prediction watermark, the later of the
    two. Running maxima in C, not a loop per outcome.

    >>> _arrival_watermarks([5, 3, 9], None, None)[0][1:], _arrival_watermarks([5], 2, 4)
    ([5, 5], ([4], 5))
    >>> _arrival_watermarks([5, 3], None, None)[0][0] == _NO_WATERMARK
    True
    """
    if not times:
        return [], wm
    if wm is None:
        running = list(itertools.accumulate(times, max))
        before: list[int | None] = [None, *running[:-1]]
    else:
        running = list(itertools.accumulate(times, max, initial=wm))[1:]
        before = [wm, *running[:-1]]
    if lagging is not None:
        at = [lagging if b is None or b < lagging else b for b in before[:1]]
        at += map(max, before[1:], itertools.repeat(lagging))  # type: ignore[arg-type]
    else:
        at = [_NO_WATERMARK if b is None else b for b in before[:1]]
        at += before[1:]  # type: ignore[arg-type]
    return at, running[-1]


def _window_counts(times: list[int], window_ms: int, version: str
                   ) -> dict[tuple[int, str], int]:
    """Predictions of one version per (tumbling) window start, the windows in order of
    first appearance (as counting them one by one): numpy passes, not a loop per event.

    >>> _window_counts([130, 10, 150, 20], 100, "v")
    {(100, 'v'): 2, (0, 'v'): 2}
    """
    starts = np.asarray(times, dtype=np.int64) // window_ms * window_ms
    found, first, counts = np.unique(starts, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    return dict(zip(zip(found[order].tolist(), itertools.repeat(version)),
                    counts[order].tolist(), strict=True))

_BOOL_CLASS = {True: "1", False: "0"}  # (read with booleans only: 1 == True)
_SHARED_MAX = 4096  # distinct strings the label join's columns share (see _shared)


def _scores(events: Sequence[Mapping[str, Any]], key: str) -> list[float | None]:
    """The score of class ``key`` in each event: a finite number as a float, else None."""
    raw = score_values(events, key)
    if set(map(type, raw)) == {float} and math.isfinite(sum(raw)):
        return raw  # finite floats, the usual scores: as they are
    # (v - v is 0.0 for finite floats only)
    return [v if type(v) is float and v - v == 0.0 else _number(v) for v in raw]


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        f = float(v)
    except OverflowError:  # an integer beyond the float range: no usable number
        return None
    return f if math.isfinite(f) else None


@dataclass
class Bucket:
    """Labels of one checkpoint of one window and version, not evaluated yet.

    Their rows (prediction event time, error, loss) wait for the concept-drift
    detectors, held as three columns (``event_ms``, ``errors``, ``losses``: no tuple per
    label); they are saved in append-only chunk records (``chunks``: which, and how many
    rows each), never rewritten. Each chunk record names its bucket, so the window's own
    record does not list them: it would grow with every batch, and be rewritten with it.
    """

    metrics: Metrics
    delays: QuantileSketch = field(default_factory=QuantileSketch)  # seconds
    event_ms: list[int] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    chunks: list[tuple[int, int]] = field(default_factory=list)  # (record seq, rows)
    unsaved: int = 0

    @property
    def size(self) -> int:
        """Rows held."""
        return len(self.event_ms)

    def add_rows(self, event_ms: list[int], errors: list[float], losses: list[float]
                 ) -> None:
        """Append rows (as columns), not saved yet."""
        self.event_ms += event_ms
        self.errors += errors
        self.losses += losses
        self.unsaved += len(event_ms)

    def in_order(self) -> tuple[list[int], list[float], list[float]]:
        """The rows' columns sorted by (event time, error, loss), as the rows would sort:
        the order the detectors see them in, however the batches came.

        >>> b = Bucket(ClassificationMetrics())
        >>> b.add_rows([20, 10, 20], [1.0, 0.0, 0.0], [0.5, 0.25, 0.75])
        >>> b.in_order()
        ([10, 20, 20], [0.0, 0.0, 1.0], [0.25, 0.75, 0.5])
        """
        order = np.lexsort((self.losses, self.errors, self.event_ms)).tolist()
        pick = picker(order) if order else list
        return pick(self.event_ms), pick(self.errors), pick(self.losses)

    def chunk(self, at: int, stop: int) -> dict[str, list[Any]]:
        """Rows ``at:stop`` as a chunk record's columns."""
        return {"event_ms": self.event_ms[at:stop], "errors": self.errors[at:stop],
                "losses": self.losses[at:stop]}

    def to_state(self) -> dict[str, Any]:
        return {"metrics": self.metrics.to_state(), "delays": self.delays.to_state()}


def chunk_columns(record: Mapping[str, Any]) -> tuple[list[int], list[float], list[float]]:
    """A chunk record's rows as columns: written so (:meth:`Bucket.chunk`) by builds whose
    window records are version 3; by earlier ones as ``rows`` of ``[event_ms, error,
    loss]``, read alike.

    >>> chunk_columns({"rows": [[5, 1.0, 0.5]]}) == chunk_columns(
    ...     {"event_ms": [5], "errors": [1], "losses": [0.5]}) == ([5], [1.0], [0.5])
    True
    """
    if "rows" in record:
        rows = record["rows"]
        return ([int(r[0]) for r in rows], [float(r[1]) for r in rows],
                [float(r[2]) for r in rows])
    cols = (list(map(int, record["event_ms"])), list(map(float, record["errors"])),
            list(map(float, record["losses"])))
    if not len(cols[0]) == len(cols[1]) == len(cols[2]):
        raise ValueError("a chunk record's columns differ in length")
    return cols


@dataclass
class PerfSlice:
    """One window's labelled figures for one version."""

    metrics: Metrics
    predictions: int = 0
    labelled: int = 0
    delays: QuantileSketch = field(default_factory=QuantileSketch)
    buckets: dict[int, Bucket] = field(default_factory=dict)
    fired: list[str] = field(default_factory=list)


@dataclass
class PerfWindow:
    start_ms: int
    end_ms: int
    next_k: int = 0  # the first checkpoint not evaluated yet
    slices: dict[str, PerfSlice] = field(default_factory=dict)


@dataclass(frozen=True)
class PerformanceEvaluation:
    """A window's performance for one version at one checkpoint."""

    model: str
    model_version: str
    start_ms: int
    end_ms: int
    checkpoint: int
    after_ms: int
    final: bool
    predictions: int
    labelled: int
    new_labels: int
    coverage: float | None
    delay_quantiles: dict[str, float] | None  # p50/p90/p99 in seconds
    figures: dict[str, float | None]
    metric: str
    value: float | None
    interval: tuple[float, float] | None
    baseline: float | None
    baseline_source: str | None
    min_labels: int
    decisions: list[PerformanceDecision]
    coverage_judged: bool = False  # this checkpoint judged label coverage


@dataclass(frozen=True)
class ConceptDetection:
    model_version: str
    detector: str
    signal: str
    identity: str
    index: int  # values the detector had seen (deterministic)
    event_ms: int  # event time of the prediction at which it detected
    before_mean: float | None
    recent_mean: float | None
    severity: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PerformanceUpdate:
    """What one batch (or one wall-clock pass) produced."""

    evaluations: list[PerformanceEvaluation] = field(default_factory=list)
    detections: list[ConceptDetection] = field(default_factory=list)
    labelled: int = 0
    expired: int = 0
    orphans: int = 0
    duplicates: int = 0
    too_late: int = 0
    late_labels: int = 0  # labelled after every checkpoint of their window
    invalid_labels: int = 0  # e.g. a non-numeric label of a regression model

    def count(self, r: JoinResult) -> None:
        self.expired += r.expired
        self.orphans += r.orphans
        self.duplicates += r.duplicates
        self.too_late += r.too_late


def _identity(cfg: ConceptDetectorSettings) -> str:
    params = ",".join(f"{k}={cfg.params[k]}" for k in sorted(cfg.params))
    return f"{cfg.detector}:{cfg.signal}:{params}"


class PerformanceTracker:
    """Performance of one model: see the module docstring."""

    def __init__(self, model: str, settings: ModelSettings, *, window_ms: int,
                 lateness_ms: int) -> None:
        if settings.performance is None:
            raise ValueError(f"model {model!r} has no performance settings")
        perf = self.perf = settings.performance
        self.model = model
        self.task = settings.task
        self.metric = settings.performance_metric
        self.window_ms = window_ms
        self.lateness_ms = lateness_ms
        self.horizon_ms = round(perf.label_horizon * 1000)
        self.max_lag_ms = round((perf.max_label_lag if perf.max_label_lag is not None
                                 else perf.label_horizon) * 1000)
        self.delays = checkpoint_delays(perf, window_ms)
        cov = perf.coverage_after
        self.coverage_k = (len(self.delays) - 1 if cov is None
                           else self.delays.index(round(cov * 1000)))
        self.join = LabelJoin(horizon_ms=self.horizon_ms,
                              orphan_horizon_ms=round(perf.orphan_horizon * 1000),
                              max_pending=perf.max_pending, max_orphans=perf.max_orphans)
        self.windows: dict[int, PerfWindow] = {}
        self.dirty: set[int] = set()
        self.dropped: set[int] = set()
        self.next_chunk = 0
        self.spent_chunks: set[int] = set()  # chunk records of evaluated buckets
        self.outcome_wm: int | None = None
        self.prediction_wm: int | None = None
        self.versions: list[str] = []
        self._strings: dict[str, str] = {}  # see _shared
        self.version_metrics: dict[str, dict[str, float]] = {}  # from model events
        self.learning: dict[str, tuple[int, Metrics]] = {}  # version -> (windows, pooled)
        self.learned: dict[str, float] = {}
        self.detector_settings = settings.concept_detectors
        self.identities = [_identity(c) for c in self.detector_settings]
        # Versions side by side: each version's pooled figures over its settled windows,
        # and the live / previous version from deployed and rolled_back events.
        self.pooled: dict[str, Metrics] = {}
        self.live: str | None = None
        self.previous: str | None = None
        self.rollbacks: list[str] = []  # "new>old" pairs already recommended
        self.detectors: dict[str, list[DetectorRun]] = {}

    # -- watermarks -------------------------------------------------------------------
    def watermark(self) -> int | None:
        """The performance watermark (event time; see the module docstring)."""
        lagging = None if self.prediction_wm is None else self.prediction_wm - self.max_lag_ms
        if self.outcome_wm is None:
            return lagging
        return self.outcome_wm if lagging is None else max(self.outcome_wm, lagging)

    # -- predictions ------------------------------------------------------------------
    def _metrics(self) -> Metrics:
        if self.task == "regression":
            return RegressionMetrics()
        positive = self.perf.positive_class if self.task == "binary_classification" else None
        return ClassificationMetrics(positive=positive)

    def _slice(self, start: int, version: str) -> PerfSlice:
        w = self.windows.get(start)
        if w is None:
            w = self.windows[start] = PerfWindow(start, start + self.window_ms)
            self.dropped.discard(start)
        sl = w.slices.get(version)
        if sl is None:
            sl = w.slices[version] = PerfSlice(self._metrics())
        return sl

    def add_predictions(self, events: Sequence[Mapping[str, Any]], times_ms: Sequence[int],
                        update: PerformanceUpdate) -> None:
        """Predictions accepted into their windows (not late), in arrival order.

        Counted per (window, version) group, not per event; versions are noted in order
        of first appearance, as event by event.
        """
        if not events:
            return
        times = list(map(int, times_ms))
        versions = field_values(events, "model_version")
        window_ms = self.window_ms
        first, top = min(times) // window_ms * window_ms, max(times)
        groups: Mapping[tuple[int, str], int]
        one_version = versions.count(versions[0]) == len(versions)
        if one_version and first == top // window_ms * window_ms:  # the usual batch
            groups = {(first, versions[0]): len(versions)}  # (one window, one version)
        elif one_version:  # a few windows
            groups = _window_counts(times, window_ms, versions[0])
        else:
            groups = Counter(zip([t // window_ms * window_ms for t in times], versions,
                                 strict=True))
        for (start, version), n in groups.items():
            if version not in self.version_metrics and version not in self.versions:
                self.versions.append(version)
            self._slice(start, version).predictions += n
            self.dirty.add(start)
        scores: list[float | None] = [None] * len(events)
        if self.task == "binary_classification":
            scores = _scores(events, self.perf.score_key or self.perf.positive_class)
        kept = self._kept_all(field_values(events, "prediction"))
        self.prediction_wm = top if self.prediction_wm is None else max(self.prediction_wm, top)
        result = self.join.add_prediction_columns(
            field_values(events, "prediction_id"), [times, self._shared(versions), kept, scores])
        update.count(result)
        self._place(result.columns, update)

    def _kept_all(self, values: list[Any]) -> Sequence[Any]:
        """What the join keeps of predictions or labels: what the metrics read of each,
        its class (classification; strings and booleans, the usual ones, inline) or its
        number (regression). Always JSON the changelog writes, whatever the event held
        (an integer beyond 64 bits is not)."""
        if self.task == "regression":
            return list(map(_number, values))
        types = set(map(type, values))
        if types == {bool}:  # the usual binary classifier's values, in one C pass
            return list(map(_BOOL_CLASS.__getitem__, values))
        return self._shared(as_classes(values))

    def _shared(self, values: Sequence[Any]) -> list[Any]:
        """:func:`~app.events.fields.share_strings` with this tracker's pool: what the
        label join keeps of each prediction. A decoder gives every event its own string
        object, so a version or a class held for the label horizon took one per pending
        prediction (56 bytes of its 230)."""
        if len(self._strings) >= _SHARED_MAX:  # many distinct classes: start over
            self._strings.clear()               # (only memory is at stake)
        return share_strings(values, self._strings)

    def note_version(self, version: str) -> None:
        if version not in self.versions:
            self.versions.append(version)

    # -- outcomes ---------------------------------------------------------------------
    def add_outcomes(self, events: Sequence[Mapping[str, Any]], times_ms: Sequence[int],
                     update: PerformanceUpdate) -> None:
        """Outcomes in arrival order; each remembers the watermark it arrived at."""
        if not events:
            return
        times = list(map(int, times_ms))
        # the watermark each outcome arrives at: the lagging prediction watermark (fixed
        # during the batch) and the outcomes before it
        lagging = None if self.prediction_wm is None else self.prediction_wm - self.max_lag_ms
        at, self.outcome_wm = _arrival_watermarks(times, self.outcome_wm, lagging)
        result = self.join.add_outcomes(list(zip(
            field_values(events, "prediction_id"), self._kept_all(field_values(events, "label")),
            times, at, strict=True)))
        update.count(result)
        self._place(result.columns, update)

    def _place(self, labelled: Sequence[Sequence[Any]], update: PerformanceUpdate) -> None:
        """Put labelled predictions (columns, as :attr:`JoinResult.columns`) into their
        window's checkpoint buckets (one metrics and sketch update per bucket, not per
        label).

        Checkpoints, windows and versions are found with array operations, and the
        buckets filled in the order their first label came, each with its labels in their
        order (what placing them one by one gives).
        """
        _, event_ms, versions, predicted, scores, labels, label_ms, seen_ms = labelled
        n = len(event_ms)
        if not n:
            return
        ev = np.fromiter(event_ms, np.int64, n)
        lm = np.fromiter(label_ms, np.int64, n)
        sm = np.fromiter(seen_ms, np.int64, n)
        wms = self.window_ms
        starts = ev // wms * wms
        codes = {v: j for j, v in enumerate(dict.fromkeys(versions))}
        vc = np.fromiter(map(codes.__getitem__, versions), np.int64, n)
        k = np.full(n, -1, dtype=np.int64)  # each label's checkpoint; -1: none (late)
        windows = np.unique(starts).tolist()
        for start in windows:
            w = self.windows.get(start)
            if w is None:
                continue
            here = starts == start
            for version, code in codes.items():
                if version not in w.slices:
                    here &= vc != code
            for kk in range(w.next_k, len(self.delays)):
                at = w.end_ms + self.delays[kk]
                k[here & (k < 0) & (lm <= at) & (sm < at + self.lateness_ms)] = kk
        placed = k >= 0
        update.late_labels += n - int(np.count_nonzero(placed))
        errors, losses, usable = self._rows(labels, predicted, scores)
        if usable is not None:
            invalid = placed & ~usable
            update.invalid_labels += int(np.count_nonzero(invalid))
            placed &= usable
        rows = np.flatnonzero(placed)
        if not rows.size:
            return
        # one group per (window, version, checkpoint), in the order of its first label
        key = (np.searchsorted(windows, starts[rows]) * len(codes) + vc[rows]) \
            * len(self.delays) + k[rows]
        _, first, group = np.unique(key, return_index=True, return_inverse=True)
        names = list(codes)
        delays = np.maximum(lm - ev, 0) / 1000
        for g in np.argsort(first, kind="stable").tolist():
            at = rows[group == g]
            idx = at.tolist()
            pick = picker(idx)  # the group's values of a column, in C
            i0 = idx[0]
            start, version, kk = int(starts[i0]), names[vc[i0]], int(k[i0])
            sl = self.windows[start].slices[version]
            bucket = sl.buckets.get(kk)
            if bucket is None:
                bucket = sl.buckets[kk] = Bucket(self._metrics())
            if isinstance(bucket.metrics, RegressionMetrics):
                bucket.metrics.update(list(zip(map(float, pick(labels)),
                                               map(float, pick(predicted)), strict=True)))
            else:
                bucket.metrics.update_columns(pick(labels), pick(predicted), pick(scores))
            bucket.add_rows(pick(event_ms), errors[at].tolist(), losses[at].tolist())
            bucket.delays.update(delays[at])
            update.labelled += len(idx)
            self.dirty.add(start)

    def _rows(self, labels: Sequence[Any], predicted: Sequence[Any],
              scores: Sequence[float | None]
              ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any] | None]:
        """(error indicators, losses, which are usable) of labelled predictions, as float
        arrays; the last is ``None`` when all are (classification: every label is)."""
        n = len(labels)
        if self.task == "regression":
            ys, ps = list(map(_number, labels)), list(map(_number, predicted))
            usable = np.fromiter((y is not None and p is not None for y, p in
                                  zip(ys, ps, strict=True)), bool, n)
            errs = np.fromiter((abs(p - y) if y is not None and p is not None else 0.0
                                for y, p in zip(ys, ps, strict=True)), np.float64, n)
            return errs, errs, usable
        # (the join keeps classes as strings: as_classes converts anything else)
        cls, pcls = as_classes(labels), as_classes(predicted)
        errors = np.fromiter(map(operator.ne, cls, pcls), np.float64, n)
        positive = self.perf.positive_class
        # Brier for scored predictions (bounded, see ConceptDetectorSettings), else the
        # error: scores as one array (the usual floats), or any mix one by one
        if set(map(type, scores)) == {float}:
            s = np.fromiter(scores, np.float64, n)
            d = s - np.fromiter(map(operator.eq, cls, itertools.repeat(positive)),
                                np.float64, n)
            return errors, np.where((s >= 0.0) & (s <= 1.0), d * d, errors), None
        losses = np.fromiter(
            (e if s is None or not 0.0 <= s <= 1.0 else (s - (1.0 if c == positive
                                                               else 0.0)) ** 2
             for e, s, c in zip(errors.tolist(), scores, cls, strict=True)), np.float64, n)
        return errors, losses, None

    # -- model events -----------------------------------------------------------------
    def add_model_event(self, event: Mapping[str, Any]) -> None:
        """Metrics of a ``deployed``/``retrain_completed`` event become that version's
        baseline candidates."""
        if event["event"] in ("deployed", "rolled_back"):
            version = str(event["version"])
            if version != self.live:
                self.previous, self.live = self.live, version
        if event["event"] not in ("deployed", "retrain_completed"):
            return
        metrics = event.get("metrics") or {}
        if not metrics:
            return
        version = str(event["version"])
        # a metric beyond the float range (10**400) is no baseline: left out
        self.version_metrics[version] = {str(k): f for k, v in metrics.items()
                                         if (f := _number(v)) is not None}
        while len(self.version_metrics) > MAX_VERSIONS:
            self.version_metrics.pop(next(iter(self.version_metrics)))

    def baseline(self, version: str) -> tuple[float, str] | None:
        """(value, source): configured, from the version's model event, or learned (the
        version's own, else the newest earlier version's)."""
        if self.perf.baseline is not None:
            return self.perf.baseline, "configured"
        from_event = self.version_metrics.get(version, {}).get(self.metric)
        if from_event is not None:
            return from_event, "model_event"
        if version in self.learned:
            return self.learned[version], "learned"
        earlier = self.versions[:self.versions.index(version)] if version in self.versions \
            else self.versions
        for v in reversed(earlier):
            if v in self.learned:
                return self.learned[v], f"learned:{v}"
        return None

    # -- checkpoints ------------------------------------------------------------------
    def expire(self, watermark_ms: int, update: PerformanceUpdate) -> None:
        update.count(self.join.expire(watermark_ms - self.lateness_ms))

    def due(self, perf_wm: int | None, prediction_wm: int | None) -> list[tuple[int, int, int]]:
        """(checkpoint time, window start, checkpoint) due at these watermarks, in order."""
        if perf_wm is None or prediction_wm is None:
            return []
        out = []
        for w in self.windows.values():
            if prediction_wm < w.end_ms + self.lateness_ms:
                continue
            for k in range(w.next_k, len(self.delays)):
                at = w.end_ms + self.delays[k]
                if at + self.lateness_ms > perf_wm:
                    break
                out.append((at, w.start_ms, k))
        return sorted(out)

    def evaluate_due(self, perf_wm: int | None, prediction_wm: int | None,
                     update: PerformanceUpdate, *, min_predictions: int) -> None:
        """Evaluate every due checkpoint (in checkpoint-time order)."""
        if perf_wm is not None:
            self.expire(perf_wm, update)
        for _, start, k in self.due(perf_wm, prediction_wm):
            w = self.windows[start]
            for version in sorted(w.slices, key=self._rank):
                ev = self._evaluate(w, version, k, update, min_predictions)
                if ev is not None:
                    update.evaluations.append(ev)
            w.next_k = k + 1
            self.dirty.add(start)
            if w.next_k >= len(self.delays):
                del self.windows[start]
                self.dropped.add(start)

    def flush(self, update: PerformanceUpdate, *, min_predictions: int) -> None:
        """End of input (offline replay): evaluate every remaining checkpoint."""
        top = max((w.end_ms for w in self.windows.values()), default=None)
        if top is not None:
            far = top + self.delays[-1] + self.lateness_ms
            self.evaluate_due(far, far, update, min_predictions=min_predictions)

    def _rank(self, version: str) -> tuple[int, str]:
        return (self.versions.index(version) if version in self.versions
                else len(self.versions), version)

    def _evaluate(self, w: PerfWindow, version: str, k: int, update: PerformanceUpdate,
                  min_predictions: int) -> PerformanceEvaluation | None:
        sl = w.slices[version]
        bucket = sl.buckets.pop(k, None)
        final = k == len(self.delays) - 1
        new = 0
        if bucket is not None:
            new = bucket.size
            sl.metrics = sl.metrics.merge(bucket.metrics)  # type: ignore[arg-type]
            sl.labelled += new
            sl.delays = sl.delays.merge(bucket.delays)
            self.spent_chunks.update(seq for seq, _ in bucket.chunks)
            self._detect(version, *bucket.in_order(), update)
        if not new and not final and k != self.coverage_k:
            return None
        figures = sl.metrics.figures()
        value = figures.get(self.metric)
        interval = sl.metrics.interval(self.metric) if value is not None else None
        base = self.baseline(version)
        decisions: list[PerformanceDecision] = []
        if base is not None and "performance_drop" not in sl.fired:
            d = decide_performance(self.metric, value, interval, base[0], self.perf.max_drop,
                                   n=sl.labelled, min_labels=self.perf.min_labels)
            if d is not None:
                decisions.append(d)
        coverage = sl.labelled / sl.predictions if sl.predictions else None
        coverage_judged = k == self.coverage_k and self.perf.min_coverage is not None \
            and sl.predictions >= min_predictions
        if coverage_judged and self.perf.min_coverage is not None \
                and "label_coverage" not in sl.fired:
            d = decide_coverage(coverage, self.perf.min_coverage, self.delays[k])
            if d is not None:
                decisions.append(d)
        pair = f"{version}>{self.previous}"
        if version == self.live and self.previous is not None and \
                self.previous in self.pooled and pair not in self.rollbacks:
            d = decide_rollback(self.metric, value, interval, self.previous,
                                self.pooled[self.previous].value(self.metric),
                                self.perf.max_drop, n=sl.labelled,
                                min_labels=self.perf.min_labels)
            if d is not None:
                decisions.append(d)
                self.rollbacks = [*self.rollbacks, pair][-MAX_VERSIONS:]
        sl.fired += [d.kind for d in decisions]
        if final:  # judged first: a window never counts towards its own baseline
            self._learn(version, sl)
            if sl.labelled:
                pooled = self.pooled.pop(version, None)
                self.pooled[version] = sl.metrics if pooled is None else \
                    pooled.merge(sl.metrics)  # type: ignore[arg-type]
                while len(self.pooled) > MAX_VERSIONS:
                    self.pooled.pop(next(iter(self.pooled)))
        quantiles = None
        if sl.delays.n:
            q = sl.delays.quantile([0.5, 0.9, 0.99])
            quantiles = {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2])}
        return PerformanceEvaluation(
            self.model, version, w.start_ms, w.end_ms, k, self.delays[k], final,
            sl.predictions, sl.labelled, new, coverage, quantiles, figures, self.metric,
            value, interval, None if base is None else base[0],
            None if base is None else base[1], self.perf.min_labels, decisions,
            coverage_judged)

    def _learn(self, version: str, sl: PerfSlice) -> None:
        if self.perf.baseline is not None or version in self.learned \
                or sl.labelled < self.perf.min_labels:
            return
        n, pooled = self.learning.get(version, (0, self._metrics()))
        pooled = pooled.merge(sl.metrics)  # type: ignore[arg-type]
        n += 1
        if n >= self.perf.baseline_windows:
            value = pooled.figures().get(self.metric)
            self.learning.pop(version, None)
            if value is not None:
                self.learned[version] = value
                while len(self.learned) > MAX_VERSIONS:
                    self.learned.pop(next(iter(self.learned)))
        else:
            self.learning[version] = (n, pooled)

    def _runs(self, version: str) -> list[DetectorRun]:
        runs = self.detectors.get(version)
        if runs is None:
            from app.detectors.streaming import make_detector

            runs = self.detectors[version] = [
                DetectorRun(make_detector(c.detector, **c.params))
                for c in self.detector_settings]
            while len(self.detectors) > MAX_VERSIONS:
                self.detectors.pop(next(iter(self.detectors)))
        return runs

    def _detect(self, version: str, event_ms: list[int], errors: list[float],
                losses: list[float], update: PerformanceUpdate) -> None:
        if not self.detector_settings or not event_ms:
            return
        for cfg, identity, run in zip(self.detector_settings, self.identities,
                                      self._runs(version), strict=True):
            n0 = run.detector.n
            for i, before, recent in run.step_many(errors if cfg.signal == "error"
                                                   else losses):
                update.detections.append(ConceptDetection(
                    version, cfg.detector, cfg.signal, identity, n0 + i + 1, event_ms[i],
                    before, recent, cfg.severity))

    # -- state ------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """The small main part; windows and the join are records."""
        return {
            "kind": STATE_KIND, "v": STATE_VERSION, "outcome_wm": self.outcome_wm,
            "prediction_wm": self.prediction_wm, "versions": self.versions,
            "next_chunk": self.next_chunk,
            "pooled": {v: m.to_state() for v, m in self.pooled.items()},
            "live": self.live, "previous": self.previous, "rollbacks": self.rollbacks,
            "version_metrics": self.version_metrics, "learned": self.learned,
            "learning": {v: [n, m.to_state()] for v, (n, m) in self.learning.items()},
            "detectors": {v: {i: r.to_state() for i, r in zip(self.identities, runs,
                                                               strict=True)}
                          for v, runs in self.detectors.items()},
        }

    def drain_records(self) -> dict[str, Any | None]:
        """Records changed since the last drain (``None``: delete); once per batch."""
        out: dict[str, Any | None] = dict(self.join.drain_records())
        for start in self.dirty:
            w = self.windows.get(start)
            if w is not None:
                for version, sl in w.slices.items():
                    for k, b in sl.buckets.items():
                        if b.unsaved:
                            out[f"{CHUNK_PREFIX}{self.next_chunk}"] = {
                                "start": start, "version": version, "k": k,
                                **b.chunk(b.size - b.unsaved, b.size)}
                            b.chunks.append((self.next_chunk, b.unsaved))
                            self.next_chunk += 1
                            b.unsaved = 0
            out[f"{RECORD_PREFIX}{start}"] = (None if w is None
                                              else _window_state(w, self.next_chunk))
        for seq in self.spent_chunks:
            out[f"{CHUNK_PREFIX}{seq}"] = None
        self.spent_chunks.clear()
        for start in self.dropped - self.dirty:
            out[f"{RECORD_PREFIX}{start}"] = None
        self.dirty.clear()
        self.dropped.clear()
        return out

    def records(self) -> dict[str, Any]:
        """Every live record (as a restore reads them); drains first."""
        self.drain_records()
        out = dict(self.join.records())
        out.update({f"{RECORD_PREFIX}{s}": _window_state(w, self.next_chunk)
                    for s, w in self.windows.items()})
        for w in self.windows.values():
            for version, sl in w.slices.items():
                for k, b in sl.buckets.items():
                    at = 0
                    for seq, size in b.chunks:
                        out[f"{CHUNK_PREFIX}{seq}"] = {
                            "start": w.start_ms, "version": version, "k": k,
                            **b.chunk(at, at + size)}
                        at += size
        return out

    def load(self, state: Mapping[str, Any], records: Mapping[str, Any]) -> None:
        check_state(state, STATE_KIND, frozenset({STATE_VERSION}))
        try:
            self.outcome_wm = state["outcome_wm"]
            self.next_chunk = int(state["next_chunk"])
            self.pooled = {str(v): _metrics_from(m) for v, m in state.get("pooled", {}).items()}
            self.live, self.previous = state.get("live"), state.get("previous")
            self.rollbacks = [str(p) for p in state.get("rollbacks", [])]
            self.prediction_wm = state["prediction_wm"]
            self.versions = [str(v) for v in state["versions"]]
            self.version_metrics = {str(v): {str(k): float(x) for k, x in m.items()}
                                    for v, m in state["version_metrics"].items()}
            self.learned = {str(v): float(x) for v, x in state["learned"].items()}
            self.learning = {str(v): (int(n), _metrics_from(m))
                             for v, (n, m) in state["learning"].items()}
            self.detectors = {}
            for v, saved in state["detectors"].items():
                runs = self._runs(str(v))
                for i, identity in enumerate(self.identities):
                    if identity in saved:  # a detector configured anew starts afresh
                        runs[i] = DetectorRun.from_state(saved[identity])
            join_records = {k: r for k, r in records.items() if k.startswith(JOIN_PREFIX)}
            self.join = LabelJoin.restore(
                join_records, horizon_ms=self.join.horizon_ms,
                orphan_horizon_ms=self.join.orphan_horizon_ms,
                max_pending=self.join.max_pending, max_orphans=self.join.max_orphans)
            self.windows = {}
            upto: dict[int, int | None] = {}  # window -> chunks below it are its own
            for key, rec in records.items():
                if key.startswith(RECORD_PREFIX):
                    w, window_upto = _window_from(rec)
                    self.windows[w.start_ms] = w
                    upto[w.start_ms] = window_upto
            chunks = {int(k[len(CHUNK_PREFIX):]): r for k, r in records.items()
                      if k.startswith(CHUNK_PREFIX)}
            owned: dict[tuple[int, str, int], list[int]] = defaultdict(list)
            for seq in sorted(chunks):
                r = chunks[seq]
                owned[(int(r["start"]), str(r["version"]), int(r["k"]))].append(seq)
            claimed: set[int] = set()
            for start, w in self.windows.items():
                limit = upto[start]
                for version, sl in w.slices.items():
                    for k, b in sl.buckets.items():
                        if limit is None:  # v1: the bucket lists its chunk records
                            seqs = [seq for seq, _ in b.chunks]
                        else:  # v2 on: the chunk records name their bucket
                            seqs = [seq for seq in owned.get((start, version, k), ())
                                    if seq < min(limit, self.next_chunk)]
                        b.chunks = []
                        for seq in seqs:
                            cols = chunk_columns(chunks[seq])
                            b.add_rows(*cols)
                            b.chunks.append((seq, len(cols[0])))
                            claimed.add(seq)
                        b.unsaved = 0
            # of an evaluated bucket, or of a save cut short: deleted with the next drain
            self.spent_chunks = set(chunks) - claimed
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt performance state: {exc!r}") from None


def _metrics_from(state: Mapping[str, Any]) -> Metrics:
    if state.get("kind") == RegressionMetrics.KIND:
        return RegressionMetrics.from_state(state)
    return ClassificationMetrics.from_state(state)


def _window_state(w: PerfWindow, next_chunk: int) -> dict[str, Any]:
    """``upto``: chunk records numbered below it, naming a bucket of this window, hold
    that bucket's rows (a later one is of a save that did not finish). Version 3: those
    hold their rows as columns (:func:`chunk_columns`), which a build reading only
    versions 1 and 2 would take for corrupt: it says so instead."""
    return {"kind": WINDOW_KIND, "v": 3, "start": w.start_ms, "end": w.end_ms,
            "next": w.next_k, "upto": next_chunk,
            "slices": {v: {"metrics": sl.metrics.to_state(), "predictions": sl.predictions,
                           "labelled": sl.labelled, "delays": sl.delays.to_state(),
                           "fired": sl.fired,
                           "buckets": {str(k): b.to_state() for k, b in sl.buckets.items()}}
                       for v, sl in w.slices.items()}}


def _window_from(state: Any) -> tuple[PerfWindow, int | None]:
    """The window, and its ``upto`` (``None`` for version 1, whose buckets list their
    chunk records)."""
    state = check_state(state, WINDOW_KIND, frozenset({1, 2, 3}))
    v1 = state["v"] == 1
    upto = None if v1 else state["upto"]
    if upto is not None and (isinstance(upto, bool) or not isinstance(upto, int)):
        raise TypeError(f"upto must be an integer, got {upto!r}")
    w = PerfWindow(int(state["start"]), int(state["end"]), int(state["next"]))
    for v, s in state["slices"].items():
        w.slices[str(v)] = PerfSlice(
            _metrics_from(s["metrics"]), int(s["predictions"]), int(s["labelled"]),
            QuantileSketch.from_state(s["delays"]), {
                int(k): Bucket(_metrics_from(b["metrics"]),
                               QuantileSketch.from_state(b["delays"]),
                               chunks=[(int(c[0]), int(c[1])) for c in b["chunks"]]
                               if v1 else [])
                for k, b in s["buckets"].items()},
            [str(f) for f in s["fired"]])
    return w, upto
