import numpy as np
import orjson
import pytest

from app.quality.counts import QualityCounts
from app.quality.rules import QualityFinding, QualityRules, evaluate
from app.reference import Reference, build_reference
from app.settings import ModelSettings

FEATURES = {
    "tenure_months": {"type": "numeric"},
    "monthly_charges": {"type": "numeric"},
    "plan": {"type": "categorical"},
    "region": {"type": "categorical", "values": ["emea", "amer", "apac"]},
}


def model(features=None, **extra):
    return ModelSettings.model_validate(
        {"features": features or FEATURES, "reference": {"warmup": 100}, **extra})


def events(n, seed):
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 73, n)
    charges = rng.normal(70.0, 20.0, n)
    plan = rng.choice(["basic", "standard", "premium"], n, p=(0.5, 0.3, 0.2))
    region = rng.choice(["emea", "amer", "apac"], n)
    return [{"tenure_months": int(tenure[i]), "monthly_charges": float(charges[i]),
             "plan": str(plan[i]), "region": str(region[i])} for i in range(n)]


@pytest.fixture(scope="module")
def reference():
    return build_reference(events(5000, seed=1), "churn", model(), origin="test")


def judged(rules, batch, min_samples=200):
    counts = rules.new_counts()
    counts.update(batch, rules.ranges, rules.allowed)
    return evaluate(counts, rules, min_samples=min_samples)


# -- building ---------------------------------------------------------------------------

def test_rules_from_configuration_alone():
    m = model({"age": {"type": "numeric", "range": [0, 120]}, "income": {"type": "numeric"},
               "plan": {"type": "categorical", "values": ["free", "pro"]},
               "city": {"type": "categorical"}},
              quality={"max_null_rate": 0.02, "max_unexpected_rate": 0.03,
                       "critical_factor": 2.0})
    rules = QualityRules.build(m, None)
    assert rules.ranges == {"age": (0.0, 120.0)}
    assert rules.allowed == {"plan": frozenset({"free", "pro"})}
    assert rules.kinds == {"age": "numeric", "income": "numeric", "plan": "categorical",
                           "city": "categorical"}
    age = rules.features["age"]
    assert age.range_source == "configured" and rules.features["income"].range is None
    assert rules.features["plan"].allowed_source == "configured"
    assert rules.features["city"].allowed is None
    assert dict(age.thresholds) == {"null": 0.02, "type": 0.01, "out_of_range": 0.01,
                                    "unseen": 0.05, "missing": 0.01}
    assert rules.unexpected_threshold == 0.03 and rules.critical_factor == 2.0


def test_range_and_vocabulary_learned_from_the_reference(reference):
    rules = QualityRules.build(model(), reference)
    rows = events(5000, seed=1)
    for name in ("tenure_months", "monthly_charges"):
        seen = [r[name] for r in rows]
        lo, hi, span = min(seen), max(seen), max(seen) - min(seen)
        rule = rules.features[name]
        assert rule.range_source == "reference"
        got_lo, got_hi = rule.range
        # the observed extremes widened by 10 % of the span, up to the sketch's buckets
        # (edges within about 2 % of a value, and the span widened with them)
        slack = 1.1 * 0.021 * max(abs(lo), abs(hi)) + 1e-6
        assert lo - 0.1 * span - slack <= got_lo <= lo - 0.1 * span
        assert hi + 0.1 * span <= got_hi <= hi + 0.1 * span + slack
    assert rules.allowed["plan"] == frozenset({"basic", "standard", "premium"})
    assert rules.features["plan"].allowed_source == "reference"
    assert rules.allowed["region"] == frozenset({"emea", "amer", "apac"})  # configured wins
    assert rules.features["region"].allowed_source == "configured"
    assert all(r.thresholds["null"] == 0.05 for r in rules.features.values())  # no nulls


def test_configured_range_wins_over_the_reference(reference):
    feats = {**FEATURES, "tenure_months": {"type": "numeric", "range": [0, 600]}}
    rules = QualityRules.build(model(feats), reference)
    assert rules.ranges["tenure_months"] == (0.0, 600.0)


def test_null_threshold_from_a_reference_with_nulls():
    rows = events(2000, seed=3)
    for r in rows[::10]:  # 10 % null charges
        r["monthly_charges"] = None
    for r in rows[::50]:  # 2 % without a plan
        del r["plan"]
    ref = build_reference(rows, "churn", model(), origin="test")
    saved = Reference.from_dict(orjson.loads(orjson.dumps(ref.to_dict())))
    assert saved.features["monthly_charges"].null_rate == pytest.approx(0.1)
    rules = QualityRules.build(model(quality={"max_null_rate": 0.05}), saved)
    assert rules.features["monthly_charges"].thresholds["null"] == pytest.approx(0.21)
    assert rules.features["plan"].thresholds["null"] == 0.05  # 2 x 2 % + 1 % < 5 %
    assert rules.features["tenure_months"].thresholds["null"] == 0.05
    # the live window nulls as often as the reference did: nothing to report
    live = events(2000, seed=4)
    for r in live[::10]:
        r["monthly_charges"] = None
    assert judged(rules, live) == []


