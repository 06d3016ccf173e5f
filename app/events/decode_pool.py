"""Array messages decoded on other cores, into columns (:mod:`app.events.block`).

A worker's batch path is one Python thread; decoding array messages into dicts and
reading those back into columns is a third of its work. With ``worker.decode_processes``
(opt-in; 0 by default) that part runs in separate processes, while the worker's thread
monitors the batches before:

1. When a fetch's batches are formed, :meth:`DecodePool.submit` hands every prediction
   and outcome message of at least ``MIN_BYTES`` to the pool (smaller ones cost more to
   send than to decode). Before a turn's last batch is handled, what was fetched
   meanwhile is handed over too (``BatchConsumer``), so the pool works ahead.
2. :meth:`DecodePool.decoded` gives a message's :class:`~app.events.decode.Decoded`:
   its events as an :class:`~app.events.block.EventBlock`, or ``None``, and the worker
   decodes the message itself, as without a pool. ``None`` comes for a message with a
   rejected element (its dead letters are the worker's to write, exactly as ever), one
   whose events are not alike (several models, segment tags, differing feature names),
   one the pool failed on, and everything once the pool broke (a decode process died:
   logged once, then the worker decodes alone).

The pool only ever changes where the work runs: what the worker does with a message is
the same, decoded here or there (``tests/unit/events/test_block.py`` runs both on the
same messages). It pays where the worker has a core to spare: the worker's thread then
spends about a third less per event, for about a third more CPU in all (the columns
cross a pipe). On the 2-core benchmark machine, which also runs the broker, one worker
read 38.5 to 45.2 % of the raw-consumer ceiling with it and 31.6 to 38.0 % without
(``load-tests/README.md``); as the extra CPU is only worth it with a spare core, it is
opt-in.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import signal
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from app.events.block import EventBlock, block_of
from app.events.checks import SPECS
from app.events.decode import Decoded, decode_message
from app.events.fields import share_strings

log = logging.getLogger("driftwarden")

#: Smaller message values are decoded by the worker itself.
MIN_BYTES = 16 * 1024
#: The kinds whose messages the pool decodes.
KINDS = frozenset({"prediction", "outcome"})
#: Decodes waiting to be asked for beyond which something is amiss (never in order).
MAX_WAITING = 100_000

Key = tuple[str, int, int]  # topic, partition, offset


def decode_payload(value: bytes, kind: str, max_bytes: int, max_elements: int
                   ) -> bytes | None:
    """In a decode process: a message's events as an event block's payload, pickled, or
    ``None`` (a rejection, or events not alike: the worker decodes such a message itself).

    Pickled here, unpickled by the worker's thread when it takes the message: the pool's
    result thread then only moves bytes. Unpickling thousands of objects there took the
    interpreter's lock from the worker's thread in many short turns, each costing the
    result thread up to a switch interval's wait, and the results lagged behind."""
    decoded = decode_message(value, SPECS[kind], max_bytes=max_bytes,
                             max_elements=max_elements)
    if decoded.rejections:
        return None
    block = block_of(decoded.events, kind)
    if block is None:
        return None
    payload = block.to_payload()
    payload["array"] = decoded.positions is not None
    _share_strings(payload)
    return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)


_UNIQUE = frozenset({"prediction_id", "timestamp"})  # fields whose strings seldom repeat


def _share_strings(payload: dict[str, Any]) -> None:
    """Equal strings of the payload's columns (versions, classes, category values) as
    one object each, which pickle then writes once: the worker unpickles a handful of
    strings instead of one per event and value. Ids and times are left alone: they
    seldom repeat."""
    pool: dict[str, str] = {}
    for cols in (payload["fields"], payload["raw"]):
        for name, col in cols.items():
            if name not in _UNIQUE:
                cols[name] = share_strings(col, pool)


