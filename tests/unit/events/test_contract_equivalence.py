"""The precompiled runtime checks accept exactly what the JSON Schemas accept.

For every input event type, hypothesis builds valid documents and mutates them in many
ways (fields removed, wrong types, booleans where numbers belong, over-long strings, bad
names, out-of-range numbers, bad timestamps, non-object containers, nested bad values,
non-object documents). For every document the reference validator and
``app.events.checks.check_event`` must give the same verdict.

Two things are deliberately outside the equivalence, each with its own explicit test:

* NaN and infinities are not JSON; the runtime raises ``NonFinite`` for them (the decoder
  dead-letters such an element as ``non_finite_number``), so generated values are finite.
* The runtime also rejects timestamps that match the RFC 3339 pattern but name no real
  calendar date-time (February 30, year 0000, a non-ASCII digit that ``\\d`` matches).
  A regular expression cannot express the calendar, so the schema accepts them; the
  generated RFC 3339 strings are built from real datetimes (ASCII digits) and the
  "bad timestamp" mutations break the pattern itself, never only the calendar.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from app.events.checks import (
    MAX_EPOCH_MS,
    MAX_FEATURES,
    MODEL_EVENT_KINDS,
    SPECS,
    NonFinite,
    Spec,
    check_event,
)
from app.events.decode import decode_message

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
EXAMPLES = SCHEMAS / "examples"

# spec name in SPECS -> schema file stem
STEMS = {"prediction": "prediction", "outcome": "outcome", "input": "input",
         "model_event": "model-event"}
VALIDATORS = {
    kind: Draft202012Validator(json.loads((SCHEMAS / f"{stem}.schema.json").read_text()))
    for kind, stem in STEMS.items()
}


def runtime_ok(kind: str, doc: Any) -> bool:
    return check_event(SPECS[kind], doc) is None


def schema_ok(kind: str, doc: Any) -> bool:
    return VALIDATORS[kind].is_valid(doc)


def assert_agree(kind: str, doc: Any) -> bool:
    by_schema, by_runtime = schema_ok(kind, doc), runtime_ok(kind, doc)
    assert by_schema == by_runtime, (
        f"schema says {'valid' if by_schema else 'invalid'}, runtime says "
        f"{check_event(SPECS[kind], doc)!r} for {doc!r}")
    return by_schema


# --- JSON values (finite numbers only) -----------------------------------------------

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | st.integers() | finite_floats | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)
json_containers = (st.lists(json_values, max_size=3)
                   | st.dictionaries(st.text(max_size=8), json_values, max_size=3))
non_objects = json_scalars | st.lists(json_values, max_size=3)

# --- valid field values --------------------------------------------------------------

NAME_CHARS = string.ascii_letters + string.digits + "._-"


def sized_text(lo: int, hi: int, alphabet: str | None = None) -> st.SearchStrategy[str]:
    """Text of lo..hi characters, often exactly lo or hi (the boundaries)."""
    def exact(n: int) -> st.SearchStrategy[str]:
        if alphabet is None:
            return st.text(min_size=n, max_size=n)
        return st.text(alphabet=alphabet, min_size=n, max_size=n)

    return st.sampled_from([lo, hi]).flatmap(exact) | (
        st.text(min_size=lo, max_size=hi) if alphabet is None
        else st.text(alphabet=alphabet, min_size=lo, max_size=hi))


def too_long(hi: int, alphabet: str | None = None) -> st.SearchStrategy[str]:
    return sized_text(hi + 1, hi + 3, alphabet)


names = sized_text(1, 64, NAME_CHARS)
idents = sized_text(1, 128)
numbers = st.integers() | finite_floats
scalars = st.booleans() | numbers | st.text(max_size=20)
nullable_scalars = st.none() | scalars
non_negative = st.integers(min_value=0) | st.floats(min_value=0, allow_infinity=False)
probabilities = st.integers(0, 1) | st.floats(0, 1)


@st.composite
def rfc3339(draw: st.DrawFn) -> str:
    """An RFC 3339 string the pattern accepts, for a real date-time (ASCII digits)."""
    # Years 2-9998: an offset cannot push them outside the representable range (9999-12-31
    # at -23:59 is past year 9999 in UTC: the runtime rejects that one, the pattern cannot).
    dt = draw(st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)))
    sep = draw(st.sampled_from("Tt "))
    digits = draw(st.integers(0, 9))
    frac = "" if digits == 0 else "." + f"{dt.microsecond:06d}{draw(st.integers(0, 999)):03d}"[
        :digits]
    offset = draw(st.sampled_from(["Z", "z", "offset"]))
    if offset == "offset":
        minutes = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
        sign = "-" if minutes < 0 else "+"
        offset = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    # (not strftime: %Y does not zero-pad years before 1000)
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}{sep}"
            f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}{frac}{offset}")


epoch_ms = (st.integers(min_value=0, max_value=MAX_EPOCH_MS)
            | st.integers(min_value=0, max_value=MAX_EPOCH_MS).map(float))
timestamps = rfc3339() | epoch_ms


def scalar_maps(values: st.SearchStrategy[Any], max_size: int = 5) -> st.SearchStrategy[Any]:
    return st.dictionaries(st.text(max_size=12), values, max_size=max_size)


# field -> (required, valid values) per event type, in the order of checks.py
FIELDS: dict[str, dict[str, tuple[bool, st.SearchStrategy[Any]]]] = {
    "prediction": {
        "prediction_id": (True, idents),
        "model": (True, names),
        "model_version": (True, idents),
        "features": (True, scalar_maps(nullable_scalars, 8)),
        "prediction": (True, scalars),
        "timestamp": (False, timestamps),
        "scores": (False, scalar_maps(probabilities)),
        "latency_ms": (False, non_negative),
        "cost": (False, non_negative),
        "segment": (False, scalar_maps(st.text(max_size=12))),
    },
    "outcome": {
        "prediction_id": (True, idents),
        "model": (True, names),
        "label": (True, scalars),
        "timestamp": (False, timestamps),
    },
    "input": {
        "source": (True, names),
        "record": (True, st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
        "timestamp": (False, timestamps),
        "record_id": (False, idents),
    },
    "model_event": {
        "model": (True, names),
        "version": (True, idents),
        "event": (True, st.sampled_from(sorted(MODEL_EVENT_KINDS))),
        "timestamp": (False, timestamps),
        "metrics": (False, scalar_maps(numbers)),
        "trigger_id": (False, idents),
        "reference": (False, sized_text(1, 1024)),
    },
}


def test_fields_table_matches_the_runtime_specs():
    for kind, fields in FIELDS.items():
        assert [(f, req) for f, (req, _) in fields.items()] == [
            (f, req) for f, req, _ in SPECS[kind]]


@st.composite
def valid_documents(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for field, (required, values) in FIELDS[kind].items():
        if required or draw(st.booleans()):
            doc[field] = draw(values)
    extra = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=2))
    doc.update({k: v for k, v in extra.items() if k not in FIELDS[kind]})
    return doc


# --- invalid field values ------------------------------------------------------------

bad_names = st.one_of(
    st.just(""),
    too_long(64, NAME_CHARS),
    # a character outside [A-Za-z0-9._-] somewhere in an otherwise good name
    st.tuples(st.text(alphabet=NAME_CHARS, max_size=10),
              st.characters().filter(lambda c: c not in NAME_CHARS),
              st.text(alphabet=NAME_CHARS, max_size=10)).map("".join),
    st.sampled_from(["churn model", "churn/v2", "chürn", "churn\n\n", "\nchurn", "ch\nurn",
                     "churn\n"]),  # "churn\n": `$` matches before a final newline, in both
    st.text(max_size=70),
)
bad_idents = st.just("") | too_long(128)


Draw = Any  # hypothesis' draw function

# Ways to break a valid RFC 3339 string so that the pattern itself rejects it.
BREAKS: dict[str, Callable[[str, Draw], str]] = {
    "month": lambda g, d: g[:5] + d(st.sampled_from(["00", "13", "19", "1", "001"])) + g[7:],
    "day": lambda g, d: g[:8] + d(st.sampled_from(["00", "32", "40", "1"])) + g[10:],
    "separator": lambda g, d: g[:10] + d(st.sampled_from(["x", "_", "", "TT"])) + g[11:],
    "hour": lambda g, d: g[:11] + d(st.sampled_from(["24", "25", "1"])) + g[13:],
    "minute": lambda g, d: g[:14] + d(st.sampled_from(["60", "99", "1"])) + g[16:],
    "second": lambda g, d: g[:17] + d(st.sampled_from(["60", "61", "1"])) + g[19:],
    "no offset": lambda g, d: g[:-1] if g[-1] in "Zz" else g[:-6],
    "ten fraction digits": lambda g, d: g[:19] + ".1234567890" + g[19:].lstrip(".0123456789"),
    "empty fraction": lambda g, d: g[:19] + "." + g[19:].lstrip(".0123456789"),
    "offset hour 24": lambda g, d: g[:19] + d(st.sampled_from(["+24:00", "-24:00"])),
    "offset without colon": lambda g, d: g[:19] + d(st.sampled_from(["+0100", "+01", "-1:00"])),
    "trailing junk": lambda g, d: g + d(st.sampled_from(["x", " ", "Z", "\n\n", "\n "])),
    "leading junk": lambda g, d: d(st.sampled_from([" ", "\n", "x"])) + g,
    "date only": lambda g, d: g[:10],
    "year digits": lambda g, d: d(st.sampled_from(["0", "12345", "99", "-2024"])) + g[4:],
}


@st.composite
def near_miss_timestamps(draw: st.DrawFn, which: str | None = None) -> str:
    """A valid RFC 3339 string with one part broken so that the pattern rejects it."""
    good = draw(rfc3339())
    return BREAKS[which or draw(st.sampled_from(sorted(BREAKS)))](good, draw)


def either(*options: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Pick one of ``options`` with equal weight (``st.one_of`` flattens nested one_ofs,
    which would drown a targeted option among the branches of a broad one)."""
    return st.sampled_from(options).flatmap(lambda option: option)


