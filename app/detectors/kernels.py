"""river detectors' per-value loops, compiled by numba: the same figures to the bit.

The concept-drift detectors of a model's performance run on every labelled prediction:
by default HDDM_A on the error and ADWIN on the loss. Value by value in Python they were
the largest part of the worker's thread once labels came at a third of the prediction
rate. Each kernel here is river 0.23's code, statement by statement and in the same
floating-point order, over plain numbers and arrays, compiled by numba (on first use,
and cached on disk beside this module: the worker loads them at its start, with river,
:func:`warm_up`). ``tests/unit/detectors/test_kernels.py`` holds each to river on every
value and every bit of the saved state. Where numba is missing, the detectors run
river's code value by value (:func:`enabled` is false); so do they after :func:`disable`
(``worker.compiled_detectors: false``).

Only the values go through a kernel; the state stays river's object, read into numbers
and arrays before a run and written back after it (:mod:`app.detectors.streaming`), so
the detectors' saved state, and river's own methods, are as before.

**ADWIN** (``river.drift.adwin_c.AdaptiveWindowing``, :func:`adwin_run`): river's Cython
goes through Python-level calls (a deque of bucket objects whose numpy arrays are read
element by element, bucket sizes from a Python static method, the window's variance a
property): 2.1 µs per value on the benchmark's machine, 0.15 compiled. Arrays:
``floats`` = [total, variance, width, total_width]; ``ints`` = [n_buckets, tick,
n_detections, max_n_buckets, rows]; ``totals`` and ``variances`` hold a row per bucket
row of river's deque (row 0 the newest, the smallest buckets), ``max_buckets + 1``
slots each, ``used`` how many slots of each row are used (river's ``current_idx``).

**HDDM_A** (``river.drift.binary.HDDM_A``, :func:`hddm_a_run`): its arithmetic was
already written out on local variables in Python (0.5 µs per value); compiled, a few
nanoseconds. State: [z.n, z.mean, x_min.n, x_min.mean, x_max.n, x_max.mean, warning].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

#: The kernels and their helpers, compiled in place by :func:`enabled` (numba resolves
#: a compiled function's calls through the module's globals).
_KERNELS = ("_shift", "_compress", "_delete_element", "_evaluate_cut", "_detect_change",
            "_update", "adwin_run", "hddm_a_run")
_state: bool | None = None  # None: not tried yet; then whether compiled


def enabled() -> bool:
    """Whether the kernels are compiled, compiling them (numba's ``cache`` on disk) at
    the first call: false when numba is missing, or after :func:`disable`."""
    global _state
    if _state is None:
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is a dependency
            _state = False
        else:
            namespace = globals()
            for name in _KERNELS:
                try:
                    namespace[name] = numba.njit(cache=True)(namespace[name])
                except RuntimeError:  # no writable place for the cache: compiled each start
                    namespace[name] = numba.njit(namespace[name])
            _state = True
    return _state


def disable() -> None:
    """Run the detectors value by value in river's code from now on (a worker with
    ``worker.compiled_detectors: false``: numba, about 120 MiB of the worker's memory
    once loaded, is never imported)."""
    global _state
    if _state is None:
        _state = False


FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Bucket rows the arrays hold: row ``r`` holds buckets of ``2**r`` values, so a window
#: of up to ``2**62`` values fits.
ROWS = 64
TOTAL, VARIANCE, WIDTH, TOTAL_WIDTH = range(4)
N_BUCKETS, TICK, N_DETECTIONS, MAX_N_BUCKETS, NROWS = range(5)


def adwin_run(values: FloatArray, floats: FloatArray, ints: IntArray, totals: FloatArray,
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


def _evaluate_cut(floats: FloatArray, n0: float, n1: float, delta_mean: float,
                  delta: float, min_window_length: int) -> bool:
    width = floats[WIDTH]
    delta_prime = math.log((2.0 * math.log(width)) / delta)
    m_recip = (1.0 / ((n0 - min_window_length) + 1.0)) + (1.0 / ((n1 - min_window_length)
                                                                 + 1.0))
    epsilon = (math.sqrt(((2.0 * m_recip) * (floats[VARIANCE] / width)) * delta_prime)
               + (((2.0 / 3.0) * delta_prime) * m_recip))
    return abs(delta_mean) > epsilon


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


def hddm_a_run(values: FloatArray | list[float], state: FloatArray | list[Any],
               log_dc: float, log_2dc: float, log_2wc: float, two_sided: bool,
               hits: IntArray | list[int]) -> int:
    """river's ``HDDM_A.update`` of each value (0 or 1), a detection resetting the
    detector as ``RiverDetector._step`` does; the detections' indices go to ``hits``,
    their number is returned, ``state`` is updated in place. Uncompiled (``py_func``),
    it takes lists, its numbers Python floats. ``log_dc`` is
    ``log(1 / drift_confidence)``, ``log_2dc`` and ``log_2wc`` ``log(2 / confidence)``
    of the drift and the warning confidences."""
    zn, zm, an, am, bn, bm = state[0], state[1], state[2], state[3], state[4], state[5]
    warning = state[6] != 0.0
    count = 0
    for i in range(len(values)):
        x = values[i]
        zn += 1.0
        zm += (1.0 / zn) * (x - zm)
        if an == 0:
            an, am = zn, zm
        if bn == 0:
            bn, bm = zn, zm
        eps_z = math.sqrt(1.0 / (2 * zn) * log_dc)
        if am + math.sqrt(1.0 / (2 * an) * log_dc) >= zm + eps_z:
            an, am = zn, zm
        if bm - math.sqrt(1.0 / (2 * bn) * log_dc) <= zm - eps_z:
            bn, bm = zn, zm
        drift = False
        warning = False
        if an != zn:
            m = (zn - an) / an * (1.0 / zn)
            if zm - am >= math.sqrt(m / 2 * log_2dc):
                drift = True
            elif zm - am >= math.sqrt(m / 2 * log_2wc):
                warning = True
        if two_sided and bn != zn:
            m = (zn - bn) / bn * (1.0 / zn)
            if bm - zm >= math.sqrt(m / 2 * log_2dc):
                drift = True
            elif bm - zm >= math.sqrt(m / 2 * log_2wc):
                warning = True
        if drift:  # a fresh detector, same hyperparameters
            hits[count] = i
            count += 1
            zn, zm, an, am, bn, bm, warning = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, False
    state[0], state[1], state[2], state[3], state[4], state[5] = zn, zm, an, am, bn, bm
    state[6] = 1.0 if warning else 0.0
    return count


def warm_up() -> None:
    """Compile the kernels now, or load them from numba's cache on disk (about 3 s the
    first time, 0.1 s after): the worker does so at its start, not in its first batch
    that evaluates a checkpoint."""
    if enabled():
        rows = 2
        adwin_run(np.zeros(1), np.zeros(4), np.array([0, 0, 0, 0, 1]), np.zeros((rows, 6)),
                  np.zeros((rows, 6)), np.zeros(rows, dtype=np.int64), 0.002, 32, 5, 5, 10)
        hddm_a_run(np.zeros(1), np.zeros(7), 1.0, 1.0, 1.0, True, np.zeros(1, dtype=np.int64))
