"""Drift of a source's fields, with the models' drift machinery.

The fields compared are the model features the dependency map assigns to the source
(found under the same name in its records). The source's reference is its own first
``reference_warmup`` records; each window is then binned on it and judged exactly like a
model's window (same statistics, thresholds of the first dependent model, the same
Benjamini-Hochberg control across fields). A drifting source field is often the earliest
sign of the model drift it will cause, and names the system to look at.

Like a model's warm-up, warm-up records are not saved: a restart during a source's
warm-up starts it over. The reference, once built, is saved with the source's state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.core.evaluation import WindowEvaluation, evaluate_window
from app.core.windows import Slice, Window
from app.errors import MALFORMED_STATE, ReferenceDataError, StateError
from app.policy.drift import AlertDecision, decide_drift_alerts
from app.reference import Reference, build_reference
from app.settings import ModelSettings, MonitorSettings, ReferenceSettings

KEY = "source"  # the one "version" of a source's slices


def source_fields(settings: MonitorSettings, source: str) -> ModelSettings | None:
    """Monitoring settings for a source's fields: its features from the dependency map,
    the first dependent model's drift settings; None when no feature comes from it."""
    features = {}
    drift = None
    for model in settings.models.values():
        for name, spec in model.features.items():
            if spec.source == source and name not in features:
                features[name] = spec
                drift = drift or model.drift
    if not features or drift is None:
        return None
    warmup = settings.sources[source].reference_warmup
    return ModelSettings(features=features, reference=ReferenceSettings(warmup=warmup),
                         drift=drift, prediction_drift=False)


class SourceDrift:
    def __init__(self, source: str, fields: ModelSettings, *, min_samples: int) -> None:
        self.source = source
        self.fields = fields
        self.min_samples = min_samples
        self.target = fields.reference.warmup or 1000
        self.warmup: list[Mapping[str, Any]] = []
        self.reference: Reference | None = None
        self.slices: dict[int, Slice] = {}  # window start -> its fields' sketches
        self.problem: str | None = None

    def warm(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Feed the warm-up in arrival order; returns how many records it took (the rest
        are compared with the reference)."""
        if self.reference is not None:
            return 0
        need = self.target - len(self.warmup)
        self.warmup += records[:need]
        if len(self.warmup) >= self.target:
            try:
                self.reference = build_reference(self.warmup, self.source, self.fields,
                                                 version=KEY, origin=f"warmup:{self.target}")
            except ReferenceDataError as exc:  # nothing usable: warm up again
                self.problem = str(exc)
            self.warmup = []
        return min(need, len(records))

    def update(self, start_ms: int, records: Sequence[Mapping[str, Any]]) -> None:
        """Records of one window, after the warm-up."""
        if self.reference is None or not records:
            return
        sl = self.slices.get(start_ms)
        if sl is None:
            sl = self.slices[start_ms] = Slice.open(KEY, self.reference)
        sl.update([{"features": r} for r in records])

    def evaluate(self, start_ms: int, end_ms: int
                 ) -> tuple[WindowEvaluation, list[AlertDecision]] | None:
        """Judge and drop a closing window's slice (None: still warming up)."""
        sl = self.slices.pop(start_ms, None)
        if sl is None or self.reference is None:
            return None
        window = Window(start_ms, end_ms, {KEY: sl}, sl.n)
        ev = evaluate_window(self.source, window, KEY, sl, self.reference,
                             min_samples=self.min_samples, late_events=0,
                             drift=self.fields.drift)
        return ev, decide_drift_alerts(ev, self.fields.drift)

    def to_state(self) -> dict[str, Any]:
        return {"reference": None if self.reference is None else self.reference.to_dict(),
                "slices": {str(s): sl.to_state() for s, sl in self.slices.items()}}

    def load(self, state: Mapping[str, Any]) -> None:
        try:
            ref = state.get("reference")
            self.reference = None if ref is None else Reference.from_dict(ref)
            self.slices = {int(s): Slice.from_state(st) for s, st in state["slices"].items()}
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt source-drift state: {exc!r}") from None
