"""Events from a plain aiokafka producer lead to alerts naming exactly the shifted features."""

import time

import numpy as np
import orjson
from support import (
    MODEL,
    WINDOW_MS,
    cloud_events,
    collect,
    create_topics,
    feature_rows,
    predictions,
    produce,
    settings_of,
    write_config,
)

from app.replay import run_replay

PER_WINDOW = 600
CLEAN, SHIFTED = 3, 3


def test_shifted_features_alert_and_unshifted_do_not(broker, worker_factory, tmp_path):
    config = write_config(tmp_path)
    settings = settings_of(config)
    create_topics(broker.bootstrap, settings)
    worker = worker_factory(config)

    rng = np.random.default_rng(7)
    t0 = 1_700_000_000_000 // WINDOW_MS * WINDOW_MS
    values = []
    for w in range(CLEAN + SHIFTED):
        rows = feature_rows(rng, PER_WINDOW, shifted=w >= CLEAN)
        times = [t0 + w * WINDOW_MS + i * (WINDOW_MS // PER_WINDOW) for i in range(PER_WINDOW)]
        events = predictions(rows, times, start_id=w * PER_WINDOW)
        if w % 2:  # odd windows: one event per message; even: arrays of 100
            values += [orjson.dumps(e) for e in events]
        else:
            values += [orjson.dumps(events[i:i + 100]) for i in range(0, PER_WINDOW, 100)]
    produce(broker.bootstrap, settings.topics.name("predictions"), values)

    evaluations = cloud_events(collect(broker.bootstrap, settings.topics.name("evaluations"),
                                       lambda r: len(r) >= CLEAN + SHIFTED, timeout=90))
    assert len(evaluations) == CLEAN + SHIFTED, worker.tail()
    assert [e["data"]["n"] for e in evaluations] == [PER_WINDOW] * (CLEAN + SHIFTED)
    alerts = cloud_events(collect(broker.bootstrap, settings.topics.name("alerts"),
                                  lambda r: False, timeout=2))
    by_window = {}
    for a in alerts:
        assert a["type"] == "io.driftwarden.alert.firing"
        assert a["data"]["model"] == MODEL and a["data"]["owners"]["on_call"] == "it-oncall"
        by_window.setdefault(a["data"]["window"]["start"], set()).add(a["data"]["feature"])
    windows = [e["data"]["window"]["start"] for e in evaluations]
    for w in windows[:CLEAN]:
        assert w not in by_window, f"false alarm in clean window {w}: {by_window.get(w)}"
    # One alert per shifted feature, from the first shifted window; the later shifted
    # windows continue the same problems (their evaluations name those alerts).
    assert by_window == {windows[CLEAN]: {"n1", "c2"}}, by_window
    fired = {a["data"]["alert_id"] for a in alerts}
    for e in evaluations[CLEAN:]:
        assert set(e["data"]["alerts"]) == fired, e["data"]["alerts"]
    assert len({a["id"] for a in alerts}) == len(alerts)
    assert worker.metric("driftwarden_events_total", outcome="valid") == PER_WINDOW * 6
    assert worker.metric("driftwarden_windows_closed_total", model=MODEL) == 6
    assert worker.metric("driftwarden_drift_score", model=MODEL, feature="n1") > 0.1
    # every predictions partition this worker holds reports its lag: nothing left
    topic = settings.topics.name("predictions")
    deadline = time.monotonic() + 15
    while True:
        lag = {dict(labels)["partition"]: v for (name, labels), v in worker.metrics().items()
               if name == "driftwarden_consumer_lag_messages" and ("topic", topic) in labels}
        if (set(lag) == {"0", "1"} and not any(lag.values())) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert lag == {"0": 0, "1": 0}

    # The same messages through the offline replay: the same decisions, the same ids.
    lines = tmp_path / "predictions.jsonl"
    lines.write_bytes(b"\n".join(values) + b"\n")
    summary = run_replay(settings, lines, tmp_path / "replay", progress=False)
    assert summary.events == PER_WINDOW * 6 and summary.rejected == 0
    offline_alerts = read_jsonl(tmp_path / "replay" / "alerts.jsonl")
    offline_evals = read_jsonl(tmp_path / "replay" / "evaluations.jsonl")
    assert sorted(a["id"] for a in offline_alerts) == sorted(a["id"] for a in alerts)
    assert [figures(e) for e in offline_evals] == [figures(e) for e in evaluations]
    assert offline_evals == evaluations  # byte-for-byte the same events


def read_jsonl(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def figures(evaluation):
    d = evaluation["data"]
    return d["window"]["start_ms"], d["n"], [(f["feature"], f["value"]) for f in d["features"]]
