"""Fuzzing the CloudEvents builders: whatever the figures, an output is JSON with a time.

Two ways in. The builders (``app.outputs``) are given evaluations, decisions and
detections with extreme figures (NaN, infinities, times at both ends of int64, long
names). And valid events the decoder accepts, with extreme values everywhere it lets
them through (integers beyond 64 bits and beyond the double range, ±1e308, times at
0001-01-01 and 9999-12-31, long strings, many segments), go through the engines, which
build every kind of output from them (evaluations, drift, quality, serving, change,
concept, performance, lifecycle, source alerts). Every output encodes as JSON (what the
worker publishes), has a deterministic id and an RFC 3339 ``time`` from 0001 to 9999.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.core.changes import Detection
from app.core.engine import Engine
from app.core.evaluation import FeatureEvaluation, WindowEvaluation
from app.core.monitor import ModelMonitor
from app.errors import StateError
from app.events.checks import MAX_EPOCH_MS, MIN_EPOCH_MS, SPECS, timestamp_ms
from app.events.decode import decode_message
from app.outputs.cloudevents import (
    alert_event,
    change_alert_event,
    evaluation_event,
    event_ms,
    iso,
)
from app.policy.drift import AlertDecision
from app.settings import settings_from_mapping
from app.sources.engine import SourcesEngine

INT64 = st.integers(-(2**63), 2**63 - 1)
TIMES = st.sampled_from([0, -1, MIN_EPOCH_MS, MIN_EPOCH_MS - 1, MAX_EPOCH_MS,
                         MAX_EPOCH_MS + 1, 2**63 - 1, -(2**63)]) | INT64
COUNTS = st.integers(0, 2**63 - 1)
FIGURES = st.floats() | st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0])
NAMES = st.text(min_size=1, max_size=30)


#: Figures of values near the float max overflow in numpy (the statistics are then inf or
#: NaN, written as null): a warning, not an error, in a worker.
NUMPY_OVERFLOW = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def assert_publishable(event: dict[str, Any]) -> None:
    """What the worker does with an output: encode it; what consumers do: read its time."""
    orjson.dumps(event)
    assert event["specversion"] == "1.0" and isinstance(event["id"], str) and event["id"]
    assert isinstance(event["data"], dict)
    assert MIN_EPOCH_MS <= event_ms(event) <= MAX_EPOCH_MS
    assert timestamp_ms(event["time"]) == event_ms(event)


# --- the builders, given extreme figures -----------------------------------------------

CFG = settings_from_mapping({
    "defaults": {"window": "1m", "lateness": "1s", "min_samples": 5},
    "sources": {"crm": {"freshness": "2m", "reference_warmup": 10,
                        "volume": {"learn_windows": 1}}},
    "models": {"m": {
        "owners": {"on_call": "oncall", "monitoring": "ml"},
        "features": {"x": {"type": "numeric", "source": "crm", "range": [0, 10]},
                     "c": {"type": "categorical", "values": ["a", "b"]}},
        "reference": {"warmup": 20}, "segments": ["region"], "min_segment_rows": 10,
        "change_detectors": [{"signal": "feature.x", "detector": "page_hinkley"}],
        "performance": {"min_labels": 5, "label_horizon": "5m", "after": ["0s"],
                        "concept_drift": [{"detector": "ddm"}]},
        "slo": {"latency_p99_ms": 10, "cost_per_1k": 0.001, "min_samples": 5},
        "freshness": "3m",
        "retrain": {"on": ["performance_drop", "feature_drift", "latency_slo"],
                    "expected_duration": "1m"}}}}, env={})
MODEL = CFG.models["m"]

features = st.builds(
    FeatureEvaluation, feature=NAMES, type=st.sampled_from(["numeric", "categorical"]),
    statistic=st.sampled_from(["psi", "ks", "chi2"]), value=st.none() | FIGURES, n=COUNTS,
    missing=COUNTS, reference_n=COUNTS, reference_summary=NAMES, window_summary=NAMES,
    note=st.none() | NAMES, p_value=st.none() | FIGURES, p_adjusted=st.none() | FIGURES,
    statistics=st.dictionaries(NAMES, FIGURES, max_size=3))
evaluations = st.builds(
    WindowEvaluation, model=st.just("m"), model_version=NAMES,
    versions=st.dictionaries(NAMES, COUNTS, max_size=3), start_ms=TIMES, end_ms=TIMES,
    n=COUNTS, min_samples=COUNTS, late_events=COUNTS, reference_origin=NAMES,
    reference_version=st.none() | NAMES, fallback=st.booleans(),
    features=st.lists(features, max_size=3), segment=st.none() | NAMES.map(lambda s: f"r={s}"))
decisions = st.builds(
    AlertDecision, kind=st.just("feature_drift"), severity=st.sampled_from(["warning",
                                                                          "critical"]),
    subject=NAMES, statistic=NAMES, value=FIGURES, threshold=FIGURES, evidence=features)
detections = st.builds(
    Detection, detector=st.sampled_from(["adwin", "page_hinkley"]),
    signal=st.sampled_from(["feature.x", "prediction", "scores.1"]), index=COUNTS,
    event_ms=TIMES, model_version=NAMES, before_mean=st.none() | FIGURES,
    recent_mean=st.none() | FIGURES, severity=st.sampled_from(["warning", "critical"]),
    config=NAMES)


@settings(max_examples=150)
@given(ev=evaluations, alerts=st.lists(decisions, max_size=3))
@example(ev=WindowEvaluation("m", "v1", {}, MAX_EPOCH_MS - 10, MAX_EPOCH_MS + 59_990, 1, 1, 0,
                             "warmup:20"), alerts=[])  # ValueError once: year 10000
@example(ev=WindowEvaluation("m", "v1", {}, MIN_EPOCH_MS - 60_000, MIN_EPOCH_MS, 1, 1, 0,
                             "warmup:20"), alerts=[])  # ValueError once: year 0
def test_window_outputs(ev, alerts):
    first = evaluation_event(ev, alerts, source="urn:test")
    assert_publishable(first)
    assert first == evaluation_event(ev, alerts, source="urn:test")  # deterministic
    for d in alerts:
        assert_publishable(alert_event(d, ev, MODEL, source="urn:test"))


@settings(max_examples=100)
@given(det=detections, window_ms=st.integers(1, 10**12))
def test_change_alerts(det, window_ms):
    assert_publishable(change_alert_event(det, "m", MODEL, window_ms, source="urn:test"))


@given(ms=TIMES)
def test_iso_writes_every_int64_as_rfc3339(ms):
    text = iso(ms)
    assert timestamp_ms(text) == min(max(ms, MIN_EPOCH_MS), MAX_EPOCH_MS)


# --- outputs built by the engines from events with extreme values ------------------------

EXTREME_NUMBERS = st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 2**63 - 1, 2**63, 2**64 + 1,
                                   -(2**63) - 1, 10**400, -(10**400), 1e-300]) \
    | st.floats(allow_nan=False, allow_infinity=False) | st.integers()
EXTREME_TIMES = st.sampled_from([0, 1, MAX_EPOCH_MS, MAX_EPOCH_MS - 1, "0001-01-01T00:00:00Z",
                                 "9999-12-31T23:59:59.999Z", "1969-12-31T23:59:59.999Z",
                                 "0001-01-01T00:00:00-23:59", "9999-12-31T23:59:59+23:59",
                                 1_700_000_000_000]) | st.integers(0, MAX_EPOCH_MS)
TEXT = st.text(max_size=20) | st.sampled_from(["x" * 5000, "", "__other__", "region=eu"])


@st.composite
def predictions(draw: st.DrawFn, i: int) -> dict[str, Any]:
    e: dict[str, Any] = {
        "prediction_id": f"p{i}", "model": "m", "model_version": draw(st.sampled_from(
            ["v1", "v2", "x" * 128])),
        "features": {"x": draw(st.none() | EXTREME_NUMBERS | TEXT | st.booleans()),
                     "c": draw(st.none() | TEXT | EXTREME_NUMBERS),
                     **draw(st.dictionaries(TEXT, st.none() | EXTREME_NUMBERS, max_size=2))},
        "prediction": draw(EXTREME_NUMBERS | TEXT | st.booleans()),
        "timestamp": draw(EXTREME_TIMES)}
    if draw(st.booleans()):
        e["scores"] = {"1": draw(st.floats(0, 1)), draw(TEXT): draw(st.floats(0, 1))}
    if draw(st.booleans()):
        e["latency_ms"] = draw(st.sampled_from([0, 1e308, 10**400, 2**64]) | st.floats(0, 1e9))
    if draw(st.booleans()):
        e["cost"] = draw(st.sampled_from([0, 1e308, 10**400]) | st.floats(0, 10))
    if draw(st.booleans()):
        e["segment"] = {"region": draw(TEXT), draw(TEXT): draw(TEXT)}
    return e


def decoded(kind: str, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of ``docs`` the decoder accepts (what reaches the engine)."""
    raw = json.dumps(docs).encode()
    return decode_message(raw, SPECS[kind], max_bytes=len(raw), max_elements=len(docs)).events


