"""Versioned state envelopes shared by the sketches."""

from __future__ import annotations

from typing import Any

from app.errors import StateError


def check_state(state: Any, kind: str, supported: frozenset[int]) -> dict[str, Any]:
    """Return ``state`` when it is a known version of ``kind``, else raise :class:`StateError`."""
    if not isinstance(state, dict):
        raise StateError(f"{kind} state must be a mapping, got {type(state).__name__}")
    if state.get("kind") != kind:
        raise StateError(f"expected a {kind!r} state, got kind {state.get('kind')!r}")
    version = state.get("v")
    if version not in supported:
        raise StateError(
            f"{kind} state version {version!r} is not supported (this build reads "
            f"{sorted(supported)}); upgrade driftwarden or rebuild the state"
        )
    return state
