"""Prometheus metrics: one typed bundle built from an injected registry."""

from app.observability.metrics import Metrics

__all__ = ["Metrics"]
