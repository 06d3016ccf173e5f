"""Array messages decoded on other cores, into columns (:mod:`app.events.block`).

A worker's batch path is one Python thread; decoding array messages into dicts and
reading those back into columns is a third of its work. With ``worker.decode_processes``
(by default one process where the worker may run on two CPUs or more) that part runs in
separate processes, while the worker's thread monitors the batches before:

1. When a fetch's batches are formed, :meth:`DecodePool.submit` hands every prediction
   and outcome message of at least ``MIN_BYTES`` to the pool (smaller ones cost more to
   send than to decode). Once fewer than ``READ_AHEAD`` (3) of a turn's batches wait,
   what was fetched meanwhile is handed over too, before each batch
   (``app.batch_consumer``), so the pool works ahead. (Handed over only before a turn's
   last batch, the pool ran dry in the middle of long turns and the batch path then
   waited for it: 0.12-0.16 s of a 2.2 s backlog, against 0.01-0.04 s.)
2. :meth:`DecodePool.decoded` gives a message's :class:`~app.events.decode.Decoded`:
   its events as an :class:`~app.events.block.EventBlock`, or ``None``, and the worker
   decodes the message itself, as without a pool. ``None`` comes for a message with a
   rejected element (its dead letters are the worker's to write, exactly as ever), one
   whose events are not alike (several models, segment tags, differing feature names),
   one the pool failed on, and everything once the pool broke (a decode process died:
   logged once, then the worker decodes alone).
3. :meth:`DecodePool.configure` tells the decode processes how each model version's
   window slices are binned (:mod:`app.core.partials`); they then send the counts of a
   message's numeric window sketches per (window, version), which the slices add
   instead of counting the values (0.17 s of the worker's thread per 300 000 events
   instead of 0.31). Sent on the same sockets as the messages, as a request of its own
   (``CONFIG``), answered like the others.

Each decode process has a socket of its own, which the worker's event loop writes
and reads (:class:`Channel`): requests and answers are framed bytes, answered in order,
so a queue of futures is all the bookkeeping. No thread of the worker's takes part.
The frames' bodies (a message's value one way, its pickled payload the other) go
through two rings of shared memory (:class:`Ring`, on Linux), the socket carrying only
their heads: bodies waiting in the socket's buffers, which the kernel caps, held each
side up to the other's next turn. A
``ProcessPoolExecutor`` did this before, with two threads of its own (one pickling the
calls into a pipe, one reading the results back): every turn they took on the
interpreter's lock was a turn the worker's thread waited, about a tenth of its time on
the benchmark, and results lagged behind it.

The pool only ever changes where the work runs: what the worker does with a message is
the same, decoded here or there (``tests/unit/events/test_block.py`` runs both on the
same messages). The worker's thread then spends about a third less per event, the
columns being computed in the decode process, for about the same CPU in all. It pays
where the worker has a core to spare: on the 2-core benchmark machine, which also runs
the broker, one worker reads about half of the raw-consumer ceiling with a decode
process (``load-tests/README.md``) and read 28 to 34 % without when last measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import multiprocessing
import os
import pickle
import signal
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from app.core.partials import Binning, Counted, Counts, WindowKey, message_counts
from app.events.block import EventBlock, block_of
from app.events.checks import SPECS
from app.events.columnar import Columnar
from app.events.decode import Decoded, decode_message
from app.events.fields import share_strings
from app.runtime import tune_gc, tune_malloc

log = logging.getLogger("driftwarden")

#: Smaller message values are decoded by the worker itself.
MIN_BYTES = 16 * 1024
#: The kinds whose messages the pool decodes.
KINDS = frozenset({"prediction", "outcome"})
#: Decodes waiting to be asked for beyond which something is amiss (never in order).
MAX_WAITING = 100_000
#: Seconds the batch path waits for its messages' decodes: a decode process that
#: answers nothing for that long is taken for hung, and the pool breaks.
WAIT_TIMEOUT = 30.0
#: How much lower a decode process's scheduling priority is than its worker's (added to
#: its nice value). Where every core is busy, the worker's thread, which sets the pace,
#: then runs first, and the decode processes, which have time to spare and work ahead of
#: it, take what is left: on the 2-core benchmark machine (the broker on it too), the
#: worker's thread waited 0.27-0.30 s for a core instead of 0.38-0.41 per 300 000 events.
#: Where cores are idle it changes nothing.
NICENESS = 5

Key = tuple[str, int, int]  # topic, partition, offset
#: This process's struct decoders (a decode process's: see decode_payload).
COLUMNAR = Columnar()
#: How a worker tells its decode processes to count (DecodePool.configure): model ->
#: (its windows' hop in ms, version (None: any other) -> (token, binning)).
Binnings = dict[str, tuple[int, dict[str | None, tuple[int, Binning]]]]
#: What a decode process counts messages' numeric values with, read off the last
#: Binnings once: model -> (hop in ms, version -> binning, id(binning) -> token).
BINNINGS: dict[str, tuple[int, dict[str | None, Binning], dict[int, int]]] = {}


def decode_payload(value: bytes, kind: str, max_bytes: int, max_elements: int
                   ) -> bytes | None:
    """In a decode process: a message's events as an event block's payload, pickled, or
    ``None`` (a rejection, or events not alike: the worker decodes such a message itself).

    An array whose feature names were seen before is decoded straight into columns
    (:mod:`app.events.columnar`); any other message through dicts, as the worker would,
    and a block made that way teaches its feature names.

    Pickled here, unpickled by the worker's thread when it takes the message: the pool's
    result thread then only moves bytes. Unpickling thousands of objects there took the
    interpreter's lock from the worker's thread in many short turns, each costing the
    result thread up to a switch interval's wait, and the results lagged behind."""
    block = None if len(value) > max_bytes else COLUMNAR.block(value, kind, max_elements)
    array = True
    if block is None:
        decoded = decode_message(value, SPECS[kind], max_bytes=max_bytes,
                                 max_elements=max_elements)
        if decoded.rejections:
            return None
        block = block_of(decoded.events, kind, buckets=True)
        if kind == "prediction" and decoded.positions is not None and decoded.events:
            names = tuple(decoded.events[0]["features"])
            if block is not None:
                COLUMNAR.learn(names)
            else:  # tried in vain, maybe to the last element: not again
                COLUMNAR.forget(names)
        if block is None:
            return None
        array = decoded.positions is not None
    payload = block.to_payload()
    payload["array"] = array
    if kind == "prediction":
        counts = _counts(block)
        if counts is not None:  # (the buckets were for counting: done)
            payload["counts"], payload["buckets"] = counts, None
    _share_strings(payload)
    return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)