def saves_and_loads(m: ModelMonitor) -> None:
    """What a worker saves, a restarted worker loads (a state with a float the changelog
    encoder writes as null, infinity, would fail to load: the model would start afresh)."""
    records = {k: orjson.loads(orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY))
               for k, v in m.records().items()}
    state = orjson.loads(orjson.dumps(m.to_state(), option=orjson.OPT_SERIALIZE_NUMPY))
    ModelMonitor.from_state(state, CFG, None, records)


def source_saves_and_loads(engine: SourcesEngine) -> None:
    saved = orjson.loads(orjson.dumps(engine.to_state("crm")))
    errors: list[StateError] = []
    SourcesEngine(CFG, source_uri="urn:test", load_state=lambda s: saved,
                  on_state_error=lambda s, exc: errors.append(exc)).monitor("crm")
    assert not errors, errors  # what a worker saves, a restarted worker loads


def run_model(batches: list[list[dict[str, Any]]], outcomes: list[dict[str, Any]],
              model_events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    engine = Engine(CFG, {"m": None}, source="urn:test")
    out: list[dict[str, Any]] = []
    for n, events in enumerate(batches):
        batch = engine.batch()
        batch.add_many(decoded("prediction", events), 1_700_000_000_000, partition=0,
                       position=("p:0", n))
        batch.add_many(decoded("outcome", outcomes), 1_700_000_000_000, kind="outcome",
                       partition=0)
        batch.add_many(decoded("model_event", model_events), 1_700_000_000_000,
                       kind="model_event", partition=0)
        engine.apply(batch, None)
        engine.check_time("m", None)
        for start in engine.due("m", None):
            closed = engine.begin_close("m", start)
            out += closed.alerts + closed.evaluation_events + closed.triggers
            engine.finish_close("m", start)
        outputs = engine.detections("m")
        out += [e for _, e in outputs]
        engine.ack_detections("m", len(outputs))
        saves_and_loads(engine.monitor("m"))
    engine.flush("m")
    out += [e for _, e in engine.detections("m")]
    for start in engine.open_windows("m"):
        closed = engine.begin_close("m", start)
        out += closed.alerts + closed.evaluation_events + closed.triggers
        engine.finish_close("m", start)
    return out


@NUMPY_OVERFLOW
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow,
                                                  HealthCheck.data_too_large])
