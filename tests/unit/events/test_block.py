"""Event blocks (``app.events.block``) and the decode pool (``app.events.decode_pool``).

The pool may only ever speed a worker up: the same messages processed with it and
without it leave the same states on the changelog and publish the same records, byte
for byte. The streams below mix what a block holds (one model, alike events) with what
it refuses (several models, segment tags, features or score classes that differ,
rejected elements), so both paths and their hand-overs are exercised.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from app.core.engine import Engine
from app.core.partials import Binning, message_counts
from app.core.signals import Columns
from app.events import decode_pool
from app.events.block import EventBlock, block_of
from app.events.checks import OUTCOME, PREDICTION
from app.events.decode import decode_message
from app.events.decode_pool import (
    NOT_MINE,
    OK,
    DecodePool,
    decode_payload,
    from_payload,
    handle,
)
from app.events.fields import concat, field_values, score_values, take, version_indices
from app.observability.metrics import Metrics
from app.reference import load_references
from app.settings import settings_from_mapping
from app.sketches.quantile import default_buckets
from app.streaming import Pipeline

T0 = 1_700_000_000_000 // 60_000 * 60_000
LIMITS = {"max_bytes": 1 << 24, "max_elements": 100_000}


def prediction(i: int, **over: Any) -> dict[str, Any]:
    e = {"prediction_id": f"p{i}", "model": "m", "model_version": "v1",
         "features": {"x": float(i % 7) + 0.5, "n": i % 3, "c": "abc"[i % 3]},
         "prediction": bool(i % 2), "scores": {"1": (i % 10) / 10}, "timestamp": T0 + i}
    e.update(over)
    return e


def decoded(events: list[dict[str, Any]], kind: str = "prediction") -> list[dict[str, Any]]:
    spec = PREDICTION if kind == "prediction" else OUTCOME
    return decode_message(orjson.dumps(events), spec, **LIMITS).events


def block(events: list[dict[str, Any]], kind: str = "prediction") -> EventBlock:
    """A block as the worker gets it: from a payload that went between processes."""
    value = orjson.dumps(events)
    payload = decode_payload(value, kind, LIMITS["max_bytes"], LIMITS["max_elements"])
    assert payload is not None
    out = from_payload(pickle.loads(payload), value, kind, **LIMITS).events
    assert type(out) is EventBlock
    return out


# --- what a block holds ----------------------------------------------------------------

def test_a_payload_holds_one_string_per_distinct_value_but_each_id() -> None:
    """Versions, classes and category values repeat: a decode process sends (and the
    worker unpickles) one object per distinct value; ids and values stay as they were."""
    events = [prediction(i, prediction=["yes", "no"][i % 2]) for i in range(300)]
    b = block(events)
    assert b.column("model_version") == ["v1"] * 300
    assert len(set(map(id, b.column("model_version")))) == 1
    assert b.column("prediction") == [e["prediction"] for e in events]
    assert len(set(map(id, b.column("prediction")))) == 2
    assert b.raw["c"] == [e["features"]["c"] for e in events]
    assert len(set(map(id, b.raw["c"]))) == 3
    assert len(set(map(id, b.column("prediction_id")))) == 300
    mixed = block([prediction(i, features={"c": ["a", 1, None][i % 3]}) for i in range(30)])
    assert mixed.raw["c"] == [["a", 1, None][i % 3] for i in range(30)]  # not only strings


#: Ways one event of six (with a feature ``x`` and a score of class "1") differs from
#: the others (``test_columnar`` uses them too)
NOT_ALIKE = [
    lambda es: es[3].update(model="other"),
    lambda es: es[3]["features"].pop("x"),
    lambda es: es[3]["features"].update(extra=1),
    lambda es: es[3].update(segment={"region": "eu"}),
    lambda es: es[3].pop("scores"),
    lambda es: es[0].pop("scores"),
    lambda es: es[3].update(scores={"0": 0.5}),
    lambda es: es[3].update(scores={"1": 0.5, "0": 0.5}),
]


@pytest.mark.parametrize("change", NOT_ALIKE)
def test_events_not_alike_are_no_block(change: Any) -> None:
    events = [prediction(i) for i in range(6)]
    change(events)
    assert block_of(decoded(events), "prediction") is None
    payload = decode_payload(orjson.dumps(events), "prediction", **{
        "max_bytes": 1 << 20, "max_elements": 100})
    assert payload is None


def test_a_message_with_a_rejected_element_is_decoded_by_the_worker() -> None:
    value = orjson.dumps([prediction(0), {"model": "m"}])
    assert decode_payload(value, "prediction", 1 << 20, 100) is None


def test_a_block_answers_every_column_as_its_events_do() -> None:
    events = [prediction(i, latency_ms=i * 1.5) for i in range(8)]
    events[2]["features"]["n"] = None  # n: not numbers everywhere
    events[5]["features"]["x"] = True  # a bool is a number (1.0)
    events[6].pop("timestamp")
    events[7]["timestamp"] = "2023-11-14T22:13:20Z"
    rows = decoded(events)
    b = block(events)
    assert b.floats.keys() == {"x"} and b.raw.keys() == {"n", "c"}
    for key in ("prediction_id", "model", "model_version", "prediction", "timestamp",
                "latency_ms", "cost", "scores", "features", "segment", "label", "unknown"):
        assert field_values(b, key) == field_values(rows, key), key
    assert score_values(b, "1") == score_values(rows, "1")
    assert score_values(b, "0") == score_values(rows, "0") == [None] * 8
    assert version_indices(b) == version_indices(rows)
    assert list(b) == rows and b[3] == rows[3] and len(b) == 8  # built when asked for
    sub = take(b, [6, 1, 2])
    assert type(sub) is EventBlock
    assert field_values(sub, "prediction_id") == ["p6", "p1", "p2"]
    assert sub.floats["x"].tolist() == [rows[k]["features"]["x"] for k in (6, 1, 2)]
    assert sub.raw["n"] == [rows[k]["features"]["n"] for k in (6, 1, 2)]
    assert list(sub) == [rows[6], rows[1], rows[2]]
    assert take(b, range(8)) is b


def test_columns_of_a_block_are_those_of_its_events() -> None:
    events = [prediction(i, model_version="v2" if i % 4 == 0 else "v1") for i in range(12)]
    events[3]["features"]["n"] = "three"
    names = ["x", "n", "c", "absent", "@prediction", "@scores.1", "@scores.0"]
    a, b = Columns(decoded(events)), Columns(block(events))
    assert np.array_equal(a.float_rows(names), b.float_rows(names), equal_nan=True)
    for name in names:
        assert list(a.signal(name)) == list(b.signal(name)), name
        assert a.types(name) == b.types(name), name
    # a block knows x is numbers only (its floats say all), where a float_rows of x with
    # n, which is not, left that unknown: the same counts either way
    got, expected = b.features(["x", "n", "c"]), a.features(["x", "n", "c"])
    assert got is not None and expected is not None and got[0] is None
    assert set(map(type, expected[0] or ())) == {float} and got[1:] == expected[1:]
    assert a.features(["x", "absent"]) is None and b.features(["x", "absent"]) is None
    assert a.versions() == b.versions()
    assert b.lengths() == [3] * 12 and a.lengths() is None


def test_a_block_never_builds_its_events_for_the_usual_columns() -> None:
    b = block([prediction(i) for i in range(5)])
    b._load = None  # building them now would raise
    c = Columns(b)
    c.float_rows(["x", "n", "absent"])
    c.read(["c", "absent", "@prediction", "@scores.1"])
    assert c.features(["x", "n", "c"]) is not None
    field_values(b, "prediction_id"), version_indices(take(b, [0, 3]))
    with pytest.raises(RuntimeError, match="source"):
        list(b)


def test_blocks_alike_join_into_one() -> None:
    first, second = [prediction(i) for i in range(3)], [prediction(i) for i in range(3, 7)]
    second[0]["features"]["n"] = None  # n: floats in one, raw values in the other
    joined = concat([block(first), [], block(second)])
    assert type(joined) is EventBlock and len(joined) == 7
    assert "n" not in joined.floats and "n" not in joined.raw  # read from the events
    rows = decoded(first) + decoded(second)
    assert list(joined) == rows
    a, b = Columns(rows), Columns(joined)
    assert np.array_equal(a.float_rows(["x", "n"]), b.float_rows(["x", "n"]), equal_nan=True)
    assert list(a.signal("c")) == list(b.signal("c"))
    other = [prediction(i, scores={"0": 0.1}) for i in range(7, 9)]
    assert concat([block(first), block(other)]) == rows[:3] + decoded(other)  # a list
    assert concat([decoded(first), block(second)]) == rows


def test_a_block_carries_the_quantile_buckets_of_its_numeric_signals() -> None:
    """Computed by the decode process for the floats features, the prediction and the
    scores when they are numbers; kept by take and concat only where every part has
    them; the columns hand them over for exactly the rows they read."""
    events = [prediction(i, prediction=i * 0.5, scores={"1": i / 9, "0": 1 - i / 9})
              for i in range(9)]
    events[2]["features"]["x"] = -1e-12  # tiny: no bucket of its own
    b = block(events)
    assert set(b.buckets) == {"x", "n", "@prediction", "@scores.1", "@scores.0"}
    names = ["x", "n", "@prediction", "@scores.1"]
    c = Columns(b)
    x = c.float_rows(names)
    assert np.array_equal(c.bucket_rows(names), default_buckets(x))
    assert c.bucket_rows(["x", "c"]) is None  # c has none: computed by the worker
    picked = take(b, [7, 1, 4])
    assert np.array_equal(Columns(picked).bucket_rows(names),
                          default_buckets(Columns(picked).float_rows(names)))
    second = [prediction(i, prediction="yes", scores={"1": 0.5, "0": 0.5})
              for i in range(9, 12)]
    second[0]["features"]["n"] = None  # n: no floats, no buckets
    assert set(block(second).buckets) == {"x", "@scores.1", "@scores.0"}  # a text class
    joined = concat([b, block(second)])
    assert set(joined.buckets) == {"x", "@scores.1", "@scores.0"}
    assert joined.buckets["x"].tolist() == b.buckets["x"].tolist() + block(
        second).buckets["x"].tolist()
    assert Columns(decoded(events)).bucket_rows(names) is None  # dicts: none
    assert block_of(decoded(events), "prediction").buckets == {}  # not asked for


def test_outcomes_as_a_block() -> None:
    outcomes = [{"prediction_id": f"p{i}", "model": "m", "label": i % 2 == 0,
                 "timestamp": T0 + i} for i in range(5)]
    b = block(outcomes, "outcome")
    for key in ("prediction_id", "label", "timestamp", "model", "model_version"):
        assert field_values(b, key) == field_values(decoded(outcomes, "outcome"), key)


# --- the same outputs and states, with the pool and without ------------------------------

class _Now:
    """A channel decoding each message at once, its payload through pickle as between
    processes."""

    outstanding = 0

    def attach(self, loop: Any) -> None:
        pass

    def send(self, future: Any, value: bytes, kind: str) -> None:
        out = handle(value, kind, **LIMITS)
        future.set_result((OK, out) if out is not None else (NOT_MINE, b""))

    def close(self) -> None:
        pass


class InlinePool(DecodePool):
    """Decodes in this process; counts the blocks whose events were built, per model."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.built: dict[str, int] = {}

    def _start(self) -> Any:
        return [_Now()]

    def decoded(self, key: Any, value: bytes, kind: str) -> Any:
        out = super().decoded(key, value, kind)
        if out is not None:
            block, load = out.events, out.events._load

            def counted() -> Any:
                self.built[block.model] = self.built.get(block.model, 0) + 1
                return load()
            block._load = counted
        return out


