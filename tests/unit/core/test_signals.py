import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.signals import PREDICTION, SCORES, Columns, numeric_column, signal_rows
from app.quality import QualityCounts

values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                   st.text(max_size=3), st.lists(st.integers(), max_size=2))
feature_maps = st.dictionaries(st.sampled_from(["a", "b", "c"]), values)
events = st.lists(st.builds(
    lambda f, p, s: {"features": f, "prediction": p, **({"scores": s} if s else {})},
    feature_maps, values, st.dictionaries(st.sampled_from(["0", "1"]), st.floats(0, 1))),
    max_size=30)
NAMES = ["a", "b", "c", PREDICTION, SCORES + "1"]


@settings(max_examples=300, deadline=None)
@given(events=events)
def test_columns_equal_the_per_event_rows(events):
    """Read as columns, each signal is what the per-event rows hold: raw values (None
    where absent) and floats by the per-value rule."""
    cols = Columns(events)
    cols.read(NAMES)
    rows = signal_rows(events, NAMES)
    for n in NAMES:
        assert list(cols.signal(n)) == [row.get(n) for row in rows]  # (NaN: same objects)
        np.testing.assert_array_equal(cols.floats(n), numeric_column(rows, n))
    complete = all(n in e["features"] for e in events for n in ["a", "b"])
    got = cols.features(["a", "b"])
    assert (got is not None) == complete
    if got is not None:
        assert [list(c) for c in got] == [[e["features"][n] for e in events]
                                          for n in ["a", "b"]]


def test_plain_numbers_are_read_in_one_pass():
    cols = Columns([{"features": {"a": 1.5, "b": None}}, {"features": {"a": True, "b": 3}}])
    assert cols.features(["a", "b"]) == [(1.5, True), (None, 3)]
    np.testing.assert_array_equal(cols.floats("b"), [np.nan, 3.0])
    np.testing.assert_array_equal(cols.floats("a"), [1.5, 1.0])


@settings(max_examples=200, deadline=None)
@given(events=events)
def test_quality_counts_from_shared_columns_equal_their_own_reading(events):
    kinds = {"a": "numeric", "b": "categorical", "c": "numeric"}
    ranges, allowed = {"a": (-1.0, 1.0), "c": (0.0, 5.0)}, {"b": frozenset({"x", "1"})}
    maps = [e["features"] for e in events]
    own, shared = QualityCounts(kinds), QualityCounts(kinds)
    own.update(maps, ranges, allowed)
    cols = Columns(events)
    columns = cols.features(shared.names)
    if columns is None:  # some event lacks a feature: the counts read the maps themselves
        shared.update(maps, ranges, allowed)
    else:
        shared.update(maps, ranges, allowed, columns=columns, floats=cols.floats)
    assert shared == own


numbers = st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=True))
numeric_events = st.lists(st.builds(
    lambda a, c, b: {"features": {"a": a, "c": c, "b": b}, "prediction": 1},
    st.one_of(numbers, numbers, numbers, values), numbers, st.text(max_size=2)),
    max_size=30)


def _float_number(v):
    """An int, a float or a bool that converts to a float."""
    if type(v) not in (int, float, bool):
        return False
    try:
        float(v)
    except OverflowError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(events=st.one_of(numeric_events, events))
def test_float_rows_read_numbers_at_once_by_the_per_value_rule(events):
    """Numeric features that every event carries as numbers are read straight into
    floats; whatever the batch holds, the rows are the per-value rule's, and the quality
    counts made from them equal the counts' own reading."""
    cols = Columns(events)
    x = cols.float_rows(["a", "c", SCORES + "1"])
    rows = signal_rows(events, ["a", "c", SCORES + "1"])
    for i, n in enumerate(["a", "c", SCORES + "1"]):
        np.testing.assert_array_equal(x[i], numeric_column(rows, n))
    plain = all(_float_number(e["features"].get(n)) for e in events for n in ["a", "c"])
    assert cols.numbers("a") == (plain and bool(events))
    kinds = {"a": "numeric", "b": "categorical", "c": "numeric"}
    ranges, allowed = {"a": (-1.0, 1.0), "c": (0.0, 5.0)}, {"b": frozenset({"x", "1"})}
    maps = [e["features"] for e in events]
    own, shared = QualityCounts(kinds), QualityCounts(kinds)
    own.update(maps, ranges, allowed)
    columns = cols.features(shared.names)
    if columns is None:
        shared.update(maps, ranges, allowed)
    else:
        assert (columns[0] is None) == cols.numbers("a")
        shared.update(maps, ranges, allowed, columns=columns, floats=cols.floats)
    assert shared == own


def test_a_null_or_a_string_among_numbers_reads_column_by_column():
    events = [{"features": {"a": 1.0, "b": 2}}, {"features": {"a": None, "b": 3.5}},
              {"features": {"a": "7", "b": True}}]
    cols = Columns(events)
    np.testing.assert_array_equal(cols.float_rows(["a", "b"]), [[1.0, np.nan, np.nan],
                                                               [2.0, 3.5, 1.0]])
    assert not cols.numbers("a") and not cols.numbers("b")
    assert cols.features(["a", "b"]) == [(1.0, None, "7"), (2, 3.5, True)]
    cols = Columns(events[::2])  # no null: the string alone sends it column by column
    cols.float_rows(["a", "b"])
    assert not cols.numbers("a")
    cols = Columns([events[0], {"features": {"a": 2**2000, "b": 1}}])  # beyond the floats
    np.testing.assert_array_equal(cols.float_rows(["a", "b"]), [[1.0, np.inf], [2.0, 1.0]])
    assert not cols.numbers("a")


def test_numbers_only_columns_are_read_raw_only_when_asked():
    cols = Columns([{"features": {"a": 1, "b": 2.5}}, {"features": {"a": True, "b": 0.5}}])
    cols.float_rows(["a", "b"])
    assert cols.numbers("a") and cols.numbers("b")
    assert cols.features(["a", "b"]) == [None, None]
    assert list(cols.signal("a")) == [1, True]  # (read on demand)
