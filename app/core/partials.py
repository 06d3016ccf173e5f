"""A message's numeric window sketches, counted where it is decoded.

A window slice keeps, per numeric signal, a histogram on its reference's bins and a
quantile sketch; updating them (a sort and a bucket count per signal) was the largest
part of a worker thread's window work. Both are counts, which add: a decode process
(:mod:`app.events.decode_pool`) that knows each model version's :class:`Binning` counts
a message's values itself, per event-time window, and the worker's thread adds those
counts to its slices (:meth:`~app.core.windows.Slice.update`) instead of reading the
values.

The categorical signals are tallied there too: each signal's values with how often
each came (:func:`tallies`), so that the worker's category counts and quality counts
read a handful of distinct values instead of every event's (a tally is made only of a
column of strings, or of booleans, with nulls: values no two types of which compare
equal, so the tally keeps every value's type).

Everything order-dependent stays with the worker: which events are late, which window
and slice they go to, which reference a slice compares with. A message's counts are used
for a window only when every one of its events there is windowed (none late) and the
slice is binned exactly as they were counted (:meth:`Binning.fits`); anything else is
counted from the events, as without them. The counts are those the worker would make
from the same values, and a worker's state and outputs are the same to the last byte
with or without them (``tests/unit/core/test_partials.py``,
``tests/unit/events/test_block.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from app.core.signals import Columns
from app.events.fields import field_values
from app.reference import CategoricalReference, NumericReference, Reference
from app.sketches import BinnedHistogram, QuantileSketch
from app.sketches.histogram import RowCounts
from app.sketches.quantile import BucketCounts

if TYPE_CHECKING:
    from app.events.block import EventBlock

_DEFAULT = QuantileSketch()  # the quantile grid decode processes compute buckets on
#: Several messages' quantile-bucket counts are added up as one array of at most this
#: many cells; counts lying further apart go into the sketches one message at a time.
_MERGE_LIMIT = 1 << 20


@dataclass(frozen=True, eq=False)
class Binning:
    """How a model version's window slices count its numeric signals: the signals in
    the slices' order, their histograms' edges, and the quantile sketches' bucket limit
    (on the default grid: a decode process's bucket indices are on it)."""

    names: tuple[str, ...]
    edges: tuple[npt.NDArray[np.float64], ...]
    max_buckets: int
    categorical: tuple[str, ...] = ()  # the categorical signals, tallied (see the module)

    @classmethod
    def of(cls, reference: Reference) -> Binning | None:
        """The binning of a reference's window slices; ``None`` when those count their
        numeric values another way than all at once on the default grid (fewer than two
        numeric signals, another grid, differing bucket limits)."""
        numeric = {name: ref for name, ref in reference.features.items()
                   if isinstance(ref, NumericReference)}
        if len(numeric) < 2:
            return None
        sketches = [ref.empty_quantile_sketch() for ref in numeric.values()]
        limit = sketches[0].max_buckets
        if any(not q.same_grid(_DEFAULT) or q.max_buckets != limit for q in sketches):
            return None
        return cls(tuple(numeric), tuple(np.asarray(ref.edges, dtype=np.float64)
                                         for ref in numeric.values()), limit,
                   tuple(name for name, ref in reference.features.items()
                         if isinstance(ref, CategoricalReference)))

    def fits(self, names: Sequence[str], histograms: Sequence[BinnedHistogram],
             quantiles: Sequence[QuantileSketch]) -> bool:
        """Whether sketches of ``names`` are binned as this counts: the same signals,
        edges, grid and bucket limit."""
        return tuple(names) == self.names and len(quantiles) == len(names) and all(
            q.same_grid(_DEFAULT) and q.max_buckets == self.max_buckets for q in quantiles
        ) and all(np.array_equal(h.edges, e) for h, e in zip(histograms, self.edges,
                                                                 strict=True))


#: A categorical signal's values with how often each came (``None``: absent or null).
Tally = dict[Any, int]


class Counts(NamedTuple):
    """The numeric sketches' counts of some events: each signal's histogram bins (a row
    per signal), and its quantile buckets; the tallies of the categorical signals that
    could be tallied (:func:`tallies`); and the serving latency's quantile buckets
    (:func:`latency_counts`: ``None`` where the worker counts the serving figures
    itself)."""

    n: int
    bins: npt.NDArray[np.integer[Any]]
    quantiles: BucketCounts
    tallies: dict[str, Tally] | None = None
    latency: BucketCounts | None = None


class Counted(NamedTuple):
    """A message's counts for one (window, version), with the binning they used."""

    binning: Binning
    counts: Counts


# window key of a message's counts: (the newest window start holding the events, version)
WindowKey = tuple[int, str]


def count(binning: Binning, x: npt.NDArray[np.float64],
          buckets: npt.NDArray[np.integer[Any]] | None) -> Counts | None:
    """The counts of ``x`` (a row per signal of ``binning``), as the slices' sketches
    would count them all at once; ``None`` where they would go value by value (NaN,
    infinities, huge values, buckets too far apart)."""
    if not x.shape[1]:
        return None
    bins = BinnedHistogram.bin_counts(binning.edges, x)
    if bins is None:
        return None
    quantiles = QuantileSketch.row_counts(x, buckets, _DEFAULT)
    if quantiles is None:
        return None
    # sent between processes: the narrowest integers that hold them
    narrow = np.min_scalar_type(x.shape[1])
    return Counts(x.shape[1], bins.astype(narrow),
                  quantiles._replace(counts=quantiles.counts.astype(narrow)))


def message_counts(block: EventBlock, hop_ms: int, binnings: Mapping[str | None, Binning]
                   ) -> dict[WindowKey, Counted] | None:
    """A prediction block's counts per (newest window start, version), with the binning
    each was counted with, for a model whose
    windows start every ``hop_ms`` and whose versions are binned as ``binnings``
    says (under ``None``: any other version); ``None`` when any of its events cannot be
    counted so (a version without a binning, a time that is not epoch milliseconds,
    values counted one by one)."""
    times = block.fields["timestamp"]
    if not times or set(map(type, times)) != {int}:
        return None
    versions = block.fields["model_version"]
    starts = np.asarray(times, dtype=np.int64) // hop_ms * hop_ms
    first, version = int(starts[0]), versions[0]
    groups: dict[WindowKey, list[int] | None]
    one_version = versions.count(version) == len(versions)
    if one_version and bool((starts == first).all()):
        groups = {(first, version): None}  # the usual message: one window, one version
    elif one_version:  # a message across windows
        groups = {(int(ws), version): np.flatnonzero(starts == ws).tolist()
                  for ws in np.unique(starts)}
    else:
        groups = {}
        for i, key in enumerate(zip(starts.tolist(), versions, strict=True)):
            groups.setdefault(key, []).append(i)  # type: ignore[union-attr]
    out = {}
    for key, idx in groups.items():
        binning = binnings.get(key[1]) or binnings.get(None)
        if binning is None:
            return None
        part = block if idx is None else block.take(idx)
        columns = Columns(part)
        counted = count(binning, columns.float_rows(binning.names),
                        columns.bucket_rows(binning.names))  # (None: computed there)
        if counted is None:
            return None
        if binning.categorical:
            counted = counted._replace(tallies=tallies(columns, binning.categorical))
        out[key] = Counted(binning, counted._replace(latency=latency_counts(part)))
    return out


def latency_counts(events: Sequence[Any]) -> BucketCounts | None:
    """The serving latency of predictions, counted as a window's serving figures count it
    (:class:`~app.core.serving.ServingStats`: a quantile sketch on the default grid),
    when every one carries a latency as a float and none a cost (the usual batch; any
    other is counted by the worker from the values).

    >>> latency_counts([{"latency_ms": 2.0}, {"latency_ms": 0.0}]).zero
    [1]
    >>> latency_counts([{"latency_ms": 2.0}, {"latency_ms": 3.0, "cost": 1.0}]) is None
    True
    """
    latency, cost = field_values(events, "latency_ms"), field_values(events, "cost")
    if cost.count(None) != len(cost) or set(map(type, latency)) != {float}:
        return None
    counted = QuantileSketch.row_counts(np.array(latency, dtype=np.float64)[None, :], None,
                                        _DEFAULT)
    if counted is None:
        return None
    return counted._replace(counts=counted.counts.astype(np.min_scalar_type(len(latency))))


#: The value types a tally is made of: within each set, no two values of different
#: types compare equal (``True == 1``), so a tally's keys keep every value's own type.
_TALLIED = (frozenset({str, type(None)}), frozenset({bool, type(None)}))


def tallies(columns: Columns, names: Sequence[str]) -> dict[str, Tally]:
    """The tallies of the signals ``names`` whose values are strings, or booleans, and
    nulls (the others are left out: their values are read by the worker; so are the
    features that every event carries as a number, without reading them).

    >>> from app.core.signals import Columns
    >>> tallies(Columns([{"features": {"c": "a", "n": 1}, "prediction": True},
    ...                  {"features": {"c": None, "n": "x"}, "prediction": True}]),
    ...         ["c", "n", "@prediction"])
    {'c': {'a': 1, None: 1}, '@prediction': {True: 2}}
    """
    out: dict[str, Tally] = {}
    for name in names:
        if columns.numbers(name):
            continue
        values = columns.signal(name)
        types = set(map(type, values))
        if values and any(types <= allowed for allowed in _TALLIED):
            out[name] = dict(Counter(values))
    return out


def tallies_of(counted: Sequence[Counted] | None, names: Iterable[str], n: int
               ) -> dict[str, Tally]:
    """The tallies of ``names`` over messages' counts, when those are the counts of the
    ``n`` events at hand (of all of them: none late), each over all the messages (a name
    one of them did not tally is left out)."""
    if not counted or sum(c.counts.n for c in counted) != n:
        return {}
    tallied = counted[0].counts.tallies
    if not tallied:
        return {}
    out = {}
    for name in names:
        if name in tallied:
            tally = merged_tally([c.counts for c in counted], name)
            if tally is not None:
                out[name] = tally
    return out


def merged_tally(counted: Sequence[Counts], name: str) -> Tally | None:
    """The tally of ``name`` over several messages' counts, or ``None`` when one of them
    has none."""
    parts = [None if c.tallies is None else c.tallies.get(name) for c in counted]
    if None in parts:
        return None
    if len(parts) == 1:
        return parts[0]
    total: Counter[Any] = Counter()
    for part in parts:
        total.update(part)
    return dict(total)


def add_counts(histograms: Sequence[BinnedHistogram], quantiles: Sequence[QuantileSketch],
               counted: Sequence[Counts], x: npt.NDArray[np.float64]) -> None:
    """Add messages' counts of the values ``x`` (a row per signal) to the sketches, as
    ``update_rows`` of ``x`` would: the histograms' sums from ``x`` itself (summed in
    one order whichever process counted, they are the same to the last bit), the counts
    added once for all the messages (the quantile buckets one message at a time where
    they lie too far apart to be added up as one array)."""
    bins = counted[0].bins if len(counted) == 1 else \
        np.sum(np.array([c.bins for c in counted], dtype=np.int64), axis=0)
    BinnedHistogram.add_row_counts(histograms, RowCounts(bins, *BinnedHistogram.row_sums(x)))
    add_quantile_counts(quantiles, [c.quantiles for c in counted])


def add_quantile_counts(quantiles: Sequence[QuantileSketch], buckets: Sequence[BucketCounts]
                        ) -> None:
    """Add messages' quantile-bucket counts of the same rows to the sketches (row ``i``
    to ``quantiles[i]``): added up first where they lie close enough, else one message
    at a time."""
    merged = _merged(buckets) if len(buckets) > 1 else None
    for b in buckets if merged is None else [merged]:
        QuantileSketch.add_row_counts(quantiles, b)


def _merged(counted: Sequence[BucketCounts]) -> BucketCounts | None:
    """The sum of several messages' bucket counts, or ``None`` when they span too
    much."""
    low = min(c.low for c in counted)
    top = max(c.low + c.counts.shape[1] for c in counted)
    rows = counted[0].counts.shape[0]
    if rows * (top - low) > _MERGE_LIMIT:
        return None
    buckets = np.zeros((rows, top - low), dtype=np.int64)
    for c in counted:
        buckets[:, c.low - low:c.low - low + c.counts.shape[1]] += c.counts
    return BucketCounts(buckets, low, _added([c.zero for c in counted]),
                        _added([c.missing for c in counted]),
                        _added([c.nonfinite for c in counted]))


def _added(cols: list[list[int] | None]) -> list[int] | None:
    """Per-row counts of several messages added (``None``: none in any)."""
    given = [c for c in cols if c is not None]
    if not given:
        return None
    return [int(v) for v in np.sum(given, axis=0)]
