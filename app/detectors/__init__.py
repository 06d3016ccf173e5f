"""Drift statistics and their significance: numbers only; the policy layer judges them."""

from app.detectors.significance import DEFAULT_Q, benjamini_hochberg, bh_adjusted, p_value
from app.detectors.statistics import (
    STATISTICS,
    StatisticSpec,
    chi2,
    choose_statistic,
    hellinger,
    jensen_shannon,
    ks,
    ks_with_bound,
    psi,
    unseen_rate,
    wasserstein,
    wasserstein_with_bound,
)

__all__ = [
    "DEFAULT_Q",
    "STATISTICS",
    "StatisticSpec",
    "benjamini_hochberg",
    "bh_adjusted",
    "chi2",
    "choose_statistic",
    "hellinger",
    "jensen_shannon",
    "ks",
    "ks_with_bound",
    "p_value",
    "psi",
    "unseen_rate",
    "wasserstein",
    "wasserstein_with_bound",
]