bad_timestamps = either(
    near_miss_timestamps(),
    st.text(max_size=30),
    st.integers(max_value=-1),
    st.integers(min_value=MAX_EPOCH_MS + 1),
    st.floats(max_value=-1e-300, allow_infinity=False),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not v.is_integer()),
    st.booleans(),
    st.none(),
    json_containers,
)


def not_number() -> st.SearchStrategy[Any]:
    # booleans first: they are the values most easily mistaken for numbers
    return st.booleans() | json_values.filter(
        lambda v: isinstance(v, bool) or not isinstance(v, int | float))


def not_scalar(nullable: bool) -> st.SearchStrategy[Any]:
    return json_containers if nullable else json_containers | st.none()


def map_with_a_bad_value(good: st.SearchStrategy[Any],
                         bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.tuples(good, st.text(max_size=8), bad).map(lambda t: {**t[0], t[1]: t[2]})


# field -> invalid (or at least suspicious) values
BAD: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "prediction": {
        "prediction_id": bad_idents | non_objects.filter(lambda v: not isinstance(v, str)),
        "model": bad_names | json_containers | st.integers() | st.booleans() | st.none(),
        "model_version": bad_idents | st.integers() | st.none() | json_containers,
        "features": either(
            map_with_a_bad_value(FIELDS["prediction"]["features"][1], st.lists(json_values)),
            map_with_a_bad_value(FIELDS["prediction"]["features"][1], json_containers),
            non_objects),
        "prediction": not_scalar(nullable=False),
        "timestamp": bad_timestamps,
        "scores": either(
            map_with_a_bad_value(FIELDS["prediction"]["scores"][1], either(
                st.floats(min_value=1, max_value=1.5, exclude_min=True),
                st.floats(min_value=1, exclude_min=True, allow_infinity=False),
                st.floats(min_value=-0.5, max_value=0, exclude_max=True),
                st.floats(max_value=0, exclude_max=True, allow_infinity=False),
                st.integers(min_value=2) | st.integers(max_value=-1),
                not_number())),
            non_objects),
        "latency_ms": (st.floats(max_value=0, exclude_max=True, allow_infinity=False)
                       | st.integers(max_value=-1) | not_number()),
        "cost": (st.floats(max_value=0, exclude_max=True, allow_infinity=False)
                 | st.integers(max_value=-1) | not_number()),
        "segment": either(
            map_with_a_bad_value(FIELDS["prediction"]["segment"][1],
                                 json_values.filter(lambda v: not isinstance(v, str))),
            non_objects),
    },
    "outcome": {
        "prediction_id": bad_idents | st.integers() | st.none() | json_containers,
        "model": bad_names | st.integers() | st.booleans(),
        "label": not_scalar(nullable=False),
        "timestamp": bad_timestamps,
    },
    "input": {
        "source": bad_names | st.integers() | st.none() | json_containers,
        "record": non_objects,
        "timestamp": bad_timestamps,
        "record_id": bad_idents | st.integers() | st.booleans() | json_containers,
    },
    "model_event": {
        "model": bad_names | st.floats(allow_nan=False, allow_infinity=False),
        "version": bad_idents | st.integers() | st.none() | json_containers,
        "event": (st.sampled_from(["Deployed", "deploy", "retrained", "", " deployed",
                                   "rolled-back"])
                  | st.text(max_size=20) | json_values),
        "timestamp": bad_timestamps,
        "metrics": either(
            map_with_a_bad_value(FIELDS["model_event"]["metrics"][1], not_number()),
            non_objects),
        "trigger_id": bad_idents | st.integers() | json_containers,
        "reference": st.just("") | too_long(1024) | st.integers()
                     | st.none() | json_containers,
    },
}


