"""Every metric of the bundle is in the README's metrics reference table, with its type
and labels."""

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.observability.metrics import BatchHistogram, Metrics

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_metric_is_documented():
    metrics = Metrics(CollectorRegistry())
    rows = []
    for value in vars(metrics).values():
        if isinstance(value, Counter | Gauge | Histogram):
            kind = type(value).__name__.lower()
            name = value._name + ("_total" if kind == "counter" else "")
            rows.append((name, kind, ", ".join(value._labelnames) or "—"))
        elif isinstance(value, BatchHistogram):
            rows.append((value.name, "histogram", ", ".join(value.labelnames)))
    assert len(rows) > 30
    missing = [r for r in rows if f"| `{r[0]}` | {r[1]} | {r[2]} |" not in README]
    assert missing == []
