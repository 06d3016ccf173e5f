"""Data-quality counts of one window's prediction feature maps (one model version).

:class:`QualityCounts` counts, per configured feature, how many events carry it
(``present``), leave it out (``missing``), give it a null (``null``), a value of the
wrong type (``type_error``), a number outside its range (``out_of_range``) or a
category outside its allowed values (``unseen``); and, per event, how many events carry
a feature that is not configured (``unexpected_events``), with a bounded record of
those names. Counts are plain integers: two windows' counts merge exactly, and rates
are counts over ``events``.
"""

from __future__ import annotations

import itertools
import math
import numbers
import operator
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from app.errors import MALFORMED_STATE, StateError
from app.sketches._state import check_state
from app.sketches.categorical import OTHER, as_category

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Per-feature counters, in the order of :meth:`QualityCounts.feature_counts`.
COUNTERS = ("present", "null", "type_error", "out_of_range", "unseen", "missing")
#: The key of the event-level rates in :meth:`QualityCounts.rates`.
EVENTS = "@events"
#: Unexpected feature names recorded by name; the others are counted under ``OTHER``.
MAX_UNEXPECTED_NAMES = 20
KINDS = frozenset({"numeric", "categorical"})

_PRESENT, _MISSING_C = COUNTERS.index("present"), COUNTERS.index("missing")
_OUT_OF_RANGE = COUNTERS.index("out_of_range")

# Type codes of feature values: numbers are _BOOL.._FLOAT, scalars _BOOL.._STR.
_ABSENT_T, _NULL_T, _BOOL_T, _INT_T, _FLOAT_T, _STR_T, _OTHER_T = range(7)


class _Absent(float):
    """The value read for an absent key: a NaN of its own type, so numpy reads it as NaN."""

    __slots__ = ()


_ABSENT = _Absent("nan")


class _TypeCodes(dict[type, int]):
    """Type code per value type; types not seen yet are classified once and remembered."""

    def __missing__(self, t: type) -> int:
        if issubclass(t, bool):
            code = _BOOL_T
        elif issubclass(t, numbers.Integral):
            code = _INT_T
        elif issubclass(t, numbers.Real):
            code = _FLOAT_T
        elif issubclass(t, str):
            code = _STR_T
        else:
            code = _OTHER_T  # list, dict, ...
        self[t] = code
        return code


_TYPE_CODES = _TypeCodes({_Absent: _ABSENT_T, type(None): _NULL_T, bool: _BOOL_T,
                          int: _INT_T, float: _FLOAT_T, str: _STR_T, list: _OTHER_T,
                          dict: _OTHER_T})


