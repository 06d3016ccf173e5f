"""Data-quality alerts through the engine (``driftwarden replay``): nulls injected into one
feature, and a renamed feature, are named with their rule, rate and threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
from jsonschema import Draft202012Validator, FormatChecker

from app.replay import run_replay
from app.settings import settings_from_mapping

ROOT = Path(__file__).resolve().parents[3]
MIN = 60_000
T0 = 1_767_225_600_000
PER_WINDOW = 1000


def settings():
    return settings_from_mapping({
        "defaults": {"window": "1m", "lateness": "1s", "min_samples": 200},
        "sources": {"crm": {"owner": "data-eng"}, "billing": {"owner": "payments"}},
        "models": {"churn": {
            "owners": {"on_call": "churn-oncall"},
            "features": {"tenure_months": {"type": "numeric", "source": "crm"},
                         "age": {"type": "numeric", "source": "crm"},
                         "monthly_charges": {"type": "numeric", "source": "billing"},
                         "plan": {"type": "categorical", "source": "billing"}},
            "reference": {"warmup": 1000}, "prediction_drift": False}},
    })


def events(window: int, *, nulls: str | None = None, rename: bool = False
           ) -> list[dict[str, Any]]:
    rng = np.random.default_rng(window)
    out = []
    for i in range(PER_WINDOW):
        f: dict[str, Any] = {"tenure_months": float(rng.integers(0, 72)),
                             "age": float(rng.integers(18, 90)),
                             "monthly_charges": round(float(rng.normal(65, 20)), 2),
                             "plan": str(rng.choice(["free", "pro", "team"]))}
        if nulls and rng.random() < 0.3:
            f[nulls] = None
        if rename:
            f["tenure"] = f.pop("tenure_months")
        out.append({"prediction_id": f"p{window}-{i}", "model": "churn", "model_version": "v1",
                    "timestamp": T0 + window * MIN + i * (MIN // PER_WINDOW), "features": f,
                    "prediction": 0})
    return out


def replay(tmp: Path, stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (tmp / "p.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in stream))
    run_replay(settings(), tmp / "p.jsonl", tmp / "out", progress=False)
    docs = {n: [orjson.loads(x) for x in (tmp / "out" / f"{n}.jsonl").read_bytes().splitlines()]
            for n in ("alerts", "evaluations")}
    for stem, name in (("alert", "alerts"), ("evaluation", "evaluations")):
        schema = orjson.loads((ROOT / "schemas" / f"{stem}.schema.json").read_bytes())
        validator = Draft202012Validator(schema, format_checker=FormatChecker())
        for doc in docs[name]:
            assert not list(validator.iter_errors(doc)), doc
    return [a["data"] for a in docs["alerts"] if a["data"]["kind"] == "data_quality"]


def window_of(alert: dict[str, Any]) -> int:
    return int(alert["window"]["start"][14:16])


def test_thirty_percent_nulls_in_one_feature_alert_for_that_feature_only(tmp_path):
    stream = [e for w in range(4) for e in events(w, nulls="monthly_charges" if w >= 2
                                                  else None)]
    alerts = replay(tmp_path, stream)
    # One alert for the problem (window 3 continues it), not one per bad window.
    assert [(window_of(a), a["feature"], a["evidence"]["statistic"], a["status"])
            for a in alerts] == [(2, "monthly_charges", "null", "firing")]
    a = alerts[0]
    assert 0.25 < a["evidence"]["value"] < 0.35 and a["evidence"]["threshold"] == 0.05
    assert a["severity"] == "critical" and "% null" in a["summary"]
    # Confined to one source's features: the alert points upstream, at its owner.
    assert a["source"] == "billing" and a["owners"]["data"] == "payments"


def test_a_renamed_feature_is_missing_and_its_new_name_unexpected(tmp_path):
    stream = [e for w in range(3) for e in events(w, rename=w >= 2)]
    alerts = replay(tmp_path, stream)
    found = {(a["feature"], a["evidence"]["statistic"]) for a in alerts}
    assert found == {("tenure_months", "missing"), ("unexpected_features", "unexpected")}
    unexpected = next(a for a in alerts if a["evidence"]["statistic"] == "unexpected")
    assert "tenure" in unexpected["evidence"]["detail"]
    assert all(window_of(a) == 2 for a in alerts)


def test_clean_windows_raise_no_quality_alert(tmp_path):
    assert replay(tmp_path, [e for w in range(4) for e in events(w)]) == []


def test_nan_features_are_dead_lettered_and_counted_as_non_finite(tmp_path):
    stream = [e for w in range(3) for e in events(w)]
    lines = []
    for e in stream:
        line = orjson.dumps(e)
        if e["prediction_id"].startswith("p2-") and int(e["prediction_id"][3:]) % 50 == 0:
            line = line.replace(b'"age":', b'"age":NaN,"x_age":', 1)  # 2% of window 2
        lines.append(line)
    (tmp_path / "p.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    run_replay(settings(), tmp_path / "p.jsonl", tmp_path / "out", progress=False)
    alerts = [orjson.loads(x)["data"] for x in
              (tmp_path / "out" / "alerts.jsonl").read_bytes().splitlines()]
    bad = [a for a in alerts if a["evidence"].get("statistic") == "non_finite"]
    assert [(a["feature"], window_of(a)) for a in bad] == [("age", 2)]
    assert bad[0]["evidence"]["value"] == 20 / 1000
    dead = (tmp_path / "out" / "deadletter.jsonl").read_bytes().splitlines()
    assert len(dead) == 20 and all(b"non_finite_number" in d for d in dead)
