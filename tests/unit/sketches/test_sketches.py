import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import StateError
from app.sketches import SKETCHES, BinnedHistogram, CategoryCounts, QuantileSketch

EDGES = [-1.0, 0.0, 0.5, 2.0]
CATS = ["a", "b", "c"]

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
values = st.lists(st.one_of(floats, st.floats(-5, 5)), max_size=200)
labels = st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "zz", "q"]),
                            st.integers(0, 3), st.booleans()), max_size=200)


def make(kind):
    return {"histogram": lambda: BinnedHistogram(EDGES), "categories": lambda: CategoryCounts(CATS),
            "quantile": lambda: QuantileSketch()}[kind]()


SAMPLES = {"histogram": np.array([0.1, 3.0, -2.0, np.nan]), "categories": ["a", "x", None],
           "quantile": np.array([0.1, 3.0, -2.0, 0.0, np.nan, np.inf])}
#: A state field replaced by nonsense of the right shape, per kind.
CORRUPT = {"histogram": {"counts": [1]}, "categories": {"counts": [1]},
           "quantile": {"positive": {"offset": 0, "counts": [-1], "collapsed": False}}}


@settings(max_examples=150, deadline=None)
@given(left=values, right=values)
def test_histogram_merge_of_halves_equals_one_pass(left, right):
    a, b, whole = BinnedHistogram(EDGES), BinnedHistogram(EDGES), BinnedHistogram(EDGES)
    a.update(np.array(left, dtype=float))
    b.update(np.array(right, dtype=float))
    whole.update(np.array(left + right, dtype=float))
    merged = a.merge(b)
    assert np.array_equal(merged.counts, whole.counts)
    assert merged.missing == whole.missing and merged.nonfinite == whole.nonfinite
    if np.isfinite(whole.total):  # sums of values near the float limit saturate
        assert merged.total == pytest.approx(whole.total, rel=1e-9, abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(left=labels, right=labels)
def test_categories_merge_of_halves_equals_one_pass(left, right):
    a, b, whole = CategoryCounts(CATS), CategoryCounts(CATS), CategoryCounts(CATS)
    a.update(left)
    b.update(right)
    whole.update(left + right)
    assert a.merge(b) == whole
    assert whole.n + whole.missing == len(left) + len(right)


@pytest.mark.parametrize("kind", sorted(SKETCHES))
def test_state_round_trips(kind):
    s = make(kind)
    s.update(SAMPLES[kind])
    again = SKETCHES[kind].from_state(s.to_state())
    assert again == s
    assert repr(again) == repr(s)


@pytest.mark.parametrize("kind", sorted(SKETCHES))
def test_unknown_state_version_fails_clearly(kind):
    state = make(kind).to_state()
    state["v"] = 99
    with pytest.raises(StateError, match="version 99 is not supported"):
        SKETCHES[kind].from_state(state)


@pytest.mark.parametrize("kind", sorted(SKETCHES))
def test_wrong_kind_and_corrupt_states_fail_clearly(kind):
    state = make(kind).to_state()
    with pytest.raises(StateError, match="expected a"):
        SKETCHES[kind].from_state({**state, "kind": "other"})
    with pytest.raises(StateError):
        SKETCHES[kind].from_state({**state, **CORRUPT[kind]})
    with pytest.raises(StateError):
        SKETCHES[kind].from_state("nonsense")


def test_histogram_bins_are_left_open_right_closed():
    h = BinnedHistogram([0.0, 1.0])
    h.update(np.array([0.0, 1.0, 1.0000001, -np.inf, np.inf]))
    assert h.counts.tolist() == [1, 1, 1]
    assert h.nonfinite == 2


def test_histogram_rejects_bad_edges():
    with pytest.raises(ValueError, match="strictly increasing"):
        BinnedHistogram([1.0, 1.0])


def test_merge_requires_same_bins():
    with pytest.raises(ValueError, match="different bin edges"):
        BinnedHistogram([0.0]).merge(BinnedHistogram([1.0]))
    with pytest.raises(ValueError, match="different vocabularies"):
        CategoryCounts(["a"]).merge(CategoryCounts(["b"]))


def test_category_spelling_of_non_strings():
    c = CategoryCounts(["true", "2"])
    c.update([True, 2, 2.0, "2", 3])
    assert c.counts.tolist() == [1, 3, 1]


def test_memory_is_bounded_by_vocabulary():
    c = CategoryCounts(CATS)
    c.update([f"user-{i}" for i in range(10_000)])
    assert c.counts.size == len(CATS) + 1 and c.other == 10_000


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 5), width=st.integers(0, 60), data=st.data())
def test_histogram_update_rows_equals_row_by_row_updates(rows, width, data):
    """All rows at once (one range check, the sums for every row) counts what row-by-row
    updates count, the running sums included, bit for bit."""
    on_edge = st.sampled_from([-1.0, 0.0, 1.0])  # values equal to an edge: its bin's?
    cell = st.one_of(floats, st.floats(-5, 5), st.floats(-1e200, 1e200), on_edge)
    x = np.array(data.draw(st.lists(st.lists(cell, min_size=width, max_size=width),
                                    min_size=rows, max_size=rows)), dtype=float)
    x = x.reshape(rows, width)
    edges = [sorted(set(data.draw(st.lists(st.one_of(st.floats(-3, 3), on_edge), min_size=1,
                                           max_size=6))))
             for _ in range(rows)]
    together, apart = ([BinnedHistogram(e) for e in edges] for _ in range(2))
    BinnedHistogram.update_rows(together, x)
    for h, row in zip(apart, x, strict=True):
        h.update(row)
    for a, b in zip(together, apart, strict=True):
        assert a.counts.tolist() == b.counts.tolist()
        assert (a.missing, a.nonfinite, a.total, a.total_sq) == (
            b.missing, b.nonfinite, b.total, b.total_sq)
