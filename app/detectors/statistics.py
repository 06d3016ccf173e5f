"""Drift statistics: numbers only; the policy layer judges them against thresholds.

Two kinds of input, named by :attr:`StatisticSpec.input`:

``"counts"``
    Reference counts and window counts over the same bins: reference-quantile bins for
    a numeric feature, the vocabulary plus a last "other" bucket for a categorical one.
``"quantiles"``
    A reference and a window :class:`~app.sketches.QuantileSketch` on the same grid.

Every statistic is 0 for identical distributions, non-negative, does not grow with the
sample size (only its noise shrinks), and is 0 when either side is empty.
:data:`STATISTICS` is the one registry; :func:`choose_statistic` serves
``statistic: auto``.

Default thresholds (warning / critical): psi 0.05 / 0.25, jensen_shannon 0.1 / 0.2,
hellinger 0.1 / 0.2, chi2 0.1 / 0.2, unseen_rate 0.01 / 0.05, ks 0.1 / 0.2, wasserstein
0.1 / 0.25. Each warning level that applies catches the two "modest shift" cases the
product must flag: a numeric mean shift of 0.3 sd (population values for a normal
feature: PSI 0.086 on ten reference-decile bins, KS 0.119, W1 0.3 sd) and a category
moving from 20% to 35% of five (PSI 0.115, JS 0.143, Hellinger 0.120, chi2 0.168).
PSI's customary 0.1 misses the first, hence 0.05. Undrifted windows stay far below
every level at large n (at n = 50 000 no statistic reaches half its warning level);
at small n chance differences do cross them, and the significance gate of
:mod:`app.detectors.significance` is what keeps those windows quiet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from app.sketches.quantile import Cells, QuantileSketch, aligned, dense_pairs

Counts = npt.NDArray[np.int64] | npt.NDArray[np.float64]
FloatArray = npt.NDArray[np.float64]

#: Additive smoothing per bin, in counts: keeps empty bins from making PSI infinite
#: while vanishing as samples grow.
SMOOTHING = 0.5

#: IQR of the standard normal: ``IQR / IQR_NORMAL`` is the sd for normal data.
IQR_NORMAL = 1.3489795003921634


def _one(name: str, expected: Counts, actual: Counts) -> float:
    """One feature's statistic: :func:`counts_statistics` of one row."""
    e, a = np.asarray(expected), np.asarray(actual)
    if e.ndim != 1 or e.shape != a.shape:
        raise ValueError(f"bins differ: reference has {e.shape}, window has {a.shape}")
    return float(counts_statistics(e[None, :], a[None, :], [name])[name][0])


def psi(expected: Counts, actual: Counts) -> float:
    """Population Stability Index of ``actual`` against ``expected`` (both counts per bin).

    ``sum((a - e) * ln(a / e))`` over bins, with both sides smoothed by half a count per
    bin. Rules of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift (the
    registry warns from 0.05: with ten bins a 0.3 sd shift reads about 0.086).

    >>> round(psi(np.array([500, 500]), np.array([500, 500])), 6)
    0.0
    >>> round(psi(np.array([500, 500]), np.array([200, 800])), 3)
    0.415
    """
    return _one("psi", expected, actual)


def jensen_shannon(expected: Counts, actual: Counts) -> float:
    """Jensen-Shannon distance (square root of the divergence, log base 2), in [0, 1].

    Computed on the raw proportions (no smoothing: empty bins are harmless here), so it
    equals ``scipy.spatial.distance.jensenshannon(p, q, base=2)``.

    >>> jensen_shannon(np.array([500, 500]), np.array([500, 500]))
    0.0
    >>> round(jensen_shannon(np.array([500, 500]), np.array([200, 800])), 3)
    0.27
    """
    return _one("jensen_shannon", expected, actual)


def hellinger(expected: Counts, actual: Counts) -> float:
    """Hellinger distance ``sqrt(sum((sqrt(p) - sqrt(q))**2) / 2)``, in [0, 1].

    >>> hellinger(np.array([500, 500]), np.array([500, 500]))
    0.0
    >>> round(hellinger(np.array([500, 500]), np.array([200, 800])), 3)
    0.227
    """
    return _one("hellinger", expected, actual)