@st.composite
def mutated_documents(draw: st.DrawFn, kind: str) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(non_objects)
    doc = draw(valid_documents(kind))
    fields = list(FIELDS[kind])
    for _ in range(draw(st.integers(1, 2))):
        how = draw(st.sampled_from(["bad", "any", "bad", "drop", "bad", "any", "bad"]))
        field = draw(st.sampled_from(fields))
        if how == "drop":
            doc.pop(field, None)
        elif how == "bad":
            doc[field] = draw(BAD[kind][field])
        else:  # any JSON value at all (some of them happen to be valid)
            doc[field] = draw(json_values)
    return doc


KINDS = list(FIELDS)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=80)
@given(data=st.data())
def test_valid_documents_are_accepted_by_both(kind, data):
    doc = data.draw(valid_documents(kind))
    assert assert_agree(kind, doc)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=300)
@given(data=st.data())
def test_schema_and_runtime_agree_on_mutated_documents(kind, data):
    assert_agree(kind, data.draw(mutated_documents(kind)))


@pytest.mark.parametrize(("kind", "field"), [(k, f) for k in KINDS for f in FIELDS[k]])
@settings(max_examples=30)
@given(data=st.data())
def test_schema_and_runtime_agree_on_a_bad_value_in_each_field(kind, field, data):
    """Targeted: one field of a valid document replaced by a value from its BAD strategy."""
    doc = data.draw(valid_documents(kind))
    doc[field] = data.draw(BAD[kind][field])
    assert_agree(kind, doc)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=100)
