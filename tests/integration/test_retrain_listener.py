"""``driftwarden retrain-listener``: output parsing, the command's environment, dedupe
(no broker), then the whole loop on the embedded broker.

The unit tests live here too: a ``tests/unit/test_retrain_listener.py`` would clash with
this file's basename (the test directories are not packages).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from support import (
    MODEL,
    InBackground,
    collect,
    create_topics,
    produce,
    settings_of,
    write_config,
)

from app.retrain_listener import (
    HandledTriggers,
    RetrainListener,
    Trigger,
    add_parser,
    parse_output,
    parse_trigger,
    run_command,
    trigger_env,
)

ROOT = Path(__file__).resolve().parents[2]


def trigger_bytes(trigger_id: str, model: str = MODEL, version: str | None = "v1") -> bytes:
    doc = orjson.loads((ROOT / "schemas/examples/retrain-trigger.json").read_bytes())
    doc.update(id=trigger_id, subject=model)
    doc["data"].update(trigger_id=trigger_id, model=model, model_version=version)
    return orjson.dumps(doc)


def py_command(script: str) -> str:
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}"


# --- unit: the command's output --------------------------------------------------------

def test_output_is_the_last_nonempty_line():
    out = parse_output('epoch 1\n{"version": "x"}\nepoch 2\n'
                       '{"version": "v2", "metrics": {"accuracy": 0.9, "rows": 10},'
                       ' "reference": "s3://b/ref.parquet"}\n\n')
    assert (out.version, out.metrics, out.reference) == (
        "v2", {"accuracy": 0.9, "rows": 10.0}, "s3://b/ref.parquet")
    assert parse_output('{"version": "v3"}').metrics == {}


@pytest.mark.parametrize("stdout, reason", [
    ("", "printed nothing"),
    ("done\n", "not JSON"),
    ('{"version": "v2"}\ntrailing garbage', "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"metrics": {"accuracy": 0.9}}', "no 'version'"),
    ('{"version": ""}', "no 'version'"),
    ('{"version": 2}', "no 'version'"),
    ('{"version": "v2", "metrics": {"accuracy": "high"}}', "finite numbers"),
    ('{"version": "v2", "metrics": {"ok": true}}', "finite numbers"),
    ('{"version": "v2", "reference": ""}', "'reference'"),
])
def test_bad_output_is_refused_with_a_reason(stdout, reason):
    with pytest.raises(ValueError, match=reason):
        parse_output(stdout)


# --- unit: triggers, the environment and stdin ----------------------------------------

def test_trigger_of_the_schema_example():
    raw = (ROOT / "schemas/examples/retrain-trigger.json").read_bytes()
    t = parse_trigger(raw)
    assert (t.trigger_id, t.model, t.model_version) == (
        "9d1c52e0b7a4f1e38c6d2a7f05b9e4c1", "churn", "2024-05-01.3")
    assert trigger_env(t) == {"DW_TRIGGER_ID": t.trigger_id, "DW_MODEL": "churn",
                              "DW_MODEL_VERSION": "2024-05-01.3",
                              "DW_REASONS": "6d267f5c328edc654df51090616591fb"}
    assert t.raw == raw
    assert parse_trigger(trigger_bytes("t-1", version=None)).version == "unknown"


@pytest.mark.parametrize("value", [b"", b"nope", b"[]", b'{"type": "other"}',
                                   b'{"type": "io.driftwarden.retrain.requested"}',
                                   trigger_bytes("t", model="bad name")])
def test_non_triggers_are_refused(value):
    with pytest.raises(ValueError):
        parse_trigger(value)


async def test_command_gets_the_trigger_on_stdin_and_in_its_environment():
    script = (
        "import json, os, sys\n"
        "event = json.load(sys.stdin)\n"
        "env = {k: os.environ[k] for k in ('DW_TRIGGER_ID', 'DW_MODEL', 'DW_MODEL_VERSION',"
        " 'DW_REASONS')}\n"
        "print('some training log')\n"
        "print(json.dumps({'version': env['DW_MODEL_VERSION'] + '-next',"
        " 'metrics': {'n': len(env['DW_REASONS'].split(','))},"
        " 'reference': env['DW_TRIGGER_ID'] + '/' + env['DW_MODEL'] + '/'"
        " + event['data']['trigger_id']}))\n")
    t = parse_trigger(trigger_bytes("trig-7", model="churn", version="v1"))
    out = await run_command(py_command(script), t, timeout=30)
    assert out.version == "v1-next"
    assert out.metrics == {"n": 1.0}
    assert out.reference == "trig-7/churn/trig-7"


async def test_failures_carry_the_reason_and_the_stderr_tail():
    t = Trigger("t1", "m", "v1", [], b"{}")
    with pytest.raises(RuntimeError, match=r"status 3; stderr: .*out of memory"):
        await run_command(py_command("import sys; sys.stderr.write('out of memory'); "
                                     "sys.exit(3)"), t, timeout=30)
    with pytest.raises(RuntimeError, match="no 'version'"):
        await run_command(py_command("print('{}')"), t, timeout=30)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="timed out"):
        await run_command(py_command("import time; time.sleep(30)"), t, timeout=0.5)
    assert time.monotonic() - started < 10


# --- unit: one run per trigger id ------------------------------------------------------

class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, Any]]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((topic, key, orjson.loads(value)))


def test_handled_set_is_bounded():
    h = HandledTriggers(maxsize=3)
    for i in range(10):
        h.add(f"t{i}")
    assert len(h) == 3 and "t9" in h and "t6" not in h


async def test_a_trigger_runs_once(tmp_path):
    settings = settings_of(write_config(tmp_path))
    listener = RetrainListener(settings, "unused:9092",
                               py_command("print('{\"version\": \"v2\"}')"), deploy=True)
    producer, stop = FakeProducer(), asyncio.Event()
    for _ in range(2):
        assert await listener._handle(trigger_bytes("same-id"), producer, stop)
    assert listener.runs == 1
    assert [e["event"] for _, _, e in producer.sent] == [
        "retrain_started", "retrain_completed", "deployed"]
    assert {(topic, key) for topic, key, _ in producer.sent} == {
        (settings.topics.name("model_events"), MODEL.encode())}
    # a trigger already answered on the topic (found by the start-up scan) does not run
    listener.handled.add("answered-before")
    assert await listener._handle(trigger_bytes("answered-before"), producer, stop)
    assert listener.runs == 1
    # garbage is skipped (and committed), never run
    assert await listener._handle(b"garbage", producer, stop)
    assert listener.runs == 1


def test_parser_defaults():
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["retrain-listener", "-c", "m.yaml", "--exec", "train.sh"])
    assert (args.config, args.exec, args.timeout, args.deploy, args.group, args.bootstrap) == (
        "m.yaml", "train.sh", "6h", False, None, None)
    assert callable(args.func)


# --- integration: the embedded broker --------------------------------------------------

TRAIN = """\
import json, os, sys
event = json.load(sys.stdin)
assert os.environ["DW_MODEL"] == event["data"]["model"] == {model!r}, os.environ["DW_MODEL"]
with open({runs!r}, "a") as f:
    f.write(os.environ["DW_TRIGGER_ID"] + "\\n")
