"""All driftwarden metrics in one typed bundle (``driftwarden_*``, base units).

Labels are bounded: model, version, feature, statistic, topic, reason, kind, severity;
never ids or raw values. Per-feature series are capped (``metrics.max_feature_series``);
what the cap drops is counted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric

from app.events.fields import field_values, take, version_indices

log = logging.getLogger("driftwarden")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0)


class BatchHistogram:
    """A Prometheus histogram fed a whole batch at once (numpy), for per-event figures
    on the hot path: one ``searchsorted`` and ``bincount`` per batch and series instead
    of one ``observe`` per event. Exported like any histogram (``_bucket``, ``_sum``,
    ``_count``)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self.labelnames = list(labelnames)
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._series: dict[tuple[str, ...], tuple[np.ndarray[Any, Any], list[float]]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, labels: Sequence[str], values: np.ndarray[Any, Any]) -> None:
        if not values.size:
            return
        counts = np.bincount(np.searchsorted(self.bounds, values, side="left"),
                             minlength=self.bounds.size + 1)
        key = tuple(labels)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = (np.zeros(self.bounds.size + 1, np.int64), [0.0])
            series[0][:] += counts
            series[1][0] += float(values.sum())

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            snapshot = [(k, c.copy(), s[0]) for k, (c, s) in self._series.items()]
        for labels, counts, total in snapshot:
            cumulative = np.cumsum(counts).tolist()
            buckets = [(_bound(b), cumulative[i]) for i, b in enumerate(self.bounds.tolist())]
            buckets.append(("+Inf", cumulative[-1]))
            family.add_metric(list(labels), buckets, sum_value=total)
        yield family


def _bound(b: float) -> str:
    return repr(float(b))


