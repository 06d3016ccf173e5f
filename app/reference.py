"""References: what "normal" looks like for a model, feature by feature.

A reference fixes each numeric feature's bin edges (quantiles of the reference data)
and each categorical feature's vocabulary (its most frequent values), and holds the
reference counts over them. Windows are sketched on the same bins, so comparing a
window with its reference is a comparison of two count vectors.

References come from a data file (CSV, JSON lines or Parquet) via
``driftwarden reference build``, or from the first N events a worker sees.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from app.core.signals import (
    OTHER_SEGMENT,
    PREDICTION,
    SCORES,
    SEGMENT,
    numeric_column,
    reference_row,
    segment_label,
)
from app.errors import MALFORMED_STATE, ReferenceDataError, StateError
from app.settings import DriftSettings, FeatureSettings, ModelSettings, MonitorSettings
from app.sketches import BinnedHistogram, CategoryCounts, QuantileSketch
from app.sketches.categorical import OTHER, as_category

FORMAT = "driftwarden.reference"
VERSION = 2  # 2: numeric features carry a quantile sketch of the reference distribution


@dataclass(frozen=True)
class NumericReference:
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    missing: int
    mean: float
    std: float
    quantiles: tuple[float, ...]  # 1 %, 5 %, 25 %, 50 %, 75 %, 95 %, 99 %
    distribution: Mapping[str, Any]  # QuantileSketch state: for KS and Wasserstein

    @property
    def null_rate(self) -> float:
        """Share of the reference rows without a number (null, absent, NaN or not numeric)."""
        total = sum(self.counts) + self.missing
        return self.missing / total if total else 0.0

    def sketch(self) -> BinnedHistogram:
        return BinnedHistogram(list(self.edges))

    def quantile_sketch(self) -> QuantileSketch:
        """The reference distribution's sketch (built once; read-only by convention)."""
        return self._quantile_sketch

    @functools.cached_property
    def _quantile_sketch(self) -> QuantileSketch:
        return QuantileSketch.from_state(self.distribution)

    def empty_quantile_sketch(self) -> QuantileSketch:
        """A window sketch on the same bucket grid as the reference's."""
        ref = self.quantile_sketch()
        return QuantileSketch(ref.alpha, ref.max_buckets, ref.min_positive)


@dataclass(frozen=True)
class CategoricalReference:
    categories: tuple[str, ...]
    counts: tuple[int, ...]  # per category, then "other"
    missing: int

    @property
    def null_rate(self) -> float:
        """Share of the reference rows whose value was null or absent."""
        total = sum(self.counts) + self.missing
        return self.missing / total if total else 0.0

    def sketch(self) -> CategoryCounts:
        return CategoryCounts(self.categories)


FeatureReference = NumericReference | CategoricalReference


