"""One field of every event of a batch, read in one C-level pass, and a batch's events
grouped by model version the same way.

Events are decoded JSON objects (dicts). ``operator.methodcaller("get", key)`` looks
the method up on every call (about 70 ns an event); ``dict.get`` mapped over the batch
costs about 18 ns, as much as ``itemgetter``, and needs no key in every event.
"""

from __future__ import annotations

import itertools
import operator
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


_VERSION = operator.itemgetter("model_version")


def version_indices(events: Sequence[Mapping[str, Any]]) -> dict[str, Sequence[int]]:
    """The indices of each model version's events, versions in order of first
    appearance; the usual batch (one version) without a per-event loop.

    >>> version_indices([{"model_version": "a"}, {"model_version": "b"},
    ...                  {"model_version": "a"}])
    {'a': [0, 2], 'b': [1]}
    >>> version_indices([{"model_version": "a"}] * 3)
    {'a': range(0, 3)}
    """
    versions = list(map(_VERSION, events))
    if versions and versions.count(versions[0]) == len(versions):
        return {versions[0]: range(len(versions))}
    out: dict[str, list[int]] = {}
    for i, version in enumerate(versions):
        out.setdefault(version, []).append(i)
    return dict(out)