def from_payload(payload: dict[str, Any], value: bytes, kind: str, max_bytes: int,
                 max_elements: int) -> Decoded:
    """The worker's side of :func:`decode_payload`: the message's ``Decoded``, its events
    an event block that decodes ``value`` again should anything ask for the dicts."""
    spec = SPECS[kind]

    def load() -> list[dict[str, Any]]:
        return decode_message(value, spec, max_bytes=max_bytes,
                              max_elements=max_elements).events

    block = EventBlock.from_payload(payload, load)
    return Decoded(block, [], list(range(block.n)) if payload["array"] else None)  # type: ignore[arg-type]


def _child_init() -> None:
    # The worker stops its decode processes; a terminal's Ctrl-C is the worker's to handle
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class DecodePool:
    """Decode processes and the messages they are decoding (see the module)."""

    def __init__(self, processes: int, *, max_bytes: int, max_elements: int,
                 min_bytes: int = MIN_BYTES) -> None:
        self.processes = processes
        self.max_bytes, self.max_elements, self.min_bytes = max_bytes, max_elements, min_bytes
        self._executor: ProcessPoolExecutor | None = None
        self._futures: dict[Key, Future[bytes | None]] = {}
        self.broken = processes < 1
        self.submitted = self.used = 0  # messages handed to the pool, and decoded by it

    def start(self) -> None:
        """Start the decode processes now (the worker's start), not when the first large
        message comes: spawning one takes a few hundred milliseconds."""
        if self.broken:
            return
        try:
            self._start().submit(int)
        except Exception as exc:
            self._break(exc)

    def _start(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawned, not forked: the worker runs threads (the consumer's, the metrics
            # server's) that a fork would copy mid-flight
            self._executor = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=_child_init)
        return self._executor

    def submit(self, messages: Iterable[tuple[Key, bytes | None, str]]) -> None:
        """Start decoding these messages (``(key, value, kind)``); a message submitted
        again (read again after a rebalance) replaces its earlier decode."""
        if self.broken:
            return
        if len(self._futures) > MAX_WAITING:  # never asked for: (defensive) start afresh
            self.forget()
        try:
            executor = self._start()
            for key, value, kind in messages:
                if kind in KINDS and value is not None and self.min_bytes <= len(value) \
                        <= self.max_bytes:
                    self._futures[key] = executor.submit(
                        decode_payload, value, kind, self.max_bytes, self.max_elements)
                    self.submitted += 1
        except Exception as exc:  # (BrokenProcessPool, RuntimeError after shutdown...)
            self._break(exc)

    async def wait(self, keys: Iterable[Key]) -> None:
        """Until the messages of ``keys`` that the pool decodes are decoded."""
        pending = [asyncio.wrap_future(f) for k in keys
                   if (f := self._futures.get(k)) is not None and not f.done()]
        if pending:
            await asyncio.wait(pending)

    def decoded(self, key: Key, value: bytes, kind: str) -> Decoded | None:
        """The message's ``Decoded`` from the pool, or ``None``: the caller decodes it."""
        future = self._futures.pop(key, None)
        if future is None or not future.done() or future.cancelled():
            return None
        try:
            payload = future.result()
        except BrokenProcessPool as exc:
            self._break(exc)
            return None
        except Exception as exc:  # one message the pool failed on: decoded here
            log.warning("the decode pool failed on a message, decoded in the worker: %r", exc)
            return None
        if payload is None:
            return None
        self.used += 1
        # (bytes this worker's own decode process pickled: never anything from outside)
        return from_payload(pickle.loads(payload), value, kind, self.max_bytes,
                            self.max_elements)

    def forget(self) -> None:
        """Drop every decode not asked for yet (partitions were revoked: the messages of
        those that come back are fetched, and submitted, again)."""
        for future in self._futures.values():
            future.cancel()
        self._futures = {}

    def _break(self, exc: BaseException) -> None:
        if not self.broken:
            log.error("the decode pool broke (%r): this worker decodes its messages itself",
                      exc)
        self.broken = True
        self.close()

    def close(self) -> None:
        self.forget()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
