"""The input topics delivered in batches straight from the consumer's fetches.

faust hands every record to its streams one at a time: per record its fetch loop runs
``Service.wait_first`` (four asyncio tasks created and three cancelled), the conductor
builds an ``Event`` and queues it on the agent's channel, the stream takes it out, runs
its processors and acknowledges it. That is about 100 µs of a 2-core machine's CPU per
record, more than the whole monitoring work of a single-event message, and nothing of it
is needed by a worker that processes records in batches anyway.

So the worker's input topics (predictions, outcomes, model events; inputs when sources
are configured) are read by :class:`BatchConsumer`, faust's own aiokafka consumer with
``getmany`` replaced: the records of those topics, as the consumer thread fetched them,
are grouped per handler and passed on in batches (``worker.batch_size`` messages,
``worker.batch_max_bytes`` bytes; a small fetch waits up to ``worker.batch_within`` for
more, as faust's ``take_events`` waited); every other topic (the tables' changelogs
during recovery) still takes faust's path record by record. Everything else stays
faust's: the consumer group and its rebalances, the partition assignment shared with the
state tables, table recovery, flow control, and the offsets committed by its commit
timer, which a handled batch's acknowledgements feed (``Consumer.ack``, per message, as
a stream would).

A handler acknowledges nothing itself: :class:`BatchConsumer` acknowledges a batch after
its handler returned, or, when the handler returns what the batch still waits for (its
state records on their way to the broker: ``Settle``), once that is done too. The
consumer then first hands the handler the fetch's next batch, whose work overlaps the
broker's round trip (the handler waits for the previous batch's records before it
sends its own), and settles the batch after it. A handler that saves its state only now
and then (a checkpoint) returns :class:`Later` for a batch whose state it has not saved
yet: that batch is acknowledged with the next batch of the same handler that waits for
a save of its own (which covers it), or, when the turn ends first, once the handler's
checkpoint (``Later.checkpoint``) is done. Every batch of a turn is settled before the
next fetch. A batch whose handler, or what it waits for, raised or was
cancelled stays unacknowledged, so its offsets and every later one of its partitions
are never committed: it is read again after a restart or a rebalance, where the state's applied
positions skip what had reached the changelog. Records fetched before a rebalance
(another consumer generation) or while the flow is stopped are dropped unhandled, as
faust drops them: the rebalance seeks every partition back to its committed offset.
Each batch handed over counts, for faust's check of stalled partitions, as its
partitions' inbound stream events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer as AIOKafkaConsumerClient
from aiokafka import TopicPartition
from faust.transport.drivers.aiokafka import (
    AIOKafkaConsumerThread,
    credentials_to_aiokafka_auth,
    server_list,
)
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, Message

from app import fetch_crc

log = logging.getLogger("driftwarden")

#: What a handled batch still waits for before it may be acknowledged (see the module).
Settle = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Later:
    """What a handler returns for a batch whose state it saves later (see the module):
    ``checkpoint()`` saves it now and returns what the batch then waits for."""

    checkpoint: Callable[[], Awaitable[Settle]]


Handler = Callable[[list[Message]], Awaitable["Settle | Later | None"]]
#: Handled batches not acknowledged yet, in order: their handler, what each waits for,
#: its messages.
Waiting = list[tuple[Handler, "Settle | Later | None", list[Message]]]
#: Event-loop turns given to the producer after a batch was handled, once faust's
#: producer buffer has handed its records to aiokafka: they are sent (and earlier
#: acknowledgements read) before the next batch's work, which holds the loop, begins.
PRODUCER_TURNS = 8
#: At most this many turns for faust's producer buffer (its task hands records over one
#: by one): a bound, should the buffer not drain.
BUFFER_TURNS = 1000


@dataclass(frozen=True)
class BatchLimits:
    """When a batch is complete: ``messages`` or ``size`` bytes of message values,
    whichever first; a fetch smaller than that waits up to ``within`` seconds for more."""

    messages: int = 1000
    size: int = 1024 * 1024
    within: float = 0.05


def chunks(messages: list[Message], limits: BatchLimits) -> Iterable[list[Message]]:
    """``messages`` cut into batches within the limits (a message larger than ``size``
    is a batch of its own), in their order.

    >>> ms = [Message("t", 0, i, 0.0, 0, None, None, b"x" * 40, None) for i in range(7)]
    >>> [[m.offset for m in c] for c in chunks(ms, BatchLimits(messages=3, size=100))]
    [[0, 1], [2, 3], [4, 5], [6]]
    """
    out: list[Message] = []
    size = 0
    for m in messages:
        n = len(m.value or b"")
        if out and (len(out) >= limits.messages or size + n > limits.size):
            yield out
            out, size = [], 0
        out.append(m)
        size += n
    if out:
        yield out


class BatchApp(faust.App):
    """A faust app whose consumer delivers the topics in ``batch_routes`` in batches."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_routes: dict[str, Handler] = {}  # topic name -> its batch handler
        self.batch_limits = BatchLimits()
        self.fetch_max_wait = 1.5  # seconds; faust's fixed value (see FetchThread)
        # Told each fetch's batches, in order, before the first is handled; returns
        # whether it started work on any (decoding in other processes). The records
        # fetched while a turn's batches are handled are taken before its last batch,
        # or, while the last call started work, once few of them wait (READ_AHEAD): that
        # work then never waits for the turn's end
        self.batch_prepare: Callable[[list[list[Message]]], bool] | None = None

    def route_batches(self, topic: Any, handler: Handler) -> None:
        """Deliver the records of ``topic`` (a faust topic, possibly of several names) to
        ``handler`` in batches. The topic is subscribed like an agent's, with acks."""
        self.topics.add(topic)
        for name in topic.topics:
            self.batch_routes[name] = handler

    def _new_consumer(self) -> Any:
        return BatchConsumer(
            self.transport,
            callback=self.topics.on_message,
            on_partitions_revoked=self._on_partitions_revoked,
            on_partitions_assigned=self._on_partitions_assigned,
            beacon=self.beacon,
            loop=self.transport.loop,
        )


