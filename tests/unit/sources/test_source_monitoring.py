"""Source monitoring: schema changes, volume, freshness, the dependency map; and the
retrain lifecycle. Through the pure monitors and through ``driftwarden replay``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from app.core.lifecycle import ModelLifecycle
from app.errors import StateError
from app.replay import run_replay
from app.settings import settings_from_mapping
from app.sources.monitor import SourceMonitor
from app.sources.schema import SchemaCounts, diff_schema

ROOT = Path(__file__).resolve().parents[3]
MIN = 60_000
T0 = 1_767_225_600_000


def monitor(**kw: Any) -> SourceMonitor:
    args = {"window_ms": MIN, "lateness_ms": 1000, "min_samples": 10, "expected": None,
            "learn_windows": 2, "min_ratio": 0.5, "max_ratio": 3.0, "freshness_ms": 5 * MIN,
            **kw}
    return SourceMonitor("crm", **args)


def records(n: int, *, renamed: bool = False) -> list[dict[str, Any]]:
    key = "tenure" if renamed else "tenure_months"
    return [{"customer_id": f"c{i}", key: i % 70, "plan": "pro", "note": None}
            for i in range(n)]


def feed(m: SourceMonitor, window: int, recs: list[dict[str, Any]]) -> None:
    step = MIN // max(len(recs), 1)
    m.ingest(recs, [T0 + window * MIN + i * step for i in range(len(recs))], None)


def close_all(m: SourceMonitor, until_ms: int) -> list[Any]:
    out = []
    m.watermark_ms = max(m.watermark_ms or 0, until_ms)
    for start in m.due(None):
        out += m.close(start).findings
    return out


def test_a_renamed_field_is_a_schema_change_naming_both_fields():
    m = monitor()
    feed(m, 0, records(50))
    feed(m, 1, records(50))
    feed(m, 2, records(50, renamed=True))
    findings = close_all(m, T0 + 4 * MIN)
    (change,) = [f for f in findings if f.kind == "schema_change"]
    assert change.diff.removed == {"tenure_months": "number"}
    assert change.diff.added == {"tenure": "number"}
    assert "removed tenure_months" in change.summary and "added tenure" in change.summary
    feed(m, 4, records(50, renamed=True))  # the new schema is accepted: no second alert
    assert [f for f in close_all(m, T0 + 6 * MIN) if f.kind == "schema_change"] == []


def test_sparse_and_null_fields_are_not_changes_but_a_type_change_is():
    accepted = {"a": "number", "b": "string", "opt": "string"}
    w = SchemaCounts()
    w.update([{"a": 1, "b": None, "opt": "x"}, {"a": 2, "b": "y"}, {"a": "3", "b": "z"},
              {"a": "4", "b": "z"}, {"a": "5", "b": "q"}])
    diff = diff_schema(accepted, w)
    assert diff.changed == {"a": ("number", "string")} and not diff.added and not diff.removed


def test_volume_learned_then_collapse_and_surge_and_empty_windows():
    m = monitor()
    # The first window may be partial (monitoring began mid-window): not learned from.
    m.ingest(records(30), [T0 + MIN // 2 + i for i in range(30)], None)
    for w in (1, 2):
        feed(m, w, records(100))
    assert close_all(m, T0 + 3 * MIN + 2000) == []
    assert m.expected == 100
    feed(m, 3, records(20))
    feed(m, 4, records(400))
    feed(m, 7, records(100))  # windows 5 and 6 had nothing at all
    found = [(f.kind, (f.start_ms - T0) // MIN, round(f.value)) for f in
             close_all(m, T0 + 9 * MIN)]
    assert found == [("source_volume", 3, 20), ("source_volume", 4, 400),
                     ("source_volume", 5, 0)]


def test_stale_fires_once_and_resolves_on_the_next_record():
    m = monitor()
    feed(m, 0, records(10))
    assert m.check_stale(4 * MIN) == []
    (fired,) = m.check_stale(6 * MIN)
    assert (fired.kind, fired.status, fired.since_ms) == ("source_stale", "firing",
                                                          m.watermark_ms)
    assert m.check_stale(60 * MIN) == []  # already firing
    (resolved,) = m.ingest(records(1), [T0 + 20 * MIN], None)
    assert (resolved.status, resolved.since_ms) == ("resolved", fired.since_ms)


def test_source_state_round_trips_and_rejects_unknown_versions():
    m = monitor()
    feed(m, 0, records(40))
    m.check_stale(10 * MIN)
    again = monitor()
    again.load(orjson.loads(orjson.dumps(m.to_state())))
    assert again.to_state() == m.to_state()
    with pytest.raises(StateError, match="version 5 is not supported"):
        again.load({**m.to_state(), "v": 5})


def test_lifecycle_overdue_and_stuck_retrains():
    lc = ModelLifecycle(max_age_ms=10 * MIN, expected_ms=2 * MIN)
    lc.add({"event": "deployed", "version": "v1"}, T0)
    lc.add({"event": "retrain_started", "version": "v2", "trigger_id": "t1"}, T0 + MIN)
    assert lc.check(T0 + 2 * MIN) == []
    (stuck,) = lc.check(T0 + 4 * MIN)
    assert (stuck.kind, stuck.subject) == ("retrain_stuck", "t1")
    (overdue,) = lc.check(T0 + 11 * MIN)
    assert (overdue.kind, overdue.subject) == ("retrain_overdue", "v1")
    done = lc.add({"event": "retrain_completed", "version": "v2", "trigger_id": "t1"},
                  T0 + 12 * MIN)
    assert [(f.kind, f.status) for f in done] == [("retrain_stuck", "resolved")]
    live = lc.add({"event": "deployed", "version": "v2"}, T0 + 13 * MIN)
    assert [(f.kind, f.status) for f in live] == [("retrain_overdue", "resolved")]
    again = ModelLifecycle(max_age_ms=10 * MIN, expected_ms=2 * MIN)
    again.load(orjson.loads(orjson.dumps(lc.to_state())))
    assert again.to_state() == lc.to_state()


def scenario_settings():
    return settings_from_mapping({
        "defaults": {"window": "1m", "lateness": "1s", "min_samples": 10},
        "sources": {"crm": {"owner": "data-eng", "freshness": "5m"},
                    "billing": {"owner": "payments", "freshness": "5m"}},
        "models": {"churn": {
            "owners": {"on_call": "churn-oncall"},
            "features": {"tenure_months": {"type": "numeric", "source": "crm"},
                         "plan": {"type": "categorical", "source": "billing"}},
            "reference": {"warmup": 50}, "freshness": "10m",
            "retrain": {"max_age": "1h"}}},
    })


def write(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


def test_replay_source_stale_schema_change_and_model_silent(tmp_path):
    inputs, preds = [], []
    for minute in range(40):
        t = T0 + minute * MIN
        if not 10 <= minute < 20:  # crm goes quiet for ten minutes
            inputs += [{"source": "crm", "timestamp": t + i * 1000,
                        "record": records(1, renamed=minute >= 30)[0]} for i in range(20)]
        inputs += [{"source": "billing", "timestamp": t + i * 1000,
                    "record": {"plan": "pro", "amount": 10.0}} for i in range(20)]
        if minute < 25:  # the model stops predicting at minute 25
            preds += [{"prediction_id": f"p{minute}-{i}", "model": "churn",
                       "model_version": "v1", "timestamp": t + i * 1000,
                       "features": {"tenure_months": i, "plan": "pro"}, "prediction": 0}
                      for i in range(20)]
    events = [{"model": "churn", "version": "v1", "event": "deployed", "timestamp": T0}]
    run_replay(scenario_settings(), write(tmp_path / "p.jsonl", preds), tmp_path / "out",
               inputs=write(tmp_path / "i.jsonl", inputs),
               model_events=write(tmp_path / "e.jsonl", events), progress=False)
    events = [orjson.loads(x) for x in
              (tmp_path / "out" / "alerts.jsonl").read_bytes().splitlines()]
    evaluations = [orjson.loads(x) for x in
                   (tmp_path / "out" / "evaluations.jsonl").read_bytes().splitlines()]
    for stem, docs in (("alert", events), ("evaluation", evaluations)):
        schema = orjson.loads((ROOT / "schemas" / f"{stem}.schema.json").read_bytes())
        validator = Draft202012Validator(schema, format_checker=FormatChecker())
        for doc in docs:
            assert not list(validator.iter_errors(doc)), doc
    assert {e["data"]["kind"] for e in evaluations} >= {"source", "drift"}
    alerts = [e["data"] for e in events]
    stale = [(a["status"], a["source"]) for a in alerts if a["kind"] == "source_stale"]
    assert stale == [("firing", "crm"), ("resolved", "crm")]
    fired = next(a for a in alerts if a["kind"] == "source_stale")
    assert fired["affected_models"] == ["churn"]
    assert fired["affected_features"] == {"churn": ["tenure_months"]}
    assert fired["owners"] == {"data": "data-eng", "on_call": "churn-oncall"}
    # Stale once the other streams' event time passed crm's last record by 5 minutes.
    assert fired["startsAt"] == "2026-01-01T00:09:19.000Z"
    changes = [a for a in alerts if a["kind"] == "schema_change"]
    # A detection: fires once, resolves when no new change came within the hold time.
    assert [a["status"] for a in changes] == ["firing", "resolved"]
    assert changes[0]["source"] == "crm"
    assert changes[0]["evidence"]["removed"] == {"tenure_months": "number"}
    assert changes[0]["evidence"]["added"] == {"tenure": "number"}
    assert changes[0]["window"]["start"].startswith("2026-01-01T00:30")
    silent = [a for a in alerts if a["kind"] == "model_silent"]
    assert [a["status"] for a in silent] == ["firing"]
    assert [a["kind"] for a in alerts if a["kind"] == "retrain_overdue"] == []
    assert not [a for a in alerts if a["kind"] == "source_volume" and a["source"] == "billing"]


def test_replay_source_field_drift_names_the_field_and_the_source(tmp_path):
    import numpy as np

    rng = np.random.default_rng(3)
    inputs = []
    for minute in range(12):
        shifted = minute >= 8
        for i in range(300):
            value = float(rng.normal(40 if shifted else 24, 8))
            inputs.append({"source": "crm", "timestamp": T0 + minute * MIN + i * 200,
                           "record": {"customer_id": f"c{minute}-{i}",
                                      "tenure_months": round(value, 2),
                                      "segment": str(rng.choice(["a", "b"]))}})
    cfg = settings_from_mapping({
        "defaults": {"window": "1m", "lateness": "1s", "min_samples": 100},
        "sources": {"crm": {"owner": "data-eng", "reference_warmup": 600}},
        "models": {"churn": {"features": {"tenure_months": {"type": "numeric",
                                                            "source": "crm"}},
                             "reference": {"warmup": 50}}}})
    run_replay(cfg, write(tmp_path / "p.jsonl", []), tmp_path / "out",
               inputs=write(tmp_path / "i.jsonl", inputs), progress=False)
    alerts = [orjson.loads(x)["data"] for x in
              (tmp_path / "out" / "alerts.jsonl").read_bytes().splitlines()]
    drift = [a for a in alerts if a["kind"] == "feature_drift"]
    # One problem from window 8 on (9..11 continue it).
    assert [(int(a["window"]["start"][14:16]), a["status"]) for a in drift] == [(8, "firing")]
    assert all(a["source"] == "crm" and a["feature"] == "tenure_months" and
               a["model"] is None and a["affected_models"] == ["churn"] for a in drift)
    evaluations = [orjson.loads(x)["data"] for x in
                   (tmp_path / "out" / "evaluations.jsonl").read_bytes().splitlines()]
    judged = [e for e in evaluations if e["kind"] == "source" and e["features"]]
    assert len(judged) == 10  # the first two windows are the warm-up


def test_replay_a_source_that_never_sends_is_stale_from_the_start(tmp_path):
    cfg = settings_from_mapping({
        "defaults": {"window": "1m", "lateness": "1s", "min_samples": 10},
        "sources": {"crm": {"freshness": "5m"}, "billing": {"freshness": "5m"}},
        "models": {"churn": {"features": {"x": {"type": "numeric", "source": "crm"}},
                             "reference": {"warmup": 50}}}})
    inputs = [{"source": "crm", "timestamp": T0 + i * 10_000, "record": {"x": i}}
              for i in range(60)]  # ten minutes of crm; billing never sends
    run_replay(cfg, write(tmp_path / "p.jsonl", []), tmp_path / "out",
               inputs=write(tmp_path / "i.jsonl", inputs), progress=False)
    alerts = [orjson.loads(x)["data"] for x in
              (tmp_path / "out" / "alerts.jsonl").read_bytes().splitlines()]
    stale = [(a["source"], a["status"], a["evidence"]["last_record"]) for a in alerts
             if a["kind"] == "source_stale"]
    assert stale == [("billing", "firing", None)]


def test_model_silent_fires_on_the_wall_clock_and_resolves_when_predictions_resume():
    from app.core.monitor import ModelMonitor

    cfg = scenario_settings()
    m = ModelMonitor("churn", cfg, None)
    event = {"prediction_id": "a", "model": "churn", "model_version": "v1",
             "features": {"tenure_months": 1, "plan": "pro"}, "prediction": 0}
    m.ingest([event], [T0], now=1000.0)
    assert m.check_time(now=1000.0 + 9 * 60, global_ms=None).freshness == []
    fired = m.check_time(now=1000.0 + 11 * 60, global_ms=None).freshness
    assert fired == [("firing", T0)]
    assert m.check_time(now=1000.0 + 20 * 60, global_ms=None).freshness == []  # once
    resumed = m.ingest([{**event, "prediction_id": "b"}], [T0 + 30 * MIN], now=3000.0)
    assert resumed.freshness == [("resolved", T0)]


def test_a_trigger_not_started_and_a_failed_retrain_raise_alerts():
    lc = ModelLifecycle(max_age_ms=None, expected_ms=None, start_ms=10 * MIN)
    lc.track_trigger("t1", T0, "v1")
    assert lc.check(T0 + 5 * MIN) == []
    (late,) = lc.check(T0 + 11 * MIN)
    assert (late.kind, late.status, late.subject) == ("retrain_stuck", "firing", "trigger:t1")
    started = lc.add({"event": "retrain_started", "version": "v1", "trigger_id": "t1"},
                     T0 + 12 * MIN)
    assert [(f.kind, f.status) for f in started] == [("retrain_stuck", "resolved")]
    failed = lc.add({"event": "retrain_failed", "version": "v1", "trigger_id": "t1"},
                    T0 + 13 * MIN)
    assert [(f.kind, f.status, f.subject) for f in failed] == [
        ("retrain_failed", "firing", "t1")]
    done = lc.add({"event": "retrain_completed", "version": "v2", "trigger_id": "t2"},
                  T0 + 20 * MIN)
    assert [(f.kind, f.status) for f in done] == [("retrain_failed", "resolved")]
