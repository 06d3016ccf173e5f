"""Array messages decoded straight into an event block's columns (in a decode process).

The way to a block through dicts (:func:`~app.events.decode.decode_message`, then
:func:`~app.events.block.block_of`) builds a dict per event and per feature map, hashing
every key, and then reads them all back, field by field. Where the feature names of a
message are known beforehand, msgspec decodes each element into a struct instead (one
for the event, one for its features, the feature names as the struct's fields), and the
columns come out of the structs as tuples, in C: about 2.7 µs an event against 4.1 for
the benchmark's predictions (20 features, from the JSON text to the pickled payload).

Feature names are not known in advance, so :class:`Columnar` learns them: a message the
dict path made a block of teaches its feature names (:meth:`Columnar.learn`; the last
``LIMIT`` sets are kept), and the next messages are tried against those struct types,
the most recently used first. A message whose events do not fit one (other feature
names, a segment, an element refused) fails in msgspec, usually within its first
element, and goes the dict path as before.

**The same blocks.** The struct types take each field with the very annotation the fast
decoder's ``TypedDict`` has (:mod:`app.events.fast`), the feature names as required
fields and no others; the checks after decoding are those of ``decode_message`` (names
against their pattern, string timestamps against the calendar, UTF-8, the element
limit); and the block is what ``block_of`` makes of the same events
(``tests/unit/events/test_columnar.py`` holds the two to each other on generated
messages, duplicate keys included). Only the order of ``feature_names`` may differ: the
learned one, where ``block_of`` takes the first event's; nothing reads that order.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
from collections import OrderedDict
from typing import Any

import msgspec
import numpy as np
from msgspec import UNSET, UnsetType

from app.events import fast
from app.events.block import FIELDS, EventBlock, _buckets, score_columns
from app.events.decode import calendar_ok, names_ok, utf8_ok

Decoder = msgspec.json.Decoder[Any]
#: Feature-name sets kept per process (each a pair of struct types and a decoder).
LIMIT = 16
_NUMBERS = frozenset({int, float, bool})
_astuple = msgspec.structs.astuple

# Each kind's top-level fields beyond ``features``: (name, annotation, required), with
# the fast decoder's annotations. ``FIELDS[kind]`` come first, in their order, then the
# model, then what a block holds alike or refuses (scores, segment).
_TOP: dict[str, list[tuple[str, Any, bool]]] = {
    "prediction": [("prediction_id", fast.Ident, True), ("model_version", fast.Ident, True),
                   ("prediction", fast.Scalar, True), ("timestamp", fast.Timestamp, False),
                   ("latency_ms", fast.NonNegative, False), ("cost", fast.NonNegative, False),
                   ("model", fast.Name, True),
                   ("scores", dict[str, fast.Probability], False),
                   ("segment", dict[str, str], False)],
    "outcome": [("prediction_id", fast.Ident, True), ("label", fast.Scalar, True),
                ("timestamp", fast.Timestamp, False), ("model", fast.Name, True)],
}
assert all([f for f, _, _ in _TOP[k][:len(FIELDS[k])]] == list(FIELDS[k]) for k in _TOP)


def _struct(name: str, fields: list[tuple[str, Any, bool]], *,
            features: Any = None) -> Any:
    spec: list[Any] = [(f, t) if req else (f, t | UnsetType, UNSET) for f, t, req in fields]
    if features is not None:
        spec.append(("features", features))
    return msgspec.defstruct(name, spec, kw_only=True, gc=False)


def _decoder(kind: str, names: tuple[str, ...] | None) -> Decoder:
    """A decoder of arrays of ``kind`` events; for predictions, with exactly the feature
    ``names`` (fields ``f0``, ``f1``... renamed to them: any string may name a feature)."""
    features = None
    if names is not None:
        attrs = [f"f{i}" for i in range(len(names))]
        features = msgspec.defstruct(
            "Features", [(a, fast.Scalar | None) for a in attrs],
            rename=dict(zip(attrs, names, strict=True)), forbid_unknown_fields=True,
            gc=False)
    event = _struct(kind.capitalize(), _TOP[kind], features=features)
    return msgspec.json.Decoder(list[event])  # type: ignore[valid-type]


class Columnar:
    """Struct decoders of the feature-name sets learned, most recently used first."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        # sorted names -> (the names in the decoder's order, the decoder)
        self._features: OrderedDict[tuple[str, ...], tuple[tuple[str, ...], Decoder]] = \
            OrderedDict()
        self._outcomes = _decoder("outcome", None)

    def known(self) -> list[tuple[str, ...]]:
        """The feature-name sets learned, most recently used first."""
        return [names for names, _ in reversed(self._features.values())]

    def learn(self, names: tuple[str, ...]) -> None:
        """Try messages against these feature names from now on (the least recently
        used set goes beyond ``limit``). Names msgspec cannot match (with a backslash, a
        quote or a control character) are not learned: their messages go through dicts."""
        key = tuple(sorted(names))
        if key in self._features:
            self._features.move_to_end(key)
            return
        try:
            decoder = _decoder("prediction", names)
        except ValueError:
            return
        self._features[key] = (names, decoder)
        while len(self._features) > self.limit:
            self._features.popitem(last=False)

    def forget(self, names: tuple[str, ...]) -> None:
        """Stop trying these feature names (their messages are not alike: each try
        would be decoded twice)."""
        self._features.pop(tuple(sorted(names)), None)

    def block(self, value: bytes, kind: str, max_elements: int) -> EventBlock | None:
        """The array message's events as a block, or ``None``: not an array, events not
        alike, an element refused, or feature names not learned (see the module)."""
        if kind == "outcome":
            events = self._decode(self._outcomes, value, max_elements)
            return None if events is None else _outcome_block(events)
        if kind != "prediction":
            return None
        for key in reversed(self._features):
            names, decoder = self._features[key]
            events = self._decode(decoder, value, max_elements)
            if events is not None:
                self._features.move_to_end(key)
                return _prediction_block(events, names)
        return None

    @staticmethod
    def _decode(decoder: Decoder, value: bytes, max_elements: int
                ) -> list[Any] | None:
        try:
            events: list[Any] = decoder.decode(value)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        if not 0 < len(events) <= max_elements or not utf8_ok(value):
            return None
        return events


