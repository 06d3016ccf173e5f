"""The schema of a source's records: field names and JSON types, and how it changed.

A window's schema is the share of its records carrying each field, and per field the
counts of each JSON type (``string``, ``number``, ``boolean``, ``object``, ``array``;
``null`` does not count as a type: a field may be null in any type). Compared with the
accepted schema:

- **added**: a field in at least half the window's records that the accepted schema
  does not have;
- **removed**: an accepted field in none of the window's records;
- **type changed**: a field whose dominant non-null type is another one.

A rename shows as one field removed and one added in the same window. Sparse optional
fields (in some records only) are neither added nor removed while they keep appearing.

>>> s = SchemaCounts()
>>> s.update([{"id": 1, "plan": "pro"}, {"id": 2, "plan": None}])
>>> accepted = s.fingerprint()
>>> accepted
{'id': 'number', 'plan': 'string'}
>>> w = SchemaCounts()
>>> w.update([{"id": "a1", "tier": "pro"}])
>>> diff_schema(accepted, w).describe()
'removed plan (string); added tier (string); type changed id (number -> string)'
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.errors import MALFORMED_STATE, StateError
from app.sketches._state import check_state

MAX_FIELDS = 512  # fields tracked per window; more are counted, not named
OVERFLOW = "__other__"


def json_type(v: Any) -> str | None:
    """The JSON type of a decoded value (None for null)."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "object"
    return "array"


@dataclass
class SchemaCounts:
    """Field presence and type counts of one window's records (mergeable)."""

    records: int = 0
    present: dict[str, int] = field(default_factory=dict)
    types: dict[str, dict[str, int]] = field(default_factory=dict)

    def update(self, records: Iterable[Mapping[str, Any]], ignore: Iterable[str] = ()) -> None:
        skip = frozenset(ignore)
        for record in records:
            self.records += 1
            for name, value in record.items():
                if name in skip:
                    continue
                if name not in self.present and len(self.present) >= MAX_FIELDS:
                    name = OVERFLOW
                self.present[name] = self.present.get(name, 0) + 1
                t = json_type(value)
                if t is not None:
                    counts = self.types.setdefault(name, {})
                    counts[t] = counts.get(t, 0) + 1

    def merge(self, other: SchemaCounts) -> SchemaCounts:
        out = SchemaCounts(self.records + other.records, dict(self.present),
                           {k: dict(v) for k, v in self.types.items()})
        for name, n in other.present.items():
            out.present[name] = out.present.get(name, 0) + n
        for name, counts in other.types.items():
            mine = out.types.setdefault(name, {})
            for t, n in counts.items():
                mine[t] = mine.get(t, 0) + n
        return out

    def dominant(self, name: str) -> str:
        """The field's most frequent non-null type (``null`` when only nulls were seen)."""
        counts = self.types.get(name)
        if not counts:
            return "null"
        return max(sorted(counts), key=lambda t: counts[t])

    def fingerprint(self, min_share: float = 0.0) -> dict[str, str]:
        """Field -> dominant type, for fields in more than ``min_share`` of records."""
        return {name: self.dominant(name) for name in sorted(self.present)
                if name != OVERFLOW and self.present[name] > min_share * self.records}

    def to_state(self) -> dict[str, Any]:
        return {"kind": "schema-counts", "v": 1, "records": self.records,
                "present": self.present, "types": self.types}

    @classmethod
    def from_state(cls, state: Any) -> SchemaCounts:
        check_state(state, "schema-counts", frozenset({1}))
        try:
            return cls(int(state["records"]),
                       {str(k): int(v) for k, v in state["present"].items()},
                       {str(k): {str(t): int(n) for t, n in v.items()}
                        for k, v in state["types"].items()})
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt schema counts: {exc!r}") from None


def fingerprint_id(schema: Mapping[str, str]) -> str:
    """A short stable hash of a fingerprint (for labels and ids)."""
    text = ",".join(f"{k}:{v}" for k, v in sorted(schema.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SchemaDiff:
    added: dict[str, str]
    removed: dict[str, str]
    changed: dict[str, tuple[str, str]]  # field -> (accepted type, new type)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self) -> str:
        """One line: ``removed tenure_months (number); added tenure (number)``."""
        parts = []
        if self.removed:
            parts.append("removed " + ", ".join(f"{k} ({t})" for k, t in self.removed.items()))
        if self.added:
            parts.append("added " + ", ".join(f"{k} ({t})" for k, t in self.added.items()))
        if self.changed:
            parts.append("type changed " + ", ".join(
                f"{k} ({a} -> {b})" for k, (a, b) in self.changed.items()))
        return "; ".join(parts)


def diff_schema(accepted: Mapping[str, str], window: SchemaCounts) -> SchemaDiff:
    """How a window's records differ from the accepted schema (see the module docstring)."""
    now = window.fingerprint(min_share=0.5)
    added = {k: t for k, t in now.items() if k not in accepted}
    removed = {k: t for k, t in accepted.items() if window.present.get(k, 0) == 0}
    changed = {}
    for name, old in accepted.items():
        new = window.dominant(name) if window.present.get(name) else None
        if new is not None and new != "null" and old != "null" and new != old:
            changed[name] = (old, new)
    return SchemaDiff(added, removed, changed)
