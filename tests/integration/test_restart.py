"""A worker stopped mid-window restores the window from the changelog and closes it once."""

import time

import numpy as np
import orjson
from support import (
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


def test_restart_mid_window_restores_state_and_closes_once(broker, worker_factory, tmp_path):
    config = write_config(tmp_path)
    settings = settings_of(config)
    create_topics(broker.bootstrap, settings)
    topic = settings.topics.name("predictions")
    rng = np.random.default_rng(3)
    w0 = 1_700_000_000_000 // WINDOW_MS * WINDOW_MS

    first = worker_factory(config)
    before = predictions(feature_rows(rng, 300), [w0 + 1000 + i * 50 for i in range(300)])
    produce(broker.bootstrap, topic, [orjson.dumps(before[i:i + 50]) for i in range(0, 300, 50)])
    first.wait_metric("driftwarden_events_total", 300, outcome="valid")
    assert first.stop() == 0

    second = worker_factory(config)
    after = predictions(feature_rows(rng, 200), [w0 + 20_000 + i * 50 for i in range(200)],
                        start_id=300)
    advance = predictions(feature_rows(rng, 1), [w0 + 2 * WINDOW_MS + 5_000], start_id=500)
    produce(broker.bootstrap, topic, [orjson.dumps(after), orjson.dumps(advance)])

    evaluations = cloud_events(collect(broker.bootstrap, settings.topics.name("evaluations"),
                                       lambda r: len(r) >= 1, timeout=60))
    assert len(evaluations) == 1, second.tail()
    data = evaluations[0]["data"]
    assert data["window"]["start_ms"] == w0 and data["n"] == 500
    time.sleep(3)  # a second close of the same window would show up by now
    again = collect(broker.bootstrap, settings.topics.name("evaluations"), lambda r: False,
                    timeout=2)
    assert [orjson.loads(r.value)["data"]["window"]["start_ms"] for r in again] == [w0]
    assert second.metric("driftwarden_events_total", outcome="valid") == 201, [
        (k, v) for k, v in second.metrics().items() if "events" in k[0] and "bucket" not in k[0]]
