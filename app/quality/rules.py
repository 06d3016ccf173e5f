"""Data-quality rules of a model, and their judgement of a window's counts.

:meth:`QualityRules.build` fixes, per feature, the range of a numeric feature and the
allowed values of a categorical one (configured, else learned from the reference) and
the rate thresholds of each rule (``model.quality``, the null and unseen thresholds
raised where the reference itself had nulls or values outside its vocabulary).
:func:`evaluate` turns a window's :class:`~app.quality.counts.QualityCounts` into
findings: one per rule whose rate exceeds its threshold.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from app.quality.counts import QualityCounts
from app.reference import CategoricalReference, NumericReference, Reference
from app.settings import FeatureSettings, ModelSettings, QualitySettings

#: Rule names, as findings carry them.
RULES = ("null", "type", "out_of_range", "unseen", "missing", "unexpected")
#: The counter (see ``app.quality.counts.COUNTERS``) each per-feature rule judges.
RULE_COUNTERS = {"null": "null", "type": "type_error", "out_of_range": "out_of_range",
                 "unseen": "unseen", "missing": "missing"}
CRITICAL_MARGIN = 0.10  # critical at least this many points above the threshold
RATE_TOLERANCE = 1e-9  # 3 x 0.05 is 0.15000000000000002: 15 % of events is critical


@dataclass(frozen=True)
class FeatureRule:
    """What one feature is judged against.

    ``thresholds``: the highest acceptable rate per rule (``null``, ``type``,
    ``out_of_range``, ``unseen``, ``missing``). ``range`` (numeric) and ``allowed``
    (categorical) are None when neither configured nor learned (no reference); their
    ``*_source`` is ``"configured"``, ``"reference"`` or None.
    """

    kind: str
    thresholds: Mapping[str, float]
    range: tuple[float, float] | None = None
    range_source: str | None = None
    allowed: frozenset[str] | None = None
    allowed_source: str | None = None


@dataclass(frozen=True)
class QualityRules:
    """A model's data-quality rules: per feature, and ``unexpected_threshold`` per event.

    Examples
    --------
    >>> from app.settings import ModelSettings
    >>> model = ModelSettings.model_validate({"reference": {"warmup": 100}, "features": {
    ...     "age": {"type": "numeric", "range": [0, 120]},
    ...     "plan": {"type": "categorical", "values": ["free", "pro"]}}})
    >>> rules = QualityRules.build(model, None)
    >>> rules.ranges, sorted(rules.allowed["plan"])
    ({'age': (0.0, 120.0)}, ['free', 'pro'])
    >>> counts = rules.new_counts()
    >>> batch = [{"age": 30 if i % 4 else None, "plan": "pro"} for i in range(400)]
    >>> counts.update(batch, rules.ranges, rules.allowed)
    >>> [(f.rule, f.feature, f.severity, f.detail)
    ...  for f in evaluate(counts, rules, min_samples=200)]
    [('null', 'age', 'critical', '25.0% null (threshold 5%)')]
    """

    features: Mapping[str, FeatureRule]
    unexpected_threshold: float
    critical_factor: float = 3.0
    enabled: bool = True

    @classmethod
    def build(cls, model: ModelSettings, reference: Reference | None) -> QualityRules:
        """The rules of ``model``, learning what the configuration leaves open from
        ``reference`` (None: nothing learned).

        - range of a numeric feature: the configured ``range``; else the reference's
          observed extremes, read from its quantile sketch (``NumericReference.
          distribution``: the lower edge of its lowest occupied bucket and the upper
          edge of its highest: they contain the observed minimum and maximum, each
          within a factor ``(1 + alpha) / (1 - alpha)``, about 2 %, of it), widened on
          each side by ``range_margin`` x their span.
        - allowed values of a categorical feature: the configured ``values``; else the
          reference's vocabulary (its ``max_categories`` most frequent values).
        - null threshold: ``max_null_rate``, or ``2 x`` the reference's null rate
          ``+ 0.01`` when that is higher (the reference had nulls). The reference's
          null rate is its ``null_rate``: rows with the value null or absent (numeric
          features: also NaN or not a number).
        - unseen threshold: ``max_unseen_rate``, or, when the vocabulary is the
          reference's and the reference had values outside it (a vocabulary cut at
          ``max_categories``), ``2 x`` that share ``+ 0.01`` when higher.
        """
        q = model.quality
        feats = {name: _feature_rule(fs, None if reference is None
                                     else reference.features.get(name), q)
                 for name, fs in model.features.items()}
        return cls(feats, q.max_unexpected_rate, q.critical_factor, q.enabled)

    @functools.cached_property
    def kinds(self) -> Mapping[str, str]:
        """Feature name to ``"numeric"`` or ``"categorical"``."""
        return {name: r.kind for name, r in self.features.items()}

    @functools.cached_property
    def ranges(self) -> Mapping[str, tuple[float, float]]:
        """The numeric features' ranges, for :meth:`QualityCounts.update`."""
        return {name: r.range for name, r in self.features.items() if r.range is not None}

    @functools.cached_property
    def allowed(self) -> Mapping[str, frozenset[str]]:
        """The categorical features' allowed values, for :meth:`QualityCounts.update`."""
        return {name: r.allowed for name, r in self.features.items() if r.allowed is not None}

    def new_counts(self) -> QualityCounts:
        """Empty counts over these rules' features."""
        return QualityCounts(self.kinds)


