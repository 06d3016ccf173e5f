"""Relative-error quantile sketch (DDSketch-style), pure numpy."""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, overload

import numpy as np
import numpy.typing as npt

from app.errors import MALFORMED_STATE, StateError
from app.sketches._state import check_state

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class QuantileSketch:
    """Counts on a fixed grid of log-spaced buckets: quantiles with relative error ``alpha``.

    With ``gamma = (1 + alpha) / (1 - alpha)``, a value ``x >= min_positive`` lands in
    bucket ``k = ceil(log(x) / log(gamma))``, which holds ``gamma**(k-1) < x <= gamma**k``;
    a negative value lands in the mirrored bucket of ``|x|`` in a separate store, and
    ``|x| < min_positive`` in a zero bucket. ``NaN`` counts as ``missing`` and ``±inf`` as
    ``nonfinite`` (as in :class:`~app.sketches.BinnedHistogram`); neither is inserted.

    **Error bound.** :meth:`quantile` returns the representative ``2 gamma**k / (gamma+1)``
    of the bucket that holds the exact order statistic, so it is within relative error
    ``alpha`` of it (absolute error below ``min_positive`` in the zero bucket). :meth:`cdf`
    is exact at bucket boundaries and linear in between.

    **Determinism.** A value's bucket depends on that value alone: ``log`` gives a first
    guess that is then checked against the edges ``gamma**k`` computed by binary
    exponentiation, i.e. with correctly rounded IEEE multiplications only, so bucket
    indices do not depend on the platform's ``libm``. Counts are integers, hence the
    sketch of a multiset is identical however it was split into batches or merged: an
    offline replay and a streaming worker get bit-identical figures.

    **Memory.** Each sign keeps at most ``max_buckets`` dense ``int64`` counts. When the
    occupied index range of a sign exceeds that, every bucket below
    ``top - max_buckets + 1`` (``top``: the highest occupied index of that sign) is folded
    into that lowest kept bucket, and the sign is marked ``collapsed``. The fold is the
    map ``k -> max(k, top - max_buckets + 1)``; ``top`` only grows under update and merge
    and the maps compose to the one with the final ``top``, so merging and batching stay
    exact even after a collapse. What is lost is accuracy: the lowest kept bucket of a
    collapsed sign stands for every smaller magnitude, with no relative-error bound. With
    ``alpha = 0.01`` and 2048 buckets the kept range spans a factor ``e**41`` per sign.

    Parameters
    ----------
    alpha
        Relative accuracy of the quantiles, in ``(0, 1)``.
    max_buckets
        Bucket budget per sign, at least 1.
    min_positive
        Magnitudes below this go to the zero bucket; in ``[1e-300, 1]``.

    Examples
    --------
    >>> rng = np.random.default_rng(7)
    >>> x = rng.lognormal(size=10_000)
    >>> s = QuantileSketch()
    >>> s.update(x[:3_000])
    >>> s.update(np.append(x[3_000:], [np.nan, np.inf]))
    >>> s.n, s.missing, s.nonfinite
    (10000, 1, 1)
    >>> exact = np.quantile(x, 0.9, method="lower")
    >>> bool(abs(s.quantile(0.9) - exact) <= 0.01 * exact)
    True
    >>> halves = QuantileSketch(), QuantileSketch()
    >>> halves[0].update(x[:5_000]); halves[1].update(x[5_000:])
    >>> whole = QuantileSketch(); whole.update(x)
    >>> halves[0].merge(halves[1]) == whole
    True
    """

    KIND = "quantile"
    VERSION = 2  # 2: bucket counts packed (see _Store.to_state); 1 (lists) still read
    __slots__ = ("_gamma", "_log_gamma", "alpha", "max_buckets", "min_positive",
                 "missing", "negative", "nonfinite", "positive", "zero")

    def __init__(self, alpha: float = 0.01, max_buckets: int = 2048,
                 min_positive: float = 1e-9) -> None:
        if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
            raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
        if isinstance(max_buckets, bool) or not isinstance(max_buckets, int) or max_buckets < 1:
            raise ValueError(f"max_buckets must be an integer >= 1, got {max_buckets!r}")
        if (isinstance(min_positive, bool) or not isinstance(min_positive, (int, float))
                or not 1e-300 <= min_positive <= 1):
            raise ValueError(f"min_positive must be in [1e-300, 1], got {min_positive!r}")
        self.alpha = float(alpha)
        self.max_buckets = max_buckets
        self.min_positive = float(min_positive)
        self._gamma = (1.0 + self.alpha) / (1.0 - self.alpha)
        self._log_gamma = math.log(self._gamma)
        self.positive = _Store()
        self.negative = _Store()  # buckets of |x| for x < 0
        self.zero = 0
        self.missing = 0
        self.nonfinite = 0

    @classmethod
    def empty(cls, alpha: float = 0.01, max_buckets: int = 2048,
              min_positive: float = 1e-9) -> QuantileSketch:
        return cls(alpha, max_buckets, min_positive)

    @property
    def n(self) -> int:
        """Finite values inserted."""
        return self.positive.total + self.negative.total + self.zero

    def update(self, values: FloatArray | list[float]) -> None:
        """Add a batch; ``NaN`` marks a missing value, infinities count as non-finite.

        Its cost is mostly per call (a few numpy calls whatever the batch's size), so
        the common case takes the fewest: all values finite (one max says so), one sign.
        """
        x = np.asarray(values, dtype=np.float64).ravel()
        if not x.size:
            return
        mag = np.abs(x)
        if not math.isfinite(float(mag.max())):  # NaN (max propagates it) or ±inf
            finite = np.isfinite(x)
            nan = np.isnan(x)
            n_nan = int(np.count_nonzero(nan))
            self.missing += n_nan
            self.nonfinite += x.size - int(np.count_nonzero(finite)) - n_nan
            x, mag = x[finite], mag[finite]
        big = mag >= self.min_positive
        n_big = int(np.count_nonzero(big))
        if n_big != x.size:
            self.zero += x.size - n_big
            x, mag = x[big], mag[big]
        if not n_big:
            return
        k = self._index(mag)
        negative = x < 0
        n_neg = int(np.count_nonzero(negative))
        if not n_neg:
            self.positive.add(k, self.max_buckets)
        elif n_neg == k.size:
            self.negative.add(k, self.max_buckets)
        else:
            self.positive.add(k[~negative], self.max_buckets)
            self.negative.add(k[negative], self.max_buckets)

    @staticmethod
    def update_rows(sketches: list[QuantileSketch], x: FloatArray,
                    buckets: npt.NDArray[np.integer[Any]] | None = None) -> None:
        """Add row ``i`` of the 2-D ``x`` to ``sketches[i]``, for every row at once.

        The same counts as ``sketches[i].update(x[i])`` row by row, in a dozen numpy
        calls for all the rows instead of a dozen per row (what a batch's update mostly
        costs): bucket indices for the whole array, then one ``bincount`` of (row, sign,
        bucket) keys. Sketches on different grids, or a span of buckets too wide for one
        count array (values many orders of magnitude apart), go row by row.

        ``buckets``: :func:`default_buckets` of ``x``, computed elsewhere (a decode
        process); used when the sketches are on the default grid, instead of computing
        the indices here. (What they hold where a value is not inserted is never
        counted: it only sets how wide the count array is.)

        >>> a, b = QuantileSketch.empty(), QuantileSketch.empty()
        >>> QuantileSketch.update_rows([a, b], np.array([[1.0, -2.0, 0.0], [3.0, np.nan, 4.0]]))
        >>> (a.n, a.zero, b.n, b.missing)
        (3, 1, 2, 1)
        """
        rows = x.shape[0] if x.ndim == 2 else 0
        if rows != len(sketches):
            raise ValueError(f"{rows} rows for {len(sketches)} sketches")
        if not rows or not x.shape[1]:
            return
        first = sketches[0]
        if rows == 1 or any(not first.same_grid(q) or q.max_buckets != first.max_buckets
                            for q in sketches):
            for q, row in zip(sketches, x, strict=True):
                q.update(row)
            return
        counted = QuantileSketch.row_counts(
            x, buckets if buckets is not None and buckets.shape == x.shape else None, first)
        if counted is None:  # values orders of magnitude apart: per row
            for q, row in zip(sketches, x, strict=True):
                q.update(row)
            return
        QuantileSketch.add_row_counts(sketches, counted)

    @staticmethod
    def row_counts(x: FloatArray, buckets: npt.NDArray[np.integer[Any]] | None,
                   grid: QuantileSketch) -> BucketCounts | None:
        """What :meth:`update_rows` adds to sketches on ``grid``'s grid for the rows of
        ``x`` (at least one value each): ``None`` where their buckets span too wide a
        range for one count array (those go row by row). ``buckets``: as for
        :meth:`update_rows`. Computed where the values are (a decode process counts a
        message's values), added where the sketches are.

        >>> c = QuantileSketch.row_counts(np.array([[1.0, -1.0, 0.0]]), None, QuantileSketch())
        >>> c.counts.tolist(), c.low, c.zero
        ([[1], [1]], 0, [1])
        """
        rows = x.shape[0]
        mag, valid, finite, all_valid = _magnitudes(x, grid.min_positive)
        k = buckets if buckets is not None and grid.same_grid(_DEFAULT) else grid._index(mag)
        lo = int(k.min())
        width = int(k.max()) - lo + 2  # the last slot: values not inserted
        if rows * 2 * width > _ROWS_LIMIT:
            return None
        zero = missing = nonfinite = None
        if not all_valid:
            tiny = (~valid).sum(axis=1)
            if finite:
                zero = tiny.tolist()
            else:
                nan = np.isnan(x).sum(axis=1)
                bad = (~np.isfinite(x)).sum(axis=1)
                zero, missing, nonfinite = (tiny - bad).tolist(), nan.tolist(), \
                    (bad - nan).tolist()
        slot = k - lo
        if not all_valid:
            slot[~valid] = width - 1
        keys = (np.arange(rows, dtype=np.int64)[:, None] * 2 + (x < 0)) * width + slot
        counts = np.bincount(keys.ravel(), minlength=rows * 2 * width).reshape(
            rows * 2, width)[:, :width - 1]
        return BucketCounts(counts, lo, zero, missing, nonfinite)

    @staticmethod
    def add_row_counts(sketches: Sequence[QuantileSketch], counted: BucketCounts) -> None:
        """Add :meth:`row_counts` (row ``i`` to ``sketches[i]``, all on one grid with the
        same ``max_buckets``)."""
        for attr, col in (("zero", counted.zero), ("missing", counted.missing),
                          ("nonfinite", counted.nonfinite)):
            if col is not None:
                for q, c in zip(sketches, col, strict=True):
                    setattr(q, attr, getattr(q, attr) + c)
        stores = [s for q in sketches for s in (q.positive, q.negative)]
        _Store.add_rows(stores, counted.counts, counted.low, sketches[0].max_buckets)

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """A new sketch of both multisets; exact (integer counts add)."""
        if not self.same_grid(other) or self.max_buckets != other.max_buckets:
            raise ValueError("cannot merge quantile sketches with different alpha, "
                             "min_positive or max_buckets")
        out = QuantileSketch(self.alpha, self.max_buckets, self.min_positive)
        out.positive = self.positive.merged(other.positive, self.max_buckets)
        out.negative = self.negative.merged(other.negative, self.max_buckets)
        out.zero = self.zero + other.zero
        out.missing = self.missing + other.missing
        out.nonfinite = self.nonfinite + other.nonfinite
        return out

    def same_grid(self, other: QuantileSketch) -> bool:
        """Whether both sketches bucket values identically (same alpha and min_positive)."""
        return self.alpha == other.alpha and self.min_positive == other.min_positive

    # -- reading -------------------------------------------------------------------------

    def cells(self) -> Cells:
        """The occupied buckets in increasing value order (see :class:`Cells`)."""
        return _cells(self, self.negative, self.zero, self.positive)

    def boundaries(self) -> tuple[FloatArray, FloatArray, IntArray]:
        """``(lower, upper, counts)`` of the occupied buckets, in increasing value order."""
        c = self.cells()
        return c.lower, c.upper, c.counts

    @overload
    def quantile(self, q: float) -> float: ...
    @overload
    def quantile(self, q: FloatArray | list[float]) -> FloatArray: ...

    def quantile(self, q: float | FloatArray | list[float]) -> float | FloatArray:
        """Value of rank ``floor(q * (n - 1))`` (0-based) within relative error ``alpha``.

        This is ``numpy.quantile(x, q, method="lower")`` up to the sketch's error;
        ``NaN`` for an empty sketch.
        """
        qa = np.asarray(q, dtype=np.float64)
        if np.any((qa < 0) | (qa > 1) | np.isnan(qa)):
            raise ValueError(f"quantiles must be in [0, 1], got {q!r}")
        c = self.cells()
        if c.counts.size == 0:
            out = np.full(qa.shape, np.nan)
        else:
            rank = np.floor(qa * (int(c.counts.sum()) - 1))
            out = c.value[np.searchsorted(np.cumsum(c.counts), rank, side="right")]
        return float(out) if out.ndim == 0 else out

    def cdf(self, x: FloatArray | list[float] | float) -> FloatArray:
        """Share of values ``<= x``: exact at bucket boundaries, linear inside a bucket.

        Left limits at the edges of negative buckets, which are closed below.
        """
        xa = np.asarray(x, dtype=np.float64)
        c = self.cells()
        if c.counts.size == 0:
            return np.full(xa.shape, np.nan)
        after = np.cumsum(c.counts) / float(c.counts.sum())
        before = after - c.counts / float(c.counts.sum())
        j = np.clip(np.searchsorted(c.upper, xa, side="left"), 0, c.counts.size - 1)
        width = c.upper[j] - c.lower[j]
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(width > 0, (xa - c.lower[j]) / width, 1.0)
        out: FloatArray = before[j] + np.clip(frac, 0.0, 1.0) * (after[j] - before[j])
        return out

    # -- state ---------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.KIND, "v": self.VERSION, "alpha": self.alpha,
                "max_buckets": self.max_buckets, "min_positive": self.min_positive,
                "positive": self.positive.to_state(), "negative": self.negative.to_state(),
                "zero": self.zero, "missing": self.missing, "nonfinite": self.nonfinite}

    @classmethod
    def from_state(cls, state: Any) -> QuantileSketch:
        state = check_state(state, cls.KIND, frozenset({1, cls.VERSION}))
        try:
            out = cls(state["alpha"], state["max_buckets"], state["min_positive"])
            out.positive = _Store.from_state(state["positive"], out.max_buckets)
            out.negative = _Store.from_state(state["negative"], out.max_buckets)
            out.zero = _count(state["zero"])
            out.missing = _count(state["missing"])
            out.nonfinite = _count(state["nonfinite"])
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt quantile state: {exc}") from None
        return out

    # -- internals -----------------------------------------------------------------------

    def _edges(self, k: IntArray) -> FloatArray:
        """``gamma**k``, bucket ``k``'s upper edge (see :func:`_edges`)."""
        return _edges(self._gamma, k)

    def _index(self, mag: FloatArray) -> IntArray:
        """Bucket index of magnitudes ``>= min_positive``: ``gamma**(k-1) < m <= gamma**k``."""
        if mag.size == 0:
            return np.zeros(0, dtype=np.int64)
        k = np.ceil(np.log(mag) / self._log_gamma).astype(np.int64)
        # log's rounding can be one bucket off either way: checked against the edges,
        # read from the grid's table (one range check for both lookups)
        start, table = _table(self._gamma, int(k.min()) - 1, int(k.max()) + 1)
        if table is None:
            k = k + (mag > self._edges(k))
            return k - (mag <= self._edges(k - 1))
        j = k - start
        up = mag > table[j]
        j += up
        k += up
        k -= mag <= table[j - 1]
        return k

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, QuantileSketch) and self.same_grid(other)
                and self.max_buckets == other.max_buckets
                and self.positive == other.positive and self.negative == other.negative
                and (self.zero, self.missing, self.nonfinite)
                == (other.zero, other.missing, other.nonfinite))

    def __repr__(self) -> str:
        return (f"QuantileSketch(alpha={self.alpha}, n={self.n}, "
                f"buckets={self.positive.counts.size + self.negative.counts.size}, "
                f"missing={self.missing}, nonfinite={self.nonfinite})")


