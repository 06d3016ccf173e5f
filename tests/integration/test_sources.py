"""Sources on the real broker: a silent source is stale while nothing arrives, and
resolves when it resumes; a renamed field is a schema change naming the affected model."""

from __future__ import annotations

import time

import orjson
import yaml
from support import MODEL, cloud_events, collect, create_topics, produce, settings_of, write_config


def source_config(tmp):
    path = write_config(tmp)
    cfg = yaml.safe_load(path.read_text())
    cfg["sources"] = {"crm": {"owner": "data-eng", "freshness": "3s"},
                      "billing": {"owner": "payments", "freshness": "3s"}}
    cfg["models"][MODEL]["features"]["n1"]["source"] = "crm"
    cfg["defaults"]["min_samples"] = 20
    path.write_text(yaml.safe_dump(cfg))
    return path


def records(n, t0, key="n1"):
    return [{"source": "crm", "timestamp": t0 + i * 100,
             "record": {"id": f"r{i}", key: i * 0.5, "plan": "pro"}} for i in range(n)]


def test_silent_source_goes_stale_without_new_events_and_resolves(broker, worker_factory,
                                                                 tmp_path):
    config = source_config(tmp_path)
    settings = settings_of(config)
    create_topics(broker.bootstrap, settings)
    worker = worker_factory(config)
    topic = settings.topics.name("inputs")
    now = int(time.time() * 1000)
    produce(broker.bootstrap, topic, [orjson.dumps(records(50, now - 10_000))], key=b"crm")
    worker.wait_metric("driftwarden_source_records_total", 50, source="crm")
    began = time.monotonic()
    alerts_topic = settings.topics.name("alerts")
    got = cloud_events(collect(broker.bootstrap, alerts_topic, lambda r: {
        orjson.loads(x.value)["data"]["source"] for x in r
        if orjson.loads(x.value)["data"]["kind"] == "source_stale"} >= {"crm", "billing"},
        timeout=30))
    stale = [a for a in got if a["data"]["kind"] == "source_stale"
             and a["data"]["source"] == "crm"]
    assert stale, worker.tail()
    # billing never sent anything: stale too, judged by the worker owning its key.
    never = [a["data"] for a in got if a["data"]["source"] == "billing"]
    assert never and never[0]["evidence"]["last_record"] is None
    assert time.monotonic() - began >= 2.0  # not before the SLO passed
    data = stale[0]["data"]
    assert data["status"] == "firing" and data["source"] == "crm"
    assert data["affected_models"] == [MODEL]
    assert data["affected_features"] == {MODEL: ["n1"]}
    assert data["owners"]["data"] == "data-eng"

    produce(broker.bootstrap, topic, [orjson.dumps(records(5, int(time.time() * 1000)))],
            key=b"crm")
    got = cloud_events(collect(broker.bootstrap, alerts_topic, lambda r: any(
        orjson.loads(x.value)["type"] == "io.driftwarden.alert.resolved" for x in r),
        timeout=30))
    resolved = [a for a in got if a["type"] == "io.driftwarden.alert.resolved"]
    assert resolved and resolved[0]["data"]["alert_id"] == data["alert_id"], worker.tail()
    assert resolved[0]["data"]["status"] == "resolved"


def test_renamed_field_is_a_schema_change_for_the_dependent_model(broker, worker_factory,
                                                                  tmp_path):
    config = source_config(tmp_path)
    settings = settings_of(config)
    create_topics(broker.bootstrap, settings)
    worker = worker_factory(config)
    topic = settings.topics.name("inputs")
    t0 = 1_700_000_000_000 // 60_000 * 60_000
    values = [orjson.dumps(records(100, t0)),  # window 0: accepted schema
              orjson.dumps(records(100, t0 + 60_000, key="n_one")),  # renamed
              orjson.dumps(records(1, t0 + 180_000, key="n_one"))]  # closes window 1
    produce(broker.bootstrap, topic, values, key=b"crm")
    got = cloud_events(collect(broker.bootstrap, settings.topics.name("alerts"), lambda r: any(
        orjson.loads(x.value)["data"]["kind"] == "schema_change" for x in r), timeout=30))
    changes = [a["data"] for a in got if a["data"]["kind"] == "schema_change"]
    assert len(changes) == 1, worker.tail()
    assert changes[0]["evidence"]["removed"] == {"n1": "number"}
    assert changes[0]["evidence"]["added"] == {"n_one": "number"}
    assert changes[0]["affected_models"] == [MODEL]
    assert "removed n1" in changes[0]["summary"] and "added n_one" in changes[0]["summary"]
