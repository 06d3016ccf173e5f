import numpy as np
import orjson
import pytest

from app.errors import StateError
from app.performance import ClassificationMetrics, RegressionMetrics


def binary(seed=0, n=5000):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    s = np.clip(np.where(y, rng.normal(0.65, 0.2, n), rng.normal(0.35, 0.2, n)), 0, 1)
    return y.astype(int), s


def exact_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (pos.size * neg.size)


def test_binary_figures_equal_direct_formulas():
    y, s = binary()
    pred = (s >= 0.5).astype(int)
    m = ClassificationMetrics(positive="1")
    m.update(zip(y.tolist(), pred.tolist(), s.tolist(), strict=True))
    f = m.figures()
    tp = int(((pred == 1) & (y == 1)).sum())
    precision, recall = tp / (pred == 1).sum(), tp / (y == 1).sum()
    assert f["accuracy"] == pytest.approx((pred == y).mean())
    assert f["precision"] == pytest.approx(precision)
    assert f["recall"] == pytest.approx(recall)
    assert f["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    p = np.clip(s, 1e-15, 1 - 1e-15)
    assert f["log_loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert abs(f["roc_auc"] - exact_auc(y, s)) <= f["roc_auc_error"] + 1e-12
    assert f["roc_auc_error"] < 0.01
    assert f["accuracy_low"] < f["accuracy"] < f["accuracy_high"]


def test_multiclass_macro_f1():
    rng = np.random.default_rng(1)
    y = rng.choice(["a", "b", "c"], 3000)
    pred = np.where(rng.random(3000) < 0.7, y, rng.choice(["a", "b", "c"], 3000))
    m = ClassificationMetrics()
    m.update((a, p, None) for a, p in zip(y.tolist(), pred.tolist(), strict=True))
    f1s = []
    for c in "abc":
        tp = ((pred == c) & (y == c)).sum()
        pr, rc = tp / (pred == c).sum(), tp / (y == c).sum()
        f1s.append(2 * pr * rc / (pr + rc))
    assert m.figures()["macro_f1"] == pytest.approx(np.mean(f1s))
    assert "log_loss" not in m.figures()


def test_merge_of_halves_equals_the_whole_and_state_round_trips():
    y, s = binary(2, 2000)
    rows = list(zip(y.tolist(), (s >= 0.5).astype(int).tolist(), s.tolist(), strict=True))
    a, b, whole = (ClassificationMetrics(positive="1") for _ in range(3))
    a.update(rows[:700])
    b.update(rows[700:])
    whole.update(rows)
    assert a.merge(b).figures() == pytest.approx(whole.figures(), rel=1e-12)  # float sums
    again = ClassificationMetrics.from_state(orjson.loads(orjson.dumps(whole.to_state())))
    assert again.figures() == whole.figures()
    with pytest.raises(StateError, match="version 3 is not supported"):
        ClassificationMetrics.from_state({**whole.to_state(), "v": 3})


def test_labels_compare_as_categories():
    m = ClassificationMetrics(positive="true")
    m.update([(True, True, 0.9), ("true", 1 == 1, 0.8), (1.0, "1", None)])
    assert m.figures()["accuracy"] == 1.0


def test_regression_figures():
    rng = np.random.default_rng(3)
    y = rng.normal(100, 20, 1000)
    p = y + rng.normal(0, 5, 1000)
    m = RegressionMetrics()
    m.update(zip(y.tolist(), p.tolist(), strict=True))
    f = m.figures()
    assert f["mae"] == pytest.approx(np.abs(p - y).mean())
    assert f["rmse"] == pytest.approx(np.sqrt(((p - y) ** 2).mean()))
    assert f["mape"] == pytest.approx(np.abs((p - y) / y).mean())
    again = RegressionMetrics.from_state(orjson.loads(orjson.dumps(m.to_state())))
    assert again.figures() == f