class Table:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.log: list[tuple[bytes, bytes | None]] = []

    def send_changelog(self, partition: int, key: bytes, value: bytes | None) -> Any:
        self.log.append((key, value))
        return _done()


class Topic:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []

    async def send(self, key: Any = None, value: Any = None, headers: Any = None) -> Any:
        self.sent.append((key, value))
        return _done()


def _done() -> Any:
    f = asyncio.get_running_loop().create_future()
    f.set_result(None)
    return f


def _config(tmp: Path) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    ref = tmp / "ref.jsonl"
    ref.write_bytes(b"\n".join(orjson.dumps(
        {"x": float(rng.normal(3, 1)), "n": int(rng.integers(0, 3)),
         "c": str(rng.choice(["a", "b", "c"])), "prediction": bool(rng.integers(0, 2)),
         "scores.1": float(rng.uniform()), "#segment.region": str(rng.choice(["eu", "us"]))})
        for _ in range(400)))
    features = {"x": {"type": "numeric"}, "n": {"type": "numeric"},
                "c": {"type": "categorical"}, "absent": {"type": "numeric"}}
    common = {"features": features, "performance": {
        "positive_class": "1", "score_key": "1", "min_labels": 10, "label_horizon": "2m",
        "after": ["0s", "30s"], "concept_drift": [{"detector": "ddm"}]},
        "slo": {"latency_p99_ms": 50, "cost_per_1k": 0.5, "min_samples": 5}}
    return {
        "defaults": {"window": "1m", "lateness": "1s", "min_samples": 20},
        "models": {
            "m": {**common, "reference": {"file": str(ref)}, "segments": ["region"],
                  "min_segment_rows": 20,
                  "change_detectors": [{"signal": "feature.x", "detector": "page_hinkley"}]},
            "w": {**common, "reference": {"warmup": 60}},
            # its blocks are never built: no warm-up, segment or change detector, every
            # configured feature sent, its messages all alike
            "p": {**common, "features": {k: v for k, v in features.items() if k != "absent"},
                  "reference": {"file": str(ref)}}}}


