"""river's ADWIN (``river.drift.adwin_c.AdaptiveWindowing``, river 0.23), compiled.

The concept-drift detector on the loss of labelled predictions is ADWIN by default. river
implements it in Cython, but through Python-level calls (a deque of bucket objects whose
numpy arrays are read element by element, the bucket sizes computed by a Python static
method, the window's variance a Python property): about 2.1 µs per value on the
benchmark's machine, a sixth of the worker's thread when labels arrive at a third of the
prediction rate. :func:`run` is the same algorithm, statement by statement and in the
same floating-point order (``tests/unit/detectors/test_adwin_kernel.py`` holds it to
river on every value and every bit of the state), over arrays, compiled by numba: about
0.1 µs per value.

Only the values go through it; the state stays river's object, read into arrays before a
run and written back after it (:mod:`app.detectors.streaming`), so the detector's saved
state, and river's own methods, are as before. Compiled on first use and cached on disk
beside this module (numba's ``cache``); where numba is missing, the detectors run river's
code value by value (:data:`COMPILED` is false).

Arrays: ``floats`` = [total, variance, width, total_width]; ``ints`` = [n_buckets, tick,
n_detections, max_n_buckets, rows]; ``totals`` and ``variances`` hold a row per bucket
row of river's deque (row 0 the newest, the smallest buckets), ``max_buckets + 1``
slots each, ``used`` how many slots of each row are used (river's ``current_idx``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

F = TypeVar("F", bound=Callable[..., Any])

_njit: Any
try:
    from numba import njit as _njit
except ImportError:  # pragma: no cover - numba is a dependency
    _njit = None


def _jit(func: F) -> F:
    return func if _njit is None else cast(F, _njit(cache=True)(func))


#: Whether :func:`run` is compiled.
COMPILED = _njit is not None

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Bucket rows the arrays hold: row ``r`` holds buckets of ``2**r`` values, so a window
#: of up to ``2**62`` values fits.
ROWS = 64
TOTAL, VARIANCE, WIDTH, TOTAL_WIDTH = range(4)
N_BUCKETS, TICK, N_DETECTIONS, MAX_N_BUCKETS, NROWS = range(5)


@_jit
def run(values: FloatArray, floats: FloatArray, ints: IntArray, totals: FloatArray,
        variances: FloatArray, used: IntArray, delta: float, clock: int, max_buckets: int,
        min_window_length: int, grace_period: int) -> int:
    """Add ``values`` in order, as ``AdaptiveWindowing.update`` of each; stops after the
    first value at which a change is detected and returns its index (``-1``: none).
    The state arrays are updated in place."""
    for i in range(values.shape[0]):
        if _update(values[i], floats, ints, totals, variances, used, delta, clock,
                   max_buckets, min_window_length, grace_period):
            return i
    return -1


@_jit
def _update(value: float, floats: FloatArray, ints: IntArray, totals: FloatArray,
            variances: FloatArray, used: IntArray, delta: float, clock: int,
            max_buckets: int, min_window_length: int, grace_period: int) -> bool:
    # _insert_element(value, 0.0)
    totals[0, used[0]] = value
    variances[0, used[0]] = 0.0
    used[0] += 1
    ints[N_BUCKETS] += 1
    if ints[N_BUCKETS] > ints[MAX_N_BUCKETS]:
        ints[MAX_N_BUCKETS] = ints[N_BUCKETS]
    floats[WIDTH] += 1.0
    width = floats[WIDTH]
    incremental = 0.0
    if width > 1.0:
        incremental = (((width - 1.0) * (value - floats[TOTAL] / (width - 1.0)))
                       * (value - floats[TOTAL] / (width - 1.0))) / width
    floats[VARIANCE] += incremental
    floats[TOTAL] += value
    _compress(ints, totals, variances, used, max_buckets)
    return _detect_change(floats, ints, totals, variances, used, delta, clock,
                          min_window_length, grace_period)


@_jit
def _shift(totals: FloatArray, variances: FloatArray, used: IntArray, row: int,
           n: int) -> None:
    """``Bucket.compress(n)``: the row's first ``n`` slots leave, the rest move left."""
    size = totals.shape[1]
    for i in range(n, size):
        totals[row, i - n] = totals[row, i]
        variances[row, i - n] = variances[row, i]
    for i in range(size - n, size):
        totals[row, i] = 0.0
        variances[row, i] = 0.0
    used[row] -= n


