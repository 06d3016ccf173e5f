"""What a monitored signal is: an input feature, or one of the model's outputs."""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Monitored signals that are not input features carry a prefix: ``PREDICTION``
# (``@prediction``, the predicted class or value) and ``SCORES`` (``@scores.<class>``, a
# class probability), defined with the event blocks, which carry their bucket indices
from app.events.block import PREDICTION as PREDICTION
from app.events.block import SCORES as SCORES
from app.events.block import EventBlock, number_table, rows_of
from app.events.fields import field_values, score_values, version_indices


def is_output_signal(name: str) -> bool:
    return name.startswith("@")


def public_name(name: str) -> str:
    """How a signal is named in outputs: ``prediction``, ``scores.churn`` or the feature."""
    return name[1:] if is_output_signal(name) else name


def signal_rows(events: Sequence[Mapping[str, Any]], names: Sequence[str]
                ) -> list[Mapping[str, Any]]:
    """The rows sketches read: the feature maps, extended with output signals if needed."""
    features = [e["features"] for e in events]
    if not any(is_output_signal(n) for n in names):
        return features
    out: list[Mapping[str, Any]] = []
    for e, f in zip(events, features, strict=True):
        row = dict(f)
        row[PREDICTION] = e.get("prediction")
        for cls, p in (e.get("scores") or {}).items():
            row[SCORES + cls] = p
        out.append(row)
    return out


#: Segment tags carried in reference rows: ``#segment.<key>``.
SEGMENT = "#segment."
OTHER_SEGMENT = "__other__"


def segment_label(key: str, value: str) -> str:
    """How a segment is named in slices, references and outputs: ``region=emea``."""
    return f"{key}={value}"


def reference_row(event: Mapping[str, Any]) -> dict[str, Any]:
    """A prediction event as a reference row: features, outputs and segment tags."""
    row = dict(signal_rows([event], [PREDICTION])[0])
    for key, value in (event.get("segment") or {}).items():
        row[SEGMENT + key] = value
    return row


_NUMERIC_TYPES = (int, float, bool)
_FAST_TYPES = frozenset({float, int, bool, type(None)})  # numpy converts these as we do


