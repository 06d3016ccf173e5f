"""A batch left with its state records in flight (``process_batch(wait=False)``): the
next batch is monitored meanwhile, but writes no records of its own before the broker
has the previous batch's, so they reach the changelog in batch order. State is
written at checkpoints (``worker.checkpoint_interval``): once per changed model however
many batches changed it, and before a revoked partition's models are forgotten."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from app.core.engine import Engine
from app.observability.metrics import Metrics
from app.settings import settings_from_mapping
from app.sources.engine import SourcesEngine
from app.streaming import Pipeline
from app.streaming_sources import SourcePipeline

T0 = 1_700_000_000_000 // 60_000 * 60_000


class Table:
    """A table whose changelog sends stay in flight until released."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.sent: list[tuple[bytes, asyncio.Future[None]]] = []

    def send_changelog(self, partition: int, key: bytes, value: bytes | None) -> Any:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent.append((key, fut))
        return fut


class Topic:
    async def send(self, **_: Any) -> Any:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def message(offset: int, events: list[dict[str, Any]]) -> Any:
    return SimpleNamespace(topic="predictions", partition=0, offset=offset, key=b"m",
                           value=orjson.dumps(events), timestamp=T0 / 1000)


def events(first: int, n: int) -> list[dict[str, Any]]:
    return [{"prediction_id": f"p{i}", "model": "m", "model_version": "v1",
             "features": {"x": float(i % 7)}, "prediction": 1, "timestamp": T0 + i}
            for i in range(first, first + n)]


def _pipeline(checkpoint_interval: str) -> tuple[Pipeline, Table]:
    settings = settings_from_mapping(
        {"worker": {"checkpoint_interval": checkpoint_interval},
         "defaults": {"window": "1m", "lateness": "0s", "min_samples": 10},
         "models": {"m": {"features": {"x": {"type": "numeric"}},
                          "reference": {"warmup": 10}}}}, env={})
    engine = Engine(settings, {}, source="urn:test")
    table = Table()
    pipeline = Pipeline(settings, engine, Metrics(CollectorRegistry()), table, Topic(),
                        Topic(), Topic(), Topic())
    engine.load_state, engine.load_records = pipeline.load_state, pipeline.load_records
    pipeline.kinds = {"predictions": "prediction"}
    return pipeline, table


def test_the_next_batch_waits_for_the_previous_records_before_writing_its_own():
    pipeline, table = _pipeline("1s")
    engine = pipeline.engine

    async def go() -> None:
        first = await pipeline.process_batch([message(0, events(0, 50))], wait=False)
        assert first and len(first) == len(table.sent)
        assert not any(f.done() for f in first)  # in flight: returned, not waited for
        sent_first = len(table.sent)
        second = asyncio.ensure_future(pipeline.process_batch([message(1, events(50, 50))]))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not second.done()
        assert len(table.sent) == sent_first  # monitored, but no record of its own sent
        assert engine.monitor("m").positions["predictions:0"] == 1  # (its events applied)
        for _, fut in table.sent:
            fut.set_result(None)
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(table.sent) > sent_first  # now its records go out
        for _, fut in table.sent[sent_first:]:
            if not fut.done():
                fut.set_result(None)
        assert await second == []  # waited for: nothing left in flight

    asyncio.run(go())


def test_the_next_batch_publishes_its_outputs_while_the_previous_records_are_in_flight():
    """Outputs do not wait for the previous checkpoint's records: should those fail, the
    worker stops before acknowledging anything after them, and the batches read again
    publish the same outputs."""
    pipeline, _ = _pipeline("1s")
    published: list[int] = []

    class Evaluations(Topic):
        async def send(self, **kw: Any) -> Any:
            published.append(orjson.loads(kw["value"])["data"]["window"]["start_ms"])
            return await super().send()

    pipeline.evaluations = Evaluations()

    async def go() -> None:
        first = await pipeline.process_batch([message(0, events(0, 50))], wait=False)
        assert first and not any(f.done() for f in first)  # the records in flight
        later = events(1000, 1)
        later[0]["timestamp"] = T0 + 120_000  # past the first window: it closes
        second = asyncio.ensure_future(pipeline.process_batch([message(1, later)],
                                                              wait=False))
        for _ in range(50):
            await asyncio.sleep(0)
        assert second.done() and await second is None  # (no checkpoint due yet)
        assert published == [T0]
        assert not any(f.done() for f in first)

    asyncio.run(go())


def _confirm(table: Table) -> None:
    for _, fut in table.sent:
        if not fut.done():
            fut.set_result(None)


def test_batches_between_checkpoints_write_nothing_and_a_checkpoint_writes_each_state_once():
    pipeline, table = _pipeline("10m")

    async def go() -> None:
        first = await pipeline.process_batch([message(0, events(0, 50))], wait=False)
        assert first  # the worker's first batch: a checkpoint was due
        _confirm(table)
        written = len(table.sent)
        for k in range(1, 4):  # within the interval: written by no batch
            assert await pipeline.process_batch([message(k, events(50 * k, 50))],
                                                wait=False) is None
        assert len(table.sent) == written and pipeline.changed == {"m": None}
        sends = await pipeline.checkpoint()
        assert [key for key, _ in table.sent[written:]] == [b"m"]  # once, for three batches
        assert sends == [fut for _, fut in table.sent[written:]]
        assert orjson.loads(table.data[b"m"])["positions"] == {"predictions:0": 3}
        assert pipeline.changed == {}

    asyncio.run(go())


