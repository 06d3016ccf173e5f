"""QuantileSketch: exact, order-free merging; relative-error quantiles; bounded memory.

Rank convention: the sketch's q-quantile is the value of 0-based rank
``floor(q * (n - 1))``, i.e. ``numpy.quantile(x, q, method="lower")``; the sketch returns
a value within relative error ``alpha`` of it.
"""

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import StateError
from app.sketches import QuantileSketch
from app.sketches.quantile import _Store, aligned, default_buckets

ALPHA = 0.01
ORIGINAL_UPDATE = QuantileSketch.update
QS = np.linspace(0, 1, 201)

anything = st.floats(allow_nan=True, allow_infinity=True, width=64)
values = st.lists(st.one_of(anything, st.floats(-50, 50), st.just(0.0)), max_size=120)


def sketch(*batches, **kw):
    s = QuantileSketch(**kw)
    for b in batches:
        s.update(np.asarray(b, dtype=float))
    return s


def cut(xs, points):
    bounds = sorted({min(p, len(xs)) for p in points})
    edges = [0, *bounds, len(xs)]
    return [xs[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=150, deadline=None)
@given(left=values, right=values, limit=st.sampled_from([2048, 64, 3, 1]))
def test_merge_of_halves_equals_one_pass(left, right, limit):
    whole = sketch(left + right, max_buckets=limit)
    merged = sketch(left, max_buckets=limit).merge(sketch(right, max_buckets=limit))
    assert merged == whole
    assert merged.n + merged.missing + merged.nonfinite == len(left) + len(right)
    for store in (merged.positive, merged.negative):
        assert store.counts.size <= limit


@settings(max_examples=100, deadline=None)
@given(xs=values, points=st.lists(st.integers(0, 120), max_size=5),
       limit=st.sampled_from([2048, 16, 2]), data=st.data())
def test_any_batching_and_merge_order_gives_the_same_sketch(xs, points, limit, data):
    whole = sketch(xs, max_buckets=limit)
    batches = cut(xs, points)
    assert sketch(*batches, max_buckets=limit) == whole  # one sketch, many updates
    parts = [sketch(b, max_buckets=limit) for b in batches]
    order = data.draw(st.permutations(range(len(parts))))
    acc = QuantileSketch(max_buckets=limit)
    for i in order:  # separate sketches merged in any order
        acc = parts[i].merge(acc) if i % 2 else acc.merge(parts[i])
    assert acc == whole
    shuffled = data.draw(st.permutations(xs))
    assert sketch(shuffled, max_buckets=limit) == whole


@pytest.mark.parametrize("dist", ["normal", "lognormal", "mixed"])
def test_quantiles_within_relative_error_of_numpy_lower(dist):
    rng = np.random.default_rng(42)
    if dist == "normal":
        x = rng.normal(3, 2, 20_000)
    elif dist == "lognormal":
        x = rng.lognormal(0, 2, 20_000)
    else:  # both signs, exact zeros, tiny and huge magnitudes
        x = np.concatenate([rng.normal(0, 1, 8_000), -rng.lognormal(5, 3, 8_000),
                            np.zeros(500), rng.uniform(-1e-10, 1e-10, 500)])
        rng.shuffle(x)
    s = sketch(x[:7_000], x[7_000:])
    exact = np.quantile(x, QS, method="lower")
    est = s.quantile(QS)
    tiny = np.abs(exact) < s.min_positive  # the zero bucket: absolute error instead
    assert np.all(np.abs(est[tiny]) < s.min_positive)
    rel = np.abs(est[~tiny] - exact[~tiny]) / np.abs(exact[~tiny])
    assert rel.max() <= ALPHA * (1 + 1e-9)
    assert s.quantile(0.5) == est[100]  # scalar in, float out
    assert isinstance(s.quantile(0.5), float)


def test_cdf_is_exact_at_bucket_boundaries():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.lognormal(size=5_000), -rng.lognormal(size=5_000), [0.0] * 10])
    s = sketch(x)
    lower, upper, counts = s.boundaries()
    assert counts.sum() == x.size and np.all(upper[:-1] <= lower[1:])
    ordered = np.sort(x)
    pos = upper > 0  # positive buckets are closed above: F(upper) = share <= upper
    assert np.array_equal(s.cdf(upper[pos]),
                          np.searchsorted(ordered, upper[pos], side="right") / x.size)
    neg = upper < 0  # negative ones are closed below: left limits at their upper edge
    assert np.allclose(s.cdf(upper[neg]),
                       np.searchsorted(ordered, upper[neg], side="left") / x.size,
                       rtol=0, atol=1e-12)
    assert s.cdf(np.array([-1e300, 1e300])).tolist() == [0.0, 1.0]