#: Batches of a turn still to handle below which what was fetched meanwhile is taken
#: into the turn, while ``batch_prepare`` starts work on what it is told (a decode
#: pool's): it then decodes while they are handled. Taking it before every batch read
#: the whole backlog ahead into memory (peak RSS 350 -> 440 MiB on the benchmark); only
#: before the last, the pool ran dry behind long turns. Messages no one works on ahead
#: (single events, too small for the pool) are taken before the turn's last batch only.
READ_AHEAD = 3


class FetchThread(AIOKafkaConsumerThread):
    """faust's consumer thread, its aiokafka consumer long-polling ``app.fetch_max_wait``
    (faust fixes ``fetch_max_wait_ms`` at 1 500 ms).

    aiokafka keeps one fetch in flight per broker, for the partitions with nothing
    buffered. When a fetch for partitions that are caught up is in flight, the broker
    holds it for the whole wait, and the partitions just drained, whose backlog waits on
    the broker, are not fetched before it returns. Records are drained from the buffer
    only once a batch is handled, so that happens at every turn: at 1.5 s, a worker
    reading a backlog of 100 000 events in arrays waited 2.2 s of its 3.9 s for fetches;
    at 0.1 s, 0.09 s. A shorter wait costs an idle consumer a few small requests a
    second.

    Its fetches' record batches have their CRCs checked with the processor's CRC32C
    instruction (:mod:`app.fetch_crc`), not aiokafka's Cython, which held the
    interpreter's lock from the worker's thread 0.1 s per 200 MB fetched.
    """

    app: BatchApp

    def _create_worker_consumer(self, transport: Any) -> Any:
        fetch_crc.install()  # record batches' CRCs checked with the CPU's instruction
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = max(1, round(self.app.fetch_max_wait * 1000))
        self._transport = transport
        return consumer

    def pause_exactly(self, paused: frozenset[TP]) -> None:
        """In this thread: have the aiokafka consumer pause exactly the assigned
        partitions of ``paused`` (faust's paused set), resuming the others (see
        :meth:`BatchConsumer.pause_partitions`). A partition no longer assigned (a
        rebalance came between) is left to the assignment that follows."""
        consumer = self._consumer
        if consumer is None:
            return
        assigned = consumer.assignment()
        want = {TopicPartition(tp.topic, tp.partition) for tp in paused} & assigned
        have = consumer.paused()
        if want - have:
            consumer.pause(*(want - have))
        if have - want:
            consumer.resume(*(have - want))

    def verify_event_path(self, now: float, tp: TP) -> None:
        """faust's periodic check that the client fetches, and the streams process,
        every assigned partition; a partition paused in the client (:meth:`pause_exactly`:
        faust paused it, a table's changelog once recovered) is not fetched by design,
        and is left out (faust logged an error for each every few seconds from its
        fifth minute: "Aiokafka has not sent fetch request ... since start")."""
        consumer = self._consumer
        if consumer is not None and \
                TopicPartition(tp.topic, tp.partition) in consumer.paused():
            return
        super().verify_event_path(now, tp)

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        """The partitions' end offsets, checked against their last record batch (see
        :func:`true_ends`): table recovery reads a changelog up to them."""
        ends = await super()._highwaters(partitions)
        if getattr(self.consumer, "in_transaction", False):
            return ends
        conf, transport = self.app.conf, self._transport
        return await true_ends(
            ends, bootstrap_servers=server_list(transport.url, transport.default_port),
            client_id=conf.broker_client_id,
            request_timeout_ms=int(conf.broker_request_timeout * 1000),
            **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context))


