"""Honest thresholds: undrifted windows stay quiet at any n, modest shifts are caught.

The rule (see ``app.detectors.significance``): statistic ``s`` alarms on a feature when
its value is at or above ``s``'s default warning threshold **and** the feature's test for
``s``'s input is rejected by Benjamini-Hochberg at ``DEFAULT_Q`` over every test of the
window. Every statistic is evaluated on every feature it applies to; a feature
contributes one test per input (chi-square on its counts, and for a numeric feature KS
on its sketches). A second rule, ``statistic: auto``, evaluates one statistic per
feature (:func:`choose_statistic`) and one test per feature.
"""

from dataclasses import dataclass

import numpy as np
import pytest

from app.detectors import DEFAULT_Q, STATISTICS, benjamini_hochberg, choose_statistic, p_value
from app.sketches import QuantileSketch

CATEGORY_SHARES = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
BINS = 10
REFERENCE_N = 50_000


@dataclass
class Reference:
    name: str
    type: str  # numeric | categorical
    draw: object  # (rng, n) -> values (numeric) or counts over the categories + other
    counts: np.ndarray
    edges: np.ndarray | None = None
    sketch: QuantileSketch | None = None


@dataclass
class Feature:
    ref: Reference
    counts: np.ndarray
    sketch: QuantileSketch | None = None

    def args(self, input_):
        if input_ == "counts":
            return self.ref.counts, self.counts
        return self.ref.sketch, self.sketch


def numeric(name, draw, rng):
    x = draw(rng, REFERENCE_N)
    edges = np.quantile(x, np.linspace(0, 1, BINS + 1)[1:-1])
    s = QuantileSketch()
    s.update(x)
    return Reference(name, "numeric", draw, np.bincount(np.searchsorted(edges, x),
                                                        minlength=BINS), edges, s)


def categorical(name, shares, rng):
    def draw(rng, n, shares=shares):
        return np.append(rng.multinomial(n, shares), 0)  # the last bucket: "other"

    return Reference(name, "categorical", draw, draw(rng, REFERENCE_N))


def window(ref, rng, n, draw=None):
    out = (draw or ref.draw)(rng, n)
    if ref.type == "categorical":
        return Feature(ref, out)
    s = QuantileSketch()
    s.update(out)
    return Feature(ref, np.bincount(np.searchsorted(ref.edges, out), minlength=BINS), s)


def alarms(features):
    """``{(feature, statistic)}`` under the rule, all statistics evaluated."""
    tests = {}
    for f in features:
        tests[(f.ref.name, "counts")] = p_value("psi", *f.args("counts"))
        if f.ref.type == "numeric":
            tests[(f.ref.name, "quantiles")] = p_value("ks", *f.args("quantiles"))
    rejected = dict(zip(tests, benjamini_hochberg(list(tests.values()), DEFAULT_Q),
                        strict=True))
    out = set()
    for f in features:
        for name, spec in STATISTICS.items():
            if (f.ref.type in spec.feature_types and rejected[(f.ref.name, spec.input)]
                    and spec(*f.args(spec.input)) >= spec.warning):
                out.add((f.ref.name, name))
    return out


def auto_alarms(features, n):
    """``{(feature, statistic)}`` with one statistic per feature, as ``statistic: auto``."""
    specs = [(f, choose_statistic(f.ref.type, n)) for f in features]
    ps = [p_value(s, *f.args(STATISTICS[s].input)) for f, s in specs]
    rejected = benjamini_hochberg(ps, DEFAULT_Q)
    return {(f.ref.name, s) for (f, s), rej in zip(specs, rejected, strict=True)
            if rej and STATISTICS[s](*f.args(STATISTICS[s].input)) >= STATISTICS[s].warning}


def normal(mu=0.0, sd=1.0):
    return lambda rng, n: rng.normal(mu, sd, n)


def lognormal(mu=0.0, sigma=1.0):
    return lambda rng, n: rng.lognormal(mu, sigma, n)


