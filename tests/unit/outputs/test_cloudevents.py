import numpy as np

from app.core.monitor import ModelMonitor
from app.outputs.cloudevents import ALERT_FIRING, alert_event, evaluation_event, stable_id
from app.policy import decide_drift_alerts
from app.reference import build_reference
from app.settings import settings_from_mapping


def closed_window():
    s = settings_from_mapping({
        "defaults": {"window": "1m", "lateness": "0s", "min_samples": 10},
        "models": {"m": {"owners": {"on_call": "team-a", "monitoring": "ml"},
                         "features": {"x": {"type": "numeric"}},
                         "reference": {"file": "given.jsonl"}}}}, env={})
    rng = np.random.default_rng(0)
    ref = build_reference([{"x": float(v)} for v in rng.normal(0, 1, 1000)], "m",
                          s.models["m"], origin="t")
    m = ModelMonitor("m", s, ref)
    evs = [{"model": "m", "model_version": "v2", "features": {"x": float(v)}}
           for v in rng.normal(2, 1, 500)]
    m.ingest(evs, [1000] * 500, now=0.0)
    m.ingest(evs[:1], [120_000], now=0.0)
    ev = m.begin_close(0)[0]
    return s, ev, decide_drift_alerts(ev, s.models["m"].drift)


def test_alert_is_a_cloudevent_with_evidence_and_owners():
    s, ev, alerts = closed_window()
    assert len(alerts) == 1
    ce = alert_event(alerts[0], ev, s.models["m"], source="urn:driftwarden:test")
    assert ce["specversion"] == "1.0" and ce["type"] == ALERT_FIRING
    d = ce["data"]
    assert d["alert_id"] == ce["id"] == stable_id("m", "v2", "feature_drift", "x", 0)
    assert d["feature"] == "x" and d["model_version"] == "v2" and d["severity"] == "critical"
    assert d["evidence"]["value"] > d["evidence"]["threshold"] == 0.2  # auto: ks below 1000 values
    assert d["owners"] == {"on_call": "team-a", "monitoring": "ml"}
    assert d["labels"]["team"] == "team-a" and d["labels"]["alertname"]
    assert "x" in d["summary"] and "ks" in d["summary"]
    assert d["window"] == {"start": "1970-01-01T00:00:00.000Z", "end": "1970-01-01T00:01:00.000Z"}


def test_ids_are_deterministic_across_rebuilds():
    s, ev, alerts = closed_window()
    s2, ev2, alerts2 = closed_window()
    a = alert_event(alerts[0], ev, s.models["m"], source="x")
    b = alert_event(alerts2[0], ev2, s2.models["m"], source="x")
    assert a == b
    e1, e2 = evaluation_event(ev, alerts, source="x"), evaluation_event(ev2, alerts2, source="x")
    assert e1 == e2 and e1["data"]["alerts"][0] == a["id"]  # then any data-quality alerts
    assert e1["id"] != a["id"]
