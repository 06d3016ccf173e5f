import math
from collections import Counter

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import StateError
from app.quality.counts import COUNTERS, EVENTS, MAX_UNEXPECTED_NAMES, QualityCounts
from app.sketches.categorical import OTHER, as_category

KINDS = {"x": "numeric", "y": "numeric", "c": "categorical", "d": "categorical"}
RANGES = {"x": (0.0, 10.0)}  # y: no range
ALLOWED = {"c": frozenset({"a", "b", "1", "true"})}  # d: no vocabulary


def counted(events, kinds=KINDS, ranges=RANGES, allowed=ALLOWED):
    q = QualityCounts(kinds)
    q.update(events, ranges, allowed)
    return q


def test_every_counter_on_a_hand_made_batch():
    events = [
        {"x": 5, "y": 1.5, "c": "a", "d": "zzz"},           # clean
        {"x": None, "y": None, "c": None, "d": None},       # nulls
        {"x": "5", "y": [1], "c": [1], "d": {"k": 1}},      # wrong types
        {"x": {"a": 1}, "c": {"a": 1}},                     # wrong types; y, d missing
        {"x": 11, "y": -1e9, "c": "q", "d": 3},             # x out of range, c unseen
        {"x": True, "c": 1.0},                              # bool 1 in range; 1.0 is "1"
        {"x": -0.5, "c": True, "extra": 1, "more": None},   # x below range; True is "true"
        {"c": 2, "extra": 2},                               # 2 unseen; x missing
        {"x": 10**400, "c": "b"},                           # beyond float range: outside
        {"x": math.nan, "c": "B"},                          # NaN outside; unseen (case)
    ]
    q = counted(events)
    assert q.events == 10
    assert q.feature_counts("x") == {"present": 9, "null": 1, "type_error": 2,
                                     "out_of_range": 4, "unseen": 0, "missing": 1}
    assert q.feature_counts("y") == {"present": 4, "null": 1, "type_error": 1,
                                     "out_of_range": 0, "unseen": 0, "missing": 6}
    assert q.feature_counts("c") == {"present": 10, "null": 1, "type_error": 2,
                                     "out_of_range": 0, "unseen": 3, "missing": 0}
    # d: a number is a fine category; no vocabulary, so nothing is unseen
    assert q.feature_counts("d") == {"present": 4, "null": 1, "type_error": 1,
                                     "out_of_range": 0, "unseen": 0, "missing": 6}
    assert q.unexpected_events == 2
    assert q.unexpected_names == {"extra": 2, "more": 1}
    assert q.count("x", "out_of_range") == 4


def test_rates_are_counts_over_events():
    q = counted([{"x": None, "c": "a"}, {"x": 1, "c": "a", "new": 1}, {"c": "a"}, {"c": "z"}])
    rates = q.rates()
    assert set(rates) == {*KINDS, EVENTS}
    assert rates["x"]["null"] == 0.25 and rates["x"]["missing"] == 0.5
    assert rates["c"]["unseen"] == 0.25 and rates["c"]["present"] == 1.0
    assert rates[EVENTS] == {"unexpected": 0.25}
    assert QualityCounts(KINDS).rates()["x"] == dict.fromkeys(COUNTERS, 0.0)


def test_unexpected_names_are_bounded():
    names = [f"u{i:02d}" for i in range(MAX_UNEXPECTED_NAMES + 5)]
    events = [{name: 1 for name in names}, {"u24": 1, OTHER: 1}]
    q = counted(events)
    recorded = q.unexpected_names
    assert len(recorded) == MAX_UNEXPECTED_NAMES + 1
    assert recorded[OTHER] == 5 + 1 + 1  # u20..u24, the second u24, the literal "__other__"
    assert sum(recorded.values()) == len(names) + 2
    assert q.unexpected_events == 2


def test_numpy_scalars_and_empty_batches():
    q = counted([{"x": np.int64(3), "y": np.float64(2.0), "c": np.float64(1.0)},
                 {"x": np.float64(12.5), "c": np.str_("a")}])
    assert q.count("x", "out_of_range") == 1 and q.count("x", "type_error") == 0
    assert q.count("c", "unseen") == 0
    before = q.to_state()
    q.update([], RANGES, ALLOWED)
    assert q.to_state() == before


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="'z': kind must be"):
        QualityCounts({"z": "text"})
    with pytest.raises(ValueError, match="range of feature 'x'"):
        counted([{"x": None}], ranges={"x": (5.0, 1.0)})
    with pytest.raises(ValueError, match="unknown feature 'q'"):
        QualityCounts(KINDS).feature_counts("q")
    with pytest.raises(ValueError, match="unknown counter 'nulls'"):
        QualityCounts(KINDS).count("x", "nulls")
    with pytest.raises(ValueError, match="different features"):
        QualityCounts(KINDS).merge(QualityCounts({"x": "numeric"}))


