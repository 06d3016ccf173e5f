"""The decode pool's rings of shared memory (``app.events.decode_pool.Ring``): message
bodies go through them, only the frames' heads through the socket; a body that does not
fit goes through the socket as before; answers the worker never reads free their room."""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import socket
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from app.events import decode_pool
from app.events.block import EventBlock
from app.events.decode_pool import NO_RING, Channel, DecodePool, Ring, Slot

LIMITS = {"max_bytes": 1 << 24, "max_elements": 100_000}
T0 = 1_700_000_000_000


def prediction(i: int) -> dict[str, Any]:
    return {"prediction_id": f"p{i}", "model": "m", "model_version": "v1",
            "timestamp": T0 + i, "features": {"x": i * 0.5, "c": f"v{i % 7}"},
            "prediction": i % 2 == 0}


def values(messages: int, events: int = 200) -> dict[tuple[str, int, int], bytes]:
    return {("predictions", 0, k): orjson.dumps([prediction(events * k + i)
                                                 for i in range(events)])
            for k in range(messages)}


def test_a_ring_puts_bodies_in_order_where_the_reader_released_it() -> None:
    ring = Ring(mmap.mmap(-1, 100))
    assert ring.put(b"a" * 40) == 0 and ring.put(b"b" * 40) == 40
    assert ring.put(b"c" * 30) == NO_RING  # would overwrite what is not read yet
    ring.released = 40  # the reader is done with the first
    # it would wrap: it starts at the ring's start, the last 20 bytes left unused
    assert ring.put(b"c" * 30) == 100 and bytes(ring.view(100, 30)) == b"c" * 30
    assert bytes(ring.view(40, 40)) == b"b" * 40  # untouched
    assert ring.put(b"d" * 11) == NO_RING  # 130 + 11 - 40 > 100
    ring.released = 80
    assert ring.put(b"d" * 50) == 130 and ring.head == 180
    assert ring.put(b"e" * 101) == NO_RING and ring.put(b"") == NO_RING
    ring.released = 180
    assert ring.put(b"e" * 100) == NO_RING  # the unused end counts until read past
    assert ring.put(b"e" * 20) == 180
    ring.released = 200
    assert ring.put(b"f" * 100) == 200  # a whole cycle: from the start again
    assert bytes(ring.view(200, 100)) == b"f" * 100
    ring.close()


def test_answers_leave_the_ring_in_order_once_each_before_them_is_read() -> None:
    ours, theirs = socket.socketpair()
    try:
        channel = Channel(None, ours, lambda exc: None, Ring(mmap.mmap(-1, 100)),
                          Ring(mmap.mmap(-1, 100)))
        slots = [Slot(channel, start, start + 10) for start in (0, 10, 20)]
        channel.slots.extend(slots)
        slots[1].release()
        assert channel.answers_read == 0  # the first is not read yet
        slots[0].release()
        assert channel.answers_read == 20
        slots[0].release()  # (again: nothing)
        slots[2].release()
        assert channel.answers_read == 30 and not channel.slots
    finally:
        ours.close()
        theirs.close()


@contextlib.contextmanager
def ringed_pool(size: int) -> Iterator[tuple[DecodePool, Ring]]:
    """A pool whose one decode "process" is ``serve`` in a thread, with rings of ``size``
    bytes (anonymous shared memory, each side's ``Ring`` over it); and the answers'
    ring as the decode side writes it."""
    ours, theirs = socket.socketpair()
    requests, answers = mmap.mmap(-1, size), mmap.mmap(-1, size)
    written = Ring(answers)
    server = threading.Thread(target=decode_pool.serve, args=(
        theirs, *LIMITS.values(), Ring(requests), written))
    server.start()
    pool = DecodePool(1, **LIMITS, min_bytes=0)
    pool._channels = [Channel(None, ours, pool._break, Ring(requests), Ring(answers))]
    try:
        yield pool, written
    finally:
        pool.close()
        server.join(10)
        theirs.close()
    assert not server.is_alive()


