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

:meth:`ExactSum.add_many` adds a batch in a few C-level passes (``math.fsum``) instead of
a Python step per term; the sum is the same, exactly:

>>> c = ExactSum()
>>> c.add_many([1e16, 1.0, -1e16, 0.1, 0.2])
>>> d = ExactSum()
>>> for x in (1e16, 1.0, -1e16, 0.1, 0.2):
...     d.add(x)
>>> c.value == d.value == math.fsum([1.0, 0.1, 0.2])
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from app.errors import MALFORMED_STATE, StateError

_FAR = 2.0**1000  # magnitudes whose sums stay far below the largest float (about 2**1024)


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

    def add_many(self, values: Iterable[float]) -> None:
        """:meth:`add` of each of ``values``: the same exact sum, so the same :attr:`value`
        to the bit (the partials that hold it may be split differently).

        The exact total of the partials and the values is kept as a few non-overlapping
        floats: ``math.fsum`` rounds it exactly, the next ``fsum`` (with the rounded
        parts subtracted) rounds what is left, until nothing is. A non-finite value, or
        a sum that may pass the floats' range (where adding one by one overflows, or
        not, depending on the order), takes :meth:`add`'s path value by value.
        """
        terms = values if type(values) is list else list(values)
        if not terms:
            return
        todo = terms + self.partials
        parts: list[float] = []
        try:
            # Far from the float range's end, adding one by one never overflows either
            # (each partial sum is at most the sum of the magnitudes)
            if max(max(todo), -min(todo)) * len(todo) >= _FAR:
                raise OverflowError("near the end of the float range")
            while True:
                s = math.fsum(todo)
                if not math.isfinite(s):
                    raise OverflowError("a non-finite sum")
                if not s and parts:
                    break
                parts.append(s)
                if not s:
                    break  # the exact sum is zero (its sign as fsum gives it)
                todo.append(-s)
        except (OverflowError, ValueError):  # inf, NaN or an overflowing sum
            for x in terms:
                self.add(x)
            return
        parts.reverse()  # smallest first, as add keeps them
        self.partials = parts

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