def test_values_on_an_edge_land_in_the_bucket_they_close():
    s = QuantileSketch()
    k = np.arange(-1_036, 1_200, dtype=np.int64)
    edges = s._edges(k)
    assert np.array_equal(s._index(edges), k)
    assert np.array_equal(s._index(np.nextafter(edges, np.inf)), k + 1)


def test_memory_is_bounded_under_an_adversarial_range():
    rng = np.random.default_rng(9)
    x = rng.choice([-1.0, 1.0], 50_000) * np.exp(rng.uniform(-20, 709, 50_000))
    s = QuantileSketch(max_buckets=2048)
    for chunk in np.array_split(x, 7):
        s.update(chunk)
    assert s.positive.counts.size <= 2048 and s.negative.counts.size <= 2048
    assert s.positive.collapsed and s.negative.collapsed
    assert s.n == x.size
    # the top of the range keeps its accuracy; folded magnitudes only read as larger
    exact = np.quantile(x, [0.001, 0.999], method="lower")
    est = s.quantile(np.array([0.001, 0.999]))
    assert np.all(np.abs(est - exact) <= ALPHA * np.abs(exact) * (1 + 1e-9))
    folded = s.quantile(0.5)
    assert abs(folded) >= abs(np.quantile(x, 0.5, method="lower"))


def test_no_collapse_within_the_stated_dynamic_range():
    x = np.geomspace(1e-6, 1e11, 10_000)  # a factor e**39.1, inside e**41
    s = sketch(x)
    assert not s.positive.collapsed
    exact = np.quantile(x, QS, method="lower")
    assert np.all(np.abs(s.quantile(QS) - exact) <= ALPHA * exact * (1 + 1e-9))


def test_missing_nonfinite_and_zero():
    s = sketch([np.nan, np.inf, -np.inf, 0.0, 1e-12, -1e-12, 2.0])
    assert (s.n, s.missing, s.nonfinite, s.zero) == (4, 1, 2, 3)
    assert s.quantile(0.0) == 0.0
    empty = QuantileSketch()
    assert np.isnan(empty.quantile(0.5)) and empty.n == 0
    assert np.isnan(empty.cdf(np.array([1.0]))).all()


def test_state_round_trips_through_json_including_a_collapse():
    rng = np.random.default_rng(2)
    s = sketch(rng.normal(size=1_000), -np.exp(rng.uniform(0, 300, 100)), [0.0, np.nan],
               max_buckets=100, alpha=0.02)
    assert s.negative.collapsed
    state = json.loads(json.dumps(s.to_state()))
    again = QuantileSketch.from_state(state)
    assert again == s and repr(again) == repr(s)
    again.update(np.array([1.0]))  # a loaded sketch keeps working
    assert again.n == s.n + 1


