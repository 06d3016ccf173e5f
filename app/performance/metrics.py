"""Streaming, mergeable performance metrics of labelled predictions.

Classification: a confusion matrix over class labels (compared as categories: ``True`` is
``"true"``, ``1.0`` is ``"1"``) gives accuracy, precision, recall, F1 (the positive class
for binary models, macro-F1 for multiclass); the positive-class score gives log loss and
ROC AUC. AUC comes from score histograms (``AUC_BINS`` bins on [0, 1]): pairs whose scores
share a bin count as ties, so the reported ``auc_error`` bounds the difference from the
exact AUC. Regression: MAE, RMSE and MAPE (MAPE over non-zero labels).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from app.errors import StateError
from app.sketches._state import check_state
from app.sketches.categorical import as_category

AUC_BINS = 200
EPS = 1e-15


def _cls(v: Any) -> str:
    return v if isinstance(v, str) else as_category(v)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion.

    >>> [round(x, 3) for x in wilson_interval(88, 100)]
    [0.802, 0.93]
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


class ClassificationMetrics:
    """Accumulates labelled classifications.

    >>> m = ClassificationMetrics(positive="1")
    >>> m.update([(1, 1, 0.9), (0, 1, 0.6), (0, 0, 0.2), (1, 0, 0.4)])
    >>> m.figures()["accuracy"], m.figures()["precision"], m.figures()["recall"]
    (0.5, 0.5, 0.5)
    """

    KIND = "classification"
    VERSION = 1

    def __init__(self, positive: str | None = None) -> None:
        self.positive = positive
        self.confusion: dict[tuple[str, str], int] = {}  # (actual, predicted) -> count
        self.n = 0
        self.logloss_sum = 0.0
        self.logloss_n = 0
        self.pos_hist = np.zeros(AUC_BINS, dtype=np.int64)
        self.neg_hist = np.zeros(AUC_BINS, dtype=np.int64)

    def update(self, rows: Iterable[tuple[Any, Any, float | None]]) -> None:
        """Add (label, predicted, positive-class score or None) triples."""
        for label, predicted, score in rows:
            key = (_cls(label), _cls(predicted))
            self.confusion[key] = self.confusion.get(key, 0) + 1
            self.n += 1
            if score is not None and self.positive is not None and 0.0 <= score <= 1.0:
                is_pos = key[0] == self.positive
                p = min(max(score, EPS), 1 - EPS)
                self.logloss_sum += -math.log(p if is_pos else 1 - p)
                self.logloss_n += 1
                b = min(int(score * AUC_BINS), AUC_BINS - 1)
                (self.pos_hist if is_pos else self.neg_hist)[b] += 1

    def merge(self, other: ClassificationMetrics) -> ClassificationMetrics:
        out = ClassificationMetrics(self.positive)
        for src in (self, other):
            for k, v in src.confusion.items():
                out.confusion[k] = out.confusion.get(k, 0) + v
        out.n = self.n + other.n
        out.logloss_sum = self.logloss_sum + other.logloss_sum
        out.logloss_n = self.logloss_n + other.logloss_n
        out.pos_hist = self.pos_hist + other.pos_hist
        out.neg_hist = self.neg_hist + other.neg_hist
        return out

    @property
    def correct(self) -> int:
        return sum(v for (a, p), v in self.confusion.items() if a == p)

    def _prf(self, cls: str) -> tuple[float, float, float]:
        tp = self.confusion.get((cls, cls), 0)
        predicted = sum(v for (_, p), v in self.confusion.items() if p == cls)
        actual = sum(v for (a, _), v in self.confusion.items() if a == cls)
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return precision, recall, f1

    def auc(self) -> tuple[float | None, float | None]:
        """(ROC AUC from the score histograms, the bound on its binning error)."""
        pos, neg = int(self.pos_hist.sum()), int(self.neg_hist.sum())
        if not pos or not neg:
            return None, None
        below = np.concatenate(([0], np.cumsum(self.neg_hist)[:-1]))  # negatives in lower bins
        wins = float(np.dot(self.pos_hist, below))
        ties = float(np.dot(self.pos_hist, self.neg_hist))
        pairs = float(pos) * neg
        return (wins + 0.5 * ties) / pairs, 0.5 * ties / pairs

    def figures(self) -> dict[str, float | None]:
        if not self.n:
            return {"accuracy": None}
        out: dict[str, float | None] = {"accuracy": self.correct / self.n}
        lo, hi = wilson_interval(self.correct, self.n)
        out["accuracy_low"], out["accuracy_high"] = lo, hi
        classes = sorted({a for a, _ in self.confusion} | {p for _, p in self.confusion})
        if self.positive is not None:
            out["precision"], out["recall"], out["f1"] = self._prf(self.positive)
        out["macro_f1"] = sum(self._prf(c)[2] for c in classes) / len(classes)
        if self.logloss_n:
            out["log_loss"] = self.logloss_sum / self.logloss_n
        out["roc_auc"], out["roc_auc_error"] = self.auc()
        return out

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.KIND, "v": self.VERSION, "positive": self.positive,
                "confusion": [[a, p, v] for (a, p), v in self.confusion.items()], "n": self.n,
                "logloss": [self.logloss_sum, self.logloss_n],
                "pos": self.pos_hist.tolist(), "neg": self.neg_hist.tolist()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ClassificationMetrics:
        check_state(state, cls.KIND, frozenset({cls.VERSION}))
        try:
            m = cls(state["positive"])
            m.confusion = {(str(a), str(p)): int(v) for a, p, v in state["confusion"]}
            m.n = int(state["n"])
            m.logloss_sum, m.logloss_n = float(state["logloss"][0]), int(state["logloss"][1])
            m.pos_hist = np.asarray(state["pos"], dtype=np.int64)
            m.neg_hist = np.asarray(state["neg"], dtype=np.int64)
            if m.pos_hist.shape != (AUC_BINS,) or m.neg_hist.shape != (AUC_BINS,):
                raise ValueError("score histograms have the wrong size")
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"corrupt classification metrics: {exc!r}") from None
        return m


class RegressionMetrics:
    """Accumulates labelled regression predictions.

    >>> m = RegressionMetrics()
    >>> m.update([(10.0, 12.0), (20.0, 18.0), (0.0, 1.0)])
    >>> f = m.figures()
    >>> round(f["mae"], 3), round(f["rmse"], 3), round(f["mape"], 3)
    (1.667, 1.732, 0.15)
    """

    KIND = "regression"
    VERSION = 1

    def __init__(self) -> None:
        self.n = 0
        self.abs_sum = 0.0
        self.sq_sum = 0.0
        self.pct_sum = 0.0
        self.pct_n = 0

    def update(self, rows: Iterable[tuple[float, float]]) -> None:
        """Add (label, predicted) pairs; non-finite ones are skipped."""
        for label, predicted in rows:
            err = float(predicted) - float(label)
            if not math.isfinite(err):
                continue
            self.n += 1
            self.abs_sum += abs(err)
            self.sq_sum += err * err
            if label != 0:
                self.pct_sum += abs(err / float(label))
                self.pct_n += 1

    def merge(self, other: RegressionMetrics) -> RegressionMetrics:
        out = RegressionMetrics()
        out.n, out.abs_sum = self.n + other.n, self.abs_sum + other.abs_sum
        out.sq_sum, out.pct_sum = self.sq_sum + other.sq_sum, self.pct_sum + other.pct_sum
        out.pct_n = self.pct_n + other.pct_n
        return out

    def figures(self) -> dict[str, float | None]:
        if not self.n:
            return {"mae": None, "rmse": None, "mape": None}
        return {"mae": self.abs_sum / self.n, "rmse": math.sqrt(self.sq_sum / self.n),
                "mape": self.pct_sum / self.pct_n if self.pct_n else None}

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.KIND, "v": self.VERSION, "n": self.n,
                "sums": [self.abs_sum, self.sq_sum, self.pct_sum, self.pct_n]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RegressionMetrics:
        check_state(state, cls.KIND, frozenset({cls.VERSION}))
        try:
            m = cls()
            m.n = int(state["n"])
            a, s, p, pn = state["sums"]
            m.abs_sum, m.sq_sum, m.pct_sum, m.pct_n = float(a), float(s), float(p), int(pn)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"corrupt regression metrics: {exc!r}") from None
        return m
