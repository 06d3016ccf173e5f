"""Streaming, mergeable performance metrics of labelled predictions.

Classification: a confusion matrix over class labels gives accuracy, precision, recall,
F1 (of the positive class, for binary models) and macro-F1; the positive-class score
gives log loss and ROC AUC. Labels compare as categories: booleans are the classes
``"1"`` (True) and ``"0"`` (False), so bool and 0/1 labels of a binary model share the
positive class ``"1"``; other numbers go through ``as_category`` (``1.0`` is ``"1"``);
strings stay as they are. AUC comes from score histograms (``AUC_BINS`` bins on [0, 1]):
pairs whose scores share a bin count as ties, so the reported ``roc_auc_error`` bounds
the difference from the exact AUC. Regression: MAE, RMSE and MAPE (MAPE over non-zero
labels).

Every metric has a confidence interval (``interval(name)``, 95 % for ``z=1.96``; in
``figures()`` as ``<name>_low`` / ``<name>_high``):

- accuracy, precision, recall: Wilson score interval of the proportion.
- f1: Wilson interval with ``2·TP`` successes out of ``2·TP + FP + FN`` (since
  ``F1 = 2TP / (2TP + FP + FN)``); macro_f1: the mean of the per-class F1 bounds.
- log_loss, mae, mape: normal interval ``mean ± z·s/√n`` of the per-row values (log
  loss, ``|e|``, ``|e/y|``), ``s`` from running sums of the values and their squares.
- rmse: normal interval of the MSE (``s`` of ``e²`` from a running sum of ``e⁴``),
  square-rooted.
- roc_auc: ``AUC ± (z·SE + roc_auc_error)`` with the Hanley-McNeil standard error.

Bounds are clipped to the metric's range. An interval is None where it cannot be
computed: no value, or fewer than two rows for a normal interval.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from app.errors import MALFORMED_STATE, StateError
from app.performance.exactsum import ExactSum
from app.sketches._state import check_state
from app.sketches.categorical import as_category

AUC_BINS = 200
EPS = 1e-15
Z = 1.96  # two-sided 95 %

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "macro_f1", "log_loss",
                          "roc_auc")
REGRESSION_METRICS = ("mae", "rmse", "mape")
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True, "precision": True, "recall": True, "f1": True, "macro_f1": True,
    "roc_auc": True, "log_loss": False, "mae": False, "rmse": False, "mape": False,
}

Interval = tuple[float, float]


def as_class(v: Any) -> str:
    """The class spelling of a label: booleans are ``"1"``/``"0"``, strings stay.

    >>> as_class(True), as_class(0), as_class(1.0), as_class("yes")
    ('1', '0', '1', 'yes')
    """
    if isinstance(v, bool | np.bool_):
        return "1" if v else "0"
    return v if isinstance(v, str) else as_category(v)


def as_classes(values: Sequence[Any]) -> Sequence[Any]:
    """:func:`as_class` of each value; the values themselves when all are strings already
    (what the label join keeps: one C-level pass says so).

    >>> as_classes(["a", "b"]), as_classes([True, "b", 2.0])
    (['a', 'b'], ['1', 'b', '2'])
    """
    if set(map(type, values)) <= {str}:
        return values
    return [v if type(v) is str else as_class(v) for v in values]


def wilson_interval(successes: int, n: int, z: float = Z) -> Interval:
    """Wilson score interval of a proportion ((0, 1) when ``n`` is 0).

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


def mean_interval(total: float, sq_total: float, n: int, z: float = Z) -> Interval | None:
    """Normal interval of the mean of ``n`` non-negative values from their sum and sum of
    squares (low bound clipped at 0; None below two values).

    >>> [round(x, 3) for x in mean_interval(10.0, 30.0, 4)]  # values 1, 2, 3, 4
    [1.235, 3.765]
    """
    if n < 2:
        return None
    mean = total / n
    var = (sq_total - total * mean) / (n - 1)
    if not math.isfinite(var):  # an overflowed sum
        return None
    half = z * math.sqrt(max(0.0, var) / n)
    return max(0.0, mean - half), mean + half