def test_bucket_counts_are_packed_and_version_1_lists_still_read():
    s = sketch([1.0, -2.0, 0.0, 3.0, 3.0])
    s.positive.add(np.full(300, s.positive.offset), s.max_buckets)  # a count past 255
    state = json.loads(json.dumps(s.to_state()))
    assert state["v"] == 2 and state["positive"]["counts"].startswith("u2:")
    assert state["negative"]["counts"].startswith("u1:")
    assert QuantileSketch.from_state(state) == s
    big = QuantileSketch()
    big.positive = type(s.positive)(np.array([1 << 40, 0, 1 << 20]), 3)
    packed = big.to_state()["positive"]["counts"]
    assert packed == [1 << 40, 0, 1 << 20]  # past four bytes: a list
    assert QuantileSketch.from_state(big.to_state()) == big
    middle = QuantileSketch()
    middle.positive = type(s.positive)(np.array([1 << 31, 7]), -2)
    assert middle.to_state()["positive"]["counts"].startswith("u4:")
    assert QuantileSketch.from_state(middle.to_state()) == middle
    # what version 1 wrote (lists) reads as it did
    v1 = {**state, "v": 1, "positive": s.positive.to_state() | {
        "counts": s.positive.counts.tolist()}, "negative": {
        "offset": s.negative.offset, "counts": s.negative.counts.tolist(), "collapsed": False}}
    assert QuantileSketch.from_state(json.loads(json.dumps(v1))) == s
    assert QuantileSketch().to_state()["positive"]["counts"] == []


def test_unknown_version_and_corrupt_states_fail_clearly():
    state = sketch([1.0, -2.0, 0.0]).to_state()
    with pytest.raises(StateError, match="quantile state version 3 is not supported"):
        QuantileSketch.from_state({**state, "v": 3})
    bad_stores = [{"offset": 0, "counts": [-1], "collapsed": False},
                  {"offset": 0, "counts": "u1:AAE=", "collapsed": False},  # [0, 1]
                  {"offset": 0, "counts": "u3:AQ==", "collapsed": False},
                  {"offset": 0, "counts": "u2:AQ==", "collapsed": False},  # one byte
                  {"offset": 0, "counts": "u1:!!", "collapsed": False},
                  {"offset": 0, "counts": "AQ==", "collapsed": False},
                  {"offset": 0, "counts": "u1:" + "AQ" * 4000 + "==", "collapsed": False},
                  {"offset": 0, "counts": [0, 1], "collapsed": False},
                  {"offset": 0, "counts": [1] * 5000, "collapsed": False},
                  {"offset": 0.5, "counts": [1], "collapsed": False},
                  {"offset": 0, "counts": [1.5], "collapsed": False},
                  {"offset": 0, "counts": [1], "collapsed": "no"},
                  {"counts": [1]}]
    for store in bad_stores:
        with pytest.raises(StateError, match="corrupt quantile state"):
            QuantileSketch.from_state({**state, "positive": store})
    for key, value in [("alpha", 2.0), ("zero", -1), ("missing", "x"), ("max_buckets", 0)]:
        with pytest.raises(StateError, match="corrupt quantile state"):
            QuantileSketch.from_state({**state, key: value})
    with pytest.raises(StateError, match="expected a 'quantile' state"):
        QuantileSketch.from_state({**state, "kind": "histogram"})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"alpha": 0.0}, "alpha must be"), ({"alpha": 1.0}, "alpha must be"),
    ({"alpha": float("nan")}, "alpha must be"), ({"max_buckets": 0}, "max_buckets must be"),
    ({"max_buckets": 2.5}, "max_buckets must be"), ({"min_positive": 0.0}, "min_positive"),
])
def test_hyperparameters_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantileSketch(**kwargs)


def test_merging_or_comparing_different_grids_is_refused():
    with pytest.raises(ValueError, match="different alpha"):
        QuantileSketch(alpha=0.01).merge(QuantileSketch(alpha=0.02))
    with pytest.raises(ValueError, match="different grids"):
        aligned(QuantileSketch(alpha=0.01), QuantileSketch(alpha=0.02))
    with pytest.raises(ValueError, match=r"quantiles must be in \[0, 1\]"):
        sketch([1.0]).quantile(1.5)


