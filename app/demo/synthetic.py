"""A synthetic churn classifier's traffic, with a known shift partway through.

Twelve features with realistic ranges. From ``shift_at`` on, the named features move:
``monthly_charges`` rises by 0.75 standard deviations (a price increase),
``days_since_last_login`` doubles its scale (users drifting away) and ``plan`` loses
free users to pro (a pricing change). Everything else stays as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

MODEL = "churn"
SHIFTED = ("monthly_charges", "days_since_last_login", "plan")
NUMERIC = {
    "tenure_months": (0, 600),
    "monthly_charges": (0, 500),
    "support_calls_90d": (0, 100),
    "avg_session_minutes": (0, 1440),
    "days_since_last_login": (0, 3650),
    "num_devices": (0, 50),
    "age": (18, 110),
    "discount_pct": (0, 100),
}
CATEGORICAL = {
    "plan": ("free", "pro", "team", "enterprise"),
    "contract": ("monthly", "annual", "two_year"),
    "payment_method": ("card", "bank_transfer", "paypal", "invoice"),
    "region": ("na", "emea", "apac", "latam"),
}
PLAN_P = (0.50, 0.30, 0.15, 0.05)
PLAN_P_SHIFTED = (0.30, 0.50, 0.15, 0.05)


def feature_columns(rng: np.random.Generator, n: int, shifted: bool) -> dict[str, Any]:
    cols: dict[str, Any] = {
        "tenure_months": np.round(rng.gamma(1.6, 18.0, n)),
        "monthly_charges": np.clip(rng.normal(80.0 if shifted else 65.0, 20.0, n), 10, 300),
        "support_calls_90d": rng.poisson(1.3, n).astype(float),
        "avg_session_minutes": np.round(rng.lognormal(2.8, 0.6, n), 1),
        "days_since_last_login": np.round(rng.exponential(14.0 if shifted else 7.0, n)),
        "num_devices": (1 + rng.poisson(0.9, n)).astype(float),
        "age": np.clip(np.round(rng.normal(42, 12, n)), 18, 95),
        "discount_pct": np.round(rng.choice([0, 0, 0, 5, 10, 15, 20], n).astype(float)),
        "plan": rng.choice(CATEGORICAL["plan"], n, p=PLAN_P_SHIFTED if shifted else PLAN_P),
        "contract": rng.choice(CATEGORICAL["contract"], n, p=(0.55, 0.30, 0.15)),
        "payment_method": rng.choice(CATEGORICAL["payment_method"], n, p=(0.5, 0.25, 0.2, 0.05)),
        "region": rng.choice(CATEGORICAL["region"], n, p=(0.4, 0.3, 0.2, 0.1)),
    }
    return cols


def churn_score(cols: dict[str, Any]) -> np.ndarray[Any, Any]:
    z = (-1.2 - 0.03 * cols["tenure_months"] + 0.02 * (cols["monthly_charges"] - 65)
         + 0.35 * cols["support_calls_90d"] + 0.06 * cols["days_since_last_login"]
         - 0.03 * cols["avg_session_minutes"] + 0.8 * (cols["contract"] == "monthly")
         - 0.5 * (cols["plan"] == "enterprise"))
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def rows(cols: dict[str, Any]) -> list[dict[str, Any]]:
    names = list(cols)
    values = [cols[k].tolist() for k in names]
    return [dict(zip(names, vals, strict=True)) for vals in zip(*values, strict=True)]


def prediction_events(seed: int, total: int, *, start_ms: int, spacing_ms: int,
                      shift_at: int, version: str = "v3", chunk: int = 1000
                      ) -> Iterator[list[dict[str, Any]]]:
    """Prediction events in chunks, event time ``start_ms + i * spacing_ms``."""
    rng = np.random.default_rng(seed)
    i = 0
    while i < total:
        n = min(chunk, total - i, shift_at - i if i < shift_at else chunk)
        shifted = i >= shift_at
        cols = feature_columns(rng, n, shifted)
        scores = churn_score(cols)
        latency = np.round(rng.gamma(4.0, 9.0, n), 2)
        out = []
        for j, feats in enumerate(rows(cols)):
            k = i + j
            s = float(round(scores[j], 4))
            out.append({
                "prediction_id": f"churn-{seed}-{k}",
                "model": MODEL, "model_version": version, "features": feats,
                "prediction": s >= 0.5, "scores": {"churn": s, "stay": round(1 - s, 4)},
                "timestamp": start_ms + k * spacing_ms,
                "latency_ms": float(latency[j]), "cost": 0.0004,
                "segment": {"region": feats["region"]},
            })
        yield out
        i += n


ACCURACY, ACCURACY_SHIFTED = 0.88, 0.80  # the model's hit rate before and after the shift
LABEL_DELAY_MS = 10 * 60 * 1000  # labels arrive ten minutes (event time) after predictions


def outcomes(events: list[dict[str, Any]], rng: np.random.Generator, *, shifted: bool
             ) -> list[dict[str, Any]]:
    """Ground truth for predictions: right with the model's hit rate (lower once the
    world has shifted), each label ``LABEL_DELAY_MS`` (± 30 s) after its prediction."""
    n = len(events)
    right = rng.random(n) < (ACCURACY_SHIFTED if shifted else ACCURACY)
    jitter = rng.integers(-30_000, 30_001, n)
    return [{"prediction_id": e["prediction_id"], "model": e["model"],
             "label": bool(e["prediction"]) == bool(right[i]),
             "timestamp": e["timestamp"] + LABEL_DELAY_MS + int(jitter[i])}
            for i, e in enumerate(events)]


def training_rows(seed: int, n: int) -> list[dict[str, Any]]:
    """Rows like the model's validation data (no shift), with its outputs: the predicted
    class and the churn score, so prediction drift has a reference too."""
    cols = feature_columns(np.random.default_rng(seed + 1000), n, shifted=False)
    scores = churn_score(cols).round(4)
    cols["prediction"] = scores >= 0.5
    cols["score.churn"] = scores
    return rows(cols)