class ClassificationMetrics:
    """Accumulates labelled classifications.

    >>> m = ClassificationMetrics(positive="1")
    >>> m.update([(True, 1, 0.9), (False, 1, 0.6), (0, 0, 0.2), (1, False, 0.4)])
    >>> f = m.figures()
    >>> f["accuracy"], f["precision"], f["recall"], f["roc_auc"]
    (0.5, 0.5, 0.5, 0.75)
    >>> [round(x, 3) for x in m.interval("accuracy")]
    [0.15, 0.85]
    """

    KIND = "classification"
    VERSION = 1

    def __init__(self, positive: str | None = None) -> None:
        self.positive = positive
        self.confusion: dict[tuple[str, str], int] = {}  # (actual, predicted) -> count
        self.n = 0
        self._loss = ExactSum()
        self._loss_sq = ExactSum()  # sum of squared per-row losses
        self.logloss_n = 0
        self.pos_hist = np.zeros(AUC_BINS, dtype=np.int64)
        self.neg_hist = np.zeros(AUC_BINS, dtype=np.int64)

    def update(self, rows: Iterable[tuple[Any, Any, float | None]]) -> None:
        """Add (label, predicted, positive-class score or None) triples
        (:meth:`update_columns` of their columns)."""
        batch = list(rows)
        if batch:
            labels, predicted, scores = zip(*batch, strict=True)
            self.update_columns(labels, predicted, scores)

    def update_columns(self, raw_labels: Sequence[Any], raw_predicted: Sequence[Any],
                       scores: Sequence[float | None]) -> None:
        """Add labels, predictions and positive-class scores (or None), as columns.

        A batch at once: the confusion counts in one ``Counter``, the scored rows' clipped
        probabilities and histogram bins with numpy; each loss is still ``math.log`` of
        its own, and the exact sums take the batch's losses at once (what row by row
        gives, to the bit).
        """
        n = len(scores)
        if not n:
            return
        labels, predicted = as_classes(raw_labels), as_classes(raw_predicted)
        confusion = self.confusion
        for key, count in Counter(zip(labels, predicted, strict=True)).items():
            confusion[key] = confusion.get(key, 0) + count
        self.n += n
        if self.positive is None:
            return
        if set(map(type, scores)) == {float}:  # the usual scores: checked with numpy
            score = np.fromiter(scores, np.float64, n)
            usable = (score >= 0.0) & (score <= 1.0)  # (NaN is neither)
            if not usable.all():
                score, labels = score[usable], list(itertools.compress(labels, usable))
        else:
            labels = [c for c, s in zip(labels, scores, strict=True)
                      if s is not None and 0.0 <= s <= 1.0]
            score = np.array([s for s in scores if s is not None and 0.0 <= s <= 1.0],
                             dtype=np.float64)
        if not score.size:
            return
        is_pos = np.fromiter(map(operator.eq, labels, itertools.repeat(self.positive)),
                             bool, len(labels))
        p = np.minimum(np.maximum(score, EPS), 1 - EPS)
        log_p = np.array(list(map(math.log, np.where(is_pos, p, 1 - p).tolist())))
        self._loss.add_many((-log_p).tolist())
        self._loss_sq.add_many((log_p * log_p).tolist())
        self.logloss_n += score.size
        bins = np.minimum((score * AUC_BINS).astype(np.int64), AUC_BINS - 1)
        self.pos_hist += np.bincount(bins[is_pos], minlength=AUC_BINS)
        self.neg_hist += np.bincount(bins[~is_pos], minlength=AUC_BINS)

    @property
    def logloss_sum(self) -> float:
        return self._loss.value

    @property
    def logloss_sq(self) -> float:
        return self._loss_sq.value

    def merge(self, other: ClassificationMetrics) -> ClassificationMetrics:
        if other.positive != self.positive:
            raise ValueError(f"cannot merge metrics of positive classes {self.positive!r} "
                             f"and {other.positive!r}")
        out = ClassificationMetrics(self.positive)
        for src in (self, other):
            for k, v in src.confusion.items():
                out.confusion[k] = out.confusion.get(k, 0) + v
        out.n = self.n + other.n
        out._loss = self._loss.merged(other._loss)
        out._loss_sq = self._loss_sq.merged(other._loss_sq)
        out.logloss_n = self.logloss_n + other.logloss_n
        out.pos_hist = self.pos_hist + other.pos_hist
        out.neg_hist = self.neg_hist + other.neg_hist
        return out

    @property
    def correct(self) -> int:
        return sum(v for (a, p), v in self.confusion.items() if a == p)

    @property
    def classes(self) -> list[str]:
        """Every class seen as a label or a prediction, sorted."""
        return sorted({a for a, _ in self.confusion} | {p for _, p in self.confusion})

    def _counts(self, cls: str) -> tuple[int, int, int]:
        """(TP, FP, FN) of one class."""
        tp = self.confusion.get((cls, cls), 0)
        predicted = sum(v for (_, p), v in self.confusion.items() if p == cls)
        actual = sum(v for (a, _), v in self.confusion.items() if a == cls)
        return tp, predicted - tp, actual - tp

    def _proportions(self, name: str) -> list[tuple[int, int]]:
        """The (successes, trials) whose mean proportion is the metric; [] if it has none."""
        if not self.n:
            return []
        if name == "accuracy":
            return [(self.correct, self.n)]
        if name == "macro_f1":
            return [(2 * tp, 2 * tp + fp + fn)
                    for tp, fp, fn in map(self._counts, self.classes)]
        if self.positive is None:
            return []
        tp, fp, fn = self._counts(self.positive)
        return [{"precision": (tp, tp + fp), "recall": (tp, tp + fn),
                 "f1": (2 * tp, 2 * tp + fp + fn)}[name]]

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

    def _check_name(self, name: str) -> None:
        if name not in CLASSIFICATION_METRICS:
            raise ValueError(f"unknown classification metric {name!r}; "
                             f"expected one of {CLASSIFICATION_METRICS}")

    def value(self, name: str) -> float | None:
        """The point value of one metric of ``CLASSIFICATION_METRICS``, None without one.

        A proportion with no trials (precision without positive predictions) is 0.
        """
        self._check_name(name)
        if name == "log_loss":
            return self.logloss_sum / self.logloss_n if self.logloss_n else None
        if name == "roc_auc":
            return self.auc()[0]
        parts = self._proportions(name)
        if not parts:
            return None
        return sum(s / t if t else 0.0 for s, t in parts) / len(parts)

    def interval(self, name: str, z: float = Z) -> Interval | None:
        """Confidence interval of one metric (see the module docstring), None without one."""
        self._check_name(name)
        if name == "log_loss":
            return mean_interval(self.logloss_sum, self.logloss_sq, self.logloss_n, z)
        if name == "roc_auc":
            auc, err = self.auc()
            if auc is None or err is None:
                return None
            pos, neg = int(self.pos_hist.sum()), int(self.neg_hist.sum())
            q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
            var = (auc * (1 - auc) + (pos - 1) * (q1 - auc * auc)
                   + (neg - 1) * (q2 - auc * auc)) / (pos * neg)
            half = z * math.sqrt(max(0.0, var)) + err
            return max(0.0, auc - half), min(1.0, auc + half)
        parts = self._proportions(name)
        if not parts:
            return None
        bounds = [wilson_interval(s, t, z) for s, t in parts]
        return (sum(lo for lo, _ in bounds) / len(bounds),
                sum(hi for _, hi in bounds) / len(bounds))

    def figures(self) -> dict[str, float | None]:
        """Each metric with a value, its ``_low``/``_high`` bounds, and ``roc_auc_error``."""
        if not self.n:
            return {"accuracy": None}
        out: dict[str, float | None] = {}
        for name in CLASSIFICATION_METRICS:
            value = self.value(name)
            if value is None and name != "roc_auc":  # roc_auc is always reported
                continue
            out[name] = value
            if value is not None:
                lo_hi = self.interval(name)
                out[f"{name}_low"], out[f"{name}_high"] = lo_hi or (None, None)
        out["roc_auc_error"] = self.auc()[1]
        return out

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.KIND, "v": self.VERSION, "positive": self.positive,
                "confusion": [[a, p, v] for (a, p), v in self.confusion.items()], "n": self.n,
                "logloss": [self._loss.to_state(), self._loss_sq.to_state(), self.logloss_n],
                "pos": self.pos_hist.tolist(), "neg": self.neg_hist.tolist()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ClassificationMetrics:
        check_state(state, cls.KIND, frozenset({cls.VERSION}))
        try:
            positive = state["positive"]
            if positive is not None and not isinstance(positive, str):
                raise TypeError(f"positive class must be a string, got {positive!r}")
            m = cls(positive)
            m.confusion = {(str(a), str(p)): int(v) for a, p, v in state["confusion"]}
            m.n = int(state["n"])
            total, sq, n = state["logloss"]
            m._loss, m._loss_sq = ExactSum.from_state(total), ExactSum.from_state(sq)
            m.logloss_n = int(n)
            m.pos_hist = np.asarray(state["pos"], dtype=np.int64)
            m.neg_hist = np.asarray(state["neg"], dtype=np.int64)
            if m.pos_hist.shape != (AUC_BINS,) or m.neg_hist.shape != (AUC_BINS,):
                raise ValueError("score histograms have the wrong size")
            if m.n != sum(m.confusion.values()):
                raise ValueError("row count does not match the confusion matrix")
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt classification metrics: {exc!r}") from None
        return m