@dataclass(frozen=True)
class Cells:
    """Occupied buckets in increasing value order, as parallel arrays.

    Bucket ``j`` holds ``counts[j]`` values in ``[lower[j], upper[j]]`` (positive buckets
    are open below, negative ones open above); ``value[j]`` is its representative. Buckets
    never overlap and ``upper[j] <= lower[j+1]``.
    """

    lower: FloatArray
    upper: FloatArray
    value: FloatArray
    counts: IntArray


# The last pair aligned and its result: a window close computes several statistics (and
# a test) on the same reference and window sketches. Holding both sketches keeps their
# identities unique while cached; a sketch only changes by update (its n grows).
_last: list[Any] = []


def aligned(a: QuantileSketch, b: QuantileSketch) -> tuple[Cells, IntArray]:
    """Both sketches on one set of cells: ``(cells with a's counts, b's counts)``.

    The cells are the union of both sketches' occupied buckets, so between consecutive
    cells neither sketch has any mass. When either sketch collapsed a sign, both are
    folded with the higher floor first, so that a cell means the same range on both sides.
    The arrays are read-only (the result of the last pair is reused).
    """
    if _last and _last[0] is a and _last[1] is b and _last[2] == (a.n, b.n):
        return _last[3]  # type: ignore[no-any-return]
    result = _aligned(a, b)
    cells = result[0]
    for array in (cells.lower, cells.upper, cells.value, cells.counts, result[1]):
        array.flags.writeable = False
    _last[:] = [a, b, (a.n, b.n), result]
    return result