def chi2(expected: Counts, actual: Counts) -> float:
    """Cramér's V of the 2 x k table (reference, window), rows weighted equally; in [0, 1].

    ``V = sqrt(chi2 / N)`` for a 2-row table. On the raw table V also measures how
    unequal the two sample sizes are: with a reference ten times the window, a category
    moving from 20% to 35% gives V = 0.097, with a hundred times 0.034, and for a fixed
    reference V grows with the window size. So both rows are rescaled to the same total
    first, which makes V a function of the two distributions only:
    ``V**2 = sum((p - q)**2 / (p + q)) / 2`` (half the triangular discrimination). It
    equals the usual Cramér's V whenever the two samples have the same size. The
    significance of the difference is a separate question
    (:func:`app.detectors.significance.p_value` runs the chi-square test on the raw
    counts).

    >>> chi2(np.array([500, 500]), np.array([5, 5]))
    0.0
    >>> round(chi2(np.array([500, 500]), np.array([200, 800])), 3)
    0.314
    """
    return _one("chi2", expected, actual)


def unseen_rate(expected: Counts, actual: Counts) -> float:
    """Share of the window in the "other" bucket (the last one) beyond the reference's.

    ``max(0, other_window / n_window - other_reference / n_reference)``: categories the
    reference never had, net of the reference's own long tail.

    >>> unseen_rate(np.array([90, 10]), np.array([75, 25]))
    0.15
    >>> unseen_rate(np.array([90, 10]), np.array([95, 5]))
    0.0
    """
    return _one("unseen_rate", expected, actual)


def counts_statistics(expected: npt.ArrayLike, actual: npt.ArrayLike,
                      names: Sequence[str]) -> dict[str, FloatArray]:
    """The ``"counts"`` statistics ``names`` of many features at once: row ``i`` of
    ``expected`` and ``actual`` (2-D, one bin count) is one feature's pair of counts,
    and element ``i`` of each result is what the statistic gives for that pair.

    A window close compares every feature with its reference; row by row this costs a
    dozen small numpy calls per statistic and feature, here a dozen per statistic.

    >>> e = np.array([[500, 500], [500, 500], [10, 0]])
    >>> a = np.array([[500, 500], [200, 800], [0, 0]])
    >>> {k: v.round(3).tolist() for k, v in counts_statistics(e, a, ["psi", "chi2"]).items()}
    {'psi': [0.0, 0.415, 0.0], 'chi2': [0.0, 0.314, 0.0]}
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.ndim != 2 or e.shape != a.shape:
        raise ValueError(f"bins differ: reference has {e.shape}, window has {a.shape}")
    e_n, a_n = e.sum(axis=1), a.sum(axis=1)
    both = (e_n > 0) & (a_n > 0)  # a statistic is 0 when either side is empty
    with np.errstate(divide="ignore", invalid="ignore"):
        p, q = e / e_n[:, None], a / a_n[:, None]
        out: dict[str, FloatArray] = {}
        for name in names:
            if name == "psi":
                pe = (e + SMOOTHING) / (e + SMOOTHING).sum(axis=1)[:, None]
                pa = (a + SMOOTHING) / (a + SMOOTHING).sum(axis=1)[:, None]
                value = np.sum((pa - pe) * np.log(pa / pe), axis=1)
            elif name == "jensen_shannon":
                m = (p + q) / 2
                kl = (np.sum(np.where(p > 0, p * np.log2(p / m), 0.0), axis=1)
                      + np.sum(np.where(q > 0, q * np.log2(q / m), 0.0), axis=1))
                value = np.sqrt(np.maximum(0.0, kl / 2))
            elif name == "hellinger":
                value = np.sqrt(np.sum((np.sqrt(p) - np.sqrt(q)) ** 2, axis=1) / 2)
            elif name == "chi2":
                total = p + q
                value = np.sqrt(np.sum(np.where(total > 0, (p - q) ** 2 / total, 0.0),
                                       axis=1) / 2)
            elif name == "unseen_rate":
                value = np.maximum(0.0, q[:, -1] - p[:, -1])
            else:
                raise ValueError(f"{name!r} is not a counts statistic")
            out[name] = np.where(both, value, 0.0)
    return out


_CDFS: list[Any] = []  # the last pair's: [its aligned cells, the result]


def _cdfs(reference: QuantileSketch, window: QuantileSketch
          ) -> tuple[Cells, FloatArray, FloatArray, FloatArray, FloatArray] | None:
    """Both sketches' CDFs on their :func:`aligned` cells: ``(cells, reference's and
    window's CDF at each cell's upper edge, then at its lower edge)``; ``None`` when a
    side is empty. KS, its p-value and W1 all read them at a window close: the last
    pair's are reused while :func:`aligned` returns the same cells."""
    cells, wc = aligned(reference, window)
    if _CDFS and _CDFS[0] is cells:
        return _CDFS[1]  # type: ignore[no-any-return]
    rc = cells.counts
    r_n, w_n = rc.sum(), wc.sum()
    out = None
    if r_n and w_n:
        ra, wa = np.cumsum(rc) / r_n, np.cumsum(wc) / w_n
        out = (cells, ra, wa, ra - rc / r_n, wa - wc / w_n)
    _CDFS[:] = [cells, out]
    return out


