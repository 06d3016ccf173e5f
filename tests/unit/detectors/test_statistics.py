"""The statistics registry: accuracy against scipy on the same raw data, and contracts."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import jensenshannon

from app.detectors import STATISTICS, StatisticSpec, choose_statistic, statistics
from app.detectors.statistics import (
    IQR_NORMAL,
    chi2,
    counts_statistics,
    hellinger,
    jensen_shannon,
    ks,
    ks_with_bound,
    psi,
    quantile_statistics,
    reference_spread,
    unseen_rate,
    wasserstein,
    wasserstein_with_bound,
)
from app.sketches import QuantileSketch

ALPHA = 0.01


def sketch(x, **kw):
    s = QuantileSketch(**kw)
    s.update(x)
    return s


def binned(ref, win, bins=10):
    """Counts on reference-quantile bins, as the numeric features are evaluated."""
    edges = np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1])

    def counts(x):
        return np.bincount(np.searchsorted(edges, x), minlength=bins)

    return counts(ref), counts(win)


PAIRS = {
    "normal_shift": lambda g: (g.normal(0, 1, 20_000), g.normal(0.3, 1.2, 5_000)),
    "same_normal": lambda g: (g.normal(10, 2, 20_000), g.normal(10, 2, 5_000)),
    "lognormal": lambda g: (g.lognormal(0, 1, 20_000), g.lognormal(0.2, 1, 3_000)),
    "mixed_sign": lambda g: (np.concatenate([g.normal(-50, 20, 5_000), np.zeros(200),
                                           g.exponential(3, 5_000)]),
                           np.concatenate([g.normal(-40, 20, 2_000), np.zeros(100),
                                           g.exponential(5, 2_000)])),
    "small": lambda g: (g.normal(0, 1, 80), g.normal(0.5, 1, 60)),
    "offset": lambda g: (g.normal(100, 1, 20_000), g.normal(100.3, 1, 5_000)),
}


@pytest.mark.parametrize("case", sorted(PAIRS))
def test_ks_brackets_scipy_and_the_bracket_is_narrow(case):
    ref, win = PAIRS[case](np.random.default_rng(11))
    r, w = sketch(ref), sketch(win)
    low, high = ks_with_bound(r, w)
    exact = stats.ks_2samp(ref, win).statistic
    assert low - 1e-12 <= exact <= high + 1e-12
    assert ks(r, w) == low
    # the bracket is at most the largest share either sample has in one bucket
    cells_r, cells_w = r.cells().counts, w.cells().counts
    assert high - low <= max(cells_r.max() / r.n, cells_w.max() / w.n) + 1e-12


@pytest.mark.parametrize("case", sorted(PAIRS))
def test_wasserstein_brackets_scipy_and_matches_it_in_reference_spreads(case):
    ref, win = PAIRS[case](np.random.default_rng(11))
    r, w = sketch(ref), sketch(win)
    spread = reference_spread(r)
    low, high = wasserstein_with_bound(r, w)
    exact_w1 = stats.wasserstein_distance(ref, win)
    assert low * spread * (1 - 1e-9) <= exact_w1 <= high * spread * (1 + 1e-9) + 1e-12
    moved = ALPHA * (np.abs(ref).mean() + np.abs(win).mean())  # each value by <= alpha |x|
    assert (high - low) * spread <= 2 * moved / (1 - ALPHA) + 1e-12
    assert low <= wasserstein(r, w) <= high
    estimate = wasserstein(r, w) * spread
    assert abs(estimate - exact_w1) <= moved + 1e-12
    # spread: IQR / 1.349 from the sketch vs the raw data (same rank convention)
    q25, q75 = np.quantile(ref, [0.25, 0.75], method="lower")
    raw_spread = (q75 - q25) / IQR_NORMAL
    spread_tol = ALPHA * (abs(q25) + abs(q75)) / IQR_NORMAL
    assert abs(spread - raw_spread) <= spread_tol * (1 + 1e-9)
    # hence the statistic against scipy's W1 over the raw spread:
    exact = exact_w1 / raw_spread
    tol = moved / spread + exact_w1 * spread_tol / (spread * raw_spread)
    assert abs(wasserstein(r, w) - exact) <= tol * (1 + 1e-9) + 1e-12
    if case in ("normal_shift", "same_normal", "lognormal"):  # typical data: tight
        assert abs(wasserstein(r, w) - exact) <= 0.01


def test_wasserstein_reads_a_normal_mean_shift_in_sds():
    rng = np.random.default_rng(1)
    ref, win = rng.normal(5, 2, 50_000), rng.normal(5.6, 2, 50_000)
    assert wasserstein(sketch(ref), sketch(win)) == pytest.approx(0.3, abs=0.02)


def test_wasserstein_of_a_constant_reference():
    r = sketch(np.full(100, 3.0))
    assert reference_spread(r) == 0.0
    assert wasserstein(r, sketch(np.full(10, 3.0))) == 0.0
    assert wasserstein(r, sketch(np.full(10, 4.0))) == float("inf")
    # one dominant value: the IQR is 0, the sd of the representatives takes over
    mostly = sketch(np.concatenate([np.zeros(900), np.ones(100)]))
    assert reference_spread(mostly) == pytest.approx(0.3, rel=0.02)


@pytest.mark.parametrize("case", sorted(PAIRS))
def test_binned_statistics_match_scipy(case):
    ref, win = PAIRS[case](np.random.default_rng(11))
    rc, wc = binned(ref, win)
    p, q = rc / rc.sum(), wc / wc.sum()
    assert jensen_shannon(rc, wc) == pytest.approx(jensenshannon(p, q, base=2), rel=1e-9,
                                                   abs=1e-12)
    assert hellinger(rc, wc) == pytest.approx(
        np.sqrt(max(0.0, 1 - np.sum(np.sqrt(p * q)))), rel=1e-6, abs=1e-7)
    # chi2 is Cramér's V of the table with both rows scaled to one total ...
    table = np.vstack([p, q]) * 1e6
    table = table[:, table.sum(axis=0) > 0]
    v = np.sqrt(stats.chi2_contingency(table, correction=False)[0] / table.sum())
    assert chi2(rc, wc) == pytest.approx(v, rel=1e-9, abs=1e-12)
    assert chi2(rc, wc) == pytest.approx(
        stats.contingency.association(table.round().astype(int), method="cramer"),
        rel=1e-4, abs=1e-6)


def test_chi2_is_cramers_v_for_equal_samples_and_ignores_the_size_ratio():
    rng = np.random.default_rng(2)
    cats = np.array([0.2, 0.2, 0.2, 0.2, 0.2])
    moved = np.array([0.35, 0.1625, 0.1625, 0.1625, 0.1625])
    same_n = np.vstack([rng.multinomial(5_000, cats), rng.multinomial(5_000, moved)])
    v = np.sqrt(stats.chi2_contingency(same_n, correction=False)[0] / same_n.sum())
    assert chi2(same_n[0], same_n[1]) == pytest.approx(v, rel=1e-9)
    # raw V of an unbalanced table shrinks with the ratio; ours does not
    big_ref = (cats * 500_000).astype(int)
    win = (moved * 5_000).astype(int)
    raw = np.sqrt(stats.chi2_contingency(np.vstack([big_ref, win]),
                                         correction=False)[0] / (big_ref.sum() + win.sum()))
    assert raw < 0.04
    assert chi2(big_ref, win) == pytest.approx(chi2(big_ref // 100, win), rel=1e-12)
    assert chi2(big_ref, win) == pytest.approx(0.168, abs=0.001)


def test_psi_smoothing_differs_from_the_raw_formula_by_little():
    ref, win = PAIRS["normal_shift"](np.random.default_rng(11))
    rc, wc = binned(ref, win)
    p, q = rc / rc.sum(), wc / wc.sum()
    raw = float(np.sum((q - p) * np.log(q / p)))
    # half a count per bin moves each share by at most 0.5 * bins / n
    assert psi(rc, wc) == pytest.approx(raw, rel=1e-2)


def test_unseen_rate():
    assert unseen_rate(np.array([100, 100, 0]), np.array([50, 30, 20])) == pytest.approx(0.2)
    assert unseen_rate(np.array([90, 10]), np.array([95, 5])) == 0.0
    assert unseen_rate(np.array([90, 10]), np.array([0, 0])) == 0.0


# -- registry contract: every entry, picked up automatically -------------------------------

def inputs(spec, same):
    rng = np.random.default_rng(3)
    x = rng.lognormal(0, 1, 3_000)
    y = x if same else rng.normal(1, 2, 1_000)
    if spec.input == "quantiles":
        return sketch(x), sketch(y)
    rc, wc = binned(x, y)
    return np.append(rc, 3), np.append(wc, 3 if same else 40)


@pytest.mark.parametrize("name", sorted(STATISTICS))
def test_registry_contract(name):
    spec = STATISTICS[name]
    assert isinstance(spec, StatisticSpec) and spec.name == name
    assert spec.function.__doc__ and len(spec.function.__doc__.strip()) > 40
    assert 0 < spec.warning < spec.critical
    assert spec.input in {"counts", "quantiles"}
    assert spec.feature_types and spec.feature_types <= {"numeric", "categorical"}
    ref, win = inputs(spec, same=True)
    assert spec(ref, win) == pytest.approx(0.0, abs=1e-12)
    ref, win = inputs(spec, same=False)
    value = spec(ref, win)
    assert value > 0 and np.isfinite(value)
    empty = (QuantileSketch() if spec.input == "quantiles" else np.zeros_like(win))
    assert spec(ref, empty) == 0.0


@pytest.mark.parametrize("name", sorted(STATISTICS))
def test_statistics_are_non_negative_on_random_inputs(name):
    spec = STATISTICS[name]
    rng = np.random.default_rng(4)
    for _ in range(25):
        if spec.input == "counts":
            k = int(rng.integers(2, 12))
            a, b = rng.integers(0, 50, k), rng.integers(0, 50, k)
        else:
            a = sketch(rng.standard_t(2, int(rng.integers(1, 300))))
            b = sketch(rng.standard_t(2, int(rng.integers(1, 300))) * rng.uniform(0.1, 5))
        value = spec(a, b)
        assert value >= 0
        if name not in {"psi", "wasserstein"}:
            assert value <= 1 + 1e-12


def test_bounded_statistics_reach_one_on_disjoint_supports():
    a, b = np.array([10, 0]), np.array([0, 10])
    for f in (jensen_shannon, hellinger, chi2):
        assert f(a, b) == pytest.approx(1.0)
    assert ks(sketch(np.ones(5)), sketch(np.full(5, 9.0))) == 1.0


def test_spec_validates_thresholds_and_types():
    with pytest.raises(ValueError, match="warning < critical"):
        StatisticSpec(psi, "counts", frozenset({"numeric"}), 0.3, 0.2)
    with pytest.raises(ValueError, match="feature_types"):
        StatisticSpec(psi, "counts", frozenset({"text"}), 0.1, 0.2)


def test_bins_must_match():
    for f in (jensen_shannon, hellinger, chi2, unseen_rate):
        with pytest.raises(ValueError, match="bins differ"):
            f(np.array([1, 2]), np.array([1, 2, 3]))


def test_choose_statistic():
    assert choose_statistic("numeric", 999) == "ks"
    assert choose_statistic("numeric", 1000) == "wasserstein"
    assert choose_statistic("categorical", 10) == "chi2"
    assert choose_statistic("categorical", 10_000) == "jensen_shannon"
    for ftype in ("numeric", "categorical"):
        for n in (10, 10_000):
            assert ftype in STATISTICS[choose_statistic(ftype, n)].feature_types
    with pytest.raises(ValueError, match="feature_type must be"):
        choose_statistic("text", 10)


def test_a_reference_spread_is_remembered_until_its_counts_change():
    rng = np.random.default_rng(5)
    ref = QuantileSketch()
    ref.update(rng.normal(0, 2, 5_000))
    first = reference_spread(ref)
    assert statistics._SPREADS[id(ref)][2] == first == statistics._spread(ref)
    ref.update(rng.normal(0, 20, 5_000))  # wider: the remembered spread no longer holds
    assert reference_spread(ref) == statistics._spread(ref) > first


COUNTS_STATISTICS = [n for n, spec in STATISTICS.items() if spec.input == "counts"]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12).flatmap(lambda k: st.lists(
    st.tuples(st.lists(st.integers(0, 10**6), min_size=k, max_size=k),
              st.lists(st.sampled_from([0, 0, 1, 7, 1000, 10**9]), min_size=k, max_size=k)),
    min_size=1, max_size=8)))
def test_features_computed_together_equal_each_computed_alone(rows):
    """A row's statistics do not depend on the other rows of the batch (a window close
    computes the features of one bin count together); empty sides read 0."""
    expected = np.array([e for e, _ in rows])
    actual = np.array([a for _, a in rows])
    together = counts_statistics(expected, actual, COUNTS_STATISTICS)
    for i, (e, a) in enumerate(rows):
        alone = counts_statistics(expected[i:i + 1], actual[i:i + 1], COUNTS_STATISTICS)
        for name in COUNTS_STATISTICS:
            assert together[name][i] == alone[name][0] == STATISTICS[name](e, a)
            assert np.isfinite(together[name][i]) and together[name][i] >= 0
            if not sum(e) or not sum(a):
                assert together[name][i] == 0.0


def test_counts_statistics_refuse_mismatched_bins_and_unknown_names():
    with pytest.raises(ValueError, match="bins differ"):
        counts_statistics(np.ones((2, 3)), np.ones((2, 4)), ["psi"])
    with pytest.raises(ValueError, match="not a counts statistic"):
        counts_statistics(np.ones((1, 3)), np.ones((1, 3)), ["ks"])


@settings(max_examples=150, deadline=None)
@given(data=st.data(), pairs=st.integers(1, 6), max_buckets=st.sampled_from([2048, 8]),
       scale=st.sampled_from([1.0, 1e-3, 1e6]))
def test_quantile_statistics_of_many_pairs_are_each_pairs(data, pairs, max_buckets, scale):
    """All pairs on one grid of cells give each pair's KS exactly and its W1 up to
    rounding; pairs that cannot share a grid (a folded sign) go pair by pair."""
    value = st.one_of(st.floats(-5, 5), st.just(0.0), st.floats(-1e-9, 1e-9))
    out = []
    for _ in range(pairs):
        ref, win = QuantileSketch(max_buckets=max_buckets), QuantileSketch(max_buckets=max_buckets)
        ref.update(np.array(data.draw(st.lists(value, min_size=1, max_size=40))) * scale)
        win.update(np.array(data.draw(st.lists(value, max_size=40))) * scale)
        out.append((ref, win))
    together = quantile_statistics(out, ["ks", "wasserstein"])
    for i, (ref, win) in enumerate(out):
        assert together["ks"][i] == ks(ref, win)
        assert together["wasserstein"][i] == pytest.approx(wasserstein(ref, win), rel=1e-9,
                                                           abs=1e-12)


def test_quantile_statistics_know_only_the_quantile_statistics():
    with pytest.raises(ValueError, match="'psi' is not a quantiles statistic"):
        quantile_statistics([(QuantileSketch(), QuantileSketch())], ["psi"])


def test_quantile_statistics_near_the_largest_floats_go_pair_by_pair():
    """A bucket whose representative is past the floats (inf) would turn every other
    pair's W1 on the shared grid into NaN (0 * inf): such pairs go pair by pair."""
    huge, huge_w, near, near_w = (QuantileSketch() for _ in range(4))
    huge.update(np.array([1.79e308, 1.7e308]))
    huge_w.update(np.array([1.78e308]))
    near.update(np.array([1e306, 3e306]))
    near_w.update(np.array([2e306]))
    with np.errstate(invalid="ignore", over="ignore"):  # (the huge pair's own W1: inf)
        out = quantile_statistics([(huge, huge_w), (near, near_w)], ["ks", "wasserstein"])
        pair = [ks(huge, huge_w), ks(near, near_w)], wasserstein(near, near_w)
    assert out["wasserstein"][1] == pair[1] and np.isfinite(out["wasserstein"][1])
    assert out["ks"].tolist() == pair[0]