def _counts(block: EventBlock) -> dict[WindowKey, tuple[int, Counts]] | None:
    """The block's numeric counts per (newest window start, version), each with its
    binning's token, when this process knows how its model's versions are binned."""
    config = BINNINGS.get(block.model)
    if config is None:
        return None
    hop_ms, binnings, tokens = config
    counts = message_counts(block, hop_ms, binnings)
    if counts is None:
        return None
    return {key: (tokens[id(c.binning)], c.counts) for key, c in counts.items()}


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


OK, NOT_MINE, FAILED = 0, 1, 2  # statuses: a payload; the worker's to decode; an error
#: Every frame's head: its body's length, a code (the kind, or the status), where the
#: body starts in the sender's ring (``NO_RING``: it follows the head on the socket), and
#: how far the sender has read the other way's ring (see ``Ring``).
_HEAD = struct.Struct("!IBQQ")
NO_RING = (1 << 64) - 1
_SIZES = struct.Struct("!Q")  # the rings' size, sent with their descriptors (0: none)
#: Bytes of each of a decode process's two rings (requests one way, answers the other).
RING_BYTES = 8 << 20
CONFIG = "binnings"  # a request that is no message: what to count with (BINNINGS)
_KIND_CODES = {kind: code for code, kind in enumerate(sorted(KINDS | {CONFIG}))}
_KIND_NAMES = {code: kind for kind, code in _KIND_CODES.items()}
#: Configurations whose binnings' tokens are still known (counts made with an older
#: one, if any were still in flight, are made again from the events).
_CONFIGS_KEPT = 3
_SOCKET_BUFFER = 4 << 20  # bytes each side of a decode process's socket may hold
_IOV_MAX = 64  # buffers per ``sendmsg``