def _stream(seed: int) -> list[list[Any]]:
    """Batches of prediction and outcome messages, most of them blocks, many not."""
    rng = np.random.default_rng(seed)
    messages: list[Any] = []
    i = 0
    for j in range(70):
        model = str(rng.choice(["m", "w", "p"]))
        events = []
        for _ in range(int(rng.integers(1, 40))):
            drift = 2.0 if j > 40 else 0.0
            e: dict[str, Any] = {
                "prediction_id": f"{model}-{i}", "model": model,
                "model_version": "v1" if j < 50 or i % 3 else "v2",
                "features": {"x": round(float(rng.normal(3 + drift, 1)), 3),
                             "n": int(rng.integers(0, 3)), "c": str(rng.choice(["a", "b", "c"]))},
                "prediction": bool(rng.integers(0, 2)),
                "scores": {"1": round(float(rng.uniform()), 3)},
                "latency_ms": round(float(rng.uniform(5, 80)), 2),
                "timestamp": T0 + i * 700 + int(rng.integers(-900, 900))}
            i += 1
            if j % 5 == 1 and model != "p":  # events not alike, or not all valid
                roll = rng.integers(0, 7)
                if roll == 0:
                    e["features"]["x"] = None
                elif roll == 1:
                    e["features"].pop("n")
                elif roll == 2:
                    e["features"]["extra"] = "?"
                elif roll == 3:
                    e["segment"] = {"region": str(rng.choice(["eu", "us", "apac"]))}
                elif roll == 4:
                    e.pop("scores")
                elif roll == 5:
                    e["features"] = {"x": "not a number"}
                else:
                    e["cost"] = -1  # rejected
            elif j % 7 == 3:
                e["features"]["n"] = bool(e["features"]["n"] % 2)  # booleans as numbers
                e["cost"] = 0.01
            events.append(e)
        messages.append(("predictions", model, events))
        if j % 3 == 2:  # labels for some of what came so far
            for m in ("m", "w", "p"):
                labels = [{"prediction_id": f"{m}-{k}", "model": m, "label": bool(k % 3),
                           "timestamp": T0 + k * 700 + 5_000}
                          for k in range(max(0, i - 60), i) if k % 2 == 0]
                if labels:
                    messages.append(("outcomes", m, labels))
    out = []
    for offset, (topic, model, events) in enumerate(messages):
        out.append(SimpleNamespace(topic=topic, partition=0, offset=offset,
                                   key=model.encode(), value=orjson.dumps(events),
                                   timestamp=T0 / 1000))
    cut = [0, *sorted(rng.choice(np.arange(1, len(out)), 14, replace=False).tolist()),
           len(out)]
    return [out[a:b] for a, b in itertools.pairwise(cut)]


