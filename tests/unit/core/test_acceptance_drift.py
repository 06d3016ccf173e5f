"""The drift engine's acceptance scenario: a churn-like model whose two features shift by a
modest amount is caught within two windows of the shift, naming those features only."""

import numpy as np
import pytest

from app.core.engine import Engine
from app.reference import build_reference
from app.settings import settings_from_mapping

W = 3_600_000  # one-hour windows
PER_WINDOW = 5_000
SHIFT_WINDOW = 6
PLANS = ("free", "pro", "team", "enterprise")


def features(rng, n, shifted):
    tenure = rng.gamma(2.0, 12.0, n)  # sd ~17 months
    if shifted:
        tenure = tenure + 0.3 * 12.0 * np.sqrt(2.0)  # +0.3 sd
    plan_p = (0.45, 0.35, 0.15, 0.05) if shifted else (0.60, 0.20, 0.15, 0.05)  # pro 20->35 %
    cols = {
        "tenure_months": tenure,
        "monthly_charges": rng.normal(65, 20, n),
        "support_calls": rng.poisson(1.3, n).astype(float),
        "session_minutes": rng.lognormal(2.8, 0.6, n),
        "days_since_login": rng.exponential(7.0, n),
        "devices": 1.0 + rng.poisson(0.9, n),
        "age": rng.normal(42, 12, n),
        "discount": rng.choice([0.0, 5.0, 10.0, 20.0], n),
        "plan": rng.choice(PLANS, n, p=plan_p),
        "contract": rng.choice(["monthly", "annual", "two_year"], n, p=(0.55, 0.3, 0.15)),
        "payment": rng.choice(["card", "bank", "paypal"], n, p=(0.5, 0.3, 0.2)),
        "region": rng.choice(["na", "emea", "apac", "latam"], n, p=(0.4, 0.3, 0.2, 0.1)),
    }
    return [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in cols.items()}
            for i in range(n)]


@pytest.fixture(scope="module")
def outcome():
    feats = {k: {"type": "numeric"} for k in ("tenure_months", "monthly_charges",
                                                "support_calls", "session_minutes",
                                                "days_since_login", "devices", "age",
                                                "discount")}
    feats.update({k: {"type": "categorical"} for k in ("plan", "contract", "payment",
                                                        "region")})
    settings = settings_from_mapping(
        {"defaults": {"window": "1h", "lateness": "0s", "min_samples": 200},
         "models": {"churn": {"features": feats, "reference": {"file": "train.parquet"}}}},
        env={})
    rng = np.random.default_rng(2026)
    ref = build_reference(features(rng, 50_000, False), "churn", settings.models["churn"],
                          origin="file:train.parquet")
    engine = Engine(settings, {"churn": ref}, source="urn:test")
    alerts_by_window: dict[int, set[str]] = {}
    for w in range(SHIFT_WINDOW + 4):
        rows = features(rng, PER_WINDOW, shifted=w >= SHIFT_WINDOW)
        batch = engine.batch()
        for i, f in enumerate(rows):
            batch.add({"model": "churn", "model_version": "v1", "features": f,
                       "timestamp": w * W + i * (W // PER_WINDOW)}, 0)
        engine.apply(batch, None)
        for start in engine.due("churn", None):
            closed = engine.begin_close("churn", start)
            alerts_by_window[start // W] = {a.subject for a in closed.decisions}
            engine.finish_close("churn", start)
    return alerts_by_window


def test_no_alert_before_the_shift(outcome):
    assert all(outcome[w] == set() for w in range(SHIFT_WINDOW)), outcome


def test_caught_within_two_windows_naming_only_the_shifted_features(outcome):
    caught = [w for w in range(SHIFT_WINDOW, SHIFT_WINDOW + 3) if outcome.get(w)]
    assert caught and caught[0] <= SHIFT_WINDOW + 1, outcome
    for w in caught:
        assert outcome[w] == {"tenure_months", "plan"}, outcome
