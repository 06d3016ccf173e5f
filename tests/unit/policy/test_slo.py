"""Latency and cost objectives judged per window and version: ``latency_slo`` and
``cost_budget`` alerts on seeded streams with known change points, and their metrics."""

from pathlib import Path

import numpy as np
import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from app.core.serving import ServingStats
from app.observability.metrics import LATENCY_BUCKETS, Metrics
from app.policy.slo import judge_serving
from app.replay import run_replay
from app.settings import SloSettings, settings_from_mapping

W = 60_000
T0 = 1_700_000_000_000 // W * W
ROOT = Path(__file__).resolve().parents[3]
PER_WINDOW = 1000
SLOW = range(4, 7)  # windows whose median latency doubles: p99 ~380 ms > 250 ms
COSTLY = range(7, 9)  # windows at 1.2 per 1000 predictions: over twice the 0.5 budget


def config(**slo):
    return settings_from_mapping(
        {"defaults": {"window": "1m", "lateness": "0s", "min_samples": 200},
         "models": {"m": {"features": {"x": {"type": "numeric"}},
                          "reference": {"warmup": PER_WINDOW},
                          "slo": slo or {"latency_p99_ms": 250, "cost_per_1k": 0.5}}}},
        env={})


def stream(seed=1, windows=12):
    rng = np.random.default_rng(seed)
    out = []
    for w in range(windows):
        median = 150.0 if w in SLOW else 80.0
        latency = np.exp(rng.normal(np.log(median), 0.4, PER_WINDOW))
        cost = 0.0012 if w in COSTLY else 0.0004
        x = rng.normal(0, 1, PER_WINDOW)
        for i in range(PER_WINDOW):
            out.append({"prediction_id": f"p{len(out)}", "model": "m", "model_version": "v1",
                        "features": {"x": round(float(x[i]), 5)}, "prediction": 1,
                        "latency_ms": round(float(latency[i]), 3), "cost": cost,
                        "timestamp": T0 + w * W + i * (W // PER_WINDOW)})
    return out


def replay(tmp: Path, cfg, preds):
    p = tmp / "p.jsonl"
    p.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in preds))
    run_replay(cfg, p, tmp / "out", progress=False)
    read = lambda n: [orjson.loads(x) for x in (tmp / "out" / n).read_bytes().splitlines()]  # noqa: E731
    return read("alerts.jsonl"), read("evaluations.jsonl")


def window_of(iso_or_ms):
    if isinstance(iso_or_ms, int):
        return (iso_or_ms - T0) // W
    from datetime import datetime

    ms = int(datetime.fromisoformat(iso_or_ms.replace("Z", "+00:00")).timestamp() * 1000)
    return (ms - T0) // W


def test_slow_then_costly_windows_fire_once_each_and_resolve(tmp_path):
    alerts, evaluations = replay(tmp_path, config(), stream())
    lifecycle = [(a["data"]["kind"], a["type"].rsplit(".", 1)[1], a["data"]["severity"],
                  window_of(a["data"]["window"]["start"]) if a["type"].endswith("firing")
                  else None)
                 for a in alerts if a["data"]["kind"] in ("latency_slo", "cost_budget")]
    assert lifecycle == [
        ("latency_slo", "firing", "warning", SLOW[0]),
        ("cost_budget", "firing", "critical", COSTLY[0]),
        ("latency_slo", "resolved", "warning", None),  # after two good windows
        ("cost_budget", "resolved", "critical", None),
    ]
    resolved_at = [window_of(a["data"]["endsAt"]) for a in alerts  # the resolving window's end
                   if a["type"].endswith("resolved")]
    assert resolved_at == [SLOW[-1] + 3, COSTLY[-1] + 3]
    firing = {a["data"]["kind"]: a["data"] for a in alerts if a["type"].endswith("firing")}
    lat = firing["latency_slo"]
    assert lat["feature"] == "latency_p99_ms" and lat["evidence"]["reference_value"] == 250
    assert 250 < lat["evidence"]["value"] < 500 and lat["evidence"]["n"] == PER_WINDOW
    cost = firing["cost_budget"]["evidence"]
    assert cost["value"] == pytest.approx(1.2) and cost["threshold"] == 1.0
    # every evaluation carries the figures; bad windows name the firing alert
    by_window = {window_of(e["data"]["window"]["start_ms"]): e["data"] for e in evaluations}
    assert sorted(by_window) == list(range(1, 12))  # window 0 was the warm-up
    for w, data in by_window.items():
        s = data["serving"]
        assert s["objectives"] == {"latency_p99_ms": 250, "cost_per_1k": 0.5}
        assert s["latency_ms"]["n"] == PER_WINDOW and s["cost"]["n"] == PER_WINDOW
        assert (s["latency_ms"]["p99"] > 250) == (w in SLOW)
        assert s["cost"]["per_1k"] == pytest.approx(1.2 if w in COSTLY else 0.4)
        expected = ({lat["alert_id"]} if w in SLOW else set()) | (
            {firing["cost_budget"]["alert_id"]} if w in COSTLY else set())
        assert set(s["alerts"]) == expected, w
    for stem, docs in (("evaluation", evaluations), ("alert", alerts)):
        schema = orjson.loads((ROOT / f"schemas/{stem}.schema.json").read_bytes())
        check = Draft202012Validator(schema, format_checker=FormatChecker())
        assert [e.message for doc in docs for e in check.iter_errors(doc)] == []


def test_steady_serving_never_alerts(tmp_path):
    preds = [e for e in stream(seed=2, windows=12)
             if window_of(e["timestamp"]) not in (*SLOW, *COSTLY)]
    alerts, evaluations = replay(tmp_path, config(), preds)
    assert [a for a in alerts if a["data"]["kind"] in ("latency_slo", "cost_budget")] == []
    assert all(e["data"]["serving"]["alerts"] == [] for e in evaluations)


def test_without_objectives_or_figures_there_is_no_serving_section(tmp_path):
    preds = [{k: v for k, v in e.items() if k not in ("latency_ms", "cost")}
             for e in stream(windows=3)]
    _, evaluations = replay(tmp_path, config(latency_p99_ms=250), preds)
    assert evaluations[0]["data"]["serving"] == {
        "latency_ms": None, "cost": None,
        "objectives": {"latency_p99_ms": 250, "cost_per_1k": None}, "alerts": []}
    (tmp_path / "b").mkdir()
    cfg = settings_from_mapping({"defaults": {"window": "1m", "lateness": "0s"}, "models": {
        "m": {"features": {"x": {"type": "numeric"}}, "reference": {"warmup": PER_WINDOW}}}})
    _, evaluations = replay(tmp_path / "b", cfg, preds)
    assert evaluations and all("serving" not in e["data"] for e in evaluations)


def test_too_few_predictions_are_not_judged():
    s = ServingStats()
    s.update([{"latency_ms": 900.0, "cost": 1.0}] * 50)
    judged = judge_serving(s, SloSettings(latency_p99_ms=250, cost_per_1k=0.5),
                           min_samples=200)
    assert judged.decisions == [] and judged.good == []
    assert judge_serving(s, SloSettings(latency_p99_ms=250, min_samples=10),
                         min_samples=200).decisions[0].severity == "critical"


def test_serving_stats_do_not_depend_on_batching():
    rng = np.random.default_rng(3)
    events = [{"latency_ms": float(v), "cost": float(c)}
              for v, c in zip(rng.lognormal(4, 1, 3000), rng.uniform(0, 0.01, 3000),
                              strict=True)]
    whole, parts = ServingStats(), ServingStats()
    whole.update(events)
    for i in range(0, 3000, 7):
        parts.update(events[i:i + 7])
    assert whole.figures() == parts.figures()
    again = ServingStats.from_state(orjson.loads(orjson.dumps(parts.to_state())))
    assert again.figures() == whole.figures()


def test_serving_stats_count_what_each_prediction_carries():
    """Lists of latencies and costs (None: not carried), whole batches or mixed, give
    what the predictions one by one give; one that carries neither is not counted."""
    rng = np.random.default_rng(5)
    events = []
    for i in range(600):
        e = {}
        if i % 3:
            e["latency_ms"] = float(rng.lognormal(4, 1)) if i % 7 else int(i)
        if i % 5 == 0:
            e["cost"] = float(rng.uniform(0, 0.01))
        events.append(e)
    one_by_one, batched, plain = ServingStats(), ServingStats(), ServingStats()
    for e in events:
        one_by_one.update([e])
    batched.add([e.get("latency_ms") for e in events], [e.get("cost") for e in events])
    assert batched.n == sum(1 for e in events if e) == one_by_one.n
    assert batched.to_state() == one_by_one.to_state()
    latencies = [float(v) for v in rng.lognormal(4, 1, 100)]  # floats only, no cost
    plain.add(latencies, [None] * 100)
    assert plain.n == 100 and plain.cost_n == 0
    assert plain.latency_quantile(0.5) == pytest.approx(np.median(latencies), rel=0.02)


def test_latency_histogram_matches_a_plain_prometheus_histogram():
    rng = np.random.default_rng(4)
    seconds = rng.lognormal(-3, 1.5, 5000)
    seconds[:3] = [0.001, 10.0, 0.05]  # on bucket bounds: le is inclusive
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for i in range(0, 5000, 500):
        metrics.observe_predictions("m", [{"model_version": "v1", "latency_ms": s * 1000,
                                           "cost": 0.001} for s in seconds[i:i + 500]])
    plain_registry = CollectorRegistry()
    plain = Histogram("plain_seconds", "x", buckets=LATENCY_BUCKETS, registry=plain_registry)
    for s in seconds * 1000 / 1000:
        plain.observe(s)

    def samples(reg, name):
        from prometheus_client import generate_latest

        fams = text_string_to_metric_families(generate_latest(reg).decode())
        return {(s.name.replace(name, ""), s.labels.get("le")): s.value
                for f in fams for s in f.samples if s.name.startswith(name)}

    ours = samples(registry, "driftwarden_prediction_latency_seconds")
    theirs = samples(plain_registry, "plain_seconds")
    assert {k: v for k, v in ours.items() if k[0] != "_sum"} == \
        {k: v for k, v in theirs.items() if k[0] in ("_bucket", "_count")}
    assert ours[("_sum", None)] == pytest.approx(theirs[("_sum", None)])
    assert metrics.predictions.labels("m", "v1")._value.get() == 5000
    assert metrics.cost.labels("m", "v1")._value.get() == pytest.approx(5.0)


def test_a_batch_of_several_versions_is_counted_per_version():
    metrics = Metrics(CollectorRegistry())
    metrics.observe_predictions("m", [
        {"model_version": "v1", "latency_ms": 20, "cost": 0.5},
        {"model_version": "v2", "latency_ms": 40},
        {"model_version": "v1", "cost": 0.25},
        {"model_version": "v2", "latency_ms": None, "cost": None}])
    assert metrics.predictions.labels("m", "v1")._value.get() == 2
    assert metrics.predictions.labels("m", "v2")._value.get() == 2
    assert metrics.cost.labels("m", "v1")._value.get() == pytest.approx(0.75)
    assert metrics.cost.labels("m", "v2")._value.get() == 0
    counts = {s.labels["version"]: s.value
              for f in metrics.latency.collect() for s in f.samples
              if s.name.endswith("_count")}
    assert counts == {"v1": 1, "v2": 1}