def ks_with_bound(reference: QuantileSketch, window: QuantileSketch) -> tuple[float, float]:
    """Bounds ``(low, high)`` on the two-sample Kolmogorov-Smirnov D of the raw data.

    Both sketches share one bucket grid, so their CDFs are exact at bucket boundaries;
    ``low`` is the largest CDF gap over those boundaries, and inside a bucket each CDF
    stays between its values at the two edges, which gives ``high``. The true D (what
    ``scipy.stats.ks_2samp`` computes on the raw values) lies in ``[low, high]``;
    ``high - low`` is at most the largest share either sample has in one bucket.
    """
    cdfs = _cdfs(reference, window)
    if cdfs is None:
        return 0.0, 0.0
    _, ra, wa, rb, wb = cdfs
    low = float(np.max(np.abs(ra - wa)))
    high = float(max(low, np.max(ra - wb), np.max(wa - rb)))
    return low, high


def ks(reference: QuantileSketch, window: QuantileSketch) -> float:
    """Two-sample Kolmogorov-Smirnov D from two quantile sketches, in [0, 1].

    The largest gap between the two CDFs at the bucket boundaries, where they are exact:
    the lower end of :func:`ks_with_bound`, never above the D of the raw data.

    >>> rng = np.random.default_rng(3)
    >>> ref, win = QuantileSketch(), QuantileSketch()
    >>> ref.update(rng.normal(size=20_000)); win.update(rng.normal(0.5, 1, 20_000))
    >>> round(ks(ref, win), 2)
    0.2
    """
    return ks_with_bound(reference, window)[0]


def quantile_statistics(pairs: Sequence[tuple[QuantileSketch, QuantileSketch]],
                        names: Sequence[str]) -> dict[str, FloatArray]:
    """The ``"quantiles"`` statistics ``names`` of many (reference, window) pairs at
    once: element ``i`` of each result is what the statistic gives for ``pairs[i]``.

    A window close compares every numeric feature with its reference; pair by pair, the
    two sketches' aligned cells and CDFs cost a few dozen small numpy calls each. Here
    the pairs share one grid of cells (:func:`~app.sketches.quantile.dense_pairs`) and
    the CDFs are rows of one array: KS is the same number, W1 the same up to the
    rounding of its sum. Pairs that cannot share a grid go pair by pair.

    >>> rng = np.random.default_rng(3)
    >>> ref, a, b = QuantileSketch(), QuantileSketch(), QuantileSketch()
    >>> ref.update(rng.normal(size=20_000)); a.update(rng.normal(0.5, 1, 20_000))
    >>> b.update(rng.normal(size=5_000))
    >>> out = quantile_statistics([(ref, a), (ref, b)], ["ks", "wasserstein"])
    >>> out["ks"].round(2).tolist(), out["wasserstein"].round(1).tolist()
    ([0.2, 0.01], [0.5, 0.0])
    """
    unknown = [n for n in names if n not in ("ks", "wasserstein")]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a quantiles statistic")
    out = {name: np.zeros(len(pairs)) for name in names}
    dense = dense_pairs(pairs)
    if dense is None or not np.isfinite(dense[0]).all():  # (a bucket's value past floats)
        for i, (ref, win) in enumerate(pairs):
            for name in names:
                out[name][i] = STATISTICS[name](ref, win)
        return out
    value, rc, wc = dense
    r_n, w_n = rc.sum(axis=1), wc.sum(axis=1)
    both = (r_n > 0) & (w_n > 0)  # a statistic is 0 when either side is empty
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.abs(np.cumsum(rc, axis=1) / r_n[:, None] - np.cumsum(wc, axis=1) / w_n[:, None])
    if "ks" in out:
        out["ks"] = np.where(both, gap.max(axis=1, initial=0.0), 0.0)
    if "wasserstein" in out:
        w1 = gap[:, :-1] @ np.diff(value) if value.size > 1 else np.zeros(len(pairs))
        out["wasserstein"] = np.array([
            _normalised(float(w), reference_spread(ref)) if ok else 0.0
            for w, ok, (ref, _) in zip(w1, both.tolist(), pairs, strict=True)])
    return out


