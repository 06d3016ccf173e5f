"""Scale out: two workers sharing 4 partitions with 4 models publish the same evaluations
and alerts as one worker does (ids and content; only the CloudEvent source, which names
the worker group, differs); so does a worker whose messages a decode process decodes
(``worker.decode_processes``)."""

from __future__ import annotations

import time

import numpy as np
import orjson
import yaml
from support import (
    WINDOW_MS,
    collect,
    create_topics,
    feature_rows,
    partitions_of,
    predictions,
    produce,
    settings_of,
    write_config,
)

MODELS = ("churn-a", "churn-b", "churn-c", "churn-d")  # one per partition (murmur2)
WINDOWS, PER_WINDOW = 5, 400


def config(tmp, name, **worker):
    home = tmp / name
    home.mkdir()
    path = write_config(home, kafka={"partitions": 4})
    doc = yaml.safe_load(path.read_text())
    (model,) = doc["models"].values()
    doc["models"] = {m: model for m in MODELS}
    doc["worker"].update(worker)
    path.write_text(yaml.safe_dump(doc))
    return path


def stream():
    rng = np.random.default_rng(23)
    t0 = 1_700_000_000_000 // WINDOW_MS * WINDOW_MS
    out = []
    for k, model in enumerate(MODELS):
        values = []
        for w in range(WINDOWS):
            rows = feature_rows(rng, PER_WINDOW, shifted=k % 2 == 1 and w >= 2)
            times = [t0 + w * WINDOW_MS + i * (WINDOW_MS // PER_WINDOW)
                     for i in range(PER_WINDOW)]
            events = predictions(rows, times, model=model, start_id=w * PER_WINDOW)
            values += [orjson.dumps(events[i:i + 100]) for i in range(0, PER_WINDOW, 100)]
        out.append((model, values))
    return out


def run(broker, factory, cfg, count):
    settings = settings_of(cfg)
    create_topics(broker.bootstrap, settings)
    topic = settings.topics.name("predictions")
    workers = [factory(cfg) for _ in range(count)]
    deadline = time.monotonic() + 90
    while True:  # every partition assigned, each worker holding some
        held = [partitions_of(w, topic) for w in workers]
        if set().union(*held) == {"0", "1", "2", "3"} and all(held) and \
                sum(map(len, held)) == 4:
            break
        assert time.monotonic() < deadline, [w.tail() for w in workers]
        time.sleep(0.5)
    for model, values in stream():
        produce(broker.bootstrap, topic, values, key=model.encode())
    expected = len(MODELS) * WINDOWS
    evaluations = collect(broker.bootstrap, settings.topics.name("evaluations"),
                          lambda r: len({x.value for x in r}) >= expected, timeout=120)
    time.sleep(2)
    alerts = collect(broker.bootstrap, settings.topics.name("alerts"), lambda r: False,
                     timeout=3)

    def content(records):
        out = {}
        for r in records:
            event = orjson.loads(r.value)
            event.pop("source")  # urn:driftwarden:<app_id>: the group, not the decision
            out[event["id"]] = event
        return out

    return content(evaluations), content(alerts), held, workers


def test_two_workers_publish_what_one_worker_does(broker, worker_factory, tmp_path):
    one_evals, one_alerts, _, _ = run(broker, worker_factory, config(tmp_path, "one"), 1)
    two_evals, two_alerts, held, workers = run(broker, worker_factory,
                                               config(tmp_path, "two"), 2)
    assert len(one_evals) == len(MODELS) * WINDOWS
    assert {e["data"]["model"] for e in one_alerts.values()} == {"churn-b", "churn-d"}
    assert two_evals == one_evals
    assert two_alerts == one_alerts
    # the work was shared: each worker closed the windows of the models it holds
    closed = [w.metric("driftwarden_windows_closed_total") for w in workers]
    assert all(c > 0 for c in closed) and sum(closed) == len(MODELS) * WINDOWS, (closed, held)


def test_a_worker_with_a_decode_process_publishes_what_one_without_does(
        broker, worker_factory, tmp_path):
    plain_evals, plain_alerts, _, _ = run(broker, worker_factory, config(tmp_path, "plain"), 1)
    evals, alerts, _, workers = run(broker, worker_factory,
                                    config(tmp_path, "pooled", decode_processes=1), 1)
    assert len(plain_evals) == len(MODELS) * WINDOWS and plain_alerts
    assert evals == plain_evals and alerts == plain_alerts
    (worker,) = workers
    messages = len(MODELS) * WINDOWS * PER_WINDOW // 100
    assert worker.metric("driftwarden_messages_decoded_total", decoder="pool") == messages
