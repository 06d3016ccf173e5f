"""Fuzzing the input decoders: every message value decodes to valid events and rejections.

Whatever the bytes, :func:`app.events.decode.decode_message` returns (never raises, never
hangs) with each element either a valid event or a :class:`Rejection` with a known
reason, the fast path (msgspec) and the precise path agree, and a rejected element's
bytes are JSON text the dead-letter consumers can read back. Costs are bounded by the
structure, not by timing: what is over ``max_bytes`` is never parsed, what has more
than ``max_elements`` elements or nests deeper than the JSON readers allow is refused
whole.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from fuzz_support import mutated, same, values
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.events.checks import MAX_EPOCH_MS, MAX_FEATURES, SPECS, check_event
from app.events.decode import Decoded, _deep_text, decode_message, element_bytes

EXAMPLES = Path(__file__).resolve().parents[3] / "schemas" / "examples"
STEMS = {"prediction": "prediction", "outcome": "outcome", "input": "input",
         "model_event": "model-event"}
KINDS = list(STEMS)
VALID = {kind: json.loads((EXAMPLES / f"{stem}.json").read_text())
         for kind, stem in STEMS.items()}
REASONS = {"empty_value", "payload_too_large", "invalid_json", "too_many_elements",
           "schema_violation", "non_finite_number"}
WHOLE_ONLY = {"empty_value", "payload_too_large", "invalid_json", "too_many_elements"}


def dumps(doc: Any) -> bytes:
    """JSON text as a careless producer writes it: NaN, huge integers and lone surrogates
    (as \\ud800 escapes) included."""
    return json.dumps(doc, allow_nan=True).encode()


def read_back(raw: bytes) -> Any:
    """Dead-lettered JSON text as a consumer reads it (orjson; NaN: the standard library)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw.decode("utf-8"))


def assert_well_formed(value: bytes | None, d: Decoded, kind: str, *, max_bytes: int,
                       max_elements: int) -> None:
    spec = SPECS[kind]
    assert isinstance(d, Decoded)
    for r in d.rejections:
        assert r.reason in REASONS, r
        assert isinstance(r.detail, str) and r.detail
        assert isinstance(r.raw, bytes)
    if value is not None and len(value) > max_bytes:
        assert [r.reason for r in d.rejections] == ["payload_too_large"] and not d.events
    if d.positions is None:  # the message as a whole: one event or one rejection
        assert len(d.events) + len(d.rejections) == 1
        for r in d.rejections:
            assert r.index is None and r.raw == (value or b"")
    else:  # an array: each element is an event or a rejection, in order
        assert len(d.positions) == len(d.events) <= max_elements
        indices = [r.index for r in d.rejections]
        assert all(type(i) is int for i in indices)
        assert sorted(d.positions + indices) == list(range(len(d.positions) + len(indices)))
        assert d.positions == sorted(d.positions) and indices == sorted(indices)
        for r in d.rejections:
            assert r.reason not in WHOLE_ONLY
            # the element's own JSON text (NaN kept as the producer wrote it)
            read_back(r.raw)
    for e in d.events:
        assert type(e) is dict
        assert check_event(spec, e) is None  # raises NonFinite for a NaN: a failure too
        # what the worker dead-letters when the event names an unknown model or source
        raw = element_bytes(value or b"", e, d)
        assert isinstance(raw, bytes)
        if d.positions is not None:
            read_back(raw)


def decode_both(value: bytes | None, kind: str, *, max_bytes: int = 1 << 20,
                max_elements: int = 100) -> Decoded:
    """Decode with the fast path and without; both well formed, both the same."""
    fast = decode_message(value, SPECS[kind], max_bytes=max_bytes, max_elements=max_elements)
    precise = decode_message(value, SPECS[kind], max_bytes=max_bytes,
                             max_elements=max_elements, fast=False)
    for d in (fast, precise):
        assert_well_formed(value, d, kind, max_bytes=max_bytes, max_elements=max_elements)
    assert fast.positions == precise.positions
    assert fast.rejections == precise.rejections
    known = {f for f, _, _ in SPECS[kind]}  # the fast path drops fields nothing reads
    assert same([{k: v for k, v in e.items() if k in known} for e in fast.events],
                [{k: v for k, v in e.items() if k in known} for e in precise.events])
    return fast


# --- generated inputs ----------------------------------------------------------------

kinds = st.sampled_from(KINDS)
#: JSON text pieces: assembled at random they make mostly broken, sometimes valid JSON
TOKENS = ["[", "]", "{", "}", ",", ":", '"model"', '"churn"', '"prediction_id"', '"p1"',
          '"label"', '"features"', '"record"', '"source"', '"timestamp"', "1", "-1", "0.5",
          "NaN", "Infinity", "-Infinity", "1e400", "1" * 400, "1" * 5000, "true", "null",
          '"\\ud800"', '"\\udc00\\ud800"', '"\\ud83d\\ude00"', '"\xff"', "\x00", " ", "\n",
          "\ufeff", '"a"', "01", "1.", ".5", "-", '"', "\\"]


