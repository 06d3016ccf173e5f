"""The monitor file: YAML loaded into one frozen, typed settings object.

Every error names the file, the path inside it and what was expected::

    monitor.yaml: models.churn.drift.warning: Input should be a valid number (got 'high')
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from app.durations import parse_duration
from app.errors import ConfigError
from app.settings_alerting import AlertingSettings, AlertKind, ModelAlerting

Duration = Annotated[float, BeforeValidator(parse_duration)]
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Frozen):
    """Where the brokers are. ``bootstrap`` absent: the embedded broker (dev and demo only)."""

    bootstrap: str | None = None
    partitions: int = Field(4, ge=1, le=1024)
    replication_factor: int = Field(1, ge=1, le=16)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password_env: str | None = Field(
        None, description="name of the environment variable holding the SASL password"
    )
    ssl_cafile: str | None = None
    # Mutual TLS: the client's certificate (PEM; it may hold the key too) and private
    # key, and the variable holding the key's passphrase when the key is encrypted.
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password_env: str | None = Field(
        None, description="name of the environment variable holding the private key's "
                          "passphrase"
    )
    rebalance_timeout: Duration = 60.0
    session_timeout: Duration = 30.0
    # How long the broker may hold a fetch that finds no new records (see
    # app.batch_consumer.FetchThread: a longer wait stalls the partitions with a backlog).
    fetch_max_wait: Duration = Field(0.1, gt=0, le=30)


class TopicSettings(_Frozen):
    prefix: str = ""
    predictions: str = "mlmon.predictions"
    outcomes: str = "mlmon.outcomes"
    inputs: str = "mlmon.inputs"
    model_events: str = "mlmon.model-events"
    alerts: str = "mlmon.alerts"
    retrain_triggers: str = "mlmon.retrain-triggers"
    evaluations: str = "mlmon.evaluations"
    deadletter: str = "mlmon.deadletter"
    references: str = "mlmon.references"  # compacted: the newest reference per model version

    def name(self, field: str) -> str:
        return f"{self.prefix}{getattr(self, field)}"

    def all_names(self) -> list[str]:
        return [self.name(f) for f in type(self).model_fields if f != "prefix"]


class MetricsSettings(_Frozen):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)
    max_feature_series: int = Field(2000, ge=0)


class WorkerSettings(_Frozen):
    app_id: str = "driftwarden"
    store: Literal["memory://"] = "memory://"
    data_dir: str = ".driftwarden-data"
    batch_size: int = Field(1000, ge=1, le=100_000)
    # How long a batch waits to fill (faust's take_events): sketches update per batch
    # with numpy, whose per-call cost a batch of a few events would pay per event.
    batch_within: Duration = 0.05
    # ...or once its messages' values reach this size (array messages: a batch of a few
    # thousand events is complete at once, without waiting for batch_within).
    batch_max_bytes: int = Field(1024 * 1024, ge=1)
    max_message_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # Rejected values up to this size are dead-lettered whole; larger ones are cut to it
    # and carry their original size and SHA-256 in headers.
    deadletter_max_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_array_elements: int = Field(100_000, ge=1)
    tick_interval: Duration = 1.0
    # How often the model states are written to the changelog while batches keep coming
    # (Pipeline.checkpoint): a batch's offsets are committable only once a checkpoint
    # after it is on the broker. 0: after every batch.
    checkpoint_interval: Duration = Field(1.0, ge=0, le=600)
    # Messages a worker may hold fetched but unprocessed (faust's stream buffer): bounds
    # memory when messages are large arrays.
    stream_buffer: int = Field(256, ge=1, le=100_000)
    # Processes decoding array messages into columns beside the worker's thread
    # (app.events.decode_pool); 0: the worker's thread decodes them; "auto": one when the
    # worker may run on two CPUs or more (decode_process_count).
    decode_processes: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = "auto"
    # The performance detectors' per-label loops (ADWIN, HDDM_A) compiled by numba
    # (app.detectors.kernels): the same results, a tenth of the CPU or less; false keeps
    # numba out of the worker (about 120 MiB of its memory once loaded).
    compiled_detectors: bool = True

    def decode_process_count(self, cpus: int | None = None) -> int:
        """``decode_processes``, with ``"auto"`` resolved for a worker that may run on
        ``cpus`` CPUs (default: those this process may run on)."""
        if self.decode_processes != "auto":
            return self.decode_processes
        if cpus is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
                else os.cpu_count() or 1
        return 1 if cpus >= 2 else 0


class Defaults(_Frozen):
    window: Duration = 3600.0
    hop: Duration | None = None
    lateness: Duration = 300.0
    min_samples: int = Field(200, ge=1)

    @field_validator("window")
    @classmethod
    def _positive_window(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("window must be longer than 0")
        return v


class VolumeSettings(_Frozen):
    """Expected records per window of a source: ``expected`` (configured) or learned as
    the median of the first ``learn_windows`` windows. A window under ``min_ratio`` x
    expected is a collapse, over ``max_ratio`` x a surge."""

    expected: int | None = Field(None, ge=1)
    learn_windows: int = Field(3, ge=1, le=1000)
    min_ratio: float = Field(0.5, ge=0, lt=1)
    max_ratio: float = Field(3.0, gt=1)


class SourceSettings(_Frozen):
    """An upstream source system: its owner, freshness SLO and expected volume."""

    owner: str | None = None
    freshness: Duration | None = None  # source_stale when silent longer than this
    window: Duration | None = None  # volume and schema windows (default: defaults.window)
    volume: VolumeSettings = VolumeSettings()
    # Record fields checked for schema changes (default: every field seen).
    ignore_fields: tuple[str, ...] = ()
    # Drift of the source's fields (the model features it feeds) against its own first
    # records.
    drift: bool = True
    reference_warmup: int = Field(1000, ge=10, le=1_000_000)


class Owners(_Frozen):
    monitoring: str | None = None
    on_call: str | None = None
    data: str | None = None


class FeatureSettings(_Frozen):
    type: Literal["numeric", "categorical"]
    source: str | None = None
    range: tuple[float, float] | None = None
    values: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> FeatureSettings:
        if self.range is not None:
            if self.type != "numeric":
                raise ValueError("'range' applies to numeric features only")
            if not self.range[0] <= self.range[1]:  # NaN compares false: refused too
                raise ValueError(
                    f"range must be [low, high] with low <= high, got {list(self.range)}")
        if self.values is not None and self.type != "categorical":
            raise ValueError("'values' applies to categorical features only")
        return self


class ReferenceSettings(_Frozen):
    """Where a model's reference comes from: a data or reference file, or the first N events."""

    file: str | None = None
    warmup: int | None = Field(None, ge=10, le=1_000_000)

    @model_validator(mode="after")
    def _one_of(self) -> ReferenceSettings:
        if (self.file is None) == (self.warmup is None):
            raise ValueError("give exactly one of 'file' or 'warmup'")
        return self


