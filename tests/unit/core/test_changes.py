"""Streaming change detectors inside a model's state: same indices as river, restorable."""

import jsonschema
import numpy as np
import orjson
import pytest

from app.core.monitor import ModelMonitor
from app.detectors.streaming import make_detector
from app.errors import ConfigError
from app.outputs.cloudevents import change_alert_event
from app.settings import settings_from_mapping


def settings(*detectors):
    return settings_from_mapping(
        {"defaults": {"window": "1m", "lateness": "0s", "min_samples": 100},
         "models": {"m": {"features": {"x": {"type": "numeric"}, "c": {"type": "categorical"}},
                          "reference": {"warmup": 100},
                          "change_detectors": list(detectors)}}}, env={})


def stream(seed=5, n=1500, change=800, shift=1.5):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 1, change), rng.normal(shift, 1, n - change)])
    events = [{"model": "m", "model_version": "v1", "features": {"x": float(v), "c": "a"},
               "prediction": 1, "scores": {"1": float(1 / (1 + np.exp(-v)))}} for v in x]
    return x, events


def feed(m, events, chunk=100, first=0):
    for i in range(0, len(events), chunk):
        part = events[i:i + chunk]
        m.ingest(part, [60_000 * 3 + first + j for j in range(i, i + len(part))], now=None)


@pytest.mark.parametrize("signal", ["feature.x", "scores.1"])
def test_detections_are_rivers_indices(signal):
    x, events = stream()
    m = ModelMonitor("m", settings({"signal": signal, "detector": "adwin"}), None)
    feed(m, events)
    values = x if signal == "feature.x" else 1 / (1 + np.exp(-x))
    expected = [i + 1 for i in make_detector("adwin").update_many(values)]
    got = [d.index for d in m.pending_detections]
    assert got == expected and got, got
    assert all(d.signal == signal and d.detector == "adwin" for d in m.pending_detections)
    first = m.pending_detections[0]
    assert first.before_mean is not None and first.recent_mean > first.before_mean


def test_nothing_on_a_stationary_stream():
    _, events = stream(shift=0.0)
    s = settings({"signal": "feature.x", "detector": "adwin"},
                 {"signal": "scores.1", "detector": "adwin"})
    m = ModelMonitor("m", s, None)
    feed(m, events)
    assert m.pending_detections == []
    assert make_detector("adwin").update_many([e["features"]["x"] for e in events]) == []


def test_restart_in_the_middle_gives_the_same_detections():
    s = settings({"signal": "feature.x", "detector": "adwin"},
                 {"signal": "feature.x", "detector": "page_hinkley", "every": 2})
    _, events = stream()
    whole = ModelMonitor("m", s, None)
    feed(whole, events)
    part = ModelMonitor("m", s, None)
    feed(part, events[:700])
    restored = ModelMonitor.from_state(orjson.loads(orjson.dumps(part.to_state())), s, None)
    feed(restored, events[700:], first=700)
    assert restored.pending_detections == whole.pending_detections
    assert {d.detector for d in whole.pending_detections} == {"adwin", "page_hinkley"}


def test_sampling_feeds_every_nth_value():
    x, events = stream()
    m = ModelMonitor("m", settings({"signal": "feature.x", "detector": "adwin", "every": 3}),
                     None)
    feed(m, events)
    assert m.changes[0].detector.n == len(x) // 3
    expected = [i + 1 for i in make_detector("adwin").update_many(x[2::3])]
    assert [d.index for d in m.pending_detections] == expected


def test_alert_event_is_valid_and_deterministic():
    from pathlib import Path

    s = settings({"signal": "feature.x", "detector": "adwin", "severity": "critical"})
    _, events = stream()
    m = ModelMonitor("m", s, None)
    feed(m, events)
    schema = orjson.loads((Path(__file__).parents[3] / "schemas" / "alert.schema.json")
                          .read_bytes())
    d = m.pending_detections[0]
    a = change_alert_event(d, "m", s.models["m"], m.window_ms, source="urn:t")
    jsonschema.Draft202012Validator(schema).validate(a)
    assert a == change_alert_event(d, "m", s.models["m"], m.window_ms, source="urn:t")
    assert a["data"]["kind"] == "feature_drift" and a["data"]["feature"] == "x"
    assert a["data"]["evidence"]["statistic"] == "adwin" and a["data"]["severity"] == "critical"


@pytest.mark.parametrize(("detector", "expected"), [
    ({"signal": "feature.zz"}, "unknown feature 'zz'"),
    ({"signal": "feature.c"}, "is not numeric"),
    ({"signal": "bogus"}, "signal must be"),
    ({"signal": "feature.x", "detector": "adwin", "params": {"delta": 5}}, "delta"),
    ({"signal": "feature.x", "detector": "kswin", "params": {"nope": 1}}, "nope"),
])
def test_bad_detector_configuration_is_named(detector, expected):
    with pytest.raises(ConfigError, match=expected) as err:
        settings(detector)
    assert "models.m" in str(err.value)


def test_reordered_detectors_keep_their_own_state():
    a = {"signal": "feature.x", "detector": "adwin"}
    b = {"signal": "feature.x", "detector": "adwin", "params": {"delta": 0.01}}
    _, events = stream()
    m = ModelMonitor("m", settings(a, b), None)
    feed(m, events[:900])
    state = orjson.loads(orjson.dumps(m.to_state()))
    swapped = ModelMonitor.from_state(state, settings(b, a), None)
    assert [t.detector.n for t in swapped.changes] == [900, 900]
    assert swapped.changes[1].detector.to_state() == m.changes[0].detector.to_state()
    # same detector type and signal, other params: distinct identities, distinct alert ids
    assert m.changes[0].identity != m.changes[1].identity


@pytest.mark.parametrize("name,params", [("hddm_a", {}), ("adwin", {}),
                                         ("page_hinkley", {"delta": 0.05})])
def test_step_many_equals_step_value_by_value(name, params):
    """A batch gives the same detections, evidence (mean before, recent mean) and state
    as the values one by one, whatever the cuts between batches."""
    from app.core.changes import DetectorRun

    rng = np.random.default_rng(11)
    if name == "hddm_a":
        values = (rng.random(3000) < np.repeat([0.1, 0.6, 0.1, 0.7], 750)).astype(float)
    else:
        values = np.concatenate([rng.normal(m, 1, 750) for m in (0, 3, -0.0, 4)])
    values = values.tolist()
    batched = DetectorRun(make_detector(name, **params))
    single = DetectorRun(make_detector(name, **params))
    hits, expected, start = [], [], 0
    for size in [1, 0, 7, 500, 333, 1200, 10_000]:
        part = values[start:start + size]
        hits += [(start + i, before, recent) for i, before, recent in batched.step_many(part)]
        start += len(part)
    for i, x in enumerate(values):
        found = single.step(x)
        if found is not None:
            expected.append((i, *found))
    assert len(expected) >= 2
    assert hits == expected
    assert orjson.dumps(batched.to_state()) == orjson.dumps(single.to_state())
