"""A message's events as columns: what a decode process hands the worker.

Decoding an array message into dicts costs the worker's main thread more than any
other single step of its batch path, and the batch path then reads those dicts back
into columns (feature matrices for the sketches, ids, versions and scores for the label
join). A decode process (:mod:`app.events.decode_pool`) does both on another core and
sends the columns. :class:`EventBlock` is what the worker gets: a ``Sequence`` of the
events that answers the batch path's column questions (:func:`~app.events.fields.field_values`,
:func:`~app.events.fields.version_indices`, :class:`~app.core.signals.Columns`) from its
columns, and builds the dicts themselves only when something asks for an event (a
warm-up, a segment, a change detector, an unknown model's dead letter): by decoding the
message again, exactly as the worker would have.

A block holds only what every element answers the same way: one model, the same feature
names in every event, the same score classes (or none), no segment tags, no field the
contract does not define. :func:`block_of` says ``None`` for any other message, which
the worker then decodes itself.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np

from app.sketches.quantile import default_buckets

#: Top-level fields kept as columns, per kind (``model`` is one value, ``features`` and
#: ``scores`` columns of their own).
FIELDS = {"prediction": ("prediction_id", "model_version", "prediction", "timestamp",
                         "latency_ms", "cost"),
          "outcome": ("prediction_id", "label", "timestamp")}
#: Every top-level field an event of the kind may hold.
ALLOWED = {"prediction": frozenset({*FIELDS["prediction"], "model", "features", "scores"}),
           "outcome": frozenset({*FIELDS["outcome"], "model"})}
_NUMBERS = frozenset({int, float, bool})  # read as floats, as Columns reads them
#: The output signals' names (:class:`~app.core.signals.Columns`): the prediction, and a
#: score class's value after the prefix.
PREDICTION = "@prediction"
SCORES = "@scores."

Loader = Callable[[], list[dict[str, Any]]]


def rows_of(maps: Sequence[Any], names: Sequence[str]) -> list[tuple[Any, ...]]:
    """``names`` of every mapping, one tuple per mapping (KeyError if one lacks a name)."""
    getter = operator.itemgetter(*names)
    if len(names) == 1:
        return [(v,) for v in map(getter, maps)]
    return list(map(getter, maps))


def number_table(rows: list[tuple[Any, ...]], k: int) -> np.ndarray[Any, Any] | None:
    """Rows of ``k`` values as a ``(k, len(rows))`` float table (a view), or ``None`` when
    a value is not a number (an int, a float or a bool) or is an integer beyond floats.

    >>> number_table([(1, 2.5), (True, 0)], 2).tolist(), number_table([(1, None)], 2)
    ([[1.0, 1.0], [2.5, 0.0]], None)
    """
    try:
        # an array of C doubles takes ints, floats and bools and refuses anything else
        # (TypeError; OverflowError for an integer beyond the floats): the check and the
        # conversion in one C loop
        flat = array.array("d", list(itertools.chain.from_iterable(rows)))
    except (TypeError, OverflowError):
        return None
    return np.frombuffer(flat, dtype=np.float64).reshape(len(rows), k).T


class EventBlock(Sequence[dict[str, Any]]):
    """Events of one model and kind, held as columns (see the module).

    ``fields``: each top-level field of :data:`FIELDS` (``None`` where absent);
    ``feature_names``: the features every event carries (no other); ``floats``: the
    features every event carries as a number, as floats; ``raw``: the others' values (a
    feature in neither is read from the events when asked for);
    ``scores``: each score class's values (``None``: no event has scores); ``buckets``:
    bucket indices of floats features on the quantile sketches' default grid
    (:func:`~app.sketches.quantile.default_buckets`), when a decode process computed
    them; ``partials``: the numeric window sketches' counts of all its events, per
    (newest window start, version), when a decode process counted them (lists of
    :class:`~app.core.partials.Counted`, one per message).

    >>> b = block_of([{"prediction_id": "a", "model": "m", "model_version": "1",
    ...                "features": {"x": 1, "c": "u"}, "prediction": True},
    ...               {"prediction_id": "b", "model": "m", "model_version": "1",
    ...                "features": {"c": "v", "x": 2.5}, "prediction": False}], "prediction")
    >>> b.column("prediction_id"), b.floats["x"].tolist(), b.raw["c"], b.column("cost")
    (['a', 'b'], [1.0, 2.5], ['u', 'v'], [None, None])
    >>> b.take([1]).column("prediction")
    [False]
    """

    __slots__ = ("_load", "_rows", "buckets", "feature_names", "fields", "floats", "kind",
                 "model", "n", "partials", "raw", "scores")

    def __init__(self, kind: str, model: str, n: int, fields: dict[str, list[Any]], *,
                 feature_names: tuple[str, ...] = (),
                 floats: dict[str, np.ndarray[Any, Any]] | None = None,
                 raw: dict[str, list[Any]] | None = None,
                 scores: dict[str, list[Any]] | None = None,
                 buckets: dict[str, np.ndarray[Any, Any]] | None = None,
                 load: Loader | None = None, rows: list[dict[str, Any]] | None = None,
                 partials: dict[tuple[int, str], list[Any]] | None = None) -> None:
        self.kind, self.model, self.n = kind, model, n
        self.fields = fields
        self.feature_names = feature_names
        self.floats = floats or {}
        self.buckets = buckets or {}
        self.raw = raw or {}
        self.scores = scores
        self._load = load
        self._rows = rows
        self.partials = partials

    # -- the events themselves --------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """The events as dicts (built once, when first asked for)."""
        if self._rows is None:
            if self._load is None:
                raise RuntimeError("an event block without its events' source")
            rows = self._load()
            if len(rows) != self.n:
                raise RuntimeError(f"an event block of {self.n} events decoded as {len(rows)}")
            self._rows = rows
        return self._rows

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        return self.rows()[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows())

    # -- columns ----------------------------------------------------------------------
    def column(self, key: str) -> list[Any]:
        """``[e.get(key) for e in events]``, from the columns where they hold it."""
        col = self.fields.get(key)
        if col is not None:
            return list(col)
        if key == "model":
            return [self.model] * self.n
        if key in ("features", "scores"):
            return [e.get(key) for e in self.rows()]
        return [None] * self.n  # a field no event of the block has

    def score_column(self, cls: str) -> list[Any]:
        """Each event's score of class ``cls`` (``None`` where it has none)."""
        col = None if self.scores is None else self.scores.get(cls)
        return [None] * self.n if col is None else list(col)

    def take(self, idx: Sequence[int]) -> EventBlock:
        """The events at ``idx``, in that order."""
        idx = list(idx)
        if idx == list(range(self.n)):
            return self
        pick = operator.itemgetter(*idx) if idx else None

        def sub(col: Sequence[Any]) -> list[Any]:
            if pick is None:
                return []
            return [pick(col)] if len(idx) == 1 else list(pick(col))

        at = np.asarray(idx, dtype=np.intp)
        source = self
        return EventBlock(
            self.kind, self.model, len(idx), {k: sub(c) for k, c in self.fields.items()},
            feature_names=self.feature_names,
            floats={k: a[at] for k, a in self.floats.items()},
            raw={k: sub(c) for k, c in self.raw.items()},
            scores=None if self.scores is None else {k: sub(c) for k, c in self.scores.items()},
            buckets={k: a[at] for k, a in self.buckets.items()},
            load=lambda: sub(source.rows()))

    @staticmethod
    def concat(parts: Sequence[EventBlock]) -> EventBlock | None:
        """The blocks' events one after the other, as a block (``None`` when their events
        differ in what a block holds alike: model, kind, feature names, score classes)."""
        first = parts[0]
        names = set(first.feature_names)
        classes = None if first.scores is None else set(first.scores)
        for p in parts[1:]:
            if (p.kind, p.model) != (first.kind, first.model) or set(p.feature_names) != names \
                    or (None if p.scores is None else set(p.scores)) != classes:
                return None
        if len(parts) == 1:
            return first
        partials: dict[tuple[int, str], list[Any]] | None = {}
        for p in parts:
            if p.partials is None:  # some events not counted: none are
                partials = None
                break
            for key, counted in p.partials.items():
                partials.setdefault(key, []).extend(counted)  # type: ignore[union-attr]

        def chained(cols: list[Sequence[Any]]) -> list[Any]:
            return list(itertools.chain.from_iterable(cols))

        return EventBlock(
            first.kind, first.model, sum(p.n for p in parts),
            {k: chained([p.fields[k] for p in parts]) for k in first.fields},
            feature_names=first.feature_names,
            # a feature read as floats in one part and not in another is in neither: its
            # values are read from the events, if ever needed
            floats={k: np.concatenate([p.floats[k] for p in parts]) for k in first.floats
                    if all(k in p.floats for p in parts)},
            raw={k: chained([p.raw[k] for p in parts]) for k in first.raw
                 if all(k in p.raw for p in parts)},
            scores=None if classes is None else {
                k: chained([p.scores[k] for p in parts if p.scores is not None])
                for k in first.scores or {}},
            buckets={k: np.concatenate([p.buckets[k] for p in parts]) for k in first.buckets
                     if all(k in p.buckets for p in parts)},
            load=lambda: [e for p in parts for e in p.rows()], partials=partials)

    # -- between processes ------------------------------------------------------------
    def to_payload(self) -> dict[str, Any]:
        """Plain data (what a decode process sends; the events stay behind). The floats
        and the buckets go as one 2-D array each, a row per feature: one array to
        unpickle instead of one per feature."""
        return {"kind": self.kind, "model": self.model, "n": self.n, "fields": self.fields,
                "feature_names": self.feature_names, "floats": _table(self.floats),
                "buckets": _table(self.buckets), "raw": self.raw, "scores": self.scores}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], load: Loader) -> EventBlock:
        return cls(payload["kind"], payload["model"], payload["n"], payload["fields"],
                   feature_names=tuple(payload["feature_names"]),
                   floats=_untable(payload["floats"]), raw=payload["raw"],
                   scores=payload["scores"], buckets=_untable(payload["buckets"]), load=load)


