import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from app.errors import StateError
from app.performance import ClassificationMetrics, RegressionMetrics
from app.performance.exactsum import ExactSum
from app.performance.metrics import (
    AUC_BINS,
    CLASSIFICATION_METRICS,
    EPS,
    HIGHER_IS_BETTER,
    REGRESSION_METRICS,
    as_class,
    mean_interval,
    wilson_interval,
)


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


def round_trip(m):
    return type(m).from_state(orjson.loads(orjson.dumps(m.to_state())))


def assert_same_figures(got, want, rel=1e-6):
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert (got[k] is None) == (v is None), k
        if v is not None:
            assert got[k] == pytest.approx(v, rel=rel, abs=1e-12), k


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
    again = round_trip(whole)
    assert again.figures() == whole.figures()
    with pytest.raises(StateError, match="version 3 is not supported"):
        ClassificationMetrics.from_state({**whole.to_state(), "v": 3})


def test_labels_compare_as_categories():
    # booleans are the classes "1" and "0"; numbers as categories; strings as they are
    m = ClassificationMetrics(positive="1")
    m.update([(True, 1, 0.9), (1.0, True, 0.8), ("1", np.True_, None),
              (False, 0, 0.1), (0.0, np.False_, None), (np.int64(0), "0", None)])
    assert m.figures()["accuracy"] == 1.0
    assert m.classes == ["0", "1"]
    assert m.figures()["precision"] == m.figures()["recall"] == 1.0
    m.update([(True, "true", None)])  # the string "true" is a class of its own
    assert m.correct == 6 and m.classes == ["0", "1", "true"]


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
    again = round_trip(m)
    assert again.figures() == f


# -- agreement with scikit-learn ---------------------------------------------------------