class QualityCounts:
    """Mergeable data-quality counts of a window's feature maps.

    Per configured feature (``features``: name to ``"numeric"`` or ``"categorical"``):

    - ``present``: the key is there (null or not); ``missing``: the key is absent;
    - ``null``: the value is null;
    - ``type_error``: a numeric feature with a string or a container (list, dict), a
      categorical feature with a container;
    - ``out_of_range``: a number (booleans are 1/0) outside the feature's ``[lo, hi]``
      in ``ranges`` (NaN and infinities are outside every range);
    - ``unseen``: a category (spelled by :func:`~app.sketches.categorical.as_category`)
      outside the feature's set in ``allowed``.

    Per event: ``events`` and ``unexpected_events`` (events with at least one feature
    name that is not configured). The unexpected names are counted by name for the
    ``MAX_UNEXPECTED_NAMES`` lexicographically smallest ones and under ``"__other__"``
    for the rest: a rule that does not depend on the order of events, so counts merge
    exactly however a window was split into batches.

    ``ranges`` and ``allowed`` come with each :meth:`update` (from the rules); a feature
    without an entry is not checked for them. A window's batches should be counted
    under the same rules.

    Examples
    --------
    >>> q = QualityCounts({"age": "numeric", "plan": "categorical"})
    >>> q.update([{"age": 30, "plan": "pro"}, {"age": None, "plan": "team"},
    ...           {"age": "x", "plan": "pro", "extra": 1}, {"age": 130}],
    ...          ranges={"age": (0.0, 120.0)}, allowed={"plan": frozenset({"free", "pro"})})
    >>> q.feature_counts("age")
    {'present': 4, 'null': 1, 'type_error': 1, 'out_of_range': 1, 'unseen': 0, 'missing': 0}
    >>> q.feature_counts("plan")["unseen"], q.feature_counts("plan")["missing"]
    (1, 1)
    >>> q.events, q.unexpected_events, q.unexpected_names
    (4, 1, {'extra': 1})
    >>> q.rates()["plan"]["missing"], q.rates()["@events"]
    (0.25, {'unexpected': 0.25})
    """

    KIND = "quality_counts"
    VERSION = 1
    __slots__ = ("_counts", "_index", "_kinds", "_names", "_numeric",
                 "_unexpected", "_unexpected_other", "events", "unexpected_events")

    def __init__(self, features: Mapping[str, str]) -> None:
        for name, kind in features.items():
            if kind not in KINDS:
                raise ValueError(f"feature {name!r}: kind must be 'numeric' or 'categorical', "
                                 f"got {kind!r}")
            if name == EVENTS:
                raise ValueError(f"{EVENTS!r} names the event-level rates, not a feature")
        self._kinds: dict[str, str] = {str(n): k for n, k in features.items()}
        self._names = tuple(self._kinds)
        self._index = {n: j for j, n in enumerate(self._names)}
        self._numeric = tuple(self._kinds[n] == "numeric" for n in self._names)
        self._counts: IntArray = np.zeros((len(self._names), len(COUNTERS)), dtype=np.int64)
        self.events = 0
        self.unexpected_events = 0
        self._unexpected: dict[str, int] = {}
        self._unexpected_other = 0

    # -- reading -------------------------------------------------------------------------

    @property
    def features(self) -> dict[str, str]:
        """The configured features: name to kind."""
        return dict(self._kinds)

    @property
    def unexpected_names(self) -> dict[str, int]:
        """Unexpected feature names with their counts, most frequent first; names beyond
        the record's bound are counted under ``"__other__"``."""
        out = dict(sorted(self._unexpected.items(), key=lambda kv: (-kv[1], kv[0])))
        if self._unexpected_other:
            out[OTHER] = self._unexpected_other
        return out

    def count(self, feature: str, counter: str) -> int:
        """One counter (see ``COUNTERS``) of one feature."""
        if counter not in COUNTERS:
            raise ValueError(f"unknown counter {counter!r}; known: {list(COUNTERS)}")
        return int(self._counts[self._row(feature), COUNTERS.index(counter)])

    def feature_counts(self, feature: str) -> dict[str, int]:
        """Every counter of one feature."""
        row = self._counts[self._row(feature)].tolist()
        return dict(zip(COUNTERS, row, strict=True))

    def rates(self) -> dict[str, dict[str, float]]:
        """Each counter over ``events`` per feature, and the event-level rates under
        ``EVENTS`` (``{"unexpected": ...}``); all 0 when there are no events."""
        n = self.events
        out: dict[str, dict[str, float]] = {}
        for j, name in enumerate(self._names):
            row = self._counts[j].tolist()
            out[name] = {c: (v / n if n else 0.0) for c, v in zip(COUNTERS, row, strict=True)}
        out[EVENTS] = {"unexpected": self.unexpected_events / n if n else 0.0}
        return out

    # -- counting ------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """The configured features counted, in counter order."""
        return self._names

    def update(self, feature_maps: Sequence[Mapping[str, Any]],
               ranges: Mapping[str, tuple[float, float]],
               allowed: Mapping[str, frozenset[str]], *,
               columns: Sequence[Sequence[Any] | None] | None = None,
               floats: Callable[[str], FloatArray] | None = None,
               types: Callable[[str], set[type]] | None = None,
               lengths: Sequence[int] | None = None,
               tallies: Mapping[str, Mapping[Any, int]] | None = None) -> None:
        """Count a batch of feature maps (one per event).

        ``columns``: the values of :attr:`names` in every map, when the caller has read
        them already (every map carries every name); ``None`` for a numeric feature that
        every map carries as a number (an int, a float or a bool), whose ``floats`` are
        all there is to count; ``floats``: a numeric feature's column as floats (nulls
        NaN), likewise; ``types``: the types of a column's values (read with ``columns``
        only); ``lengths``: how many names each map holds, when the caller knows;
        ``tallies``: a categorical feature's values with how often each came, in all the
        maps, when the caller has them (with ``columns`` only): a tally of strings and
        nulls is counted instead of its column.

        One pass reads every configured feature of every event into a flat list. Per
        feature, a column of only the usual types (numbers and nulls for a numeric
        feature, strings and nulls for a categorical one) is counted by C-level list
        and numpy operations; a column with other values falls back to a per-value
        type code. Only events with more keys than configured features present are
        read again, for their unexpected names.
        """
        n = len(feature_maps)
        if n == 0:
            return
        names = self._names
        k = len(names)
        flat: list[Any] | None = None
        cols: Sequence[Sequence[Any] | None] = []
        if columns is not None:
            if len(columns) != k:
                raise ValueError(f"{len(columns)} columns for {k} features")
            if floats is None and None in columns:
                raise ValueError("a column of numbers only needs its floats")
            cols = columns
        elif k:
            floats = None  # (only for columns read by the caller)
            try:  # the usual batch: every event carries every configured feature
                getter = operator.itemgetter(*names)
                rows = list(map(getter, feature_maps)) if k > 1 else \
                    [(v,) for v in map(getter, feature_maps)]
                cols = list(zip(*rows, strict=True))
            except KeyError:
                flat = [f.get(name, _ABSENT) for f in feature_maps for name in names]
                cols = [flat[j::k] for j in range(k)]
        delta = np.zeros_like(self._counts)
        numbers = [j for j, column in enumerate(cols) if column is None]
        if numbers:  # numbers in every map: present, of the right type
            for j in numbers:
                if not self._numeric[j]:
                    raise ValueError(f"feature {names[j]!r} is categorical: its values "
                                     "are needed")
            assert floats is not None
            delta[numbers, _PRESENT] = n
            bounded = [j for j in numbers if ranges.get(names[j]) is not None]
            if bounded:
                delta[bounded, _OUT_OF_RANGE] = _outside_rows(
                    [floats(names[j]) for j in bounded],
                    [_bounds(names[j], ranges[names[j]]) for j in bounded])
        for j, name in enumerate(names):
            numeric = self._numeric[j]
            column = cols[j]
            if column is None:
                continue
            tally = None if numeric or tallies is None or columns is None else \
                tallies.get(name)
            if tally is not None and set(map(type, tally)) <= _TALLY_TYPES \
                    and sum(tally.values()) == n:
                delta[j] = _tally_counters(n, tally, allowed.get(name))
                continue
            delta[j] = _column(name, column, numeric,
                               ranges.get(name) if numeric else None,
                               None if numeric else allowed.get(name), floats,
                               None if types is None or columns is None else types(name))

        sizes = np.fromiter(map(len, feature_maps) if lengths is None else lengths,
                            dtype=np.int64, count=n)
        configured: Any = k  # configured features each event carries
        if flat is not None and delta[:, _MISSING_C].any():
            absent = np.fromiter(map(operator.is_, flat, itertools.repeat(_ABSENT)),
                                 dtype=np.bool_, count=n * k).reshape(n, k)
            configured = k - absent.sum(axis=1)
        surplus = np.flatnonzero(sizes > configured)
        if surplus.size:
            known = self._index
            batch = Counter(key for i in surplus.tolist() for key in feature_maps[i]
                            if key not in known)
            self._record_unexpected(batch)

        self._counts += delta
        self.events += n
        self.unexpected_events += int(surplus.size)

    def merge(self, other: QualityCounts) -> QualityCounts:
        """Counts of both windows (or batches) together; exact."""
        if self._kinds != other._kinds:
            raise ValueError(f"cannot merge quality counts of different features: "
                             f"{self._kinds} and {other._kinds}")
        out = QualityCounts(self._kinds)
        out._counts = self._counts + other._counts
        out.events = self.events + other.events
        out.unexpected_events = self.unexpected_events + other.unexpected_events
        out._unexpected = dict(self._unexpected)
        out._unexpected_other = self._unexpected_other
        out._record_unexpected(other._unexpected, other._unexpected_other)
        return out

    def _record_unexpected(self, names: Mapping[str, int], other: int = 0) -> None:
        combined = Counter(self._unexpected)
        combined.update(names)
        self._unexpected_other += other + combined.pop(OTHER, 0)
        ranked = sorted(combined)
        for name in ranked[MAX_UNEXPECTED_NAMES:]:
            self._unexpected_other += combined[name]
        self._unexpected = {name: combined[name] for name in ranked[:MAX_UNEXPECTED_NAMES]}

    def _row(self, feature: str) -> int:
        j = self._index.get(feature)
        if j is None:
            raise ValueError(f"unknown feature {feature!r}; known: {list(self._names)}")
        return j

    # -- state ---------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.KIND, "v": self.VERSION, "features": dict(self._kinds),
                "counts": {name: self.feature_counts(name) for name in self._names},
                "events": self.events, "unexpected_events": self.unexpected_events,
                "unexpected_names": dict(self._unexpected),
                "unexpected_other": self._unexpected_other}

    @classmethod
    def from_state(cls, state: Any) -> QualityCounts:
        state = check_state(state, cls.KIND, frozenset({cls.VERSION}))
        try:
            out = cls({str(n): str(k) for n, k in state["features"].items()})
            out.events = _count(state["events"])
            out.unexpected_events = _count(state["unexpected_events"])
            counts = state["counts"]
            if set(counts) != set(out._names):
                raise ValueError(f"counts of {sorted(counts)} for features {list(out._names)}")
            for j, name in enumerate(out._names):
                out._counts[j] = [_count(counts[name][c]) for c in COUNTERS]
                if out._counts[j, _PRESENT] + out._counts[j, _MISSING_C] != out.events:
                    raise ValueError(f"feature {name!r}: present + missing != events")
            names = {str(n): _count(c) for n, c in state["unexpected_names"].items()}
            if len(names) > MAX_UNEXPECTED_NAMES or OTHER in names:
                raise ValueError("too many unexpected names recorded")
            out._unexpected = names
            out._unexpected_other = _count(state["unexpected_other"])
            if out.unexpected_events > out.events:
                raise ValueError("more unexpected events than events")
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt quality counts state: {exc}") from None
        return out

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, QualityCounts) and self._kinds == other._kinds
                and np.array_equal(self._counts, other._counts)
                and (self.events, self.unexpected_events, self._unexpected_other)
                == (other.events, other.unexpected_events, other._unexpected_other)
                and self._unexpected == other._unexpected)

    def __repr__(self) -> str:
        return (f"QualityCounts(features={len(self._names)}, events={self.events}, "
                f"unexpected_events={self.unexpected_events})")