@given(data=st.data())
def test_schema_and_runtime_agree_on_timestamps(kind, data):
    """Each schema file carries its own copy of the timestamp definition: test each."""
    doc = data.draw(valid_documents(kind))
    doc["timestamp"] = data.draw(either(near_miss_timestamps(), bad_timestamps, timestamps))
    assert_agree(kind, doc)


@pytest.mark.parametrize("which", sorted(BREAKS))
@settings(max_examples=15)
@given(data=st.data())
def test_each_way_of_breaking_a_timestamp_is_rejected_by_both(which, data):
    value = data.draw(near_miss_timestamps(which))
    for kind in KINDS:  # each schema file has its own copy of the pattern
        assert assert_agree(kind, {**example(kind), "timestamp": value}) is False


# --- explicit cases ------------------------------------------------------------------

def example(kind: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / f"{STEMS[kind]}.json").read_text())


@pytest.mark.parametrize(("kind", "field", "value"), [
    ("prediction", "latency_ms", True),  # a boolean is not a number
    ("prediction", "cost", False),
    ("prediction", "latency_ms", -0.001),
    ("prediction", "cost", -1),
    ("prediction", "scores", {"yes": 1.0000001}),
    ("prediction", "scores", {"yes": -0.1}),
    ("prediction", "scores", {"yes": True}),
    ("prediction", "features", [1, 2, 3]),
    ("prediction", "features", "tenure=3"),
    ("prediction", "features", None),
    ("prediction", "features", {"x": [1]}),
    ("prediction", "features", {"x": {"y": 1}}),
    ("prediction", "prediction", None),
    ("prediction", "prediction", [0.2, 0.8]),
    ("prediction", "prediction_id", "p" * 129),
    ("prediction", "prediction_id", ""),
    ("prediction", "model_version", 3),
    ("prediction", "model", "churn model"),
    ("prediction", "model", "m" * 65),
    ("prediction", "segment", {"region": 1}),
    ("prediction", "timestamp", "2024-05-01"),
    ("prediction", "timestamp", "2024-05-01T10:00:00"),  # no offset
    ("prediction", "timestamp", "2024-13-01T10:00:00Z"),
    ("prediction", "timestamp", -1),
    ("prediction", "timestamp", 1.5),
    ("prediction", "timestamp", True),
    ("outcome", "label", None),
    ("outcome", "label", {"class": 1}),
    ("input", "record", [1, 2]),
    ("input", "record", "a=1"),
    ("input", "source", "crm/eu"),
    ("model_event", "event", "Deployed"),
    ("model_event", "event", 1),
    ("model_event", "metrics", {"accuracy": "0.9"}),
    ("model_event", "metrics", {"accuracy": True}),
    ("model_event", "reference", ""),
    ("model_event", "reference", "r" * 1025),
])
def test_each_class_of_bad_value_is_rejected_by_both(kind, field, value):
    doc = example(kind)
    doc[field] = value
    assert not schema_ok(kind, doc)
    assert check_event(SPECS[kind], doc) is not None