def test_aligned_puts_both_sketches_on_one_set_of_cells():
    a = sketch([1.0, 2.0, -3.0])
    b = sketch([2.0, 50.0, 0.0])
    cells, bc = aligned(a, b)
    assert cells.counts.tolist() == [1, 0, 1, 1, 0]
    assert bc.tolist() == [0, 1, 0, 1, 1]
    assert np.all(np.diff(cells.value) > 0)


def test_memory_is_bounded_on_a_fine_grid_before_any_counting():
    s = QuantileSketch(alpha=1e-6, max_buckets=64)
    s.update(np.array([1e-8, 1.0, 1e300]))  # an index span of 7.1e8 buckets
    assert s.positive.counts.size == 64 and s.positive.collapsed and s.n == 3
    other = QuantileSketch(alpha=1e-6, max_buckets=64)
    other.update(np.array([2e-8, 3e-8]))  # far below: folded on merge, kept apart here
    assert s.merge(other).positive.counts.size == 64
    cells, counts = aligned(other, s)
    assert cells.counts.sum() == 2 and counts.sum() == 3


@settings(max_examples=100, deadline=None)
@given(xs=st.lists(st.one_of(st.floats(1e-9, 1e300), st.floats(-1e300, -1e-9),
                             st.floats(0.5, 2.0)), min_size=1, max_size=60),
       batch=st.integers(1, 60))
def test_bucket_counts_match_a_direct_computation(xs, batch):
    """The batch path (edge table, in-place counts) against bucket ``k`` computed for
    each value alone, with ``gamma**(k-1) < |x| <= gamma**k`` checked by exact powers."""
    from app.sketches.quantile import _power

    s = QuantileSketch(max_buckets=1 << 16)  # the whole float range: no fold
    for i in range(0, len(xs), batch):
        s.update(np.asarray(xs[i:i + batch]))
    expected: dict[tuple[bool, int], int] = {}
    for x in xs:
        m = abs(x)
        k = int(np.ceil(np.log(m) / s._log_gamma))
        while m > _power(s._gamma, np.array([k]))[0]:
            k += 1
        while m <= _power(s._gamma, np.array([k - 1]))[0]:
            k -= 1
        expected[(x < 0, k)] = expected.get((x < 0, k), 0) + 1
    got = {}
    for negative, store in ((False, s.positive), (True, s.negative)):
        ks, counts = store.occupied()
        got.update({(negative, int(k)): int(c) for k, c in zip(ks, counts, strict=True)})
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 5), width=st.integers(0, 40), data=st.data(),
       limit=st.sampled_from([2048, 64, 3, 1]),
       before=st.lists(st.one_of(st.floats(-1e6, 1e6), st.floats(1e-9, 1e300)), max_size=30))
def test_update_rows_counts_what_row_by_row_updates_count(rows, width, data, limit, before):
    """The batch path (every row at once) and the plain one (row by row) give equal
    sketches, whatever the values (NaN, infinities, zeros, tiny ones, magnitudes far
    apart) and whatever the sketches held before (in-place counts, merges, folds)."""
    values = st.one_of(anything, st.floats(-50, 50), st.just(0.0), st.just(1e-12),
                       st.floats(1e-9, 1e300), st.floats(-3, 3).map(lambda v: round(v, 1)))
    x = np.array(data.draw(st.lists(st.lists(values, min_size=width, max_size=width),
                                    min_size=rows, max_size=rows)), dtype=float)
    x = x.reshape(rows, width)
    together = [sketch(before, max_buckets=limit) for _ in range(rows)]
    apart = [sketch(before, max_buckets=limit) for _ in range(rows)]
    given = [sketch(before, max_buckets=limit) for _ in range(rows)]
    QuantileSketch.update_rows(together, x)
    for q, row in zip(apart, x, strict=True):
        q.update(row)
    assert together == apart
    # with the bucket indices computed elsewhere (a decode process), the same
    QuantileSketch.update_rows(given, x, default_buckets(x))
    assert given == apart