def _columns(events: list[Any], kind: str) -> tuple[list[tuple[Any, ...]], str] | None:
    """The events' top-level fields as columns, and their one model (``None``: several,
    or a name its pattern refuses, or a timestamp before year 1 or after 9999)."""
    cols = list(zip(*map(_astuple, events), strict=True))
    n = len(events)
    models = cols[len(FIELDS[kind])]
    model = models[0]
    if models.count(model) != n or not names_ok((model,)):
        return None
    stamps = cols[list(FIELDS[kind]).index("timestamp")]
    if not calendar_ok(stamps):
        return None
    return cols, model


def _field(col: tuple[Any, ...]) -> list[Any]:
    """A column with ``None`` where the field is absent."""
    unset = col.count(UNSET)
    if not unset:
        return list(col)
    if unset == len(col):
        return [None] * unset
    return [None if v is UNSET else v for v in col]


def _outcome_block(events: list[Any]) -> EventBlock | None:
    got = _columns(events, "outcome")
    if got is None:
        return None
    cols, model = got
    fields = {k: _field(c) for k, c in zip(FIELDS["outcome"], cols, strict=False)}
    return EventBlock("outcome", model, len(events), fields)


def _prediction_block(events: list[Any], names: tuple[str, ...]) -> EventBlock | None:
    got = _columns(events, "prediction")
    if got is None:
        return None
    cols, model = got
    n = len(events)
    named = len(FIELDS["prediction"])
    scores_col, segments, features = cols[named + 1], cols[named + 2], cols[-1]
    if segments.count(UNSET) != n:
        return None
    fields = {k: _field(c) for k, c in zip(FIELDS["prediction"], cols, strict=False)}
    absent = scores_col.count(UNSET)
    scores: dict[str, list[Any]] | None = None
    if absent < n:
        if absent:
            return None
        scores = score_columns(scores_col)
        if scores is None:
            return None
    floats, raw = _feature_columns(features, names, n)
    return EventBlock("prediction", model, n, fields, feature_names=names, floats=floats,
                      raw=raw, scores=scores, buckets=_buckets(floats, fields, scores))


def _feature_columns(features: tuple[Any, ...], names: tuple[str, ...], n: int
                     ) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, list[Any]]]:
    """``(floats, raw)`` as ``block_of`` makes them: the features every event carries as
    a number (an int, a float or a bool), as floats; the others' values."""
    if not names:
        return {}, {}
    cols = list(zip(*map(_astuple, features), strict=True))
    floats: dict[str, np.ndarray[Any, Any]] = {}
    raw: dict[str, list[Any]] = {}
    numeric = [j for j, c in enumerate(cols) if type(c[0]) in _NUMBERS]
    if numeric:
        try:  # every candidate a number: one C loop checks and converts them all
            table = np.frombuffer(struct.pack(
                f"{n * len(numeric)}d", *itertools.chain.from_iterable(
                    cols[j] for j in numeric)), dtype=np.float64).reshape(len(numeric), n)
        except struct.error:
            table = None
        if table is not None:
            floats = {names[j]: row for j, row in zip(numeric, table, strict=True)}
        else:
            for j in numeric:
                with contextlib.suppress(struct.error):  # not numbers everywhere
                    floats[names[j]] = np.frombuffer(struct.pack(f"{n}d", *cols[j]))
    for j, name in enumerate(names):
        if name not in floats:
            raw[name] = list(cols[j])
    return floats, raw
