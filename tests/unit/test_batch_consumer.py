"""The batch path of the input topics (``app.batch_consumer``): what a fetch becomes.

faust's own consumer runs here unstarted, with its fetch (``_wait_next_records``)
replaced by scripted rounds of records: the batches handed to the handlers, their
acknowledgements (what the commit timer may commit), faust's read offsets and gaps, and
the records of other topics that still take faust's per-record path.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from faust.types import TP, Message

from app.batch_consumer import READ_AHEAD, BatchApp, BatchConsumer, BatchLimits, Later

ROUTED = ("t.predictions", "t.outcomes")
OTHER = "t.model-state-changelog"


def record(topic: str, offset: int, size: int = 10, partition: int = 0) -> ConsumerRecord:
    return ConsumerRecord(topic, partition, offset, 1_700_000_000_000, 0, b"k", b"v" * size,
                          None, 1, size, [])


class Script:
    """Rounds of fetched records, then nothing; the timeouts each fetch was given."""

    def __init__(self, *rounds: dict[TP, list[ConsumerRecord]]) -> None:
        self.rounds = list(rounds)
        self.waits: list[float] = []

    async def __call__(self, timeout: float) -> tuple[dict[TP, list[Any]], None]:
        self.waits.append(timeout)
        return (self.rounds.pop(0) if self.rounds else {}), None


class Harness:
    def __init__(self, limits: BatchLimits | None = None) -> None:
        self.app = BatchApp("batch-consumer-test", broker="kafka://127.0.0.1:1")
        self.app.batch_limits = limits or BatchLimits()
        self.handled: list[list[tuple[str, int]]] = []
        self.fail_on: int | None = None  # the handler raises on this call (0-based)
        self.on_call: Any = None
        topic = self.app.topic(*ROUTED, key_type=bytes, value_type=bytes,
                               key_serializer="raw", value_serializer="raw")
        self.app.route_batches(topic, self.handle)
        self.app.topic(OTHER, key_type=bytes, value_type=bytes)  # not routed
        self.consumer: BatchConsumer = self.app.consumer

    async def handle(self, messages: list[Message]) -> None:
        call = len(self.handled)
        self.handled.append([(m.topic, m.offset) for m in messages])
        assert not any(m.acked for m in messages), "acknowledged before it was handled"
        if self.on_call is not None:
            self.on_call(call)
        if call == self.fail_on:
            raise RuntimeError("the broker never took the outputs")

    async def fetch(self, script: Script) -> list[tuple[str, int]]:
        await self.app.topics._update_indices()  # subscribed: acks enabled for the topics
        self.consumer._wait_next_records = script  # type: ignore[method-assign]
        return [(m.topic, m.offset) async for _, m in self.consumer.getmany(1.0)]

    def acked(self, topic: str = ROUTED[0], partition: int = 0) -> list[int]:
        return sorted(self.consumer._acked[TP(topic, partition)])


def run(coro: Any) -> Any:
    return asyncio.run(coro)


P0, P1, O0 = TP(ROUTED[0], 0), TP(ROUTED[0], 1), TP(ROUTED[1], 0)


def offsets(topic: str, first: int, last: int) -> Iterator[tuple[str, int]]:
    return ((topic, o) for o in range(first, last + 1))


def test_a_fetch_is_one_batch_in_offset_order_acknowledged_after_its_handler():
    h = Harness()
    yielded = run(h.fetch(Script({P0: [record(ROUTED[0], o) for o in range(5)],
                                  O0: [record(ROUTED[1], o) for o in range(3)]})))
    assert yielded == []  # nothing of the routed topics takes faust's per-record path
    assert h.handled == [[*offsets(ROUTED[0], 0, 4), *offsets(ROUTED[1], 0, 2)]]
    assert h.acked() == [0, 1, 2, 3, 4] and h.acked(ROUTED[1]) == [0, 1, 2]
    assert h.consumer._read_offset[P0] == 4 and h.consumer._read_offset[O0] == 2


def test_batches_keep_to_the_message_and_byte_limits():
    h = Harness(BatchLimits(messages=4, size=1000, within=0.0))
    run(h.fetch(Script({P0: [record(ROUTED[0], o, size=300) for o in range(7)]})))
    # three 300-byte messages fit in 1000 bytes, the fourth would not
    assert [len(b) for b in h.handled] == [3, 3, 1]
    h = Harness(BatchLimits(messages=4, size=10**6, within=0.0))
    run(h.fetch(Script({P0: [record(ROUTED[0], o) for o in range(10)]})))
    assert [len(b) for b in h.handled] == [4, 4, 2]
    assert h.acked() == list(range(10))


def test_a_small_fetch_waits_within_the_limit_for_more():
    h = Harness(BatchLimits(messages=100, size=10**6, within=0.2))
    script = Script({P0: [record(ROUTED[0], 0)]}, {P1: [record(ROUTED[0], 0, partition=1)]},
                    {P0: [record(ROUTED[0], 1)]})
    run(h.fetch(script))
    assert h.handled == [[(ROUTED[0], 0), (ROUTED[0], 0), (ROUTED[0], 1)]]  # one batch
    # the first fetch waits as long as faust's loop asks, the later ones no longer than
    # what is left of the batch's wait
    assert script.waits[0] == 1.0 and all(0 < w <= 0.2 + 1e-6 for w in script.waits[1:])


def test_a_full_fetch_does_not_wait():
    h = Harness(BatchLimits(messages=3, size=10**6, within=60.0))
    script = Script({P0: [record(ROUTED[0], o) for o in range(3)]})
    run(h.fetch(script))
    assert len(script.waits) == 1 and h.handled == [list(offsets(ROUTED[0], 0, 2))]


def test_other_topics_take_fausts_per_record_path():
    h = Harness()
    other = TP(OTHER, 0)
    yielded = run(h.fetch(Script({other: [record(OTHER, 0), record(OTHER, 1)],
                                  P0: [record(ROUTED[0], 0)]})))
    assert yielded == [(OTHER, 0), (OTHER, 1)]
    assert h.handled == [[(ROUTED[0], 0)]]


def test_a_failed_batch_stays_unacknowledged_and_stops_the_delivery():
    h = Harness(BatchLimits(messages=2, size=10**6, within=0.0))
    h.fail_on = 1
    with pytest.raises(RuntimeError, match="never took"):
        run(h.fetch(Script({P0: [record(ROUTED[0], o) for o in range(6)]})))
    assert len(h.handled) == 2  # the third batch was never handed over
    assert h.acked() == [0, 1]  # the failed batch (2, 3) and what follows: never committed


def test_a_cancelled_batch_stays_unacknowledged():
    h = Harness()

    async def go() -> None:
        await h.app.topics._update_indices()
        started = asyncio.Event()

        async def slow(messages: list[Message]) -> None:
            started.set()
            await asyncio.sleep(60)

        h.app.batch_routes = dict.fromkeys(ROUTED, slow)
        h.consumer._wait_next_records = Script(  # type: ignore[method-assign]
            {P0: [record(ROUTED[0], 0)]})
        task = asyncio.ensure_future(anext(h.consumer.getmany(1.0), None))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go())
    assert h.acked() == []


class Settling(Harness):
    """A handler that returns what each batch still waits for (its state records in
    flight), and a log of the order of handling, settling and acknowledging."""

    def __init__(self, limits: BatchLimits, fail_settle: int | None = None) -> None:
        super().__init__(limits)
        self.log: list[str] = []
        self.fail_settle = fail_settle

    async def handle(self, messages: list[Message]) -> Any:
        call = len(self.handled)
        await super().handle(messages)
        first = messages[0].offset
        self.log.append(f"handle {first} (acked so far: {self.acked()})")

        async def settle() -> None:
            await asyncio.sleep(0)
            self.log.append(f"settle {first} (acked so far: {self.acked()})")
            if call == self.fail_settle:
                raise RuntimeError("the broker never took the state")
        return settle


def test_a_batch_that_waits_for_its_records_is_acknowledged_after_the_next_is_handled():
    """The next batch's work overlaps the round trip of the one before; each batch is
    acknowledged only once what it waited for is done, and the last one of a fetch
    before the fetch is over."""
    h = Settling(BatchLimits(messages=2, size=10**6, within=0.0))
    run(h.fetch(Script({P0: [record(ROUTED[0], o) for o in range(6)]})))
    assert h.log == ["handle 0 (acked so far: [])", "handle 2 (acked so far: [])",
                     "settle 0 (acked so far: [])", "handle 4 (acked so far: [0, 1])",
                     "settle 2 (acked so far: [0, 1])", "settle 4 (acked so far: [0, 1, 2, 3])"]
    assert h.acked() == list(range(6))


class Checkpointing(Harness):
    """A handler that saves its state only at some batches (``saves_at``, by call) and
    returns ``Later`` for the others; a log of handling, checkpoints and settling."""

    def __init__(self, limits: BatchLimits, saves_at: set[int],
                 fail_checkpoint: bool = False) -> None:
        super().__init__(limits)
        self.saves_at = saves_at
        self.log: list[str] = []
        self.fail_checkpoint = fail_checkpoint
        self.later = Later(self.checkpoint)
        self.messages: list[Message] = []

    def settled(self, name: str) -> Any:
        async def settle() -> None:
            await asyncio.sleep(0)
            self.log.append(f"settle {name} (acked so far: {self.acked()})")
        return settle

    async def checkpoint(self) -> Any:
        self.log.append(f"checkpoint (acked so far: {self.acked()})")
        if self.fail_checkpoint:
            raise RuntimeError("the broker never took the checkpoint")
        return self.settled("checkpoint")

    async def handle(self, messages: list[Message]) -> Any:
        call = len(self.handled)
        await super().handle(messages)
        first = messages[0].offset
        self.log.append(f"handle {first}")
        self.messages += messages
        return self.settled(str(first)) if call in self.saves_at else self.later


def test_a_batch_saved_later_is_acknowledged_with_the_next_batch_that_saved():
    """Batches whose state is saved by a later batch's checkpoint wait for that batch's
    records; the turn's last batches, saved by none, have a checkpoint made for them."""
    h = Checkpointing(BatchLimits(messages=2, size=10**6, within=0.0), saves_at={2})
    run(h.fetch(Script({P0: [record(ROUTED[0], o) for o in range(10)]})))
    assert h.log == [
        "handle 0", "handle 2", "handle 4", "handle 6",
        "settle 4 (acked so far: [])",  # 0 and 2 waited for what 4 saved, once
        "handle 8",  # 6 is saved by nothing yet
        "checkpoint (acked so far: [0, 1, 2, 3, 4, 5])",  # the turn ends: 6 and 8 saved
        "settle checkpoint (acked so far: [0, 1, 2, 3, 4, 5])"]
    assert h.acked() == list(range(10))
    # a batch waiting for a checkpoint holds no values (only its offsets are needed)
    assert [m.offset for m in h.messages if m.value is not None] == [4, 5]