def test_bucket_indices_given_are_used_on_the_default_grid_only():
    x = np.array([[0.5, -3.0, np.nan, 0.0, 1e-12], [2.0, 2.0, 7.5, -np.inf, 4.0]])
    wrong = default_buckets(x) + 3  # indices of other values: believed on that grid
    on_default = [QuantileSketch(), QuantileSketch()]
    QuantileSketch.update_rows(on_default, x, wrong)
    assert on_default != [sketch(row) for row in x]
    assert sum(q.missing + q.nonfinite + q.zero for q in on_default) == 4  # from x itself
    coarser = [QuantileSketch(alpha=0.05), QuantileSketch(alpha=0.05)]
    QuantileSketch.update_rows(coarser, x, wrong)  # another grid: computed here
    plain = [QuantileSketch(alpha=0.05), QuantileSketch(alpha=0.05)]
    for q, row in zip(plain, x, strict=True):
        q.update(row)
    assert coarser == plain
    assert default_buckets(np.zeros((2, 0))).shape == (2, 0)


def test_update_rows_on_values_too_far_apart_for_one_count_array(monkeypatch):
    # 16 rows x 2 signs x 36 000 buckets (1e-9 to 1e300) pass the limit of one array
    x = np.array([[1e-9, 1e300, -1e-9, 0.0], [5.0, -1e299, np.nan, np.inf]] * 8)
    calls = []
    monkeypatch.setattr(QuantileSketch, "update",
                        lambda self, row: calls.append(1) or ORIGINAL_UPDATE(self, row))
    together = [QuantileSketch() for _ in range(16)]
    QuantileSketch.update_rows(together, x)
    assert len(calls) == 16  # row by row
    monkeypatch.undo()
    assert together == [sketch(row) for row in x]
    with pytest.raises(ValueError, match="16 rows for 3 sketches"):
        QuantileSketch.update_rows([QuantileSketch()] * 3, x)


@settings(max_examples=200, deadline=None)
@given(a=st.lists(st.integers(0, 5), max_size=12), b=st.lists(st.integers(0, 5), max_size=12),
       oa=st.integers(-60, 60), ob=st.integers(-60, 60))
def test_store_union_holds_each_occupied_bucket_once_with_both_counts(a, b, oa, ob):
    """Near or far apart (dense or sorted path), the union is every bucket either store
    occupies, in increasing order, with each store's count on it."""
    from app.sketches.quantile import _Store

    def store(counts, offset):
        counts = np.array(counts, dtype=np.int64)
        nz = np.flatnonzero(counts)
        if not nz.size:
            return _Store()
        return _Store(counts[nz[0]:nz[-1] + 1], offset + int(nz[0]))

    sa, sb = store(a, oa), store(b, ob)
    expected = {}
    for s, side in ((sa, 0), (sb, 1)):
        for k, c in zip(*s.occupied(), strict=True):
            expected.setdefault(int(k), [0, 0])[side] = int(c)
    idx, ca, cb = _Store.union(sa, sb)
    assert idx.tolist() == sorted(expected)
    assert [[x, y] for x, y in zip(ca.tolist(), cb.tolist(), strict=True)] == \
        [expected[k] for k in sorted(expected)]


def test_add_rows_grows_and_folds_a_store_exactly_as_add_counts_does():
    """A store's occupied range grows in place up to its limit; one bucket more and it
    folds, as add_counts does."""
    for span in range(1, 9):
        for held in ([], [12, 12], [3], [20]):
            counts = np.zeros((1, span), dtype=np.int64)
            counts[0, 0] += 1
            counts[0, -1] += 2
            together, alone = _Store(), _Store()
            for s in (together, alone):
                s.add(np.array(held, dtype=np.int64), 4)
            _Store.add_rows([together], counts, 10, 4)
            alone.add_counts(counts[0], 10, 4)
            assert (together.counts.tolist(), together.offset, together.collapsed) == (
                alone.counts.tolist(), alone.offset, alone.collapsed), (span, held)
