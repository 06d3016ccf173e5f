"""Versioned state envelopes shared by the sketches, and the integers of a state."""

from __future__ import annotations

import math
from typing import Any

from app.errors import StateError


def check_state(state: Any, kind: str, supported: frozenset[int]) -> dict[str, Any]:
    """Return ``state`` when it is a known version of ``kind``, else raise :class:`StateError`."""
    if not isinstance(state, dict):
        raise StateError(f"{kind} state must be a mapping, got {type(state).__name__}")
    if state.get("kind") != kind:
        raise StateError(f"expected a {kind!r} state, got kind {state.get('kind')!r}")
    version = state.get("v")
    if type(version) is not int or version not in supported:
        raise StateError(
            f"{kind} state version {version!r} is not supported (this build reads "
            f"{sorted(supported)}); upgrade driftwarden or rebuild the state"
        )
    return state


def integer(value: Any, what: str, *, minimum: int = -(2**63), nullable: bool = False) -> Any:
    """``value`` when it is an integer in ``[minimum, 2**63)`` (or None when ``nullable``).

    A state's integers (times, counts, offsets) are int64s for numpy and for the
    changelog's encoder: a float, a bool or a larger integer is refused with
    ``TypeError`` or ``ValueError``, which loaders turn into :class:`StateError`.
    """
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an integer{' or null' if nullable else ''}, "
                        f"got {str(value)[:50]!r}")
    if not minimum <= value < 2**63:
        raise ValueError(f"{what} must be in [{minimum}, 2**63), got {str(value)[:50]}")
    return value


def json_float(x: float) -> float | str:
    """A float as a state holds it: a non-finite one as ``"inf"``, ``"-inf"`` or
    ``"nan"`` (JSON has none; the changelog's encoder would write null)."""
    return x if math.isfinite(x) else str(x)


def read_float(value: Any) -> float:
    """What :func:`json_float` wrote; null (written before it) is infinity."""
    if value is None:
        return math.inf
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {str(value)[:50]!r}")
    return float(value)
