"""Precompiled field checks for the input events, mirroring ``schemas/*.schema.json``.

Each event type is a table of fields built once at import; validating an event is a
loop over that table with plain ``isinstance`` checks: no generic JSON-Schema engine
runs on the hot path. ``tests/unit/events`` proves on generated documents that these
checks accept exactly what the schemas accept.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

# The same patterns as the schemas ($defs), applied with re.search like the
# reference validator does.
# ``$(?!\n)`` ends at the end of the string in every regex dialect (Python's ``$`` alone
# also matches before a final newline); ``[0-9]`` is ASCII-only everywhere (``\d`` is not).
NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$(?!\n)"
RFC3339_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]"
    r":[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$(?!\n)"
)
MAX_FEATURES = 4096
MAX_EPOCH_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
MIN_EPOCH_MS = -62135596800000  # 0001-01-01T00:00:00Z (string timestamps only)
MODEL_EVENT_KINDS = frozenset(
    {"deployed", "retrain_started", "retrain_completed", "retrain_failed", "rolled_back"}
)

_name_re = re.compile(NAME_PATTERN)
_rfc3339_re = re.compile(RFC3339_PATTERN)

Check = Callable[[Any], str | None]


class NonFinite(Exception):
    """A NaN or infinity was found where a number was expected."""


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    if isinstance(v, float) and not math.isfinite(v):
        raise NonFinite
    return True


def number(minimum: float | None = None, maximum: float | None = None) -> Check:
    def check(v: Any) -> str | None:
        if not _is_number(v):
            return "expected a number"
        _finite(v)
        if minimum is not None and v < minimum:
            return f"must be >= {minimum}"
        if maximum is not None and v > maximum:
            return f"must be <= {maximum}"
        return None

    return check


def string(min_length: int = 0, max_length: int | None = None,
           pattern: re.Pattern[str] | None = None) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, str):
            return "expected a string"
        if len(v) < min_length:
            return f"must have at least {min_length} characters"
        if max_length is not None and len(v) > max_length:
            return f"must have at most {max_length} characters"
        if pattern is not None and not pattern.search(v):
            return f"must match {pattern.pattern}"
        return None

    return check


def scalar(allow_null: bool) -> Check:
    """number, string or boolean (and null when allowed)."""

    def check(v: Any) -> str | None:
        if v is None:
            return None if allow_null else "must not be null"
        if isinstance(v, str | bool):
            return None
        if _is_number(v):
            _finite(v)
            return None
        return "expected a number, string or boolean" + (" or null" if allow_null else "")

    return check


_SCALAR_TYPES = frozenset({str, bool, int})


def feature_map(max_properties: int) -> Check:
    """An object whose values are numbers, strings, booleans or null (the features).

    The hot path of validation: one ``type()`` lookup per value (JSON decoders produce
    exact built-in types), the detailed message only when something is wrong.
    """
    slow = mapping(scalar(allow_null=True), max_properties)
    ok = _SCALAR_TYPES | {type(None)}
    isfinite = math.isfinite

    def check(v: Any) -> str | None:
        if type(v) is not dict or len(v) > max_properties:
            return slow(v)
        for item in v.values():
            t = type(item)
            if t is float:
                if not isfinite(item):
                    raise NonFinite
            elif t not in ok:
                return slow(v)
        return None

    return check


def mapping(values: Check, max_properties: int | None = None) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, dict):
            return "expected an object"
        if max_properties is not None and len(v) > max_properties:
            return f"must have at most {max_properties} properties"
        for key, item in v.items():
            err = values(item)
            if err is not None:
                return f"[{key!r}] {err}"
        return None

    return check


def any_object(v: Any) -> str | None:
    return None if isinstance(v, dict) else "expected an object"


def enum(allowed: frozenset[str]) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, str) or v not in allowed:
            return f"must be one of {sorted(allowed)}"
        return None

    return check


def timestamp(v: Any) -> str | None:
    """RFC 3339 date-time string or epoch milliseconds (integer >= 0)."""
    if isinstance(v, str):
        if not _rfc3339_re.search(v):
            return "expected an RFC 3339 date-time or epoch milliseconds"
        return None
    if _is_number(v):
        _finite(v)
        if isinstance(v, float) and not v.is_integer():
            return "epoch milliseconds must be an integer"
        if v < 0:
            return "epoch milliseconds must be >= 0"
        if v > MAX_EPOCH_MS:
            return f"epoch milliseconds must be <= {MAX_EPOCH_MS}"
        return None
    return "expected an RFC 3339 date-time or epoch milliseconds"


def timestamp_ms(v: Any) -> int:
    """Epoch milliseconds of a validated timestamp (exact: no float on the way, so
    ``.001`` is 1 ms, not 0.9999999 ms truncated to 0).

    >>> timestamp_ms("1970-01-01T00:00:01.001Z"), timestamp_ms("1969-12-31T23:59:59.9995Z")
    (1001, -1)
    """
    if isinstance(v, str):
        text = v.strip()
        if text[-1] in "Zz":
            text = text[:-1] + "+00:00"
        d = datetime.fromisoformat(text) - _EPOCH
        return (d.days * 86_400 + d.seconds) * 1000 + d.microseconds // 1000
    return int(v)


def utc_datetime(ms: int) -> datetime:
    """The UTC date-time of epoch milliseconds, clamped to 0001-01-01..9999-12-31 (all a
    ``datetime`` or RFC 3339 can write; a window or checkpoint may end past the last
    event time accepted).

    >>> utc_datetime(MAX_EPOCH_MS + 3_600_000).isoformat()
    '9999-12-31T23:59:59.999000+00:00'
    """
    return _EPOCH + timedelta(milliseconds=min(max(ms, MIN_EPOCH_MS), MAX_EPOCH_MS))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Spec = tuple[tuple[str, bool, Check], ...]  # (field, required, check)

name = string(1, 64, _name_re)
ident = string(1, 128)

PREDICTION: Spec = (
    ("prediction_id", True, ident),
    ("model", True, name),
    ("model_version", True, ident),
    ("features", True, feature_map(MAX_FEATURES)),
    ("prediction", True, scalar(allow_null=False)),
    ("timestamp", False, timestamp),
    ("scores", False, mapping(number(0, 1))),
    ("latency_ms", False, number(0)),
    ("cost", False, number(0)),
    ("segment", False, mapping(string())),
)
OUTCOME: Spec = (
    ("prediction_id", True, ident),
    ("model", True, name),
    ("label", True, scalar(allow_null=False)),
    ("timestamp", False, timestamp),
)
INPUT: Spec = (
    ("source", True, name),
    ("record", True, any_object),
    ("timestamp", False, timestamp),
    ("record_id", False, ident),
)
MODEL_EVENT: Spec = (
    ("model", True, name),
    ("version", True, ident),
    ("event", True, enum(MODEL_EVENT_KINDS)),
    ("timestamp", False, timestamp),
    ("metrics", False, mapping(number())),
    ("trigger_id", False, ident),
    ("reference", False, string(1, 1024)),
)

SPECS: dict[str, Spec] = {
    "prediction": PREDICTION,
    "outcome": OUTCOME,
    "input": INPUT,
    "model_event": MODEL_EVENT,
}


def check_event(spec: Spec, obj: Any) -> str | None:
    """``None`` when ``obj`` satisfies ``spec``, else a message naming the first bad field.

    Raises :class:`NonFinite` for NaN or infinite numbers.
    """
    if not isinstance(obj, dict):
        return f"expected an object, got {type(obj).__name__}"
    for field, required, check in spec:
        if field not in obj:
            if required:
                return f"missing required field {field!r}"
            continue
        err = check(obj[field])
        if err is not None:
            return f"{field}: {err}"
    if "timestamp" in obj and isinstance(obj["timestamp"], str):
        try:
            ms = timestamp_ms(obj["timestamp"])
        except (ValueError, OverflowError):
            return "timestamp: not a valid calendar date-time"
        if ms > MAX_EPOCH_MS:  # 9999-12-31 with a negative offset is past year 9999 in UTC
            return "timestamp: later than 9999-12-31T23:59:59.999Z"
        if ms < MIN_EPOCH_MS:  # 0001-01-01 with a positive offset is before year 1 in UTC
            return "timestamp: earlier than 0001-01-01T00:00:00Z"
    return None