@pytest.mark.parametrize(("kind", "field", "value"), [
    ("prediction", "timestamp", 0),
    ("prediction", "timestamp", 1_714_557_600_000.0),  # an integral float is an integer
    ("prediction", "timestamp", "2024-05-01 10:00:00.123456789-07:30"),
    ("prediction", "timestamp", "2024-02-29t10:00:00z"),
    ("prediction", "scores", {"a": 0, "b": 1}),
    ("prediction", "latency_ms", 0),
    ("prediction", "features", {}),
    ("prediction", "prediction", False),
    ("prediction", "model", "a" * 64),
    ("prediction", "prediction_id", "p" * 128),
    ("outcome", "label", "churned"),
    ("input", "record", {}),
    ("model_event", "reference", "r" * 1024),
    ("model_event", "metrics", {}),
])
def test_edge_values_are_accepted_by_both(kind, field, value):
    doc = example(kind)
    doc[field] = value
    assert schema_ok(kind, doc)
    assert check_event(SPECS[kind], doc) is None


@pytest.mark.parametrize("kind", KINDS)
def test_missing_required_fields_and_non_objects_are_rejected_by_both(kind):
    for field, (required, _) in FIELDS[kind].items():
        doc = example(kind)
        doc.pop(field, None)
        assert assert_agree(kind, doc) is (not required)
    for doc in (None, [], [example(kind)], "{}", 1, True):
        assert assert_agree(kind, doc) is False


def test_additional_top_level_properties_are_allowed_by_both():
    doc = {**example("outcome"), "trace_id": "abc", "nested": {"a": [1, None]}}
    assert assert_agree("outcome", doc)


def test_feature_count_limit_is_the_same():
    doc = example("prediction")
    doc["features"] = {f"f{i}": i for i in range(MAX_FEATURES)}
    assert assert_agree("prediction", doc)
    doc["features"]["one_too_many"] = 0
    assert assert_agree("prediction", doc) is False


@pytest.mark.parametrize("doc", [
    {"model": "churn\n"},
    {"timestamp": "2024-05-01T10:00:00Z\n"},
    {"timestamp": "\u0662\u0660\u0662\u0664-01-01T00:00:00Z"},  # Arabic-Indic digits
])
def test_patterns_mean_the_same_in_every_regex_dialect(doc):
    """``$(?!\\n)`` and ``[0-9]``: no trailing newline, ASCII digits only, in Python's
    ``re`` as in ECMA-262, so the schema means one thing in every language."""
    assert assert_agree("outcome", {**example("outcome"), **doc}) is False


