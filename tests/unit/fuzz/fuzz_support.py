"""Shared strategies of the fuzz tests: JSON-like values and mutations of a valid document.

Values go beyond what a JSON encoder writes, on purpose: NaN and infinities (the standard
library reads them), integers beyond 64 bits and beyond the double range, lone UTF-16
surrogates, very long strings. :func:`mutated` breaks a valid document (a state, an
event, a config) the ways corrupt data breaks: a key dropped, a value of the wrong type,
a negative or non-finite number, a list cut short or grown, a container emptied.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from hypothesis import strategies as st

HUGE_INTS = [2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 2**64 + 1, -(2**63) - 1, 10**30,
             10**400, -(10**400)]
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 1e300,
                  -1e300]
ODD_TEXT = ["", " ", "\ud800", "\udfff", "a\ud800b", "\x00", "\n", "null", "NaN", "-1",
            "1e400", "9999-12-31T23:59:59.999Z", "\u0662\u0660", "x" * 300]

ints = st.integers(-3, 3) | st.integers() | st.sampled_from(HUGE_INTS)
floats = st.floats() | st.sampled_from(SPECIAL_FLOATS)
texts = st.text(max_size=12) | st.sampled_from(ODD_TEXT)
leaves = st.none() | st.booleans() | ints | floats | texts
#: Any value a JSON reader (the standard library's, which reads NaN) may produce, and more.
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=10,
)


def replacements(current: Any) -> st.SearchStrategy[Any]:
    """Values to put where ``current`` was: of another type, or the same type broken."""
    options: list[st.SearchStrategy[Any]] = [values, leaves, st.sampled_from(
        [None, True, False, 0, -1, "", [], {}, math.nan, math.inf, 10**400, 2**64])]
    if isinstance(current, bool):
        options.append(ints)
    elif isinstance(current, int | float):
        options += [st.just(-current if current else -1), st.just(current + 1),
                    st.just(_as_float(current)), st.just(str(current)[:50]),
                    st.just(current * 10**30)]
    elif isinstance(current, str):
        options += [st.just(current * 100), st.just(current[:-1]), st.just(current + "x")]
    elif isinstance(current, list):
        options += [st.just(current[:-1]), st.just(current[1:]),
                    st.just(current + current[-1:]), st.just([current]),
                    st.just(current * 50), st.just(list(reversed(current)))]
    elif isinstance(current, dict):
        options += [st.just(list(current)), st.just(list(current.values())),
                    st.just({k: None for k in current})]
    return st.one_of(options)


def _as_float(x: int | float) -> float:
    try:
        return float(x)
    except OverflowError:  # an integer beyond the double range
        return math.inf


def _pick(draw: st.DrawFn, doc: Any) -> tuple[Any, Any]:
    """A (container, key) pair of ``doc``, chosen by a random descent from the root;
    (None, None) is the root itself."""
    parent: Any = None
    key: Any = None
    node = doc
    while isinstance(node, dict | list) and node and draw(st.integers(0, 4)) != 0:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        k = draw(st.sampled_from(keys))
        parent, key, node = node, k, node[k]
    return parent, key


@st.composite
def mutated(draw: st.DrawFn, doc: Any, max_mutations: int = 3) -> Any:
    """``doc`` (not changed) with 1..max_mutations random defects."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, max_mutations))):
        parent, key = _pick(draw, doc)
        if parent is None:
            return draw(replacements(doc))
        how = draw(st.sampled_from(["replace", "replace", "replace", "drop", "add"]))
        if how == "drop":
            del parent[key]
        elif how == "add":
            if isinstance(parent, dict):
                parent[draw(texts)] = draw(values)
            else:
                parent.insert(key, draw(values))
        else:
            parent[key] = draw(replacements(parent[key]))
    return doc


def same(a: Any, b: Any) -> bool:
    """Deep equality where key order does not count, NaN equals NaN and an int equals the
    float it rounds to (the fast decoder keeps integers beyond 64 bits inside input
    records exact, orjson reads them as floats: every consumer converts both to the same
    float64). Iterative: documents nest up to 1 024 levels."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if isinstance(x, dict) and isinstance(y, dict):
            if x.keys() != y.keys():
                return False
            stack += [(x[k], y[k]) for k in x]
        elif isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                return False
            stack += list(zip(x, y, strict=True))
        elif not _same_leaf(x, y):
            return False
    return True


def _same_leaf(a: Any, b: Any) -> bool:
    numbers = int | float
    if (isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool)
            and not isinstance(b, bool)):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        if type(a) is not type(b):
            try:
                return float(a) == float(b)
            except OverflowError:
                return False
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)