@dataclass(frozen=True)
class Reference:
    model: str
    version: str | None
    origin: str
    n: int
    features: Mapping[str, FeatureReference]
    created_at: float = field(default_factory=time.time)
    segments: Mapping[str, Reference] = field(default_factory=dict)  # "region=emea" -> ref
    skipped: Mapping[str, str] = field(default_factory=dict)  # feature -> why it has none

    def to_dict(self) -> dict[str, Any]:
        feats: dict[str, Any] = {}
        for name, ref in self.features.items():
            if isinstance(ref, NumericReference):
                feats[name] = {"type": "numeric", "edges": list(ref.edges),
                               "counts": list(ref.counts), "missing": ref.missing,
                               "mean": ref.mean, "std": ref.std,
                               "quantiles": list(ref.quantiles),
                               "distribution": dict(ref.distribution)}
            else:
                feats[name] = {"type": "categorical", "categories": list(ref.categories),
                               "counts": list(ref.counts), "missing": ref.missing}
        return {"format": FORMAT, "v": VERSION, "model": self.model, "version": self.version,
                "origin": self.origin, "n": self.n, "created_at": self.created_at,
                "features": feats, "skipped": dict(self.skipped),
                "segments": {k: r.to_dict() for k, r in self.segments.items()}}

    @classmethod
    def from_dict(cls, data: Any) -> Reference:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StateError("not a driftwarden reference (missing format marker)")
        if data.get("v") != VERSION:
            raise StateError(f"reference format version {data.get('v')!r} is not supported "
                             f"(this build reads {VERSION})")
        try:
            feats: dict[str, FeatureReference] = {}
            for name, f in data["features"].items():
                if f["type"] == "numeric":
                    feats[name] = NumericReference(
                        tuple(float(x) for x in f["edges"]), tuple(int(x) for x in f["counts"]),
                        int(f["missing"]), float(f["mean"]), float(f["std"]),
                        tuple(float(x) for x in f["quantiles"]),
                        QuantileSketch.from_state(f["distribution"]).to_state())
                else:
                    feats[name] = CategoricalReference(
                        tuple(str(x) for x in f["categories"]),
                        tuple(int(x) for x in f["counts"]), int(f["missing"]))
            segments = {str(k): cls.from_dict(r) for k, r in data.get("segments", {}).items()}
            return cls(str(data["model"]), data.get("version"), str(data["origin"]),
                       int(data["n"]), feats, float(data["created_at"]), segments,
                       {str(k): str(v) for k, v in data.get("skipped", {}).items()})
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt reference: {exc!r}") from None

    def summary(self) -> str:
        lines = [f"reference for model {self.model!r} version {self.version or '(any)'}: "
                 f"{self.n} rows from {self.origin}"]
        for name, ref in self.features.items():
            if isinstance(ref, NumericReference):
                q = ref.quantiles
                lines.append(f"  {name:<24} numeric      mean {ref.mean:.4g}  std {ref.std:.4g}  "
                             f"p5 {q[1]:.4g}  p50 {q[3]:.4g}  p95 {q[5]:.4g}  "
                             f"bins {len(ref.edges) + 1}  missing {ref.missing}")
            else:
                total = max(sum(ref.counts), 1)
                top = ", ".join(f"{c} {n / total:.0%}"
                                for c, n in zip(ref.categories, ref.counts, strict=False))
                lines.append(f"  {name:<24} categorical  {len(ref.categories)} values: {top}  "
                             f"missing {ref.missing}")
        for name, why in self.skipped.items():
            lines.append(f"  {name:<24} skipped: {why}")
        return "\n".join(lines)


_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def numeric_reference(values: Sequence[Any], bins: int) -> NumericReference:
    arr = numeric_column([{"v": v} for v in values], "v")
    finite = arr[np.isfinite(arr)]
    missing = int(np.isnan(arr).sum())
    if finite.size == 0:
        raise ReferenceDataError("no finite values to build numeric bins from")
    cuts = _scaled(lambda x: np.quantile(x, np.linspace(0.0, 1.0, bins + 1)[1:-1]), finite)
    edges = np.unique(cuts)
    sketch = BinnedHistogram(edges)
    sketch.update(finite)
    qs = _scaled(lambda x: np.quantile(x, _QUANTILES), finite)
    distribution = QuantileSketch()
    distribution.update(finite)
    mean, std = _scaled(lambda x: np.array([x.mean(), x.std()]), finite).tolist()
    return NumericReference(tuple(edges.tolist()), tuple(sketch.counts.tolist()), missing,
                            mean, std, tuple(float(q) for q in qs), distribution.to_state())