#: Widest dense grid :func:`dense_pairs` builds (buckets of one sign): values many
#: orders of magnitude apart are left to :func:`aligned`, pair by pair.
DENSE_MAX = 4096


def dense_pairs(pairs: Sequence[tuple[QuantileSketch, QuantileSketch]]
                ) -> tuple[FloatArray, IntArray, IntArray] | None:
    """Many pairs of sketches on one grid of cells: ``(value, a, b)``, the cells'
    representatives in increasing value order (every bucket from the lowest to the
    highest occupied one of any sketch, and the zero bucket), and each pair's counts on
    them as rows of ``a`` and ``b``.

    Cells empty on both sides of a pair change nothing its CDFs say at the others, so
    statistics of the two CDFs read off these rows are those of :func:`aligned` (up to
    the rounding of sums over more cells). ``None`` when the pairs are not all on one
    grid, a sketch collapsed a sign (folding is pair by pair), or the grid would be
    wider than :data:`DENSE_MAX` buckets of a sign.
    """
    if not pairs:
        return None
    first = pairs[0][0]
    sketches = [q for pair in pairs for q in pair]
    if any(not first.same_grid(q) or q.positive.collapsed or q.negative.collapsed
           for q in sketches):
        return None
    grids = []
    for sign in ("positive", "negative"):
        stores = [getattr(q, sign) for q in sketches]
        used = [st for st in stores if st.counts.size]
        lo = min((st.offset for st in used), default=0)
        width = max(st.top for st in used) - lo + 1 if used else 0
        if width > DENSE_MAX:
            return None
        dense = np.zeros((len(stores), width), dtype=np.int64)
        for row, st in zip(dense, stores, strict=True):
            if st.counts.size:
                row[st.offset - lo:st.offset - lo + st.counts.size] = st.counts
        grids.append((np.arange(lo, lo + width, dtype=np.int64), dense))
    (pk, pos), (nk, neg) = grids
    zero = np.array([[q.zero] for q in sketches], dtype=np.int64)
    counts = np.concatenate([neg[:, ::-1], zero, pos], axis=1)
    value = _geometry(first, nk, True, pk, (False, False))[2]
    return value, counts[0::2], counts[1::2]


