"""The Grafana dashboards, as code: ``python deploy/grafana/build.py`` writes
``deploy/grafana/dashboards/*.json``.

Four dashboards share the Prometheus datasource provisioned with uid ``prometheus``:
the fleet overview (every model's health at a glance), model detail (variables ``model``
and ``version``), sources and freshness, and service health. The JSON is committed;
``tests/integration/test_dashboards.py`` checks it is what this file builds, checks its
structure, and runs every panel's query against a real Prometheus scraping a worker.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"
M = 'model="$model"'
MV = 'model="$model", version=~"$version"'


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False
           ) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DATASOURCE, "expr": expr, "refId": ref,
                         "legendFormat": legend or "__auto"}
    if instant:
        t.update(instant=True, range=False, format="table")
    return t


def panel(kind: str, title: str, targets: list[dict[str, Any]], *, w: int = 12, h: int = 8,
          unit: str | None = None, description: str = "",
          thresholds: list[tuple[str, float | None]] | None = None,
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    if unit:
        defaults["unit"] = unit
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": [
            {"color": c, "value": v} for c, v in thresholds]}
    p: dict[str, Any] = {"type": kind, "title": title, "description": description,
                         "datasource": DATASOURCE, "targets": targets,
                         "fieldConfig": {"defaults": defaults, "overrides": []},
                         "gridPos": {"w": w, "h": h}, "options": {}}
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom"},
                        "tooltip": {"mode": "multi"}}
    if extra:
        p.update(extra)
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    return p


def series(title: str, *targets: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return panel("timeseries", title, list(targets), **kw)


def stat(title: str, expr: str, **kw: Any) -> dict[str, Any]:
    return panel("stat", title, [target(expr)], w=kw.pop("w", 6), h=kw.pop("h", 4), **kw)


def table(title: str, expr: str, **kw: Any) -> dict[str, Any]:
    return panel("table", title, [target(expr, instant=True)], **kw)


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"w": 24, "h": 1}}


def variable(name: str, query: str, *, multi: bool = False) -> dict[str, Any]:
    v: dict[str, Any] = {
        "name": name, "label": name, "type": "query", "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
        "refresh": 2, "sort": 1, "multi": multi, "includeAll": multi,
        "current": {}, "options": [], "hide": 0}
    if multi:
        v["allValue"] = ".*"
    return v


def dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]],
              variables: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    x = y = 0
    height = 0
    for i, p in enumerate(panels, start=1):  # left to right, then down
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if p["type"] == "row" or x + w > 24:
            x, y = 0, y + height
            height = 0
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        p["id"] = i
        x += w
        height = max(height, h)
        if p["type"] == "row":
            x, y, height = 0, y + h, 0
    return {
        "uid": uid, "title": title, "description": description,
        "tags": ["driftwarden"], "timezone": "utc", "schemaVersion": 39, "version": 1,
        "editable": True, "graphTooltip": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables or []},
        "annotations": {"list": []},
        "links": [{"title": "driftwarden", "type": "dashboards", "tags": ["driftwarden"],
                   "asDropdown": True}],
        "panels": panels,
    }


def fleet() -> dict[str, Any]:
    firing = "driftwarden_alerts_firing"
    return dashboard("driftwarden-fleet", "driftwarden — fleet overview",
                     "Every monitored model's health at a glance.", [
        stat("Models monitored", "count(count by (model) (driftwarden_predictions_total))"),
        stat("Problems firing", f"sum({firing})",
             thresholds=[("green", None), ("orange", 1)]),
        stat("Critical problems", f'sum({firing}{{severity="critical"}})',
             thresholds=[("green", None), ("red", 1)]),
        stat("Predictions/s", f"sum(rate(driftwarden_predictions_total[{RATE}]))",
             unit="reqps"),
        table("Problems firing by model and kind",
              f"sum by (model, kind, severity) ({firing}) > 0 or "
              f"sum by (model, kind, severity) ({firing})", w=12),
        series("Predictions/s by model",
               target(f"sum by (model) (rate(driftwarden_predictions_total[{RATE}]))",
                      "{{model}}"), unit="reqps"),
        series("Worst drift score by model (last closed window)",
               target("max by (model) (driftwarden_drift_score)", "{{model}}")),
        series("Judged metric minus baseline, by model and version",
               target("driftwarden_model_performance - on (model, version, metric) "
                      "driftwarden_model_performance_baseline",
                      "{{model}} {{version}} {{metric}}"),
               description="Below zero: worse than the baseline for accuracy-like metrics."),
        series("Alerts published by kind",
               target('sum by (kind) (increase(driftwarden_alerts_total{status="firing"}'
                      f"[{RATE}]))", "{{kind}}"), unit="short"),
        series("Label coverage (lowest checkpoint) by model",
               target("min by (model) (driftwarden_label_coverage_ratio)", "{{model}}"),
               unit="percentunit"),
        series("p99 prediction latency by model",
               target("histogram_quantile(0.99, sum by (le, model) "
                      f"(rate(driftwarden_prediction_latency_seconds_bucket[{RATE}])))",
                      "{{model}}"), unit="s"),
        series("Cost per 1000 predictions by model and version (last window)",
               target("driftwarden_window_cost_per_1k_predictions",
                      "{{model}} {{version}}")),
    ])


def model_detail() -> dict[str, Any]:
    return dashboard("driftwarden-model", "driftwarden — model detail",
                     "One model: drift per feature, quality, performance per version, "
                     "latency, cost and alerts.", [
        row("Drift"),
        series("Drift score per feature (last closed window)",
               target(f"max by (feature, statistic) (driftwarden_drift_score{{{MV}}})",
                      "{{feature}} ({{statistic}})"), w=16,
               description="The statistic of each feature and output signal, per window."),
        table("Drift thresholds", f"driftwarden_drift_threshold{{{M}}}", w=8),
        series("Events per closed window", target(f"driftwarden_window_events{{{M}}}",
                                                  "events"), w=8),
        series("Events/s by topic and outcome",
               target(f"sum by (topic, outcome) (rate(driftwarden_events_total{{{M}}}[{RATE}]))",
                      "{{topic}} {{outcome}}"), w=8,
               description="Outcome late: after its window closed; invalid or "
                           "unknown_model: dead-lettered."),
        series("Windows closed/min",
               target(f"60 * rate(driftwarden_windows_closed_total{{{M}}}[{RATE}])",
                      "windows"), w=8),
        row("Data quality"),
        series("Quality rates per feature and rule",
               target(f"max by (feature, rule) (driftwarden_quality_rate{{{MV}}})",
                      "{{feature}} {{rule}}"), w=24, unit="percentunit"),
        row("Performance"),
        series("Performance per version",
               target(f"driftwarden_model_performance{{{MV}}}", "{{version}} {{metric}}"),
               target(f"driftwarden_model_performance_baseline{{{MV}}}",
                      "{{version}} baseline"), w=12),
        series("Label coverage per checkpoint",
               target(f"driftwarden_label_coverage_ratio{{{MV}}}",
                      "{{version}} after {{after}}"), w=12, unit="percentunit"),
        series("Label delay quantiles",
               target(f"driftwarden_label_delay_seconds{{{MV}}}",
                      "{{version}} p{{percentile}}"), w=12, unit="s"),
        series("Labels joined/s by outcome",
               target(f"sum by (outcome) (rate(driftwarden_labels_total{{{M}}}[{RATE}]))",
                      "{{outcome}}"), w=12),
        row("Serving: latency and cost"),
        series("Prediction latency (histogram)",
               target("histogram_quantile(0.5, sum by (le, version) (rate("
                      f"driftwarden_prediction_latency_seconds_bucket{{{MV}}}[{RATE}])))",
                      "{{version}} p50"),
               target("histogram_quantile(0.99, sum by (le, version) (rate("
                      f"driftwarden_prediction_latency_seconds_bucket{{{MV}}}[{RATE}])))",
                      "{{version}} p99"), w=12, unit="s"),
        series("Window p99 latency and objective",
               target(f'driftwarden_window_latency_seconds{{{MV}, percentile="99"}}',
                      "{{version}} p99"),
               target(f'driftwarden_slo_objective{{{M}, kind="latency_slo"}}', "objective"),
               w=12, unit="s"),
        series("Cost per 1000 predictions and budget",
               target(f"driftwarden_window_cost_per_1k_predictions{{{MV}}}", "{{version}}"),
               target(f'driftwarden_slo_objective{{{M}, kind="cost_budget"}}', "budget"),
               w=12),
        series("Spend/s and predictions/s by version",
               target(f"sum by (version) (rate(driftwarden_prediction_cost_total{{{MV}}}"
                      f"[{RATE}]))", "{{version}} cost/s"),
               target(f"sum by (version) (rate(driftwarden_predictions_total{{{MV}}}"
                      f"[{RATE}]))", "{{version}} predictions/s"), w=12),
        row("Alerts"),
        table("Problems firing", f"sum by (kind, severity) (driftwarden_alerts_firing{{{M}}})",
              w=12),
        series("Alerts published by kind and status",
               target(f"sum by (kind, status) (increase(driftwarden_alerts_total{{{M}}}"
                      f"[{RATE}]))", "{{kind}} {{status}}"), w=12),
    ], [variable("model", "label_values(driftwarden_predictions_total, model)"),
        variable("version",
                 'label_values(driftwarden_predictions_total{model="$model"}, version)',
                 multi=True)])


def sources() -> dict[str, Any]:
    return dashboard("driftwarden-sources", "driftwarden — sources and freshness",
                     "Upstream source systems: freshness, volume and their alerts.", [
        table("Seconds since each source's last record (event time)",
              "time() - driftwarden_source_last_event_timestamp_seconds", w=12),
        table("Source problems firing (model \"\")",
              'sum by (kind, severity) (driftwarden_alerts_firing{model=""})', w=12),
        series("Records/s by source",
               target(f"sum by (source) (rate(driftwarden_source_records_total[{RATE}]))",
                      "{{source}}"), w=12),
        series("Freshness: age of the newest record by source",
               target("time() - driftwarden_source_last_event_timestamp_seconds",
                      "{{source}}"), w=12, unit="s"),
        series("Source alerts published by kind",
               target('sum by (kind, status) (increase(driftwarden_alerts_total{model=""}'
                      f"[{RATE}]))", "{{kind}} {{status}}"), w=24),
    ])


def service() -> dict[str, Any]:
    return dashboard("driftwarden-service", "driftwarden — service health",
                     "The workers themselves: liveness, throughput, lag, batches, memory.", [
        stat("Workers up", 'sum(up{job="driftwarden"})',
             thresholds=[("red", None), ("green", 1)]),
        stat("Consumer lag (records)", "sum(driftwarden_consumer_lag_messages)",
             thresholds=[("green", None), ("orange", 10000), ("red", 50000)]),
        stat("Dead letters/s", f"sum(rate(driftwarden_deadletters_total[{RATE}]))"),
        stat("State restore errors (1h)",
             "sum(increase(driftwarden_state_errors_total[1h]))",
             description="Zero until a saved state cannot be read.",
             thresholds=[("green", None), ("red", 1)]),
        series("Events/s by topic and outcome",
               target(f"sum by (topic, outcome) (rate(driftwarden_events_total[{RATE}]))",
                      "{{topic}} {{outcome}}")),
        series("Consumer lag by topic",
               target("sum by (topic) (driftwarden_consumer_lag_messages)", "{{topic}}")),
        series("Dead letters/s by reason",
               target(f"sum by (reason) (rate(driftwarden_deadletters_total[{RATE}]))",
                      "{{reason}}")),
        series("Window close lag (due to published)",
               target("histogram_quantile(0.99, sum by (le) "
                      f"(rate(driftwarden_window_close_lag_seconds_bucket[{RATE}])))", "p99"),
               target("histogram_quantile(0.5, sum by (le) "
                      f"(rate(driftwarden_window_close_lag_seconds_bucket[{RATE}])))", "p50"),
               unit="s"),
        series("Batch size",
               target("histogram_quantile(0.5, sum by (le) "
                      f"(rate(driftwarden_batch_events_bucket[{RATE}])))", "p50"),
               target(f"rate(driftwarden_batch_events_sum[{RATE}]) / "
                      f"rate(driftwarden_batch_events_count[{RATE}])", "mean {{instance}}")),
        series("Batch processing time",
               target("histogram_quantile(0.99, sum by (le) "
                      f"(rate(driftwarden_batch_processing_seconds_bucket[{RATE}])))", "p99"),
               target(f"rate(driftwarden_batch_processing_seconds_sum[{RATE}])",
                      "busy share {{instance}}"), unit="s"),
        series("Resident memory",
               target('process_resident_memory_bytes{job="driftwarden"}', "{{instance}}"),
               unit="bytes"),
        series("CPU",
               target(f'rate(process_cpu_seconds_total{{job="driftwarden"}}[{RATE}])',
                      "{{instance}}"), unit="percentunit"),
        series("Event-time watermark delay by model",
               target("time() - driftwarden_watermark_timestamp_seconds", "{{model}}"),
               unit="s"),
        series("Per-feature series dropped by the cap",
               target(f"rate(driftwarden_feature_series_dropped_total[{RATE}])", "dropped")),
    ])


DASHBOARDS = {"fleet.json": fleet, "model.json": model_detail, "sources.json": sources,
              "service.json": service}


def build() -> dict[str, str]:
    """File name -> JSON text."""
    return {name: json.dumps(make(), indent=2, ensure_ascii=False) + "\n"
            for name, make in DASHBOARDS.items()}


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, text in build().items():
        (OUT / name).write_text(text, encoding="utf-8")
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