class Columns:
    """The signals of one list of prediction events, read as columns once and shared by
    whatever counts them (the window's sketches, its quality counts).

    ``signal(name)`` is a signal's raw values (``None`` where absent), ``floats(name)``
    the same as floats by :func:`numeric_column`'s rule, ``features(names)`` the raw
    values of input features when every event carries each of them (else ``None``:
    absent values need their own marker, the caller reads the maps itself). Feature
    columns are read for many names at once: one ``itemgetter`` call per event.

    >>> events = [{"features": {"a": 1, "b": "x"}, "prediction": True, "scores": {"1": 0.9}},
    ...           {"features": {"a": 2.5}, "prediction": False}]
    >>> c = Columns(events)
    >>> c.signal("a"), c.signal("b"), c.signal("@scores.1")
    ((1, 2.5), ['x', None], [0.9, None])
    >>> c.floats("@prediction").tolist(), c.features(["a"]), c.features(["a", "b"])
    ([1.0, 0.0], [(1, 2.5)], None)
    """

    __slots__ = ("_block", "_complete", "_floats", "_numbers", "_raw", "_types", "_versions",
                 "events", "maps")

    def __init__(self, events: Sequence[Mapping[str, Any]]) -> None:
        self.events = events
        self._raw: dict[str, Sequence[Any]] = {}
        self._complete: set[str] = set()  # feature columns with a value in every event
        self._floats: dict[str, np.ndarray[Any, Any]] = {}
        self._types: dict[str, set[type]] = {}
        self._numbers: set[str] = set()  # features read as floats only: numbers everywhere
        self._versions: dict[str, Sequence[int]] | None = None
        # An event block's columns are its own; its feature maps are built if asked for
        self._block = events if type(events) is EventBlock else None
        self.maps: Sequence[Mapping[str, Any]]
        if self._block is None:
            self.maps = [e["features"] for e in events]
        else:
            self.maps = _BlockMaps(self._block)
            self._raw.update(self._block.raw)
            self._floats.update(self._block.floats)
            self._numbers.update(self._block.floats)
            self._complete.update(self._block.feature_names)

    def lengths(self) -> Sequence[int] | None:
        """How many features each event's map holds, when known without reading them."""
        if self._block is None:
            return None
        return [len(self._block.feature_names)] * len(self._block)

    def versions(self) -> dict[str, Sequence[int]]:
        """:func:`~app.events.fields.version_indices` of the events (read once: the
        sketches, the quality counts and the serving figures all group by version).

        >>> c = Columns([{"features": {}, "model_version": "a"}] * 2)
        >>> c.versions(), c.versions() is c.versions()
        ({'a': range(0, 2)}, True)
        """
        if self._versions is None:
            self._versions = version_indices(self.events)
        return self._versions

    def read(self, names: Sequence[str]) -> None:
        """Read the raw columns of ``names`` not read yet (features in one pass)."""
        todo = [n for n in names if n not in self._raw]
        features = [n for n in todo if not is_output_signal(n)]
        if features and self._block is not None:  # none of a block's events has the others
            carried = set(self._block.feature_names)
            self._raw.update((n, [None] * len(self._block)) for n in features
                             if n not in carried)
            features = [n for n in features if n in carried]  # their values: from the events
        if features and self.maps:
            getter = operator.itemgetter(*features)
            try:  # the usual batch: every event carries every name (one C call per event)
                table = list(map(getter, self.maps))
            except KeyError:
                for n in features:
                    values = [m.get(n, _ABSENT) for m in self.maps]
                    if _ABSENT in values:
                        values = [None if v is _ABSENT else v for v in values]
                    else:
                        self._complete.add(n)
                    self._raw[n] = values
            else:
                self._raw.update(zip(features, zip(*table, strict=True) if len(features) > 1
                                     else [tuple(table)], strict=True))
                self._complete.update(features)
        elif features:
            self._raw.update((n, ()) for n in features)
            self._complete.update(features)
        for n in todo:
            if n == PREDICTION:
                self._raw[n] = field_values(self.events, "prediction")
            elif n.startswith(SCORES):
                self._raw[n] = score_values(self.events, n[len(SCORES):])
            elif is_output_signal(n):  # no such output: absent everywhere
                self._raw[n] = [None] * len(self.events)

    def signal(self, name: str) -> Sequence[Any]:
        if name not in self._raw:
            self.read([name])
        return self._raw[name]

    def types(self, name: str) -> set[type]:
        """The types of a signal's raw values (read once: the floats and the quality
        counts both ask)."""
        out = self._types.get(name)
        if out is None:
            out = self._types[name] = set(map(type, self.signal(name)))
        return out

    def floats(self, name: str) -> np.ndarray[Any, Any]:
        out = self._floats.get(name)
        if out is None:
            out = self._floats[name] = float_column(self.signal(name), self.types(name))
        return out

    def float_rows(self, names: Sequence[str]) -> np.ndarray[Any, Any]:
        """The float columns of ``names`` as the rows of one array (``floats`` of each).

        Input features that every event carries as a number (an int, a float or a bool,
        as JSON decodes them) are read straight into floats, all at once; the others are
        read column by column.

        >>> Columns([{"features": {"a": 1, "b": None}}, {"features": {"a": 2.5, "b": True}}]
        ...         ).float_rows(["a", "b"]).tolist()
        [[1.0, 2.5], [nan, 1.0]]
        """
        todo = [n for n in names if n not in self._floats and n not in self._raw
                and not is_output_signal(n)]
        if todo and self._block is not None:
            self.read(todo)  # what a block has no floats of: absent, or from its events
        elif todo and self.maps and not self._read_numbers(todo):
            self.read(todo)  # in one pass, for the column-by-column rules
        return np.array([self.floats(n) for n in names], dtype=np.float64).reshape(
            len(names), len(self.events))

    def bucket_rows(self, names: Sequence[str]) -> np.ndarray[Any, Any] | None:
        """The quantile bucket indices of ``names`` as the rows of one array, when an
        event block carries them for each (see :meth:`float_rows`); else ``None``."""
        buckets = None if self._block is None else self._block.buckets
        if not buckets or not all(n in buckets for n in names):
            return None
        return np.array([buckets[n] for n in names]).reshape(len(names), len(self.events))

    def _read_numbers(self, names: Sequence[str]) -> bool:
        """Read ``names`` as floats if every event carries a number in each of them."""
        try:
            table = number_table(rows_of(self.maps, names), len(names))
        except KeyError:  # absent
            return False
        if table is None:  # a string or a null: column by column, each with its own rule
            return False
        self._floats.update(zip(names, table, strict=True))
        self._numbers.update(names)
        return True

    def numbers(self, name: str) -> bool:
        """Whether every event carries a number (int, float or bool) in feature ``name``,
        as :meth:`float_rows` found it (``False``: not known)."""
        return name in self._numbers

    def features(self, names: Sequence[str]) -> list[Sequence[Any] | None] | None:
        """The raw columns of ``names`` when every event carries each of them (else
        ``None``); a column known as numbers only (:meth:`numbers`) is ``None`` in the
        list: its floats say all there is to count."""
        self.read([n for n in names if n not in self._numbers])
        if not all(n in self._complete or n in self._numbers for n in names):
            return None
        return [None if n in self._numbers else self._raw[n] for n in names]


_ABSENT = object()


class _BlockMaps(Sequence[Mapping[str, Any]]):
    """An event block's feature maps, built when first read."""

    __slots__ = ("_block",)

    def __init__(self, block: EventBlock) -> None:
        self._block = block

    def __len__(self) -> int:
        return len(self._block)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [e["features"] for e in self._block.rows()[i]]
        return self._block.rows()[i]["features"]

    def __iter__(self) -> Any:
        return (e["features"] for e in self._block.rows())


def float_column(values: Sequence[Any], types: set[type] | None = None
                 ) -> np.ndarray[Any, Any]:
    """Raw values as floats by :func:`numeric_column`'s rule (one ``np.array`` call when
    every value is a float, an int, a bool or null: the usual column). ``types``: the
    values' types, when known."""
    if (set(map(type, values)) if types is None else types) <= _FAST_TYPES:
        try:
            return np.array(values, dtype=np.float64)
        except OverflowError:
            pass
    return numeric_column([{"v": v} for v in values], "v")


def numeric_column(rows: Sequence[Mapping[str, Any]], name: str) -> np.ndarray[Any, Any]:
    """A float column: booleans are 1/0, integers beyond the float range ±inf, and
    missing, null or non-numeric values NaN (the same rule for references and windows)."""
    out = np.empty(len(rows), dtype=np.float64)
    for i, row in enumerate(rows):
        v: Any = row.get(name)
        if type(v) in _NUMERIC_TYPES:
            try:
                out[i] = v
            except OverflowError:  # an integer beyond the float range
                out[i] = np.inf if v > 0 else -np.inf
        else:
            out[i] = np.nan
    return out
