"""One field of every event of a batch, read in one C-level pass.

Events are decoded JSON objects (dicts). ``operator.methodcaller("get", key)`` looks
the method up on every call (about 70 ns an event); ``dict.get`` mapped over the batch
costs about 18 ns, as much as ``itemgetter``, and needs no key in every event.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any


def field_values(events: Sequence[Mapping[str, Any] | None], key: str) -> list[Any]:
    """``[e.get(key) for e in events]``; an event that is ``None`` (an absent map) gives
    ``None`` too.

    >>> field_values([{"a": 1}, {}, None], "a")
    [1, None, None]
    """
    try:
        return list(map(dict.get, events, itertools.repeat(key)))  # type: ignore[arg-type]
    except TypeError:  # a None among them, or a mapping that is not a dict
        return [None if e is None else e.get(key) for e in events]