@given(data=st.data())
def test_engine_outputs_from_extreme_events(data):
    batches = [[data.draw(predictions(10 * b + i)) for i in range(data.draw(st.integers(1, 8)))]
               for b in range(data.draw(st.integers(1, 4)))]
    ids = [e["prediction_id"] for batch in batches for e in batch]
    outcomes = [{"prediction_id": p, "model": "m", "label": data.draw(
        EXTREME_NUMBERS | TEXT | st.booleans()), "timestamp": data.draw(EXTREME_TIMES)}
        for p in ids[: data.draw(st.integers(0, len(ids)))]]
    model_events = [{"model": "m", "version": data.draw(st.sampled_from(["v1", "v2"])),
                     "event": data.draw(st.sampled_from(["deployed", "retrain_started",
                                                         "retrain_completed", "rolled_back"])),
                     "timestamp": data.draw(EXTREME_TIMES),
                     "metrics": {"accuracy": data.draw(EXTREME_NUMBERS)}}
                    for _ in range(data.draw(st.integers(0, 2)))]
    for event in run_model(batches, outcomes, model_events):
        assert_publishable(event)


@NUMPY_OVERFLOW
def test_engine_outputs_at_the_end_of_time():
    """Regression: an event at 9999-12-31T23:59:59.999Z opened a window ending in year
    10000, and building its evaluation raised ValueError (a worker crash)."""
    events = [{"prediction_id": f"p{i}", "model": "m", "model_version": "v1",
               "features": {"x": 1.0, "c": "a"}, "prediction": 1, "latency_ms": 10**400,
               "cost": 10**400, "timestamp": MAX_EPOCH_MS - i} for i in range(30)]
    outcomes = [{"prediction_id": f"p{i}", "model": "m", "label": 1} for i in range(30)]
    out = run_model([events], outcomes, [])  # OverflowError once: latency 10**400
    assert out
    for event in out:
        assert_publishable(event)


@NUMPY_OVERFLOW
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_source_outputs_from_extreme_records(data):
    engine = SourcesEngine(CFG, source_uri="urn:test")
    out: list[dict[str, Any]] = []
    for b in range(data.draw(st.integers(1, 4))):
        docs = [{"source": "crm", "timestamp": data.draw(EXTREME_TIMES),
                 "record": data.draw(st.dictionaries(TEXT, st.none() | EXTREME_NUMBERS | TEXT,
                                                     max_size=4)) | {"x": data.draw(
                                                         EXTREME_NUMBERS)}}
                for _ in range(data.draw(st.integers(1, 15)))]
        batch = engine.batch()
        for i, e in enumerate(decoded("input", docs)):
            batch.add(e, 1_700_000_000_000, partition=0, position=("i:0", 100 * b + i))
        engine.apply(batch, None)
        engine.check("crm", None, data.draw(st.none() | st.integers(0, MAX_EPOCH_MS)))
        out += [e for _, e in engine.outputs("crm")]
        engine.ack("crm", len(engine.outputs("crm")))
        source_saves_and_loads(engine)
    for event in out:
        assert_publishable(event)
