"""A worker killed (SIGKILL) while alerts are firing: the restarted worker does not fire
them again, and resolves each of them once when the drift goes away.

The decisions are also those of the offline replay of the same messages: a restart
changes nothing a consumer of the alerts topic can see, beyond at-least-once copies of
events with the same ids.
"""

import signal
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

from app.replay import run_replay

PER_WINDOW = 600


def window_messages(rng, t0, windows, shifted):
    values = []
    for w in windows:
        rows = feature_rows(rng, PER_WINDOW, shifted=shifted)
        times = [t0 + w * WINDOW_MS + i * (WINDOW_MS // PER_WINDOW) for i in range(PER_WINDOW)]
        events = predictions(rows, times, start_id=w * PER_WINDOW)
        values += [orjson.dumps(events[i:i + 100]) for i in range(0, PER_WINDOW, 100)]
    return values


def starts_of(records):
    return {orjson.loads(r.value)["data"]["window"]["start_ms"] for r in records}


def test_alert_firing_across_a_kill_is_not_fired_again_and_resolves_once(
        broker, worker_factory, tmp_path):
    config = write_config(tmp_path)
    settings = settings_of(config)
    create_topics(broker.bootstrap, settings)
    topic, alerts_topic, evals_topic = (settings.topics.name(t) for t in
                                        ("predictions", "alerts", "evaluations"))
    rng = np.random.default_rng(11)
    t0 = 1_700_000_000_000 // WINDOW_MS * WINDOW_MS

    first = worker_factory(config)
    before = window_messages(rng, t0, range(0, 2), shifted=True)
    produce(broker.bootstrap, topic, before)
    fired = cloud_events(collect(broker.bootstrap, alerts_topic, lambda r: len(r) >= 2,
                                 timeout=60))
    assert {a["data"]["feature"] for a in fired} == {"n1", "c2"}, first.tail()
    collect(broker.bootstrap, evals_topic, lambda r: len(starts_of(r)) >= 2, timeout=30)
    first.wait_metric("driftwarden_alerts_firing", 2)
    time.sleep(4)  # the state's changelog records and the offsets reach the broker
    first.stop(signal.SIGKILL)

    second = worker_factory(config)
    after = (window_messages(rng, t0, range(2, 4), shifted=True)
             + window_messages(rng, t0, range(4, 7), shifted=False))
    produce(broker.bootstrap, topic, after)
    evaluations = collect(broker.bootstrap, evals_topic, lambda r: len(starts_of(r)) >= 7,
                          timeout=90)
    assert starts_of(evaluations) == {t0 + w * WINDOW_MS for w in range(7)}, second.tail()
    alerts = cloud_events(collect(
        broker.bootstrap, alerts_topic,
        lambda r: sum(orjson.loads(x.value)["type"].endswith("resolved") for x in r) >= 2,
        timeout=60))

    # At-least-once copies carry the same id and the same content; nothing new fired.
    by_id = {}
    for a in alerts:
        assert by_id.setdefault(a["id"], a) == a, a["id"]
    firing = [a for a in by_id.values() if a["type"] == "io.driftwarden.alert.firing"]
    resolved = [a for a in by_id.values() if a["type"] == "io.driftwarden.alert.resolved"]
    problems = {a["data"]["alert_id"] for a in fired}
    assert {a["data"]["alert_id"] for a in firing} == problems
    assert sorted(a["data"]["alert_id"] for a in resolved) == sorted(problems), second.tail()
    assert all(a["data"]["window"]["start"] == fired[0]["data"]["window"]["start"]
               for a in firing if a["data"]["severity"] == "warning")
    assert second.metric("driftwarden_alerts_firing") == 0

    # The same messages offline, without a restart: the same events.
    lines = tmp_path / "predictions.jsonl"
    lines.write_bytes(b"\n".join(before + after) + b"\n")
    run_replay(settings, lines, tmp_path / "replay", progress=False)
    offline = [orjson.loads(line) for line in
               (tmp_path / "replay" / "alerts.jsonl").read_bytes().splitlines() if line]
    assert sorted(a["id"] for a in offline) == sorted(by_id)
