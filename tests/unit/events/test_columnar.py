"""Array messages decoded straight into columns (``app.events.columnar``).

The struct decoders may only ever be a faster way to the same block: whatever the
message, a block they make is the block the dict path (``decode_message``, then
``block_of``) makes of it, and a message the dict path's fast decoder takes whole, with
events alike and feature names learned, gets one.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import msgspec
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_block import NOT_ALIKE
from test_contract_equivalence import mutated_documents, rfc3339

from app.events import columnar, decode_pool
from app.events.block import EventBlock, block_of
from app.events.checks import OUTCOME, PREDICTION, SPECS
from app.events.columnar import Columnar
from app.events.decode import decode_message
from app.events.decode_pool import decode_payload, from_payload
from app.events.fast import fast_decoder

MAX_BYTES, MAX_ELEMENTS = 1 << 20, 50
T0 = 1_700_000_000_000


def tagged(values: Any) -> list[tuple[type, Any]]:
    """Values with their types: 1 and 1.0 and True are not the same column."""
    return [(type(v), v) for v in values]


def assert_same_block(got: EventBlock, ref: EventBlock) -> None:
    assert (got.kind, got.model, got.n) == (ref.kind, ref.model, ref.n)
    assert list(got.fields) == list(ref.fields)
    for k in ref.fields:
        assert tagged(got.fields[k]) == tagged(ref.fields[k]), k
    assert set(got.feature_names) == set(ref.feature_names)
    assert len(got.feature_names) == len(ref.feature_names)
    for arrays in ("floats", "buckets"):
        mine, theirs = getattr(got, arrays), getattr(ref, arrays)
        assert mine.keys() == theirs.keys(), arrays
        for k in theirs:
            assert mine[k].dtype == theirs[k].dtype
            assert mine[k].tobytes() == theirs[k].tobytes(), (arrays, k)
    assert got.raw.keys() == ref.raw.keys()
    for k in ref.raw:
        assert tagged(got.raw[k]) == tagged(ref.raw[k]), k
    assert (got.scores is None) == (ref.scores is None)
    if ref.scores is not None:
        assert got.scores is not None and list(got.scores) == list(ref.scores)
        for k in ref.scores:
            assert tagged(got.scores[k]) == tagged(ref.scores[k]), k


def dict_path(value: bytes, kind: str) -> EventBlock | None:
    d = decode_message(value, SPECS[kind], max_bytes=MAX_BYTES, max_elements=MAX_ELEMENTS)
    if d.rejections or d.positions is None:
        return None
    return block_of(d.events, kind, buckets=True)


def fast_takes(value: bytes, kind: str) -> bool:
    decoder = fast_decoder(SPECS[kind])
    assert decoder is not None
    try:
        doc = decoder.decode(value)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return False
    return isinstance(doc, list)


# --- generated messages ------------------------------------------------------------------

feature_names = st.lists(st.sampled_from(["x", "y", "f0", "a b", "", "é", "features",
                                          "model", 'q"', "b\\"]) | st.text(max_size=4),
                         unique=True, max_size=5)
RARELY = st.sampled_from([False] * 9 + [True])  # (not integers: hypothesis favours 0)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]
           ) -> st.SearchStrategy[Any]:
    """``good`` nine times in ten: most messages are valid, as most of the real ones."""
    return st.sampled_from([good] * 9 + [bad]).flatmap(lambda s: s)


feature_values = mostly(
    st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**63), 2**63 - 1)
    | st.booleans() | st.none() | st.text(max_size=3),
    st.integers() | st.floats() | st.lists(st.integers(), max_size=1))
probabilities = mostly(st.floats(0, 1) | st.integers(0, 1),
                       st.floats(-1, 2) | st.text(max_size=1))
timestamps = mostly(st.integers(0, 253402300799999) | rfc3339(),
                    st.integers(-5, 0) | st.sampled_from(
                        ["0000-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00", None]))


@st.composite
def prediction(draw: st.DrawFn, names: list[str], classes: list[str], model: str,
               i: int) -> dict[str, Any]:
    e: dict[str, Any] = {"prediction_id": f"p{i}", "model": model, "model_version": "v1",
                         "features": {k: draw(feature_values) for k in names},
                         "prediction": draw(st.booleans() | st.floats(0, 1)
                                            | st.sampled_from(["yes", "no"]))}
    if classes:
        e["scores"] = {c: draw(probabilities) for c in classes}
    for field, values in (("timestamp", timestamps), ("latency_ms", st.floats(0, 100)),
                          ("cost", mostly(st.integers(0, 3), st.floats(-1, 1)))):
        if draw(st.integers(0, 3)):
            e[field] = draw(values)
    return e


def mutate(draw: st.DrawFn, e: dict[str, Any]) -> Any:
    """The ways events of a message differ from one another (or break)."""
    how = draw(st.sampled_from(["model", "feature", "extra feature", "drop feature",
                                "scores", "no scores", "a class more", "segment",
                                "unknown field", "document"]))
    if not isinstance(e, dict) or not isinstance(e.get("features"), dict):
        return e  # already broken
    e = dict(e, features=dict(e["features"]))
    if how == "model":
        e["model"] = draw(st.sampled_from(["other", "bad name", ""]))
    elif how == "feature":
        e["features"][draw(st.text(max_size=3))] = draw(feature_values)
    elif how == "extra feature":
        e["features"]["zz-extra"] = 1.0
    elif how == "drop feature" and e["features"]:
        e["features"].pop(next(iter(e["features"])))
    elif how == "scores":
        e["scores"] = draw(st.dictionaries(st.sampled_from(["0", "1"]), probabilities))
    elif how == "no scores":
        e.pop("scores", None)
    elif how == "a class more":
        e["scores"] = {**e.get("scores", {}), "2": 0.5}
    elif how == "segment":
        e["segment"] = {"region": "eu"}
    elif how == "unknown field":
        e["unknown"] = draw(feature_values)
    else:
        return draw(mutated_documents("prediction"))
    return e


def text_of(draw: st.DrawFn, e: Any) -> bytes:
    """An element's JSON, now and then with a key written twice (the last one counts)."""
    raw = json.dumps(e, allow_nan=True).encode()
    if isinstance(e, dict) and e and draw(RARELY):
        key = draw(st.sampled_from(sorted(e)))
        dup = json.dumps({key: draw(feature_values)}, allow_nan=True).encode()[1:-1]
        raw = (b"{" + dup + b"," + raw[1:]) if draw(st.booleans()) else \
            (raw[:-1] + b"," + dup + b"}")
    return raw