def test_unseen_threshold_allows_for_a_cut_vocabulary():
    rng = np.random.default_rng(5)
    rows = [{"city": f"c{int(v)}"} for v in rng.integers(0, 40, 4000)]
    m = model({"city": {"type": "categorical"}}, drift={"max_categories": 30})
    ref = build_reference(rows, "m", m, origin="test")
    rules = QualityRules.build(m, ref)
    assert len(rules.allowed["city"]) == 30
    other = ref.features["city"].counts[-1] / 4000  # about 1/4 outside the vocabulary
    assert rules.features["city"].thresholds["unseen"] == pytest.approx(2 * other + 0.01)
    live = [{"city": f"c{int(v)}"} for v in rng.integers(0, 40, 2000)]
    assert judged(rules, live) == []
    assert [f.rule for f in judged(rules, [{"city": "elsewhere"}] * 2000)] == ["unseen"]


# -- judging ----------------------------------------------------------------------------

def test_clean_batch_gives_no_finding(reference):
    rules = QualityRules.build(model(), reference)
    assert judged(rules, events(2000, seed=2)) == []


def test_injected_nulls_give_exactly_one_null_finding(reference):
    rules = QualityRules.build(model(), reference)
    batch = events(2000, seed=2)
    rng = np.random.default_rng(7)
    for i in rng.choice(2000, size=600, replace=False):
        batch[i]["monthly_charges"] = None
    assert judged(rules, batch) == [QualityFinding(
        rule="null", feature="monthly_charges", rate=0.3, threshold=0.05, count=600, n=2000,
        severity="critical", detail="30.0% null (threshold 5%)")]


def test_renamed_feature_is_missing_and_unexpected(reference):
    rules = QualityRules.build(model(), reference)
    batch = events(2000, seed=2)
    for r in batch:
        r["tenure"] = r.pop("tenure_months")
    findings = judged(rules, batch)
    assert [(f.rule, f.feature, f.severity) for f in findings] == [
        ("missing", "tenure_months", "critical"), ("unexpected", None, "critical")]
    missing, unexpected = findings
    assert (missing.count, missing.rate) == (2000, 1.0)
    assert missing.detail == "100.0% missing (threshold 1%)"
    assert unexpected.count == 2000
    assert "tenure (2000)" in unexpected.detail


def test_nothing_below_min_samples_or_when_disabled(reference):
    batch = [{**r, "monthly_charges": None} for r in events(150, seed=2)]
    rules = QualityRules.build(model(), reference)
    assert judged(rules, batch, min_samples=200) == []
    assert [f.rule for f in judged(rules, batch, min_samples=150)] == ["null"]
    off = QualityRules.build(model(quality={"enabled": False}), reference)
    assert judged(off, batch, min_samples=1) == []
    assert judged(rules, [], min_samples=0) == []


@pytest.mark.parametrize(("nulls", "severity"), [
    (5, None), (6, "warning"), (14, "warning"), (15, "critical"), (100, "critical")])
def test_threshold_is_strict_and_critical_at_three_times_or_ten_points(nulls, severity):
    rules = QualityRules.build(model({"x": {"type": "numeric"}}), None)
    batch = [{"x": None}] * nulls + [{"x": 1.0}] * (100 - nulls)
    findings = judged(rules, batch, min_samples=100)
    assert [f.severity for f in findings] == ([severity] if severity else [])


def test_critical_needs_ten_points_above_a_small_threshold():
    rules = QualityRules.build(model({"x": {"type": "numeric"}},
                                     quality={"max_missing_rate": 0.01}), None)
    batch = [{}] * 5 + [{"x": 1.0}] * 95  # 5 % > 3 x 1 %, but below 1 % + 10 points
    [finding] = judged(rules, batch, min_samples=1)
    assert (finding.rule, finding.severity) == ("missing", "warning")


def test_every_rule_and_the_sort_order():
    m = model({"b": {"type": "numeric", "range": [0, 1]},
               "a": {"type": "categorical", "values": ["x"]}})
    rules = QualityRules.build(m, None)
    batch = ([{"a": "x", "b": 0.5}] * 50 + [{"a": "y", "b": 2}] * 10 + [{"a": [1], "b": "s"}] * 10
             + [{"b": None, "extra": 1}] * 10 + [{"a": "x", "b": 0.5, "extra": 2}] * 20)
    findings = judged(rules, batch, min_samples=1)
    assert [(f.feature, f.rule) for f in findings] == [
        ("a", "missing"), ("a", "type"), ("a", "unseen"),
        ("b", "null"), ("b", "out_of_range"), ("b", "type"), (None, "unexpected")]
    details = {(f.feature, f.rule): f.detail for f in findings}
    assert details["a", "type"] == "10.0% not a scalar (threshold 1%)"
    assert details["a", "unseen"] == "10.0% outside the 1 known values (threshold 5%)"
    assert details["b", "out_of_range"] == "10.0% outside [0, 1] (threshold 1%)"
    assert details["b", "type"] == "10.0% not a number (threshold 1%)"
    assert details[None, "unexpected"] == (
        "30.0% of events carry unconfigured features: extra (30) (threshold 1%)")


def test_counts_and_rules_must_cover_the_same_features():
    rules = QualityRules.build(model({"x": {"type": "numeric"}}), None)
    with pytest.raises(ValueError, match="counts cover features"):
        evaluate(QualityCounts({"y": "numeric"}), rules, min_samples=1)
    with pytest.raises(ValueError, match="min_samples must be"):
        evaluate(rules.new_counts(), rules, min_samples=-1)
