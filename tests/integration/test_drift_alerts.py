"""Events from a plain aiokafka producer lead to alerts naming exactly the shifted features."""

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
    for w in windows[CLEAN:]:
        assert by_window.get(w) == {"n1", "c2"}, by_window
    assert len({a["id"] for a in alerts}) == len(alerts)
    assert worker.metric("driftwarden_events_total", outcome="valid") == PER_WINDOW * 6
    assert worker.metric("driftwarden_windows_closed_total", model=MODEL) == 6
    assert worker.metric("driftwarden_drift_score", model=MODEL, feature="n1") > 0.1
