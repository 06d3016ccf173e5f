"""Comparing a closed window with its reference: figures only, no judging."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.core.signals import is_output_signal, public_name
from app.core.windows import Window
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
    model: str
    model_version: str | None
    versions: dict[str, int]
    start_ms: int
    end_ms: int
    n: int
    min_samples: int
    late_events: int
    reference_origin: str
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


def evaluate_window(model: str, window: Window, reference: Reference, *, min_samples: int,
                    late_events: int, statistic: str = "psi") -> WindowEvaluation:
    stat = STATISTICS[statistic]
    feats: list[FeatureEvaluation] = []
    for name, ref in reference.features.items():
        sketch = window.sketches.get(name)
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
    return WindowEvaluation(model, window.dominant_version(), dict(window.versions),
                            window.start_ms, window.end_ms, window.n, min_samples, late_events,
                            reference.origin, feats)