class Ring:
    """Shared memory that one side of a decode process's socket writes message bodies
    into and the other side reads them from, in the order they were written, cycling.

    The socket then carries only the heads. Through the socket alone, a body waits in
    the socket's buffers, which the kernel caps (``net.core.wmem_max``: 208 KiB by
    default, about one and a half answers of an array message): the decode process
    stopped at every answer the worker's thread had not read yet, and the requests
    the worker had not written yet waited for its event loop, between two batches
    (emulated on the 2-core benchmark machine, the worker's thread then slept 0.86-1.09
    s of a 300 000-event run, against 0.45-0.51 s with the rings). A ring is written and
    read without waiting on the other side: the writer puts a body where the reader has
    released the ring (``released``, which the reader sends with each head it sends the
    other way), and sends it through the socket, as before, when it does not fit there.

    ``head`` and ``released`` are positions counted from the start, wraps included (a
    body never wraps: one that would is put at the ring's start, the end left unused).
    """

    __slots__ = ("head", "mm", "released", "size")

    def __init__(self, mm: mmap.mmap) -> None:
        self.mm, self.size = mm, len(mm)
        self.head = 0  # the writer's: where the next body goes
        self.released = 0  # the writer's: what the reader is done with

    def put(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data``; where it starts, or ``NO_RING`` when it does not fit now."""
        n, size = len(data), self.size
        at = self.head % size
        start = self.head if at + n <= size else self.head + size - at
        if not n or start + n - self.released > size:
            return NO_RING
        at = start % size
        self.mm[at:at + n] = data
        self.head = start + n
        return start

    def view(self, start: int, n: int) -> memoryview:
        """The ``n`` bytes written at ``start`` (a view: released once read)."""
        at = start % self.size
        return memoryview(self.mm)[at:at + n]

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # (a view still held: freed with it)
            self.mm.close()


def _shared_ring(size: int) -> tuple[int, Ring] | None:
    """A ring of shared memory and its descriptor, to send to a decode process; ``None``
    where the platform has no anonymous shared files (``os.memfd_create``: Linux)."""
    create = getattr(os, "memfd_create", None)
    if create is None or size <= 0:
        return None
    fd = create("driftwarden-decode", getattr(os, "MFD_CLOEXEC", 0))
    try:
        os.ftruncate(fd, size)
        return fd, Ring(mmap.mmap(fd, size))
    except OSError:
        os.close(fd)
        return None


def _send_rings(sock: socket.socket) -> tuple[Ring | None, Ring | None]:
    """A decode process's first read, sent (the socket is empty: this never blocks):
    the requests' and the answers' rings, both or none."""
    made = [_shared_ring(RING_BYTES), _shared_ring(RING_BYTES)]
    rings = [r for r in made if r is not None]
    both = len(rings) == 2
    try:
        socket.send_fds(sock, [_SIZES.pack(RING_BYTES if both else 0)],
                        [fd for fd, _ in rings] if both else [])
    finally:
        for fd, ring in rings:
            os.close(fd)
            if not both:
                ring.close()
    return (rings[0][1], rings[1][1]) if both else (None, None)


def _receive_rings(sock: socket.socket) -> tuple[Ring | None, Ring | None]:
    """A decode process's first read: the requests' and the answers' rings, if any."""
    msg, fds, _, _ = socket.recv_fds(sock, _SIZES.size, 2)
    try:
        size = _SIZES.unpack(msg)[0] if len(msg) == _SIZES.size else 0
        if len(fds) != 2 or not size:
            return None, None
        return Ring(mmap.mmap(fds[0], size)), Ring(mmap.mmap(fds[1], size))
    finally:
        for fd in fds:
            os.close(fd)


class Slot:
    """An answer that waits in the answers' ring until the worker has read it."""

    __slots__ = ("channel", "done", "end", "start")

    def __init__(self, channel: Channel, start: int, end: int) -> None:
        self.channel, self.start, self.end, self.done = channel, start, end, False

    def view(self) -> memoryview:
        assert self.channel.answers is not None
        return self.channel.answers.view(self.start, self.end - self.start)

    def release(self) -> None:
        """The worker is done with it: the ring is free up to the first answer it is not
        done with (answers are read in any order, and some never: see forget)."""
        if self.done:
            return
        self.done = True
        slots = self.channel.slots
        while slots and slots[0].done:
            self.channel.answers_read = slots.popleft().end


Result = tuple[int, "bytes | bytearray | Slot"]  # a decode process's answer: (status, body)


def _drop(future: asyncio.Future[Result]) -> None:
    """A decode no one will read: its answer leaves the ring, now or when it comes."""
    if future.done() and not future.cancelled():
        _, body = future.result()
        if isinstance(body, Slot):
            body.release()
    future.cancel()


def _read_into(sock: socket.socket, buf: bytearray) -> bool:
    """Fill ``buf`` from the (blocking) socket; ``False`` at its end."""
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = sock.recv_into(view[got:])
        if not n:
            return False
        got += n
    return True


def handle(body: bytes, kind: str, max_bytes: int, max_elements: int) -> bytes | None:
    """A decode process's answer to one request: a message's payload
    (:func:`decode_payload`), or, for a ``CONFIG`` request, nothing, its binnings now
    this process's (:meth:`DecodePool.configure`)."""
    if kind == CONFIG:  # (from this process's own worker)
        config: Binnings = pickle.loads(body)
        BINNINGS.clear()
        BINNINGS.update((model, (hop_ms, {v: b for v, (_, b) in versions.items()},
                                 {id(b): token for token, b in versions.values()}))
                        for model, (hop_ms, versions) in config.items())
        return None
    return decode_payload(body, kind, max_bytes, max_elements)


def serve(sock: socket.socket, max_bytes: int, max_elements: int,
          requests: Ring | None = None, answers: Ring | None = None) -> None:
    """A decode process: requests in, answers out, in order, until the worker closes its
    end of the socket (or dies, which closes it too).

    A request is a head (the value's length, the kind's code) and the message's value;
    an answer a head (the body's length, a status) and the body: a pickled payload
    (``OK``), nothing (``NOT_MINE``: a rejection, or events not alike) or an error's text
    (``FAILED``)."""
    head = bytearray(_HEAD.size)
    read = 0  # how far the requests' ring is read
    while _read_into(sock, head):
        n, code, start, answers_read = _HEAD.unpack(head)
        if answers is not None:
            answers.released = max(answers.released, answers_read)
        if start == NO_RING:
            body = bytearray(n)
            if not _read_into(sock, body):
                return
            value = bytes(body)
        else:
            assert requests is not None
            value = bytes(requests.view(start, n))
            read = start + n
        try:
            out = handle(value, _KIND_NAMES[code], max_bytes, max_elements)
            status, answer = (NOT_MINE, b"") if out is None else (OK, out)
        except Exception as exc:  # the worker decodes this one itself, and says why
            status, answer = FAILED, repr(exc).encode()
        at = NO_RING if answers is None else answers.put(answer)
        parts = [memoryview(_HEAD.pack(len(answer), status, at, read))]
        _send_all(sock, parts if at != NO_RING else [*parts, memoryview(answer)])


def _process(sock: socket.socket, max_bytes: int, max_elements: int) -> None:
    settle_in()
    requests, answers = _receive_rings(sock)
    serve(sock, max_bytes, max_elements, requests, answers)


def settle_in() -> None:
    """A decode process's settings, at its start.

    - It ignores SIGINT: the worker stops its decode processes, and a terminal's Ctrl-C
      is the worker's to handle.
    - Its priority is lower than its worker's (:data:`NICENESS`).
    - The C allocator keeps its memory (``tune_malloc``): its arrays and answers are as
      large as the worker's batches.
    - The cyclic garbage collector is tuned as in the worker (``tune_gc``). A message
      of 500 events decodes into about a thousand containers, freed with it by reference
      counting. With CPython's default thresholds they set off about two young
      collections per message and a full one every two hundred: decoding 100 000 of
      the benchmark's events took 0.34-0.35 CPU seconds instead of 0.28-0.32, of which
      0.04-0.06 in collections (measured with ``gc.callbacks``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # (lowering one's own priority is always allowed)
        os.nice(NICENESS)
    tune_malloc()
    tune_gc()


def _send_all(sock: socket.socket, parts: list[memoryview]) -> None:
    while parts:
        sent = sock.sendmsg(parts[:_IOV_MAX])
        parts = _rest(parts, sent)


def _rest(parts: list[memoryview], sent: int) -> list[memoryview]:
    """What is left of ``parts`` once ``sent`` bytes of them went."""
    i = 0
    while i < len(parts) and sent >= len(parts[i]):
        sent -= len(parts[i])
        i += 1
    rest = parts[i:]
    if sent:
        rest[0] = rest[0][sent:]
    return rest


class Channel:
    """One decode process and the worker's end of its socket, which the worker's event
    loop writes and reads (no thread of its own: see the module).

    Requests go out in order; the process answers them in that order, so the futures of
    the requests sent and not yet answered wait in a queue, and each answer settles the
    first of them."""

    def __init__(self, process: Any, sock: socket.socket,
                 broken: Callable[[BaseException], None], requests: Ring | None = None,
                 answers: Ring | None = None) -> None:
        self.process, self.sock, self._broken = process, sock, broken
        self.requests, self.answers = requests, answers  # the rings, if any (see Ring)
        self.slots: deque[Slot] = deque()  # answers in the ring, in order, not all read
        self.answers_read = 0  # how far the answers' ring is read (told with each request)
        sock.setblocking(False)
        # requests sent, not yet answered: each one's future and value's size
        self.waiting: deque[tuple[asyncio.Future[Result], int]] = deque()
        self.outstanding = 0  # bytes of the requests not yet answered (for balancing)
        self._out: list[memoryview] = []  # what the socket would not take yet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._head = bytearray(_HEAD.size)
        self._body: bytearray | None = None  # the answer being read, after its head
        self._status = OK
        self._got = 0  # bytes read of the head, or of the body

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Be read and written by ``loop`` (the running one: the worker's)."""
        if self._loop is loop:
            return
        self.detach()
        self._loop = loop
        loop.add_reader(self.sock, self._readable)
        if self._out:
            loop.add_writer(self.sock, self._writable)

    def detach(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.sock)
            self._loop.remove_writer(self.sock)
        self._loop = None

    def send(self, future: asyncio.Future[Result], value: bytes, kind: str) -> None:
        """Ask the process to decode ``value``; its answer settles ``future``."""
        self.waiting.append((future, len(value)))
        self.outstanding += len(value)
        at = NO_RING if self.requests is None else self.requests.put(value)
        parts = [memoryview(_HEAD.pack(len(value), _KIND_CODES[kind], at, self.answers_read))]
        if at == NO_RING:
            parts.append(memoryview(value))
        if self._out:  # behind what is already waiting for the socket
            self._out.extend(parts)
        else:
            self._write(parts)

    def _write(self, parts: list[memoryview]) -> None:
        try:
            sent = self.sock.sendmsg(parts[:_IOV_MAX])
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # the process is gone
            self._broken(exc)
            return
        rest = _rest(parts, sent)
        was_waiting = bool(self._out)
        self._out = rest
        if rest and not was_waiting and self._loop is not None:
            self._loop.add_writer(self.sock, self._writable)
        elif not rest and was_waiting and self._loop is not None:
            self._loop.remove_writer(self.sock)

    def _writable(self) -> None:
        if self._out:
            self._write(self._out)

    def _readable(self) -> None:
        """Read what the process answered, settling a future per complete answer."""
        sock = self.sock
        while True:
            target = self._head if self._body is None else self._body
            try:
                n = sock.recv_into(memoryview(target)[self._got:])
            except BlockingIOError:
                return
            except OSError as exc:
                self._broken(exc)
                return
            if not n:
                self._broken(EOFError("the decode process exited"))
                return
            self._got += n
            if self._got < len(target):
                continue
            self._got = 0
            body: bytearray | Slot
            if self._body is None:  # a head: the body comes next, if it has one
                size, self._status, start, requests_read = _HEAD.unpack(self._head)
                if self.requests is not None:
                    self.requests.released = max(self.requests.released, requests_read)
                if start != NO_RING:  # in the ring
                    body = Slot(self, start, start + size)
                    self.slots.append(body)
                elif size:
                    self._body = bytearray(size)
                    continue
                else:
                    body = bytearray()
            else:
                body, self._body = self._body, None
            future, asked = self.waiting.popleft()
            self.outstanding -= asked
            if not future.done() and not future.get_loop().is_closed():
                future.set_result((self._status, body))
            elif isinstance(body, Slot):  # (no one reads it)
                body.release()

    def close(self) -> None:
        """Close the socket: the process, reading its end, stops."""
        self.detach()
        for future, _ in self.waiting:
            future.cancel()
        self.waiting.clear()
        self.sock.close()
        for ring in (self.requests, self.answers):
            if ring is not None:
                ring.close()
        if self.process is not None:
            self.process.join(1.0)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(1.0)


class DecodePool:
    """Decode processes and the messages they are decoding (see the module)."""

    def __init__(self, processes: int, *, max_bytes: int, max_elements: int,
                 min_bytes: int = MIN_BYTES) -> None:
        self.processes = processes
        self.max_bytes, self.max_elements, self.min_bytes = max_bytes, max_elements, min_bytes
        self._channels: list[Channel] = []
        self._futures: dict[Key, asyncio.Future[Result]] = {}
        self.broken = processes < 1
        self.submitted = self.used = 0  # messages handed to the pool, and decoded by it
        self.counted = 0  # messages whose numeric values a decode process counted
        # binnings sent (configure): the last configuration, and each token's binning
        self._config: dict[str, tuple[int, dict[str | None, Binning]]] = {}
        self._tokens: dict[int, Binning] = {}
        self._recent: deque[set[int]] = deque(maxlen=_CONFIGS_KEPT)  # tokens per config
        self._next_token = 0

    def start(self) -> None:
        """Start the decode processes now (the worker's start), not when the first large
        message comes: spawning one takes a few hundred milliseconds."""
        if self.broken:
            return
        try:
            self._start()
        except Exception as exc:
            self._break(exc)

    def _start(self) -> list[Channel]:
        if not self._channels:
            # spawned, not forked: the worker runs threads (the consumer's, the metrics
            # server's) that a fork would copy mid-flight
            context = multiprocessing.get_context("spawn")
            for i in range(self.processes):
                ours, theirs = socket.socketpair()
                for end in (ours, theirs):
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
                process = context.Process(  # (the socket's descriptor is inherited)
                    target=_process, args=(theirs, self.max_bytes, self.max_elements),
                    name=f"driftwarden-decode-{i}", daemon=True)
                try:
                    process.start()
                finally:
                    theirs.close()
                requests, answers = _send_rings(ours)
                self._channels.append(Channel(process, ours, self._break, requests, answers))
        return self._channels

    def submit(self, messages: Iterable[tuple[Key, bytes | None, str]]) -> int:
        """Start decoding these messages (``(key, value, kind)``); a message submitted
        again (read again after a rebalance) replaces its earlier decode. Called on the
        worker's event loop, which then reads the answers as they come. Returns how many
        it started."""
        if self.broken:
            return 0
        before = self.submitted
        loop = asyncio.get_running_loop()
        if len(self._futures) > MAX_WAITING:  # never asked for: (defensive) start afresh
            self.forget()
        try:
            channels = self._start()
            for channel in channels:
                channel.attach(loop)
            for key, value, kind in messages:
                if kind in KINDS and value is not None and self.min_bytes <= len(value) \
                        <= self.max_bytes:
                    future: asyncio.Future[Result] = loop.create_future()
                    old = self._futures.get(key)
                    if old is not None:  # (read again: the earlier answer is not read)
                        _drop(old)
                    self._futures[key] = future
                    channel = min(channels, key=lambda c: c.outstanding) \
                        if len(channels) > 1 else channels[0]
                    channel.send(future, value, kind)
                    self.submitted += 1
                    if self.broken:  # the send found the process gone
                        return 0
        except Exception as exc:
            self._break(exc)
            return 0
        return self.submitted - before

    def configure(self, config: dict[str, tuple[int, dict[str | None, Binning]]]) -> bool:
        """Have the decode processes count the numeric values of these models' messages:
        model -> (its windows' hop in ms, version -> binning; ``None``: any other).
        Sent when it differs from the last one sent (binnings compare by identity: a
        reference's binning is made once); returns whether it was sent.

        Sent before the messages handed over after it, on the same sockets: each
        process counts those with it. Counts made with an older binning still come back
        with its token, and the worker's slices check they fit before adding them
        (:meth:`~app.core.windows.Slice.update`): a binning changes only with a
        reference, and a count that does not fit is made again from the events."""
        if self.broken or config == self._config:
            return False
        tokens: dict[int, int] = {id(b): t for t, b in self._tokens.items()}
        wire: Binnings = {}
        used = set()
        for model, (hop_ms, versions) in config.items():
            wire[model] = (hop_ms, {})
            for version, binning in versions.items():
                token = tokens.get(id(binning))
                if token is None:
                    token = tokens[id(binning)] = self._next_token
                    self._tokens[token] = binning
                    self._next_token += 1
                wire[model][1][version] = (token, binning)
                used.add(token)
        self._recent.append(used)
        kept = set().union(*self._recent)
        self._tokens = {t: b for t, b in self._tokens.items() if t in kept}
        self._config = {model: (hop, dict(versions)) for model, (hop, versions) in config.items()}
        body = pickle.dumps(wire, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            channels = self._start()
            loop = asyncio.get_running_loop()
            for channel in channels:
                channel.attach(loop)
                channel.send(loop.create_future(), body, CONFIG)
        except Exception as exc:
            self._break(exc)
            return False
        return True

    async def wait(self, keys: Iterable[Key], timeout: float = WAIT_TIMEOUT) -> None:
        """Until the messages of ``keys`` that the pool decodes are decoded; after
        ``timeout`` seconds without them the pool breaks (a hung decode process is
        killed), and the worker decodes them, and everything after, itself."""
        pending = [f for k in keys if (f := self._futures.get(k)) is not None and not f.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            if late:
                self._break(TimeoutError(f"{len(late)} decode(s) not answered in {timeout} s"))

    def decoded(self, key: Key, value: bytes, kind: str) -> Decoded | None:
        """The message's ``Decoded`` from the pool, or ``None``: the caller decodes it."""
        future = self._futures.pop(key, None)
        if future is None or not future.done() or future.cancelled():
            if future is not None:
                _drop(future)
            return None
        status, body = future.result()
        try:
            data = body.view() if isinstance(body, Slot) else body
            if status == FAILED:  # one message the pool failed on: decoded here
                log.warning("the decode pool failed on a message, decoded in the worker: %s",
                            bytes(data).decode(errors="replace"))
                return None
            if status != OK:
                return None
            # (bytes this worker's own decode process pickled: never anything from outside)
            payload = pickle.loads(data)
        finally:
            if isinstance(body, Slot):
                body.release()
        self.used += 1
        decoded = from_payload(payload, value, kind, self.max_bytes, self.max_elements)
        counts = payload.get("counts")
        if counts is not None and all(token in self._tokens for token, _ in counts.values()):
            decoded.events.partials = {  # type: ignore[attr-defined]
                key: [Counted(self._tokens[token], c)] for key, (token, c) in counts.items()}
            self.counted += 1
        return decoded

    def forget(self) -> None:
        """Drop every decode not asked for yet (partitions were revoked: the messages of
        those that come back are fetched, and submitted, again)."""
        for future in self._futures.values():
            _drop(future)
        self._futures = {}

    def _break(self, exc: BaseException) -> None:
        if not self.broken:
            log.error("the decode pool broke (%r): this worker decodes its messages itself",
                      exc)
        self.broken = True
        self.close()

    def close(self) -> None:
        self.forget()
        channels, self._channels = self._channels, []
        for channel in channels:
            channel.close()
