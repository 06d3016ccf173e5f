"""Injected faults (docs/reliability.md): a worker killed with SIGKILL under load, the
broker replaced by an empty one on the same port, a broker that stops answering while
outputs are owed, and one of two workers killed. Each test is bounded and stops by
itself; every one asserts on what reached the output topics."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter

import numpy as np
import orjson
import yaml
from aiokafka.admin import AIOKafkaAdminClient
from support import (
    MODEL,
    WINDOW_MS,
    Worker,
    collect,
    create_topics,
    feature_rows,
    partitions_of,
    predictions,
    produce,
    settings_of,
    write_config,
)

from app.broker import EmbeddedBroker, free_port

W0 = 1_700_000_000_000 // WINDOW_MS * WINDOW_MS


def by_id(records):
    """CloudEvents by id; a redelivered id (at-least-once) must be the same event."""
    out, repeats = {}, 0
    for r in records:
        e = orjson.loads(r.value)
        if e["id"] in out:
            repeats += 1
            assert e == out[e["id"]], f"id {e['id']} published with two contents"
        out[e["id"]] = e
    return out, repeats


def window_counts(evaluations):
    """Drift evaluations (the whole model, no segment) by window start: n."""
    counts = {}
    for e in evaluations.values():
        d = e["data"]
        if d.get("kind") == "drift" and d.get("segment") is None:
            start = d["window"]["start_ms"]
            assert start not in counts, f"window {start} evaluated under two ids"
            counts[start] = d["n"]
    return counts


def load(rng, windows, per_window, *, model=MODEL, shifted_from=None, batch=50):
    """Messages of ``batch`` predictions spread evenly over ``windows`` windows."""
    values = []
    for w in range(windows):
        rows = feature_rows(rng, per_window, shifted=shifted_from is not None
                            and w >= shifted_from)
        times = [W0 + w * WINDOW_MS + i * (WINDOW_MS // per_window) for i in range(per_window)]
        events = predictions(rows, times, model=model, start_id=w * per_window)
        values += [orjson.dumps(events[i:i + batch]) for i in range(0, per_window, batch)]
    return values


def advance(model=MODEL, windows=0, start_id=10**6):
    """One event far enough ahead to close every window before ``windows``."""
    return orjson.dumps(predictions(feature_rows(np.random.default_rng(0), 1),
                                    [W0 + windows * WINDOW_MS + 5_000], model=model,
                                    start_id=start_id))


def test_sigkill_under_load_counts_every_event_once(broker, worker_factory, tmp_path):
    windows, per_window = 3, 1200
    config = write_config(tmp_path)
    settings = settings_of(config)
    create_topics(broker.bootstrap, settings)
    topic = settings.topics.name("predictions")
    values = load(np.random.default_rng(5), windows, per_window, shifted_from=1)

    first = worker_factory(config)
    # The load starts once the worker reads its partitions: started with it, the whole
    # load (1.8 s) would be on the topic before the worker's first fetch, and one batch
    # would close two windows; a kill before their checkpoint then republishes both.
    # (The bound below holds for outputs published since the last checkpoint, which
    # while events trickle in is made at the end of every consumer turn.)
    deadline = time.monotonic() + 90
    while partitions_of(first, topic) != {"0", "1"}:
        assert time.monotonic() < deadline and first.proc.poll() is None, first.tail()
        time.sleep(0.2)
    sent = threading.Event()

    def producer():  # paced: the kill lands while events are still arriving
        for i in range(0, len(values), 4):
            produce(broker.bootstrap, topic, values[i:i + 4])
            time.sleep(0.1)
        sent.set()

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    first.wait_metric("driftwarden_events_total", per_window * 1.4, timeout=90,
                      outcome="valid")  # mid-window 2, window 1 closed or closing
    first.stop(signal.SIGKILL)
    second = worker_factory(config)
    thread.join(120)
    assert sent.is_set()
    produce(broker.bootstrap, topic, [advance(windows=windows)])

    records = collect(broker.bootstrap, settings.topics.name("evaluations"),
                      lambda r: len(window_counts(by_id(r)[0])) >= windows, timeout=120)
    evaluations, repeats = by_id(records)
    counts = window_counts(evaluations)
    # every produced event counted once: the kill's redeliveries are skipped by the
    # state's applied positions, and no window is lost or split
    assert counts == {W0 + w * WINDOW_MS: per_window for w in range(windows)}, second.tail()
    assert repeats <= 1  # at most the window being published at the kill, same id
    alerts, _ = by_id(collect(broker.bootstrap, settings.topics.name("alerts"),
                              lambda r: False, timeout=3))
    firing = [a for a in alerts.values() if a["type"] == "io.driftwarden.alert.firing"
              and "drift" in a["data"]["kind"]]
    assert firing, "the shifted windows raise a drift alert"
    assert second.proc.poll() is None


async def _topics(bootstrap):
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def test_broker_replaced_on_the_same_port(tmp_path):
    """The broker stops and an empty one starts on its port: the worker lives on,
    recreates its topics (partition counts included) and monitors what arrives next."""
    port = free_port()
    old = EmbeddedBroker(port=port, log_path=tmp_path / "broker-1.log").start()
    new = None
    config = write_config(tmp_path)
    settings = settings_of(config)
    create_topics(old.bootstrap, settings)
    topic = settings.topics.name("predictions")
    worker = Worker(config, old.bootstrap, tmp_path / "worker.log").start()
    try:
        rng = np.random.default_rng(9)
        before = predictions(feature_rows(rng, 300), [W0 + 1_000 + i for i in range(300)])
        produce(old.bootstrap, topic, [orjson.dumps(before[i:i + 50])
                                       for i in range(0, 300, 50)])
        worker.wait_metric("driftwarden_events_total", 300, outcome="valid")
        old.stop()
        time.sleep(3)  # the worker sees the broker gone
        new = EmbeddedBroker(port=port, log_path=tmp_path / "broker-2.log").start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and topic not in asyncio.run(_topics(new.bootstrap)):
            assert worker.proc.poll() is None, worker.tail()
            time.sleep(0.5)
        assert set(settings.topics.all_names()) <= asyncio.run(_topics(new.bootstrap))
        # events of the next window on the new broker, then one that closes it
        after = predictions(feature_rows(rng, 300),
                            [W0 + WINDOW_MS + 1_000 + i for i in range(300)], start_id=300)
        produce(new.bootstrap, topic, [orjson.dumps(after[i:i + 50])
                                       for i in range(0, 300, 50)] + [advance(windows=2)])
        records = collect(new.bootstrap, settings.topics.name("evaluations"),
                          lambda r: W0 + WINDOW_MS in window_counts(by_id(r)[0]), timeout=90)
        counts = window_counts(by_id(records)[0])
        # the window read from the new broker is whole: offsets from 0 are read again
        assert counts.get(W0 + WINDOW_MS) == 300, (counts, worker.tail())
        assert worker.proc.poll() is None
    finally:
        worker.stop()
        old.stop()
        if new is not None:
            new.stop()


def test_outputs_owed_while_the_broker_stalls_survive_a_kill(broker, worker_factory,
                                                             tmp_path):
    """The broker stops answering (SIGSTOP) when a window falls due: its alert and
    evaluation cannot be published. The worker is killed meanwhile; once the broker
    answers again a new worker publishes them: nothing was committed past them. (What
    the killed worker had already written to its socket may land too: the same ids
    with the same content, which consumers deduplicate.)"""
    config = write_config(tmp_path)
    settings = settings_of(config)
    create_topics(broker.bootstrap, settings)
    topic = settings.topics.name("predictions")
    first = worker_factory(config)
    end = W0 + WINDOW_MS
    rows = feature_rows(np.random.default_rng(4), 400, shifted=True)
    # the last event 3 s before the window's end: due 4 s (lateness 1 s) after it, idle
    produce(broker.bootstrap, topic, [orjson.dumps(
        predictions(rows[i:i + 100], [end - 3_000 - (400 - i - k) for k in range(100)],
                    start_id=i)) for i in range(0, 400, 100)])
    first.wait_metric("driftwarden_events_total", 400, outcome="valid")
    time.sleep(1.0)  # the state record of the batch reaches the changelog
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        time.sleep(8)  # due at ~4 s: the close tries to publish and waits
        assert first.metric("driftwarden_windows_closed_total") == 0
        first.stop(signal.SIGKILL)
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    second = worker_factory(config)
    evaluations = by_id(collect(broker.bootstrap, settings.topics.name("evaluations"),
                                lambda r: bool(window_counts(by_id(r)[0])), timeout=90))[0]
    assert window_counts(evaluations) == {W0: 400}, second.tail()
    time.sleep(2)
    alerts, repeats = by_id(collect(broker.bootstrap, settings.topics.name("alerts"),
                                    lambda r: False, timeout=3))
    assert any("drift" in a["data"]["kind"] for a in alerts.values())
    assert repeats <= len(alerts)  # at most the killed worker's copy of each
    final, _ = by_id(collect(broker.bootstrap, settings.topics.name("evaluations"),
                             lambda r: False, timeout=2))
    assert window_counts(final) == {W0: 400}


MODELS = ("churn-a", "churn-b")  # murmur2: partitions 0 and 1 of 2


def test_survivor_of_two_workers_resumes_from_the_changelog(broker, tmp_path):
    config = write_config(tmp_path)
    doc = yaml.safe_load(config.read_text())
    (model,) = doc["models"].values()
    doc["models"] = {m: model for m in MODELS}
    config.write_text(yaml.safe_dump(doc))
    settings = settings_of(config)
    create_topics(broker.bootstrap, settings)
    topic = settings.topics.name("predictions")
    workers = [Worker(config, broker.bootstrap, tmp_path / f"worker-{i}.log").start()
               for i in range(2)]
    try:
        deadline = time.monotonic() + 60
        held = {}
        while time.monotonic() < deadline:  # both hold a partition: the group settled
            held = {i: partitions_of(w, topic) for i, w in enumerate(workers)}
            if all(held.values()):
                break
            time.sleep(0.5)
        assert all(held.values()), held
        rng = np.random.default_rng(13)
        for m in MODELS:
            produce(broker.bootstrap, topic, load(rng, 1, 300, model=m, batch=100),
                    key=m.encode())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(
                w.metric("driftwarden_events_total", outcome="valid", topic=topic)
                for w in workers) < 600:
            time.sleep(0.3)
        victim = workers[0]
        victim.stop(signal.SIGKILL)
        for m in MODELS:
            produce(broker.bootstrap, topic, [advance(model=m, windows=1)], key=m.encode())
        records = collect(broker.bootstrap, settings.topics.name("evaluations"),
                          lambda r: len(_per_model(r)) == 2, timeout=120)
        assert _per_model(records) == {m: 300 for m in MODELS}, workers[1].tail()
        assert workers[1].proc.poll() is None
    finally:
        for w in workers:
            w.stop()


def _per_model(records):
    evaluations, _ = by_id(records)
    out = Counter()
    for e in evaluations.values():
        d = e["data"]
        if d.get("kind") == "drift" and d.get("segment") is None \
                and d["window"]["start_ms"] == W0:
            out[d["model"]] += d["n"]
    return dict(out)