StatisticName = Literal["auto", "psi", "jensen_shannon", "hellinger", "chi2", "ks",
                        "wasserstein"]


class DriftSettings(_Frozen):
    """How drift is measured and judged.

    ``statistic`` applies to the feature types it supports (``ks`` and ``wasserstein``:
    numeric); other features, and every feature under ``auto``, use the automatic choice
    (see ``app.detectors.statistics.choose_statistic``). ``warning``/``critical`` set the
    named statistic's thresholds; ``thresholds`` sets any statistic's; otherwise the
    registry's defaults apply. A feature alerts only when its statistic reaches the
    warning threshold **and** its Benjamini-Hochberg adjusted p-value across the
    window's features is at most ``fdr``.
    """

    statistic: StatisticName = "auto"
    warning: float | None = Field(None, gt=0)
    critical: float | None = Field(None, gt=0)
    thresholds: dict[str, tuple[float, float]] = {}
    fdr: float = Field(0.005, gt=0, lt=1)
    bins: int = Field(10, ge=2, le=100)
    max_categories: int = Field(50, ge=1, le=10_000)

    @model_validator(mode="after")
    def _ordered(self) -> DriftSettings:
        from app.detectors.statistics import STATISTICS

        if (self.warning is not None or self.critical is not None) and self.statistic == "auto":
            raise ValueError("warning/critical apply to a named statistic; with statistic: auto "
                             "set thresholds: {<statistic>: [warning, critical]}")
        for name, (w, c) in self.thresholds.items():
            if name not in STATISTICS:
                raise ValueError(f"thresholds: unknown statistic {name!r}; known: "
                                 f"{sorted(STATISTICS)}")
            if not 0 < w <= c:
                raise ValueError(f"thresholds.{name}: need 0 < warning <= critical, got "
                                 f"[{w}, {c}]")
        if self.statistic != "auto":
            w, c = self.thresholds_for(self.statistic)
            if c < w:
                raise ValueError(f"critical ({c}) must be at least warning ({w})")
        return self

    def thresholds_for(self, statistic: str) -> tuple[float, float]:
        """(warning, critical) for a statistic."""
        from app.detectors.statistics import STATISTICS

        spec = STATISTICS[statistic]
        w, c = self.thresholds.get(statistic, (spec.warning, spec.critical))
        if statistic == self.statistic:
            w = self.warning if self.warning is not None else w
            c = self.critical if self.critical is not None else c
        return w, c