def _aligned(a: QuantileSketch, b: QuantileSketch) -> tuple[Cells, IntArray]:
    if not a.same_grid(b):
        raise ValueError("quantile sketches on different grids (alpha or min_positive differ)")
    pos_a, pos_b = _Store.harmonised(a.positive, b.positive)
    neg_a, neg_b = _Store.harmonised(a.negative, b.negative)
    pos, pca, pcb = _Store.union(pos_a, pos_b)
    neg, nca, ncb = _Store.union(neg_a, neg_b)
    has_zero = bool(a.zero or b.zero)
    collapsed = (pos_a.collapsed or pos_b.collapsed, neg_a.collapsed or neg_b.collapsed)
    lower, upper, value = _geometry(a, neg, has_zero, pos, collapsed)
    za, zb = ([a.zero], [b.zero]) if has_zero else ([], [])
    return (Cells(lower, upper, value, np.concatenate([nca[::-1], za, pca]).astype(np.int64)),
            np.concatenate([ncb[::-1], zb, pcb]).astype(np.int64))


def _cells(s: QuantileSketch, neg: _Store, zero: int, pos: _Store) -> Cells:
    (pk, pc), (nk, nc) = pos.occupied(), neg.occupied()
    lower, upper, value = _geometry(s, nk, zero > 0, pk, (pos.collapsed, neg.collapsed))
    z = [zero] if zero else []
    return Cells(lower, upper, value, np.concatenate([nc[::-1], z, pc]).astype(np.int64))