@pytest.mark.parametrize("value", [
    "2024-02-30T10:00:00Z",  # no February 30
    "2023-02-29T10:00:00Z",  # not a leap year
    "2024-04-31T10:00:00+02:00",
    "0000-01-01T00:00:00Z",  # year 0 does not exist
])
def test_calendar_invalid_timestamps_are_rejected_by_the_runtime_only(value):
    doc = {**example("outcome"), "timestamp": value}
    # The pattern accepts them (the schema cannot express the calendar) ...
    assert schema_ok("outcome", doc)
    # ... the runtime parses the date-time and rejects them.
    assert check_event(SPECS["outcome"], doc) == "timestamp: not a valid calendar date-time"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_raise_non_finite(bad):
    for kind, field, value in [
        ("prediction", "features", {"tenure_months": bad}),
        ("prediction", "prediction", bad),
        ("prediction", "scores", {"yes": bad}),
        ("prediction", "latency_ms", bad),
        ("outcome", "label", bad),
        ("outcome", "timestamp", bad),
        ("model_event", "metrics", {"accuracy": bad}),
    ]:
        with pytest.raises(NonFinite):
            check_event(SPECS[kind], {**example(kind), field: value})


@pytest.mark.parametrize("value", [[], ["deployed"], {"kind": "deployed"}])
def test_model_event_with_an_unhashable_event_is_a_violation_not_a_crash(value):
    # Regression: the enum check once tested frozenset membership before the type, so
    # an array or object raised TypeError (uncaught by decode_message: a worker crash).
    doc = {**example("model_event"), "event": value}
    assert not schema_ok("model_event", doc)
    assert check_event(SPECS["model_event"], doc) is not None
    d = decode_message(json.dumps([doc, example("model_event")]).encode(),
                       SPECS["model_event"], max_bytes=1 << 16, max_elements=10)
    assert d.positions == [1]
    assert [(r.reason, r.index) for r in d.rejections] == [("schema_violation", 0)]


# --- decode_message ------------------------------------------------------------------

OUTCOME: Spec = SPECS["outcome"]
GOOD = {"prediction_id": "p1", "model": "churn", "label": 1}


def decode(value: bytes | None, *, max_bytes: int = 1 << 16, max_elements: int = 100,
           spec: Spec = OUTCOME):
    return decode_message(value, spec, max_bytes=max_bytes, max_elements=max_elements)


def test_decode_single_object():
    d = decode(json.dumps(GOOD).encode())
    assert d.events == [GOOD] and d.rejections == [] and d.positions is None


def test_decode_array_keeps_good_elements_and_rejects_bad_ones_by_position():
    elements: list[Any] = [
        GOOD,
        {"model": "churn", "label": 1},  # missing prediction_id
        {**GOOD, "prediction_id": "p2"},
        3,  # not an object
        {**GOOD, "label": None},
        {**GOOD, "prediction_id": "p3", "timestamp": "2024-02-30T00:00:00Z"},
        {**GOOD, "prediction_id": "p4", "timestamp": 1_714_557_600_000},
    ]
    d = decode(json.dumps(elements).encode())
    assert d.positions == [0, 2, 6]
    assert [e["prediction_id"] for e in d.events] == ["p1", "p2", "p4"]
    assert [(r.reason, r.index) for r in d.rejections] == [
        ("schema_violation", 1), ("schema_violation", 3), ("schema_violation", 4),
        ("schema_violation", 5)]
    assert "prediction_id" in d.rejections[0].detail
    assert json.loads(d.rejections[0].raw) == elements[1]
    assert d.rejections[1].raw == b"3"


def test_decode_array_with_nan_rejects_only_that_element():
    value = (b'[{"prediction_id":"a","model":"churn","label":NaN},'
             b'{"prediction_id":"b","model":"churn","label":1},'
             b'{"prediction_id":"c","model":"churn","label":-Infinity},"x"]')
    d = decode(value)
    assert d.positions == [1] and d.events[0]["prediction_id"] == "b"
    assert [(r.reason, r.index) for r in d.rejections] == [
        ("non_finite_number", 0), ("non_finite_number", 2), ("schema_violation", 3)]
    assert b"NaN" in d.rejections[0].raw and b"-Infinity" in d.rejections[1].raw


def test_decode_whole_message_with_nan_feature_is_non_finite():
    value = (b'{"prediction_id":"a","model":"churn","model_version":"1",'
             b'"features":{"x":NaN},"prediction":1}')
    d = decode(value, spec=SPECS["prediction"])
    assert d.events == [] and d.positions is None
    assert [(r.reason, r.index, r.raw) for r in d.rejections] == [
        ("non_finite_number", None, value)]