def learned_range(ref: NumericReference, margin: float) -> tuple[float, float] | None:
    """The reference's observed range (from its quantile sketch) widened by ``margin`` x
    its span on each side; None when the reference holds no finite value.

    >>> from app.reference import numeric_reference
    >>> lo, hi = learned_range(numeric_reference([10.0, 20.0, 30.0], bins=2), 0.1)
    >>> bool(6.5 < lo < 8.0 and 32.0 < hi < 34.0)
    True
    """
    cells = ref.quantile_sketch().cells()
    if cells.counts.size == 0:
        return None
    lo, hi = float(cells.lower[0]), float(cells.upper[-1])
    span = hi - lo
    return lo - margin * span, hi + margin * span


def raised_threshold(configured: float, reference_rate: float) -> float:
    """``configured``, or ``2 x reference_rate + 0.01`` when the reference rate is
    positive and that is higher.

    >>> raised_threshold(0.05, 0.0), raised_threshold(0.05, 0.1)
    (0.05, 0.21000000000000002)
    """
    if reference_rate <= 0:
        return configured
    return max(configured, 2.0 * reference_rate + 0.01)


def _feature_rule(fs: FeatureSettings, ref: object, q: QualitySettings) -> FeatureRule:
    thresholds = {"null": q.max_null_rate, "type": q.max_type_error_rate,
                  "out_of_range": q.max_out_of_range_rate, "unseen": q.max_unseen_rate,
                  "missing": q.max_missing_rate}
    if fs.type == "numeric":
        num = ref if isinstance(ref, NumericReference) else None
        if num is not None:
            thresholds["null"] = raised_threshold(q.max_null_rate, num.null_rate)
        if fs.range is not None:
            lo, hi = fs.range
            return FeatureRule("numeric", thresholds, (float(lo), float(hi)), "configured")
        learned = None if num is None else learned_range(num, q.range_margin)
        return FeatureRule("numeric", thresholds, learned,
                           None if learned is None else "reference")
    cat = ref if isinstance(ref, CategoricalReference) else None
    if cat is not None:
        thresholds["null"] = raised_threshold(q.max_null_rate, cat.null_rate)
    if fs.values is not None:
        return FeatureRule("categorical", thresholds, allowed=frozenset(fs.values),
                           allowed_source="configured")
    if cat is None:
        return FeatureRule("categorical", thresholds)
    total = sum(cat.counts) + cat.missing
    other_rate = cat.counts[-1] / total if total else 0.0
    thresholds["unseen"] = raised_threshold(q.max_unseen_rate, other_rate)
    return FeatureRule("categorical", thresholds, allowed=frozenset(cat.categories),
                       allowed_source="reference")


@dataclass(frozen=True)
class QualityFinding:
    """A rule broken in a window: ``rate`` (``count`` of ``n`` events) above ``threshold``.

    ``feature`` is None for the event-level rule ``unexpected``.
    """

    rule: str
    feature: str | None
    rate: float
    threshold: float
    count: int
    n: int
    severity: str
    detail: str