def _geometry(s: QuantileSketch, neg: IntArray, has_zero: bool, pos: IntArray,
              collapsed: tuple[bool, bool]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Edges and representatives of the given buckets, in increasing value order."""
    mp = s.min_positive
    out: list[tuple[FloatArray, FloatArray, FloatArray]] = []
    for k, folded in ((pos, collapsed[0]), (neg, collapsed[1])):
        upper = s._edges(k)
        lower = np.maximum(s._edges(k - 1), mp)
        if folded and k.size:
            lower[0] = mp  # the floor bucket stands for every smaller magnitude
        with np.errstate(over="ignore"):
            value = upper * (2.0 / (s._gamma + 1.0))
        out.append((lower, upper, value))
    (plo, phi, pv), (nlo, nhi, nv) = out
    zlo, zhi, zv = (np.array([-mp]), np.array([mp]), np.array([0.0])) if has_zero else (
        np.zeros(0), np.zeros(0), np.zeros(0))
    return (np.concatenate([-nhi[::-1], zlo, plo]), np.concatenate([-nlo[::-1], zhi, phi]),
            np.concatenate([-nv[::-1], zv, pv]))


class BucketCounts(NamedTuple):
    """Quantile-sketch counts of rows of values (:meth:`QuantileSketch.row_counts`):
    ``counts`` row ``2 i`` holds row ``i``'s positive values per bucket ``low + j``, row
    ``2 i + 1`` its negative ones; then each row's zeros, missing and non-finite values
    (``None``: none of either)."""

    counts: npt.NDArray[np.integer[Any]]
    low: int
    zero: list[int] | None
    missing: list[int] | None
    nonfinite: list[int] | None


class _Store:
    """Dense counts of one sign: ``counts[i]`` is bucket ``offset + i``; ends non-zero."""

    __slots__ = ("collapsed", "counts", "offset")

    def __init__(self, counts: IntArray | None = None, offset: int = 0,
                 collapsed: bool = False) -> None:
        self.counts: IntArray = (np.zeros(0, dtype=np.int64) if counts is None
                                 else counts.astype(np.int64))
        self.offset = offset
        self.collapsed = collapsed

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def top(self) -> int:
        return self.offset + self.counts.size - 1

    def add(self, idx: IntArray, limit: int) -> None:
        """Count bucket indices ``idx``, folding so that at most ``limit`` buckets remain."""
        if idx.size == 0:
            return
        lo, hi = int(idx.min()), int(idx.max())
        if self.counts.size and lo >= self.offset and hi <= self.top:
            # within the occupied range (the common case): counted in place, no fold
            # can be due (the top does not move)
            seen = np.bincount(idx - self.offset)
            self.counts[:seen.size] += seen
            return
        top = max(hi, self.top) if self.counts.size else hi
        floor = top - limit + 1
        folded = int(idx.min()) < floor
        if folded:  # fold before counting: bincount never spans more than limit buckets
            idx = np.maximum(idx, floor)
        low = int(idx.min())
        batch = _Store(np.bincount(idx - low).astype(np.int64), low, folded)
        merged = self.merged(batch, limit)
        self.counts, self.offset, self.collapsed = merged.counts, merged.offset, merged.collapsed

    def add_counts(self, counts: npt.NDArray[np.integer[Any]], low: int, limit: int) -> None:
        """Count ``counts[j]`` values in bucket ``low + j``: what :meth:`add` does with
        their indices, folding likewise."""
        nz = np.flatnonzero(counts)
        if not nz.size:
            return
        lo, hi = low + int(nz[0]), low + int(nz[-1])
        counts = counts[nz[0]:nz[-1] + 1]
        if self.counts.size and lo >= self.offset and hi <= self.top:
            self.counts[lo - self.offset:hi - self.offset + 1] += counts
            return
        top = max(hi, self.top) if self.counts.size else hi
        floor = top - limit + 1
        folded = lo < floor
        if folded:  # buckets below the floor go into it, as add's np.maximum does
            cut = floor - lo
            kept = (counts[cut:] if cut < counts.size else np.zeros(1)).astype(np.int64)
            kept[0] += int(counts[:cut].sum())
            batch = _Store(kept, floor, True)
        else:
            batch = _Store(counts.astype(np.int64), lo, False)
        merged = self.merged(batch, limit)
        self.counts, self.offset, self.collapsed = merged.counts, merged.offset, merged.collapsed

    @staticmethod
    def add_rows(stores: Sequence[_Store], counts: npt.NDArray[np.integer[Any]], low: int,
                 limit: int) -> None:
        """``stores[i].add_counts(counts[i], low, limit)`` for every row of the 2-D
        ``counts``, with the rows' occupied spans found for all at once: a batch's counts
        mostly fall within what each store holds already, and are then added in place,
        one slice each."""
        used = counts != 0
        occupied = used.any(axis=1).tolist()
        firsts = used.argmax(axis=1).tolist()
        lasts = (counts.shape[1] - 1 - used[:, ::-1].argmax(axis=1)).tolist()
        for store, row, busy, first, last in zip(stores, counts, occupied, firsts, lasts,
                                                 strict=True):
            if not busy:
                continue
            start = low + first - store.offset
            if store.counts.size and start >= 0 and low + last <= store.top:
                store.counts[start:start + last - first + 1] += row[first:last + 1]
                continue
            lo, hi = low + first, low + last
            if store.counts.size:
                lo, hi = min(lo, store.offset), max(hi, store.top)
            if hi - lo >= limit:  # a fold is due
                store.add_counts(row, low, limit)
                continue
            # the occupied range grows (a window's first values, or a new extreme): what
            # add_counts makes, without its fold's bookkeeping
            grown = np.zeros(hi - lo + 1, dtype=np.int64)
            if store.counts.size:
                grown[store.offset - lo:store.offset - lo + store.counts.size] = store.counts
            grown[low + first - lo:low + last - lo + 1] += row[first:last + 1]
            store.counts, store.offset = grown, lo

    def merged(self, other: _Store, limit: int | None) -> _Store:
        """Counts of both, folded to ``limit`` buckets below the top (no fold if ``None``)."""
        collapsed = self.collapsed or other.collapsed
        stores = [s for s in (self, other) if s.counts.size]
        if not stores:
            return _Store(collapsed=collapsed)
        hi = max(s.top for s in stores)
        if limit is not None:  # fold first: the result never spans more than limit
            stores = [s.folded(hi - limit + 1) for s in stores]
        lo = min(s.offset for s in stores)
        out = _Store(np.zeros(hi - lo + 1, dtype=np.int64), lo,
                     collapsed or any(s.collapsed for s in stores))
        for s in stores:
            out.counts[s.offset - lo:s.offset - lo + s.counts.size] += s.counts
        return out

    def folded(self, floor: int) -> _Store:
        """Buckets below ``floor`` moved into ``floor``."""
        if not self.counts.size or self.offset >= floor:
            return self
        cut = floor - self.offset
        counts = self.counts[cut:] if cut < self.counts.size else np.zeros(1, dtype=np.int64)
        counts = counts.copy()
        counts[0] += self.counts[:cut].sum()
        return _Store(counts, floor, True)

    @staticmethod
    def harmonised(a: _Store, b: _Store) -> tuple[_Store, _Store]:
        floors = [s.offset for s in (a, b) if s.collapsed and s.counts.size]
        if not floors:
            return a, b
        return a.folded(max(floors)), b.folded(max(floors))

    def occupied(self) -> tuple[IntArray, IntArray]:
        """Indices of the non-empty buckets (increasing) and their counts."""
        nz = np.flatnonzero(self.counts)
        return self.offset + nz.astype(np.int64), self.counts[nz]

    @staticmethod
    def union(a: _Store, b: _Store) -> tuple[IntArray, IntArray, IntArray]:
        """Indices non-empty in either store, with each store's counts on them."""
        if a.counts.size and b.counts.size:
            lo, hi = min(a.offset, b.offset), max(a.top, b.top)
            if hi - lo < 4 * (a.counts.size + b.counts.size):  # overlapping or near: dense
                da = np.zeros(hi - lo + 1, dtype=np.int64)
                db = np.zeros(hi - lo + 1, dtype=np.int64)
                da[a.offset - lo:a.top - lo + 1] = a.counts
                db[b.offset - lo:b.top - lo + 1] = b.counts
                nz = np.flatnonzero(da | db)  # (counts are never negative)
                return nz + lo, da[nz], db[nz]
        (ia, ca), (ib, cb) = a.occupied(), b.occupied()
        both = np.sort(np.concatenate([ia, ib]))
        idx = both[np.concatenate([[True], both[1:] != both[:-1]])] if both.size else both
        out_a = np.zeros(idx.size, dtype=np.int64)
        out_b = np.zeros(idx.size, dtype=np.int64)
        out_a[np.searchsorted(idx, ia)] = ca
        out_b[np.searchsorted(idx, ib)] = cb
        return idx, out_a, out_b

    def to_state(self) -> dict[str, Any]:
        """The counts packed: ``"u1:"``, ``"u2:"`` or ``"u4:"`` and the base64 of them as
        little-endian unsigned integers of the fewest bytes that hold the largest, a
        JSON list only past ``2**32``. A window's buckets hold small counts: a byte or
        two each, against two to five characters in a list, and no Python int each to
        build and write."""
        return {"offset": self.offset, "counts": _packed(self.counts),
                "collapsed": self.collapsed}

    @classmethod
    def from_state(cls, state: Any, limit: int) -> _Store:
        offset, collapsed = state["offset"], state["collapsed"]
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an integer, got {offset!r}")
        if not isinstance(collapsed, bool):
            raise TypeError(f"collapsed must be a boolean, got {collapsed!r}")
        raw = state["counts"]
        if isinstance(raw, str):
            counts = _unpacked(raw)
        elif not isinstance(raw, list) or not all(
                isinstance(c, int) and not isinstance(c, bool) for c in raw):
            raise TypeError("counts must be packed or a list of integers")
        else:
            counts = np.asarray(raw, dtype=np.int64)
        if (counts < 0).any() or counts.size > limit or (
                counts.size and (counts[0] == 0 or counts[-1] == 0)):
            raise ValueError(f"{counts.size} bucket counts are negative, untrimmed or "
                             f"over the {limit}-bucket budget")
        return cls(counts, offset, collapsed)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, _Store) and self.offset == other.offset
                and self.collapsed == other.collapsed
                and np.array_equal(self.counts, other.counts))