class ChangeDetectorSettings(_Frozen):
    """A streaming change detector on one per-event signal."""

    signal: str = Field(description="feature.<name>, prediction, or scores.<class>")
    detector: Literal["adwin", "page_hinkley", "kswin"] = "adwin"
    params: dict[str, float | int | bool] = {}
    every: int = Field(1, ge=1, le=1_000_000,
                       description="feed every Nth value (KSWIN costs ~0.3 ms a value)")
    severity: Literal["warning", "critical"] = "warning"

    @field_validator("signal")
    @classmethod
    def _signal_form(cls, v: str) -> str:
        if v == "prediction" or (v.startswith(("feature.", "scores.")) and v[-1] != "."):
            return v
        raise ValueError("signal must be feature.<name>, prediction or scores.<class>")

    @model_validator(mode="after")
    def _params_valid(self) -> ChangeDetectorSettings:
        from app.detectors.streaming import make_detector

        make_detector(self.detector, **self.params)  # ValueError names the bad value
        return self


PerformanceMetric = Literal["accuracy", "precision", "recall", "f1", "macro_f1", "log_loss",
                            "roc_auc", "mae", "rmse", "mape"]
CLASSIFICATION_ONLY = frozenset({"accuracy", "precision", "recall", "f1", "macro_f1",
                                 "log_loss", "roc_auc"})
BINARY_ONLY = frozenset({"precision", "recall", "f1", "log_loss", "roc_auc"})
ERROR_DETECTORS = frozenset({"ddm", "eddm", "hddm_a", "hddm_w"})


class ConceptDetectorSettings(_Frozen):
    """A concept-drift detector on the per-prediction error stream of each model version.

    ``signal: error`` is 1 for a wrong prediction and 0 for a right one (classification;
    DDM, EDDM, HDDM_A and HDDM_W read only this). ``signal: loss`` is the per-prediction
    Brier loss ``(score - label)²`` (binary models with scores; bounded in [0, 1], so
    ADWIN's bound holds, where the unbounded log loss of a confident mistake makes it
    false-alarm), else the error indicator, or the absolute error (regression), for ADWIN
    or Page-Hinkley.
    """

    detector: Literal["ddm", "eddm", "hddm_a", "hddm_w", "adwin", "page_hinkley"]
    signal: Literal["error", "loss"] = "error"
    params: dict[str, float | int | bool] = {}
    severity: Literal["warning", "critical"] = "warning"

    @model_validator(mode="after")
    def _valid(self) -> ConceptDetectorSettings:
        from app.detectors.streaming import make_detector

        if self.detector in ERROR_DETECTORS and self.signal != "error":
            raise ValueError(f"{self.detector} reads the error indicator: use signal: error")
        make_detector(self.detector, **self.params)  # ValueError names the bad value
        return self