Table = tuple[tuple[str, ...], np.ndarray[Any, Any]] | None


def _table(arrays: dict[str, np.ndarray[Any, Any]]) -> Table:
    """Equal-length arrays as ``(names, rows of one array)``; ``None`` for none."""
    return (tuple(arrays), np.array(list(arrays.values()))) if arrays else None


def _untable(table: Table) -> dict[str, np.ndarray[Any, Any]]:
    """:func:`_table`'s arrays again, as views of its rows."""
    if table is None:
        return {}
    names, rows = table
    return dict(zip(names, rows, strict=True))


def _get(events: Sequence[Any], key: str) -> list[Any]:
    return list(map(dict.get, events, itertools.repeat(key)))


def _numbers(features: list[Any], names: tuple[str, ...]) -> dict[str, np.ndarray[Any, Any]]:
    """The features every event carries as a number, as floats: those whose first value is
    one, checked together (:func:`number_table`), else one by one."""
    first = features[0]
    candidates = [k for k in names if type(first[k]) in _NUMBERS]
    if not candidates:
        return {}
    rows = rows_of(features, candidates)
    table = number_table(rows, len(candidates))
    if table is None:  # not numbers everywhere: found column by column
        out = {}
        for name, col in zip(candidates, zip(*rows, strict=True), strict=True):
            if set(map(type, col)) <= _NUMBERS:
                with contextlib.suppress(OverflowError):  # an integer beyond the floats
                    out[name] = np.array(col, dtype=np.float64)
        return out
    return {name: table[j].copy() for j, name in enumerate(candidates)}