@pytest.mark.parametrize("size", [4 << 10, 64 << 10, 16 << 20])
def test_every_message_decodes_through_rings_too_small_or_large_enough(size: int) -> None:
    """Rings smaller than one message (everything through the socket), holding a few
    (bodies through either, the rings wrapping), holding them all: each decode is its
    own message's, and once every answer is read the answers' ring is free."""
    vals = values(60)
    counted = {"ring": 0}

    async def go(pool: DecodePool, written: Ring) -> None:
        (channel,) = pool._channels
        assert channel.requests is not None and channel.answers is not None
        for chunk in (list(vals.items())[:30], list(vals.items())[30:]):
            pool.submit((key, value, "prediction") for key, value in chunk)
            await asyncio.wait_for(pool.wait(dict(chunk)), 60)
            counted["ring"] += sum(isinstance(pool._futures[k].result()[1], Slot)
                                   for k, _ in chunk)
            for key, value in chunk:
                got = pool.decoded(key, value, "prediction")
                assert got is not None and type(got.events) is EventBlock
                assert got.events.column("prediction_id") == [
                    e["prediction_id"] for e in orjson.loads(value)]
        assert not channel.slots and channel.answers_read == written.head
        assert channel.requests.released == channel.requests.head  # all read there too
        assert pool.used == len(vals) and not pool.broken

    with ringed_pool(size) as (pool, written):
        asyncio.run(go(pool, written))
    largest = max(map(len, vals.values()))
    if size < largest // 2:
        assert counted["ring"] == 0  # (an answer is about half its message)
    else:
        assert 0 < counted["ring"] <= len(vals)
        if size > largest * len(vals):
            assert counted["ring"] == len(vals)


def test_answers_no_one_reads_free_their_room() -> None:
    """Decodes dropped (revoked partitions: forget), read again (submitted anew) or not
    ready when asked for: their answers leave the ring, now or when they come."""
    vals = values(12)
    keys = list(vals)

    async def go(pool: DecodePool, written: Ring) -> None:
        (channel,) = pool._channels
        pool.submit((key, vals[key], "prediction") for key in keys[:4])
        await asyncio.wait_for(pool.wait(keys[:4]), 60)
        pool.submit([(keys[0], vals[keys[0]], "prediction")])  # read again
        assert pool.decoded(keys[1], vals[keys[1]], "prediction") is not None
        pool.forget()  # the rest are dropped
        assert not channel.slots and channel.answers_read == written.head > 0
        # asked for before it came: the caller decodes it, its answer is dropped
        pool.submit((key, vals[key], "prediction") for key in keys[4:])
        assert pool.decoded(keys[4], vals[keys[4]], "prediction") is None
        await asyncio.wait_for(pool.wait(keys[5:]), 60)
        for key in keys[5:]:
            assert pool.decoded(key, vals[key], "prediction") is not None
        await asyncio.sleep(0.2)  # (the dropped one's answer has come by now)
        assert not channel.waiting
        assert not channel.slots and channel.answers_read == written.head

    with ringed_pool(1 << 20) as (pool, written):
        asyncio.run(go(pool, written))


def test_a_decode_process_gets_its_rings_where_the_platform_has_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real decode process: its rings are shared with it at its start (their
    descriptors on its socket), and bodies go through them; without anonymous shared
    files (``os.memfd_create``), everything goes through the socket, as before."""
    vals = values(8)

    async def go(pool: DecodePool, rings: bool) -> None:
        pool.submit((key, value, "prediction") for key, value in vals.items())
        await asyncio.wait_for(pool.wait(vals), 60)
        (channel,) = pool._channels
        answers = [pool._futures[key].result()[1] for key in vals]
        assert all(isinstance(a, Slot) for a in answers) is rings
        assert (channel.requests is not None) is rings
        if rings:
            assert channel.requests is not None and channel.requests.head > 0
        for key, value in vals.items():
            assert pool.decoded(key, value, "prediction") is not None
        assert not pool.broken

    pool = DecodePool(1, **LIMITS, min_bytes=0)
    try:
        asyncio.run(go(pool, hasattr(decode_pool.os, "memfd_create")))
    finally:
        pool.close()
    monkeypatch.delattr(decode_pool.os, "memfd_create", raising=False)
    pool = DecodePool(1, **LIMITS, min_bytes=0)
    try:
        asyncio.run(go(pool, False))
    finally:
        pool.close()