_NUMERIC_FAST = frozenset({float, int, bool, type(None), _Absent})
_CATEGORY_FAST = frozenset({str, type(None), _Absent})


def _column(name: str, column: Sequence[Any], numeric: bool, bounds: tuple[float, float] | None,
            allowed: frozenset[str] | None,
            floats: Callable[[str], FloatArray] | None = None,
            types: set[type] | None = None) -> list[int]:
    """The counters (in ``COUNTERS`` order) of one feature's column of values
    (``floats``: the column as floats, ``types``: its values' types, when the caller
    has them)."""
    n = len(column)
    if bounds is not None:
        bounds = _bounds(name, bounds)
    if types is None:
        types = set(map(type, column))
    if types <= (_NUMERIC_FAST if numeric else _CATEGORY_FAST):
        # list.count compares by identity first: these types never equal None or _ABSENT
        absent = column.count(_ABSENT) if _Absent in types else 0
        null = column.count(None) if type(None) in types else 0
        blank = absent + null
        type_error = out_of_range = unseen = 0
        if bounds is not None and n > blank:
            x = _floats(column) if floats is None else floats(name)
            out_of_range = _outside(x, bounds) - blank
        if allowed is not None and n > blank:
            unseen = n - blank - sum(map(allowed.__contains__, column))
        return [n - absent, null, type_error, out_of_range, unseen, absent]
    codes = np.fromiter(map(_TYPE_CODES.__getitem__, map(type, column)), dtype=np.int8,
                        count=n)
    absent = int((codes == _ABSENT_T).sum())
    null = int((codes == _NULL_T).sum())
    number = (codes >= _BOOL_T) & (codes <= _FLOAT_T)
    if numeric:
        type_error = int((codes >= _STR_T).sum())
        out_of_range = 0
        if bounds is not None and number.any():
            values = [v if ok else math.nan
                      for v, ok in zip(column, number.tolist(), strict=True)]
            out_of_range = _outside(_floats(values), bounds) - (n - int(number.sum()))
        return [n - absent, null, type_error, out_of_range, 0, absent]
    type_error = int((codes == _OTHER_T).sum())
    scalar = number | (codes == _STR_T)
    unseen = 0
    if allowed is not None and scalar.any():
        known = [ok and (v if isinstance(v, str) else as_category(v)) in allowed
                 for v, ok in zip(column, scalar.tolist(), strict=True)]
        unseen = int(scalar.sum()) - sum(known)
    return [n - absent, null, type_error, 0, unseen, absent]


