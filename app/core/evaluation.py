"""Comparing a closed window with its reference: figures only, no judging."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from app.core.serving import ServingStats
from app.core.signals import is_output_signal, public_name
from app.core.windows import Sketch, Slice, Window
from app.detectors import STATISTICS, bh_adjusted, choose_statistic, p_value
from app.detectors.significance import ks_p_value_of
from app.detectors.statistics import counts_statistics, quantile_statistics
from app.quality import QualityFinding
from app.reference import CategoricalReference, FeatureReference, NumericReference, Reference
from app.settings import DriftSettings
from app.sketches import BinnedHistogram, CategoryCounts
from app.sketches.categorical import OTHER


@dataclass(frozen=True)
class FeatureEvaluation:
    feature: str
    type: str
    statistic: str
    value: float | None  # None: no comparable data (empty window, bins changed)
    n: int
    missing: int
    reference_n: int
    reference_summary: str
    window_summary: str
    note: str | None = None
    p_value: float | None = None  # two-sample test of the chosen statistic
    p_adjusted: float | None = None  # Benjamini-Hochberg across the window's features
    statistics: dict[str, float] = field(default_factory=dict)  # every applicable one

    def to_dict(self) -> dict[str, Any]:
        return {"feature": public_name(self.feature),
                "signal": "prediction" if is_output_signal(self.feature) else "feature",
                "type": self.type, "statistic": self.statistic,
                "value": self.value, "n": self.n, "missing": self.missing,
                "reference_n": self.reference_n, "reference": self.reference_summary,
                "window": self.window_summary, "note": self.note,
                "p_value": self.p_value, "p_adjusted": self.p_adjusted,
                "statistics": self.statistics}


@dataclass(frozen=True)
class WindowEvaluation:
    """One model version's figures for one closed window."""

    model: str
    model_version: str
    versions: dict[str, int]  # every version's event count in the window
    start_ms: int
    end_ms: int
    n: int  # this version's events
    min_samples: int
    late_events: int  # the model's events that arrived after their window closed
    reference_origin: str
    reference_version: str | None = None  # whose reference: this version's, another's
    fallback: bool = False  # compared with another version's (or the configured) reference
    features: list[FeatureEvaluation] = field(default_factory=list)
    segment: str | None = None  # "region=emea": this segment's events only
    quality: list[QualityFinding] = field(default_factory=list)  # rules the window broke
    quality_rates: dict[str, dict[str, float]] | None = None  # per feature, per counter
    serving: ServingStats | None = None  # latency and cost of the version's predictions

    @property
    def sufficient(self) -> bool:
        return self.n >= self.min_samples


def _numeric_evidence(ref: NumericReference, sketch: BinnedHistogram) -> tuple[str, str]:
    mean = sketch.mean
    return (f"mean {ref.mean:.4g}",
            "mean n/a" if mean is None else f"mean {mean:.4g}")


def _categorical_evidence(ref: CategoricalReference, sketch: CategoryCounts) -> tuple[str, str]:
    """Name the category whose share moved the most."""
    pr = np.asarray(ref.counts, dtype=np.float64)
    pr = pr / pr.sum() if pr.sum() else pr
    pw = sketch.proportions()
    i = int(np.argmax(np.abs(pw - pr)))
    label = OTHER.strip("_") if i == len(sketch.categories) else sketch.categories[i]
    return f"{label} {pr[i]:.0%}", f"{label} {pw[i]:.0%}"


def _kind(ref: FeatureReference, sketch: Sketch) -> tuple[str, bool]:
    """The feature's type as the window and reference see it, and whether the window's
    bins are the reference's."""
    if isinstance(ref, NumericReference) and isinstance(sketch, BinnedHistogram):
        return "numeric", tuple(sketch.edges.tolist()) == ref.edges
    if isinstance(ref, CategoricalReference) and isinstance(sketch, CategoryCounts):
        return "categorical", sketch.categories == ref.categories
    return "unknown", False


def _counts_figures(reference: Reference, sl: Slice) -> dict[str, dict[str, float]]:
    """Every registered ``"counts"`` statistic of each comparable feature with values,
    computed for the features of one type and bin count together."""
    groups: dict[tuple[str, int], list[str]] = {}
    for name, ref in reference.features.items():
        sketch = sl.sketches.get(name)
        if sketch is None or not sketch.n:
            continue
        ftype, comparable = _kind(ref, sketch)
        if comparable:
            groups.setdefault((ftype, len(sketch.counts)), []).append(name)
    out: dict[str, dict[str, float]] = {}
    for (ftype, _), names in groups.items():
        stats = [n for n, spec in STATISTICS.items()
                 if spec.input == "counts" and ftype in spec.feature_types]
        values = counts_statistics([reference.features[n].counts for n in names],
                                   [sl.sketches[n].counts for n in names], stats)
        for i, name in enumerate(names):
            out[name] = {stat: float(values[stat][i]) for stat in stats}
    return out