class RegressionMetrics:
    """Accumulates labelled regression predictions.

    >>> m = RegressionMetrics()
    >>> m.update([(10.0, 12.0), (20.0, 18.0), (0.0, 1.0)])
    >>> f = m.figures()
    >>> round(f["mae"], 3), round(f["rmse"], 3), round(f["mape"], 3)
    (1.667, 1.732, 0.15)
    >>> [round(x, 3) for x in m.interval("mae")]
    [1.013, 2.32]
    """

    KIND = "regression"
    VERSION = 1

    def __init__(self) -> None:
        self.n = 0
        # sums of |e|, e², e⁴, |e / label| and (e / label)² (non-zero labels), exact
        self._sums = {k: ExactSum() for k in ("abs", "sq", "quad", "pct", "pct_sq")}
        self.pct_n = 0

    def update(self, rows: Iterable[tuple[float, float]]) -> None:
        """Add (label, predicted) pairs; non-finite ones are skipped.

        The batch's errors with numpy (IEEE arithmetic: the floats row by row gives), the
        exact sums at once.
        """
        batch = list(rows)
        if not batch:
            return
        labels = np.fromiter(map(float, (r[0] for r in batch)), np.float64, len(batch))
        predicted = np.fromiter(map(float, (r[1] for r in batch)), np.float64, len(batch))
        with np.errstate(all="ignore"):
            err = predicted - labels
            keep = np.isfinite(err)
            err, labels = err[keep], labels[keep]
            sq = err * err
            sums = self._sums
            sums["abs"].add_many(np.abs(err).tolist())
            sums["sq"].add_many(sq.tolist())
            sums["quad"].add_many((sq * sq).tolist())
            nonzero = labels != 0
            pct = np.abs(err[nonzero] / labels[nonzero])
            sums["pct"].add_many(pct.tolist())
            sums["pct_sq"].add_many((pct * pct).tolist())
        self.n += len(err)
        self.pct_n += len(pct)

    def merge(self, other: RegressionMetrics) -> RegressionMetrics:
        out = RegressionMetrics()
        out.n = self.n + other.n
        out._sums = {k: s.merged(other._sums[k]) for k, s in self._sums.items()}
        out.pct_n = self.pct_n + other.pct_n
        return out

    @property
    def abs_sum(self) -> float:
        return self._sums["abs"].value

    @property
    def sq_sum(self) -> float:
        return self._sums["sq"].value

    @property
    def quad_sum(self) -> float:
        return self._sums["quad"].value

    @property
    def pct_sum(self) -> float:
        return self._sums["pct"].value

    @property
    def pct_sq(self) -> float:
        return self._sums["pct_sq"].value

    def value(self, name: str) -> float | None:
        """The point value of one metric of ``REGRESSION_METRICS``, None without one."""
        self._check_name(name)
        if name == "mape":
            return self.pct_sum / self.pct_n if self.pct_n else None
        if not self.n:
            return None
        return self.abs_sum / self.n if name == "mae" else math.sqrt(self.sq_sum / self.n)

    def interval(self, name: str, z: float = Z) -> Interval | None:
        """Confidence interval of one metric (see the module docstring), None without one."""
        self._check_name(name)
        if name == "mae":
            return mean_interval(self.abs_sum, self.sq_sum, self.n, z)
        if name == "mape":
            return mean_interval(self.pct_sum, self.pct_sq, self.pct_n, z)
        mse = mean_interval(self.sq_sum, self.quad_sum, self.n, z)
        return None if mse is None else (math.sqrt(mse[0]), math.sqrt(mse[1]))

    def _check_name(self, name: str) -> None:
        if name not in REGRESSION_METRICS:
            raise ValueError(f"unknown regression metric {name!r}; "
                             f"expected one of {REGRESSION_METRICS}")

    def figures(self) -> dict[str, float | None]:
        """mae, rmse and mape (None without a value), and bounds of those with one."""
        out: dict[str, float | None] = {}
        for name in REGRESSION_METRICS:
            out[name] = value = self.value(name)
            if value is not None:
                out[f"{name}_low"], out[f"{name}_high"] = self.interval(name) or (None, None)
        return out

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.KIND, "v": self.VERSION, "n": self.n,
                "sums": [*(s.to_state() for s in self._sums.values()), self.pct_n]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RegressionMetrics:
        check_state(state, cls.KIND, frozenset({cls.VERSION}))
        try:
            m = cls()
            m.n = int(state["n"])
            *sums, pn = state["sums"]
            if len(sums) != len(m._sums):
                raise ValueError(f"expected {len(m._sums)} sums, got {len(sums)}")
            m._sums = {k: ExactSum.from_state(v) for k, v in zip(m._sums, sums, strict=True)}
            m.pct_n = int(pn)
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt regression metrics: {exc!r}") from None
        return m
