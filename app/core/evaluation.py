"""Comparing a closed window with its reference: figures only, no judging."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.core.signals import is_output_signal, public_name
from app.core.windows import Slice, Window
from app.detectors import STATISTICS
from app.reference import CategoricalReference, NumericReference, Reference
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

    def to_dict(self) -> dict[str, Any]:
        return {"feature": public_name(self.feature),
                "signal": "prediction" if is_output_signal(self.feature) else "feature",
                "type": self.type, "statistic": self.statistic,
                "value": self.value, "n": self.n, "missing": self.missing,
                "reference_n": self.reference_n, "reference": self.reference_summary,
                "window": self.window_summary, "note": self.note}


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


def evaluate_window(model: str, window: Window, version: str, sl: Slice,
                    reference: Reference | None, *, min_samples: int, late_events: int,
                    statistic: str = "psi") -> WindowEvaluation:
    """Compare one version's slice of a window with the reference it was binned for."""
    stat = STATISTICS[statistic]
    feats: list[FeatureEvaluation] = []
    ref_key = sl.reference
    if reference is None:  # the reference this slice was binned for is gone
        feats = [FeatureEvaluation(name, "unknown", statistic, None, s.n, s.missing, 0, "", "",
                                   f"reference {ref_key!r} is no longer available")
                 for name, s in sl.sketches.items()]
        return WindowEvaluation(model, version, window.versions, window.start_ms,
                                window.end_ms, sl.n, min_samples, late_events, "unavailable",
                                ref_key, ref_key != version, feats)
    for name, ref in reference.features.items():
        sketch = sl.sketches.get(name)
        ref_n = int(sum(ref.counts))
        if sketch is None:
            feats.append(FeatureEvaluation(name, "unknown", statistic, None, 0, 0, ref_n, "", "",
                                           "feature not sketched in this window"))
            continue
        if isinstance(ref, NumericReference) and isinstance(sketch, BinnedHistogram):
            comparable = tuple(sketch.edges.tolist()) == ref.edges
            evidence = _numeric_evidence(ref, sketch)
            ftype = "numeric"
        elif isinstance(ref, CategoricalReference) and isinstance(sketch, CategoryCounts):
            comparable = sketch.categories == ref.categories
            evidence = _categorical_evidence(ref, sketch) if sketch.n else ("", "")
            ftype = "categorical"
        else:
            comparable, evidence, ftype = False, ("", ""), "unknown"
        if not comparable:
            feats.append(FeatureEvaluation(name, ftype, statistic, None, sketch.n, sketch.missing,
                                           ref_n, *evidence,
                                           "window bins differ from the reference's"))
            continue
        value = stat(np.asarray(ref.counts), sketch.counts) if sketch.n else None
        feats.append(FeatureEvaluation(name, ftype, statistic, value, sketch.n, sketch.missing,
                                       ref_n, *evidence))
    return WindowEvaluation(model, version, window.versions, window.start_ms, window.end_ms,
                            sl.n, min_samples, late_events, reference.origin,
                            reference.version if ref_key == "*" else ref_key,
                            ref_key != version, feats)
