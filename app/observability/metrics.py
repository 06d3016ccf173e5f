"""All driftwarden metrics in one typed bundle (``driftwarden_*``, base units).

Labels are bounded: model, version, feature, statistic, topic, reason, kind, severity;
never ids or raw values. Per-feature series are capped (``metrics.max_feature_series``);
what the cap drops is counted.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry, *, max_feature_series: int = 2000) -> None:
        self.registry = registry
        self.max_feature_series = max_feature_series
        self._feature_series: set[tuple[str, str, str, str]] = set()
        self.events = Counter(
            "driftwarden_events_total",
            "Events read, by topic and outcome (valid, invalid, late, unknown_model).",
            ["topic", "outcome"], registry=registry)
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
            "driftwarden_alerts_total", "Alert events published.",
            ["model", "kind", "severity"], registry=registry)
        self.feature_series_dropped = Counter(
            "driftwarden_feature_series_dropped_total",
            "Per-feature samples not exported because the series cap was reached.",
            registry=registry)
        self.batch_events = Histogram(
            "driftwarden_batch_events", "Events per processed batch.",
            buckets=(1, 10, 50, 100, 500, 1000, 5000, 20000, 100000), registry=registry)
        self.batch_seconds = Histogram(
            "driftwarden_batch_processing_seconds", "Processing time per batch.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=registry)
        self.window_close_lag = Histogram(
            "driftwarden_window_close_lag_seconds",
            "Wall-clock time from a window becoming due to its outputs being published.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=registry)
        self.watermark = Gauge(
            "driftwarden_watermark_timestamp_seconds", "Latest event time seen, per model.",
            ["model"], registry=registry)
        self.state_errors = Counter(
            "driftwarden_state_errors_total", "Saved states that could not be restored.",
            ["model"], registry=registry)
        self.late_events = Counter(
            "driftwarden_late_events_total", "Events that arrived after their window closed.",
            ["model"], registry=registry)

    def set_drift(self, model: str, version: str, feature: str, statistic: str,
                  value: float) -> None:
        key = (model, version, feature, statistic)
        if key not in self._feature_series:
            if len(self._feature_series) >= self.max_feature_series:
                self.feature_series_dropped.inc()
                return
            self._feature_series.add(key)
        self.drift_score.labels(*key).set(value)
