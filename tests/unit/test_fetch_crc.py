"""Fetched record batches' CRCs checked with the processor's instruction
(``app.fetch_crc``): the same records, and the same refusals, as aiokafka's own check."""

from __future__ import annotations

import inspect
import struct

import pytest
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.legacy_records import LegacyRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from app import fetch_crc
from app.fetch_crc import CheckedRecords

pytestmark = pytest.mark.skipif(not fetch_crc.available(),
                                reason="google-crc32c has no compiled implementation here")
TP0 = TopicPartition("t", 0)


def batch(offset: int, values: list[bytes]) -> bytes:
    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0,
                                  producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                  batch_size=1 << 30)
    for i, v in enumerate(values):
        b.append(i, timestamp=1_700_000_000_000, key=b"k", value=v, headers=[])
    raw = bytearray(b.build())
    struct.pack_into(">q", raw, 0, offset)
    return bytes(raw)


def fetched(data: bytes, records: type) -> list[tuple[int, bytes]]:
    """What aiokafka's fetcher hands on from a partition's fetched bytes (checking
    CRCs), its records made by ``records``."""
    part = fetcher.PartitionRecords(TP0, records(data), [], 0, None, None, True, 0)
    return [(r.offset, r.value) for r in part._unpack_records()]


DATA = batch(0, [b"a" * 300, b"b" * 50]) + batch(2, [b"c" * 7000]) + batch(3, [b"d"])


def test_the_same_records_as_aiokafka_each_batch_checked_here(monkeypatch):
    calls = []
    value = fetch_crc.google_crc32c.value
    monkeypatch.setattr(fetch_crc.google_crc32c, "value",
                        lambda body: calls.append(len(body)) or value(body))
    assert fetched(DATA, CheckedRecords) == fetched(DATA, MemoryRecords) == [
        (0, b"a" * 300), (1, b"b" * 50), (2, b"c" * 7000), (3, b"d")]
    assert len(calls) == 3  # every batch, by the instruction, not by aiokafka's code
    # a fetch cut short by its size: the partial last batch is no batch, as for aiokafka
    cut = DATA[:-5]
    assert fetched(cut, CheckedRecords) == fetched(cut, MemoryRecords) == [
        (0, b"a" * 300), (1, b"b" * 50), (2, b"c" * 7000)]


@pytest.mark.parametrize("where", ["value", "crc field", "attributes"])
def test_a_corrupt_batch_is_refused_after_the_records_before_it(where):
    first = len(batch(0, [b"a" * 300, b"b" * 50]))
    at = {"value": first + 100, "crc field": first + 17, "attributes": first + 21}[where]
    bad = bytearray(DATA)
    bad[at] ^= 0x40
    for records in (CheckedRecords, MemoryRecords):  # the same with aiokafka's check
        part = fetcher.PartitionRecords(TP0, records(bytes(bad)), [], 0, None, None, True, 0)
        got = []
        with pytest.raises(CorruptRecordException, match="Invalid CRC"):
            for r in part._unpack_records():
                got.append(r.offset)
        assert got == [0, 1]


def test_batches_it_cannot_place_are_checked_by_aiokafka():
    legacy = LegacyRecordBatchBuilder(magic=1, compression_type=0, batch_size=1 << 20)
    for i, v in enumerate((b"old", b"older")):
        legacy.append(i, timestamp=1_700_000_000_000, key=b"k", value=v)
    old = bytes(legacy.build())  # message format v1: another CRC, over other bytes
    recs = CheckedRecords(old)
    assert type(recs.next_batch()) is not fetch_crc._Checked
    assert fetched(old, CheckedRecords) == fetched(old, MemoryRecords) == [
        (0, b"old"), (1, b"older")]
    # a v2 batch whose header is not where the walk expects it: left to aiokafka
    recs = CheckedRecords(DATA)
    recs._pos = 3
    assert type(recs.next_batch()) is not fetch_crc._Checked
    # bytes that are not a bytes object are refused as aiokafka refuses them
    with pytest.raises(TypeError):
        MemoryRecords(bytearray(DATA))
    with pytest.raises(TypeError):
        CheckedRecords(bytearray(DATA))


def test_install_puts_the_check_where_aiokafkas_fetcher_makes_its_records(monkeypatch):
    monkeypatch.setattr(fetcher, "MemoryRecords", MemoryRecords)
    # aiokafka's fetcher looks the name up when it makes a partition's records ...
    assert "MemoryRecords(part_data[-1])" in inspect.getsource(fetcher.Fetcher)
    assert fetch_crc.install() and fetch_crc.install()  # (idempotent)
    assert fetcher.MemoryRecords is CheckedRecords  # ... and finds this
    monkeypatch.setattr(fetch_crc.google_crc32c, "implementation", "python")
    monkeypatch.setattr(fetcher, "MemoryRecords", MemoryRecords)
    assert not fetch_crc.install() and fetcher.MemoryRecords is MemoryRecords