def test_a_batch_joins_a_models_blocks_once(tmp_path: Path, monkeypatch: Any) -> None:
    """Five alike blocks of one model in a batch: one run, one block, joined by one
    concatenation of the five (joining each as it came copied the first ones four
    times), with the events of the five in order."""
    settings = settings_from_mapping(_config(tmp_path), env={})
    engine = Engine(settings, load_references(settings), source="urn:test")
    blocks = [block([prediction(100 * j + i, model="p") for i in range(100)])
              for j in range(5)]
    joins: list[int] = []
    real = EventBlock.concat
    monkeypatch.setattr(EventBlock, "concat",
                        staticmethod(lambda parts: joins.append(len(parts)) or real(parts)))
    batch = engine.batch()
    for j, b in enumerate(blocks):
        assert batch.add_many(b, T0, position=("predictions:0", j), partition=0) == []
    batch.finish()
    ((kind, events, times),) = batch.runs["p"]
    assert kind == "prediction"
    assert joins == [5] and type(events) is EventBlock and len(times) == 500
    assert events.column("prediction_id") == [f"p{i}" for i in range(500)]
    assert events.floats["x"].tolist() == [e["features"]["x"] for b in blocks for e in b.rows()]
    batch.finish()  # once joined, never again
    assert joins == [5]


