"""Retrain triggers: the per-model policy, and triggers from a persistent drift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
from jsonschema import Draft202012Validator, FormatChecker

from app.policy.retrain import RetrainPolicy
from app.replay import run_replay
from app.settings import RetrainSettings, settings_from_mapping

ROOT = Path(__file__).resolve().parents[3]
MIN = 60_000
T0 = 1_767_225_600_000


def alert(i, kind="feature_drift", **evidence):
    return {"alert_id": f"a{i}", "kind": kind, "status": "firing", "summary": f"s{i}",
            "evidence": evidence}


def test_cooldown_daily_cap_and_label_coverage_floor():
    p = RetrainPolicy(RetrainSettings(on=("feature_drift", "performance_drop"),
                                      cooldown="1h", max_per_day=2, min_label_coverage=0.5))
    assert p.consider([alert(0, kind="data_quality")], 0) is None  # not a retrain reason
    first = p.consider([alert(1), alert(2)], 0)
    assert first is not None and [r["alert_id"] for r in first.reasons] == ["a1", "a2"]
    assert first.cooldown_until_ms == 3_600_000
    assert p.consider([alert(3)], 1_800_000) is None  # cooldown
    assert p.consider([alert(4)], 3_600_000) is not None
    assert p.consider([alert(5)], 7_200_000) is None  # two today already
    assert p.consider([alert(6, "performance_drop", label_coverage=0.3)], 86_400_000) is None
    assert p.consider([alert(7, "performance_drop", label_coverage=0.8)],
                      86_400_000) is not None
    again = RetrainPolicy(p.settings)
    again.load(orjson.loads(orjson.dumps(p.to_state())))
    assert again.to_state() == p.to_state()
    # the same alerts at the same time: the same trigger id (a re-closed window)
    a = RetrainPolicy(p.settings).consider([alert(1), alert(2)], 0)
    assert a is not None and a.trigger_id == first.trigger_id


def test_ten_windows_of_drift_with_a_day_of_cooldown_make_one_trigger(tmp_path):
    cfg = settings_from_mapping({
        "defaults": {"window": "1m", "lateness": "1s", "min_samples": 200},
        "models": {"churn": {
            "features": {"x": {"type": "numeric"}}, "reference": {"warmup": 1000},
            "prediction_drift": False,
            "retrain": {"on": ["feature_drift"], "cooldown": "24h"}}}})
    rng = np.random.default_rng(1)
    events = []
    for w in range(13):
        shifted = w >= 3  # ten drifting windows
        for i in range(1000):
            events.append({"prediction_id": f"p{w}-{i}", "model": "churn",
                           "model_version": "v1", "timestamp": T0 + w * MIN + i * 60,
                           "features": {"x": float(rng.normal(1.0 if shifted else 0.0, 1))},
                           "prediction": 0})
    (tmp_path / "p.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    run_replay(cfg, tmp_path / "p.jsonl", tmp_path / "out", progress=False)
    read = lambda n: [orjson.loads(x) for x in (tmp_path / "out" / n).read_bytes().splitlines()]  # noqa: E731
    alerts = [a for a in read("alerts.jsonl") if a["data"]["kind"] == "feature_drift"]
    triggers = read("retrain-triggers.jsonl")
    # Ten bad windows: one problem, one firing alert, one trigger.
    assert [a["data"]["status"] for a in alerts] == ["firing"]
    assert alerts[0]["data"]["episode"]["first_window"] == "2026-01-01T00:03:00.000Z"
    assert len(triggers) == 1
    data = triggers[0]["data"]
    assert data["trigger_id"] == triggers[0]["id"] and data["model"] == "churn"
    assert [r["alert_id"] for r in data["reasons"]] == [alerts[0]["id"]]
    assert data["policy"]["cooldown_until"] is not None
    schema = orjson.loads((ROOT / "schemas" / "retrain-trigger.schema.json").read_bytes())
    assert not list(Draft202012Validator(schema, format_checker=FormatChecker())
                    .iter_errors(triggers[0]))