_PACKINGS: dict[str, np.dtype[Any]] = {"u1": np.dtype("<u1"), "u2": np.dtype("<u2"),
                                       "u4": np.dtype("<u4")}


def _packed(counts: IntArray) -> str | list[int]:
    """Bucket counts (never negative) as :meth:`_Store.to_state` writes them."""
    if not counts.size:
        return []
    top = int(counts.max())
    code = "u1" if top < 1 << 8 else "u2" if top < 1 << 16 else "u4" if top < 1 << 32 \
        else None
    if code is None:
        out: list[int] = counts.tolist()  # (more than four billion values in one bucket)
        return out
    return f"{code}:{base64.b64encode(counts.astype(_PACKINGS[code]).tobytes()).decode()}"


def _unpacked(text: str) -> IntArray:
    """:func:`_packed` counts read back (``ValueError`` for anything else)."""
    code, sep, data = text.partition(":")
    dtype = _PACKINGS.get(code)
    if not sep or dtype is None:
        raise ValueError(f"unknown packing {code[:8]!r} of bucket counts")
    return np.frombuffer(base64.b64decode(data, validate=True), dtype=dtype).astype(np.int64)


_DEFAULT = QuantileSketch()  # the default grid (a sketch is only read for it)


def _magnitudes(x: FloatArray, min_positive: float
                ) -> tuple[FloatArray, npt.NDArray[np.bool_], bool, bool]:
    """``(mag, valid, finite, all_valid)``: ``|x|`` with each value that is not inserted
    (NaN, infinite, zero or below ``min_positive``) replaced by the first one that is (1
    when none is), so that bucket indices can be computed for the whole array at once;
    which values are inserted; whether every value is finite; whether every one is
    inserted."""
    mag = np.abs(x)
    valid = mag >= min_positive  # False for NaN, zeros and tiny values
    finite = math.isfinite(float(mag.max(initial=0.0)))  # max propagates NaN
    if not finite:
        valid &= np.isfinite(mag)
    all_valid = bool(valid.all())
    if not all_valid:
        # the first inserted value: found by argmax (the first True), not by copying out
        # every inserted value (a boolean index) to read one
        first = int(np.argmax(valid))
        mag = np.where(valid, mag, float(mag.flat[first])) if valid.flat[first] \
            else np.ones_like(mag)
    return mag, valid, finite, all_valid