def evaluate(counts: QualityCounts, rules: QualityRules, *,
             min_samples: int) -> list[QualityFinding]:
    """The rules ``counts`` break, sorted by (feature, rule), the event-level
    ``unexpected`` last.

    A rule is broken when its rate is strictly above its threshold; the finding is
    ``critical`` at ``max(critical_factor x threshold, threshold + 0.10)`` or more
    (up to float rounding), else a ``warning``. Nothing is judged below ``min_samples``
    events or when the model's quality checks are disabled.
    """
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 0:
        raise ValueError(f"min_samples must be an integer >= 0, got {min_samples!r}")
    if dict(counts.features) != dict(rules.kinds):
        raise ValueError(f"counts cover features {counts.features}, the rules "
                         f"{dict(rules.kinds)}")
    n = counts.events
    if not rules.enabled or n == 0 or n < min_samples:
        return []
    out: list[QualityFinding] = []
    for name, rule in rules.features.items():
        tally = counts.feature_counts(name)
        for rule_name, counter in RULE_COUNTERS.items():
            if rule_name == "out_of_range" and rule.range is None:
                continue
            if rule_name == "unseen" and rule.allowed is None:
                continue
            finding = _judge(rules, rule_name, name, tally[counter], n,
                             rule.thresholds[rule_name], rule)
            if finding is not None:
                out.append(finding)
    unexpected = _judge(rules, "unexpected", None, counts.unexpected_events, n,
                        rules.unexpected_threshold, None, counts.unexpected_names)
    if unexpected is not None:
        out.append(unexpected)
    out.sort(key=lambda f: (f.feature is None, f.feature or "", f.rule))
    return out


def judge_non_finite(rules: QualityRules, feature: str, count: int, n: int,
                     threshold: float) -> QualityFinding | None:
    """The ``non_finite`` rule: events whose ``feature`` was NaN or infinite. JSON cannot
    carry them, so such events are dead-lettered; ``n`` counts them with the window's
    valid events."""
    if not rules.enabled or n <= 0:
        return None
    rate = count / n
    if not rate > threshold:
        return None
    critical = max(rules.critical_factor * threshold, threshold + CRITICAL_MARGIN)
    severity = "critical" if rate >= critical - RATE_TOLERANCE else "warning"
    return QualityFinding("non_finite", feature, rate, threshold, count, n, severity,
                          f"{rate:.1%} NaN or infinite, dead-lettered "
                          f"(threshold {threshold * 100:.4g}%)")


def _judge(rules: QualityRules, rule_name: str, feature: str | None, count: int, n: int,
           threshold: float, rule: FeatureRule | None,
           names: Mapping[str, int] | None = None) -> QualityFinding | None:
    rate = count / n
    if not rate > threshold:
        return None
    critical = max(rules.critical_factor * threshold, threshold + CRITICAL_MARGIN)
    severity = "critical" if rate >= critical - RATE_TOLERANCE else "warning"
    return QualityFinding(rule_name, feature, rate, threshold, count, n, severity,
                          _detail(rule_name, rate, threshold, rule, names))


def _detail(rule_name: str, rate: float, threshold: float, rule: FeatureRule | None,
            names: Mapping[str, int] | None) -> str:
    limit = f"(threshold {threshold * 100:.4g}%)"
    if rule_name == "null":
        what = "null"
    elif rule_name == "type":
        expected = "a number" if rule is not None and rule.kind == "numeric" else "a scalar"
        what = f"not {expected}"
    elif rule_name == "out_of_range" and rule is not None and rule.range is not None:
        what = f"outside [{rule.range[0]:.6g}, {rule.range[1]:.6g}]"
    elif rule_name == "unseen" and rule is not None and rule.allowed is not None:
        what = f"outside the {len(rule.allowed)} known values"
    elif rule_name == "missing":
        what = "missing"
    else:
        top = ", ".join(f"{name} ({c})" for name, c in list((names or {}).items())[:3])
        return f"{rate:.1%} of events carry unconfigured features: {top} {limit}"
    return f"{rate:.1%} {what} {limit}"
