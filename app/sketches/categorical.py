"""Category frequencies over a fixed vocabulary, with an "other" bucket."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from app.errors import MALFORMED_STATE, StateError
from app.sketches._state import check_state

OTHER = "__other__"


class CategoryCounts:
    """Counts per known category; values outside the vocabulary go to ``other``.

    The vocabulary is fixed (from the reference), so memory is bounded by its size and
    two sketches over the same vocabulary merge exactly. Non-string values are spelled
    by :func:`as_category` (``True`` is ``"true"``, ``2.0`` is ``"2"``); ``None`` counts
    as missing.

    >>> c = CategoryCounts(["free", "pro"])
    >>> c.update(["free", "pro", "pro", "team", None])
    >>> c.counts.tolist(), c.missing
    ([1, 2, 1], 1)
    """

    KIND = "categories"
    VERSION = 1
    __slots__ = ("_index", "categories", "counts", "missing")

    def __init__(self, categories: Sequence[str]) -> None:
        self.categories = tuple(str(c) for c in categories)
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"categories must be distinct, got {list(self.categories)}")
        if OTHER in self.categories:
            raise ValueError(f"{OTHER!r} is reserved for the other bucket")
        self._index = {c: i for i, c in enumerate(self.categories)}
        self.counts = np.zeros(len(self.categories) + 1, dtype=np.int64)  # last: other
        self.missing = 0

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def other(self) -> int:
        return int(self.counts[-1])

    def update(self, values: Iterable[Any]) -> None:
        self.add_tally(Counter(values))

    def add_tally(self, tally: Mapping[Any, int]) -> None:
        """Add values already tallied: value -> how many (what :meth:`update` counts).

        >>> c = CategoryCounts(["free", "pro"])
        >>> c.add_tally({"pro": 3, "team": 1, None: 2})
        >>> c.counts.tolist(), c.missing
        ([0, 3, 1], 2)
        """
        other_slot = len(self.categories)
        index = self._index
        for value, count in tally.items():
            if value is None:
                self.missing += count
                continue
            key = value if isinstance(value, str) else as_category(value)
            self.counts[index.get(key, other_slot)] += count

    def merge(self, other: CategoryCounts) -> CategoryCounts:
        if self.categories != other.categories:
            raise ValueError("cannot merge category counts over different vocabularies")
        out = CategoryCounts(self.categories)
        out.counts = self.counts + other.counts
        out.missing = self.missing + other.missing
        return out

    def proportions(self) -> npt.NDArray[np.float64]:
        total = self.counts.sum()
        if total == 0:
            return np.zeros(self.counts.size, dtype=np.float64)
        return self.counts / float(total)

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.KIND, "v": self.VERSION, "categories": list(self.categories),
                "counts": self.counts.tolist(), "missing": self.missing}

    @classmethod
    def from_state(cls, state: Any) -> CategoryCounts:
        state = check_state(state, cls.KIND, frozenset({cls.VERSION}))
        try:
            out = cls(state["categories"])
            counts = np.asarray(state["counts"], dtype=np.int64)
            if counts.shape != out.counts.shape or (counts < 0).any():
                raise StateError(f"category state has {counts.size} counts for "
                                 f"{out.counts.size} buckets")
            out.counts = counts
            out.missing = int(state["missing"])
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt category state: {exc}") from None
        return out

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, CategoryCounts) and self.categories == other.categories
                and np.array_equal(self.counts, other.counts) and self.missing == other.missing)

    def __repr__(self) -> str:
        return (f"CategoryCounts(categories={len(self.categories)}, n={self.n}, "
                f"other={self.other}, missing={self.missing})")


def as_category(value: Any) -> str:
    """The category spelling of a non-null feature value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
