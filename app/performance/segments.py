"""A map ``id -> entry`` persisted as append-only records (for a compacted changelog).

Each batch writes only what it changed, in size proportional to the batch, never to the
whole map. Under the ``prefix`` given to the constructor the records are:

``{prefix}s{seq}`` -- a **segment**: entries added together (at most ``segment_size``),
    as columns: ``{"i": [id, ...], "c": [[time, ...], [field1, ...], ...]}``. It is never
    rewritten for an addition, and is deleted (``None``) as soon as none of its entries is
    still present.
``{prefix}r{seq}`` -- a **removal**: the ids removed during one batch, grouped by the
    segment they left and by the caller's reason, with the largest entry time among them
    (or the time given to :meth:`~SegmentedMap.pop`):
    ``{"t": max_time, "g": [[segment_seq, reason, [id, ...]], ...]}``. It is deleted once
    :meth:`SegmentedMap.forget_before` passes a time above ``t``, or, oldest first, when the
    live removals remember more than ``max_removed`` ids.
``{prefix}n`` -- ``{"n": next_seq, "d": drop_ms}``: the sequence counter (so that keys
    continue after a restore) and the last :meth:`~SegmentedMap.forget_before` time.

An entry is a tuple of JSON-able values whose first element is an ``int`` time in epoch
milliseconds. The present entries are the ids of the live segments minus the ``(segment,
id)`` pairs named by live removals, so a removal must outlive the segment its ids left.
When a removal is deleted while that segment still lists one of its ids, the segment
record is rewritten with its present entries only (a compaction, at most ``segment_size``
entries; rare: a segment usually dies before the removals that emptied it expire).
"""

from __future__ import annotations

import heapq
import itertools
import operator
import re
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from app.errors import StateError
from app.events.fields import share_strings

Entry = tuple[Any, ...]
Gone = tuple[tuple[str, int], ...]

_KEY = re.compile(r"([sr])(0|[1-9][0-9]*)")
_BUFFERED = -1  # the removal-record sequence number of ids removed in the current batch
_HEAP_SLACK = 64  # stale heap entries tolerated beyond twice the live ones
# A present id's place, (segment seq, index), as one int ``seq * _STRIDE + index``: a
# tuple of two ints took 84 bytes per id, this one int 32 (hundreds of thousands of
# pending predictions). Sorting the ints sorts the places.
_STRIDE = 1 << 32
_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)


def picker(idx: list[int]) -> Any:
    """A function of a list: its items at ``idx`` (at least one), as a list, in C.

    >>> picker([2, 0])(["a", "b", "c"]), picker([1])(["a", "b"])
    (['c', 'a'], ['b'])
    """
    get = operator.itemgetter(*idx)
    if len(idx) == 1:
        return lambda values: [get(values)]
    return lambda values: list(get(values))


def _drain(calls: Iterable[Any]) -> None:
    """Run an iterator of calls to its end in C, keeping nothing (a per-item loop of
    stores or deletions without a Python-level loop)."""
    deque(calls, maxlen=0)