def default_buckets(x: FloatArray) -> npt.NDArray[np.int32]:
    """Bucket indices of ``|x|`` on the default grid (``alpha`` 0.01, ``min_positive``
    1e-9), as :meth:`QuantileSketch.update_rows` computes them: where a value is not
    inserted (missing, non-finite or zero values are counted from ``x`` itself), the
    first inserted value's.

    >>> default_buckets(np.array([[1.0, -2.0, np.nan, 0.0]])).tolist()
    [[0, 35, 0, 0]]
    """
    if not x.size:
        return np.zeros(x.shape, np.int32)
    return _DEFAULT._index(_magnitudes(x, _DEFAULT.min_positive)[0]).astype(np.int32)


# update_rows counts (row, sign, bucket) keys in one array of at most this many cells
_ROWS_LIMIT = 1 << 20
#: Largest edge table kept per grid (a grid with alpha=0.01 and min_positive=1e-9 needs
#: 36 600 entries for every float; much finer grids compute the rest on demand).
_TABLE_LIMIT = 1 << 20
_TABLES: dict[float, tuple[int, FloatArray]] = {}


def _power(base: float, k: IntArray) -> FloatArray:
    """``base**k`` by binary exponentiation: correctly rounded IEEE products only, so the
    result is the same on every platform (``pow`` and ``log`` may differ by an ulp)."""
    e = np.abs(k)
    out = np.ones(k.shape, dtype=np.float64)
    with np.errstate(over="ignore"):
        while e.size and e.any():
            out = np.where((e & 1).astype(bool), out * base, out)
            base *= base
            e = e >> 1
    with np.errstate(divide="ignore"):
        res: FloatArray = np.where(k < 0, 1.0 / out, out)
    return res