def _run(tmp: Path, batches: list[list[Any]], pool: DecodePool | None,
         registry: CollectorRegistry | None = None) -> tuple[Table, list[Topic]]:
    settings = settings_from_mapping(_config(tmp), env={})
    engine = Engine(settings, load_references(settings), source="urn:test")
    table, topics = Table(), [Topic() for _ in range(4)]
    pipeline = Pipeline(settings, engine, Metrics(registry or CollectorRegistry()), table,
                        *topics)
    engine.load_state, engine.load_records = pipeline.load_state, pipeline.load_records
    pipeline.kinds = {"predictions": "prediction", "outcomes": "outcome"}
    pipeline.decodes = pool

    async def go() -> None:
        for k, batch in enumerate(batches):
            pipeline.prepare([batch])
            await pipeline.process_batch(batch, T0 / 1000 + 30 * k)

    asyncio.run(go())
    return table, topics


def _timeless(log: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes | None]]:
    """The records, a warm-up reference's wall-clock creation time left out."""
    return [(k, v if v is None else re.sub(rb'"created_at":[0-9.e+]+', b"", v)) for k, v in log]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_pool_changes_nothing_a_worker_writes(tmp_path: Path, seed: int) -> None:
    batches = _stream(seed)
    pool = InlinePool(1, **LIMITS, min_bytes=0)
    registry = CollectorRegistry()
    plain, plain_topics = _run(tmp_path, batches, None)
    pooled, pooled_topics = _run(tmp_path, batches, pool, registry)
    messages = sum(len(b) for b in batches)
    assert pool.submitted == messages and 0.4 * messages < pool.used < messages  # both paths
    # and of those, predictions of model p counted their numeric values (not before its
    # binning was known; m's and w's messages lack a numeric feature: counted here)
    assert 0 < pool.counted < pool.used
    assert registry.get_sample_value("driftwarden_messages_decoded_total",
                                     {"decoder": "pool"}) == pool.used
    assert registry.get_sample_value("driftwarden_messages_decoded_total",
                                     {"decoder": "worker"}) == messages - pool.used
    # model p has no warm-up, segments or change detectors: its blocks stay columns
    assert pool.built.get("m") and pool.built.get("w") and not pool.built.get("p")
    assert _timeless(pooled.log) == _timeless(plain.log)
    assert [t.sent for t in pooled_topics] == [t.sent for t in plain_topics]
    outputs = [t.sent for t in plain_topics]
    assert outputs[0] and outputs[1] and outputs[2]  # alerts, evaluations, dead letters