def _scaled(statistic: Any, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``statistic(x)`` for a statistic that scales with ``x`` (quantiles, mean, std),
    finite: near the float max its sums and differences overflow, so it is taken of ``x``
    scaled into [-1, 1] instead (a state has no room for infinity).

    >>> _scaled(lambda x: np.array([x.mean()]), np.array([1e308, 1e308])).tolist()
    [1e+308]
    """
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(statistic(x), dtype=np.float64)
    if np.isfinite(out).all():
        return out
    scale = float(np.abs(x).max())
    return np.asarray(statistic(x / scale), dtype=np.float64) * scale


def categorical_reference(values: Iterable[Any], max_categories: int,
                          declared: Sequence[str] | None = None) -> CategoricalReference:
    tally: Counter[str] = Counter()
    missing = 0
    for v in values:
        if v is None:
            missing += 1
        else:
            tally[as_category(v)] += 1
    literal_other = tally.pop(OTHER, 0)  # a value spelled "__other__" counts as other
    vocab = [c for c, _ in tally.most_common(max_categories)]
    for c in declared or ():
        if c not in vocab and c != OTHER:
            vocab.append(c)
    sketch = CategoryCounts(vocab)
    sketch.update(tally.elements())
    sketch.counts[-1] += literal_other
    return CategoricalReference(tuple(vocab), tuple(sketch.counts.tolist()), missing)


def build_reference(rows: Sequence[Mapping[str, Any]], model: str, settings: ModelSettings,
                    *, version: str | None = None, origin: str) -> Reference:
    """Build a reference from rows of feature values (one mapping per row)."""
    if not rows:
        raise ReferenceDataError(f"no rows to build the reference of model {model!r} from")
    feats: dict[str, FeatureReference] = {}
    skipped: dict[str, str] = {}
    for name, fs in settings.features.items():
        column = [row.get(name) for row in rows]
        try:
            feats[name] = _feature_reference(name, column, fs, settings.drift)
        except ReferenceDataError as exc:  # e.g. all null: reported, not monitored
            skipped[name] = str(exc).removeprefix(f"feature {name!r}: ")
    if not feats:
        raise ReferenceDataError(f"no feature of model {model!r} has usable reference data: "
                                 f"{skipped}")
    if settings.prediction_drift:
        feats.update(_output_references(rows, settings))
    return Reference(model, version, origin, len(rows), feats,
                     segments=_segment_references(rows, model, settings, version, origin),
                     skipped=skipped)


def _segment_references(rows: Sequence[Mapping[str, Any]], model: str, settings: ModelSettings,
                        version: str | None, origin: str) -> dict[str, Reference]:
    """A reference per segment value (``region=emea``) with enough rows.

    The ``max_segment_values`` most frequent values of each key get their own; the other
    values together form ``<key>=__other__``. A value with fewer than
    ``min_segment_rows`` rows gets none (its windows are not compared).
    """
    out: dict[str, Reference] = {}
    for key in settings.segments:
        column = SEGMENT + key
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for row in rows:
            value = row.get(column, row.get(key))  # a tag, or a plain column of that name
            if value is not None:
                groups.setdefault(str(value), []).append(row)
        ranked = sorted(groups, key=lambda v: (-len(groups[v]), v))
        top, rest = ranked[:settings.max_segment_values], ranked[settings.max_segment_values:]
        parts = {v: groups[v] for v in top}
        if rest:
            parts[OTHER_SEGMENT] = [r for v in rest for r in groups[v]]
        for value, part in parts.items():
            if len(part) < settings.min_segment_rows:
                continue
            label = segment_label(key, value)
            with contextlib.suppress(ReferenceDataError):  # e.g. a feature all null there
                flat = settings.model_copy(update={"segments": ()})
                out[label] = build_reference(part, model, flat, version=version,
                                             origin=f"{origin}[{label}]")
    return out


def _output_references(rows: Sequence[Mapping[str, Any]],
                       settings: ModelSettings) -> dict[str, FeatureReference]:
    """References of the model's outputs, when the rows carry them.

    The predicted class (classification) or value (regression) is ``@prediction``; each
    class probability in ``scores`` is ``@scores.<class>`` (at most
    ``max_score_classes``, the most frequent first).
    """
    out: dict[str, FeatureReference] = {}
    predictions = [row.get(PREDICTION) for row in rows]
    if any(p is not None for p in predictions):
        kind = "numeric" if settings.task == "regression" else "categorical"
        with contextlib.suppress(ReferenceDataError):  # e.g. no numeric predictions at all
            out[PREDICTION] = _feature_reference(
                "prediction", predictions, FeatureSettings(type=kind), settings.drift)
    classes: Counter[str] = Counter(k for row in rows for k in row if k.startswith(SCORES))
    for name, _ in classes.most_common(settings.max_score_classes):
        with contextlib.suppress(ReferenceDataError):
            out[name] = numeric_reference([row.get(name) for row in rows], settings.drift.bins)
    return out


def _feature_reference(name: str, column: Sequence[Any], fs: FeatureSettings,
                       drift: DriftSettings) -> FeatureReference:
    try:
        if fs.type == "numeric":
            return numeric_reference(column, drift.bins)
        return categorical_reference(column, drift.max_categories, fs.values)
    except ReferenceDataError as exc:
        raise ReferenceDataError(f"feature {name!r}: {exc}") from None


# -- reading data files -------------------------------------------------------------

def _csv_value(text: str, fs: FeatureSettings | None) -> Any:
    if text == "":
        return None
    if fs is not None and fs.type == "numeric":
        try:
            return float(text)
        except ValueError:
            return text
    return text


def _output_column(column: str, features: Mapping[str, FeatureSettings]) -> str | None:
    """The output signal a flat data column holds: ``prediction``, ``score.<c>``/``scores.<c>``."""
    if column in features:
        return None
    if column == "prediction":
        return PREDICTION
    for prefix in ("scores.", "score."):
        if column.startswith(prefix) and len(column) > len(prefix):
            return SCORES + column[len(prefix):]
    return None


def _text_value(text: Any) -> Any:
    """A CSV cell holding a model output: a number or a boolean where it reads as one."""
    if not isinstance(text, str):
        return text
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text)
    except ValueError:
        return text


def _output_columns(row: dict[str, Any], features: Mapping[str, FeatureSettings], *,
                    text: bool = False) -> dict[str, Any]:
    for column in [c for c in row if c not in features]:
        signal = _output_column(column, features)
        if signal is not None:
            value = row.pop(column)
            row[signal] = _text_value(value) if text else value
    return row


def read_rows(path: Path, features: Mapping[str, FeatureSettings],
              segments: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of feature values from CSV, JSON lines or Parquet.

    JSON lines may hold flat rows or prediction events. Besides the features, a column
    ``prediction`` and columns ``score.<class>`` (or, in events, ``prediction`` and
    ``scores``) give the reference of the model's outputs, for prediction drift.
    """
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if not path.exists():
        raise ReferenceDataError(f"{path}: no such file")
    try:
        if suffix in (".csv", ".csv.gz"):
            import gzip

            opener = gzip.open if suffix.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8", newline="") as fh:
                return [_output_columns({k: _csv_value(v, features.get(k))
                                         for k, v in row.items()}, features, text=True)
                        for row in csv.DictReader(fh)]
        if suffix in (".jsonl", ".ndjson", ".json"):
            rows = []
            with open(path, "rb") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        raise ReferenceDataError(f"{path}:{lineno}: not JSON: {exc}") from None
                    if isinstance(obj, dict) and isinstance(obj.get("features"), dict):
                        rows.append(reference_row(obj))
                    elif isinstance(obj, dict):
                        rows.append(_output_columns(obj, features))
                    else:
                        raise ReferenceDataError(f"{path}:{lineno}: expected a JSON object")
            return rows
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            cols = [c for c in pq.read_schema(path).names
                    if c in features or c in segments or _output_column(c, features)]
            table = pq.read_table(path, columns=cols)
            return [_output_columns(r, features) for r in table.to_pylist()]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReferenceDataError(f"{path}: cannot read: {exc}") from None
    raise ReferenceDataError(
        f"{path}: unknown data format {suffix!r}; use .csv, .jsonl or .parquet")


def load_reference_json(path: Path) -> Reference:
    """A reference saved by ``driftwarden reference build``."""
    try:
        return Reference.from_dict(orjson.loads(path.read_bytes()))
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ReferenceDataError(f"{path}: cannot read reference: {exc}") from None
    except StateError as exc:
        raise ReferenceDataError(f"{path}: {exc}") from None


def load_reference_file(path: Path, model: str, settings: ModelSettings,
                        version: str | None = None) -> Reference:
    """A saved reference (``*.reference.json``) or a data file to build one from."""
    if path.name.endswith(".reference.json"):
        ref = load_reference_json(path)
        missing = set(settings.features) - set(ref.features)
        if missing:
            raise ReferenceDataError(
                f"{path}: reference lacks configured features {sorted(missing)}")
        return ref
    rows = read_rows(path, settings.features, settings.segments)
    return build_reference(rows, model, settings, version=version, origin=f"file:{path.name}")


def load_references(settings: MonitorSettings) -> dict[str, Reference | None]:
    """Each model's reference from its file; ``None`` for models that warm up."""
    refs: dict[str, Reference | None] = {}
    for name, model in settings.models.items():
        if model.reference.file:
            path = settings.resolve_path(model.reference.file)
            refs[name] = load_reference_file(path, name, model)
        else:
            refs[name] = None  # built from the first events (warm-up)
    return refs
