"""Turn a Kafka message value into valid events and rejected elements.

A value is one event object or a JSON array of them. Each element is validated on its
own; a bad element never rejects its neighbours. orjson decodes the common case; a
value orjson refuses is retried with the standard library, which also reads ``NaN``
and ``Infinity`` so that an element carrying them is rejected alone, and reads an
integer of more digits than Python converts (4 300) as the float it spells (±inf), like
``1e400``. Duplicate keys: the last one wins, on every path. Nesting: what is deeper than
the readers go (orjson 1 024 levels, the standard library its recursion limit) is
``invalid_json``; what they read is written back out (dead letters) without recursion.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from app.events.checks import (
    MAX_EPOCH_MS,
    MIN_EPOCH_MS,
    NAME_PATTERN,
    NonFinite,
    Spec,
    check_event,
    timestamp_ms,
)
from app.events.fast import NAME_KEYS, fast_decoder
from app.events.fields import field_values


@dataclass(frozen=True, slots=True)
class Rejection:
    """One rejected message or array element, with what the dead-letter record needs."""

    reason: str
    detail: str
    raw: bytes
    index: int | None = None  # element index inside an array message


@dataclass(slots=True)
class Decoded:
    events: list[dict[str, Any]]
    rejections: list[Rejection]
    positions: list[int] | None = None  # element index of each event; None: not an array


def _int(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:  # more digits than Python converts: the float it spells (±inf)
        return float(text)


def _lenient_loads(value: bytes) -> Any:
    return json.loads(value.decode("utf-8"), parse_int=_int)


def _leaf(obj: Any) -> str:
    return json.dumps(obj, allow_nan=True, ensure_ascii=False, default=str)


def _text(obj: Any) -> str:
    """``obj`` as compact JSON text, NaN and Infinity kept as they came."""
    try:
        return json.dumps(obj, allow_nan=True, ensure_ascii=False, separators=(",", ":"),
                          default=str)
    except RecursionError:  # nested deeper than json.dumps recurses (orjson reads 1 024)
        return _deep_text(obj)


class _Piece(str):
    """Literal JSON text on :func:`_deep_text`'s stack (never a value of the document)."""


def _deep_text(obj: Any) -> str:
    """What :func:`_text` writes, with a stack of its own instead of recursion."""
    out: list[str] = []
    stack: list[Any] = [obj]
    while stack:
        x = stack.pop()
        if type(x) is _Piece:
            out.append(x)
        elif isinstance(x, dict):
            out.append("{")
            stack.append(_Piece("}"))
            for i, (k, v) in reversed(list(enumerate(x.items()))):
                stack += [v, _Piece(("," if i else "") + _leaf(k) + ":")]
        elif isinstance(x, list):
            out.append("[")
            stack.append(_Piece("]"))
            for i, v in reversed(list(enumerate(x))):
                stack += [v, _Piece(",")] if i else [v]
        else:
            out.append(_leaf(x))
    return "".join(out)


def _raw_element(obj: Any) -> bytes:
    """The element as JSON text, NaN and Infinity kept as they came (a rare, slow path)."""
    return _text(obj).encode("utf-8", "surrogatepass")