def scored_binary(seed, n=3000):
    """Labels, predictions and positive-class scores strictly inside (0, 1)."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.35
    s = 1 / (1 + np.exp(-(rng.normal(0, 1.2, n) + np.where(y, 1.0, -1.0))))
    return y, s >= 0.5, s


@pytest.mark.parametrize("as_bool", [False, True])
def test_binary_figures_equal_scikit_learn(as_bool):
    y, pred, s = scored_binary(10 + as_bool)
    if not as_bool:
        y, pred = y.astype(int), pred.astype(int)
    pos = True if as_bool else 1
    m = ClassificationMetrics(positive="1")
    m.update(zip(y.tolist(), pred.tolist(), s.tolist(), strict=True))
    f = m.figures()
    assert f["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-9)
    assert f["precision"] == pytest.approx(skm.precision_score(y, pred, pos_label=pos), abs=1e-9)
    assert f["recall"] == pytest.approx(skm.recall_score(y, pred, pos_label=pos), abs=1e-9)
    assert f["f1"] == pytest.approx(skm.f1_score(y, pred, pos_label=pos), abs=1e-9)
    assert f["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-9)
    assert f["log_loss"] == pytest.approx(skm.log_loss(y, s), abs=1e-9)
    assert abs(f["roc_auc"] - skm.roc_auc_score(y, s)) <= f["roc_auc_error"] + 1e-9
    assert 0 < f["roc_auc_error"] < 0.01


def test_multiclass_figures_equal_scikit_learn():
    rng = np.random.default_rng(12)
    labels = np.array(["cat", "dog", "eel", "fox"])
    y = rng.choice(labels, 4000, p=[0.4, 0.3, 0.2, 0.1])
    pred = np.where(rng.random(4000) < 0.6, y, rng.choice(labels, 4000))
    m = ClassificationMetrics(positive="eel")
    m.update((a, p, None) for a, p in zip(y.tolist(), pred.tolist(), strict=True))
    f = m.figures()
    one = {"labels": ["eel"], "average": None}
    assert f["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-9)
    assert f["precision"] == pytest.approx(skm.precision_score(y, pred, **one)[0], abs=1e-9)
    assert f["recall"] == pytest.approx(skm.recall_score(y, pred, **one)[0], abs=1e-9)
    assert f["f1"] == pytest.approx(skm.f1_score(y, pred, **one)[0], abs=1e-9)
    assert f["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-9)
    assert f["roc_auc"] is None and m.interval("roc_auc") is None


def test_regression_figures_equal_scikit_learn():
    rng = np.random.default_rng(13)
    y = rng.choice([-1, 1], 3000) * rng.uniform(5, 50, 3000)  # non-zero labels
    p = y + rng.standard_t(4, 3000) * 3
    m = RegressionMetrics()
    m.update(zip(y.tolist(), p.tolist(), strict=True))
    f = m.figures()
    assert f["mae"] == pytest.approx(skm.mean_absolute_error(y, p), abs=1e-9)
    assert f["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, p)), abs=1e-9)
    assert f["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y, p), abs=1e-9)


# -- intervals ---------------------------------------------------------------------------


def normal_bounds(values, z=1.96):
    mean, half = values.mean(), z * values.std(ddof=1) / math.sqrt(values.size)
    return max(0.0, mean - half), mean + half


def test_classification_intervals_follow_their_formulas():
    y, pred, s = scored_binary(20, 2000)
    m = ClassificationMetrics(positive="1")
    m.update(zip(y.tolist(), pred.tolist(), s.tolist(), strict=True))
    f = m.figures()
    tp, fp, fn = (int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum()))
    assert m.interval("accuracy") == wilson_interval(int((pred == y).sum()), y.size)
    assert m.interval("precision") == wilson_interval(tp, tp + fp)
    assert m.interval("recall") == wilson_interval(tp, tp + fn)
    assert m.interval("f1") == wilson_interval(2 * tp, 2 * tp + fp + fn)
    tn = y.size - tp - fp - fn
    neg_f1 = wilson_interval(2 * tn, 2 * tn + fp + fn)
    assert m.interval("macro_f1") == pytest.approx(
        ((neg_f1[0] + f["f1_low"]) / 2, (neg_f1[1] + f["f1_high"]) / 2), rel=1e-12)
    losses = -np.log(np.where(y, s, 1 - s))
    assert m.interval("log_loss") == pytest.approx(normal_bounds(losses), rel=1e-9)
    auc, err, npos, nneg = f["roc_auc"], f["roc_auc_error"], int(y.sum()), int((~y).sum())
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    se = math.sqrt((auc * (1 - auc) + (npos - 1) * (q1 - auc**2) + (nneg - 1) * (q2 - auc**2))
                   / (npos * nneg))
    assert m.interval("roc_auc") == pytest.approx(
        (auc - 1.96 * se - err, min(1.0, auc + 1.96 * se + err)), rel=1e-12)
    for name in CLASSIFICATION_METRICS:
        assert (f[f"{name}_low"], f[f"{name}_high"]) == m.interval(name)
        assert f[f"{name}_low"] <= f[name] <= f[f"{name}_high"]
    assert m.interval("accuracy", z=2.58)[0] < f["accuracy_low"]


def test_regression_intervals_follow_their_formulas():
    rng = np.random.default_rng(21)
    y = rng.uniform(10, 20, 500)
    e = rng.normal(0.5, 2, 500)
    m = RegressionMetrics()
    m.update(zip(y.tolist(), (y + e).tolist(), strict=True))
    f = m.figures()
    assert m.interval("mae") == pytest.approx(normal_bounds(np.abs(e)), rel=1e-9)
    assert m.interval("mape") == pytest.approx(normal_bounds(np.abs(e / y)), rel=1e-9)
    assert m.interval("rmse") == pytest.approx(np.sqrt(normal_bounds(e**2)), rel=1e-9)
    for name in REGRESSION_METRICS:
        assert f[f"{name}_low"] < f[name] < f[f"{name}_high"]


def test_intervals_without_data():
    c, r = ClassificationMetrics(positive="1"), RegressionMetrics()
    assert c.figures() == {"accuracy": None}
    assert r.figures() == {"mae": None, "rmse": None, "mape": None}
    assert all(c.interval(n) is None for n in CLASSIFICATION_METRICS)
    assert all(r.interval(n) is None for n in REGRESSION_METRICS)
    c.update([(1, 1, 0.7)])  # one row: no normal interval for the log loss, no AUC
    f = c.figures()
    assert f["log_loss"] is not None and f["log_loss_low"] is f["log_loss_high"] is None
    assert f["roc_auc"] is None and "roc_auc_low" not in f
    assert f["accuracy_low"] < 1.0 == f["accuracy_high"]
    r.update([(0.0, 1.0), (0.0, 3.0)])  # no MAPE over zero labels only
    assert r.figures()["mape"] is None and "mape_low" not in r.figures()
    assert r.interval("mae") == pytest.approx((2 - 1.96, 2 + 1.96))  # |e| = 1, 3: s/√n = 1
    with pytest.raises(ValueError, match="unknown classification metric 'mae'"):
        c.interval("mae")
    with pytest.raises(ValueError, match="unknown regression metric 'f1'"):
        r.interval("f1")


def test_precision_without_positive_predictions_spans_everything():
    m = ClassificationMetrics(positive="1")
    m.update([(1, 0, None), (0, 0, None)])
    f = m.figures()
    assert (f["precision"], f["precision_low"], f["precision_high"]) == (0.0, 0.0, 1.0)


def test_metric_names():
    assert set(HIGHER_IS_BETTER) == set(CLASSIFICATION_METRICS) | set(REGRESSION_METRICS)
    assert [n for n, up in HIGHER_IS_BETTER.items() if not up] == [
        "log_loss", "mae", "rmse", "mape"]


def test_mean_interval_edges():
    assert mean_interval(1.0, 1.0, 1) is None
    assert mean_interval(6.0, 12.0, 3) == (2.0, 2.0)  # no spread
    assert mean_interval(1e308, math.inf, 2) is None


def test_accuracy_interval_covers_the_true_rate():
    rng = np.random.default_rng(30)
    hits = 0
    for correct in rng.random((300, 400)) < 0.88:
        m = ClassificationMetrics()
        m.update((1, int(c), None) for c in correct.tolist())
        lo, hi = m.interval("accuracy")
        hits += lo <= 0.88 <= hi
    assert 0.90 <= hits / 300 <= 0.99


def test_mae_and_rmse_intervals_cover_the_true_values():
    rng = np.random.default_rng(31)
    sigma = 2.0
    true_mae, true_rmse = sigma * math.sqrt(2 / math.pi), sigma  # of N(0, sigma²) errors
    mae_hits = rmse_hits = 0
    for e in rng.normal(0, sigma, (300, 400)):
        m = RegressionMetrics()
        m.update(zip([10.0] * e.size, (10.0 + e).tolist(), strict=True))
        lo, hi = m.interval("mae")
        mae_hits += lo <= true_mae <= hi
        lo, hi = m.interval("rmse")
        rmse_hits += lo <= true_rmse <= hi
    assert 0.90 <= mae_hits / 300 <= 0.99
    assert 0.90 <= rmse_hits / 300 <= 0.99


# -- merging and state -------------------------------------------------------------------

labels = st.sampled_from([True, False, 0, 1, 2.0, "a"])
scores = st.none() | st.floats(0, 1)
class_rows = st.lists(st.tuples(labels, labels, scores), max_size=60)
values = st.floats(-1e6, 1e6, allow_nan=False)
regression_rows = st.lists(st.tuples(values, values), max_size=60)


@settings(max_examples=60, deadline=None)
@given(class_rows, st.data())
def test_merged_classification_halves_equal_one_pass(rows, data):
    cut = data.draw(st.integers(0, len(rows)))
    a, b, whole = (ClassificationMetrics(positive="1") for _ in range(3))
    a.update(rows[:cut])
    b.update(rows[cut:])
    whole.update(rows)
    merged = a.merge(b)
    assert merged.confusion == whole.confusion and merged.n == whole.n
    assert_same_figures(merged.figures(), whole.figures())
    again = round_trip(merged)
    assert again.to_state() == merged.to_state() and again.figures() == merged.figures()


@settings(max_examples=60, deadline=None)
@given(regression_rows, st.data())
def test_merged_regression_halves_equal_one_pass(rows, data):
    cut = data.draw(st.integers(0, len(rows)))
    a, b, whole = RegressionMetrics(), RegressionMetrics(), RegressionMetrics()
    a.update(rows[:cut])
    b.update(rows[cut:])
    whole.update(rows)
    merged = a.merge(b)
    assert_same_figures(merged.figures(), whole.figures())
    again = round_trip(merged)
    assert again.to_state() == merged.to_state() and again.figures() == merged.figures()


def test_overflowed_sums_round_trip_and_have_no_interval():
    m = RegressionMetrics()
    m.update([(1e-200, 1.0), (1.0, 1e100), (2.0, 3.0)])  # |e/y|² and e⁴ overflow
    again = round_trip(m)
    assert again.pct_sq == again.quad_sum == math.inf
    assert again.to_state() == m.to_state() and again.figures() == m.figures()
    assert m.interval("mape") is m.interval("rmse") is None
    assert m.figures()["mae_low"] is not None


def test_merge_needs_the_same_positive_class():
    with pytest.raises(ValueError, match="positive classes"):
        ClassificationMetrics("1").merge(ClassificationMetrics("a"))


def test_bad_states_fail_clearly():
    c, r = ClassificationMetrics(positive="1"), RegressionMetrics()
    c.update([(1, 1, 0.9), (0, 1, 0.3)])
    r.update([(1.0, 2.0)])
    with pytest.raises(StateError, match="regression state version 2 is not supported"):
        RegressionMetrics.from_state({**r.to_state(), "v": 2})
    with pytest.raises(StateError, match="expected a 'regression' state"):
        RegressionMetrics.from_state(c.to_state())
    with pytest.raises(StateError, match="corrupt classification metrics"):
        ClassificationMetrics.from_state({**c.to_state(), "logloss": [1.0, 2]})
    with pytest.raises(StateError, match="corrupt classification metrics"):
        ClassificationMetrics.from_state({**c.to_state(), "n": 3})
    with pytest.raises(StateError, match="corrupt classification metrics"):
        ClassificationMetrics.from_state({**c.to_state(), "positive": 1})
    with pytest.raises(StateError, match="corrupt regression metrics"):
        RegressionMetrics.from_state({**r.to_state(), "sums": [1.0, 1.0, 1.0, 1]})


@pytest.mark.parametrize("values", [
    [True, False, True], ["yes", "no"], [True, 1, "1", 0.0, 2.5, None], [1, 0], [],
])
def test_kept_classes_of_a_batch_equal_the_per_value_rule(values):
    """The whole-batch shortcuts (all booleans, all strings) keep what ``as_class`` does."""
    from app.performance.tracker import PerformanceTracker

    tracker = PerformanceTracker.__new__(PerformanceTracker)
    tracker.task, tracker._strings = "binary_classification", {}
    assert tracker._kept_all(list(values)) == [as_class(v) for v in values]


@pytest.mark.parametrize("scores", [
    [{"1": 0.25}, {"1": 0.75}], [{"1": 0.5}, None, {}, {"0": 0.3}], [{"1": 1}, {"1": 0}],
    [{"1": float("inf")}, {"1": 0.5}], [{"1": 1e308}, {"1": 1e308}], [{"1": "x"}, {"1": True}],
])
def test_scores_of_a_batch_are_finite_floats_or_none(scores):
    from app.performance.tracker import _number, _scores

    events = [{"scores": s} if s is not None else {} for s in scores]
    expected = [_number((s or {}).get("1")) for s in scores]
    assert _scores(events, "1") == expected
    assert all(v is None or type(v) is float for v in _scores(events, "1"))


def _update_row_by_row(m, rows):
    """The classification update written out per row (the oracle of the batch update)."""
    for label, predicted, score in rows:
        key = (as_class(label), as_class(predicted))
        m.confusion[key] = m.confusion.get(key, 0) + 1
        m.n += 1
        if score is not None and m.positive is not None and 0.0 <= score <= 1.0:
            is_pos = key[0] == m.positive
            p = min(max(score, EPS), 1 - EPS)
            loss = -math.log(p if is_pos else 1 - p)
            m._loss.add(loss)
            m._loss_sq.add(loss * loss)
            m.logloss_n += 1
            b = min(int(score * AUC_BINS), AUC_BINS - 1)
            (m.pos_hist if is_pos else m.neg_hist)[b] += 1


_CLASSES = st.sampled_from([True, False, 0, 1, 1.0, "1", "0", "cat", 2])
_SCORES = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                    st.floats(0, 1), st.sampled_from([0, 1, 0.0, 1.0, 1e-300, 1 - 1e-16]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(_CLASSES, _CLASSES, _SCORES), max_size=30), max_size=5),
       st.sampled_from(["1", "0", None]))
def test_a_batch_update_equals_the_rows_one_by_one(batches, positive):
    batch, oracle = ClassificationMetrics(positive), ClassificationMetrics(positive)
    for rows in batches:
        batch.update(iter(rows))
        _update_row_by_row(oracle, rows)
    _assert_same_metrics(batch, oracle)


_FLOAT_SCORES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1),
                         st.sampled_from([0.0, -0.0, 1.0, 1e-300, 1 - 1e-16]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(_CLASSES, _CLASSES, _FLOAT_SCORES), max_size=30),
                max_size=5), st.sampled_from(["1", "0"]))
def test_columns_of_float_scores_equal_the_rows_one_by_one(batches, positive):
    """Every score a float (the usual batch): the scores are checked with numpy, NaN,
    infinities and values out of [0, 1] left out as row by row leaves them."""
    batch, oracle = ClassificationMetrics(positive), ClassificationMetrics(positive)
    for rows in batches:
        columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[], [], []]
        batch.update_columns(*columns)
        _update_row_by_row(oracle, rows)
    _assert_same_metrics(batch, oracle)


def _assert_same_metrics(batch, oracle):
    assert list(batch.confusion.items()) == list(oracle.confusion.items())
    assert (batch.n, batch.logloss_n) == (oracle.n, oracle.logloss_n)
    assert _same(batch.logloss_sum, oracle.logloss_sum)
    assert _same(batch.logloss_sq, oracle.logloss_sq)
    assert batch.pos_hist.tolist() == oracle.pos_hist.tolist()
    assert batch.neg_hist.tolist() == oracle.neg_hist.tolist()


def _same(a, b):
    """Equal floats, the sign of zero and NaN included."""
    return (math.isnan(a) and math.isnan(b)) or (
        a == b and math.copysign(1, a) == math.copysign(1, b))


def _regression_row_by_row(m, rows):
    """The regression update written out per row (the oracle of the batch update)."""
    for label, predicted in rows:
        err = float(predicted) - float(label)
        if not math.isfinite(err):
            continue
        m.n += 1
        m._sums["abs"].add(abs(err))
        m._sums["sq"].add(err * err)
        m._sums["quad"].add(err * err * (err * err))
        if label != 0:
            pct = abs(err / float(label))
            m._sums["pct"].add(pct)
            m._sums["pct_sq"].add(pct * pct)
            m.pct_n += 1


_REALS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                   st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, 1e-300]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(_REALS, _REALS), max_size=30), max_size=5))
def test_a_regression_batch_equals_the_rows_one_by_one(batches):
    batch, oracle = RegressionMetrics(), RegressionMetrics()
    for rows in batches:
        batch.update(iter(rows))
        _regression_row_by_row(oracle, rows)
    assert (batch.n, batch.pct_n) == (oracle.n, oracle.pct_n)
    for key in batch._sums:
        assert _same(batch._sums[key].value, oracle._sums[key].value), key


_TERMS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, 1e16, -1e16, 1.0]))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(_TERMS, max_size=20), max_size=4), st.lists(_TERMS, max_size=3))
def test_adding_many_terms_at_once_is_the_exact_sum_of_adding_them_one_by_one(batches, after):
    """ExactSum.add_many: the same value as add, term by term, whatever came before and
    comes after it (zero's sign, infinities, NaN and overflows included), and through a
    state round trip and a merge."""
    many, one = ExactSum(), ExactSum()
    for terms in batches:
        many.add_many(terms)
        for x in terms:
            one.add(x)
        assert _same(many.value, one.value)
    for x in after:
        many.add(x)
        one.add(x)
    assert _same(many.value, one.value)
    if math.isfinite(many.value):
        restored = ExactSum.from_state(orjson.loads(orjson.dumps(many.to_state())))
        assert _same(restored.value, one.value)
        assert _same(restored.merged(one).value, one.merged(one).value)
