"""Grafana dashboards and the worker's metrics against a real Prometheus.

A worker runs the demo's scenario (drift, labels, dead letters, serving figures) plus
source records with a schema change, a real Prometheus (Debian package ``prometheus``,
installed by ``.ci/run``) scrapes it every second and loads the alert rules, and then:

- every panel query of every dashboard in ``deploy/grafana/dashboards`` returns data
  (a non-NaN value) over the scenario's time range, and every variable has values;
- the dashboard JSON is what ``deploy/grafana/build.py`` builds and passes a structural
  check (unique ids, a 24-column grid without overlaps, the provisioned datasource, only
  defined variables);
- ``promtool check metrics`` accepts the worker's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from support import ROOT, create_topics, produce, settings_of

from app.broker import free_port
from app.demo.run import Demo, write_files

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
GRAFANA = ROOT / "deploy" / "grafana"
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus/promtool not installed (Debian package 'prometheus'; .ci/run "
           "installs it)")


def load_build() -> Any:
    spec = importlib.util.spec_from_file_location("grafana_build", GRAFANA / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob(
        "*.json"))}


def panels_of(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


# --- structure (no servers) --------------------------------------------------------------

def test_dashboards_are_built_by_the_generator():
    built = load_build().build()
    on_disk = {p.name: p.read_text() for p in (GRAFANA / "dashboards").glob("*.json")}
    assert on_disk == built, "run: python deploy/grafana/build.py"


def test_dashboard_structure():
    boards = dashboards()
    assert set(boards) == {"fleet.json", "model.json", "sources.json", "service.json"}
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    for name, board in boards.items():
        assert board["title"].startswith("driftwarden") and board["schemaVersion"] >= 36
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        titles = [p["title"] for p in board["panels"]]
        assert len(titles) == len(set(titles)), name
        cells: set[tuple[int, int]] = set()
        for p in board["panels"]:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, (name, p["title"])
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                    for y in range(g["y"], g["y"] + g["h"])}
            assert not mine & cells, f"{name}: {p['title']!r} overlaps another panel"
            cells |= mine
        defined = {v["name"] for v in board["templating"]["list"]}
        for p in panels_of(board):
            assert p["datasource"] == {"type": "prometheus", "uid": "prometheus"}
            assert p["targets"] and p["type"] in ("timeseries", "stat", "table")
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "prometheus" and t["expr"].strip()
                used = set(re.findall(r"\$(\w+)", t["expr"])) - {"__rate_interval"}
                assert used <= defined, (name, p["title"], used - defined)
    model = boards["model.json"]
    assert [v["name"] for v in model["templating"]["list"]] == ["model", "version"]
    provisioning = GRAFANA / "provisioning"
    ds = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == "prometheus"
    prov = yaml.safe_load((provisioning / "dashboards" / "driftwarden.yml").read_text())
    assert prov["providers"][0]["type"] == "file"


# --- against a real Prometheus --------------------------------------------------------

class Prometheus:
    def __init__(self, tmp: Path, target_port: int) -> None:
        self.port = free_port()
        config = tmp / "prometheus.yml"
        rules = ROOT / "deploy" / "prometheus" / "rules.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "driftwarden", "static_configs": [
                {"targets": [f"127.0.0.1:{target_port}"]}]}]}))
        self.log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115
        assert PROMETHEUS is not None
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1)
                return
            except OSError:
                assert self.proc.poll() is None, (tmp / "prometheus.log").read_text()
                time.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    def api(self, path: str, **params: Any) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        doc = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def source_records(now_ms: int) -> list[tuple[bytes, bytes]]:
    """Three sources over three five-minute windows; product renames a field in the last."""
    fields = {"crm": ["tenure_months", "age", "region", "contract"],
              "billing": ["monthly_charges", "plan", "payment_method", "discount_pct"],
              "product": ["support_calls_90d", "avg_session_minutes",
                          "days_since_last_login", "num_devices"]}
    start = (now_ms // 300_000 - 3) * 300_000
    out = []
    for source, names in fields.items():
        for i in range(1800):  # 600 a window, over the demo's min_samples of 500
            t = start + i * 500
            renamed = source == "product" and i >= 1200
            record = {("devices" if renamed and n == "num_devices" else n): i % 7
                      for n in names}
            out.append((source.encode(), orjson.dumps(
                {"source": source, "record_id": f"{source}-{i}", "timestamp": t,
                 "record": {"id": f"{source}-{i}", **record}})))
    return out


def test_every_panel_query_returns_data_and_metrics_pass_promtool(broker, worker_factory,
                                                                 tmp_path):
    config = write_files(tmp_path, 7, 0)
    cfg = yaml.safe_load(config.read_text())
    cfg["topics"] = {"prefix": f"dash{free_port()}."}
    cfg["worker"]["tick_interval"] = 0.5
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    settings = settings_of(config)
    create_topics(broker.bootstrap, settings)
    worker = worker_factory(config)
    prometheus = Prometheus(tmp_path, worker.port)
    try:
        began = time.time()
        by_source: dict[bytes, list[bytes]] = {}
        for key, value in source_records(int(began * 1000)):
            by_source.setdefault(key, []).append(value)
        for key, values in by_source.items():
            produce(broker.bootstrap, settings.topics.name("inputs"), values, key=key)
        demo = Demo(broker.bootstrap, config, 10, 2000, 7, worker.port)
        asyncio.run(demo.run())
        assert len(demo.evaluations) >= demo.windows, worker.tail()
        worker.wait_metric("driftwarden_source_records_total", 5400)
        time.sleep(4)  # a few scrapes after the end
        end = time.time()

        text = urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics",
                                      timeout=5).read()
        assert PROMTOOL is not None
        check = subprocess.run([PROMTOOL, "check", "metrics"], input=text,
                               capture_output=True, timeout=60)
        assert check.returncode == 0, (check.stdout + check.stderr).decode()

        variables = {"model": "churn", "version": ".*", "__rate_interval": "15s"}
        model_values = prometheus.api("label/model/values",
                                      **{"match[]": "driftwarden_predictions_total"})
        assert "churn" in model_values
        versions = prometheus.api("label/version/values",
                                  **{"match[]": 'driftwarden_predictions_total{model="churn"}'})
        assert versions == ["v3"]
        empty = []
        for name, board in dashboards().items():
            for p in panels_of(board):
                for t in p["targets"]:
                    expr = t["expr"]
                    for var, value in variables.items():
                        expr = expr.replace(f"${var}", value)
                    result = prometheus.api("query_range", query=expr, start=began - 5,
                                            end=end, step="1s")["result"]
                    values = [float(v) for s in result for _, v in s["values"]]
                    if not any(not math.isnan(v) for v in values):
                        empty.append(f"{name}: {p['title']}: {expr}")
        assert empty == [], "queries without data:\n" + "\n".join(empty)
        firing = prometheus.api("query", query='ALERTS{alertname="DriftwardenDriftFiring"}')
        assert firing["result"], "the drift rule did not fire on the scenario"
    finally:
        prometheus.stop()