def test_batches_saved_later_stay_unacknowledged_when_their_checkpoint_fails():
    h = Checkpointing(BatchLimits(messages=2, size=10**6, within=0.0), saves_at={1},
                      fail_checkpoint=True)
    with pytest.raises(RuntimeError, match="never took the checkpoint"):
        run(h.fetch(Script({P0: [record(ROUTED[0], o) for o in range(8)]})))
    assert h.acked() == [0, 1, 2, 3]  # saved with 2; 4 and 6 were saved by no checkpoint


def test_a_rebalance_makes_the_checkpoint_of_what_was_handled():
    """A rebalance during a batch: what was handled is saved and acknowledged (the
    records not handled yet are read again from the committed offsets)."""
    h = Checkpointing(BatchLimits(messages=2, size=10**6, within=0.0), saves_at=set())

    def rebalance(call: int) -> None:
        if call == 1:
            h.app.consumer_generation_id += 1

    h.on_call = rebalance
    run(h.fetch(Script({P0: [record(ROUTED[0], o) for o in range(6)]})))
    assert h.handled == [[(ROUTED[0], 0), (ROUTED[0], 1)], [(ROUTED[0], 2), (ROUTED[0], 3)]]
    assert h.log[-2:] == ["checkpoint (acked so far: [])",
                          "settle checkpoint (acked so far: [])"]
    assert h.acked() == [0, 1, 2, 3]


