"""Durations written as ``500ms``, ``30s``, ``5m``, ``1h``, ``14d`` or plain seconds."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


def parse_duration(value: object) -> float:
    """Return seconds for a duration.

    >>> parse_duration("1h"), parse_duration("500ms"), parse_duration(90)
    (3600.0, 0.5, 90.0)
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '5m' or a number of seconds, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration must not be negative, got {value!r}")
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond the float range
            seconds = math.inf
        return _finite(seconds, value)
    if isinstance(value, str):
        m = _RE.match(value)
        if m:
            return _finite(float(m.group(1)) * _UNITS[m.group(2) or "s"], value)
    raise ValueError(
        f"expected a duration like '500ms', '30s', '5m', '1h', '14d' or seconds, got {value!r}"
    )


#: The longest duration accepted: 1000 years. Windows, horizons and lateness become
#: integer milliseconds added to event times, which must stay within 64 bits.
MAX_SECONDS = 1000 * 365.25 * 86400


def _finite(seconds: float, value: object) -> float:
    """
    >>> _finite(1e30, 1e30)
    Traceback (most recent call last):
    ...
    ValueError: a duration must be at most 1000 years (31557600000 s), got 1e+30
    """
    if not math.isfinite(seconds):  # NaN, infinity, or digits beyond the float range
        raise ValueError(f"a duration must be a finite number of seconds, got "
                         f"{str(value)[:50]}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"a duration must be at most 1000 years ({MAX_SECONDS:.0f} s), got "
                         f"{str(value)[:50]}")
    return seconds


def format_duration(seconds: float) -> str:
    """Shortest exact spelling of a duration.

    >>> format_duration(3600), format_duration(90), format_duration(0.25)
    ('1h', '90s', '250ms')
    """
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{round(seconds * 1000)}ms"
