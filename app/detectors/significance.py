"""False-alarm control: two-sample p-values and the Benjamini-Hochberg procedure.

Numbers only, like the statistics. The rule the policy layer applies to a window:

    a feature alerts when its effect statistic is at or above the threshold **and** its
    test is rejected by Benjamini-Hochberg at ``q`` (default :data:`DEFAULT_Q`, 0.005) over
    the p-values of all features evaluated in that window.

Neither half suffices alone. At large n every p-value is tiny, even for differences
nobody cares about, and the effect threshold is what binds. At small n the statistics
are noisy enough to cross a threshold by chance, and the significance gate is what
binds; Benjamini-Hochberg keeps that gate honest across many features (under no drift
at all, a window raises any alert with probability at most ``q``). When several
statistics are evaluated per feature, each distinct test (the feature's counts, its
sketches) enters the window's family once.

The p-value matches the statistic's input: the chi-square test of homogeneity on the
raw 2 x k counts for the binned statistics, the asymptotic Kolmogorov distribution of
the two-sample KS statistic for the sketch statistics (the lower bound of the bucketed
D, so the p-value errs on the large, quiet side).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.detectors.statistics import STATISTICS, Counts, ks
from app.sketches.quantile import QuantileSketch

#: Default false discovery rate across the tests of one window. Under no drift BH
#: rejects anything with probability about ``q`` per window, and at small n the effect
#: thresholds do not bind (a chance difference big enough to pass BH is also above them):
#: with 23 features at n = 300, ``q = 0.01`` alarmed in 1.1% of undrifted windows when
#: every feature used PSI, JS or chi2 (0.7% with ``statistic: auto``; 5 000 windows).
#: Half that keeps the target of under 1% of windows with room for sampling noise, at
#: no cost at n >= a few thousand, where real shifts have p-values far below it.
DEFAULT_Q = 0.005

_EPS = 1e-16
_MAX_ITER = 100_000


def chi2_sf(x: float, df: float) -> float:
    """Survival function of the chi-square distribution, ``P(X > x)`` for ``df`` dof.

    The regularized upper incomplete gamma ``Q(df/2, x/2)``: its power series below
    ``a + 1``, Lentz's continued fraction above (accurate to ~1e-14 relative, also far in
    the tail).

    >>> round(chi2_sf(3.841458820694124, 1), 6)
    0.05
    >>> chi2_sf(0.0, 4)
    1.0
    """
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    if math.isnan(x):
        raise ValueError("x is NaN")
    if x <= 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    a, z = df / 2.0, x / 2.0
    log_prefactor = -z + a * math.log(z) - math.lgamma(a)
    if z < a + 1:  # series for the lower function P(a, z)
        term = total = 1.0 / a
        ap = a
        for _ in range(_MAX_ITER):
            ap += 1.0
            term *= z / ap
            total += term
            if term < total * _EPS:
                break
        return min(1.0, max(0.0, 1.0 - total * math.exp(log_prefactor)))
    tiny = 1e-300  # continued fraction for Q(a, z), modified Lentz
    b = z + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return min(1.0, max(0.0, math.exp(log_prefactor) * h))


def kolmogorov_sf(x: float) -> float:
    """Survival function of the Kolmogorov distribution (limit of ``sqrt(n) * D``).

    ``2 sum (-1)**(k-1) exp(-2 k**2 x**2)`` from ``x = 1``, below that one minus the
    dual (Jacobi theta) series of the CDF; both converge in a few terms.

    >>> round(kolmogorov_sf(1.3580986393225505), 6)
    0.05
    """
    if math.isnan(x):
        raise ValueError("x is NaN")
    if x <= 0:
        return 1.0
    if x < 1.0:
        c = -(math.pi**2) / (8.0 * x * x)
        cdf = sum(math.exp(c * (2 * k - 1) ** 2) for k in range(1, 12))
        return min(1.0, max(0.0, 1.0 - math.sqrt(2.0 * math.pi) / x * cdf))
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * x * x)
        total += term if k % 2 else -term
        if term < _EPS * total:
            break
    return min(1.0, max(0.0, 2.0 * total))


def chi2_homogeneity(reference: Counts, window: Counts) -> float:
    """p-value of the chi-square test that both count vectors share one distribution.

    The 2 x k table of raw counts, all-zero columns dropped, ``k - 1`` degrees of
    freedom, no continuity correction; 1.0 when a side is empty or one column remains.
    As for any chi-square test the approximation needs expected counts of about 5 or
    more; bins that are rare on both sides make it anti-conservative.

    >>> round(chi2_homogeneity(np.array([500, 500]), np.array([450, 550])), 4)
    0.0252
    """
    ref = np.asarray(reference, dtype=np.float64)
    win = np.asarray(window, dtype=np.float64)
    if ref.ndim != 1 or ref.shape != win.shape:
        raise ValueError(f"bins differ: reference has {ref.shape}, window has {win.shape}")
    table = np.vstack([ref, win])
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1)
    if table.shape[1] < 2 or (rows == 0).any():
        return 1.0
    expected = np.outer(rows, table.sum(axis=0)) / rows.sum()
    stat = float(np.sum((table - expected) ** 2 / expected))
    return chi2_sf(stat, table.shape[1] - 1)


def ks_p_value(reference: QuantileSketch, window: QuantileSketch) -> float:
    """Asymptotic two-sample KS p-value: ``kolmogorov_sf(sqrt(n1 n2 / (n1 + n2)) * D)``.

    ``D`` is :func:`~app.detectors.statistics.ks`, the lower bound of the bucketed D,
    so the p-value is never smaller than the raw data's (conservative).
    """
    n1, n2 = reference.n, window.n
    if n1 == 0 or n2 == 0:
        return 1.0
    return ks_p_value_of(ks(reference, window), n1, n2)


def ks_p_value_of(d: float, n1: int, n2: int) -> float:
    """:func:`ks_p_value` of a KS ``d`` between samples of ``n1`` and ``n2`` values.

    >>> ks_p_value_of(0.0, 100, 100), ks_p_value_of(0.5, 0, 9)
    (1.0, 1.0)
    >>> round(ks_p_value_of(0.05, 1000, 1000), 4)
    0.1641
    """
    if n1 == 0 or n2 == 0:
        return 1.0
    return kolmogorov_sf(math.sqrt(n1 * n2 / (n1 + n2)) * d)


def p_value(stat_name: str, reference: Any, window: Any) -> float:
    """p-value of the two-sample test that goes with statistic ``stat_name``.

    ``reference`` and ``window`` are what the statistic takes (see
    :data:`~app.detectors.statistics.STATISTICS`): count vectors for the binned
    statistics (chi-square test of homogeneity), quantile sketches for ``ks`` and
    ``wasserstein`` (Kolmogorov-Smirnov test).

    >>> p_value("psi", np.array([500, 500]), np.array([500, 500]))
    1.0
    """
    try:
        spec = STATISTICS[stat_name]
    except KeyError:
        raise ValueError(f"unknown statistic {stat_name!r}; known: "
                         f"{sorted(STATISTICS)}") from None
    if spec.input == "counts":
        return chi2_homogeneity(reference, window)
    return ks_p_value(reference, window)


def benjamini_hochberg(p_values: Sequence[float], q: float = DEFAULT_Q) -> list[bool]:
    """Which hypotheses the Benjamini-Hochberg step-up procedure rejects at FDR ``q``.

    With the p-values sorted, ``p_(1) <= ... <= p_(m)``, reject the ``k`` smallest for the
    largest ``k`` with ``p_(k) <= k q / m``. Controls the false discovery rate at ``q`` for
    independent or positively dependent tests; under no effect at all, the chance of
    any rejection is at most ``q``. Results are in input order.

    >>> benjamini_hochberg([0.001, 0.5, 0.012, 0.04], q=0.05)
    [True, False, True, False]
    """
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p-values must be a sequence of numbers in [0, 1], got {p_values}")
    m = p.size
    order = np.argsort(p, kind="stable")
    below = np.flatnonzero(p[order] <= q * np.arange(1, m + 1) / m)
    reject = np.zeros(m, dtype=bool)
    if below.size:
        reject[order[: below[-1] + 1]] = True
    return [bool(r) for r in reject]


def bh_adjusted(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q-values), in input order.

    Hypothesis ``i`` is rejected at FDR ``q`` by :func:`benjamini_hochberg` exactly when
    its adjusted p-value is ``<= q``.

    >>> [round(x, 3) for x in bh_adjusted([0.001, 0.5, 0.012, 0.04])]
    [0.004, 0.5, 0.024, 0.053]
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1].clip(max=1.0)
    out = np.empty(m)
    out[order] = adjusted
    return [float(x) for x in out]
