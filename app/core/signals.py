"""What a monitored signal is: an input feature, or one of the model's outputs."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Monitored signals that are not input features carry this prefix: ``@prediction``
#: (the predicted class or value) and ``@scores.<class>`` (a class probability).
PREDICTION = "@prediction"
SCORES = "@scores."


def is_output_signal(name: str) -> bool:
    return name.startswith("@")


def public_name(name: str) -> str:
    """How a signal is named in outputs: ``prediction``, ``scores.churn`` or the feature."""
    return name[1:] if is_output_signal(name) else name


def signal_rows(events: Sequence[Mapping[str, Any]], names: Sequence[str]
                ) -> list[Mapping[str, Any]]:
    """The rows sketches read: the feature maps, extended with output signals if needed."""
    features = [e["features"] for e in events]
    if not any(is_output_signal(n) for n in names):
        return features
    out: list[Mapping[str, Any]] = []
    for e, f in zip(events, features, strict=True):
        row = dict(f)
        row[PREDICTION] = e.get("prediction")
        for cls, p in (e.get("scores") or {}).items():
            row[SCORES + cls] = p
        out.append(row)
    return out


#: Segment tags carried in reference rows: ``#segment.<key>``.
SEGMENT = "#segment."
OTHER_SEGMENT = "__other__"


def segment_label(key: str, value: str) -> str:
    """How a segment is named in slices, references and outputs: ``region=emea``."""
    return f"{key}={value}"


def reference_row(event: Mapping[str, Any]) -> dict[str, Any]:
    """A prediction event as a reference row: features, outputs and segment tags."""
    row = dict(signal_rows([event], [PREDICTION])[0])
    for key, value in (event.get("segment") or {}).items():
        row[SEGMENT + key] = value
    return row


_NUMERIC_TYPES = (int, float, bool)
_FAST_TYPES = frozenset({float, int, bool, type(None)})  # numpy converts these as we do


def numeric_columns(rows: Sequence[Mapping[str, Any]], names: Sequence[str]
                    ) -> dict[str, np.ndarray[Any, Any]]:
    """:func:`numeric_column` for several names at once, vectorised when it can be.

    When every value is a float, an int, a bool or null (the usual batch), one list and
    one ``np.array`` call convert them all (null becomes NaN, bools 1/0, exactly as
    :func:`numeric_column`); otherwise (strings, containers, integers beyond the float
    range) the per-value rule runs.
    """
    if not names or not rows:
        return {n: numeric_column(rows, n) for n in names}
    try:  # the usual batch: every row carries every name (one C call per row)
        getter = operator.itemgetter(*names)
        table = list(map(getter, rows)) if len(names) > 1 else \
            [(v,) for v in map(getter, rows)]
    except KeyError:
        table = [tuple(row.get(n) for n in names) for row in rows]
    if set(map(type, itertools.chain.from_iterable(table))) <= _FAST_TYPES:
        try:
            matrix = np.array(table, dtype=np.float64).reshape(len(rows), len(names))
        except OverflowError:
            pass
        else:
            return {n: matrix[:, j] for j, n in enumerate(names)}
    return {n: numeric_column(rows, n) for n in names}


def numeric_column(rows: Sequence[Mapping[str, Any]], name: str) -> np.ndarray[Any, Any]:
    """A float column: booleans are 1/0, integers beyond the float range ±inf, and
    missing, null or non-numeric values NaN (the same rule for references and windows)."""
    out = np.empty(len(rows), dtype=np.float64)
    for i, row in enumerate(rows):
        v: Any = row.get(name)
        if type(v) in _NUMERIC_TYPES:
            try:
                out[i] = v
            except OverflowError:  # an integer beyond the float range
                out[i] = np.inf if v > 0 else -np.inf
        else:
            out[i] = np.nan
    return out