def test_a_zero_interval_makes_a_checkpoint_after_every_batch():
    pipeline, table = _pipeline("0s")

    async def go() -> None:
        for k in range(3):
            sends = await pipeline.process_batch([message(k, events(50 * k, 50))], wait=False)
            assert sends and [key for key, f in table.sent if f in sends] == [b"m"]
            _confirm(table)

    asyncio.run(go())


async def _checkpoint_then_not(pipeline: Pipeline, table: Table) -> int:
    """Two batches: the first makes the worker's first checkpoint (confirmed), the second
    none (the interval has not passed); returns the records sent so far."""
    await pipeline.process_batch([message(0, events(0, 50))], wait=False)
    _confirm(table)
    assert await pipeline.process_batch([message(1, events(50, 50))], wait=False) is None
    return len(table.sent)


def test_forgotten_models_are_not_written_by_the_next_checkpoint():
    """A model forgotten without a checkpoint (another worker owns it now): nothing of
    it is written; its batches since the last checkpoint, never acknowledged, are read
    again by its owner from the committed offsets."""
    pipeline, table = _pipeline("10m")

    async def go() -> None:
        written = await _checkpoint_then_not(pipeline, table)
        pipeline.forget_partitions({0})
        assert await pipeline.checkpoint() == [] and len(table.sent) == written

    asyncio.run(go())


def test_a_revoked_partition_has_its_models_written_before_they_are_forgotten():
    """Batches handled before a rebalance are acknowledged when the consumer's turn
    ends: what they changed of a revoked partition's models is written first, while
    this worker still owns them."""
    pipeline, table = _pipeline("10m")

    async def go() -> None:
        written = await _checkpoint_then_not(pipeline, table)
        await pipeline.revoke({0})
        assert [key for key, _ in table.sent[written:]] == [b"m"]
        assert orjson.loads(table.data[b"m"])["positions"] == {"predictions:0": 1}
        assert "m" not in pipeline.engine.monitors and pipeline.changed == {}

    asyncio.run(go())


def _sources() -> tuple[SourcePipeline, Table]:
    settings = settings_from_mapping(
        {"defaults": {"window": "1m", "lateness": "0s", "min_samples": 10},
         "sources": {"crm": {"freshness": "5m"}},
         "models": {"m": {"features": {"x": {"type": "numeric", "source": "crm"}},
                          "reference": {"warmup": 10}}}}, env={})
    table = Table()

    async def nothing(*_: Any) -> None:
        return None

    sources = SourcePipeline(settings, SourcesEngine(settings, source_uri="urn:test"),
                             Metrics(CollectorRegistry()), table, {}, nothing, nothing)
    sources.engine.load_state = sources.load_state
    return sources, table


def test_a_flush_returns_only_once_the_broker_has_the_records_another_task_waits_for():
    """The timer and the batch path both flush: the second to flush, finding the records
    the first already waits for, waits for them too (it returned at once, and its batch
    was acknowledged before its state was on the broker), for both pipelines."""
    for pipeline, table in (_pipeline("10m"), _sources()):

        async def go(p: Any = pipeline, t: Table = table) -> None:
            p.unflushed.append(t.send_changelog(0, b"k", b"v"))
            first = asyncio.ensure_future(p.flush_state())
            await asyncio.sleep(0)
            second = asyncio.ensure_future(p.flush_state())
            for _ in range(5):
                await asyncio.sleep(0)
            assert not first.done() and not second.done()
            _confirm(t)
            await asyncio.gather(first, second)
            assert p.unflushed == []

        asyncio.run(go())


def test_a_recreated_topic_is_rewound_in_every_state_and_written_at_once():
    """A topic the guard had to recreate numbers its offsets from 0 again: the states
    drop their positions for it and are written to the changelog at once, for the
    models (a checkpoint) as for the sources."""
    pipeline, table = _pipeline("10m")
    sources, source_table = _sources()

    async def go() -> None:
        await pipeline.process_batch([message(0, events(0, 50))], wait=False)
        _confirm(table)
        inputs = [{"source": "crm", "timestamp": T0 + i, "record": {"x": i}} for i in range(5)]
        asyncio.get_running_loop().call_soon(_confirm, source_table)
        await sources.process_batch([SimpleNamespace(
            topic="inputs", partition=0, offset=7, key=b"crm", value=orjson.dumps(inputs),
            timestamp=T0 / 1000)])
        written, source_written = len(table.sent), len(source_table.sent)
        assert orjson.loads(source_table.data[b"crm"])["monitor"]["positions"] == {
            "inputs:0": 7}
        for p in (pipeline, sources):
            task = asyncio.ensure_future(p.rewind("predictions" if p is pipeline else "inputs"))
            for _ in range(20):
                await asyncio.sleep(0)
            _confirm(table)
            _confirm(source_table)
            await task
        assert [key for key, _ in table.sent[written:]] == [b"m"]
        assert "predictions:0" not in orjson.loads(table.data[b"m"])["positions"]
        assert [key for key, _ in source_table.sent[source_written:]] == [b"crm"]
        assert "inputs:0" not in orjson.loads(source_table.data[b"crm"])["monitor"]["positions"]

    asyncio.run(go())