def _table(gamma: float, lo: int, hi: int) -> tuple[int, FloatArray | None]:
    """The grid's table of ``gamma**k`` (``table[k - start]``), grown to hold ``lo..hi``;
    ``None`` when that would pass ``_TABLE_LIMIT`` entries."""
    start, table = _TABLES.get(gamma, (lo, np.zeros(0, dtype=np.float64)))
    if lo < start or hi >= start + table.size:
        new_lo, new_hi = min(lo, start), max(hi, start + table.size - 1)
        if new_hi - new_lo >= _TABLE_LIMIT:
            return 0, None
        left = _power(gamma, np.arange(new_lo, start, dtype=np.int64))
        right = _power(gamma, np.arange(start + table.size, new_hi + 1, dtype=np.int64))
        start, table = new_lo, np.concatenate([left, table, right])
        _TABLES[gamma] = (start, table)  # one assignment: safe for concurrent readers
    return start, table


def _edges(gamma: float, k: IntArray) -> FloatArray:
    """``gamma**k`` from a cached per-grid table (entries are independent of the range)."""
    if k.size == 0:
        return np.zeros(0, dtype=np.float64)
    start, table = _table(gamma, int(k.min()), int(k.max()))
    if table is None:
        return _power(gamma, k)
    out: FloatArray = table[k - start]
    return out


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a count, got {value!r}")
    return int(value)
