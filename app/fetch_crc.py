"""Fetched record batches' CRCs checked with the processor's CRC32C instruction.

Every Kafka record batch carries a CRC32C of its contents, and aiokafka checks each one
it fetches (``check_crcs``, on by default, as in every Kafka client) with its own
Cython code: about 1.8 GB/s, holding the interpreter's lock. A worker reading the
benchmark's array messages fetches about 200 MB per 300 000 events: 0.1 s in which, on
the consumer thread, the CRCs were computed and the worker's thread ran no Python, and
each turn of the batch path began by waiting 4-7 ms for the records it takes to be
checked (``load-tests/README.md``).

:func:`install` has aiokafka's fetcher wrap each fetched partition's records
(:class:`CheckedRecords`) so that a batch's ``validate_crc`` computes the same CRC32C
with google-crc32c, which uses the processor's CRC instructions (SSE4.2, ARMv8): 0.2 ms
for 6 MiB instead of 3.2. Nothing else changes: aiokafka calls ``validate_crc`` where
it did, and raises ``CorruptRecordException`` for a batch whose CRC does not match,
after the records before it. A batch this module cannot place for certain (another
format than v2, or not where its own walk of the fetched bytes, aiokafka's walk
repeated, finds it) is checked by aiokafka's code, as before; so is everything where
google-crc32c has no compiled implementation.
"""

from __future__ import annotations

import struct
from typing import Any

import google_crc32c
from aiokafka.consumer import fetcher as _fetcher
from aiokafka.record.memory_records import MemoryRecords

# A v2 record batch's header (the Kafka protocol's RecordBatch): base offset (int64),
# batch length (int32, the bytes after it), leader epoch (int32), magic (int8), CRC
# (uint32, CRC32C of everything from the attributes on).
_HEADER = struct.Struct(">qiibI")
LOG_OVERHEAD = 12  # base offset and length: a batch is LOG_OVERHEAD + length bytes
ATTRIBUTES_OFFSET = _HEADER.size  # 21


def available() -> bool:
    """Whether google-crc32c computes with compiled code here (not its pure Python)."""
    return bool(google_crc32c.implementation == "c")


class _Checked:
    """A fetched record batch whose ``validate_crc`` is computed here (everything else
    is the batch's own: aiokafka iterates it and reads its fields as ever)."""

    __slots__ = ("_batch", "_crc", "_data", "_end", "_start")

    def __init__(self, batch: Any, data: bytes, start: int, end: int, crc: int) -> None:
        self._batch = batch
        self._data = data
        self._start = start
        self._end = end
        self._crc = crc

    def validate_crc(self) -> bool:
        body = self._data[self._start + ATTRIBUTES_OFFSET:self._end]
        return bool(google_crc32c.value(body) == self._crc)

    def __iter__(self) -> Any:
        return iter(self._batch)

    def __next__(self) -> Any:
        return next(self._batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)


class CheckedRecords:
    """aiokafka's ``MemoryRecords`` of a partition's fetched bytes, whose v2 batches
    check their CRC here (:class:`_Checked`).

    It walks the bytes as ``MemoryRecords`` does (a batch is ``LOG_OVERHEAD + length``
    bytes; a last one cut short by the fetch's size is not a batch) and hands a batch
    over wrapped only when its header there is the batch's own (base offset and CRC
    field): any other batch is handed over as it is, checked by aiokafka's code."""

    __slots__ = ("_data", "_pos", "_records")

    def __init__(self, data: bytes) -> None:
        self._records = MemoryRecords(data)  # (refuses what aiokafka's refuses)
        self._data = data
        self._pos = 0

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        batch = self._records.next_batch()
        if batch is None:
            return None
        data, start = self._data, self._pos
        if type(data) is not bytes or len(data) - start < ATTRIBUTES_OFFSET:
            return batch
        offset, length, _, magic, crc = _HEADER.unpack_from(data, start)
        end = start + LOG_OVERHEAD + length
        self._pos = end
        if (magic != 2 or end > len(data) or end < start + ATTRIBUTES_OFFSET
                or getattr(batch, "base_offset", None) != offset
                or getattr(batch, "crc", None) != crc):
            return batch  # not placed for certain: aiokafka's own check
        return _Checked(batch, data, start, end, crc)


def install() -> bool:
    """Have aiokafka's fetchers in this process check CRCs here (see the module);
    returns whether they do (not where google-crc32c has no compiled code).
    Idempotent."""
    if not available():
        return False
    setattr(_fetcher, "MemoryRecords", CheckedRecords)  # noqa: B010 (aiokafka's name)
    return True