# Chosen on seeded Bernoulli(0.12) error streams: no false alarm over 10 x 100 000 values,
# and a fall from 0.88 to 0.82 accuracy found within about 1 000 - 4 000 labels.
# Built without validation (model_construct): validating builds a river detector, and
# importing river (with pandas and scipy) costs ~140 MB in every process. These values
# are tested to be valid (tests/unit/test_settings.py).
DEFAULT_CONCEPT_DETECTORS = (
    ConceptDetectorSettings.model_construct(detector="hddm_a", signal="error",
                                            params={"drift_confidence": 0.0001},
                                            severity="warning"),
    ConceptDetectorSettings.model_construct(detector="adwin", signal="loss",
                                            params={"delta": 0.002}, severity="warning"),
)
DEFAULT_REGRESSION_DETECTORS = (DEFAULT_CONCEPT_DETECTORS[1],)


class PerformanceSettings(_Frozen):
    """Model performance from delayed ground truth (``mlmon.outcomes``).

    Outcomes join predictions by ``prediction_id`` within ``label_horizon`` of the
    prediction's event time. A window's figures are evaluated at checkpoints: ``after``
    each delay past the window's end (default: the window length doubling up to the
    horizon, and the horizon itself), once labels up to then are in. ``metric`` is judged
    against ``baseline`` (configured; else the ``metrics`` of the version's ``deployed`` or
    ``retrain_completed`` event; else learned from the version's first
    ``baseline_windows`` settled windows): ``performance_drop`` fires when the whole
    confidence interval of the window's metric is worse than baseline -/+ ``max_drop``,
    with at least ``min_labels`` labels.
    """

    metric: PerformanceMetric | None = None  # accuracy for classification, mae for regression
    positive_class: str = "1"  # binary models; booleans are the classes "1" and "0"
    score_key: str | None = None  # the ``scores`` key of the positive class (default: it)
    baseline: float | None = Field(None, allow_inf_nan=False)
    max_drop: float = Field(0.03, ge=0)
    min_labels: int = Field(200, ge=1)
    baseline_windows: int = Field(3, ge=1, le=1000)
    label_horizon: Duration = 7 * 86400.0
    orphan_horizon: Duration = 86400.0
    max_label_lag: Duration | None = Field(
        None, description="how far the outcome stream may lag the predictions before "
                          "checkpoints are evaluated without waiting (default: the horizon)")
    after: tuple[Duration, ...] | None = None
    max_pending: int = Field(1_000_000, ge=1)
    max_orphans: int = Field(100_000, ge=1)
    min_coverage: float | None = Field(None, gt=0, le=1)
    coverage_after: Duration | None = None  # the checkpoint judged (default: the last)
    # None: hddm_a on the error and adwin on the loss (classification), adwin on the
    # absolute error (regression); () turns concept-drift detection off.
    concept_drift: tuple[ConceptDetectorSettings, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> PerformanceSettings:
        if self.label_horizon <= 0:
            raise ValueError("label_horizon must be longer than 0")
        if self.after is not None:
            if not self.after or list(self.after) != sorted(set(self.after)):
                raise ValueError("after: give increasing delays, e.g. [0s, 1h, 1d]")
            if self.after[-1] > self.label_horizon:
                raise ValueError("after: no checkpoint may come later than label_horizon")
        if self.coverage_after is not None and self.coverage_after > self.label_horizon:
            raise ValueError("coverage_after must not exceed label_horizon")
        return self


class QualitySettings(_Frozen):
    """Data-quality rules evaluated per window on a model's predictions.

    Rates are shares of the window's events. Per feature: ``null`` (value null),
    ``type`` (a string where a number is expected, or a container), ``out_of_range``
    (outside the configured ``range``, else outside the reference's observed range
    widened by ``range_margin`` of its span), ``unseen`` (a category outside the
    configured ``values``, else outside the reference's vocabulary), ``missing`` (the
    feature absent from ``features``). Per event: ``unexpected`` (a feature that is not
    configured). ``null`` is judged against ``max_null_rate`` or, when the reference had
    nulls, twice its null rate plus one point, whichever is higher.
    """

    enabled: bool = True
    max_null_rate: float = Field(0.05, ge=0, le=1)
    max_type_error_rate: float = Field(0.01, ge=0, le=1)
    max_out_of_range_rate: float = Field(0.01, ge=0, le=1)
    max_unseen_rate: float = Field(0.05, ge=0, le=1)
    max_missing_rate: float = Field(0.01, ge=0, le=1)
    max_unexpected_rate: float = Field(0.01, ge=0, le=1)
    max_non_finite_rate: float = Field(0.001, ge=0, le=1)
    range_margin: float = Field(0.1, ge=0)
    critical_factor: float = Field(3.0, ge=1, description="critical at this many times the "
                                                           "threshold (at least 10 points)")


class RetrainSettings(_Frozen):
    """When a model should be retrained, and how long a retrain may take."""

    on: tuple[AlertKind, ...] = ()  # alert kinds that call for a retrain
    cooldown: Duration | None = None  # minimum time between two triggers
    max_per_day: int | None = Field(None, ge=1, description="triggers per UTC day")
    # When a performance alert is the reason: at least this share of the window labelled.
    min_label_coverage: float | None = Field(None, gt=0, le=1)
    max_age: Duration | None = None  # retrain_overdue past this since the last completion
    expected_duration: Duration | None = None  # retrain_stuck past this after a start
    start_within: Duration | None = None  # retrain_stuck when a trigger is not started

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 reads an unquoted ``on:`` key as the boolean true.
        if isinstance(data, dict) and True in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data


class SloSettings(_Frozen):
    """Serving objectives judged per window and version (see ``app.policy.slo``)."""

    latency_p99_ms: float | None = Field(None, gt=0, description="latency_slo above this "
                                         "p99 of the predictions' latency_ms")
    cost_per_1k: float | None = Field(None, gt=0, description="cost_budget above this cost "
                                      "per 1 000 predictions")
    critical_factor: float = Field(2.0, gt=1, description="critical past this multiple")
    min_samples: int | None = Field(None, ge=1, description="predictions a window needs to "
                                    "be judged (default: the model's min_samples)")


class RollbackSettings(_Frozen):
    """Rollback advice from the model's outputs (see ``app.core.versions``); the
    performance variant follows ``performance``."""

    # After a deploy, compare the new version's outputs with the previous version's.
    on_prediction_drift: bool = True
    previous_windows: int = Field(12, ge=1, le=1000,
                                  description="the previous version's most recent windows "
                                              "that its outputs are compared with")
    judge_windows: int = Field(24, ge=1, le=100_000,
                               description="windows of a new version judged after its deploy")


class ModelSettings(_Frozen):
    owners: Owners = Owners()
    task: Literal["binary_classification", "multiclass_classification", "regression"] = (
        "binary_classification"
    )
    features: dict[str, FeatureSettings]
    reference: ReferenceSettings
    drift: DriftSettings = DriftSettings()
    # Drift of the model's outputs (classes or values, and class scores), compared with
    # the reference's predictions when the reference has them.
    prediction_drift: bool = True
    max_score_classes: int = Field(20, ge=1, le=1000)
    change_detectors: tuple[ChangeDetectorSettings, ...] = ()
    # Drift per segment: tag keys of the events' ``segment`` with bounded cardinality;
    # beyond max_segment_values distinct values per key, the rest share "__other__".
    segments: tuple[str, ...] = ()
    max_segment_values: int = Field(20, ge=1, le=1000)
    min_segment_rows: int = Field(200, ge=10,
                                  description="reference rows a segment value needs for a "
                                              "reference of its own")
    window: Duration | None = None
    hop: Duration | None = None
    lateness: Duration | None = None
    min_samples: int | None = Field(None, ge=1)
    performance: PerformanceSettings | None = None
    quality: QualitySettings = QualitySettings()
    freshness: Duration | None = None  # model_silent when no prediction for this long
    retrain: RetrainSettings | None = None
    rollback: RollbackSettings = RollbackSettings()
    slo: SloSettings = SloSettings()
    alerting: ModelAlerting = ModelAlerting()

    @field_validator("features")
    @classmethod
    def _some_features(cls, v: dict[str, FeatureSettings]) -> dict[str, FeatureSettings]:
        if not v:
            raise ValueError("a model needs at least one feature")
        return v

    @model_validator(mode="after")
    def _detector_signals_known(self) -> ModelSettings:
        for i, cd in enumerate(self.change_detectors):
            if cd.signal.startswith("feature."):
                name = cd.signal[8:]
                feature = self.features.get(name)
                if feature is None:
                    raise ValueError(f"change_detectors.{i}.signal: unknown feature {name!r}")
                if feature.type != "numeric":
                    raise ValueError(f"change_detectors.{i}.signal: feature {name!r} is not "
                                     "numeric")
        return self

    @model_validator(mode="after")
    def _performance_fits_task(self) -> ModelSettings:
        perf = self.performance
        if perf is None:
            return self
        metric = self.performance_metric
        if self.task == "regression":
            if metric in CLASSIFICATION_ONLY:
                raise ValueError(f"performance.metric: {metric} needs a classification task")
            for i, cd in enumerate(perf.concept_drift or ()):
                if cd.signal == "error":
                    raise ValueError(f"performance.concept_drift.{i}: a regression model has "
                                     "no error indicator; use signal: loss with adwin or "
                                     "page_hinkley")
        else:
            if metric not in CLASSIFICATION_ONLY:
                raise ValueError(f"performance.metric: {metric} needs a regression task")
            if self.task == "multiclass_classification" and metric in BINARY_ONLY:
                raise ValueError(f"performance.metric: {metric} is for binary models; "
                                 "multiclass models report accuracy and macro_f1")
        return self

    @property
    def concept_detectors(self) -> tuple[ConceptDetectorSettings, ...]:
        """The concept-drift detectors in effect (configured, else the task's defaults)."""
        perf = self.performance
        if perf is None:
            return ()
        if perf.concept_drift is not None:
            return perf.concept_drift
        return DEFAULT_REGRESSION_DETECTORS if self.task == "regression" \
            else DEFAULT_CONCEPT_DETECTORS

    @property
    def performance_metric(self) -> str:
        """The judged metric: configured, else accuracy (classification) or mae."""
        perf = self.performance
        if perf is not None and perf.metric is not None:
            return perf.metric
        return "mae" if self.task == "regression" else "accuracy"


class MonitorSettings(_Frozen):
    """The whole monitor file."""

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    metrics: MetricsSettings = MetricsSettings()
    worker: WorkerSettings = WorkerSettings()
    defaults: Defaults = Defaults()
    sources: dict[str, SourceSettings] = {}
    models: dict[str, ModelSettings]
    alerting: AlertingSettings = AlertingSettings()
    base_dir: str = Field(".", exclude=True)

    @field_validator("models")
    @classmethod
    def _model_names(cls, v: dict[str, ModelSettings]) -> dict[str, ModelSettings]:
        if not v:
            raise ValueError("at least one model must be configured")
        for name in v:
            if not MODEL_NAME_RE.match(name):
                raise ValueError(f"model name {name!r} must match [A-Za-z0-9._-]{{1,64}}")
        return v

    @model_validator(mode="after")
    def _hops_divide_windows(self) -> MonitorSettings:
        for name in self.models:
            window, hop = self.window_of(name), self.hop_of(name)
            w_ms, h_ms = round(window * 1000), round(hop * 1000)
            if h_ms <= 0 or h_ms > w_ms or w_ms % h_ms:
                raise ValueError(
                    f"models.{name}: hop ({hop:g}s) must divide the window ({window:g}s) "
                    "and be no longer than it")
        return self

    @model_validator(mode="after")
    def _sources_known(self) -> MonitorSettings:
        for mname, model in self.models.items():
            for fname, feat in model.features.items():
                if feat.source is not None and feat.source not in self.sources:
                    raise ValueError(
                        f"models.{mname}.features.{fname}.source: unknown source "
                        f"{feat.source!r}; known: {sorted(self.sources)}"
                    )
        return self

    # -- effective per-model values -------------------------------------------------
    def window_of(self, model: str) -> float:
        return self.models[model].window or self.defaults.window

    def hop_of(self, model: str) -> float:
        """How often a window starts: the window itself (tumbling) unless ``hop`` is set."""
        m = self.models[model]
        return m.hop or self.defaults.hop or self.window_of(model)

    def lateness_of(self, model: str) -> float:
        m = self.models[model]
        return self.defaults.lateness if m.lateness is None else m.lateness

    def min_samples_of(self, model: str) -> int:
        return self.models[model].min_samples or self.defaults.min_samples

    def resolve_path(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir) / p


# A configuration key that may hold a secret: its value is never shown in an error.
_SECRETISH = re.compile(r"pass|secret|token|credential|private", re.IGNORECASE)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(_shown(part, quote=False) for part in loc)


def _shown(value: Any, *, quote: bool = True) -> str:
    """A value for an error message: text (a lone surrogate escaped), cut to 100
    characters (an integer of more digits than Python prints, 4 300, by its size)."""
    try:
        text = repr(value) if quote else str(value)
    except ValueError:
        text = f"<an integer of {value.bit_length()} bits>"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= 100 else text[:97] + "..."


def settings_from_mapping(data: Any, *, file: str = "<config>", base_dir: str = ".",
                          env: Mapping[str, str] | None = None) -> MonitorSettings:
    """Validate a mapping (parsed YAML) into settings; ``env`` overrides (tests pass their own)."""
    if not isinstance(data, dict):
        raise ConfigError(
            file, [("", f"expected a mapping at the top level, got {type(data).__name__}")])
    not_text = _lone_surrogates(data)
    if not_text:
        raise ConfigError(file, [(where, "a lone UTF-16 surrogate (\\ud800-\\udfff) is not "
                                         "text") for where in not_text[:10]])
    env = os.environ if env is None else env
    data = dict(data)
    bootstrap = env.get("DRIFTWARDEN_BOOTSTRAP")
    if bootstrap:
        kafka = dict(data.get("kafka") or {})
        kafka["bootstrap"] = bootstrap
        data["kafka"] = kafka
    metrics_host = env.get("DRIFTWARDEN_METRICS_HOST")  # e.g. 0.0.0.0 in a container
    if metrics_host:
        metrics = dict(data.get("metrics") or {})
        metrics["host"] = metrics_host
        data["metrics"] = metrics
    data["base_dir"] = base_dir
    try:
        return MonitorSettings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            secretish = any(isinstance(part, str) and _SECRETISH.search(part)
                            for part in err["loc"])
            if secretish and err["type"] == "extra_forbidden" and err["loc"][0] == "kafka":
                msg = (f"{msg}: secrets never go in the file; put the SASL password in an "
                       "environment variable and name it in kafka.sasl_password_env")
            elif secretish and err["type"] == "extra_forbidden":
                msg = f"{msg}: secrets never go in the file (read from the environment)"
            elif "input" in err and err["type"] not in ("missing",) and not secretish \
                    and not isinstance(err["input"], dict | list):
                # (a key that looks like a secret's never has its value repeated: it may
                # be a password written where its variable's name belongs)
                msg = f"{msg} (got {_shown(err['input'])})"
            problems.append((_loc(err["loc"]), msg))
        raise ConfigError(file, problems) from None


def _lone_surrogates(data: Any) -> list[str]:
    """Paths of the keys and strings that UTF-8 cannot hold (YAML reads "\\ud800").

    Each container once: YAML aliases share them (``&a [*a]`` even contains itself).
    """
    found = []
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict | list):
            if id(value) in seen:
                continue
            seen.add(id(value))
        items = value.items() if isinstance(value, dict) else \
            enumerate(value) if isinstance(value, list) else ()
        for k, v in items:
            where = f"{path}.{_shown(k, quote=False)}" if path else _shown(k, quote=False)
            if isinstance(k, str) and not _is_text(k):
                found.append(where)
            stack.append((where, v))
        if isinstance(value, str) and not _is_text(value):
            found.append(path)
    return sorted(found)


def _is_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> MonitorSettings:
    """Load and validate a monitor file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            str(path), [("", f"cannot read the file: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [("", f"the file is not UTF-8 text: {exc}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [(where, f"not valid YAML: {problem}")]) from None
    except RecursionError:  # PyYAML recurses once per level
        raise ConfigError(str(path), [("", "not valid YAML: nested too deeply")]) from None
    except ValueError as exc:  # a scalar its constructor refuses: 2024-02-30, 5000 digits
        raise ConfigError(str(path), [("", f"not valid YAML: {str(exc)[:200]}")]) from None
    return settings_from_mapping(data, file=str(path), base_dir=str(path.parent), env=env)
