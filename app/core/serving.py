"""Serving figures of one version's predictions in a window: latency and cost (pure).

Predictions may carry ``latency_ms`` (the model server's time for the prediction) and
``cost`` (what it cost, in the user's currency unit). Per window and version, latency
goes into a quantile sketch (its quantiles within 1 % relative error) and cost into an
exactly rounded sum, so a worker and ``driftwarden replay`` get identical figures
however the stream was cut into batches. The objectives they are judged against are in
:mod:`app.policy.slo`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from app.core.partials import add_quantile_counts
from app.errors import MALFORMED_STATE, StateError
from app.performance.exactsum import ExactSum
from app.sketches import QuantileSketch
from app.sketches.quantile import BucketCounts

QUANTILES = (0.5, 0.9, 0.99)


def _float(v: float) -> float:
    """A validated number (>= 0) as a float: an integer beyond the float range is inf
    (a non-finite latency, a cost sum of inf), as for features."""
    try:
        return float(v)
    except OverflowError:
        return math.inf


class ServingStats:
    """Latency quantiles and cost of a window's predictions of one version.

    >>> s = ServingStats()
    >>> s.update([{"latency_ms": float(i)} for i in range(1, 101)] + [{"cost": 0.002}] * 4)
    >>> f = s.figures()
    >>> f["latency_ms"]["n"], round(f["latency_ms"]["p99"]), f["cost"]["per_1k"]
    (100, 99, 2.0)
    """

    __slots__ = ("cost", "cost_n", "latency", "n")

    def __init__(self) -> None:
        self.latency = QuantileSketch()
        self.cost = ExactSum()
        self.cost_n = 0  # predictions that carried a cost
        self.n = 0  # predictions counted

    def update(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Count the predictions that carry a latency, a cost or both."""
        self.add([e.get("latency_ms") for e in events], [e.get("cost") for e in events])

    def add(self, latency: Sequence[Any], cost: Sequence[Any]) -> None:
        """Count predictions by their ``latency_ms`` and ``cost`` (``None``: not carried),
        one list each, aligned; a prediction that carries neither is not counted."""
        n = len(latency)
        no_latency, no_cost = latency.count(None), cost.count(None)
        if no_latency < n:
            if no_latency == 0 and set(map(type, latency)) == {float}:  # the usual batch
                values: Sequence[Any] = latency
            else:
                values = [_float(v) for v in latency if v is not None]
            self.latency.update(np.asarray(values, dtype=np.float64))
        if no_cost < n:
            self.cost.add_many([_float(c) for c in cost if c is not None])
            self.cost_n += n - no_cost
        if no_latency and no_cost:
            n = sum(1 for a, b in zip(latency, cost, strict=True)
                    if a is not None or b is not None)
        self.n += n

    def add_latency_counts(self, counted: Sequence[BucketCounts], n: int) -> None:
        """Count ``n`` predictions that each carry a latency and no cost, by their
        latencies' quantile-bucket counts (:func:`~app.core.partials.latency_counts`, one
        per message): what :meth:`add` of the values counts."""
        add_quantile_counts([self.latency], counted)
        self.n += n

    @property
    def empty(self) -> bool:
        return self.latency.n == 0 and self.cost_n == 0

    def latency_quantile(self, q: float) -> float | None:
        return float(self.latency.quantile(q)) if self.latency.n else None

    def cost_per_1k(self) -> float | None:
        """Cost per 1 000 predictions, over the predictions that carried a cost."""
        return round(1000 * self.cost.value / self.cost_n, 12) if self.cost_n else None

    def figures(self) -> dict[str, Any]:
        latency = None
        if self.latency.n:
            qs = self.latency.quantile(list(QUANTILES))
            latency = {"n": self.latency.n,
                       **{f"p{round(q * 100)}": round(float(v), 6)
                          for q, v in zip(QUANTILES, qs, strict=True)}}
        cost = None
        if self.cost_n:
            cost = {"n": self.cost_n, "total": round(self.cost.value, 12),
                    "per_1k": self.cost_per_1k()}
        return {"latency_ms": latency, "cost": cost}

    def to_state(self) -> dict[str, Any]:
        return {"latency": self.latency.to_state(), "cost": self.cost.to_state(),
                "cost_n": self.cost_n, "n": self.n}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ServingStats:
        try:
            s = cls()
            s.latency = QuantileSketch.from_state(state["latency"])
            s.cost = ExactSum.from_state(state["cost"])
            s.cost_n, s.n = int(state["cost_n"]), int(state["n"])
            return s
        except StateError:
            raise
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt serving state: {exc!r}") from None
