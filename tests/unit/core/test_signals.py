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