def reference_spread(reference: QuantileSketch) -> float:
    """Robust spread of a sketch: ``IQR / 1.349`` (the sd for normal data).

    Falls back to the sd of the bucket representatives when the IQR is 0 (a feature
    with one dominant value); 0 for a constant or empty sketch. Remembered per sketch
    while its counts stay the same: a reference's spread is asked at every window close.
    """
    key = (reference.n, reference.zero, reference.positive.offset,
           reference.positive.counts.size, reference.negative.offset,
           reference.negative.counts.size)
    hit = _SPREADS.get(id(reference))
    if hit is not None and hit[0] is reference and hit[1] == key:
        return hit[2]
    spread = _spread(reference)
    if len(_SPREADS) >= _SPREADS_MAX:
        _SPREADS.clear()
    _SPREADS[id(reference)] = (reference, key, spread)
    return spread


# id(sketch) -> (the sketch, what its counts looked like, its spread); the sketch is kept,
# so that its id is not reused by another while the entry lives
_SPREADS: dict[int, tuple[QuantileSketch, tuple[int, ...], float]] = {}
_SPREADS_MAX = 4096


def _spread(reference: QuantileSketch) -> float:
    if reference.n == 0:
        return 0.0
    q25, q75 = reference.quantile(np.array([0.25, 0.75]))
    spread = float(q75 - q25) / IQR_NORMAL
    if spread > 0:
        return spread
    c = reference.cells()
    mean = float(np.dot(c.counts, c.value)) / reference.n
    return float(np.sqrt(np.dot(c.counts, (c.value - mean) ** 2) / reference.n))


def _w1_cells(reference: QuantileSketch,
              window: QuantileSketch) -> tuple[float, float, float] | None:
    """Unnormalised W1 as ``(estimate, low, high)``; ``None`` when a side is empty."""
    cdfs = _cdfs(reference, window)
    if cdfs is None:
        return None
    cells, ra, wa, rb, wb = cdfs
    gap = np.abs(ra - wa)
    estimate = float(np.dot(gap[:-1], np.diff(cells.value)))
    between = float(np.dot(gap[:-1], cells.lower[1:] - cells.upper[:-1]))
    width = cells.upper - cells.lower
    inside_hi = np.maximum(ra - wb, wa - rb)
    inside_lo = np.maximum(0.0, np.maximum(rb - wa, wb - ra))
    return (estimate, between + float(np.dot(inside_lo, width)),
            between + float(np.dot(inside_hi, width)))


def _normalised(value: float, spread: float) -> float:
    if value == 0:
        return 0.0
    return value / spread if spread > 0 else float("inf")


def wasserstein_with_bound(reference: QuantileSketch,
                           window: QuantileSketch) -> tuple[float, float]:
    """Bounds ``(low, high)`` on the raw data's W1, in units of :func:`reference_spread`.

    ``W1 = integral |F_ref - F_window| dx``; between buckets both CDFs are exact, inside a
    bucket each stays between its edge values. A bucket is ``2 alpha / (1 - alpha) |x|``
    wide, so the interval is at most ``2 alpha / (1 - alpha) (E|X_ref| + E|X_window|)``
    wide before normalising (the worst case, when the CDFs cross inside no bucket).
    """
    w = _w1_cells(reference, window)
    if w is None:
        return 0.0, 0.0
    spread = reference_spread(reference)
    return _normalised(w[1], spread), _normalised(w[2], spread)