def test_a_batch_whose_records_failed_stays_unacknowledged():
    h = Settling(BatchLimits(messages=2, size=10**6, within=0.0), fail_settle=1)
    with pytest.raises(RuntimeError, match="never took the state"):
        run(h.fetch(Script({P0: [record(ROUTED[0], o) for o in range(6)]})))
    assert h.acked() == [0, 1]  # (2, 3) failed: neither it nor what follows is committed


def test_a_rebalance_drops_what_was_not_handled_yet():
    h = Harness(BatchLimits(messages=2, size=10**6, within=0.0))

    def rebalance(call: int) -> None:
        h.app.consumer_generation_id += 1  # a rebalance began during the first batch

    h.on_call = rebalance
    run(h.fetch(Script({P0: [record(ROUTED[0], o) for o in range(6)]})))
    assert h.handled == [[(ROUTED[0], 0), (ROUTED[0], 1)]]
    assert h.acked() == [0, 1]  # the rest is read again from the committed offset


def test_a_fetch_made_before_a_rebalance_is_dropped():
    h = Harness()

    async def fetch(timeout: float) -> tuple[dict[TP, list[Any]], None]:
        h.app.consumer_generation_id += 1
        return {P0: [record(ROUTED[0], 0)]}, None

    h.consumer._wait_next_records = fetch  # type: ignore[method-assign]

    async def go() -> list[Any]:
        await h.app.topics._update_indices()
        return [x async for x in h.consumer.getmany(1.0)]

    assert run(go()) == [] and h.handled == [] and h.acked() == []


