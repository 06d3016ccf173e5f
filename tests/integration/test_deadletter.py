"""Garbage next to valid events: every bad element is dead-lettered with its reason,
every valid one is counted, and the worker keeps running."""

import math

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


def headers(record):
    return {k: v.decode() for k, v in record.headers}


def test_bad_elements_go_to_the_dead_letter_topic(broker, worker_factory, tmp_path):
    config = write_config(tmp_path, worker={"max_message_bytes": 1024 * 1024})
    settings = settings_of(config)
    create_topics(broker.bootstrap, settings)
    worker = worker_factory(config)

    t = 1_700_000_000_000 // WINDOW_MS * WINDOW_MS + WINDOW_MS - 500  # closes soon when idle
    good = predictions(feature_rows(np.random.default_rng(1), 7), [t] * 7)
    wrong_types = {**good[0], "prediction_id": 5}
    missing = {k: v for k, v in good[0].items() if k != "features"}
    unknown = {**good[0], "model": "nobody-knows"}
    nan_elem = (b'{"prediction_id":"n","model":"churn-it","model_version":"v1",'
                b'"features":{"n1":NaN},"prediction":1}')
    array_with_nan = b"[" + orjson.dumps(good[2]) + b"," + nan_elem + b"," + \
        orjson.dumps(good[3]) + b"]"
    huge = b'{"prediction_id":"h","blob":"' + b"a" * (5 * 1024 * 1024) + b'"}'
    values = [
        orjson.dumps(good[0]),
        b"this is not json",
        orjson.dumps([good[1], wrong_types, missing, unknown]),
        array_with_nan,
        huge,
        b"\xff\xfe\x00garbage",
        orjson.dumps(good[4:7]),
    ]
    produce(broker.bootstrap, settings.topics.name("predictions"), values)

    expected = {"invalid_json": 2, "schema_violation": 2, "unknown_model": 1,
                "non_finite_number": 1, "payload_too_large": 1}
    dead = collect(broker.bootstrap, settings.topics.name("deadletter"),
                   lambda r: len(r) >= sum(expected.values()), timeout=60)
    reasons = {}
    for rec in dead:
        h = headers(rec)
        reasons[h["dw-reason"]] = reasons.get(h["dw-reason"], 0) + 1
        assert h["dw-source-topic"] == settings.topics.name("predictions")
        assert int(h["dw-source-offset"]) >= 0 and int(h["dw-source-partition"]) >= 0
        assert h["dw-error"]
    assert reasons == expected, worker.tail()

    by_reason = {headers(r)["dw-reason"]: r for r in dead}
    assert by_reason["payload_too_large"].value == huge  # original bytes, unchanged
    nan_dead = by_reason["non_finite_number"]
    assert headers(nan_dead)["dw-element-index"] == "1"
    assert math.isnan(__import__("json").loads(nan_dead.value)["features"]["n1"])
    unk = by_reason["unknown_model"]
    assert orjson.loads(unk.value)["model"] == "nobody-knows"
    assert headers(unk)["dw-element-index"] == "3"

    evaluations = cloud_events(collect(broker.bootstrap, settings.topics.name("evaluations"),
                                       lambda r: len(r) >= 1, timeout=30))
    assert [e["data"]["n"] for e in evaluations] == [7]
    assert evaluations[0]["data"]["model"] == MODEL
    assert worker.metric("driftwarden_events_total", outcome="valid") == 7
    # by model: the refused elements naming the configured model count under it; the
    # unparseable ones, the one without a model and the unknown model's under "" (a
    # refused record never adds a label value)
    topic = settings.topics.name("predictions")
    assert worker.metric("driftwarden_events_total", topic=topic, model=MODEL,
                         outcome="valid") == 7
    assert worker.metric("driftwarden_events_total", model=MODEL, outcome="invalid") == 3
    assert worker.metric("driftwarden_events_total", model="", outcome="invalid") == 3
    assert worker.metric("driftwarden_events_total", model="",
                         outcome="unknown_model") == 1
    assert not any(dict(lab).get("model") == "nobody-knows"
                   for _, lab in worker.metrics())
    assert worker.metric("driftwarden_deadletters_total") == sum(expected.values())
    assert worker.proc.poll() is None  # still running
