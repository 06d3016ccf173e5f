import numpy as np
import pytest

from app.detectors import STATISTICS, psi


def test_identical_distributions_give_zero():
    counts = np.array([100, 200, 300, 400])
    assert psi(counts, counts) == pytest.approx(0.0, abs=1e-12)
    # smoothing is half a count per bin: proportional counts differ by a hair only
    assert psi(counts, counts * 3) == pytest.approx(0.0, abs=1e-5)


def test_known_value_without_empty_bins():
    e = np.array([5000, 5000])
    a = np.array([2000, 8000])
    pe, pa = e / e.sum(), a / a.sum()
    exact = float(np.sum((pa - pe) * np.log(pa / pe)))
    assert psi(e, a) == pytest.approx(exact, rel=1e-3)


def test_empty_bins_stay_finite():
    assert np.isfinite(psi(np.array([100, 0, 100]), np.array([0, 100, 100])))


def test_psi_grows_with_the_shift():
    rng = np.random.default_rng(1)
    edges = np.quantile(rng.normal(size=50_000), np.linspace(0, 1, 11)[1:-1])

    def counts(x):
        return np.bincount(np.searchsorted(edges, x), minlength=edges.size + 1)

    ref = counts(rng.normal(size=50_000))
    values = [psi(ref, counts(rng.normal(shift, 1, 20_000))) for shift in (0, 0.25, 0.5, 1.0)]
    assert values == sorted(values)
    assert values[0] < 0.01 and values[-1] > 0.25


def test_bins_must_match():
    with pytest.raises(ValueError, match="bins differ"):
        psi(np.array([1, 2]), np.array([1, 2, 3]))


def test_empty_window_gives_zero():
    assert psi(np.array([1, 2]), np.array([0, 0])) == 0.0


def test_registry_entry_calls_the_function():
    assert STATISTICS["psi"].function is psi
    e, a = np.array([5000, 5000]), np.array([2000, 8000])
    assert STATISTICS["psi"](e, a) == psi(e, a)
