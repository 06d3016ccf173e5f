"""The compacted ``mlmon.references`` topic: every worker gets every model version's
reference.

``driftwarden reference build ... --publish`` writes a reference keyed
``<model>/<version>`` (compaction keeps the newest per key). Workers read the whole topic
before they start processing, then keep following it, and install each reference into
their engine; a version without one falls back to an earlier version's reference.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.errors import StateError
from app.kafka import client_kwargs
from app.reference import Reference
from app.settings import MonitorSettings

log = logging.getLogger("driftwarden")


def reference_key(model: str, version: str) -> bytes:
    return f"{model}/{version}".encode()


async def publish_reference(bootstrap: str, settings: MonitorSettings,
                            reference: Reference) -> None:
    if reference.version is None:
        raise ValueError("only a version's reference is published: build it with --version")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=16 << 20,
                                **client_kwargs(settings.kafka))
    await producer.start()
    try:
        await producer.send_and_wait(settings.topics.name("references"),
                                     orjson.dumps(reference.to_dict()),
                                     key=reference_key(reference.model, reference.version))
    finally:
        await producer.stop()


def decode_reference(value: bytes | None) -> Reference | None:
    if not value:
        return None  # a tombstone
    try:
        return Reference.from_dict(orjson.loads(value))
    except (StateError, orjson.JSONDecodeError) as exc:
        log.error("ignoring an unreadable record on the references topic: %s", exc)
        return None


class ReferenceFollower:
    """Reads the references topic from the start and keeps following it."""

    def __init__(self, bootstrap: str, settings: MonitorSettings,
                 install: Callable[[Reference], Any]) -> None:
        self.bootstrap = bootstrap
        self.settings = settings
        self.install = install
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self) -> int:
        """Read every reference published so far; returns how many were installed."""
        topic = self.settings.topics.name("references")
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                         enable_auto_commit=False,
                                         max_partition_fetch_bytes=16 << 20,
                                         **client_kwargs(self.settings.kafka))
        await self.consumer.start()
        parts = self.consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        ends = await self.consumer.end_offsets(tps) if tps else {}
        installed = 0
        while True:
            behind = [tp for tp, end in ends.items() if await self.consumer.position(tp) < end]
            if not behind:
                return installed
            installed += await self.poll(timeout_ms=500)

    async def poll(self, timeout_ms: int = 1000) -> int:
        assert self.consumer is not None
        installed = 0
        batch = await self.consumer.getmany(timeout_ms=timeout_ms)
        for records in batch.values():
            for record in records:
                ref = decode_reference(record.value)
                if ref is not None and self.install(ref):
                    installed += 1
        return installed

    async def follow(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker hiccup: keep following
                log.exception("reading the references topic failed; retrying")
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None