if os.environ["DW_MODEL_VERSION"] == "broken":
    sys.exit("training data missing")
print("training...")
print(json.dumps({{"version": "v2", "metrics": {{"accuracy": 0.91}}}}))
"""


def test_listener_on_the_broker(broker, tmp_path):
    deadline = time.monotonic() + 55
    settings = settings_of(write_config(tmp_path))
    create_topics(broker.bootstrap, settings)
    triggers, events_topic = (settings.topics.name("retrain_triggers"),
                              settings.topics.name("model_events"))
    runs = tmp_path / "runs.txt"
    script = tmp_path / "train.py"
    script.write_text(TRAIN.format(model=MODEL, runs=str(runs)))
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
    ok, bad, third = (f"ok-{uuid.uuid4().hex[:8]}", f"bad-{uuid.uuid4().hex[:8]}",
                      f"third-{uuid.uuid4().hex[:8]}")

    def events(n: int) -> list[dict[str, Any]]:
        left = max(1.0, deadline - time.monotonic())
        records = collect(broker.bootstrap, events_topic, lambda r: len(r) >= n, timeout=left)
        got = [orjson.loads(r.value) for r in records]
        assert len(got) >= n, got
        assert {r.key for r in records} == {MODEL.encode()}
        return got

    def runs_of() -> list[str]:
        return runs.read_text().split() if runs.exists() else []

    produce(broker.bootstrap, triggers, [trigger_bytes(ok)])
    listener = RetrainListener(settings, broker.bootstrap, command, timeout=30, deploy=True)
    with InBackground(listener):
        first = events(3)
        assert [(e["event"], e["version"], e["trigger_id"]) for e in first] == [
            ("retrain_started", "v1", ok), ("retrain_completed", "v2", ok),
            ("deployed", "v2", ok)]
        assert first[1]["metrics"] == first[2]["metrics"] == {"accuracy": 0.91}
        assert all(isinstance(e["timestamp"], int) for e in first)
        # redelivery of the same trigger, then a trigger whose training fails
        produce(broker.bootstrap, triggers,
                [trigger_bytes(ok), trigger_bytes(bad, version="broken")])
        second = events(5)[3:]
        assert [(e["event"], e["version"], e["trigger_id"]) for e in second] == [
            ("retrain_started", "broken", bad), ("retrain_failed", "broken", bad)]
        assert second[1]["metrics"] == {}
        assert "training data missing" in second[1]["reason"]
        assert runs_of() == [ok, bad]

    # a restarted listener in a fresh group re-reads every trigger: the answered ones are
    # found on the model-events topic and skipped; a new one runs
    produce(broker.bootstrap, triggers, [trigger_bytes(third)])
    restarted = RetrainListener(settings, broker.bootstrap, command, timeout=30,
                                group=f"{settings.worker.app_id}-other")
    with InBackground(restarted):
        third_events = events(7)[5:]
        assert [(e["event"], e["trigger_id"]) for e in third_events] == [
            ("retrain_started", third), ("retrain_completed", third)]
    assert runs_of() == [ok, bad, third]
    assert restarted.runs == 1
    assert time.monotonic() < deadline
