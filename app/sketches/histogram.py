"""Histogram of a numeric feature on fixed, reference-derived bin edges."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from app.errors import MALFORMED_STATE, StateError
from app.sketches._state import check_state, json_float, read_float

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
# Below this magnitude no sum of squares of a batch overflows (batches are far shorter
# than 1e8 values).
_SAFE = 1e150


class RowCounts(NamedTuple):
    """What rows of values add to histograms: their bin counts
    (:meth:`BinnedHistogram.bin_counts`), sums and sums of squares."""

    counts: npt.NDArray[np.integer[Any]]  # a row per histogram
    totals: list[float]
    squares: list[float]


class BinnedHistogram:
    """Counts of values per bin, plus missing (null) and non-finite values.

    ``edges`` are the interior cut points: ``len(edges) + 1`` bins, the first open to
    -inf and the last to +inf, so every finite value lands in a bin. Bin ``i`` holds
    ``edges[i-1] < x <= edges[i]``. Merging is exact (counts add).

    >>> h = BinnedHistogram([0.0, 1.0])
    >>> h.update(np.array([-1.0, 0.5, 0.7, 3.0, np.nan]))
    >>> h.counts.tolist(), h.missing
    ([1, 2, 1], 1)
    """

    KIND = "histogram"
    VERSION = 1
    __slots__ = ("counts", "edges", "missing", "nonfinite", "total", "total_sq")

    def __init__(self, edges: FloatArray | list[float]) -> None:
        self.edges = np.asarray(edges, dtype=np.float64)
        if self.edges.ndim != 1:
            raise ValueError(f"edges must be one-dimensional, got shape {self.edges.shape}")
        if self.edges.size and not np.all(self.edges[1:] > self.edges[:-1]):
            raise ValueError(f"edges must be strictly increasing, got {self.edges.tolist()}")
        self.counts = np.zeros(self.edges.size + 1, dtype=np.int64)
        self.missing = 0
        self.nonfinite = 0
        self.total = 0.0  # sum of finite values: the window mean for evidence
        self.total_sq = 0.0

    @property
    def n(self) -> int:
        """Finite values counted in the bins."""
        return int(self.counts.sum())

    def update(self, values: FloatArray) -> None:
        """Add a batch; ``NaN`` marks a missing value, infinities count as non-finite."""
        values = np.asarray(values, dtype=np.float64)
        if not values.size:
            return
        lo, hi = float(values.min()), float(values.max())  # NaN propagates in both
        if lo > -_SAFE and hi < _SAFE:  # the common case, in the fewest numpy calls: no
            # NaN, no infinity, no magnitude whose sum or square could overflow
            idx = np.searchsorted(self.edges, values, side="left")
            self.counts += np.bincount(idx, minlength=self.counts.size)
            self.total += float(values.sum())
            self.total_sq += float(np.einsum("i,i->", values, values))
            return
        with np.errstate(over="ignore", invalid="ignore"):
            total = float(values.sum())
        if math.isfinite(total):
            kept = values
        else:
            finite = np.isfinite(values)
            nan = np.isnan(values)
            n_nan = int(np.count_nonzero(nan))
            self.missing += n_nan
            self.nonfinite += values.size - int(np.count_nonzero(finite)) - n_nan
            kept = values[finite]
            with np.errstate(over="ignore"):  # astronomically large values: sums saturate
                total = float(kept.sum())
        idx = np.searchsorted(self.edges, kept, side="left")
        self.counts += np.bincount(idx, minlength=self.counts.size)
        with np.errstate(over="ignore"):  # astronomically large values: the sums saturate
            self.total += total
            self.total_sq += float(np.einsum("i,i->", kept, kept))

    @staticmethod
    def update_rows(histograms: list[BinnedHistogram], x: FloatArray) -> None:
        """Add row ``i`` of the 2-D ``x`` to ``histograms[i]``: the same as
        ``histograms[i].update(x[i])`` row by row, with the range check and the sums made
        once for all the rows.

        >>> a, b = BinnedHistogram([0.0]), BinnedHistogram([1.0, 2.0])
        >>> BinnedHistogram.update_rows([a, b], np.array([[-1.0, 1.0], [1.5, 3.0]]))
        >>> a.counts.tolist(), b.counts.tolist(), b.total
        ([1, 1], [0, 1, 1], 4.5)
        """
        rows = x.shape[0] if x.ndim == 2 else 0
        if rows != len(histograms):
            raise ValueError(f"{rows} rows for {len(histograms)} histograms")
        if not rows or not x.shape[1]:
            return
        counts = BinnedHistogram.bin_counts([h.edges for h in histograms], x)
        if counts is None:  # NaN, infinities or huge values: row by row
            for h, row in zip(histograms, x, strict=True):
                h.update(row)
            return
        BinnedHistogram.add_row_counts(histograms, RowCounts(counts, *BinnedHistogram.row_sums(x)))

    @staticmethod
    def bin_counts(edges: Sequence[FloatArray], x: FloatArray) -> IntArray | None:
        """The bin counts :meth:`update_rows` adds to histograms of these ``edges`` for
        the rows of ``x`` (one per histogram, at least one value each), a row each, as
        wide as the most edges + 1 (a shorter histogram's counts are the first ones);
        ``None`` where a row holds NaN, an infinity or a huge value: those go row by row
        (:meth:`update`). Computed where the values are (a decode process counts a
        message's values), added where the histograms are (:meth:`add_row_counts`, with
        the rows' :meth:`row_sums`).

        >>> BinnedHistogram.bin_counts([np.array([0.0])], np.array([[-1.0, 2.0, 3.0]]))
        array([[1, 2]])
        >>> BinnedHistogram.bin_counts([np.array([0.0])], np.array([[np.nan]])) is None
        True
        """
        lo, hi = float(x.min()), float(x.max())  # NaN propagates in both
        if not (lo > -_SAFE and hi < _SAFE):
            return None
        rows, n = x.shape
        # A value's bin is the number of its row's edges below it (searchsorted, side
        # "left"): bin k holds the values in (edge k-1, edge k], so its count is how many
        # are at most edge k less how many are at most edge k-1. Those are read off each
        # row sorted (one sort of all the rows: numpy's vectorised sort beats comparing
        # every value with every edge, twice over at a batch's sizes).
        ordered = np.sort(x, axis=1)
        width = max(e.size for e in edges)
        at_most = np.full((rows, width + 2), n, dtype=np.intp)  # bracketed by 0 and n
        at_most[:, 0] = 0
        for i, e in enumerate(edges):
            at_most[i, 1:e.size + 1] = np.searchsorted(ordered[i], e, side="right")
        return np.diff(at_most, axis=1)

    @staticmethod
    def row_sums(x: FloatArray) -> tuple[list[float], list[float]]:
        """Each row's sum and sum of squares (of finite values below ``_SAFE``: what
        :meth:`bin_counts` counts)."""
        return x.sum(axis=1).tolist(), np.einsum("ij,ij->i", x, x).tolist()

    @staticmethod
    def add_row_counts(histograms: Sequence[BinnedHistogram], counted: RowCounts) -> None:
        """Add rows' counts and sums (row ``i`` to ``histograms[i]``)."""
        for h, row_counts, total, square in zip(histograms, counted.counts, counted.totals,
                                                counted.squares, strict=True):
            h.counts += row_counts[:h.counts.size]
            h.total += total
            h.total_sq += square

    @property
    def mean(self) -> float | None:
        n = self.n
        return self.total / n if n else None

    def merge(self, other: BinnedHistogram) -> BinnedHistogram:
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("cannot merge histograms with different bin edges")
        out = BinnedHistogram(self.edges)
        out.counts = self.counts + other.counts
        out.missing = self.missing + other.missing
        out.nonfinite = self.nonfinite + other.nonfinite
        out.total = self.total + other.total
        out.total_sq = self.total_sq + other.total_sq
        return out

    def proportions(self) -> FloatArray:
        total = self.counts.sum()
        if total == 0:
            return np.zeros(self.counts.size, dtype=np.float64)
        return self.counts / float(total)

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": self.KIND,
            "v": self.VERSION,
            "edges": self.edges.tolist(),
            "counts": self.counts.tolist(),
            "missing": self.missing,
            "nonfinite": self.nonfinite,
            "total": json_float(self.total),  # inf: values near the float max
            "total_sq": json_float(self.total_sq),
        }

    @classmethod
    def from_state(cls, state: Any) -> BinnedHistogram:
        state = check_state(state, cls.KIND, frozenset({cls.VERSION}))
        try:
            out = cls(state["edges"])
            counts = np.asarray(state["counts"], dtype=np.int64)
            if counts.shape != out.counts.shape or (counts < 0).any():
                raise StateError(
                    f"histogram state has {counts.size} counts for {out.counts.size} bins")
            out.counts = counts
            out.missing = int(state["missing"])
            out.nonfinite = int(state["nonfinite"])
            out.total = read_float(state["total"])
            out.total_sq = read_float(state["total_sq"])
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt histogram state: {exc}") from None
        return out

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, BinnedHistogram) and np.array_equal(self.edges, other.edges)
                and np.array_equal(self.counts, other.counts)
                and self.missing == other.missing and self.nonfinite == other.nonfinite)

    def __repr__(self) -> str:
        return f"BinnedHistogram(bins={self.counts.size}, n={self.n}, missing={self.missing})"