async def true_ends(ends: Mapping[TP, int], *, timeout: float = 10.0,
                    **client: Any) -> dict[TP, int]:
    """``ends`` (end offsets, as a broker lists them) checked against each partition's
    last record batch: the end is one past that batch's last record.

    The embedded broker lists a partition's end as one past its last record batch's
    *first* offset. faust reads a changelog up to the end offset at recovery and drops
    what comes after, so a last batch of several records (a checkpoint's records of one
    partition travel in one) would lose all but its first record. A broker that lists
    the end right, as Kafka does, returns its last record from that batch, and the end
    stays. One fetch per non-empty partition, by a consumer of its own (``client``:
    its connection settings), at each recovery; a partition that returns nothing
    within ``timeout`` keeps its listed end.
    """
    out = dict(ends)
    last = {tp: end - 1 for tp, end in ends.items() if end}
    if not last:
        return out
    consumer = AIOKafkaConsumerClient(enable_auto_commit=False, group_id=None,
                                      max_partition_fetch_bytes=64 * 1024 * 1024, **client)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(tp.topic, tp.partition) for tp in last])
        for tp, offset in last.items():
            consumer.seek(TopicPartition(tp.topic, tp.partition), offset)
        waiting = set(last)
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            fetched = await consumer.getmany(timeout_ms=200)
            for tp, records in fetched.items():
                key = TP(tp.topic, tp.partition)
                if records and key in waiting:
                    out[key] = max(out[key], records[-1].offset + 1)
                    waiting.discard(key)
    finally:
        await consumer.stop()
    return out


