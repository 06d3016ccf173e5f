"""The whole loop on the embedded broker, every part a real process:

drift on version v1 → one firing alert per shifted feature and one retrain trigger →
``driftwarden retrain-listener --exec train.py --deploy`` runs the training script, which
builds and publishes v2's reference → ``retrain_started``, ``retrain_completed`` (v2, with
the script's metrics) and ``deployed`` v2 on the model-events topic → v2's predictions are
compared with v2's own reference: no drift, and the v1 alerts resolve.
"""

import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import orjson
import yaml
from support import (
    MODEL,
    ROOT,
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

TRAIN = """\
import json, os, subprocess, sys
event = json.load(sys.stdin)
assert event["type"] == "io.driftwarden.retrain.requested", event["type"]
assert os.environ["DW_MODEL"] == {model!r}
# "training" on the recent data; its reference goes to the references topic
subprocess.run([sys.executable, "-m", "app", "reference", "build", {data!r}, "-c", {config!r},
                "--model", {model!r}, "--version", "v2", "--out", {out!r}, "--publish",
                "--bootstrap", {bootstrap!r}], check=True, stdout=sys.stderr)
print(json.dumps({{"version": "v2", "metrics": {{"accuracy": 0.9}},
                  "reference": "topic:{model}/v2"}}))
"""


def window_values(rng, t0, windows, *, version, shifted):
    values = []
    for w in windows:
        rows = feature_rows(rng, PER_WINDOW, shifted=shifted)
        times = [t0 + w * WINDOW_MS + i * (WINDOW_MS // PER_WINDOW) for i in range(PER_WINDOW)]
        events = predictions(rows, times, start_id=w * PER_WINDOW, version=version)
        values += [orjson.dumps(events[i:i + 150]) for i in range(0, PER_WINDOW, 150)]
    return values


def test_drift_retrain_deploy_and_monitoring_on_the_new_reference(broker, worker_factory,
                                                                 tmp_path):
    config = write_config(tmp_path)
    doc = yaml.safe_load(config.read_text())
    doc["models"][MODEL]["retrain"] = {"on": ["feature_drift"], "cooldown": "24h"}
    config.write_text(yaml.safe_dump(doc))
    settings = settings_of(config)
    create_topics(broker.bootstrap, settings)
    topic = settings.topics.name("predictions")
    rng = np.random.default_rng(5)
    t0 = 1_700_000_000_000 // WINDOW_MS * WINDOW_MS

    recent = tmp_path / "recent.jsonl"  # the data v2 is "trained" on: shifted, like live
    recent.write_bytes(b"\n".join(orjson.dumps(r) for r in feature_rows(rng, 5000,
                                                                       shifted=True)))
    script = tmp_path / "train.py"
    script.write_text(TRAIN.format(model=MODEL, data=str(recent), config=str(config),
                                   out=str(tmp_path / "v2.reference.json"),
                                   bootstrap=broker.bootstrap))
    worker = worker_factory(config)
    listener_log = tmp_path / "listener.log"
    with open(listener_log, "wb") as log:
        listener = subprocess.Popen(
            [sys.executable, "-m", "app", "retrain-listener", "-c", str(config),
             "--exec", f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}",
             "--bootstrap", broker.bootstrap, "--deploy", "--timeout", "120s"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        # v1 drifts for three windows: one alert per shifted feature, one trigger
        produce(broker.bootstrap, topic, window_values(rng, t0, range(3), version="v1",
                                                       shifted=True))
        lifecycle = [orjson.loads(r.value) for r in collect(
            broker.bootstrap, settings.topics.name("model_events"),
            lambda r: len(r) >= 3, timeout=90)]
        assert [(e["event"], e["version"]) for e in lifecycle] == [
            ("retrain_started", "v1"), ("retrain_completed", "v2"), ("deployed", "v2")], (
            worker.tail(), listener_log.read_text()[-3000:])
        assert lifecycle[1]["metrics"] == {"accuracy": 0.9}
        assert lifecycle[1]["reference"] == f"topic:{MODEL}/v2"
        triggers = cloud_events(collect(broker.bootstrap,
                                        settings.topics.name("retrain_triggers"),
                                        lambda r: False, timeout=2))
        assert len(triggers) == 1
        trigger = triggers[0]["data"]
        assert {e["trigger_id"] for e in lifecycle} == {trigger["trigger_id"]}
        assert trigger["model_version"] == "v1"
        fired = cloud_events(collect(broker.bootstrap, settings.topics.name("alerts"),
                                     lambda r: len(r) >= 2, timeout=30))
        assert {a["data"]["feature"] for a in fired} == {"n1", "c2"}
        assert {r["alert_id"] for r in trigger["reasons"]} == {a["data"]["alert_id"] for a in fired}
        time.sleep(2)  # the worker installs v2's reference from the references topic

        # v2 serves the same (shifted) traffic: compared with its own reference, no drift
        produce(broker.bootstrap, topic, window_values(rng, t0, range(3, 6), version="v2",
                                                       shifted=True))
        evaluations = cloud_events(collect(
            broker.bootstrap, settings.topics.name("evaluations"),
            lambda r: len(r) >= 6, timeout=90))
        v2 = [e["data"] for e in evaluations if e["data"]["model_version"] == "v2"]
        assert len(v2) == 3, worker.tail()
        assert all(d["reference_version"] == "v2" and not d["reference_fallback"]
                   for d in v2), [(d["reference_version"], d["reference"]) for d in v2]
        assert all(d["alerts"] == [] for d in v2[1:])
        alerts = cloud_events(collect(
            broker.bootstrap, settings.topics.name("alerts"),
            lambda r: sum(orjson.loads(x.value)["type"].endswith("resolved")
                          for x in r) >= 2, timeout=30))
        resolved = [a["data"] for a in alerts if a["type"].endswith("resolved")]
        assert sorted(d["alert_id"] for d in resolved) == sorted(
            a["data"]["alert_id"] for a in fired)
        assert [a for a in alerts if a["type"].endswith("firing")
                and a["data"].get("model_version") == "v2"] == []
        # still one trigger: v2's windows raised nothing new
        assert len(collect(broker.bootstrap, settings.topics.name("retrain_triggers"),
                           lambda r: False, timeout=2)) == 1
    finally:
        listener.send_signal(signal.SIGTERM)
        try:
            assert listener.wait(30) == 0, listener_log.read_text()[-3000:]
        finally:
            if listener.poll() is None:
                listener.kill()