def test_decode_whole_message_violation_keeps_the_raw_value():
    value = b'{"prediction_id":"a","model":"no spaces","label":1}'
    d = decode(value)
    assert [(r.reason, r.index, r.raw) for r in d.rejections] == [
        ("schema_violation", None, value)]
    assert d.rejections[0].detail.startswith("model:")


@pytest.mark.parametrize("value", [
    b'{"prediction_id": "a",',
    b"not json",
    b"\xff\xfe{}",  # not UTF-8
    b'{"a": 1} {"b": 2}',
    b"[" * 100_000,  # nested too deeply
])
def test_decode_invalid_json(value):
    d = decode(value, max_bytes=1 << 20)
    assert d.events == []
    assert [(r.reason, r.raw) for r in d.rejections] == [("invalid_json", value)]


def test_decode_not_utf8_says_so():
    d = decode(b'{"label": "\xff"}')
    assert d.rejections[0].reason == "invalid_json"
    assert d.rejections[0].detail.startswith("not UTF-8")


@pytest.mark.parametrize("value", [None, b"", b"[]"])
def test_decode_empty_value(value):
    d = decode(value)
    assert d.events == [] and [r.reason for r in d.rejections] == ["empty_value"]


def test_decode_payload_too_large():
    value = json.dumps([GOOD] * 20).encode()
    d = decode(value, max_bytes=len(value) - 1)
    assert d.events == [] and [(r.reason, r.raw) for r in d.rejections] == [
        ("payload_too_large", value)]
    assert decode(value, max_bytes=len(value)).positions == list(range(20))


def test_decode_too_many_elements():
    value = json.dumps([GOOD] * 11).encode()
    d = decode(value, max_elements=10)
    assert d.events == [] and [(r.reason, r.index) for r in d.rejections] == [
        ("too_many_elements", None)]
    assert len(decode(value, max_elements=11).events) == 11


def test_decode_integers_beyond_64_bits_are_read():
    # orjson reads an integer beyond 64 bits as a float (an integral float is still a
    # valid epoch-ms timestamp); one beyond the double range it refuses, and the
    # standard-library fallback reads it exactly.
    good = {"prediction_id": "p1", "model": "churn", "model_version": "v1",
            "features": {"x": 1}, "prediction": 1}
    doc = {**good, "features": {"big": 2**64 + 1}}
    huge = {**good, "features": {"big": 10**400}}
    d = decode(json.dumps([doc, good]).encode(), spec=SPECS["prediction"])
    assert d.positions == [0, 1] and d.events[0]["features"]["big"] == float(2**64 + 1)
    d = decode(json.dumps([huge, good]).encode(), max_bytes=1 << 20, spec=SPECS["prediction"])
    assert d.positions == [0, 1] and d.events[0]["features"]["big"] == 10**400


