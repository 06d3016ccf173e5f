"""Mergeable, serialisable sketches (pure numpy, no faust imports).

Each sketch is a monoid: ``empty``/constructor, ``update(batch)``, ``merge(other)``,
and ``to_state()``/``from_state()`` carrying a format version.
"""

from app.sketches.categorical import CategoryCounts
from app.sketches.histogram import BinnedHistogram
from app.sketches.quantile import QuantileSketch

SKETCHES = {"histogram": BinnedHistogram, "categories": CategoryCounts,
            "quantile": QuantileSketch}

__all__ = ["SKETCHES", "BinnedHistogram", "CategoryCounts", "QuantileSketch"]