def test_large_windows_of_undrifted_data_do_not_alarm():
    rng = np.random.default_rng(100)
    refs = [numeric("normal", normal(3, 2), rng), numeric("lognormal", lognormal(), rng),
            categorical("plan", CATEGORY_SHARES, rng)]
    windows, alarmed, auto_alarmed = 200, 0, 0
    largest = dict.fromkeys(STATISTICS, 0.0)
    for _ in range(windows):
        feats = [window(r, rng, 50_000) for r in refs]
        alarmed += bool(alarms(feats))
        auto_alarmed += bool(auto_alarms(feats, 50_000))
        for f in feats:
            for name, spec in STATISTICS.items():
                if f.ref.type in spec.feature_types:
                    largest[name] = max(largest[name], spec(*f.args(spec.input)))
    assert alarmed / windows < 0.01
    assert auto_alarmed / windows < 0.01
    # at this n the effect thresholds bind on their own: no statistic even gets close
    for name, value in largest.items():
        assert value < STATISTICS[name].warning / 2, (name, value)


def test_small_windows_of_undrifted_data_alarm_in_under_one_percent():
    rng = np.random.default_rng(200)
    refs = [numeric(f"normal{i}", normal(i, 1 + i / 4), rng) for i in range(8)]
    refs += [numeric(f"lognormal{i}", lognormal(i / 8, 0.5 + i / 8), rng) for i in range(8)]
    shares = [np.roll(CATEGORY_SHARES, i) for i in range(7)]
    refs += [categorical(f"cat{i}", s, rng) for i, s in enumerate(shares)]
    assert len(refs) == 23
    windows, alarmed, auto_alarmed = 1_000, 0, 0  # the expected rate is ~0.4%
    for _ in range(windows):
        feats = [window(r, rng, 300) for r in refs]
        alarmed += bool(alarms(feats))
        auto_alarmed += bool(auto_alarms(feats, 300))
    assert alarmed / windows < 0.01
    assert auto_alarmed / windows < 0.01


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_third_of_an_sd_mean_shift_is_caught(seed):
    rng = np.random.default_rng(seed)
    refs = [numeric("shifted", normal(10, 2), rng), numeric("steady", normal(), rng),
            numeric("skewed", lognormal(), rng), categorical("plan", CATEGORY_SHARES, rng)]
    feats = [window(refs[0], rng, 5_000, draw=normal(10.6, 2))]  # +0.3 sd
    feats += [window(r, rng, 5_000) for r in refs[1:]]
    found = alarms(feats)
    for name in ("wasserstein", "ks", "psi"):
        assert ("shifted", name) in found
    assert {f for f, _ in found} == {"shifted"}
    assert auto_alarms(feats, 5_000) == {("shifted", "wasserstein")}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_category_moving_from_20_to_35_percent_is_caught(seed):
    rng = np.random.default_rng(seed)
    even = np.full(5, 0.2)
    refs = [categorical("plan", even, rng), categorical("region", CATEGORY_SHARES, rng),
            numeric("steady", normal(), rng)]
    moved = np.array([0.35, 0.1625, 0.1625, 0.1625, 0.1625])
    feats = [window(refs[0], rng, 5_000, draw=lambda rng, n: np.append(rng.multinomial(n, moved),
                                                                       0))]
    feats += [window(r, rng, 5_000) for r in refs[1:]]
    found = alarms(feats)
    for name in ("chi2", "jensen_shannon", "psi"):
        assert ("plan", name) in found
    assert {f for f, _ in found} == {"plan"}
    assert auto_alarms(feats, 5_000) == {("plan", "jensen_shannon")}


def test_unseen_categories_are_caught():
    rng = np.random.default_rng(4)
    ref = categorical("plan", CATEGORY_SHARES, rng)
    feats = [window(ref, rng, 2_000, draw=lambda rng, n: rng.multinomial(
        n, np.append(CATEGORY_SHARES * 0.97, 0.03)))]
    assert ("plan", "unseen_rate") in alarms(feats)


def test_a_large_shift_is_caught_even_in_a_small_window():
    rng = np.random.default_rng(5)
    refs = [numeric(f"f{i}", normal(), rng) for i in range(23)]
    feats = [window(refs[0], rng, 300, draw=normal(0.6))]
    feats += [window(r, rng, 300) for r in refs[1:]]
    assert ("f0", "ks") in auto_alarms(feats, 300)
