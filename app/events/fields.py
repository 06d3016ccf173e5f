"""One field of every event of a batch, read in one C-level pass, and a batch's events
grouped by model version the same way; from its columns when the batch is an
:class:`~app.events.block.EventBlock`, whose events are then never built.

Events are decoded JSON objects (dicts). ``operator.methodcaller("get", key)`` looks
the method up on every call (about 70 ns an event); ``dict.get`` mapped over the batch
costs about 18 ns, as much as ``itemgetter``, and needs no key in every event.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Mapping, Sequence
from typing import Any

from app.events.block import EventBlock


def field_values(events: Sequence[Mapping[str, Any] | None], key: str) -> list[Any]:
    """``[e.get(key) for e in events]``; an event that is ``None`` (an absent map) gives
    ``None`` too.

    >>> field_values([{"a": 1}, {}, None], "a")
    [1, None, None]
    """
    if type(events) is EventBlock:
        return events.column(key)
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
    versions = events.column("model_version") if type(events) is EventBlock else \
        list(map(_VERSION, events))
    if versions and versions.count(versions[0]) == len(versions):
        return {versions[0]: range(len(versions))}
    out: dict[str, list[int]] = {}
    for i, version in enumerate(versions):
        out.setdefault(version, []).append(i)
    return dict(out)


def score_values(events: Sequence[Mapping[str, Any]], cls: str) -> list[Any]:
    """Each event's score of class ``cls`` (``None`` where it has none).

    >>> score_values([{"scores": {"1": 0.5}}, {}], "1")
    [0.5, None]
    """
    if type(events) is EventBlock:
        return events.score_column(cls)
    return field_values(field_values(events, "scores"), cls)


def take(events: Sequence[Mapping[str, Any]], idx: Sequence[int]
         ) -> Sequence[Mapping[str, Any]]:
    """The events at ``idx``: a block's as a block, without building them.

    >>> take([{"a": 1}, {"a": 2}, {"a": 3}], [2, 0])
    [{'a': 3}, {'a': 1}]
    """
    if type(events) is EventBlock:
        return events.take(idx)
    return [events[i] for i in idx]


def concat(parts: Sequence[Sequence[Mapping[str, Any]]]) -> Sequence[Mapping[str, Any]]:
    """The events of ``parts`` one after the other: as one block when all are blocks
    alike, else as a list (a block's events built).

    >>> concat([[{"a": 1}], [], [{"a": 2}]])
    [{'a': 1}, {'a': 2}]
    """
    parts = [p for p in parts if len(p)]
    if len(parts) == 1:
        return parts[0]
    if parts and all(type(p) is EventBlock for p in parts):
        joined = EventBlock.concat(parts)  # type: ignore[arg-type]
        if joined is not None:
            return joined
    return [e for p in parts for e in p]


def share_strings(values: Sequence[Any], pool: dict[str, str]) -> list[Any]:
    """``values`` as a new list, each string replaced by the pool's equal one (added when
    new): one object per distinct string, where a decoder made one per value. A column of
    one repeated string (the usual version or class), or of strings only, in one C pass.

    >>> pool: dict[str, str] = {}
    >>> a = share_strings(["".join("ab"), "ab", 1, None], pool)
    >>> a, a[0] is a[1] is pool["ab"], share_strings([2.5], pool)
    (['ab', 'ab', 1, None], True, [2.5])
    """
    if not values:
        return []
    first = values[0]
    if type(first) is str and values.count(first) == len(values):
        return [pool.setdefault(first, first)] * len(values)
    types = set(map(type, values))
    if types == {str}:
        return list(map(pool.setdefault, values, values))
    if str not in types:
        return list(values)
    return [pool.setdefault(v, v) if type(v) is str else v for v in values]
