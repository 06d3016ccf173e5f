"""Fuzzing the state loaders: a corrupt changelog record fails with StateError, always.

Real states are built by running a model monitor (every feature of the core on:
segments, change detectors, performance with concept-drift detectors, serving SLOs,
retrain lifecycle, alert episodes, rollback judging) and a source monitor over a few
windows, then mutated (keys dropped, values of the wrong type, negative or non-finite
numbers, integers beyond 64 bits, lists cut short, grown or replaced). Every loader —
sketches, detectors, quality counts, performance metrics and tracker, policy books,
windows, the model monitor and the sources engine — either raises
:class:`~app.errors.StateError` or returns an object; the two top-level loaders' objects
are also usable: they ingest, close windows and save again (a restored state the next
batch cannot write back would crash the worker batch after batch).
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from fuzz_support import mutated
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from app.core.changes import Detection
from app.core.engine import Engine
from app.core.monitor import ModelMonitor
from app.core.serving import ServingStats
from app.core.windows import Slice, Window
from app.detectors.streaming import STREAM_DETECTORS, detector_from_state, make_detector
from app.errors import StateError
from app.observability import Metrics
from app.performance.exactsum import ExactSum
from app.performance.metrics import ClassificationMetrics, RegressionMetrics
from app.quality import QualityCounts
from app.reference import Reference
from app.settings import settings_from_mapping
from app.sketches import BinnedHistogram, CategoryCounts, QuantileSketch
from app.sources.engine import SourcesEngine
from app.sources.schema import SchemaCounts

T0 = 1_700_000_000_000
MINUTE = 60_000
CFG = settings_from_mapping({
    "defaults": {"window": "1m", "lateness": "5s", "min_samples": 10},
    "sources": {"crm": {"freshness": "5m", "reference_warmup": 10,
                        "volume": {"learn_windows": 1}}},
    "models": {"m": {
        "features": {"x": {"type": "numeric", "source": "crm", "range": [0, 100]},
                     "c": {"type": "categorical", "values": ["a", "b"]}},
        "reference": {"warmup": 20}, "segments": ["region"], "min_segment_rows": 10,
        "change_detectors": [
            {"signal": "feature.x", "detector": "adwin"},
            {"signal": "prediction", "detector": "page_hinkley"},
            {"signal": "scores.1", "detector": "kswin",
             "params": {"window_size": 30, "stat_size": 10}}],
        "performance": {"min_labels": 5, "label_horizon": "10m", "after": ["0s", "2m"],
                        "concept_drift": [{"detector": "ddm"}, {"detector": "eddm"},
                                          {"detector": "hddm_w"},
                                          {"detector": "adwin", "signal": "loss"}]},
        "slo": {"latency_p99_ms": 100, "cost_per_1k": 1}, "freshness": "10m",
        "retrain": {"on": ["performance_drop", "feature_drift"], "max_age": "1d",
                    "expected_duration": "1h"}}}}, env={})


def _json(value: Any) -> Any:
    """As the changelog holds it: orjson out, orjson in."""
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))


def _prediction(w: int, i: int, rnd: random.Random) -> dict[str, Any]:
    x = rnd.gauss(50 + 20 * (w >= 2), 10)
    p = min(max(x / 100, 0.0), 1.0)
    return {"prediction_id": f"p{w}-{i}", "model": "m", "model_version": "v1" if w < 3 else "v2",
            "features": {"x": x if i % 7 else None, "c": rnd.choice("abz"), "extra": 1},
            "prediction": int(x > 55), "scores": {"1": p, "0": 1 - p},
            "latency_ms": rnd.random() * 200, "cost": 0.001,
            "segment": {"region": rnd.choice(["eu", "us"])},
            "timestamp": T0 + w * MINUTE + i * 1000}


def build_model_state() -> tuple[dict[str, Any], dict[str, Any]]:
    rnd = random.Random(1)
    engine = Engine(CFG, {"m": None}, source="urn:test")
    records: dict[str, Any] = {}
    for w in range(4):
        batch = engine.batch()
        batch.add_many([_prediction(w, i, rnd) for i in range(40)], 0, partition=0,
                       position=("p:0", w))
        engine.apply(batch, None)
        batch = engine.batch()
        batch.add_many([{"model": "m", "prediction_id": f"p{w}-{i}", "label": rnd.choice([0, 1]),
                         "timestamp": T0 + w * MINUTE + 50_000} for i in range(0, 40, 2)],
                       0, kind="outcome", partition=0, position=("o:0", w))
        if w == 2:
            batch.add_many([{"model": "m", "version": "v2", "event": "deployed",
                             "timestamp": T0 + w * MINUTE + 59_000,
                             "metrics": {"accuracy": 0.9}}], 0, kind="model_event", partition=0)
        engine.apply(batch, None)
        if w < 2:  # later detections and outputs stay pending in the state
            engine.ack_detections("m", len(engine.detections("m")))
        for start in engine.due("m", None):
            engine.begin_close("m", start)
            engine.finish_close("m", start)
        for key, value in engine.monitor("m").drain_records().items():
            if value is None:
                records.pop(key, None)
            else:
                records[key] = value
    return _json(engine.monitor("m").to_state()), _json(records)


def build_source_state() -> dict[str, Any]:
    engine = SourcesEngine(CFG, source_uri="urn:test")
    rnd = random.Random(2)
    for w in range(4):
        batch = engine.batch()
        for i in range(30):
            record = {"x": rnd.gauss(50, 10), "id": i, "name": "n"} if w < 3 else {"x": "s"}
            batch.add({"source": "crm", "record": record,
                       "timestamp": T0 + w * MINUTE + i * 1000}, 0, partition=0,
                      position=("i:0", w * 100 + i))
        engine.apply(batch, None)
        engine.check("crm", None)
    engine.ack("crm", len(engine.outputs("crm")) - 1)
    return _json(engine.to_state("crm"))


STATE, RECORDS = build_model_state()
SOURCE_STATE = build_source_state()
assert STATE["pending_detections"] and SOURCE_STATE["outputs"] and RECORDS  # all exercised


# --- the top-level loaders, their objects used ------------------------------------------

METRICS = Metrics(CollectorRegistry())


def observe_outputs(model: str, outputs: Any, book: Any) -> None:
    """The metrics the worker takes of restored outputs once it has published them."""
    METRICS.observe_alerts(model, [e for t, e in outputs if t == "alerts"], book)
    for target, e in outputs:
        if target == "evaluations":
            METRICS.observe_performance_evaluation(model, e["data"])


def use_model(m: ModelMonitor) -> None:
    """What the worker does after a restore: publish what was owed, ingest, close
    windows, save."""
    observe_outputs("m", m.pending_outputs, m.alerts)
    rnd = random.Random(3)
    events = [_prediction(5, i, rnd) for i in range(30)]
    m.ingest(events, [e["timestamp"] for e in events], now=None)
    m.ingest_outcomes([{"model": "m", "prediction_id": e["prediction_id"], "label": 1}
                       for e in events], [T0 + 5 * MINUTE + 40_000] * 30, now=None)
    m.check_time(None, T0 + 6 * MINUTE)
    for start in m.due_by_watermark():
        m.begin_close(start)
        m.finish_close(start)
    orjson.dumps(m.to_state(), option=orjson.OPT_SERIALIZE_NUMPY)
    for value in m.drain_records().values():
        orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def patched(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(state=mutated(STATE))
# Each a bug once: AttributeError leaked (references, positions, changes not mappings) ...
@example(state=patched(STATE, ("references",), [1]))
@example(state=patched(STATE, ("positions",), 2.5))
@example(state=patched(STATE, ("changes",), [[1]]))
# ... or loaded, then a crash in the next batch: a string watermark, an unknown output
# target, a count no JSON encoder writes back, an alert without the labels the metrics
# read, a performance evaluation without its figures
@example(state=patched(STATE, ("watermark",), "x"))
@example(state=patched(STATE, ("outputs",), [["nowhere", {"data": {}}]]))
@example(state=patched(STATE, ("late_events",), 1e300))
@example(state=patched(STATE, ("outputs",), [["alerts", {"data": {"kind": "drift"}}]]))
@example(state=patched(STATE, ("outputs",), [["evaluations", {"data": {
    "kind": "performance", "model_version": "v1", "performance": {"figures": 3}}}]]))
@example(state=patched(STATE, ("windows", 0, "n"), 10**30))
def test_model_monitor_states(state):
    load_and_use(state, RECORDS)


@settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow])
@given(records=mutated(RECORDS))
def test_model_monitor_side_records(records):
    load_and_use(STATE, records)


def load_and_use(state, records):
    """A restore refuses the state (StateError) or gives a monitor that works on."""
    try:
        m = ModelMonitor.from_state(state, CFG, None, records)
    except StateError:
        event("StateError")
        return
    event("loaded")
    use_model(m)


@settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow])
@given(state=mutated(SOURCE_STATE))
# a bug once: outputs that are not [target, event] pairs leaked ValueError / TypeError
@example(state=patched(SOURCE_STATE, ("outputs",), [1]))
@example(state=patched(SOURCE_STATE, ("outputs",), 5))
@example(state=patched(SOURCE_STATE, ("monitor", "watermark"), "x"))
def test_sources_engine_states(state):
    errors: list[StateError] = []
    engine = SourcesEngine(CFG, source_uri="urn:test", load_state=lambda s: state,
                           on_state_error=lambda s, exc: errors.append(exc))
    m = engine.monitor("crm", 0)  # never raises: a bad state starts the source afresh
    assert m.partition == 0
    event("StateError" if errors else "loaded")
    if errors:
        assert not engine.outputs("crm")  # nothing of the refused state is kept
    observe_outputs("", engine.outputs("crm"), engine.books["crm"])
    batch = engine.batch()
    for i in range(20):
        batch.add({"source": "crm", "record": {"x": float(i)},
                   "timestamp": T0 + 6 * MINUTE + i}, 0, partition=0)
    engine.apply(batch, None)
    engine.check("crm", None, T0 + 8 * MINUTE)
    orjson.dumps(engine.to_state("crm"))


def test_engine_restore_starts_afresh_on_a_corrupt_state():
    errors: list[tuple[str, StateError]] = []
    engine = Engine(CFG, {"m": None}, source="urn:test",
                    load_state=lambda model: patched(STATE, ("positions",), 2.5),
                    load_records=lambda model: RECORDS,
                    on_state_error=lambda model, exc: errors.append((model, exc)))
    assert engine.monitor("m").watermark_ms is None and [m for m, _ in errors] == ["m"]


# --- every loader on its own -------------------------------------------------------------

def _window() -> dict[str, Any]:
    return next(w for w in STATE["windows"] if w["serving"] and w["quality"])


def _slice() -> dict[str, Any]:
    return next(iter(_window()["slices"].values()))


def _detector(name: str) -> dict[str, Any]:
    d = make_detector(name)
    rng = np.random.default_rng(0)
    values = rng.random(300) < 0.2 if name in ("ddm", "eddm", "hddm_a", "hddm_w") else \
        rng.normal(size=300)
    d.update_many(values.astype(np.float64))
    return _json(d.to_state())


def _metrics() -> dict[str, Any]:
    m = ClassificationMetrics("1")
    m.update([("1", "1", 0.9), ("0", "1", 0.3), ("1", "0", 0.6)] * 5)
    return _json(m.to_state())


def _regression() -> dict[str, Any]:
    m = RegressionMetrics()
    m.update([(1.0, 2.0), (3.0, 3.5)] * 5)
    return _json(m.to_state())


def _exact_sum() -> Any:
    s = ExactSum()
    for x in (1e16, 1.0, -3.5):
        s.add(x)
    return s.to_state()


def _on_monitor(part: str) -> Callable[[Any], Any]:
    def load(state: Any) -> Any:
        obj = getattr(ModelMonitor("m", CFG, None), part)
        obj.load(state)
        return obj
    return load


def _change_tracker(state: Any) -> Any:
    tracker = ModelMonitor("m", CFG, None).changes[0]
    tracker.load(state)
    return tracker.run


def _performance(state: Any) -> Any:
    tracker = ModelMonitor("m", CFG, None).performance
    assert tracker is not None
    tracker.load(state, RECORDS)
    return tracker


def _performance_records(records: Any) -> Any:
    tracker = ModelMonitor("m", CFG, None).performance
    assert tracker is not None
    tracker.load(STATE["performance"], records)
    return tracker


def _source_monitor(state: Any) -> Any:
    m = SourcesEngine(CFG, source_uri="urn:test").monitor("crm")
    m.load(state)
    return m


def _source_drift(state: Any) -> Any:
    drift = SourcesEngine(CFG, source_uri="urn:test").monitor("crm").drift
    assert drift is not None
    drift.load(state)
    return drift


SOURCE_WINDOW_SCHEMA = SOURCE_STATE["monitor"]["windows"][0][2]
#: name -> (a real state, its loader)
LOADERS: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "histogram": (_slice()["sketches"]["x"], BinnedHistogram.from_state),
    "categories": (_slice()["sketches"]["c"], CategoryCounts.from_state),
    "quantile": (_slice()["quantiles"]["x"], QuantileSketch.from_state),
    **{f"detector.{name}": (_detector(name), detector_from_state) for name in STREAM_DETECTORS},
    "quality_counts": (next(iter(_window()["quality"].values())), QualityCounts.from_state),
    "classification_metrics": (_metrics(), ClassificationMetrics.from_state),
    "regression_metrics": (_regression(), RegressionMetrics.from_state),
    "exact_sum": (_exact_sum(), ExactSum.from_state),
    "performance_tracker": (STATE["performance"], _performance),
    "performance_records": (RECORDS, _performance_records),
    "alert_book": (STATE["alerting"], _on_monitor("alerts")),
    "retrain_policy": (STATE["retrain"], _on_monitor("retrain")),
    "lifecycle": (STATE["lifecycle"], _on_monitor("lifecycle")),
    "version_outputs": (STATE["version_outputs"], _on_monitor("versions")),
    "change_tracker": (STATE["changes"][0], _change_tracker),
    "detection": (STATE["pending_detections"][0], Detection.from_dict),
    "serving": (next(iter(_window()["serving"].values())), ServingStats.from_state),
    "slice": (_slice(), Slice.from_state),
    "window": (_window(), Window.from_state),
    "reference": (STATE["references"]["v1"], Reference.from_dict),
    "source_monitor": (SOURCE_STATE["monitor"], _source_monitor),
    "source_drift": (SOURCE_STATE["monitor"]["drift"], _source_drift),
    "schema_counts": (SOURCE_WINDOW_SCHEMA, SchemaCounts.from_state),
}


def test_every_loader_reads_its_own_state():
    for name, (state, loader) in LOADERS.items():
        assert loader(copy.deepcopy(state)) is not None, name


@pytest.mark.parametrize("name", sorted(LOADERS))
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_each_loader_raises_state_error_or_loads(name, data):
    state, loader = LOADERS[name]
    with contextlib.suppress(StateError):
        loader(data.draw(mutated(state)))


#: Inputs that leaked another exception once (the loader, the defect, the exception)
REGRESSIONS = [
    ("histogram", lambda s: {**s, "counts": [10**30] * len(s["counts"])}),  # OverflowError
    ("histogram", lambda s: {**s, "v": [1]}),  # TypeError: unhashable version
    ("categories", lambda s: {**s, "missing": math.inf}),  # OverflowError
    ("quantile", lambda s: {**s, "positive": {**s["positive"], "counts": [2**64]}}),
    ("detector.adwin", lambda s: {**s, "kind": ["adwin"]}),  # TypeError: unhashable kind
    ("classification_metrics", lambda s: {**s, "n": math.inf}),  # OverflowError
    ("exact_sum", lambda s: None if s is None else [*s, "p"]),  # ValueError
    ("exact_sum", lambda s: 10**400),  # OverflowError
    ("serving", lambda s: {**s, "n": math.inf}),  # OverflowError
    ("slice", lambda s: None),  # TypeError (unwrapped)
    ("slice", lambda s: {k: v for k, v in s.items() if k != "reference"}),  # KeyError
    ("window", lambda s: {**s, "start": math.inf}),  # OverflowError
    ("alert_book", lambda s: {**s, "episodes": None}),  # TypeError
    ("alert_book", lambda s: {**s, "episodes": [{"key": "k", "bad": "many"}]}),  # loaded once
    ("change_tracker", lambda s: None),  # AttributeError
    ("source_drift", lambda s: []),  # AttributeError
]


@pytest.mark.parametrize(("name", "defect"), REGRESSIONS,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(REGRESSIONS)])
def test_regressions(name, defect):
    state, loader = LOADERS[name]
    with pytest.raises(StateError):
        loader(defect(copy.deepcopy(state)))
