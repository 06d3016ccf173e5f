"""p-values against scipy, and the Benjamini-Hochberg procedure."""

import numpy as np
import pytest
from scipy import special, stats

from app.detectors import STATISTICS, benjamini_hochberg, ks, p_value
from app.detectors.significance import (
    chi2_homogeneity,
    chi2_sf,
    kolmogorov_sf,
    ks_p_value,
)
from app.sketches import QuantileSketch


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 10, 49, 200, 1000])
def test_chi2_sf_matches_scipy_from_the_bulk_to_the_far_tail(df):
    xs = np.concatenate([[1e-8, 1e-3], np.linspace(0.01, 3, 20) * df,
                         df + np.sqrt(2 * df) * np.array([5, 10, 20, 40])])
    for x in xs:
        exact = stats.chi2.sf(x, df)
        assert chi2_sf(float(x), df) == pytest.approx(exact, rel=1e-10, abs=1e-300), (x, df)


def test_chi2_sf_edges():
    assert chi2_sf(0.0, 3) == 1.0 and chi2_sf(-1.0, 3) == 1.0
    assert chi2_sf(float("inf"), 3) == 0.0
    assert chi2_sf(5.0, 2.5) == pytest.approx(stats.chi2.sf(5.0, 2.5), rel=1e-10)
    with pytest.raises(ValueError, match="df must be > 0"):
        chi2_sf(1.0, 0)


def test_kolmogorov_sf_matches_scipy():
    for x in np.concatenate([[0.0, 0.05, 0.2], np.linspace(0.3, 4, 75), [5.0, 6.0, 8.0]]):
        exact = special.kolmogorov(x)
        assert kolmogorov_sf(float(x)) == pytest.approx(exact, rel=1e-10, abs=1e-300), x
        assert kolmogorov_sf(float(x)) == pytest.approx(stats.kstwobign.sf(x), rel=1e-10,
                                                        abs=1e-300)


@pytest.mark.parametrize("seed", range(5))
def test_chi2_homogeneity_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 12))
    ref = rng.multinomial(int(rng.integers(100, 50_000)), rng.dirichlet(np.ones(k)))
    win = rng.multinomial(int(rng.integers(50, 5_000)), rng.dirichlet(np.ones(k) * 20))
    ref[0] = win[0] = 0  # an empty column is dropped, as scipy requires
    table = np.vstack([ref, win])
    table = table[:, table.sum(axis=0) > 0]
    exact = stats.chi2_contingency(table, correction=False).pvalue
    assert chi2_homogeneity(ref, win) == pytest.approx(exact, rel=1e-9, abs=1e-300)


def test_chi2_homogeneity_degenerate_tables():
    assert chi2_homogeneity(np.array([5, 0]), np.array([7, 0])) == 1.0
    assert chi2_homogeneity(np.array([5, 3]), np.array([0, 0])) == 1.0
    with pytest.raises(ValueError, match="bins differ"):
        chi2_homogeneity(np.array([1, 2]), np.array([1, 2, 3]))


@pytest.mark.parametrize(("shift", "n1", "n2"), [(0.0, 2_000, 300), (0.2, 5_000, 1_000),
                                                 (0.5, 300, 300)])
def test_ks_p_value_is_the_asymptotic_kolmogorov_tail_and_conservative(shift, n1, n2):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=n1), rng.normal(shift, 1, n2)
    r, w = QuantileSketch(), QuantileSketch()
    r.update(x)
    w.update(y)
    n_eff = n1 * n2 / (n1 + n2)
    assert ks_p_value(r, w) == pytest.approx(stats.kstwobign.sf(np.sqrt(n_eff) * ks(r, w)),
                                             rel=1e-10, abs=1e-300)
    raw = stats.ks_2samp(x, y, method="asymp")
    assert ks_p_value(r, w) >= stats.kstwobign.sf(np.sqrt(n_eff) * raw.statistic) * (1 - 1e-9)


def test_p_value_dispatches_on_the_statistics_input():
    rng = np.random.default_rng(4)
    ref, win = rng.multinomial(5_000, [0.5, 0.3, 0.2]), rng.multinomial(500, [0.4, 0.3, 0.3])
    r, w = QuantileSketch(), QuantileSketch()
    r.update(rng.normal(size=500))
    w.update(rng.normal(size=500))
    for name, spec in STATISTICS.items():
        if spec.input == "counts":
            assert p_value(name, ref, win) == chi2_homogeneity(ref, win)
        else:
            assert p_value(name, r, w) == ks_p_value(r, w)
    assert p_value("ks", r, QuantileSketch()) == 1.0
    with pytest.raises(ValueError, match="unknown statistic 'nope'"):
        p_value("nope", ref, win)


def test_benjamini_hochberg_matches_scipy_adjusted_p_values():
    rng = np.random.default_rng(5)
    for _ in range(200):
        m = int(rng.integers(1, 40))
        p = np.where(rng.random(m) < 0.3, rng.random(m) * 1e-3, rng.random(m))
        for q in (0.01, 0.05, 0.2):
            expected = (stats.false_discovery_control(p, method="bh") <= q).tolist()
            assert benjamini_hochberg(p.tolist(), q) == expected


def test_benjamini_hochberg_step_up_and_validation():
    # 0.04 alone fails 0.04 <= 1 * 0.05 / 4 = 0.0125, but step-up rejects it with the rest
    assert benjamini_hochberg([0.04, 0.03, 0.02, 0.01], q=0.05) == [True] * 4
    assert benjamini_hochberg([], q=0.05) == []
    assert benjamini_hochberg([1.0, 0.9], q=0.5) == [False, False]
    for bad in ([0.1, float("nan")], [1.5], [-0.1]):
        with pytest.raises(ValueError, match="p-values must be"):
            benjamini_hochberg(bad, q=0.05)
    with pytest.raises(ValueError, match="q must be in"):
        benjamini_hochberg([0.1], q=0.0)