# --- the pool's processes --------------------------------------------------------------

def test_a_decode_process_decodes_and_its_death_leaves_the_worker_decoding(
        caplog: pytest.LogCaptureFixture) -> None:
    pool = DecodePool(1, **LIMITS, min_bytes=0)
    events = [prediction(i) for i in range(50)]
    value = orjson.dumps(events)

    async def go() -> None:
        assert pool.submit([(("predictions", 0, 1), value, "prediction"),
                            (("predictions", 0, 2), b"[1]", "prediction"),
                            (("model_events", 0, 3), value, "model_event")]) == 2
        await asyncio.wait_for(pool.wait([("predictions", 0, 1), ("predictions", 0, 2),
                                          ("model_events", 0, 3)]), 60)
        got = pool.decoded(("predictions", 0, 1), value, "prediction")
        assert got is not None and type(got.events) is EventBlock
        assert list(got.events) == decoded(events) and got.positions == list(range(50))
        assert pool.decoded(("predictions", 0, 2), b"[1]", "prediction") is None  # rejected
        assert pool.decoded(("model_events", 0, 3), value, "model_event") is None  # not sent
        assert pool.decoded(("predictions", 0, 1), value, "prediction") is None  # taken
        # a decode process dies: what it was given comes back to the worker, once
        (channel,) = pool._channels
        # below the worker's priority: where the cores are busy, the worker runs first
        # (set by decode_pool.settle_in, with the collector's tuning)
        assert os.getpriority(os.PRIO_PROCESS, channel.process.pid) == min(
            19, os.getpriority(os.PRIO_PROCESS, 0) + decode_pool.NICENESS)
        os.kill(channel.process.pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        with caplog.at_level(logging.ERROR, logger="driftwarden"):
            pool.submit([(("predictions", 0, 4), value, "prediction")])
            await asyncio.wait_for(pool.wait([("predictions", 0, 4)]), 30)
            assert pool.decoded(("predictions", 0, 4), value, "prediction") is None
        assert pool.broken and not pool._channels
        assert [r.message for r in caplog.records].count(
            next(r.message for r in caplog.records if "decode pool broke" in r.message)) == 1
        assert pool.submit([(("predictions", 0, 5), value, "prediction")]) == 0  # broken
        assert pool.decoded(("predictions", 0, 5), value, "prediction") is None

    try:
        asyncio.run(go())
    finally:
        pool.close()


def test_a_decode_process_counts_a_message_as_its_worker_says(tmp_path: Path) -> None:
    """Told how a model's versions are binned, a decode process sends a message's
    numeric counts (per window and version) instead of its bucket indices; the worker
    tells it again only when that changes, and counts made with a binning it no longer
    knows are not used."""
    settings = settings_from_mapping(_config(tmp_path), env={})
    engine = Engine(settings, load_references(settings), source="urn:test")
    monitor = engine.monitor("p")
    monitor.versions_seen.append("v1")
    binnings = monitor.binnings()
    pool = DecodePool(1, **LIMITS, min_bytes=0)
    events = [prediction(i, model="p") for i in range(50)]
    value = orjson.dumps(events)
    keys = [("predictions", 0, k) for k in range(2)]

    async def go() -> None:
        assert pool.configure({"p": (monitor.hop_ms, binnings)})
        assert not pool.configure({"p": (monitor.hop_ms, dict(binnings))})  # unchanged
        pool.submit([(keys[0], value, "prediction")])
        await asyncio.wait_for(pool.wait(keys[:1]), 60)
        got = pool.decoded(keys[0], value, "prediction")
        assert got is not None and type(got.events) is EventBlock
        ((key, ((binning, counts),)),) = got.events.partials.items()  # type: ignore[union-attr]
        assert key == (T0, "v1") and binning is binnings["v1"] and counts.n == 50
        own = message_counts(block(events), monitor.hop_ms, binnings)
        assert own is not None
        assert np.array_equal(counts.bins, own[key].counts.bins)
        assert np.array_equal(counts.quantiles.counts, own[key].counts.quantiles.counts)
        assert counts.quantiles[1:] == own[key].counts.quantiles[1:]
        assert not got.events.buckets and pool.counted == 1
        # three new binnings while a message is on its way: its counts' is forgotten
        pool.submit([(keys[1], value, "prediction")])
        for _ in range(3):
            ref = monitor.reference_for("v1")
            assert ref is not None
            assert pool.configure({"p": (monitor.hop_ms, {"v1": Binning.of(ref[1])})})  # type: ignore[dict-item]
        await asyncio.wait_for(pool.wait(keys[1:]), 60)
        late = pool.decoded(keys[1], value, "prediction")
        assert late is not None and late.events.partials is None  # type: ignore[attr-defined]
        assert pool.counted == 1

    try:
        asyncio.run(go())
    finally:
        pool.close()


def test_the_first_messages_are_counted_before_any_state_is_loaded(tmp_path: Path) -> None:
    """Before any model's state is loaded, each configured reference says how a version
    of its model would be binned; a warm-up model (no reference yet) is not counted."""
    settings = settings_from_mapping(_config(tmp_path), env={})
    engine = Engine(settings, load_references(settings), source="urn:test")
    pipeline = Pipeline(settings, engine, Metrics(CollectorRegistry()), Table(),
                        *[Topic() for _ in range(4)])
    pool = pipeline.decodes = InlinePool(1, **LIMITS, min_bytes=0)

    async def go() -> None:
        pipeline.prepare([[]])

    asyncio.run(go())
    assert not engine.monitors
    assert set(pool._config) == {"m", "p"}
    assert all(set(versions) == {None} and hop == 60_000
               for hop, versions in pool._config.values())


def test_messages_larger_than_the_socket_holds_and_many_in_flight() -> None:
    """Requests and answers far larger than the socket's buffers, many at once, over two
    processes: every answer settles its own message's decode."""
    pool = DecodePool(2, max_bytes=1 << 26, max_elements=200_000, min_bytes=0)
    big = [prediction(i, features={"x": i * 0.5, "n": i, "c": f"v{i % 50}"})
           for i in range(120_000)]  # about 16 MB: four times the socket's buffers
    small = [[prediction(1000 * k + i) for i in range(20 + k)] for k in range(40)]
    values = {("predictions", 0, 0): orjson.dumps(big)}
    values.update({("predictions", 1, k): orjson.dumps(e) for k, e in enumerate(small)})
    assert len(values["predictions", 0, 0]) > 4 * (4 << 20)

    async def go() -> None:
        pool.submit((key, value, "prediction") for key, value in values.items())
        await asyncio.wait_for(pool.wait(values), 120)
        for key, value in values.items():
            got = pool.decoded(key, value, "prediction")
            assert got is not None
            want = big if key[1] == 0 else small[key[2]]
            assert got.events.column("prediction_id") == [e["prediction_id"] for e in want]
        assert pool.used == len(values) and not pool.broken
        assert all(not c.waiting and c.outstanding == 0 for c in pool._channels)

    try:
        asyncio.run(go())
    finally:
        pool.close()
    assert not pool._channels


@contextlib.contextmanager
def threaded_pool(serve: Callable[[socket.socket], None]) -> Iterator[DecodePool]:
    """A pool whose one decode "process" is ``serve`` in a thread, on its end of a
    socket pair; the thread must stop once the pool has closed the socket."""
    ours, theirs = socket.socketpair()
    server = threading.Thread(target=serve, args=(theirs,))
    server.start()
    pool = DecodePool(1, **LIMITS, min_bytes=0)
    pool._channels = [decode_pool.Channel(None, ours, pool._break)]
    try:
        yield pool
    finally:
        pool.close()
        server.join(10)
        theirs.close()
    assert not server.is_alive()  # its end of the socket closed: it stopped


def test_a_message_the_decode_process_fails_on_is_decoded_by_the_worker(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The process answers with the error's text; the worker logs it and decodes the
    message itself; the process goes on with the next ones."""
    def failing(value: bytes, kind: str, max_bytes: int, max_elements: int) -> Any:
        if b"p13" in value:
            raise MemoryError("no room")
        return decode_payload(value, kind, max_bytes, max_elements)

    monkeypatch.setattr(decode_pool, "decode_payload", failing)
    values = {("predictions", 0, k): orjson.dumps([prediction(10 * k + i) for i in range(5)])
              for k in range(3)}

    async def go(pool: DecodePool) -> None:
        pool.submit((key, value, "prediction") for key, value in values.items())
        await asyncio.wait_for(pool.wait(values), 30)
        with caplog.at_level(logging.WARNING, logger="driftwarden"):
            got = [pool.decoded(key, value, "prediction") for key, value in values.items()]
        assert got[0] is not None and got[1] is None and got[2] is not None
        assert [r.message for r in caplog.records] == [
            "the decode pool failed on a message, decoded in the worker: "
            "MemoryError('no room')"]
        assert not pool.broken

    with threaded_pool(lambda sock: decode_pool.serve(sock, *LIMITS.values())) as pool:
        asyncio.run(go(pool))


def test_a_hung_decode_process_breaks_the_pool_and_the_worker_decodes(
        caplog: pytest.LogCaptureFixture) -> None:
    """A decode process that reads its requests and answers nothing: the batch path
    waits no longer than its timeout, then decodes the messages itself."""
    def hung(sock: socket.socket) -> None:
        while sock.recv(1 << 16):
            pass  # read, never answered

    key, value = ("predictions", 0, 1), orjson.dumps([prediction(i) for i in range(5)])

    async def go(pool: DecodePool) -> None:
        pool.submit([(key, value, "prediction")])
        with caplog.at_level(logging.ERROR, logger="driftwarden"):
            started = time.monotonic()
            await pool.wait([key], timeout=0.3)
            assert time.monotonic() - started < 5
        assert pool.broken and not pool._channels
        assert pool.decoded(key, value, "prediction") is None  # the worker decodes it
        assert ["decode pool broke" in r.message and "not answered" in r.message
                for r in caplog.records] == [True]

    with threaded_pool(hung) as pool:
        asyncio.run(go(pool))


def test_no_decode_processes_no_pool() -> None:
    pool = DecodePool(0, **LIMITS)
    pool.submit([(("predictions", 0, 1), b"[" + b"1," * 20_000 + b"1]", "prediction")])
    assert pool.broken and not pool._channels and pool.submitted == 0
