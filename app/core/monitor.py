"""Per-model monitoring state: references, open windows, watermark and lateness.

Pure and explicit: :meth:`ModelMonitor.to_state` is plain JSON-able data with a format
version, written once per batch by the workers and restored after a restart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson

from app.core.changes import ChangeTracker, Detection
from app.core.evaluation import WindowEvaluation, evaluate_window
from app.core.lifecycle import LifecycleFinding, ModelLifecycle
from app.core.partials import Binning, Counted, tallies_of
from app.core.serving import ServingStats
from app.core.signals import Columns, reference_row, segment_label
from app.core.versions import VersionOutputs
from app.core.windows import SEP, Window
from app.errors import MALFORMED_STATE, ReferenceDataError, StateError
from app.events.block import EventBlock
from app.events.fields import concat, field_values, take, version_indices
from app.performance.tracker import PerformanceTracker, PerformanceUpdate
from app.policy.alerts import AlertBook, is_alert_data
from app.policy.retrain import RetrainPolicy
from app.policy.routing import episode_policy
from app.quality import QualityRules
from app.quality import evaluate as evaluate_quality
from app.quality.rules import judge_non_finite
from app.reference import Reference, build_reference
from app.settings import MonitorSettings
from app.sketches._state import integer

STATE_KIND = "model-monitor"
STATE_VERSION = 2
MAX_SAVED_REFERENCES = 4  # per model: the newest versions' own references are kept


@dataclass
class IngestResult:
    accepted: int = 0
    late: int = 0
    warmup: int = 0
    problems: list[str] = field(default_factory=list)  # e.g. a warm-up with unusable data
    performance: PerformanceUpdate | None = None  # labels joined, checkpoints evaluated
    freshness: list[tuple[str, int]] = field(default_factory=list)  # model_silent (status, since)
    lifecycle: list[LifecycleFinding] = field(default_factory=list)


class ModelMonitor:
    """Window state of one model.

    Windows are tumbling (``hop`` = ``window``) or hopping (a new window every ``hop``,
    each ``window`` long, so an event belongs to ``window / hop`` windows). A window
    ``[start, end)`` closes when the watermark (the latest event time seen,
    advanced by the wall-clock time elapsed since the last event arrived, so idle
    streams close too) passes ``end + lateness``. Events for a window that has closed
    are counted as late, never silently dropped.

    References are per model version. A version's own reference is built from its first
    ``warmup`` events, or installed (a file, or the references topic). A version without
    one is compared with the newest earlier version's reference, else with the model's
    configured reference, and its evaluations say so (``fallback``). Only the model's
    very first warm-up leaves events unwindowed: there is nothing to compare them with.
    """

    def __init__(self, model: str, settings: MonitorSettings,
                 reference: Reference | None) -> None:
        if model not in settings.models:
            raise ValueError(f"model {model!r} is not configured")
        self.model = model
        self.settings = settings.models[model]
        self.window_ms = int(settings.window_of(model) * 1000)
        self.hop_ms = int(settings.hop_of(model) * 1000)
        self.lateness_ms = int(settings.lateness_of(model) * 1000)
        self.min_samples = settings.min_samples_of(model)
        self.default_reference = reference  # the configured one (a file), if any
        self.references: dict[str, Reference] = {}  # version -> its own reference
        self.versions_seen: list[str] = []  # in order of first appearance
        self.warmups: dict[str, list[dict[str, Any]]] = {}  # version -> rows so far
        self.windows: dict[int, Window] = {}
        self.closing: set[int] = set()
        self.watermark_ms: int | None = None
        self.last_arrival: float | None = None
        self.closed_through_ms: int | None = None
        self.late_events = 0
        # prediction runs of the current batch whose windowing waits (see ingest's defer)
        self._deferred: list[tuple[Sequence[Mapping[str, Any]], np.ndarray[Any, Any],
                                   np.ndarray[Any, Any]]] = []
        self.partition: int | None = None
        self.warmup_target = self.settings.reference.warmup
        # Highest source position (e.g. "topic:partition" -> offset) already applied to
        # this state. Saved with the state, so a message redelivered after a restart or a
        # rebalance is recognised and not counted twice.
        self.positions: dict[str, int] = {}
        self.changes = [ChangeTracker(cfg) for cfg in self.settings.change_detectors]
        self.pending_detections: list[Detection] = []
        self.performance = PerformanceTracker(
            model, self.settings, window_ms=self.window_ms, lateness_ms=self.lateness_ms) \
            if self.settings.performance is not None else None
        self.last_outcome_arrival: float | None = None
        retrain = self.settings.retrain
        self.lifecycle = ModelLifecycle(
            max_age_ms=None if retrain.max_age is None else round(retrain.max_age * 1000),
            expected_ms=None if retrain.expected_duration is None
            else round(retrain.expected_duration * 1000),
            start_ms=None if retrain.start_within is None
            else round(retrain.start_within * 1000)) if retrain is not None else None
        self.rules: dict[str, QualityRules] = {}  # reference key -> quality rules
        # id(reference) -> (the reference, its binning): those of the versions in use
        self._binnings: dict[int, tuple[Reference, Binning | None]] = {}
        self.retrain = RetrainPolicy(retrain) if retrain is not None and retrain.on else None
        self.freshness_ms = None if self.settings.freshness is None \
            else round(self.settings.freshness * 1000)
        self.silent_since: int | None = None  # model_silent firing: last prediction time
        self.clock_ms: int | None = None  # the newest event time on any of its streams
        self.last_any_arrival: float | None = None
        # CloudEvents (target, event) waiting to be published: saved with the state, so a
        # worker that dies before publishing them publishes them after its restart.
        self.pending_outputs: list[tuple[str, dict[str, Any]]] = []
        alerting = self.settings.alerting
        self.versions = VersionOutputs(self.settings.rollback)  # outputs side by side
        self.alerts = AlertBook(
            model, lambda kind: episode_policy(settings.alerting, alerting, kind,
                                               self.hop_ms),
            routes=(*alerting.routes, *settings.alerting.routes),
            silences=settings.alerting.silences)

    # -- references -----------------------------------------------------------------
    @property
    def reference(self) -> Reference | None:
        """The reference the newest version is compared with."""
        found = self.reference_for(self.versions_seen[-1]) if self.versions_seen else None
        return found[1] if found else self.default_reference

    def reference_for(self, version: str) -> tuple[str, Reference] | None:
        """(key, reference) to compare ``version`` with: its own, the newest earlier
        version's, or the configured one (key ``*``); None before any exists."""
        own = self.references.get(version)
        if own is not None:
            return version, own
        return self._fallback(self.versions_seen[:self.versions_seen.index(version)]
                              if version in self.versions_seen else self.versions_seen)

    def _fallback(self, earlier: Sequence[str]) -> tuple[str, Reference] | None:
        """The reference of a version without its own, coming after ``earlier``."""
        for v in reversed(earlier):
            if v in self.references:
                return v, self.references[v]
        if self.default_reference is not None:
            return "*", self.default_reference
        return None

    def reference_by_key(self, key: str) -> Reference | None:
        return self.default_reference if key == "*" else self.references.get(key)

    def binnings(self) -> dict[str | None, Binning]:
        """How each version seen is binned (:class:`~app.core.partials.Binning`), for
        decode processes to count its messages' numeric values, and under ``None`` how a
        version not seen yet would be (the reference it would fall back to); the versions
        whose reference is counted otherwise are left out."""
        out: dict[str | None, Binning] = {}
        cache, self._binnings = self._binnings, {}
        for version in [*self.versions_seen, None]:
            found = self.reference_for(version) if version is not None \
                else self._fallback(self.versions_seen)
            if found is None:
                continue
            ref = found[1]
            held = cache.get(id(ref))
            if held is None or held[0] is not ref:
                held = (ref, Binning.of(ref))
            self._binnings[id(ref)] = held
            if held[1] is not None:
                out[version] = held[1]
        return out

    def install_reference(self, version: str, reference: Reference) -> None:
        """A version's own reference (from a file or the references topic)."""
        self.references[version] = reference
        self.warmups.pop(version, None)

    def applied(self, source: str, position: int) -> bool:
        """True when the record at ``position`` of ``source`` is already in this state."""
        return position <= self.positions.get(source, -1)

    def advance(self, source: str, position: int) -> None:
        if position > self.positions.get(source, -1):
            self.positions[source] = position

    # -- ingest ---------------------------------------------------------------------
    def ingest(self, events: Sequence[Mapping[str, Any]], times_ms: Sequence[int],
               now: float | None, *, defer: bool = False) -> IngestResult:
        """Add a batch of validated prediction events with their event times (epoch ms).

        ``now`` is the wall-clock arrival time (``None`` offline: no idle close).

        ``defer``: the window sketches and counts wait for :meth:`window_deferred`, which
        updates them for every deferred run at once. A batch whose predictions and
        outcomes interleave (the usual live batch) comes as many short runs, and a
        window's update costs a few numpy calls per signal whatever its size. Everything
        order-dependent (watermark, lateness, the label join, detectors) happens here,
        in arrival order. Not with a warm-up configured: a warm-up completing mid-batch
        changes the reference that later events are compared with.
        """
        result = IngestResult()
        if not events:
            return result
        if now is not None:
            self.last_arrival = now
        times = np.asarray(times_ms, dtype=np.int64)
        self._tick(int(times.max()), now)
        if self.silent_since is not None:
            result.freshness.append(("resolved", self.silent_since))
            self.silent_since = None
        for tracker in self.changes:  # every event, in arrival order
            self.pending_detections += tracker.feed(events, times.tolist())
        # The event-time watermark just before each event: an event whose window was
        # already due by then is late, wherever the batches happen to be cut.
        floor = np.iinfo(np.int64).min if self.watermark_ms is None else self.watermark_ms
        before = np.maximum.accumulate(np.concatenate(([floor], times[:-1])))
        top = int(times.max())
        self.watermark_ms = top if self.watermark_ms is None else max(self.watermark_ms, top)
        for version in version_indices(events):  # in order of first appearance: replay
            if version not in self.versions_seen:  # and workers agree
                self.versions_seen.append(version)
        if self.performance is not None:
            self._performance_predictions(events, times, before, result)
        if not self.warmup_target:
            if defer:
                self._deferred.append((events, times, before))
            else:
                self._window(events, times, before, result)
        else:
            # Split at each warm-up that completes: events before it are compared with
            # what existed then, however the stream was cut into batches.
            pos = 0
            while pos < len(events):
                stop, held, complete = self._feed_warm_up(events, pos, result)
                keep = [i for i in range(pos, stop) if i not in held]
                if keep:
                    self._window(take(events, keep), times[keep], before[keep], result)
                if complete is not None:
                    self._build_reference(complete, result)
                pos = stop
        self.late_events += result.late
        return result

    def window_deferred(self) -> IngestResult:
        """Window the prediction runs :meth:`ingest` deferred, together, as one run
        (each event keeps the watermark it arrived at, so lateness is unchanged)."""
        result = IngestResult()
        if not self._deferred:
            return result
        runs, self._deferred = self._deferred, []
        if len(runs) == 1:
            events, times, before = runs[0]
        else:
            events = concat([run[0] for run in runs])
            times = np.concatenate([run[1] for run in runs])
            before = np.concatenate([run[2] for run in runs])
        self._window(events, times, before, result)
        self.late_events += result.late
        return result

    def _window(self, events: Sequence[Mapping[str, Any]], times: np.ndarray[Any, Any],
                before: np.ndarray[Any, Any], result: IngestResult) -> None:
        latest = (times // self.hop_ms) * self.hop_ms  # the newest window holding each event
        # numeric counts made by decode processes: (newest window start, version) -> ...
        partials = events.partials if type(events) is EventBlock else None
        for back in range(self.window_ms // self.hop_ms):  # 1 pass when tumbling
            starts = latest - back * self.hop_ms
            for ws in np.unique(starts).tolist():
                idx = np.flatnonzero(starts == ws)
                if self._is_closed(ws):
                    if back == 0:  # its newest window is closed: so are all the others
                        result.late += idx.size
                    continue
                counted = None if partials is None else {
                    version: c for (start, version), c in partials.items()
                    if start == ws + back * self.hop_ms}  # (all the events of idx)
                due = before[idx] >= ws + self.window_ms + self.lateness_ms
                if due.any():  # arrived after the watermark passed the window's close
                    if back == 0:
                        result.late += int(due.sum())
                    idx = idx[~due]  # (counted with the late ones: not added, see _fits)
                    if not idx.size:
                        continue
                window = self.windows.get(ws)
                if window is None:
                    window = self.windows[ws] = Window(ws, ws + self.window_ms)
                rows = events if idx.size == len(events) else take(events, idx.tolist())
                columns = Columns(rows)  # read once for the sketches and the quality counts
                added = window.update(rows, times[idx], self.reference_for,
                                      self._segment_labels if self.settings.segments else None,
                                      columns, counted)
                if not window.slices:
                    del self.windows[ws]
                    continue
                if self.settings.quality.enabled:
                    self._count_quality(window, rows, columns, counted)
                _count_serving(window, columns, counted)
                if back == 0:
                    result.accepted += added

    def _performance_predictions(self, events: Sequence[Mapping[str, Any]],
                                 times: np.ndarray[Any, Any], before: np.ndarray[Any, Any],
                                 result: IngestResult) -> None:
        """Predictions whose (tumbling) window is still open wait for their labels."""
        assert self.performance is not None
        starts = (times // self.window_ms) * self.window_ms
        keep = before < starts + self.window_ms + self.lateness_ms
        if self.closed_through_ms is not None:
            keep &= starts + self.window_ms > self.closed_through_ms
        if self.closing:
            keep &= ~np.isin(starts, np.fromiter(self.closing, dtype=np.int64))
        update = result.performance = result.performance or PerformanceUpdate()
        if keep.all():  # the usual batch: every prediction is in an open window
            self.performance.add_predictions(events, times.tolist(), update)
            return
        idx = np.flatnonzero(keep).tolist()
        self.performance.add_predictions(take(events, idx), times[idx].tolist(), update)

    def ingest_outcomes(self, events: Sequence[Mapping[str, Any]], times_ms: Sequence[int],
                        now: float | None) -> IngestResult:
        """Add a batch of validated outcomes (labels) with their event times."""
        result = IngestResult(performance=PerformanceUpdate())
        if self.performance is None or not events:
            return result
        if now is not None:
            self.last_outcome_arrival = now
        self._tick(max(times_ms), now)
        assert result.performance is not None
        self.performance.add_outcomes(events, times_ms, result.performance)
        result.accepted = len(events)
        return result

    def ingest_model_events(self, events: Sequence[Mapping[str, Any]],
                            times_ms: Sequence[int], now: float | None) -> IngestResult:
        """Model lifecycle events: a version's metrics become its baseline candidates; the
        live version and retrains are followed."""
        result = IngestResult(accepted=len(events))
        if events:
            self._tick(max(times_ms), now)
        for e, t in zip(events, times_ms, strict=True):
            if self.performance is not None:
                self.performance.add_model_event(e)
            self.versions.note_event(e)
            if self.lifecycle is not None:
                result.lifecycle += self.lifecycle.add(e, int(t))
        return result

    def _tick(self, top_ms: int, now: float | None) -> None:
        self.clock_ms = top_ms if self.clock_ms is None else max(self.clock_ms, top_ms)
        if now is not None:
            self.last_any_arrival = now

    def check_time(self, now: float | None, global_ms: int | None) -> IngestResult:
        """Clock-driven checks: ``model_silent`` and the retrain lifecycle.

        Workers pass ``now`` (wall clock): silence is wall time since the last prediction
        arrived, the lifecycle clock the model's event time plus idle time. Offline,
        ``global_ms`` is the event time of all streams (replay's only clock).
        """
        result = IngestResult()
        if now is not None:
            if self.last_arrival is None and self.watermark_ms is not None:
                self.last_arrival = now  # restored state: the idle clock starts now
            silent = None if self.last_arrival is None else int((now - self.last_arrival) * 1000)
            clock = self.clock_ms
            if clock is not None and self.last_any_arrival is not None:
                clock += max(0, int((now - self.last_any_arrival) * 1000))
            elif clock is not None:
                self.last_any_arrival = now
        else:
            silent = None if global_ms is None or self.watermark_ms is None \
                else global_ms - self.watermark_ms
            clock = global_ms
        if self.freshness_ms is not None and silent is not None and \
                self.silent_since is None and self.watermark_ms is not None and \
                silent > self.freshness_ms:
            self.silent_since = self.watermark_ms
            result.freshness.append(("firing", self.watermark_ms))
        if self.lifecycle is not None:
            result.lifecycle += self.lifecycle.check(clock)
        return result

    def advance_performance(self, now: float | None) -> PerformanceUpdate | None:
        """Evaluate the performance checkpoints that are due (``now``: wall clock, or None
        offline, where only event time counts)."""
        if self.performance is None:
            return None
        update = PerformanceUpdate()
        perf_wm = self.performance.watermark()
        pred_wm = self.watermark_ms
        if now is not None:
            pred_wm = self.effective_watermark(now)
            arrivals = [a for a in (self.last_arrival, self.last_outcome_arrival)
                        if a is not None]
            if perf_wm is not None and arrivals:
                perf_wm += max(0, int((now - max(arrivals)) * 1000))
        self.performance.evaluate_due(perf_wm, pred_wm, update,
                                      min_predictions=self.min_samples)
        return update

    def flush_performance(self) -> PerformanceUpdate | None:
        """End of input (offline): evaluate every checkpoint left."""
        if self.performance is None:
            return None
        update = PerformanceUpdate()
        self.performance.flush(update, min_predictions=self.min_samples)
        return update

    def rules_for(self, reference_key: str) -> QualityRules:
        """Quality rules of the model, learned from the reference a slice was binned for."""
        rules = self.rules.get(reference_key)
        if rules is None:
            rules = self.rules[reference_key] = QualityRules.build(
                self.settings, self.reference_by_key(reference_key))
        return rules

    def _count_quality(self, window: Window, rows: Sequence[Mapping[str, Any]],
                       columns: Columns,
                       counted: Mapping[str, Sequence[Counted]] | None = None) -> None:
        """Quality counts of the window's new rows, per version; ``counted``: per
        version, counts of all its events made by decode processes, whose tallies of
        categorical features are counted instead of the values."""
        for version, idx in columns.versions().items():
            sl = window.slices.get(version)
            if sl is None:
                continue  # nothing to compare this version with yet (first warm-up)
            rules = self.rules_for(sl.reference)
            counts = window.quality.get(version)
            if counts is None:
                counts = window.quality[version] = rules.new_counts()
            tallies = tallies_of(None if counted is None else counted.get(version),
                                 counts.names, len(idx))
            cols = columns  # the usual batch: one version, its columns read already
            if len(idx) < len(rows) and type(rows) is EventBlock:  # a version's, of a block
                cols = Columns(rows.take(idx))
            elif len(idx) < len(rows):
                counts.update([columns.maps[i] for i in idx], rules.ranges, rules.allowed)
                continue
            counts.update(cols.maps, rules.ranges, rules.allowed,
                          columns=cols.features(counts.names), floats=cols.floats,
                          types=cols.types, lengths=cols.lengths(), tallies=tallies)

    def count_non_finite(self, items: Sequence[tuple[str, int, list[str]]]) -> int:
        """Dead-lettered events whose features held NaN or infinity: (version, event time,
        the features) counted in their open windows' quality; returns how many counted."""
        counted = 0
        for version, t, names in items:
            latest = t // self.hop_ms * self.hop_ms
            for back in range(self.window_ms // self.hop_ms):
                window = self.windows.get(latest - back * self.hop_ms)
                if window is None or window.start_ms in self.closing:
                    continue
                window.rejected[version] = window.rejected.get(version, 0) + 1
                per = window.non_finite.setdefault(version, {})
                for name in names:
                    per[name] = per.get(name, 0) + 1
                counted += back == 0
        return counted

    def _segment_labels(self, event: Mapping[str, Any]) -> list[str]:
        """``key=value`` per configured segment key the event is tagged with."""
        tags = event.get("segment")
        if not tags:
            return []
        return [segment_label(key, tags[key]) for key in self.settings.segments if key in tags]

    def _is_closed(self, start_ms: int) -> bool:
        if start_ms in self.closing:
            return True
        return self.closed_through_ms is not None and start_ms + self.window_ms <= \
            self.closed_through_ms

    def _feed_warm_up(self, events: Sequence[Mapping[str, Any]], pos: int,
                      result: IngestResult) -> tuple[int, set[int], str | None]:
        """Feed warm-ups from ``pos`` up to the first event that completes one.

        Returns where to stop, the events held back from windows (warming up a version
        that has nothing to fall back on), and the version whose warm-up is complete.
        """
        assert self.warmup_target is not None
        held: set[int] = set()
        for i in range(pos, len(events)):
            version = events[i]["model_version"]
            if version in self.references:
                continue
            rows = self.warmups.setdefault(version, [])
            rows.append(reference_row(events[i]))
            result.warmup += 1
            if self.reference_for(version) is None:
                held.add(i)
            if len(rows) >= self.warmup_target:
                return i + 1, held, version
        return len(events), held, None

    def _build_reference(self, version: str, result: IngestResult) -> None:
        rows = self.warmups.pop(version)
        try:
            self.references[version] = build_reference(
                rows, self.model, self.settings, version=version,
                origin=f"warmup:{self.warmup_target}")
        except ReferenceDataError as exc:  # nothing usable: warm up again
            result.problems.append(f"version {version!r}: {exc}")

    # -- closing --------------------------------------------------------------------
    def effective_watermark(self, now: float) -> int | None:
        if self.watermark_ms is None or self.last_arrival is None:
            return self.watermark_ms
        return self.watermark_ms + max(0, int((now - self.last_arrival) * 1000))

    def due_since(self, start_ms: int) -> float | None:
        """Wall-clock time at which the window became due (for the close-lag metric)."""
        if self.watermark_ms is None or self.last_arrival is None:
            return None
        end = self.windows[start_ms].end_ms + self.lateness_ms
        return self.last_arrival + max(0, end - self.watermark_ms) / 1000

    def due(self, now: float) -> list[int]:
        """Starts of open windows ready to close, oldest first."""
        if self.last_arrival is None and self.watermark_ms is not None:
            self.last_arrival = now  # restored state: the idle clock starts now
        return self._due(self.effective_watermark(now))

    def due_by_watermark(self) -> list[int]:
        """Like :meth:`due` without a wall clock (offline replay): event time only."""
        return self._due(self.watermark_ms)

    def _due(self, wm: int | None) -> list[int]:
        if wm is None:
            return []
        return sorted(ws for ws, w in self.windows.items()
                      if ws not in self.closing and w.end_ms + self.lateness_ms <= wm)

    def begin_close(self, start_ms: int) -> list[WindowEvaluation]:
        """Evaluate a due window, one evaluation per version; late events for it from now
        on are counted as late."""
        self.closing.add(start_ms)
        late, self.late_events = self.late_events, 0
        window = self.windows[start_ms]
        order = {v: i for i, v in enumerate(self.versions_seen)}

        def rank(key: str) -> tuple[int, int, str]:
            version, _, label = key.partition(SEP)
            return (order.get(version, len(order)), 1 if label else 0, label)

        out = []
        for key in sorted(window.slices, key=rank):
            sl = window.slices[key]
            reference = self.reference_by_key(sl.reference)
            if reference is not None and sl.segment is not None:
                reference = reference.segments.get(sl.segment)
            ev = evaluate_window(
                self.model, window, key.partition(SEP)[0], sl, reference,
                min_samples=self.min_samples, late_events=late, drift=self.settings.drift)
            if sl.segment is None:
                ev = replace(ev, serving=window.serving.get(key))
            counts = window.quality.get(key) if sl.segment is None else None
            if counts is not None:
                rules = self.rules_for(sl.reference)
                found = evaluate_quality(counts, rules, min_samples=self.min_samples)
                rates = counts.rates()
                bad = window.non_finite.get(key, {})
                total = counts.events + window.rejected.get(key, 0)
                for name, count in sorted(bad.items()):
                    rates.setdefault(name, {})["non_finite"] = count / total
                    if total >= self.min_samples and name in self.settings.features:
                        f = judge_non_finite(rules, name, count, total,
                                             self.settings.quality.max_non_finite_rate)
                        if f is not None:
                            found.append(f)
                ev = replace(ev, quality=found, quality_rates=rates)
            out.append(ev)
        return out

    def abort_close(self, start_ms: int, evaluations: list[WindowEvaluation]) -> None:
        """Publishing failed: keep the window open to close again later."""
        self.closing.discard(start_ms)
        if evaluations:
            self.late_events += evaluations[0].late_events

    def finish_close(self, start_ms: int) -> None:
        window = self.windows.pop(start_ms)
        self.closing.discard(start_ms)
        if self.closed_through_ms is None or window.end_ms > self.closed_through_ms:
            self.closed_through_ms = window.end_ms

    # -- state ----------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        # A window being closed is saved as open: if the worker dies before its outputs
        # are published, the restarted worker closes it again (same deterministic ids).
        return {
            "kind": STATE_KIND, "v": STATE_VERSION, "model": self.model,
            "partition": self.partition, "watermark": self.watermark_ms,
            "last_arrival": self.last_arrival, "closed_through": self.closed_through_ms,
            "late_events": self.late_events, "positions": self.positions,
            "changes": [t.to_state() for t in self.changes],
            "pending_detections": [d.to_dict() for d in self.pending_detections],
            "windows": [w.to_state() for w in self.windows.values()],
            "versions_seen": self.versions_seen,
            # Warm-up rows are not saved: they would make every batch's record megabytes
            # long. A restart during a warm-up starts that warm-up over.
            "references": {v: self.references[v].to_dict()
                           for v in self._saved_versions()},
            "performance": None if self.performance is None else self.performance.to_state(),
            "lifecycle": None if self.lifecycle is None else self.lifecycle.to_state(),
            "retrain": None if self.retrain is None else self.retrain.to_state(),
            "silent_since": self.silent_since, "clock": self.clock_ms,
            "outputs": [[target, event] for target, event in self.pending_outputs],
            "alerting": self.alerts.to_state(),
            "version_outputs": self.versions.to_state(),
        }

    def drain_records(self) -> dict[str, Any | None]:
        """Side records changed since the last drain (key suffix -> value, None: delete):
        the parts of the state too large to rewrite with every batch (the label join,
        performance windows). Saved next to the main state, once per batch."""
        return {} if self.performance is None else self.performance.drain_records()

    def records(self) -> dict[str, Any]:
        """Every live side record (what a restore reads back)."""
        return {} if self.performance is None else self.performance.records()

    def _saved_versions(self) -> list[str]:
        """Versions whose own references are saved: those open windows still use, and the
        newest others up to :data:`MAX_SAVED_REFERENCES`."""
        used = {sl.reference for w in self.windows.values() for sl in w.slices.values()}
        newest = [v for v in reversed(self.versions_seen) if v in self.references]
        keep = set(newest[:MAX_SAVED_REFERENCES]) | (used & set(self.references))
        return [v for v in self.references if v in keep]

    @classmethod
    def from_state(cls, state: Any, settings: MonitorSettings, reference: Reference | None,
                   records: Mapping[str, Any] | None = None) -> ModelMonitor:
        if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
            raise StateError("not a model-monitor state")
        if state.get("v") != STATE_VERSION:
            raise StateError(f"model-monitor state version {state.get('v')!r} is not supported "
                             f"(this build reads {STATE_VERSION})")
        try:
            m = cls(str(state["model"]), settings, reference)
            m.references = {str(v): Reference.from_dict(r)
                            for v, r in state["references"].items()}
            m.versions_seen = [str(v) for v in state["versions_seen"]]

            m.partition = integer(state["partition"], "partition", minimum=0, nullable=True)
            m.watermark_ms = integer(state["watermark"], "watermark", nullable=True)
            # Not restored: downtime is not idle time. The idle clock restarts with the
            # first wall-clock check (or event) after the restart.
            m.last_arrival = None
            m.closed_through_ms = integer(state["closed_through"], "closed_through",
                                          nullable=True)
            m.late_events = integer(state["late_events"], "late_events", minimum=0)
            m.positions = {str(k): integer(v, "position") for k, v in state["positions"].items()}
            saved_changes = {c.get("identity"): c for c in state.get("changes", [])}
            for tracker in m.changes:  # matched by identity: reordering is harmless
                if tracker.identity in saved_changes:
                    tracker.load(saved_changes[tracker.identity])
            m.pending_detections = [Detection.from_dict(d)
                                    for d in state.get("pending_detections", [])]
            for ws in state["windows"]:
                w = Window.from_state(ws)
                m.windows[w.start_ms] = w
            m.pending_outputs = saved_outputs(state.get("outputs", []), OUTPUT_TARGETS)
            if state.get("alerting") is not None:  # absent in states of earlier builds
                m.alerts.load(state["alerting"])
            if state.get("version_outputs") is not None:
                m.versions.load(state["version_outputs"])
            m.silent_since = integer(state.get("silent_since"), "silent_since", nullable=True)
            m.clock_ms = integer(state.get("clock"), "clock", nullable=True)
            if m.lifecycle is not None and state.get("lifecycle") is not None:
                m.lifecycle.load(state["lifecycle"])
            if m.retrain is not None and state.get("retrain") is not None:
                m.retrain.load(state["retrain"])
            saved_performance = state.get("performance")
            if m.performance is not None and saved_performance is not None:
                m.performance.load(saved_performance, records or {})
            # What loads must save again (the next batch writes it back): a number no
            # JSON encoder writes (an integer beyond 64 bits) fails here, not then.
            orjson.dumps(m.to_state(), option=orjson.OPT_SERIALIZE_NUMPY)
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt model-monitor state: {exc!r}") from None
        return m


OUTPUT_TARGETS = frozenset({"alerts", "evaluations", "retrain_triggers"})


def saved_outputs(saved: Any, targets: frozenset[str]) -> list[tuple[str, dict[str, Any]]]:
    """Outputs waiting to be published, from a state: ``[[target, CloudEvent], ...]``."""
    out = []
    for target, event in saved:
        if target not in targets or not isinstance(event, dict) or \
                not isinstance(event.get("data"), dict):
            raise ValueError(f"not an output for {sorted(targets)}: {str(target)[:50]!r}")
        if target == "alerts" and not is_alert_data(event["data"]):
            raise ValueError(f"not an alert: {str(event)[:100]}")
        out.append((target, event))
    return out


def _count_serving(window: Window, columns: Columns,
                   counted: Mapping[str, Sequence[Counted]] | None = None) -> None:
    """Latency and cost per version, for the events that carry them; ``counted``: per
    version, the latencies' counts made by decode processes, added instead of the values
    when they are of all the version's events here (:func:`_serving_counted`)."""
    rows = columns.events
    versions = columns.versions()
    if counted and all(_serving_counted(counted.get(version), len(idx))
                       for version, idx in versions.items()):
        for version, idx in versions.items():
            _serving_stats(window, version).add_latency_counts(
                [c.counts.latency for c in counted[version] if c.counts.latency is not None],
                len(idx))
        return
    latency, cost = field_values(rows, "latency_ms"), field_values(rows, "cost")
    n = len(rows)
    if latency.count(None) == n and cost.count(None) == n:
        return
    for version, idx in versions.items():
        stats = _serving_stats(window, version)
        if len(idx) == n:
            stats.add(latency, cost)
        else:
            stats.add([latency[i] for i in idx], [cost[i] for i in idx])


def _serving_stats(window: Window, version: str) -> ServingStats:
    """The window's serving figures of a version (new when it has none yet)."""
    stats = window.serving.get(version)
    if stats is None:
        stats = window.serving[version] = ServingStats()
    return stats


def _serving_counted(counted: Sequence[Counted] | None, n: int) -> bool:
    """Whether messages' counts hold the serving latency of the ``n`` events at hand:
    of all of them (none late), each message's counted (every event with a latency and
    none with a cost)."""
    if not counted:
        return False
    return sum(c.counts.n for c in counted) == n and all(
        c.counts.latency is not None for c in counted)