@st.composite
def token_soup(draw: st.DrawFn) -> bytes:
    text = "".join(draw(st.lists(st.sampled_from(TOKENS), max_size=30)))
    return text.encode("utf-8", "surrogatepass")


@st.composite
def mutated_events(draw: st.DrawFn, kind: str) -> Any:
    """A valid event of ``kind`` with defects, alone or in an array with valid ones."""
    doc = draw(mutated(VALID[kind]))
    shape = draw(st.sampled_from(["alone", "array", "array"]))
    if shape == "alone":
        return doc
    docs = [doc] + [VALID[kind]] * draw(st.integers(0, 3))
    return draw(st.permutations(docs))


@st.composite
def byte_mutations(draw: st.DrawFn, kind: str) -> bytes:
    """A valid message's bytes with bytes flipped, inserted, deleted or cut off."""
    raw = bytearray(dumps(draw(st.sampled_from([VALID[kind], [VALID[kind]] * 2]))))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(raw) - 1))
        how = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if how == "flip":
            raw[i] = draw(st.integers(0, 255))
        elif how == "insert":
            raw[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif how == "delete":
            del raw[i]
        else:
            del raw[i:]
        if not raw:
            break
    return bytes(raw)


@settings(max_examples=150)
@given(kind=kinds, value=st.binary(max_size=200) | token_soup())
# RecursionError once: a rejected element nested deeper than json.dumps recurses
@example(kind="input", value=b'[{"source":5,"record":' + b'{"a":' * 1020 + b'1'
         + b'}' * 1020 + b'}]')
# fast and precise paths disagreed once: more digits than Python converts (4 300), in a
# field nothing reads (msgspec skipped it, the standard library raised ValueError)
@example(kind="outcome", value=b'{"prediction_id":"a","model":"m","label":1,"x":'
         + b"9" * 5000 + b'}')
# NaN sends a deep message to the standard library: read, or refused as nested too deeply
@example(kind="outcome", value=b'[{"prediction_id":"a","model":"m","label":1,"x":NaN,'
         + b'"y":' + b'[' * 990 + b']' * 990 + b'}]')
# the fast path once accepted bytes that are not UTF-8, in a field it skips
@example(kind="outcome", value=b'{"prediction_id":"a","model":"m","label":1,"\x80":1}')
def test_any_bytes_decode_to_events_and_rejections(kind, value):
    decode_both(value, kind)


@settings(max_examples=200)
@given(kind=kinds, data=st.data())
def test_mutated_events_are_accepted_or_rejected_alone(kind, data):
    doc = data.draw(mutated_events(kind))
    value = dumps(doc)
    n = len(doc) if isinstance(doc, list) else 1
    max_elements = data.draw(st.sampled_from([max(n - 1, 1), n, 100]))
    max_bytes = data.draw(st.sampled_from([len(value) - 1, len(value), 1 << 20]))
    d = decode_both(value, kind, max_bytes=max(max_bytes, 1), max_elements=max_elements)
    if isinstance(doc, list) and d.positions is not None:
        # a bad element never rejects its neighbours
        assert len(d.positions) >= sum(1 for e in doc if e == VALID[kind])


@settings(max_examples=150)
@given(kind=kinds, data=st.data())
def test_byte_mutations_of_valid_messages(kind, data):
    decode_both(data.draw(byte_mutations(kind)), kind)


@settings(max_examples=100)
@given(kind=kinds, doc=values)
def test_arbitrary_json_values(kind, doc):
    decode_both(dumps(doc), kind)
    decode_both(dumps([doc, VALID[kind]]), kind)


@settings(max_examples=100)
@given(kind=kinds, data=st.data())
def test_duplicate_keys_last_wins_on_both_paths(kind, data):
    """``{"a": 1, "a": 2}`` reads as ``{"a": 2}`` (orjson, msgspec and the standard
    library agree): a duplicated key is never a way past validation."""
    doc = dict(VALID[kind])
    key = data.draw(st.sampled_from(sorted(doc)))
    first, last = data.draw(values), data.draw(st.sampled_from([doc[key]]) | values)
    body = ",".join(f"{json.dumps(k)}:{json.dumps(v, allow_nan=True)}" for k, v in doc.items())
    dup = f'{{{json.dumps(key)}:{json.dumps(first, allow_nan=True)},{body},' \
          f'{json.dumps(key)}:{json.dumps(last, allow_nan=True)}}}'.encode()
    wins = {**doc, key: last}
    for value, expect in ((dup, dumps(wins)), (b"[" + dup + b"]", dumps([wins]))):
        got, want = decode_both(value, kind), decode_both(expect, kind)
        assert got.positions == want.positions and same(got.events, want.events)
        assert [(r.reason, r.detail, r.index) for r in got.rejections] == [
            (r.reason, r.detail, r.index) for r in want.rejections]


@settings(max_examples=100)
@given(doc=values)
def test_the_iterative_writer_writes_what_json_dumps_writes(doc):
    """Dead letters of elements nested deeper than ``json.dumps`` recurses are written
    by ``_deep_text``: the same text."""
    assert _deep_text(doc) == json.dumps(doc, allow_nan=True, ensure_ascii=False,
                                         separators=(",", ":"))


# --- explicit input classes, with structural cost bounds ------------------------------

def reasons(d: Decoded) -> list[tuple[str, int | None]]:
    return [(r.reason, r.index) for r in d.rejections]


DEEP = 100_000


@pytest.mark.parametrize("value", [
    b"[" * DEEP,
    b"[" * DEEP + b"]" * DEEP,
    b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    b'{"prediction_id":"p","model":"m","label":' + b"[" * DEEP + b"]" * DEEP + b"}",
    b'{"source":"s","record":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}",
    b'[{"source":"s","record":{}},' + b"[" * DEEP + b"]" * DEEP + b"]",
    b'{"prediction_id":"p","model":"m","label":NaN,"x":' + b"[" * DEEP + b"]" * DEEP + b"}",
], ids=["open", "closed", "objects", "in-a-field", "in-a-record", "in-an-element", "with-nan"])
def test_nesting_deeper_than_the_readers_allow_is_refused_whole(value):
    for kind in KINDS:
        started = time.perf_counter()
        d = decode_both(value, kind, max_bytes=len(value))
        # a loose bound only (it takes milliseconds): no hang, no quadratic blow-up
        assert time.perf_counter() - started < 5
        assert reasons(d) == [("invalid_json", None)]
        assert d.rejections[0].detail in ("nested too deeply",) or "depth" in \
            d.rejections[0].detail


@pytest.mark.parametrize("depth", [10, 200, 600, 1000, 1022])
def test_records_nested_as_deep_as_orjson_reads_decode_and_dead_letter(depth):
    """orjson reads 1024 levels; a record that deep is valid, and a rejected or unknown
    element that deep is still written out as its own JSON text (not by recursion)."""
    record = b'{"a":' * depth + b"1" + b"}" * depth
    ok = b'{"source":"s","record":' + record + b"}"
    bad = b'{"source":5,"record":' + record + b"}"
    d = decode_both(b"[" + ok + b"," + bad + b"]", "input")
    assert d.positions == [0] and reasons(d) == [("schema_violation", 1)]
    assert d.rejections[0].raw == bad  # compact JSON text, as the producer wrote it
    assert element_bytes(b"", d.events[0], d) == ok


def test_a_value_over_max_bytes_is_never_parsed():
    value = b"[" * (1 << 20)  # would cost a parse; refused on its length alone
    d = decode_both(value, "prediction", max_bytes=len(value) - 1)
    assert reasons(d) == [("payload_too_large", None)] and d.rejections[0].raw is value


def test_arrays_over_max_elements_are_refused_whole():
    good = VALID["outcome"]
    for elements in ([good] * 1001, [1] * 100_001, [[]] * 5000):
        value = dumps(elements)
        d = decode_both(value, "outcome", max_bytes=len(value), max_elements=1000)
        assert reasons(d) == [("too_many_elements", None)] and not d.events


def test_thousands_of_features():
    doc = VALID["prediction"]
    at_limit = {**doc, "features": {f"f{i}": i for i in range(MAX_FEATURES)}}
    over = {**doc, "features": {f"f{i}": i for i in range(100_000)}}
    assert len(decode_both(dumps(at_limit), "prediction", max_bytes=1 << 22).events) == 1
    d = decode_both(dumps(over), "prediction", max_bytes=1 << 22)
    assert reasons(d) == [("schema_violation", None)]
    assert d.rejections[0].detail == f"features: must have at most {MAX_FEATURES} properties"


def test_unknown_fields_are_allowed_and_dropped_by_the_fast_path():
    doc = {**VALID["outcome"], "extra": {"nested": [1, 2]}, "zz": None}
    fast = decode_message(dumps(doc), SPECS["outcome"], max_bytes=1 << 16, max_elements=10)
    precise = decode_message(dumps(doc), SPECS["outcome"], max_bytes=1 << 16,
                             max_elements=10, fast=False)
    assert fast.events == [VALID["outcome"]] and precise.events == [doc]


@pytest.mark.parametrize("value", [
    b"\xff", b'{"model":"\xc3\x28"}', b"\xef\xbb\xbf{}", b'["\xed\xa0\x80"]',  # CESU surrogate
    b'{"prediction_id":"p","model":"m","label":1,"unknown":"\x80"}',  # where msgspec skips
])
def test_non_utf8_is_invalid_json(value):
    assert reasons(decode_both(value, "outcome")) == [("invalid_json", None)]


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\udfff", b"\\udc00\\ud800"])
@pytest.mark.parametrize("where", ["value", "key", "unknown field", "record"])
def test_lone_surrogates_are_invalid_json(escape, where):
    good = b'"prediction_id":"p","model":"m","label":1'
    body = {"value": b'"prediction_id":"p' + escape + b'","model":"m","label":1',
            "key": good + b',"' + escape + b'":1',
            "unknown field": good + b',"x":"' + escape + b'"',
            "record": good + b',"record":{"x":"' + escape + b'"}'}[where]
    for value in (b"{" + body + b"}", b"[{" + body + b"}]"):
        d = decode_both(value, "outcome")
        assert reasons(d) == [("invalid_json", None)] and "surrogate" in d.rejections[0].detail


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"])
def test_non_finite_numbers_reject_their_element_only(literal):
    bad = b'{"prediction_id":"p","model":"m","label":' + literal + b"}"
    d = decode_both(b"[" + bad + b"," + dumps(VALID["outcome"]) + b"]", "outcome")
    assert d.positions == [1] and reasons(d) == [("non_finite_number", 0)]
    # a non-finite number in a field nothing reads is kept (the precise path reads it)
    extra = dumps(VALID["outcome"])[:-1] + b',"x":' + literal + b"}"
    assert len(decode_both(extra, "outcome").events) == 1


def test_huge_integers():
    doc = VALID["prediction"]
    # beyond 64 bits: read (orjson as a float, beyond the double range exactly)
    for big, read in ((2**64 + 1, float(2**64 + 1)), (10**400, 10**400)):
        d = decode_both(dumps([{**doc, "features": {"x": big}}]), "prediction")
        assert d.positions == [0] and d.events[0]["features"]["x"] == read
    # out of range where a range applies
    for field, big in (("timestamp", 10**400), ("scores", {"true": 10**400})):
        d = decode_both(dumps([{**doc, field: big}]), "prediction")
        assert reasons(d) == [("schema_violation", 0)]
    # more digits than Python converts (4 300): read as the float it spells, like 1e400
    text = dumps([doc])[:-2] + b',"latency_ms":' + b"9" * 5000 + b"}]"
    assert reasons(decode_both(text, "prediction")) == [("non_finite_number", 0)]
    text = dumps([doc])[:-2] + b',"unknown":-' + b"9" * 5000 + b"}]"
    assert decode_both(text, "prediction").positions == [0]


@pytest.mark.parametrize(("timestamp", "ok"), [
    (0, True), (MAX_EPOCH_MS, True), (MAX_EPOCH_MS + 1, False), (-1, False), (1e300, False),
    (1.5, False), ("9999-12-31T23:59:59.999Z", True), ("9999-12-31T23:59:59.999-00:01", False),
    ("0001-01-01T00:00:00Z", True), ("0001-01-01T00:00:00+00:01", False),
    ("0000-01-01T00:00:00Z", False), ("2024-02-30T00:00:00Z", False),
    ("1969-12-31T23:59:59Z", True), ("2024-01-01T00:00:00", False), (True, False),
])
def test_timestamps_out_of_range(timestamp, ok):
    """Times are instants from 0001-01-01 to 9999-12-31 UTC (what RFC 3339 can write)."""
    for kind in KINDS:
        d = decode_both(dumps([{**VALID[kind], "timestamp": timestamp}]), kind)
        assert (d.positions == [0]) is ok, (kind, timestamp, reasons(d))


@pytest.mark.parametrize("value", [None, b"", b"[]", b" ", b"null", b"0", b'""', b"{}"])
def test_empty_and_trivial_values(value):
    for kind in KINDS:
        d = decode_both(value, kind)
        assert not d.events and len(d.rejections) == 1


@settings(max_examples=50)
@given(kind=kinds, field=st.sampled_from(["prediction_id", "model", "label", "features",
                                          "record", "source", "timestamp", "scores", "event",
                                          "metrics", "segment", "latency_ms"]),
       bad=values)
def test_wrong_types_everywhere(kind, field, bad):
    d = decode_both(dumps([{**VALID[kind], field: bad}, VALID[kind]]), kind)
    if d.positions is None:  # text no reader takes (a lone surrogate): the whole message
        assert reasons(d) == [("invalid_json", None)]
    else:  # else the bad element alone
        assert 1 in d.positions