def decode_message(value: bytes | None, spec: Spec, *, max_bytes: int,
                   max_elements: int, fast: bool = True) -> Decoded:
    """Decode and validate one message value against ``spec``.

    >>> from app.events.checks import OUTCOME
    >>> d = decode_message(b'[{"prediction_id":"a","model":"m","label":1}, 3]', OUTCOME,
    ...                    max_bytes=1000, max_elements=10)
    >>> len(d.events), [(r.reason, r.index) for r in d.rejections]
    (1, [('schema_violation', 1)])
    """
    if value is None or len(value) == 0:
        return Decoded([], [Rejection("empty_value", "the message has no value", value or b"")])
    if len(value) > max_bytes:
        return Decoded([], [Rejection(
            "payload_too_large", f"{len(value)} bytes exceed the limit of {max_bytes}", value)])
    decoder = fast_decoder(spec) if fast else None
    if decoder is not None:  # ``fast=False``: the precise path only (tests, benchmarks)
        try:
            doc = decoder.decode(value)
        except Exception:  # refused (or anything else): the precise path below says
            pass           # what is wrong, element by element
        else:  # (msgspec does not check UTF-8 in the fields it skips: checked here)
            key = NAME_KEYS[id(spec)]
            if isinstance(doc, list):
                if (0 < len(doc) <= max_elements and _names_ok(doc, key)
                        and _calendar_ok(doc) and utf8_ok(value)):
                    return Decoded(doc, [], list(range(len(doc))))
            elif _names_ok((doc,), key) and _calendar_ok((doc,)) and utf8_ok(value):
                return Decoded([doc], [], None)
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        try:
            doc = _lenient_loads(value)
        except UnicodeDecodeError as exc:
            return Decoded([], [Rejection("invalid_json", f"not UTF-8: {exc.reason}", value)])
        except (ValueError, RecursionError) as exc:
            detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            return Decoded([], [Rejection("invalid_json", detail[:200], value)])
        try:  # what the standard library accepts and UTF-8 cannot hold
            _text(doc).encode("utf-8")
        except UnicodeEncodeError:
            return Decoded([], [Rejection(
                "invalid_json", "a lone UTF-16 surrogate (\\ud800-\\udfff) is not text", value)])
    if isinstance(doc, list):
        if len(doc) > max_elements:
            return Decoded([], [Rejection(
                "too_many_elements", f"{len(doc)} elements exceed the limit of {max_elements}",
                value)])
        if not doc:
            return Decoded([], [Rejection("empty_value", "an empty array", value)])
        elements: list[Any] = doc
        whole = False
    else:
        elements = [doc]
        whole = True
    events: list[dict[str, Any]] = []
    rejections: list[Rejection] = []
    positions: list[int] | None = None if whole else []
    for i, obj in enumerate(elements):
        try:
            err = check_event(spec, obj)
        except NonFinite:
            rejections.append(Rejection(
                "non_finite_number", "NaN or infinity where a finite number is required",
                value if whole else _raw_element(obj), None if whole else i))
            continue
        if err is None:
            events.append(obj)
            if positions is not None:
                positions.append(i)
        else:
            rejections.append(Rejection(
                "schema_violation", err, value if whole else _raw_element(obj),
                None if whole else i))
    return Decoded(events, rejections, positions)


def utf8_ok(value: bytes) -> bool:
    """UTF-8 text (ASCII, the common case, is checked without decoding)."""
    if value.isascii():
        return True
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_NAME = re.compile(NAME_PATTERN)
_NAMES_OK: set[str] = set()  # names that matched (bounded: a cache, not a registry)
_NAMES_OK_MAX = 10_000


def _names_ok(events: Any, key: str) -> bool:
    """Every ``key`` (a model's or a source's name) matches ``NAME_PATTERN``."""
    return names_ok(set(map(operator.itemgetter(key), events)))


def names_ok(names: Collection[str]) -> bool:
    """Every name matches ``NAME_PATTERN``: checked once per distinct name of a message,
    and remembered."""
    if _NAMES_OK.issuperset(names):
        return True
    for name in set(names) - _NAMES_OK:
        if not _NAME.search(name):
            return False
        if len(_NAMES_OK) < _NAMES_OK_MAX:
            _NAMES_OK.add(name)
    return True


def _calendar_ok(events: Any) -> bool:
    return calendar_ok(field_values(events, "timestamp"))


def calendar_ok(stamps: Sequence[Any]) -> bool:
    """String timestamps name real instants from 0001-01-01 to 9999-12-31 UTC (what the
    pattern cannot say); epoch milliseconds were bounded by the decoder."""
    if str not in set(map(type, stamps)):  # epoch milliseconds or none: the usual case
        return True
    for t in stamps:
        if type(t) is str:
            try:
                if not MIN_EPOCH_MS <= timestamp_ms(t) <= MAX_EPOCH_MS:
                    return False
            except (ValueError, OverflowError):
                return False
    return True


def element_bytes(value: bytes, obj: Any, decoded: Decoded) -> bytes:
    """The bytes to dead-letter for one decoded element: the message itself when whole."""
    return value if decoded.positions is None else _raw_element(obj)
