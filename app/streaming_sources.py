"""The faust side of source monitoring: ``mlmon.inputs`` records in, source alerts out.

Inputs are keyed by source, not by model, so they have their own agent and their own
state table (``source-state``, one record per source, written once per batch). Decisions
are the sources engine's (``app.sources.engine``); outputs wait in the saved state until
published, and a timer closes idle windows and judges freshness while nothing arrives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka.partitioner import murmur2
from faust.types import Message

from app.errors import StateError
from app.events.checks import INPUT
from app.events.decode import Rejection, decode_message, element_bytes
from app.observability import Metrics
from app.settings import MonitorSettings
from app.sources.engine import SourcesEngine
from app.streaming import flush_sends, rewind_states, state_bytes

log = logging.getLogger("driftwarden")


def key_partition(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a key (murmur2, as producers do)."""
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions
SOURCE_TABLE = "source-state"


@dataclass
class SourcePipeline:
    settings: MonitorSettings
    engine: SourcesEngine
    metrics: Metrics
    table: Any
    targets: dict[str, Any]  # "alerts" / "evaluations" -> faust topic
    dead_letter: Any  # async (list of (message, Rejection)) -> None
    send: Any  # async (key, [(topic, CloudEvent)]) -> None: the model pipeline's _send
    assigned: Any = None  # () -> inputs partitions this worker holds
    locks: dict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    unflushed: list[Any] = field(default_factory=list)  # state records being sent

    def load_state(self, source: str) -> Any:
        raw = self.table.data.get(source.encode())
        if raw is None:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise StateError(f"saved source state is not JSON: {exc}") from None

    def on_state_error(self, source: str, exc: StateError) -> None:
        self.metrics.state_errors.labels(source).inc()
        log.error("cannot restore the state of source %r, starting afresh: %s", source, exc)

    def save(self, source: str) -> None:
        m = self.engine.monitor(source)
        if m.partition is None:
            return
        key, value = source.encode(), state_bytes(self.engine.to_state(source))
        self.table.data[key] = value
        self.unflushed.append(self.table.send_changelog(m.partition, key, value))

    async def rewind(self, topic: str) -> None:
        """See ``app.streaming.rewind_states``: the sources' positions of a recreated
        ``topic`` (a table key is a source's name)."""
        await rewind_states(self, topic, lambda key: key, self.settings.sources)

    async def flush_state(self) -> None:
        """Every state record saved so far on the broker (see ``Pipeline.flush_state``)."""
        await flush_sends(self)

    async def process_batch(self, messages: list[Message], now: float | None = None) -> None:
        now = time.time() if now is None else now
        wset = self.settings.worker
        topic = self.settings.topics.name("inputs")
        batch = self.engine.batch()
        dead: list[tuple[Any, Rejection]] = []
        for msg in messages:
            value: bytes = msg.value or b""
            decoded = decode_message(value, INPUT, max_bytes=wset.max_message_bytes,
                                     max_elements=wset.max_array_elements)
            dead.extend((msg, r) for r in decoded.rejections)
            default_ms = int(msg.timestamp * 1000) if msg.timestamp else int(now * 1000)
            for i, obj in enumerate(decoded.events):
                reason = batch.add(obj, default_ms, position=(f"{msg.topic}:{msg.partition}",
                                                              msg.offset),
                                   partition=msg.partition)
                if reason is not None:
                    index = None if decoded.positions is None else decoded.positions[i]
                    dead.append((msg, Rejection(
                        reason, f"source {obj['source']!r} is not configured",
                        element_bytes(value, obj, decoded), index)))
        self.metrics.messages.labels(topic).inc(len(messages))
        self.metrics.events.labels(topic, "", "valid").inc(batch.accepted)  # no model: sources
        if batch.duplicates:
            self.metrics.events.labels(topic, "", "duplicate").inc(batch.duplicates)
        await self.dead_letter(dead)  # before the state that skips their positions
        self.engine.apply(batch, now)
        for source, (_, times) in batch.groups.items():
            self.metrics.source_last_event.labels(source).set(
                self.engine.monitor(source).watermark_ms / 1000)  # type: ignore[operator]
            self.metrics.source_records.labels(source).inc(len(times))
            self.save(source)
        for source in batch.groups:
            await self.check(source, now)
        await self.flush_state()

    async def check(self, source: str, now: float | None = None) -> None:
        """Close due windows, judge freshness, publish what waits; under the source's lock."""
        async with self.locks[source]:
            now = time.time() if now is None else now
            self.engine.check(source, now)
            outputs = self.engine.outputs(source)
            self.save(source)
            if not outputs:
                return
            await self.send(source, [(self.targets[t], e) for t, e in outputs])
            self.metrics.observe_alerts("", [e for t, e in outputs if t == "alerts"],
                                        self.engine.books[source])
            self.engine.ack(source, len(outputs))
            self.save(source)

    def local_sources(self) -> list[str]:
        names = set(self.engine.monitors)
        for key in list(self.table.data.keys()):
            names.add(key.decode() if isinstance(key, bytes) else str(key))
        owned = self.assigned() if self.assigned is not None else None
        if owned is not None:  # sources never heard of: judged by the worker owning their key
            parts = self.settings.kafka.partitions
            for name, s in self.settings.sources.items():
                partition = key_partition(name, parts)
                if s.freshness is not None and name not in names and partition in owned:
                    self.engine.monitor(name, partition)
                    names.add(name)
        out = []
        for name in sorted(n for n in names if n in self.settings.sources):
            if owned is not None and self.engine.monitor(name).partition not in owned:
                self.engine.forget([name])
                continue
            out.append(name)
        return out

    async def tick(self) -> None:
        now = time.time()
        for source in self.local_sources():
            try:
                await self.check(source, now)
            except Exception:
                log.exception("source %r: publishing failed; will retry", source)
        await self.flush_state()