def test_a_stopped_flow_seeks_back_instead_of_delivering():
    h = Harness()
    seeks = []

    async def perform_seek() -> None:
        seeks.append(True)

    h.consumer.perform_seek = perform_seek  # type: ignore[method-assign]
    h.consumer.flow_active = False
    run(h.fetch(Script({P0: [record(ROUTED[0], 0)]})))
    assert h.handled == [] and seeks == [True]


def test_read_offsets_skip_what_was_read_and_gaps_are_stepped_over():
    h = Harness()
    h.consumer._read_offset[P0] = 3
    run(h.fetch(Script({P0: [record(ROUTED[0], o) for o in (2, 3, 4, 8, 9)]})))
    assert h.handled == [[(ROUTED[0], o) for o in (3, 4, 8, 9)]]
    # offsets 5..7 (transaction markers, say) are a gap the commit steps over
    assert [(i.begin, i.end) for i in h.consumer._gap[P0]] == [(5, 9)]
    assert h.consumer._new_offset(P0) > 8  # not 5: the commit moves past the gap


def test_the_fetch_long_poll_is_the_apps_not_fausts():
    """faust fixes the aiokafka consumer's ``fetch_max_wait_ms`` at 1 500 ms; the worker's
    consumer takes ``kafka.fetch_max_wait`` (see ``FetchThread``)."""
    async def go() -> int:
        h = Harness()
        h.app.fetch_max_wait = 0.25
        consumer = h.consumer._new_consumer_thread()._create_worker_consumer(h.app.transport)
        try:
            return int(consumer._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    assert run(go()) == 250
    # ... which aiokafka hands its fetcher when the consumer starts
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(
        AIOKafkaConsumer.start)


def unstarted_client(loop: asyncio.AbstractEventLoop, *tps: TP) -> AIOKafkaConsumer:
    """An aiokafka consumer assigned ``tps``, never started (no broker), made in ``loop``
    (the consumer thread's): in place of the consumer thread's client."""
    async def make() -> AIOKafkaConsumer:
        c = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
        c.assign([TopicPartition(*tp) for tp in tps])
        return c
    return loop.run_until_complete(make())


def test_paused_partitions_are_paused_in_the_client_too():
    """faust pauses partitions in its own bookkeeping (a table's changelog partitions once
    recovered); the aiokafka client, left to itself, still fetched them, and records it
    fetched and no one took held every partition's next fetch back (``prefetch_backoff``).
    The client now pauses exactly what faust holds paused, in the consumer thread's loop."""
    h = Harness()
    thread = h.consumer._thread
    loop = thread.thread_loop
    log, stream = TP(OTHER, 0), TP(ROUTED[0], 0)

    def in_thread() -> set[tuple[str, int]]:  # what the thread's loop was told, done
        loop.run_until_complete(asyncio.sleep(0))
        return {(tp.topic, tp.partition) for tp in thread._consumer.paused()}

    try:
        h.consumer.pause_partitions({log})  # no client yet (not started): nothing to do
        loop.run_until_complete(asyncio.sleep(0))
        thread._consumer = unstarted_client(loop, log, stream)
        h.consumer.pause_partitions({log})
        assert in_thread() == {log}
        h.consumer.pause_partitions({stream, TP("gone", 3)})  # not assigned: left alone
        assert in_thread() == {log, stream}
        h.consumer.resume_partitions({stream})
        assert in_thread() == {log}
        assert h.consumer._get_active_partitions() == {stream}  # faust's view, as ever
        h.consumer.resume_partitions({log})
        assert in_thread() == set()
    finally:
        if thread._consumer is not None:
            loop.run_until_complete(thread._consumer.stop())
        loop.close()
    h.consumer.pause_partitions({log})  # the thread's loop closed (stopped): no error


def test_partitions_paused_in_the_client_are_not_expected_to_be_fetched(caplog):
    """faust's periodic check that the client fetches every assigned partition leaves
    out those paused in the client: an error for each paused changelog partition every
    few seconds, from the worker's fifth minute, otherwise."""
    h = Harness()
    thread = h.consumer._thread
    loop = thread.thread_loop
    log, stream = TP(OTHER, 0), TP(ROUTED[0], 0)

    thread._consumer = unstarted_client(loop, log, stream)
    # what faust's check reads of a started client's fetcher: the subscription state
    thread._consumer._fetcher = SimpleNamespace(_subscriptions=thread._consumer._subscription)
    try:
        h.consumer.pause_partitions({log})
        loop.run_until_complete(asyncio.sleep(0))
        thread.time_started = time.monotonic() - 3600  # an hour, never a fetch
        with caplog.at_level("ERROR"):
            thread.verify_event_path(time.monotonic(), log)
            assert caplog.records == []
            thread.verify_event_path(time.monotonic(), stream)  # not paused: checked
            assert "has not sent fetch request" in caplog.text
    finally:
        thread._consumer._fetcher = None
        loop.run_until_complete(thread._consumer.stop())
        loop.close()


def test_handled_partitions_count_as_processing_for_fausts_stall_check():
    """faust logs an error for a partition with unread records and no stream event in
    (its streams note one per event; the batch path notes one per batch): without the
    note, a worker at steady load logged "has not started processing" every minute."""
    h = Harness()
    monitor = h.app.monitor
    before = time.monotonic()
    run(h.fetch(Script({P0: [record(ROUTED[0], 0)], O0: [record(ROUTED[1], 0)]})))
    assert set(monitor.stream_inbound_time) == {P0, O0}
    assert all(before <= t <= time.monotonic() for t in monitor.stream_inbound_time.values())


def _preparing(h: Harness) -> list[list[list[tuple[str, int]]]]:
    """Record what ``batch_prepare`` is told (it starts work on all); every partition
    active."""
    told: list[list[list[tuple[str, int]]]] = []

    def prepare(batches: list[Any]) -> bool:
        told.append([[(m.topic, m.offset) for m in b] for b in batches])
        return True

    h.app.batch_prepare = prepare
    h.consumer._get_active_partitions = lambda: {P0, P1, O0}  # type: ignore[method-assign]
    return told


def _told_when(h: Harness) -> list[int]:
    """How many batches were handled each time ``batch_prepare`` was told."""
    when: list[int] = []
    tell = h.app.batch_prepare
    assert tell is not None

    def prepare(batches: list[Any]) -> bool:
        when.append(len(h.handled))
        return tell(batches)

    h.app.batch_prepare = prepare
    return when


def test_prepared_batches_and_what_was_fetched_meanwhile_in_the_same_turn():
    """With a decode pool, a turn's batches are told to it before the first is handled;
    once fewer than READ_AHEAD of them wait, what was fetched meanwhile is fetched
    (without waiting) before each batch, told, and handled after the turn's batches, in
    the same turn: the pool is never idle behind the handler, not even in the middle of
    a long turn."""
    h = Harness(BatchLimits(messages=4, size=10**6, within=0.0))
    told = _preparing(h)
    handled_when_told = _told_when(h)
    script = Script({P0: [record(ROUTED[0], o) for o in range(10)]},
                    {P0: [record(ROUTED[0], o) for o in range(10, 13)]})
    assert run(h.fetch(script)) == []
    assert [len(b) for b in h.handled] == [4, 4, 2, 3]
    assert told == [h.handled[:3], h.handled[3:]]
    assert handled_when_told == [0, 0]  # fetched meanwhile: told before the first batch
    # the turn's fetch, then one before each of its four batches, none waiting
    assert script.waits == [1.0, 0, 0, 0, 0]
    assert h.acked() == list(range(13))


def test_what_was_fetched_meanwhile_is_taken_only_when_few_batches_wait():
    """The read-ahead is bounded: what was fetched meanwhile joins the turn only once
    fewer than READ_AHEAD of its batches wait (else a backlog is read ahead into memory
    as fast as the broker gives it)."""
    assert READ_AHEAD == 3
    h = Harness(BatchLimits(messages=1, size=10**6, within=0.0))
    _preparing(h)
    handled_when_told = _told_when(h)
    script = Script({P0: [record(ROUTED[0], o) for o in range(6)]},
                    {P0: [record(ROUTED[0], o) for o in range(6, 8)]})
    assert run(h.fetch(script)) == []
    assert len(h.handled) == 8
    assert handled_when_told == [0, 3]  # six batches: taken before the fourth
    assert h.acked() == list(range(8))


def test_batches_no_one_works_on_ahead_take_what_was_fetched_meanwhile_at_the_end():
    """When batch_prepare started nothing on a turn's batches (messages too small for the
    decode pool), what was fetched meanwhile is taken before the turn's last batch only:
    read ahead, it would only wait in memory."""
    h = Harness(BatchLimits(messages=1, size=10**6, within=0.0))
    _preparing(h)
    when: list[int] = []

    def prepare(batches: list[Any]) -> bool:
        when.append(len(h.handled))
        return False

    h.app.batch_prepare = prepare
    script = Script({P0: [record(ROUTED[0], o) for o in range(6)]},
                    {P0: [record(ROUTED[0], o) for o in range(6, 8)]})
    assert run(h.fetch(script)) == []
    assert when == [0, 5]  # six batches: taken before the sixth
    assert h.acked() == list(range(8))


def test_without_a_pool_a_turn_is_its_fetch():
    h = Harness(BatchLimits(messages=4, size=10**6, within=0.0))
    script = Script({P0: [record(ROUTED[0], o) for o in range(10)]},
                    {P0: [record(ROUTED[0], o) for o in range(10, 13)]})
    run(h.fetch(script))
    assert [len(b) for b in h.handled] == [4, 4, 2] and script.waits == [1.0]


def test_other_topics_fetched_meanwhile_end_the_turn_on_fausts_path():
    h = Harness(BatchLimits(messages=4, size=10**6, within=0.0))
    _preparing(h)
    other = TP(OTHER, 0)
    script = Script({P0: [record(ROUTED[0], o) for o in range(2)]},
                    {P0: [record(ROUTED[0], 2)], other: [record(OTHER, 0)]},
                    {P0: [record(ROUTED[0], 3)]})
    assert run(h.fetch(script)) == [(OTHER, 0)]
    assert h.handled == [[(ROUTED[0], 0), (ROUTED[0], 1)], [(ROUTED[0], 2)]]
    assert script.waits == [1.0, 0]  # the other topic's record ended the turn


def test_what_was_fetched_meanwhile_before_a_rebalance_is_dropped():
    h = Harness(BatchLimits(messages=4, size=10**6, within=0.0))
    told = _preparing(h)

    async def fetch(timeout: float) -> tuple[dict[TP, list[Any]], None]:
        if timeout == 0:
            h.app.consumer_generation_id += 1  # a rebalance began meanwhile
            return {P0: [record(ROUTED[0], 2)]}, None
        return {P0: [record(ROUTED[0], o) for o in range(2)]}, None

    h.consumer._wait_next_records = fetch  # type: ignore[method-assign]

    async def go() -> list[Any]:
        await h.app.topics._update_indices()
        return [x async for x in h.consumer.getmany(1.0)]

    run(go())
    assert h.handled == [[(ROUTED[0], 0), (ROUTED[0], 1)]] and len(told) == 1
    assert h.acked() == [0, 1]  # offset 2 is read again from the committed offsets