# -- property: batching and merging change nothing; the counts match a per-event oracle --

values = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 14), st.integers(min_value=2**1030),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["a", "b", "1", "x", ""]),
    st.lists(st.integers(), max_size=1), st.dictionaries(st.text(max_size=1), st.integers(),
                                                         max_size=1),
)
unexpected = [f"u{i:02d}" for i in range(MAX_UNEXPECTED_NAMES + 6)]
names = st.sampled_from([*KINDS, *unexpected])
any_events = st.lists(st.dictionaries(names, values, max_size=8), max_size=40)
# the usual types only (numbers and nulls, strings and nulls): the vectorised path
numbers = st.one_of(st.none(), st.booleans(), st.integers(-3, 14), st.integers(min_value=2**1030),
                    st.floats(allow_nan=True, allow_infinity=True))
strings = st.one_of(st.none(), st.sampled_from(["a", "b", "1", "x", ""]))
usual_events = st.lists(st.fixed_dictionaries({}, optional={
    "x": numbers, "y": numbers, "c": strings, "d": strings,
    **{name: st.integers() for name in unexpected[::3]}}), max_size=40)


def oracle(events):
    counts = {n: dict.fromkeys(COUNTERS, 0) for n in KINDS}
    unexpected = Counter()
    unexpected_events = 0
    for e in events:
        extra = [k for k in e if k not in KINDS]
        unexpected.update(extra)
        unexpected_events += bool(extra)
        for name, kind in KINDS.items():
            c = counts[name]
            if name not in e:
                c["missing"] += 1
                continue
            c["present"] += 1
            v = e[name]
            if v is None:
                c["null"] += 1
            elif isinstance(v, list | dict) or (kind == "numeric" and isinstance(v, str)):
                c["type_error"] += 1
            elif kind == "numeric" and name in RANGES:
                try:
                    f = float(v)
                except OverflowError:
                    f = math.inf
                lo, hi = RANGES[name]
                c["out_of_range"] += not lo <= f <= hi
            elif kind == "categorical" and name in ALLOWED:
                c["unseen"] += as_category(v) not in ALLOWED[name]
    return counts, unexpected_events, unexpected


@pytest.mark.parametrize("events_st", [any_events, usual_events], ids=["any", "usual"])
@given(data=st.data(), cut=st.integers(0, 40))
def test_merge_of_two_halves_equals_one_pass(events_st, data, cut):
    events = data.draw(events_st)
    whole = counted(events)
    first, second = counted(events[:cut]), counted(events[cut:])
    assert first.merge(second) == whole
    assert second.merge(first) == whole
    batched = counted(events[:cut])
    batched.update(events[cut:], RANGES, ALLOWED)
    assert batched == whole
    assert QualityCounts.from_state(orjson.loads(orjson.dumps(whole.to_state()))) == whole

    counts, unexpected_events, unexpected = oracle(events)
    assert {n: whole.feature_counts(n) for n in KINDS} == counts
    assert whole.events == len(events) and whole.unexpected_events == unexpected_events
    kept = sorted(n for n in unexpected if n != OTHER)[:MAX_UNEXPECTED_NAMES]
    expected = {n: unexpected[n] for n in kept}
    rest = sum(unexpected.values()) - sum(expected.values())
    assert whole.unexpected_names == ({**expected, OTHER: rest} if rest else expected)


# -- state ------------------------------------------------------------------------------

def test_state_round_trip():
    q = counted([{"x": 1, "c": "a", "new": 1}, {"x": None, "y": "s", "c": "z"}, {}])
    state = orjson.loads(orjson.dumps(q.to_state()))
    again = QualityCounts.from_state(state)
    assert again == q and again.to_state() == q.to_state()
    assert again.features == KINDS


def test_unknown_version_and_corrupt_states_are_refused():
    state = counted([{"x": 1}]).to_state()
    with pytest.raises(StateError, match="version 99 is not supported"):
        QualityCounts.from_state({**state, "v": 99})
    with pytest.raises(StateError, match="expected a 'quality_counts' state"):
        QualityCounts.from_state({**state, "kind": "categories"})
    with pytest.raises(StateError, match="corrupt quality counts state"):
        QualityCounts.from_state({**state, "events": -1})
    with pytest.raises(StateError, match="present \\+ missing != events"):
        QualityCounts.from_state({**state, "events": 5})
    with pytest.raises(StateError, match="corrupt quality counts state"):
        QualityCounts.from_state({k: v for k, v in state.items() if k != "counts"})
    with pytest.raises(StateError, match="kind must be"):
        QualityCounts.from_state({**state, "features": {"x": "text"}})