class _Shared:
    """One object for equal tuples (the removal reasons of thousands of ids)."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[Gone, Gone] = {}

    def of(self, value: Gone) -> Gone:
        return self._seen.setdefault(value, value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Segment:
    """The in-memory side of one segment record (its lists *are* the record's columns)."""

    __slots__ = ("alive", "cols", "head", "ids", "live", "min_t", "seq")

    def __init__(self, seq: int, ids: list[str], cols: list[list[Any]],
                 alive: bytearray | None = None) -> None:
        self.seq = seq
        self.ids = ids
        self.cols = cols
        times = cols[0]
        self.head = 0  # no present entry before this index (for pop_oldest)
        # min_t: a lower bound of the present entries' times; exact again after each scan
        if alive is None:  # a new segment: every entry present
            self.alive = bytearray(b"\x01" * len(ids))
            self.live = len(ids)
            self.min_t: int = min(times, default=0)
        else:
            self.alive = alive
            self.live = sum(alive)
            self.min_t = min((times[i] for i, a in enumerate(alive) if a), default=0)

    def entry(self, i: int) -> Entry:
        return tuple([c[i] for c in self.cols])

    def value(self) -> dict[str, Any]:
        return {"i": self.ids, "c": self.cols}


class SegmentedMap:
    """A map ``id -> entry`` whose persistence is a stream of small append-only records.

    Parameters
    ----------
    prefix
        Prepended to every record key (``"j/p/"`` gives ``"j/p/s0"``, ``"j/p/r1"``, ...).
    segment_size
        At most this many entries per segment record.
    max_removed
        Remember (and keep removal records for) at most about this many removed ids: past
        it the oldest removal records are deleted, except the newest. ``None``: no bound.
    width
        When given, every entry must have exactly this many fields (checked on restore).

    Notes
    -----
    Call :meth:`drain_records` once per batch and write its output (``None`` deletes a
    key); :meth:`restore` of the accumulated records gives back the same map, including
    which ids were removed and why (as long as their removal records live). Do not mutate
    the values returned by :meth:`drain_records` or :meth:`records`.

    Examples
    --------
    >>> m = SegmentedMap("j/p/", segment_size=2)
    >>> m.add([("a", (10, "x")), ("b", (20, "y")), ("c", (30, "z"))])
    >>> sorted(m.drain_records())
    ['j/p/n', 'j/p/s0', 'j/p/s1']
    >>> m.pop_older_than(25, "expired")
    [('a', (10, 'x')), ('b', (20, 'y'))]
    >>> m.drain_records()
    {'j/p/s0': None, 'j/p/r2': {'t': 20, 'g': [[0, 'expired', ['a', 'b']]]}, 'j/p/n': {'n': 3, 'd': None}}
    >>> m.removed("a"), len(m)
    ('expired', 1)
    >>> m.forget_before(25)
    >>> m.drain_records()
    {'j/p/r2': None, 'j/p/n': {'n': 3, 'd': 25}}
    >>> SegmentedMap.restore(m.records(), prefix="j/p/").get("c")
    (30, 'z')
    """  # noqa: E501

    def __init__(self, prefix: str, *, segment_size: int = 2000,
                 max_removed: int | None = None, width: int | None = None) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
        for name, v in (("segment_size", segment_size), ("max_removed", max_removed),
                        ("width", width)):
            if v is not None and (not _is_int(v) or v <= 0):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if segment_size >= _STRIDE:
            raise ValueError(f"segment_size must be below {_STRIDE}, got {segment_size}")
        self.prefix = prefix
        self.segment_size = segment_size
        self.max_removed = max_removed
        self.width = width
        self._segs: OrderedDict[int, _Segment] = OrderedDict()  # live segments, by seq
        self._at: dict[str, int] = {}  # present id -> seq * _STRIDE + index
        self._seg_heap: list[tuple[int, int]] = []  # (min_t, seq), lazily invalidated
        self._rems: OrderedDict[int, tuple[dict[str, Any], int]] = OrderedDict()  # value, ids
        self._rem_heap: list[tuple[int, int]] = []  # (max time, seq), lazily invalidated
        self._known = 0  # ids named by the live removal records
        # removed id -> ((reason, removal seq), ...) of the live removals naming it, newest
        # last; the tuples are shared by the ids of one removal (most ids have only one)
        self._gone: dict[str, Gone] = {}
        self._buf: dict[tuple[int, str], list[str]] = {}  # this batch's removals
        self._buf_t: int | None = None
        self._next = 0
        self._drop_ms: int | None = None
        self._sent_n: tuple[int, int | None] = (0, None)
        self._dirty: dict[str, Any | None] = {}
        self._unsent: set[str] = set()  # keys created since the last drain

    # -- reading ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def get(self, key: str) -> Entry | None:
        """The entry of a present id, else ``None``."""
        at = self._at.get(key)
        if at is None:
            return None
        seq, i = divmod(at, _STRIDE)
        return self._segs[seq].entry(i)

    def items(self) -> Iterator[tuple[str, Entry]]:
        """Present entries, oldest inserted first."""
        for seg in self._segs.values():
            for i, key in enumerate(seg.ids):
                if seg.alive[i]:
                    yield key, seg.entry(i)

    def has_all(self, keys: set[str]) -> bool:
        """Whether every id of ``keys`` is present (one set operation in C)."""
        return self._at.keys() >= keys

    def columns(self, keys: Sequence[str]) -> list[list[Any]]:
        """The entries of present ``keys``, in their order, as columns (``[field][i]``):
        :meth:`get` of each, transposed, without a tuple per entry.

        >>> m = SegmentedMap("p/", segment_size=2)
        >>> m.add([("a", (10, "x")), ("b", (20, "y")), ("c", (30, "z"))])
        >>> m.columns(["c", "a"])
        [[30, 10], ['z', 'x']]
        """
        at = list(map(divmod, map(self._at.__getitem__, keys), itertools.repeat(_STRIDE)))
        if not at:
            return [[] for _ in range(self.width or 0)]
        seqs = set(map(_FIRST, at))
        if len(seqs) == 1:  # the usual batch: ids added together, in one segment
            pick = picker(list(map(_SECOND, at)))
            return [pick(col) for col in self._segs[seqs.pop()].cols]
        segs = {seq: self._segs[seq].cols for seq in seqs}
        width = len(next(iter(segs.values())))
        return [[segs[seq][j][i] for seq, i in at] for j in range(width)]

    def known(self, keys: set[str]) -> set[str]:
        """The ids of ``keys`` present or remembered as removed (set operations in C: a
        batch of ids is checked at once, and only these need the per-id checks)."""
        return self.present(keys) | self.removed_among(keys)

    def present(self, keys: set[str]) -> set[str]:
        """The ids of ``keys`` present."""
        return self._at.keys() & keys

    def removed_among(self, keys: set[str]) -> set[str]:
        """The ids of ``keys`` remembered as removed (present again or not)."""
        return self._gone.keys() & keys

    def removed(self, key: str) -> str | None:
        """The reason of the latest remembered removal of ``key``, else ``None``."""
        gone = self._gone.get(key)
        return None if gone is None else gone[-1][0]

    @property
    def drop_ms(self) -> int | None:
        """The highest :meth:`forget_before` time so far."""
        return self._drop_ms

    # -- changing -----------------------------------------------------------------------

    def add(self, items: Iterable[tuple[str, Entry]]) -> None:
        """Add absent ids, as new segment records (in the given order)."""
        batch = list(items)
        if not batch:
            return
        keys = [k for k, _ in batch]
        entries = [e for _, e in batch]
        # checked with C-level passes over the batch; the per-item loop below runs only
        # to name what is wrong
        width = self.width if self.width is not None else \
            len(entries[0]) if type(entries[0]) is tuple else None
        if not (set(map(type, keys)) == {str} and len(set(keys)) == len(keys)
                and self._at.keys().isdisjoint(keys) and set(map(type, entries)) == {tuple}
                and set(map(len, entries)) == {width} and width
                and set(map(type, map(operator.itemgetter(0), entries))) == {int}):
            self._check_batch(batch)
        self._add_segments(keys, list(zip(*entries, strict=True)))

    def add_columns(self, keys: list[str], cols: Sequence[Sequence[Any]], *,
                    new: bool = False) -> None:
        """:meth:`add` of ``keys`` and their entries given as columns (``cols[j][i]`` is
        field ``j`` of key ``i``'s entry): the segments' own layout, no entry tuples.

        ``new``: the caller has found the keys distinct and absent already (with the set
        operations of a batch it made anyway), which is then not checked again: another
        pass over the batch, probing a map of hundreds of thousands of ids."""
        n = len(keys)
        if not n:
            return
        width = self.width if self.width is not None else len(cols)
        if not (width and len(cols) == width and all(len(c) == n for c in cols)
                and set(map(type, keys)) == {str} and set(map(type, cols[0])) == {int}
                and (new or (len(set(keys)) == n and self._at.keys().isdisjoint(keys)))):
            self.add(zip(keys, zip(*cols, strict=True), strict=True))  # says what is wrong
            return
        self._add_segments(keys, cols)

    def _add_segments(self, keys: list[str], cols: Sequence[Sequence[Any]]) -> None:
        """New segment records of (checked, absent) ``keys`` and their entries' columns,
        ``segment_size`` ids each, in order."""
        size = self.segment_size
        for start in range(0, len(keys), size):
            seq = self._take_seq()
            seg = _Segment(seq, keys[start:start + size],
                           [list(c[start:start + size]) for c in cols])
            self._install(seg)
            key = self._key("s", seq)
            self._dirty[key] = seg.value()
            self._unsent.add(key)

    def _check_batch(self, batch: list[tuple[str, Entry]]) -> None:
        """Name the first id or entry of ``batch`` that :meth:`add` must refuse."""
        seen: set[str] = set()
        width = self.width
        for key, entry in batch:
            if not isinstance(key, str):
                raise TypeError(f"ids must be strings, got {key!r}")
            if key in self._at or key in seen:
                raise ValueError(f"{key!r} is already in the map")
            seen.add(key)
            if not isinstance(entry, tuple) or not entry or not _is_int(entry[0]):
                raise ValueError(f"entry of {key!r} must be a tuple starting with an int time "
                                 f"in ms, got {entry!r}")
            if width is None:
                width = len(entry)
            elif len(entry) != width:
                raise ValueError(f"entry of {key!r} has {len(entry)} fields, expected {width}")

    def pop(self, key: str, reason: str, t_ms: int | None = None) -> Entry | None:
        """Remove a present id (recording ``reason``) and return its entry, else ``None``.

        ``t_ms``: the time its removal is remembered by, when not the entry's own.
        """
        return self._remove(key, reason, t_ms) if key in self._at else None

    def pop_many(self, keys: Sequence[str], reason: str) -> None:
        """:meth:`pop` of each of ``keys`` (distinct, present), one pass per segment: the
        same map and remembered removals as one by one (a removal record lists the ids
        in their segment's order)."""
        self._remove_found(list(map(divmod, sorted(map(self._at.__getitem__, keys)),
                                    itertools.repeat(_STRIDE))), reason, entries=False)

    def pop_each(self, keys: Sequence[str], reasons: Sequence[str], t_ms: int) -> None:
        """:meth:`pop` of each of ``keys`` (distinct, present) in turn, for its reason in
        ``reasons``, each remembered by ``t_ms`` (a removal is remembered by the latest
        time of its batch: popping them one by one, each by its own time, is the same
        when ``t_ms`` is the latest of those). No entry is built. Consecutive ids of one
        segment and reason leave together (one :meth:`_leave` each run, found with C-level
        passes): the same as one by one, in the same order."""
        n = len(keys)
        if len(reasons) != n:
            raise ValueError(f"{len(reasons)} reasons for {n} ids")
        if not n:
            return
        locs = list(map(divmod, map(self._at.__getitem__, keys), itertools.repeat(_STRIDE)))
        seqs = list(map(_FIRST, locs))
        idx = list(map(_SECOND, locs))
        changes = map(operator.or_, map(operator.ne, seqs[1:], seqs),
                      map(operator.ne, reasons[1:], reasons))
        cuts = [0, *itertools.compress(range(1, n), changes), n]
        segs = self._segs
        for a, b in itertools.pairwise(cuts):
            self._leave(segs[seqs[a]], idx[a:b], list(keys[a:b]), reasons[a], t_ms)

    def pop_older_than(self, t_ms: int, reason: str) -> list[tuple[str, Entry]]:
        """Remove and return the entries with time ``< t_ms``, oldest inserted first.

        Only the segments whose smallest time is below ``t_ms`` are scanned.
        """
        return self._remove_found(self._older_than(t_ms), reason)

    def drop_older_than(self, t_ms: int, reason: str) -> int:
        """:meth:`pop_older_than` that only counts what it removed."""
        found = self._older_than(t_ms)
        self._remove_found(found, reason, entries=False)
        return len(found)

    def _older_than(self, t_ms: int) -> list[tuple[int, int]]:
        """The present ``(segment, index)`` pairs with time ``< t_ms``, sorted; the
        segments' lower bounds are made exact for the entries that stay."""
        found: list[tuple[int, int]] = []
        heap = self._seg_heap
        while heap and heap[0][0] < t_ms:
            min_t, seq = heapq.heappop(heap)
            seg = self._segs.get(seq)
            if seg is None or seg.min_t != min_t:
                continue  # a stale heap entry
            times, alive = seg.cols[0], seg.alive
            if max(times) < t_ms:  # the whole segment (the usual case, in C)
                found += zip(itertools.repeat(seq),
                             itertools.compress(range(len(times)), alive))
                continue
            rest: int | None = None
            for i, t in enumerate(times):
                if alive[i]:
                    if t < t_ms:
                        found.append((seq, i))
                    elif rest is None or t < rest:
                        rest = t
            if rest is not None:
                seg.min_t = rest
                heapq.heappush(heap, (rest, seq))
        found.sort()  # insertion order, however stale the bounds were
        return found

    def pop_oldest(self, reason: str) -> tuple[str, Entry] | None:
        """Remove and return the oldest inserted entry (for a size budget)."""
        if not self._segs:
            return None
        seg = next(iter(self._segs.values()))
        while not seg.alive[seg.head]:
            seg.head += 1
        key = seg.ids[seg.head]
        return key, self._remove(key, reason)

    def forget_before(self, t_ms: int) -> None:
        """Delete the removal records (and forget their ids) whose largest time is ``< t_ms``.

        The time only goes up; it also applies to the current batch's removals when they
        are written (a removal record entirely older than it is not written at all).
        """
        if self._drop_ms is not None and t_ms <= self._drop_ms:
            return
        self._drop_ms = t_ms
        self._forget()

    def _forget(self) -> None:
        heap, drop = self._rem_heap, self._drop_ms
        while drop is not None and heap and heap[0][0] < drop:
            _, rseq = heapq.heappop(heap)
            if rseq in self._rems:
                self._drop_removal(rseq)

    # -- records ------------------------------------------------------------------------

    def drain_records(self) -> dict[str, Any | None]:
        """Everything changed since the last drain: full key -> value, ``None`` to delete.

        Call it once per batch: it closes the batch's removal record.
        """
        self._flush()
        out, self._dirty, self._unsent = self._dirty, {}, set()
        return out

    def records(self) -> dict[str, Any]:
        """All live records (closing the current batch like :meth:`drain_records`, whose
        next output still holds the changes)."""
        self._flush()
        out: dict[str, Any] = {self._key("s", seq): seg.value()
                               for seq, seg in self._segs.items()}
        out.update((self._key("r", rseq), value) for rseq, (value, _) in self._rems.items())
        if (self._next, self._drop_ms) != (0, None):
            out[self.prefix + "n"] = {"n": self._next, "d": self._drop_ms}
        return out

    @classmethod
    def restore(cls, records: Mapping[str, Any], *, prefix: str, segment_size: int = 2000,
                max_removed: int | None = None, width: int | None = None) -> SegmentedMap:
        """Rebuild the map from its live records (keys outside ``prefix`` are ignored, a
        ``None`` value counts as deleted). Raises :class:`~app.errors.StateError` when a
        record is malformed."""
        m = cls(prefix, segment_size=segment_size, max_removed=max_removed, width=width)
        segs: dict[int, tuple[list[str], list[list[Any]]]] = {}
        rems: dict[int, tuple[int, list[list[Any]]]] = {}
        counter: tuple[int, int | None] = (0, None)
        strings: dict[str, str] = {}  # one object per distinct string of the columns
        for key, value in records.items():
            if not isinstance(key, str) or not key.startswith(prefix) or value is None:
                continue
            suffix = key[len(prefix):]
            if suffix == "n":
                counter = _parse_counter(key, value)
                continue
            match = _KEY.fullmatch(suffix)
            if match is None:
                raise StateError(f"unknown record {key!r}: expected {prefix}s<n>, "
                                 f"{prefix}r<n> or {prefix}n")
            if match[1] == "s":
                segs[int(match[2])] = _parse_segment(key, value, width, strings)
            else:
                rems[int(match[2])] = _parse_removal(key, value)
        shadow = {(g[0], k) for _, groups in rems.values() for g in groups for k in g[2]}
        for seq in sorted(segs):
            ids, cols = segs[seq]
            alive = bytearray(0 if (seq, k) in shadow else 1 for k in ids)
            for i, k in enumerate(ids):
                if alive[i] and k in m._at:
                    raise StateError(f"corrupt records: {k!r} is present in both "
                                     f"{m._key('s', m._at[k] // _STRIDE)} and "
                                     f"{m._key('s', seq)}")
                if alive[i]:
                    m._at[k] = seq * _STRIDE + i
            seg = _Segment(seq, ids, cols, alive)
            if seg.live:
                m._segs[seq] = seg
                m._seg_heap.append((seg.min_t, seq))
            else:  # a leftover of an interrupted write: delete it with the next drain
                m._dirty[m._key("s", seq)] = None
        heapq.heapify(m._seg_heap)
        shared = _Shared()
        for rseq in sorted(rems):
            max_t, groups = rems[rseq]
            count = 0
            for _, reason, keys in groups:
                pair = (reason, rseq)
                for k in keys:
                    m._gone[k] = shared.of((*m._gone.get(k, ()), pair))
                count += len(keys)
            m._rems[rseq] = ({"t": max_t, "g": groups}, count)
            m._known += count
            m._rem_heap.append((max_t, rseq))
        heapq.heapify(m._rem_heap)
        top = max([*segs, *rems], default=-1) + 1
        m._next, m._drop_ms = max(counter[0], top), counter[1]
        m._sent_n = counter
        m._forget()  # only does something for records an interrupted write left behind
        return m

    # -- internals ----------------------------------------------------------------------

    def _key(self, kind: str, seq: int) -> str:
        return f"{self.prefix}{kind}{seq}"

    def _take_seq(self) -> int:
        seq = self._next
        self._next += 1
        return seq

    def _install(self, seg: _Segment) -> None:
        self._segs[seg.seq] = seg
        first = seg.seq * _STRIDE
        self._at.update(zip(seg.ids, range(first, first + len(seg.ids)), strict=True))
        heapq.heappush(self._seg_heap, (seg.min_t, seg.seq))
        if len(self._seg_heap) > 2 * len(self._segs) + _HEAP_SLACK:
            # stale entries of segments emptied before their time came (labelled, say):
            # rebuilt, so the heap stays proportional to the live segments
            self._seg_heap = [(sg.min_t, sq) for sq, sg in self._segs.items()]
            heapq.heapify(self._seg_heap)

    def _delete_key(self, key: str) -> None:
        if key in self._unsent:  # never written: nothing to delete
            self._unsent.discard(key)
            self._dirty.pop(key, None)
        else:
            self._dirty[key] = None

    def _remove(self, key: str, reason: str, t_ms: int | None = None) -> Entry:
        seq, i = divmod(self._at[key], _STRIDE)
        seg = self._segs[seq]
        entry = seg.entry(i)
        self._leave(seg, [i], [key], reason, entry[0] if t_ms is None else t_ms)
        return entry

    def _remove_found(self, found: list[tuple[int, int]], reason: str, *,
                      entries: bool = True) -> list[tuple[str, Entry]]:
        """:meth:`_remove` of the present ``(segment, index)`` pairs, sorted: one pass per
        segment. Returns the removed ids and entries (``entries=False``: nothing)."""
        out: list[tuple[str, Entry]] = []
        for seq, group in itertools.groupby(found, key=operator.itemgetter(0)):
            seg = self._segs[seq]
            idx = [i for _, i in group]
            keys = [seg.ids[i] for i in idx]
            times = [seg.cols[0][i] for i in idx]
            if entries:
                out += zip(keys, zip(times, *[[c[i] for i in idx] for c in seg.cols[1:]],
                                     strict=True), strict=True)
            self._leave(seg, idx, keys, reason, max(times))
        return out

    def _leave(self, seg: _Segment, idx: list[int], keys: list[str], reason: str,
               t: int) -> None:
        """Entries ``idx`` (ids ``keys``) of ``seg`` leave for ``reason``: recorded in
        this batch's removal, remembered until then by ``t``; an emptied segment's
        record is deleted."""
        at, gone, pair = self._at, self._gone, (reason, _BUFFERED)
        alone = (pair,)
        _drain(map(seg.alive.__setitem__, idx, itertools.repeat(0)))  # (C-level loops)
        seg.live -= len(idx)
        _drain(map(at.__delitem__, keys))
        if gone.keys().isdisjoint(keys):  # never removed before (the usual ids): in C
            gone.update(zip(keys, itertools.repeat(alone)))
        else:
            for key in keys:
                before = gone.get(key)
                gone[key] = alone if before is None else (*before, pair)
        self._buf.setdefault((seg.seq, reason), []).extend(keys)
        self._buf_t = t if self._buf_t is None or t > self._buf_t else self._buf_t
        if not seg.live:
            del self._segs[seg.seq]
            self._delete_key(self._key("s", seg.seq))

    def _flush(self) -> None:
        """Close the batch: write its removal record; keep the counter record current."""
        if self._buf:
            groups: list[list[Any]] = [[s, reason, keys] for (s, reason), keys in self._buf.items()]
            max_t = self._buf_t
            assert max_t is not None
            self._buf, self._buf_t = {}, None
            if self._drop_ms is not None and max_t < self._drop_ms:
                self._unshadow(_BUFFERED, groups)  # already past the drop time
            else:
                rseq = self._take_seq()
                count = 0
                shared = _Shared()
                named: dict[Gone, Gone] = {}  # with _BUFFERED -> with rseq (most ids share one)

                def renamed(before: Gone) -> Gone:
                    after = named.get(before)
                    if after is None:
                        after = named[before] = shared.of(tuple(
                            (r, rseq if s == _BUFFERED else s) for r, s in before))
                    return after

                gone = self._gone
                for _, _, keys in groups:
                    count += len(keys)
                    befores = list(map(gone.__getitem__, keys))
                    if befores and befores.count(befores[0]) == len(befores):
                        # one for all the group's ids (the usual case): renamed once, in C
                        gone.update(zip(keys, itertools.repeat(renamed(befores[0]))))
                    else:
                        gone.update(zip(keys, map(renamed, befores), strict=True))
                value = {"t": max_t, "g": groups}
                self._rems[rseq] = (value, count)
                self._known += count
                heapq.heappush(self._rem_heap, (max_t, rseq))
                if len(self._rem_heap) > 2 * len(self._rems) + _HEAP_SLACK:
                    # removals dropped by the budget, not by time: likewise
                    self._rem_heap = [(v["t"], rs) for rs, (v, _) in self._rems.items()]
                    heapq.heapify(self._rem_heap)
                key = self._key("r", rseq)
                self._dirty[key] = value
                self._unsent.add(key)
                if self.max_removed is not None:
                    while self._known > self.max_removed and len(self._rems) > 1:
                        self._drop_removal(next(iter(self._rems)))
        counter = (self._next, self._drop_ms)
        if counter != self._sent_n:
            self._dirty[self.prefix + "n"] = {"n": counter[0], "d": counter[1]}
            self._sent_n = counter

    def _drop_removal(self, rseq: int) -> None:
        value, count = self._rems.pop(rseq)
        self._known -= count
        self._delete_key(self._key("r", rseq))
        self._unshadow(rseq, value["g"])

    def _unshadow(self, rseq: int, groups: list[list[Any]]) -> None:
        """Forget the ids of a deleted removal; compact the live segments still listing
        them, which would otherwise bring them back on restore."""
        left_of: dict[Gone, Gone] = {}  # (most ids share their removals' tuple)
        for seg_seq, _, keys in groups:
            for k in keys:
                gone = self._gone.get(k)
                if gone is not None:
                    left = left_of.get(gone)
                    if left is None:
                        left = left_of[gone] = tuple(g for g in gone if g[1] != rseq)
                    if left:
                        self._gone[k] = left
                    else:
                        del self._gone[k]
            seg = self._segs.get(seg_seq)
            if seg is not None and not set(keys).isdisjoint(seg.ids):
                self._rewrite(seg)

    def _rewrite(self, seg: _Segment) -> None:
        keep = [i for i, a in enumerate(seg.alive) if a]
        seg.ids = [seg.ids[i] for i in keep]
        seg.cols = [[col[i] for i in keep] for col in seg.cols]
        seg.alive = bytearray(b"\x01" * len(keep))
        seg.head = 0
        for i, key in enumerate(seg.ids):
            self._at[key] = seg.seq * _STRIDE + i
        self._dirty[self._key("s", seg.seq)] = seg.value()


def _parse_counter(key: str, value: Any) -> tuple[int, int | None]:
    if (not isinstance(value, dict) or not _is_int(value.get("n")) or value["n"] < 0
            or not (value.get("d") is None or _is_int(value["d"]))):
        raise StateError(f"record {key!r} must be {{'n': int >= 0, 'd': int | None}}, "
                         f"got {value!r}")
    return value["n"], value["d"]


def _parse_segment(key: str, value: Any, width: int | None, strings: dict[str, str]
                   ) -> tuple[list[str], list[list[Any]]]:
    """A segment record's ids and columns; equal strings of the columns (an entry's
    version or class, repeated in thousands of entries) as one object, ``strings``'."""
    if not isinstance(value, dict) or not isinstance(value.get("i"), list) \
            or not isinstance(value.get("c"), list) or not value["c"]:
        raise StateError(f"segment record {key!r} must be {{'i': [ids], 'c': [columns]}}")
    ids, cols = value["i"], value["c"]
    if not ids or not all(isinstance(k, str) for k in ids) or len(set(ids)) != len(ids):
        raise StateError(f"segment record {key!r} must list distinct string ids")
    if width is not None and len(cols) != width:
        raise StateError(f"segment record {key!r} has {len(cols)} columns, expected {width}")
    if not all(isinstance(c, list) and len(c) == len(ids) for c in cols):
        raise StateError(f"segment record {key!r}: every column must have {len(ids)} values")
    if not all(_is_int(t) for t in cols[0]):
        raise StateError(f"segment record {key!r}: the first column must hold int times")
    return list(ids), [list(cols[0])] + [share_strings(c, strings) for c in cols[1:]]


def _parse_removal(key: str, value: Any) -> tuple[int, list[list[Any]]]:
    if not isinstance(value, dict) or not _is_int(value.get("t")) \
            or not isinstance(value.get("g"), list) or not value["g"]:
        raise StateError(f"removal record {key!r} must be {{'t': int, 'g': [groups]}}")
    groups: list[list[Any]] = []
    for g in value["g"]:
        if not (isinstance(g, list) and len(g) == 3 and _is_int(g[0])
                and isinstance(g[1], str) and isinstance(g[2], list)
                and all(isinstance(k, str) for k in g[2])):
            raise StateError(f"removal record {key!r}: a group must be "
                             f"[segment_seq, reason, [ids]], got {g!r}")
        groups.append([g[0], g[1], list(g[2])])
    return value["t"], groups
