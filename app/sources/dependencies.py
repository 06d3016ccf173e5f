"""The dependency map from the configuration: features -> sources -> models.

>>> from app.settings import settings_from_mapping
>>> s = settings_from_mapping({"sources": {"crm": {}}, "models": {"churn": {
...     "features": {"tenure": {"type": "numeric", "source": "crm"},
...                  "plan": {"type": "categorical"}},
...     "reference": {"warmup": 100}}}})
>>> affected(s, "crm")
{'churn': ['tenure']}
>>> upstream_source(s.models["churn"], ["tenure"]), upstream_source(s.models["churn"], ["plan"])
('crm', None)
"""

from __future__ import annotations

from collections.abc import Iterable

from app.settings import ModelSettings, MonitorSettings


def affected(settings: MonitorSettings, source: str) -> dict[str, list[str]]:
    """Models fed by ``source``, each with the features that come from it."""
    out: dict[str, list[str]] = {}
    for name, model in settings.models.items():
        features = sorted(f for f, spec in model.features.items() if spec.source == source)
        if features:
            out[name] = features
    return out


def upstream_source(model: ModelSettings, features: Iterable[str]) -> str | None:
    """The one source all of ``features`` come from, or None (several, or unknown)."""
    sources = {model.features[f].source if f in model.features else None for f in features}
    if len(sources) == 1:
        (only,) = sources
        return only
    return None
