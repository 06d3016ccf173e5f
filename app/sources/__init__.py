"""Upstream sources: schema, volume and freshness of ``mlmon.inputs`` (pure)."""