@_jit
def _compress(ints: IntArray, totals: FloatArray, variances: FloatArray, used: IntArray,
              max_buckets: int) -> None:
    row = 0
    while True:
        if used[row] != max_buckets + 1:
            break
        if row + 1 == ints[NROWS]:  # a new row of buckets (river appends a Bucket)
            ints[NROWS] += 1
            used[row + 1] = 0
            for i in range(totals.shape[1]):
                totals[row + 1, i] = 0.0
                variances[row + 1, i] = 0.0
        n1 = 2.0 ** row
        n2 = 2.0 ** row
        mu1 = totals[row, 0] / n1
        mu2 = totals[row, 1] / n2
        total12 = totals[row, 0] + totals[row, 1]
        temp = (((n1 * n2) * (mu1 - mu2)) * (mu1 - mu2)) / (n1 + n2)
        v12 = (variances[row, 0] + variances[row, 1]) + temp
        totals[row + 1, used[row + 1]] = total12
        variances[row + 1, used[row + 1]] = v12
        used[row + 1] += 1
        ints[N_BUCKETS] += 1
        _shift(totals, variances, used, row, 2)
        if used[row + 1] <= max_buckets:
            break
        row += 1


@_jit
def _delete_element(floats: FloatArray, ints: IntArray, totals: FloatArray,
                    variances: FloatArray, used: IntArray) -> float:
    last = ints[NROWS] - 1
    n: float = 2.0 ** last
    u = totals[last, 0]
    mu = u / n
    v = variances[last, 0]
    floats[WIDTH] -= n
    floats[TOTAL] -= u
    width = floats[WIDTH]
    mu_window = floats[TOTAL] / width
    incremental = v + (((n * width) * (mu - mu_window)) * (mu - mu_window)) / (n + width)
    floats[VARIANCE] -= incremental
    _shift(totals, variances, used, last, 1)
    ints[N_BUCKETS] -= 1
    if used[last] == 0:
        ints[NROWS] -= 1
    return n


@_jit
def _evaluate_cut(floats: FloatArray, n0: float, n1: float, delta_mean: float,
                  delta: float, min_window_length: int) -> bool:
    width = floats[WIDTH]
    delta_prime = math.log((2.0 * math.log(width)) / delta)
    m_recip = (1.0 / ((n0 - min_window_length) + 1.0)) + (1.0 / ((n1 - min_window_length)
                                                                 + 1.0))
    epsilon = (math.sqrt(((2.0 * m_recip) * (floats[VARIANCE] / width)) * delta_prime)
               + (((2.0 / 3.0) * delta_prime) * m_recip))
    return abs(delta_mean) > epsilon


@_jit
def _detect_change(floats: FloatArray, ints: IntArray, totals: FloatArray,
                   variances: FloatArray, used: IntArray, delta: float, clock: int,
                   min_window_length: int, grace_period: int) -> bool:
    change_detected = False
    ints[TICK] += 1
    if ints[TICK] % clock == 0 and floats[WIDTH] > grace_period:
        reduce_width = True
        while reduce_width:
            reduce_width = False
            exit_flag = False
            n0 = 0.0
            n1 = floats[WIDTH]
            u0 = 0.0
            u1 = floats[TOTAL]
            v0 = 0.0
            v1 = floats[VARIANCE]
            row = ints[NROWS] - 1
            while row >= 0 and not exit_flag:
                n2 = 2.0 ** row
                k = 0
                while k < used[row]:
                    u2 = totals[row, k]
                    mu2 = u2 / n2
                    if n0 > 0.0:
                        mu0 = u0 / n0
                        v0 += variances[row, k] + (
                            ((n0 * n2) * (mu0 - mu2)) * (mu0 - mu2)) / (n0 + n2)
                    if n1 > 0.0:
                        mu1 = u1 / n1
                        v1 -= variances[row, k] + (
                            ((n1 * n2) * (mu1 - mu2)) * (mu1 - mu2)) / (n1 + n2)
                    n0 += n2
                    n1 -= n2
                    u0 += totals[row, k]
                    u1 -= totals[row, k]
                    if row == 0 and k == used[row] - 1:
                        exit_flag = True
                        break
                    delta_mean = (u0 / n0) - (u1 / n1)
                    if (n1 >= min_window_length and n0 >= min_window_length
                            and _evaluate_cut(floats, n0, n1, delta_mean, delta,
                                              min_window_length)):
                        reduce_width = True
                        change_detected = True
                        if floats[WIDTH] > 0:
                            n0 -= _delete_element(floats, ints, totals, variances, used)
                            exit_flag = True
                            break
                    k += 1
                row -= 1
    floats[TOTAL_WIDTH] += floats[WIDTH]
    if change_detected:
        ints[N_DETECTIONS] += 1
    return change_detected


def warm_up() -> None:
    """Compile :func:`run` now, or load it from numba's cache on disk (about 2 s the
    first time, 0.1 s after): the worker does so at its start, not in its first batch
    that evaluates a checkpoint."""
    if COMPILED:
        rows = 2
        run(np.zeros(1), np.zeros(4), np.array([0, 0, 0, 0, 1]), np.zeros((rows, 6)),
            np.zeros((rows, 6)), np.zeros(rows, dtype=np.int64), 0.002, 32, 5, 5, 10)