def wasserstein(reference: QuantileSketch, window: QuantileSketch) -> float:
    """Wasserstein-1 distance in reference spreads (``IQR / 1.349``: sds for normal data).

    Computed between the two sketches' bucket representatives; every value is within
    ``alpha |x|`` of its representative, so before normalising this is within
    ``alpha (E|X_ref| + E|X_window|)`` of the raw data's W1, and inside the bounds of
    :func:`wasserstein_with_bound`. Divided by :func:`reference_spread`, a
    robust spread (one outlier in the reference does not mute the statistic as it would
    the sd; float sums would also break the sketch's exact, order-free merge). ``inf``
    when the reference is constant and the window is not. A mean shift of ``d`` sds of a
    normal feature reads ``d``.

    >>> rng = np.random.default_rng(3)
    >>> ref, win = QuantileSketch(), QuantileSketch()
    >>> ref.update(rng.normal(size=20_000)); win.update(rng.normal(0.5, 1, 20_000))
    >>> round(wasserstein(ref, win), 1)
    0.5
    """
    w = _w1_cells(reference, window)
    if w is None:
        return 0.0
    return _normalised(w[0], reference_spread(reference))


Input = Literal["counts", "quantiles"]
NUMERIC, CATEGORICAL = "numeric", "categorical"
BOTH = frozenset({NUMERIC, CATEGORICAL})


@dataclass(frozen=True)
class StatisticSpec:
    """A registered statistic: ``spec(reference, window) -> float``.

    ``input`` says what both arguments are (``"counts"``: arrays over the same bins;
    ``"quantiles"``: :class:`~app.sketches.QuantileSketch`), ``feature_types`` where it
    applies, ``warning``/``critical`` its default thresholds.
    """

    function: Callable[[Any, Any], float]
    input: Input
    feature_types: frozenset[str]
    warning: float
    critical: float

    def __post_init__(self) -> None:
        if not 0 < self.warning < self.critical:
            raise ValueError(f"thresholds must satisfy 0 < warning < critical, got "
                             f"{self.warning} and {self.critical}")
        if not self.feature_types or not self.feature_types <= BOTH:
            raise ValueError(f"feature_types must be a subset of {sorted(BOTH)}, got "
                             f"{sorted(self.feature_types)}")

    def __call__(self, reference: Any, window: Any) -> float:
        return self.function(reference, window)

    @property
    def name(self) -> str:
        return self.function.__name__


# Default thresholds: see the module docstring.
STATISTICS: dict[str, StatisticSpec] = {
    "psi": StatisticSpec(psi, "counts", BOTH, 0.05, 0.25),
    "jensen_shannon": StatisticSpec(jensen_shannon, "counts", BOTH, 0.1, 0.2),
    "hellinger": StatisticSpec(hellinger, "counts", BOTH, 0.1, 0.2),
    "chi2": StatisticSpec(chi2, "counts", BOTH, 0.1, 0.2),
    "unseen_rate": StatisticSpec(unseen_rate, "counts", frozenset({CATEGORICAL}), 0.01, 0.05),
    "ks": StatisticSpec(ks, "quantiles", frozenset({NUMERIC}), 0.1, 0.2),
    "wasserstein": StatisticSpec(wasserstein, "quantiles", frozenset({NUMERIC}), 0.1, 0.25),
}

#: Window size from which ``statistic: auto`` switches to the large-sample statistic.
LARGE_N = 1000


def choose_statistic(feature_type: str, n: int) -> str:
    """The statistic ``statistic: auto`` uses for a feature type and window size.

    Numeric: ``ks`` below :data:`LARGE_N` values, else ``wasserstein``. Categorical:
    ``chi2`` below, else ``jensen_shannon``. KS and Cramér's V come with the classical
    tests whose p-values gate small windows, and neither needs many values per bin. With
    many values every test is significant and what matters is how far the distribution
    moved: W1 reads in reference sds ("the feature moved by 0.4 sd") and JS is a bounded
    metric on the category shares whose plug-in bias (from empty or sparse categories)
    has faded by then.

    >>> choose_statistic("numeric", 300), choose_statistic("categorical", 50_000)
    ('ks', 'jensen_shannon')
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if feature_type == NUMERIC:
        return "ks" if n < LARGE_N else "wasserstein"
    if feature_type == CATEGORICAL:
        return "chi2" if n < LARGE_N else "jensen_shannon"
    raise ValueError(f"feature_type must be {NUMERIC!r} or {CATEGORICAL!r}, got "
                     f"{feature_type!r}")
