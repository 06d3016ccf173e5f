"""Distribution-distance statistics over binned counts.

Every statistic takes the reference counts and the window counts over the same bins
and returns a float. One explicit registry maps names to functions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

Counts = npt.NDArray[np.int64] | npt.NDArray[np.float64]
Statistic = Callable[[Counts, Counts], float]

#: Additive smoothing per bin, in counts: keeps empty bins from making PSI infinite
#: while vanishing as samples grow.
SMOOTHING = 0.5


def _smoothed(counts: npt.ArrayLike) -> npt.NDArray[np.float64]:
    c = np.asarray(counts, dtype=np.float64) + SMOOTHING
    out: npt.NDArray[np.float64] = c / c.sum()
    return out


def psi(expected: Counts, actual: Counts) -> float:
    """Population Stability Index of ``actual`` against ``expected`` (both counts per bin).

    ``sum((a - e) * ln(a / e))`` over bins, with both sides smoothed by half a count per
    bin. Rules of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.

    >>> round(psi(np.array([500, 500]), np.array([500, 500])), 6)
    0.0
    >>> round(psi(np.array([500, 500]), np.array([200, 800])), 3)
    0.415
    """
    e = np.asarray(expected)
    a = np.asarray(actual)
    if e.shape != a.shape:
        raise ValueError(f"bins differ: reference has {e.shape}, window has {a.shape}")
    if a.sum() == 0 or e.sum() == 0:
        return 0.0
    pe, pa = _smoothed(e), _smoothed(a)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


STATISTICS: dict[str, Statistic] = {
    "psi": psi,
}