class Metrics:
    def __init__(self, registry: CollectorRegistry, *, max_feature_series: int = 2000) -> None:
        self.registry = registry
        self.max_feature_series = max_feature_series
        self._feature_series: set[tuple[str, str, str, str]] = set()
        self.events = Counter(
            "driftwarden_events_total",
            "Events read, by topic, model and outcome (valid, duplicate, invalid, late, "
            "unknown_model); model is empty where none configured is named (input records, "
            "unparseable or unknown-model records).",
            ["topic", "model", "outcome"], registry=registry)
        self.messages = Counter(
            "driftwarden_messages_total", "Kafka messages read, by topic.", ["topic"],
            registry=registry)
        self.deadletters = Counter(
            "driftwarden_deadletters_total", "Records sent to the dead-letter topic, by reason.",
            ["topic", "reason"], registry=registry)
        self.windows_closed = Counter(
            "driftwarden_windows_closed_total", "Windows closed and evaluated.", ["model"],
            registry=registry)
        self.window_events = Gauge(
            "driftwarden_window_events", "Events in the last closed window.", ["model"],
            registry=registry)
        self.drift_score = Gauge(
            "driftwarden_drift_score",
            "Drift statistic of the last closed window, per version and feature.",
            ["model", "version", "feature", "statistic"], registry=registry)
        self.drift_threshold = Gauge(
            "driftwarden_drift_threshold", "Configured drift threshold, per severity.",
            ["model", "statistic", "severity"], registry=registry)
        self.alerts = Counter(
            "driftwarden_alerts_total", "Alert events published, by status (firing: a "
            "problem fired or escalated; resolved: it cleared). Source alerts have model \"\".",
            ["model", "kind", "severity", "status"], registry=registry)
        self.alerts_firing = Gauge(
            "driftwarden_alerts_firing", "Problems firing now (published, not silenced), "
            "per model (\"\" for sources), kind and severity.",
            ["model", "kind", "severity"], registry=registry)
        self.alerts_suppressed = Counter(
            "driftwarden_alerts_suppressed_total", "Alerts not published, by reason "
            "(silenced, cooldown, deduplicated).", ["model", "reason"], registry=registry)
        # (model label, book) -> firing problems by (kind, severity): every source's book
        # shares the model label "".
        self._firing: dict[tuple[str, str], dict[tuple[str, str], int]] = {}
        self.feature_series_dropped = Counter(
            "driftwarden_feature_series_dropped_total",
            "Per-feature samples not exported because the series cap was reached.",
            registry=registry)
        self.batch_events = Histogram(
            "driftwarden_batch_events", "Events per processed batch.",
            buckets=(1, 10, 50, 100, 500, 1000, 5000, 20000, 100000), registry=registry)
        self.decoded = Counter(
            "driftwarden_messages_decoded_total", "Input messages decoded, by where: "
            "the decode processes (pool) or the worker's thread (worker).",
            ["decoder"], registry=registry)
        self.batch_seconds = Histogram(
            "driftwarden_batch_processing_seconds", "Processing time per batch.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=registry)
        self.window_close_lag = Histogram(
            "driftwarden_window_close_lag_seconds",
            "Wall-clock time from a window becoming due to its outputs being published.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=registry)
        self.consumer_lag = Gauge(
            "driftwarden_consumer_lag_messages", "Records of an assigned input partition "
            "not yet processed (its high watermark minus the next offset to process).",
            ["topic", "partition"], registry=registry)
        self.watermark = Gauge(
            "driftwarden_watermark_timestamp_seconds", "Latest event time seen, per model.",
            ["model"], registry=registry)
        self.state_errors = Counter(
            "driftwarden_state_errors_total", "Saved states that could not be restored.",
            ["model"], registry=registry)
        self.late_events = Counter(
            "driftwarden_late_events_total", "Events that arrived after their window closed.",
            ["model"], registry=registry)
        self.quality_rate = Gauge(
            "driftwarden_quality_rate", "Share of the last closed window's events breaking "
            "a data-quality rule, per feature (rule: null, type_error, out_of_range, unseen, "
            "missing; feature @events: unexpected).", ["model", "version", "feature", "rule"],
            registry=registry)
        self.retrain_triggers = Counter(
            "driftwarden_retrain_triggers_total", "Retrain requests published.", ["model"],
            registry=registry)
        # -- sources
        self.source_last_event = Gauge(
            "driftwarden_source_last_event_timestamp_seconds",
            "Event time of the newest record of each source.", ["source"], registry=registry)
        self.source_records = Counter(
            "driftwarden_source_records_total", "Records received per source.", ["source"],
            registry=registry)
        # -- performance from delayed labels
        self.labels_joined = Counter(
            "driftwarden_labels_total",
            "Outcomes by what became of them: joined, duplicate, orphan (its prediction "
            "never came), too_late (past the label horizon), late (after the last "
            "checkpoint of the window), invalid.", ["model", "outcome"], registry=registry)
        self.predictions_unlabelled = Counter(
            "driftwarden_predictions_unlabelled_total",
            "Predictions that left the label join without a label (past the horizon, or "
            "over the pending budget).", ["model"], registry=registry)
        self.labels_pending = Gauge(
            "driftwarden_labels_pending", "Predictions waiting for their label, and early "
            "outcomes waiting for their prediction.", ["model", "side"], registry=registry)
        self.performance = Gauge(
            "driftwarden_model_performance",
            "A performance figure of the newest evaluated window checkpoint.",
            ["model", "version", "metric"], registry=registry)
        self.performance_baseline = Gauge(
            "driftwarden_model_performance_baseline", "The baseline the judged metric is "
            "compared with.", ["model", "version", "metric"], registry=registry)
        self.label_coverage = Gauge(
            "driftwarden_label_coverage_ratio",
            "Share of a window's predictions labelled, at each checkpoint delay (newest "
            "window evaluated there).", ["model", "version", "after"], registry=registry)
        self.predictions = Counter(
            "driftwarden_predictions_total", "Predictions read, per model and version.",
            ["model", "version"], registry=registry)
        self.latency = BatchHistogram(
            "driftwarden_prediction_latency_seconds", "The predictions' own latency "
            "(their latency_ms), per model and version.", ["model", "version"],
            LATENCY_BUCKETS, registry)
        self.cost = Counter(
            "driftwarden_prediction_cost_total", "Sum of the predictions' cost (the "
            "events' currency unit), per model and version.", ["model", "version"],
            registry=registry)
        self.window_latency = Gauge(
            "driftwarden_window_latency_seconds", "Prediction latency quantiles of the "
            "last closed window, by percentile (99: what latency_slo judges).",
            ["model", "version", "percentile"], registry=registry)
        self.window_cost = Gauge(
            "driftwarden_window_cost_per_1k_predictions", "Cost per 1000 predictions in "
            "the last closed window (what cost_budget judges).", ["model", "version"],
            registry=registry)
        self.slo_objective = Gauge(
            "driftwarden_slo_objective", "Configured serving objectives: latency_slo in "
            "seconds (p99), cost_budget per 1000 predictions.", ["model", "kind"],
            registry=registry)
        self.label_delay = Gauge(
            "driftwarden_label_delay_seconds", "Label delay quantiles of the newest "
            "evaluated window (time from prediction to its label).",
            ["model", "version", "percentile"], registry=registry)

    def observe_predictions(self, model: str, events: Sequence[Mapping[str, Any]]) -> None:
        """A batch's predictions of one model: counts, latency and cost per version."""
        for version, idx in version_indices(events).items():
            group = events if len(idx) == len(events) else take(events, idx)
            self.predictions.labels(model, version).inc(len(group))
            latency = field_values(group, "latency_ms")
            if None in latency:
                latency = [v for v in latency if v is not None]
            if latency:
                self.latency.observe_many((model, version),
                                          np.asarray(latency, dtype=np.float64) / 1000)
            costs = field_values(group, "cost")
            cost = 0.0 if costs.count(None) == len(costs) else \
                sum(float(v) for v in costs if v is not None)
            if cost:
                self.cost.labels(model, version).inc(cost)

    def set_serving(self, model: str, version: str, serving: Mapping[str, Any]) -> None:
        """Gauges from a closed window's serving section (its drift evaluation)."""
        latency, cost = serving.get("latency_ms"), serving.get("cost")
        if latency:
            for p in ("p50", "p90", "p99"):
                self.window_latency.labels(model, version, p[1:]).set(latency[p] / 1000)
        if cost:
            self.window_cost.labels(model, version).set(cost["per_1k"])

    def observe_alerts(self, model: str, published: Any, book: Any) -> None:
        """Alert events just published (CloudEvents) and the alert book they came from."""
        for e in published:
            data = e["data"]
            self.alerts.labels(model, data["kind"], data["severity"], data["status"]).inc()
        for reason, n in book.drain_suppressed().items():
            self.alerts_suppressed.labels(model, reason).inc(n)
        counts: dict[tuple[str, str], int] = {}
        for e in book.firing():
            key = (e["data"]["kind"], e["data"]["severity"])
            counts[key] = counts.get(key, 0) + 1
        before = set(self._firing.get((model, book.model), {}))
        self._firing[(model, book.model)] = counts
        for key in before | set(counts):
            total = sum(c.get(key, 0) for (label, _), c in self._firing.items()
                        if label == model)
            self.alerts_firing.labels(model, *key).set(total)

    def set_drift(self, model: str, version: str, feature: str, statistic: str,
                  value: float) -> None:
        key = (model, version, feature, statistic)
        if key not in self._feature_series:
            if len(self._feature_series) >= self.max_feature_series:
                self.feature_series_dropped.inc()
                return
            self._feature_series.add(key)
        self.drift_score.labels(*key).set(value)

    def set_quality(self, model: str, version: str, feature: str, rule: str,
                    rate: float) -> None:
        """A quality rate, under the same per-feature series cap as drift scores."""
        key = (model, version, feature, f"quality:{rule}")
        if key not in self._feature_series:
            if len(self._feature_series) >= self.max_feature_series:
                self.feature_series_dropped.inc()
                return
            self._feature_series.add(key)
        self.quality_rate.labels(model, version, feature, rule).set(rate)

    def observe_performance(self, model: str, update: Any, tracker: Any) -> None:
        """Counters of one batch's label join (a ``PerformanceUpdate``)."""
        for outcome, n in (("joined", update.labelled), ("duplicate", update.duplicates),
                           ("orphan", update.orphans), ("too_late", update.too_late),
                           ("late", update.late_labels), ("invalid", update.invalid_labels)):
            if n:
                self.labels_joined.labels(model, outcome).inc(n)
        if update.expired:
            self.predictions_unlabelled.labels(model).inc(update.expired)
        if tracker is not None:
            self.labels_pending.labels(model, "predictions").set(tracker.join.pending_count)
            self.labels_pending.labels(model, "outcomes").set(tracker.join.orphan_count)

    def observe_performance_evaluation(self, model: str, data: dict[str, Any]) -> None:
        """Gauges from a published performance evaluation (``data`` of its CloudEvent)."""
        if data.get("kind") != "performance":
            return
        try:
            self._performance_gauges(model, data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # an evaluation restored from a saved state, published already: its gauges
            # are lost, never the worker
            log.warning("model %r: a performance evaluation without its figures (%r): "
                        "not in the metrics", model, exc)

    def _performance_gauges(self, model: str, data: dict[str, Any]) -> None:
        version = data["model_version"]
        perf = data["performance"]
        for name, value in perf["figures"].items():
            if value is not None and not name.endswith(("_low", "_high", "_error")):
                self.performance.labels(model, version, name).set(value)
        if perf["baseline"] is not None:
            self.performance_baseline.labels(model, version, perf["metric"]).set(
                perf["baseline"])
        if data["label_coverage"] is not None:
            self.label_coverage.labels(model, version, data["after"]).set(data["label_coverage"])
        for q, value in (data["label_delay_seconds"] or {}).items():
            self.label_delay.labels(model, version, q[1:]).set(value)