def as_read(value: Any) -> Any:
    """``value`` as the decoder reads it back: orjson turns integers beyond 64 bits into
    floats (integers beyond the double range go through the exact fallback)."""
    if isinstance(value, dict):
        return {k: as_read(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_read(v) for v in value]
    if (isinstance(value, int) and not isinstance(value, bool)
            and not -(2**63) <= value < 2**64 and math.isfinite(float_or_inf(value))):
        return float(value)
    return value


def float_or_inf(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=30)
@given(data=st.data())
def test_decode_array_positions_follow_the_schema(kind, data):
    docs = data.draw(st.lists(valid_documents(kind) | mutated_documents(kind), min_size=1,
                              max_size=6))
    value = json.dumps(docs).encode()
    d = decode_message(value, SPECS[kind], max_bytes=len(value), max_elements=len(docs))
    valid = [i for i, doc in enumerate(docs) if schema_ok(kind, doc)]
    assert d.positions == valid
    known = {f for f, _, _ in SPECS[kind]}  # the fast path drops undefined fields
    assert [{k: v for k, v in e.items() if k in known} for e in d.events] == [
        {k: v for k, v in as_read(docs[i]).items() if k in known} for i in valid]
    assert [r.index for r in d.rejections] == [i for i in range(len(docs)) if i not in valid]
    assert {r.reason for r in d.rejections} <= {"schema_violation"}



def test_lone_surrogates_are_refused_as_text():
    # orjson refuses them, the standard library reads them, UTF-8 cannot hold them:
    # the message is dead-lettered whole rather than crash encoding later
    d = decode(b'[{"prediction_id": "a", "model": "bad\\ud800"}, 1]')
    assert d.events == [] and [r.reason for r in d.rejections] == ["invalid_json"]
    assert "surrogate" in d.rejections[0].detail
    # a proper pair (an astral character written as two escapes) is fine
    ok = {**GOOD, "prediction_id": "\U0001f600"}
    assert decode(json.dumps([ok]).encode()).events == [ok]


# --- the msgspec fast path (app/events/fast.py) against the precise checks ------------

def assert_fast_path_agrees(kind: str, doc: Any, neighbour: Any) -> None:
    """A message decodes to the same events and rejections with the fast path as
    without it (the fast path drops undefined top-level fields, which nothing reads),
    as one object and inside an array next to a valid element."""
    known = {f for f, _, _ in SPECS[kind]}

    def strip(e: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in e.items() if k in known}

    for value in (doc, [neighbour, doc]):
        raw = json.dumps(value).encode()
        fast = decode_message(raw, SPECS[kind], max_bytes=1 << 20, max_elements=100)
        precise = decode_message(raw, SPECS[kind], max_bytes=1 << 20, max_elements=100,
                                 fast=False)
        assert [strip(e) for e in fast.events] == [strip(e) for e in precise.events]
        assert fast.rejections == precise.rejections
        assert fast.positions == precise.positions
        for got, want in zip(fast.events, precise.events, strict=True):
            assert [type(v) for v in strip(got).values()] == \
                [type(v) for v in strip(want).values()]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=150)
@given(data=st.data())
def test_fast_path_agrees_on_valid_and_mutated_documents(kind, data):
    neighbour = data.draw(valid_documents(kind))
    assert_fast_path_agrees(kind, data.draw(valid_documents(kind)), neighbour)
    assert_fast_path_agrees(kind, data.draw(mutated_documents(kind)), neighbour)


@pytest.mark.parametrize(("kind", "field"), [(k, f) for k in KINDS for f in FIELDS[k]])
@settings(max_examples=20)
@given(data=st.data())
def test_fast_path_agrees_on_a_bad_value_in_each_field(kind, field, data):
    doc = data.draw(valid_documents(kind))
    doc[field] = data.draw(BAD[kind][field])
    assert_fast_path_agrees(kind, doc, data.draw(valid_documents(kind)))


def test_fast_path_refuses_what_only_the_precise_path_can_explain():
    ok = {"prediction_id": "p", "model": "m", "model_version": "v1", "features": {"x": 1.0},
          "prediction": 1}
    for doc in ({**ok, "timestamp": 1.7e12},  # an integral float: accepted, precisely
                {**ok, "timestamp": "2024-02-30T10:00:00Z"},  # no such day
                {**ok, "features": {"x": 10**30}}):  # beyond 64 bits
        assert_fast_path_agrees("prediction", doc, ok)
    raw = b'[{"prediction_id":"p","model":"m","model_version":"v1","features":{"x":NaN},' \
          b'"prediction":1}]'
    d = decode_message(raw, SPECS["prediction"], max_bytes=1000, max_elements=10)
    assert [r.reason for r in d.rejections] == ["non_finite_number"]


@pytest.mark.parametrize("name", ["bad name", "", "x" * 65, "m\n", "é"])
def test_a_bad_name_among_good_ones_is_refused_alone_on_the_fast_path(name):
    """Names are matched against their pattern after msgspec decodes (once per distinct
    name of a message, good ones remembered): a bad one sends the message to the precise
    path, which refuses that element alone."""
    good = {**GOOD, "prediction_id": "p1"}
    bad = {**GOOD, "prediction_id": "p2", "model": name}
    raw = json.dumps([good, bad, {**good, "prediction_id": "p3"}]).encode()
    for _ in range(2):  # the second time the good name is remembered
        d = decode_message(raw, SPECS["outcome"], max_bytes=1 << 20, max_elements=100)
        assert [e["prediction_id"] for e in d.events] == ["p1", "p3"]
        assert [(r.reason, r.index) for r in d.rejections] == [("schema_violation", 1)]