def _quantile_figures(reference: Reference, sl: Slice) -> dict[str, dict[str, float]]:
    """Every registered ``"quantiles"`` statistic of each comparable numeric feature with
    values, computed for the features together (``quantile_statistics``)."""
    names, pairs = [], []
    for name, ref in reference.features.items():
        sketch, window = sl.sketches.get(name), sl.quantiles.get(name)
        if isinstance(ref, NumericReference) and sketch is not None and sketch.n \
                and window is not None and _kind(ref, sketch) == ("numeric", True):
            names.append(name)
            pairs.append((ref.quantile_sketch(), window))
    stats = [n for n, spec in STATISTICS.items()
             if spec.input == "quantiles" and "numeric" in spec.feature_types]
    if not pairs or not stats:
        return {}
    values = quantile_statistics(pairs, stats)
    return {name: {stat: float(values[stat][i]) for stat in stats}
            for i, name in enumerate(names)}


def chosen_statistic(drift: DriftSettings, ftype: str, n: int) -> str:
    """The statistic the settings pick for a feature type and sample size."""
    named = drift.statistic
    if named != "auto" and ftype in STATISTICS[named].feature_types:
        return named
    return choose_statistic(ftype, n)


def evaluate_window(model: str, window: Window, version: str, sl: Slice,
                    reference: Reference | None, *, min_samples: int, late_events: int,
                    drift: DriftSettings) -> WindowEvaluation:
    """Compare one version's slice of a window with the reference it was binned for.

    Every applicable statistic is computed (the audit trail); the one the settings pick
    gives ``value`` and a two-sample test p-value, and the p-values of the window's
    features are adjusted together (Benjamini-Hochberg) so that the policy can control
    false alarms across features.
    """
    ref_key = sl.reference
    fallback = ref_key != version
    if reference is None:  # the reference this slice was binned for is gone
        feats = [FeatureEvaluation(name, "unknown", "n/a", None, s.n, s.missing, 0, "", "",
                                   f"reference {ref_key!r} is no longer available")
                 for name, s in sl.sketches.items()]
        return WindowEvaluation(model, version, window.versions, window.start_ms,
                                window.end_ms, sl.n, min_samples, late_events, "unavailable",
                                ref_key, fallback, feats, sl.segment)
    counts, quantiles = _counts_figures(reference, sl), _quantile_figures(reference, sl)
    feats = [_evaluate_feature(name, ref, sl, drift,
                               {**counts.get(name, {}), **quantiles.get(name, {})})
             for name, ref in reference.features.items()]
    feats += [FeatureEvaluation(name, "unknown", "n/a", None, 0, 0, 0, "", "",
                                f"no reference: {why}")
              for name, why in reference.skipped.items()]
    tested = [(i, f.p_value) for i, f in enumerate(feats) if f.p_value is not None]
    adjusted = bh_adjusted([p for _, p in tested])
    for (i, _), q in zip(tested, adjusted, strict=True):
        feats[i] = replace(feats[i], p_adjusted=q)
    return WindowEvaluation(model, version, window.versions, window.start_ms, window.end_ms,
                            sl.n, min_samples, late_events, reference.origin,
                            reference.version if ref_key == "*" else ref_key, fallback, feats,
                            sl.segment)


def _evaluate_feature(name: str, ref: FeatureReference, sl: Slice, drift: DriftSettings,
                      figures: dict[str, float]) -> FeatureEvaluation:
    """One feature's evaluation; ``figures``: every statistic that applies to it (see
    ``_counts_figures`` and ``_quantile_figures``)."""
    sketch = sl.sketches.get(name)
    ref_n = int(sum(ref.counts))
    if sketch is None:
        return FeatureEvaluation(name, "unknown", "n/a", None, 0, 0, ref_n, "", "",
                                 "feature not sketched in this window")
    ftype, comparable = _kind(ref, sketch)
    if isinstance(ref, NumericReference) and isinstance(sketch, BinnedHistogram):
        evidence = _numeric_evidence(ref, sketch)
    elif isinstance(ref, CategoricalReference) and isinstance(sketch, CategoryCounts):
        evidence = _categorical_evidence(ref, sketch) if sketch.n else ("", "")
    else:
        evidence = ("", "")
    statistic = chosen_statistic(drift, ftype, sketch.n) if ftype != "unknown" else "n/a"
    if not comparable:
        return FeatureEvaluation(name, ftype, statistic, None, sketch.n, sketch.missing, ref_n,
                                 *evidence, "window bins differ from the reference's")
    if not sketch.n:
        return FeatureEvaluation(name, ftype, statistic, None, 0, sketch.missing, ref_n,
                                 *evidence, "no values in this window")
    if STATISTICS[statistic].input == "counts":
        p = p_value(statistic, np.asarray(ref.counts), sketch.counts)
    else:  # the Kolmogorov-Smirnov test, of the KS figure
        quantiles = sl.quantiles.get(name)
        assert isinstance(ref, NumericReference) and quantiles is not None
        p = ks_p_value_of(figures["ks"], ref.quantile_sketch().n, quantiles.n)
    return FeatureEvaluation(name, ftype, statistic, figures[statistic], sketch.n,
                             sketch.missing, ref_n, *evidence, None,
                             None if p != p else p, None, figures)
