"""Exactly rounded running sums: the same result whatever the order of the terms.

A window's figures are merged from checkpoint buckets, and a bucket is filled by
batches whose cut depends on timing; plain float sums would then differ in their last
digits between a worker and ``driftwarden replay``. Shewchuk's algorithm (the one behind
``math.fsum``) keeps the sum as a short list of non-overlapping partials, so the rounded
value is exact and independent of the order of additions and merges.

>>> a, b = ExactSum(), ExactSum()
>>> for x in (1e16, 1.0, -1e16):
...     a.add(x)
>>> for x in (-1e16, 1e16, 1.0):
...     b.add(x)
>>> a.value == b.value == 1.0
True
"""

from __future__ import annotations

import math
from typing import Any

from app.errors import MALFORMED_STATE, StateError


class ExactSum:
    __slots__ = ("partials", "special")

    def __init__(self) -> None:
        self.partials: list[float] = []
        self.special = 0.0  # the sum of infinite or NaN terms (0.0 while there are none)

    def add(self, x: float) -> None:
        if not math.isfinite(x):
            self.special += x
            return
        partials = self.partials
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                partials[i] = lo
                i += 1
            x = hi
        if not math.isfinite(x):  # the sum itself overflowed
            self.special += x
            del partials[i:]
            return
        partials[i:] = [x]

    def merged(self, other: ExactSum) -> ExactSum:
        out = ExactSum()
        out.partials = list(self.partials)
        out.special = self.special
        for p in other.partials:
            out.add(p)
        out.special += other.special
        return out

    @property
    def value(self) -> float:
        if self.special:
            return self.special
        return math.fsum(self.partials)

    def to_state(self) -> Any:
        """Partials as a JSON list; an infinite sum as null (JSON has no infinity)."""
        return None if self.special else list(self.partials)

    @classmethod
    def from_state(cls, data: Any) -> ExactSum:
        """From :meth:`to_state`, or a plain number (older states); null is infinity.

        Raises :class:`~app.errors.StateError` for anything else.
        """
        out = cls()
        try:
            if data is None:
                out.special = math.inf
            elif isinstance(data, list):  # already non-overlapping partials: kept as they are
                out.partials = [_number(p) for p in data]
                if not all(math.isfinite(p) for p in out.partials):
                    raise ValueError("exact-sum partials must be finite")
            else:
                out.add(_number(data))
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt exact sum: {exc!r}") from None
        return out


def _number(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise TypeError(f"expected a number, got {x!r}")
    return float(x)
