"""Prediction drift: the model's outputs are sketched and compared like features."""

import numpy as np
import pytest

from app.core.monitor import ModelMonitor
from app.policy import decide_drift_alerts
from app.reference import build_reference
from app.settings import settings_from_mapping

W = 60_000


def settings(task="binary_classification", **extra):
    return settings_from_mapping(
        {"defaults": {"window": "1m", "lateness": "0s", "min_samples": 100},
         "models": {"m": {"task": task, "features": {"x": {"type": "numeric"}},
                          "reference": {"warmup": 2000}, **extra}}}, env={})


def events(rng, n, *, score_mean=0.3, regression=False):
    x = rng.normal(0, 1, n)
    s = np.clip(rng.normal(score_mean, 0.1, n), 0, 1)
    out = []
    for i in range(n):
        e = {"model": "m", "model_version": "v1", "features": {"x": float(x[i])}}
        if regression:
            e["prediction"] = float(100 + 10 * s[i])
        else:
            e["prediction"] = bool(s[i] >= 0.5)
            e["scores"] = {"churn": float(s[i]), "stay": float(1 - s[i])}
        out.append(e)
    return out


def run(s, rng, before, after, **kw):
    m = ModelMonitor("m", s, None)
    m.ingest(events(rng, 2000, **kw), [0] * 2000, now=None)  # warm-up: the reference
    m.ingest(before, [W] * len(before), now=None)
    m.ingest(after, [2 * W] * len(after), now=None)
    m.ingest(events(rng, 1, **kw), [4 * W], now=None)
    drift = s.models["m"].drift
    return m, [decide_drift_alerts(m.begin_close(ws)[0], drift) for ws in (W, 2 * W)]


def test_score_and_class_shift_raise_prediction_drift_only():
    s = settings()
    rng = np.random.default_rng(1)
    m, (clean, shifted) = run(s, rng, events(rng, 1000), events(rng, 1000, score_mean=0.5))
    assert set(m.reference.features) == {"x", "@prediction", "@scores.churn", "@scores.stay"}
    assert clean == []
    assert {(a.kind, a.subject) for a in shifted} == {
        ("prediction_drift", "prediction"), ("prediction_drift", "scores.churn"),
        ("prediction_drift", "scores.stay")}


def test_regression_values_are_numeric():
    s = settings(task="regression")
    rng = np.random.default_rng(2)
    m, (clean, shifted) = run(s, rng, events(rng, 1000, regression=True),
                              events(rng, 1000, score_mean=0.6, regression=True),
                              regression=True)
    assert m.reference.features["@prediction"].__class__.__name__ == "NumericReference"
    assert clean == [] and [(a.kind, a.subject) for a in shifted] == [
        ("prediction_drift", "prediction")]


def test_can_be_switched_off_and_files_without_outputs_skip_it():
    s = settings(prediction_drift=False)
    rng = np.random.default_rng(3)
    m, _ = run(s, rng, events(rng, 200), events(rng, 200))
    assert set(m.reference.features) == {"x"}
    ref = build_reference([{"x": 1.0}, {"x": 2.0}], "m", settings().models["m"], origin="t")
    assert set(ref.features) == {"x"}


@pytest.mark.parametrize("fmt", ["csv", "jsonl-flat", "jsonl-events"])
def test_reference_files_carry_outputs(tmp_path, fmt):
    import csv

    import orjson

    from app.reference import load_reference_file

    rng = np.random.default_rng(4)
    evs = events(rng, 500)
    path = tmp_path / ("ref.csv" if fmt == "csv" else "ref.jsonl")
    flat = [{"x": e["features"]["x"], "prediction": e["prediction"],
             "score.churn": e["scores"]["churn"]} for e in evs]
    if fmt == "csv":
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(flat[0]))
            w.writeheader()
            w.writerows(flat)
    elif fmt == "jsonl-flat":
        path.write_bytes(b"\n".join(orjson.dumps(r) for r in flat))
    else:
        path.write_bytes(b"\n".join(orjson.dumps(e) for e in evs))
    ref = load_reference_file(path, "m", settings().models["m"])
    assert "@prediction" in ref.features and "@scores.churn" in ref.features
    assert set(ref.features["@prediction"].categories) <= {"true", "false"}