_TALLY_TYPES = frozenset({str, type(None)})


def _tally_counters(n: int, tally: Mapping[Any, int], allowed: frozenset[str] | None
                    ) -> list[int]:
    """The counters (in ``COUNTERS`` order) of a categorical feature's ``n`` values, all
    present, strings or nulls, given as a tally: what :func:`_column` counts of them.

    >>> _tally_counters(5, {"a": 2, "z": 1, None: 2}, frozenset({"a"}))
    [5, 2, 0, 0, 1, 0]
    """
    null = tally.get(None, 0)
    unseen = 0
    if allowed is not None and n > null:
        unseen = n - null - sum(c for v, c in tally.items() if v in allowed)
    return [n, null, 0, 0, unseen, 0]


def _bounds(name: str, bounds: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(bounds[0]), float(bounds[1])
    if not lo <= hi:
        raise ValueError(f"range of feature {name!r} must be [low, high] with low <= high, "
                         f"got {list(bounds)}")
    return lo, hi


def _outside(x: FloatArray, bounds: tuple[float, float]) -> int:
    """Values of ``x`` outside ``[lo, hi]``, NaN included."""
    lo, hi = bounds
    with np.errstate(invalid="ignore"):
        inside = (x >= lo) & (x <= hi)
    return int(x.size - np.count_nonzero(inside))


def _outside_rows(rows: Sequence[FloatArray], bounds: Sequence[tuple[float, float]]
                  ) -> npt.NDArray[np.int64]:
    """:func:`_outside` of each row with its bounds, in a few numpy passes over all of
    them (rows of one length).

    >>> _outside_rows([np.array([0.0, 5.0, np.nan]), np.array([1.0, 2.0, 3.0])],
    ...               [(0.0, 1.0), (2.0, 3.0)]).tolist()
    [2, 1]
    """
    x = np.array(rows, dtype=np.float64).reshape(len(rows), -1)
    lo, hi = np.array(bounds, dtype=np.float64).reshape(len(rows), 2).T
    with np.errstate(invalid="ignore"):
        inside = (x >= lo[:, None]) & (x <= hi[:, None])
    return np.asarray(x.shape[1] - np.count_nonzero(inside, axis=1), dtype=np.int64)


def _floats(values: Sequence[Any]) -> FloatArray:
    """Numbers, nulls and absences as floats: numbers as themselves (bools 1/0, integers
    beyond the float range ±inf), the others NaN."""
    try:
        return np.array(values, dtype=np.float64)
    except OverflowError:  # an integer beyond the float range
        return np.array([_float(v) for v in values], dtype=np.float64)


def _float(v: Any) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a count (an integer >= 0), got {value!r}")
    return int(value)