@st.composite
def prediction_messages(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    names = draw(feature_names)
    classes = draw(st.sampled_from([[], ["1"], ["0", "1"]]))
    events: list[Any] = [draw(prediction(names, classes, "m", i))
                         for i in range(draw(st.integers(1, 5)))]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        i = draw(st.integers(0, len(events) - 1))
        events[i] = mutate(draw, events[i])
    value = b"[" + b",".join(text_of(draw, e) for e in events) + b"]"
    if draw(RARELY):
        value = json.dumps(events[0], allow_nan=True).encode()  # not an array
    learned = draw(st.sampled_from([names, names, names, list(reversed(names)), names[:-1],
                                    [*names, "w"]]))
    return value, learned


# --- the same blocks ---------------------------------------------------------------------

@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(prediction_messages())
def test_a_prediction_block_is_the_dict_paths_block(case: tuple[bytes, list[str]]) -> None:
    value, learned = case
    c = Columnar()
    c.learn(tuple(learned))
    got = c.block(value, "prediction", MAX_ELEMENTS)
    ref = dict_path(value, "prediction")
    if got is not None:
        assert ref is not None
        assert_same_block(got, ref)
    elif ref is not None and fast_takes(value, "prediction"):
        # every event alike and taken by the fast decoder: only other feature names
        # (than those learned), or names that cannot be learned, make the struct
        # decoders refuse it
        assert set(ref.feature_names) != set(learned) or not c.known()


@st.composite
def outcome_messages(draw: st.DrawFn) -> bytes:
    events: list[Any] = [
        {"prediction_id": f"p{i}", "model": "m",
         "label": draw(st.booleans() | st.integers(0, 3) | st.text(max_size=2)
                       | st.floats(allow_nan=False, allow_infinity=False))}
        for i in range(draw(st.integers(1, 5)))]
    for e in events:
        if draw(st.booleans()):
            e["timestamp"] = draw(timestamps)
    if draw(st.booleans()):
        i = draw(st.integers(0, len(events) - 1))
        events[i] = draw(mutated_documents("outcome")) if draw(st.booleans()) else dict(
            events[i], model="other")
    return b"[" + b",".join(text_of(draw, e) for e in events) + b"]"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(outcome_messages())
def test_an_outcome_block_is_the_dict_paths_block(value: bytes) -> None:
    got = Columnar().block(value, "outcome", MAX_ELEMENTS)
    ref = dict_path(value, "outcome")
    if got is not None:
        assert ref is not None
        assert_same_block(got, ref)
    else:
        assert ref is None or not fast_takes(value, "outcome")


@pytest.mark.parametrize("change", NOT_ALIKE)
def test_events_not_alike_are_no_block(change: Any) -> None:
    events = [{"prediction_id": f"p{i}", "model": "m", "model_version": "v1",
               "features": {"x": i, "c": "u"}, "prediction": True, "scores": {"1": 0.5}}
              for i in range(6)]
    c = Columnar()
    c.learn(("x", "c"))
    assert c.block(orjson.dumps(events), "prediction", 10) is not None
    change(events)
    assert c.block(orjson.dumps(events), "prediction", 10) is None


def test_the_checks_after_decoding_are_those_of_the_dict_path() -> None:
    """What the struct types cannot say: a name's pattern, a string timestamp's calendar,
    UTF-8 where msgspec skips, the element limit."""
    c = Columnar()
    c.learn(("x",))
    good = {"prediction_id": "p", "model": "m", "model_version": "1", "features": {"x": 1},
            "prediction": 1, "timestamp": "2024-01-01T00:00:00Z"}
    assert c.block(orjson.dumps([good]), "prediction", 5) is not None
    for bad in ({"model": "bad name"}, {"timestamp": "9999-12-31T23:59:59-01:00"},
                {"unknown": "\udc80"}):
        value = json.dumps([{**good, **bad}]).encode()
        if "unknown" in bad:  # a field msgspec skips, not UTF-8
            value = value.replace(b"\\udc80", b"\xff")
        assert c.block(value, "prediction", 5) is None, bad
        assert dict_path(value, "prediction") is None
    assert c.block(orjson.dumps([good] * 6), "prediction", 5) is None  # the limit
    assert c.block(b"[]", "prediction", 5) is None
    assert c.block(orjson.dumps([good]), "input", 5) is None  # not a kind it decodes


# --- learning feature names --------------------------------------------------------------

def message(names: tuple[str, ...], n: int = 3) -> bytes:
    return orjson.dumps([{"prediction_id": f"p{i}", "model": "m", "model_version": "v1",
                          "features": {k: float(i) for k in names}, "prediction": i % 2,
                          "timestamp": T0 + i} for i in range(n)])


def test_feature_names_are_learned_most_recently_used_first_and_bounded() -> None:
    c = Columnar(limit=2)
    assert c.block(message(("a",)), "prediction", 10) is None  # nothing learned yet
    c.learn(("a",))
    c.learn(("b", "c"))
    c.learn(("c", "b"))  # the same set
    assert c.known() == [("b", "c"), ("a",)]
    assert c.block(message(("a",)), "prediction", 10) is not None
    assert c.known() == [("a",), ("b", "c")]  # used: first
    c.learn(("d",))
    assert c.known() == [("d",), ("a",)]  # ("b", "c") was the least recently used
    assert c.block(message(("b", "c")), "prediction", 10) is None
    c.forget(("a",))
    assert c.known() == [("d",)]
    assert c.block(message(("a",)), "prediction", 10) is None
    for odd in ('a"b', "a\\b", "a\nb", "\x1f"):  # msgspec cannot match these
        c.learn(("x", odd))
        assert c.known() == [("d",)]


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Columnar:
    c = Columnar()
    monkeypatch.setattr(decode_pool, "COLUMNAR", c)
    return c


def test_a_decode_process_learns_from_the_blocks_it_makes_through_dicts(
        fresh: Columnar, monkeypatch: pytest.MonkeyPatch) -> None:
    value = message(("x", "y"), 4)
    first = decode_payload(value, "prediction", MAX_BYTES, MAX_ELEMENTS)
    assert fresh.known() == [("x", "y")]
    calls = []
    monkeypatch.setattr(decode_pool, "decode_message",
                        lambda *a, **k: calls.append(a) or decode_message(*a, **k))
    second = decode_payload(value, "prediction", MAX_BYTES, MAX_ELEMENTS)
    assert calls == []  # straight into columns
    assert first is not None and second is not None
    a = from_payload(pickle.loads(first), value, "prediction", max_bytes=MAX_BYTES,
                     max_elements=MAX_ELEMENTS).events
    b = from_payload(pickle.loads(second), value, "prediction", max_bytes=MAX_BYTES,
                     max_elements=MAX_ELEMENTS).events
    assert type(a) is EventBlock and type(b) is EventBlock
    assert_same_block(b, a)
    assert list(a) == list(b)  # the events themselves, decoded again when asked for


def test_feature_names_of_messages_not_alike_are_forgotten(fresh: Columnar) -> None:
    """A message whose first event has learned names but a later one others is tried in
    vain, possibly to its end: its names are not tried again until a block teaches them."""
    fresh.learn(("x",))
    events = orjson.loads(message(("x",), 4))
    events[3]["features"]["extra"] = 1
    value = orjson.dumps(events)
    assert decode_payload(value, "prediction", MAX_BYTES, MAX_ELEMENTS) is None
    assert fresh.known() == []
    assert decode_payload(message(("x",)), "prediction", MAX_BYTES, MAX_ELEMENTS)
    assert fresh.known() == [("x",)]


def test_a_single_event_and_an_oversized_message_take_the_dict_path(fresh: Columnar) -> None:
    fresh.learn(("x",))
    one = orjson.dumps(orjson.loads(message(("x",), 1))[0])
    payload = decode_payload(one, "prediction", MAX_BYTES, MAX_ELEMENTS)
    assert payload is not None and pickle.loads(payload)["array"] is False
    assert decode_payload(message(("x",)), "prediction", 10, MAX_ELEMENTS) is None


def test_numbers_beside_text_in_one_feature_are_raw_values() -> None:
    c = Columnar()
    c.learn(("x", "y", "z"))
    events = orjson.loads(message(("x", "y", "z"), 4))
    events[2]["features"]["y"] = "two"  # y: not numbers everywhere
    events[0]["features"]["z"] = None
    events[1]["features"]["x"] = True
    got = c.block(orjson.dumps(events), "prediction", 10)
    assert got is not None
    assert got.floats["x"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert got.raw == {"y": [0.0, 1.0, "two", 3.0], "z": [None, 1.0, 2.0, 3.0]}
    assert isinstance(got.floats["x"], np.ndarray)
    ref = dict_path(orjson.dumps(events), "prediction")
    assert ref is not None
    assert_same_block(got, ref)


def test_the_struct_columns_come_in_the_order_of_the_block_fields() -> None:
    assert columnar._TOP["prediction"][6][0] == "model"
    decoder = columnar._decoder("prediction", ("x",))
    info = msgspec.inspect.type_info(decoder.type.__args__[0])  # type: ignore[attr-defined]
    assert [f.name for f in info.fields] == [f for f, _, _ in columnar._TOP["prediction"]] + [
        "features"]
    assert OUTCOME is SPECS["outcome"] and PREDICTION is SPECS["prediction"]