class BatchConsumer(AIOKafkaConsumer):
    """faust's aiokafka consumer, delivering the app's batch routes in batches (see the
    module's docstring). Its fetch loop (``Consumer._drain_messages``) is faust's: only
    the records it is handed one by one are those of the other topics."""

    app: BatchApp
    _ahead = False  # whether batch_prepare started work on the last batches it was told

    def _new_consumer_thread(self) -> FetchThread:
        return FetchThread(self, loop=self.loop, beacon=self.beacon)

    def pause_partitions(self, tps: Iterable[TP]) -> None:
        """Pause fetching from partitions: in faust's bookkeeping, and in the aiokafka
        client too.

        faust's own pause only keeps the partitions out of what it takes from the
        client's fetches (the tables pause their changelog partitions once recovered).
        The client still fetched them: a changelog partition's first records (the
        worker's own checkpoints) were fetched once and never taken, and for
        ``prefetch_backoff`` (0.1 s) after they came, records not yet taken, aiokafka
        held back the next fetch of every partition on that broker: a worker reading a
        backlog read nothing for up to 0.19 s. Paused in the client, they are not
        fetched at all."""
        super().pause_partitions(tps)
        self._pause_in_client()

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        """Resume fetching from partitions (faust's bookkeeping and the client)."""
        super().resume_partitions(tps)
        self._pause_in_client()

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0
                                     ) -> None:
        # a new assignment's partitions start unpaused in the client, while faust keeps
        # those paused before that are still assigned
        await super().on_partitions_assigned(assigned, generation_id)
        self._pause_in_client()

    def _pause_in_client(self) -> None:
        """Tell the consumer thread faust's paused partitions (:meth:`FetchThread.
        pause_exactly`, run in its event loop: the client is not thread-safe; in the
        order told, the last one standing)."""
        thread: FetchThread = self._thread  # type: ignore[assignment]
        with contextlib.suppress(RuntimeError):  # the thread's loop is closed: stopped
            thread.thread_loop.call_soon_threadsafe(
                thread.pause_exactly, frozenset(self._paused_partitions))

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """One turn of faust's fetch loop: the routed records of this fetch (and of the
        next ones, within ``batch_limits.within``, while they are few) handled in batches
        and acknowledged; the other records yielded one by one, as faust's ``getmany``
        yields them."""
        app = self.app
        routes = app.batch_routes
        limits = app.batch_limits
        generation = app.consumer_generation_id
        pending: dict[Handler, list[Message]] = {}
        counts = [0, 0]  # messages and bytes pending
        others: dict[TP, list[Any]] = {}
        deadline: float | None = None
        wait = timeout
        while True:
            records, active = await self._wait_next_records(wait)
            if records is None or self.should_stop:
                return
            if app.consumer_generation_id != generation:
                return  # rebalanced meanwhile: the rebalance seeks back to the commits
            if not self.flow_active:
                try:  # as faust does: the flow stopped after the fetch
                    await self.perform_seek()
                except Exception as exc:  # pragma: no cover
                    log.warning("seeking back with the flow stopped failed: %r", exc)
                return
            for tp, batch in records.items():
                if not (active is None or tp in active or tp in self._buffered_partitions):
                    continue
                handler = routes.get(tp.topic)
                if handler is None:
                    others[tp] = batch
                else:
                    await self._accept(tp, batch, pending.setdefault(handler, []), counts)
            if others or not pending:
                break
            if counts[0] >= limits.messages or counts[1] >= limits.size:
                break
            now = time.monotonic()
            if deadline is None:
                deadline = now + limits.within
            if now >= deadline:
                break
            wait = deadline - now
        waiting: Waiting = []  # handled, not acknowledged
        batches = deque(self._batches(pending))
        while batches:
            handler, batch = batches.popleft()
            if app.consumer_generation_id != generation or not self.flow_active:
                await self._settle(waiting, final=True)
                return  # a rebalance began: the rest is read again after it
            if len(batches) < (READ_AHEAD if self._ahead else 1) and not others \
                    and app.batch_prepare is not None:
                # what was fetched meanwhile is prepared (see BatchApp.batch_prepare),
                # and handled after the turn's batches, in this turn
                batches.extend(await self._fetched_meanwhile(generation, others))
            self._note_inbound(batch)
            settle = await handler(batch)
            if isinstance(settle, Later):
                for message in batch:  # waiting for a checkpoint: only its offsets count
                    message.value = None
            await self._settle(waiting)  # the one before: its round trip had this work
            waiting.append((handler, settle, batch))
            if settle is None:
                await self._settle(waiting)
            else:
                await self._let_producer_send()
        await self._settle(waiting, final=True)
        if others:
            to_message = self._to_message
            for tp, record in self.scheduler.iterate(others):
                if not self.flow_active or app.consumer_generation_id != generation:
                    break
                yield tp, to_message(tp, record)

    def _batches(self, pending: dict[Handler, list[Message]]
                 ) -> list[tuple[Handler, list[Message]]]:
        """The handlers' messages cut into batches, in order; told to ``batch_prepare``."""
        out = [(handler, batch) for handler, messages in pending.items()
               for batch in chunks(messages, self.app.batch_limits)]
        if out and self.app.batch_prepare is not None:
            self._ahead = self.app.batch_prepare([batch for _, batch in out])
        return out

    async def _fetched_meanwhile(self, generation: int, others: dict[TP, list[Any]]
                                 ) -> list[tuple[Handler, list[Message]]]:
        """The records fetched since this turn began, without waiting for any: routed ones
        as batches, the others' kept in ``others`` (they end the turn)."""
        if not self.flow_active or not self._get_active_partitions():
            return []  # (faust's fetch would wait for the flow, or sleep a second)
        records, active = await self._wait_next_records(0)
        if not records or self.app.consumer_generation_id != generation:
            return []  # (a rebalance seeks back to the commits: nothing is skipped)
        if not self.flow_active:
            await self.perform_seek()  # as faust does: the flow stopped after the fetch
            return []
        pending: dict[Handler, list[Message]] = {}
        for tp, batch in records.items():
            if not (active is None or tp in active or tp in self._buffered_partitions):
                continue
            handler = self.app.batch_routes.get(tp.topic)
            if handler is None:
                others.setdefault(tp, []).extend(batch)
            else:
                await self._accept(tp, batch, pending.setdefault(handler, []), [0, 0])
        return self._batches(pending)

    def _note_inbound(self, batch: list[Message]) -> None:
        """Tell faust's monitor that the batch's partitions are being processed, as a
        stream does per event. faust checks every partition with unread records for a
        recent inbound event and, finding none, logs an error that its stream "has not
        started processing" (and, should the batch path stall, that it stopped)."""
        monitor = self.app.monitor
        if monitor is None:
            return
        now = time.monotonic()
        for tp in {m.tp for m in batch}:
            monitor.stream_inbound_time[tp] = now

    async def _let_producer_send(self) -> None:
        """Give the event loop to the producer until the records just saved are on their
        way to the broker (see ``PRODUCER_TURNS``)."""
        buffer = self.app.producer.buffer
        for _ in range(BUFFER_TURNS):
            if not buffer.size:
                break
            await asyncio.sleep(0)
        for _ in range(PRODUCER_TURNS):
            await asyncio.sleep(0)

    async def _settle(self, waiting: Waiting, *, final: bool = False) -> None:
        """Acknowledge handled batches, in order, once what each waits for is done; they
        leave ``waiting`` (one that raised stays, unacknowledged). A batch that waits for
        a later save (:class:`Later`) waits for what the next batch of its handler that
        saved waits for; without one it stays, unless ``final`` (the turn ends): each
        handler's last such batch then has its checkpoint made."""
        if final:
            last: dict[Handler, int] = {}  # each handler's last batch that waits for a save
            for i, (handler, settle, _) in enumerate(waiting):
                if isinstance(settle, Later):
                    last[handler] = i
                elif settle is not None:
                    last.pop(handler, None)  # (saved after the ones before)
            for i in sorted(last.values()):
                handler, later, batch = waiting[i]
                assert isinstance(later, Later)
                waiting[i] = (handler, await later.checkpoint(), batch)
        # what each batch waits for: its own, or (Later) its handler's next save's, if any
        covers: list[Settle | Later | None] = [None] * len(waiting)
        saved: dict[Handler, Settle] = {}
        for i in range(len(waiting) - 1, -1, -1):
            handler, settle, _ = waiting[i]
            if isinstance(settle, Later):
                covers[i] = saved.get(handler, settle)
            else:
                covers[i] = settle
                if settle is not None:
                    saved[handler] = settle
        entries, acked = list(waiting), [False] * len(waiting)
        done: list[Settle] = []  # what was waited for already
        ack = self.ack
        try:
            for i, ((_, _, batch), cover) in enumerate(zip(entries, covers, strict=True)):
                if isinstance(cover, Later):  # not saved yet
                    continue
                if cover is not None and not any(cover is d for d in done):
                    await cover()
                    done.append(cover)
                for message in batch:
                    ack(message)
                acked[i] = True
        finally:
            waiting[:] = [e for e, a in zip(entries, acked, strict=True) if not a]

    async def _accept(self, tp: TP, records: list[Any], out: list[Message],
                      counts: list[int]) -> None:
        """A partition's fetched records as faust messages, with faust's bookkeeping of
        read offsets: records below the read offset (read already) are skipped, and a
        jump in offsets (transaction markers, compaction) is a gap the commits step
        over."""
        read = self._read_offset.get(tp)
        to_message = self._to_message
        acking = self.app.topics.acks_enabled_for
        size = 0
        n = 0
        for record in records:
            offset = record.offset
            if read is not None and offset < read:
                continue
            if read and offset - read > 1 and acking(tp.topic):
                await self._add_gap(tp, read + 1, offset)
            read = offset
            message = to_message(tp, record)
            out.append(message)
            size += len(message.value or b"")
            n += 1
        if n:
            self._read_offset[tp] = read
        counts[0] += n
        counts[1] += size