def block_of(events: list[dict[str, Any]], kind: str, *, buckets: bool = False
             ) -> EventBlock | None:
    """Valid decoded events as a block, or ``None`` when they are not all alike (see the
    module). The block keeps ``events`` as its rows. ``buckets``: with the floats
    features' quantile buckets too (what a decode process sends)."""
    n = len(events)
    if not n or kind not in FIELDS:
        return None
    model = events[0]["model"]
    if _get(events, "model").count(model) != n:
        return None
    fields = {k: _get(events, k) for k in FIELDS[kind]}
    # A valid event's fields are never null: the keys it holds beyond the block's fields,
    # its model, features and scores (segment tags, fields the contract does not define)
    # show as more keys than those present
    held = n + sum(n - col.count(None) for col in fields.values())
    if kind == "outcome":
        return EventBlock(kind, model, n, fields, rows=events) \
            if sum(map(len, events)) == held else None
    maps: list[Any] = _get(events, "scores")
    absent = maps.count(None)
    if sum(map(len, events)) != held + n + n - absent:
        return None
    scores = None
    if absent < n:
        if absent:
            return None
        scores = score_columns(maps)
        if scores is None:
            return None
    features = _get(events, "features")
    names = tuple(features[0])
    if set(map(len, features)) != {len(names)}:
        return None
    floats: dict[str, np.ndarray[Any, Any]] = {}
    raw: dict[str, list[Any]] = {}
    if names:
        try:
            floats = _numbers(features, names)
            others = [k for k in names if k not in floats]
            if others:
                raw = dict(zip(others, map(list, zip(*rows_of(features, others),
                                                    strict=True)), strict=True))
        except KeyError:
            return None
    return EventBlock(kind, model, n, fields, feature_names=names, floats=floats, raw=raw,
                      scores=scores, buckets=_buckets(floats, fields, scores) if buckets else None,
                      rows=events)


def score_columns(maps: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]] | None:
    """Each score class's values, from every event's scores, or ``None`` when the
    events' classes differ.

    >>> score_columns([{"1": 0.2, "0": 0.8}, {"0": 0.4, "1": 0.6}])
    {'1': [0.2, 0.6], '0': [0.8, 0.4]}
    >>> score_columns([{"1": 0.2}, {"0": 0.4}]), score_columns([{}, {}])
    (None, {})
    """
    classes = tuple(maps[0])
    if set(map(len, maps)) != {len(classes)}:
        return None
    if not classes:
        return {}
    try:
        rows = rows_of(maps, classes)
    except KeyError:
        return None
    return dict(zip(classes, map(list, zip(*rows, strict=True)), strict=True))


def _buckets(floats: dict[str, np.ndarray[Any, Any]], fields: dict[str, list[Any]],
             scores: dict[str, list[Any]] | None) -> dict[str, np.ndarray[Any, Any]]:
    """Quantile bucket indices of every numeric signal of a block, by signal name: its
    floats features, and its prediction and score classes when they are numbers."""
    signals = dict(floats)
    outputs = [(PREDICTION, fields["prediction"])]
    outputs += [(SCORES + c, v) for c, v in (scores or {}).items()]
    for name, values in outputs:
        if values and set(map(type, values)) <= _NUMBERS:  # as Columns reads them
            with contextlib.suppress(OverflowError):  # an integer beyond the floats
                signals[name] = np.array(values, dtype=np.float64)
    if not signals:
        return {}
    return dict(zip(signals, default_buckets(np.array(list(signals.values()))), strict=True))

