"""``driftwarden demo``: broker, worker, producer and alert printer, end to end.

1. writes a training sample and a monitor file into a temporary folder;
2. starts the embedded broker and creates the topics;
3. starts a real worker process (``driftwarden worker``);
4. announces the deployed model version with its holdout accuracy (the baseline),
   produces the churn model's predictions in JSON-array messages, shifting three named
   features after 40 % of the stream (and the model's accuracy with them), their ground
   truth ten minutes of event time later, plus a few malformed messages;
5. prints every alert as it arrives on ``mlmon.alerts``;
6. ends with a summary read from the evaluations topic and the worker's /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import heapq
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml

from app.broker import EmbeddedBroker, _bind_to_parent, free_port
from app.demo import synthetic
from app.errors import DriftwardenError
from app.kafka import client_kwargs, ensure_topics
from app.settings import load_settings

WINDOW_MS = 5 * 60 * 1000


def demo_config(*, reference: dict[str, Any], kafka: dict[str, Any],
                metrics: dict[str, Any], worker: dict[str, Any],
                topics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The demo's monitor file: the synthetic churn model and its three sources."""
    sources = {"crm": ["tenure_months", "age", "region", "contract"],
               "billing": ["monthly_charges", "plan", "payment_method", "discount_pct"],
               "product": ["support_calls_90d", "avg_session_minutes", "days_since_last_login",
                           "num_devices"]}
    source_of = {f: s for s, fs in sources.items() for f in fs}
    features: dict[str, Any] = {}
    for name, (lo, hi) in synthetic.NUMERIC.items():
        features[name] = {"type": "numeric", "source": source_of[name], "range": [lo, hi]}
    for name, values in synthetic.CATEGORICAL.items():
        features[name] = {"type": "categorical", "source": source_of[name],
                          "values": list(values)}
    config: dict[str, Any] = {"kafka": kafka}
    if topics:
        config["topics"] = topics
    config.update({
        "metrics": metrics,
        "worker": worker,
        "defaults": {"window": "5m", "lateness": "2s", "min_samples": 500},
        "sources": {"crm": {"owner": "data-eng", "freshness": "15m"},
                    "billing": {"owner": "payments-data", "freshness": "1h"},
                    "product": {"owner": "product-analytics", "freshness": "30m"}},
        "models": {synthetic.MODEL: {
            "owners": {"monitoring": "ml-platform", "on_call": "churn-oncall",
                       "data": "data-eng"},
            "task": "binary_classification",
            "features": features,
            "reference": reference,
            "drift": {"statistic": "psi", "warning": 0.1, "critical": 0.25},
            "slo": {"latency_p99_ms": 250, "cost_per_1k": 0.5},
            # Labels come ten minutes after their predictions: judge each window ten
            # minutes after it ends; the baseline comes from the deployed event's metrics.
            "performance": {"positive_class": "1", "score_key": "churn", "max_drop": 0.03,
                            "min_labels": 500, "label_horizon": "20m", "after": ["10m"],
                            "max_label_lag": "20m"},
        }},
    })
    return config


def standalone_config() -> dict[str, Any]:
    """The demo's monitor file for a real Kafka (``examples/demo.yaml``, used by the
    compose stack's ``demo`` profile): topics of their own (``demo.`` prefix), the
    reference learned from the first 5000 predictions."""
    return demo_config(reference={"warmup": 5000},
                       kafka={"partitions": 4}, topics={"prefix": "demo."},
                       metrics={"host": "0.0.0.0", "port": 9464},  # inside a container
                       worker={"app_id": "driftwarden-demo"})


def write_files(workdir: Path, seed: int, metrics_port: int) -> Path:
    rows = synthetic.training_rows(seed, 20_000)
    with open(workdir / "churn_train.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = demo_config(
        reference={"file": "churn_train.csv"},
        kafka={"partitions": 2, "rebalance_timeout": "3s", "session_timeout": "6s"},
        metrics={"host": "127.0.0.1", "port": metrics_port},
        worker={"app_id": f"driftwarden-demo-{os.getpid()}",
                "data_dir": str(workdir / "data")})
    path = workdir / "monitor.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


BAD_MESSAGES = [
    b"{not json",
    b'{"prediction_id": "x1", "model": "churn", "model_version": "v3", '
    b'"features": {"age": NaN}, "prediction": true}',
    b'[{"prediction_id": "x2", "model": "fraud", "model_version": "v1", '
    b'"features": {}, "prediction": 0}]',
]


class Demo:
    def __init__(self, bootstrap: str, config: Path, duration: float, rate: int, seed: int,
                 metrics_port: int) -> None:
        self.bootstrap = bootstrap
        self.settings = load_settings(config)
        self.duration = duration
        self.rate = rate
        self.seed = seed
        self.metrics_port = metrics_port
        self.per_window = max(1000, int(rate * 6))  # a window about every 6 s
        windows = max(5, round(rate * duration / self.per_window))
        self.windows = windows
        self.total = windows * self.per_window
        self.shift_window = max(2, int(windows * 0.4))
        self.produced = 0
        self.alerts: list[dict[str, Any]] = []
        self.evaluations: dict[str, dict[str, Any]] = {}
        self.performance: dict[str, dict[str, Any]] = {}  # window id -> newest revision
        self.labels = 0
        self.done = asyncio.Event()

    async def produce(self) -> None:
        from aiokafka import AIOKafkaProducer

        topics = self.settings.topics
        now_ms = int(time.time() * 1000)
        start_ms = (now_ms // WINDOW_MS - self.windows) * WINDOW_MS
        spacing = WINDOW_MS // self.per_window
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5,
                                    max_request_size=4 * 1024 * 1024,
                                    **client_kwargs(self.settings.kafka))
        await producer.start()
        key = synthetic.MODEL.encode()
        rng = np.random.default_rng(self.seed + 1)
        labels: list[tuple[int, int, dict[str, Any]]] = []  # heap by label time
        order = itertools.count()
        try:
            await producer.send(topics.name("model_events"), orjson.dumps({
                "model": synthetic.MODEL, "version": "v3", "event": "deployed",
                "timestamp": start_ms - 1, "metrics": {"accuracy": synthetic.ACCURACY}}),
                key=key)
            for bad in BAD_MESSAGES:
                await producer.send(topics.name("predictions"), bad, key=key)
            began = time.monotonic()
            shift_at = self.shift_window * self.per_window
            for chunk in synthetic.prediction_events(
                    self.seed, self.total, start_ms=start_ms, spacing_ms=spacing,
                    shift_at=shift_at, chunk=200):
                await producer.send(topics.name("predictions"), orjson.dumps(chunk), key=key)
                shifted = self.produced >= shift_at
                self.produced += len(chunk)
                for o in synthetic.outcomes(chunk, rng, shifted=shifted):
                    heapq.heappush(labels, (o["timestamp"], next(order), o))
                # Ground truth whose time has come (by the predictions' event time).
                due = []
                while labels and labels[0][0] <= chunk[-1]["timestamp"]:
                    due.append(heapq.heappop(labels)[2])
                if due:
                    await producer.send(topics.name("outcomes"), orjson.dumps(due), key=key)
                    self.labels += len(due)
                ahead = self.produced / self.rate - (time.monotonic() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            rest = [heapq.heappop(labels)[2] for _ in range(len(labels))]
            for i in range(0, len(rest), 500):
                await producer.send(topics.name("outcomes"), orjson.dumps(rest[i:i + 500]),
                                    key=key)
            self.labels += len(rest)
            await producer.flush()
        finally:
            await producer.stop()

    async def consume(self) -> None:
        from aiokafka import AIOKafkaConsumer

        topics = self.settings.topics
        consumer = AIOKafkaConsumer(topics.name("alerts"), topics.name("evaluations"),
                                    bootstrap_servers=self.bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    **client_kwargs(self.settings.kafka))
        await consumer.start()
        try:
            while not self.done.is_set():
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for rec in records:
                        self.on_record(rec.topic, orjson.loads(rec.value))
        finally:
            await consumer.stop()

    def on_record(self, topic: str, event: dict[str, Any]) -> None:
        data = event["data"]
        if topic == self.settings.topics.name("alerts"):
            self.alerts.append(data)
            print(alert_line(data), flush=True)
        elif data.get("kind") == "performance":
            self.performance[data["window_id"]] = data
        elif data.get("kind") == "drift":  # not the sources' evaluations
            self.evaluations[data["evaluation_id"]] = data
        if len(self.evaluations) >= self.windows and len(self.performance) >= self.windows:
            self.done.set()

    async def run(self) -> None:
        consumer = asyncio.create_task(self.consume())
        try:
            await self.produce()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), timeout=45)
        finally:
            self.done.set()
            await consumer


def alert_line(data: dict[str, Any]) -> str:
    ev = data["evidence"]
    window = f"window {data['window']['start'][11:16]}-{data['window']['end'][11:16]}"
    # a source's alert has no model: it is about the source (and the models it feeds)
    who = data.get("model") or f"source:{data.get('source')}"
    subject = data.get("feature") or "-"
    head = f"  ALERT {data['severity']:<8} {who}/{subject:<22} {data['kind']:<17}"
    route = data.get("route") or {}
    owner = f"to {route.get('to') or (data.get('owners') or {}).get('on_call')}"
    if data["status"] == "resolved":
        return (f"  RESOLVED {data['severity']:<5} {who}/{subject:<22} "
                f"{data['kind']:<17}{data['summary'].partition(':')[0]}  {owner}")
    if data["kind"] == "performance_drop":
        low, high = ev["interval"]
        return (f"{head}{ev['statistic']} {ev['value']:.3f} [{low:.3f}, {high:.3f}] < "
                f"{ev['threshold']:g} (baseline {ev['reference_value']:g}, "
                f"{ev['baseline_source']})  {window}  n={ev['n']}  {owner}")
    if data["kind"] == "concept_drift":
        return (f"{head}{ev['statistic']} at labelled prediction {ev['n']}  "
                f"({ev['reference']} -> {ev['window']})  {window}  {owner}")
    if data["kind"] == "label_coverage":
        return f"{head}{ev['value']:.1%} < {ev['threshold']:.0%}  {window}  {owner}"
    if "reference" in ev and "window" in ev:
        return (f"{head}{ev['statistic']} {ev['value']:.3f} >= {ev['threshold']:g}  "
                f"{window}  ({ev['reference']} -> {ev['window']})  {owner}")
    # e.g. schema_change, latency_slo, rollback_recommended: their summary says it
    return f"{head}{data['summary'].partition(': ')[2]}  {window}  {owner}"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read()
    except OSError:
        return {}
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def summarise(demo: Demo, metrics: dict[Any, float], elapsed: float) -> None:
    def total(name: str, **labels: str) -> float:
        return sum(v for (n, lab), v in metrics.items()
                   if n == name and all((k, val) in lab for k, val in labels.items()))

    processed = sum(e["n"] for e in demo.evaluations.values())
    valid = total("driftwarden_events_total", outcome="valid",
                  topic=demo.settings.topics.name("predictions"))
    busy = total("driftwarden_batch_processing_seconds_sum")
    firing = [a for a in demo.alerts if a["status"] == "firing"]
    per_feature = Counter(a["feature"] for a in firing if a["kind"] == "feature_drift")
    outputs = Counter(a["feature"] for a in firing if a["kind"] == "prediction_drift")
    dead = {dict(lab).get("reason", "?"): v for (n, lab), v in metrics.items()
            if n == "driftwarden_deadletters_total"}
    print("\n== summary ==")
    print(f"events produced:      {demo.produced} (+{len(BAD_MESSAGES)} malformed messages)")
    print(f"events processed:     {int(valid)} valid; {processed} evaluated in closed windows")
    print("dead letters:         " + (", ".join(f"{k} {int(v)}" for k, v in sorted(dead.items()))
                                       or "none"))
    print(f"windows closed:       {len(demo.evaluations)} of {demo.windows} "
          f"(shift starts in window {demo.shift_window + 1})")
    if busy > 0:
        everything = total("driftwarden_events_total", outcome="valid")
        print(f"worker throughput:    {everything / busy:,.0f} events/s of batch processing "
              f"time ({busy:.2f} s busy; predictions and labels)")
    print("alerts per feature:   " + (", ".join(f"{f} {c}" for f, c in per_feature.most_common())
                                      or "none"))
    print("prediction drift:     " + (", ".join(f"{f} {c}" for f, c in outputs.most_common())
                                      or "none") + "  (the inputs moved the churn scores)")
    perf = sorted(demo.performance.values(), key=lambda d: d["window"]["start_ms"])
    if perf:
        base = perf[0]["performance"]
        print(f"labels:               {demo.labels} produced, "
              f"{int(total('driftwarden_labels_total', outcome='joined'))} joined; "
              f"judged 10 min after each window")
        print("accuracy per window:  " + ", ".join(
            f"{d['performance']['value']:.3f}" if d["performance"]["value"] is not None
            else "n/a" for d in perf)
            + f"  (baseline {base['baseline']} from the {base['baseline_source']})")
    drops = sorted({a["window"]["start"][11:16] for a in firing
                    if a["kind"] == "performance_drop"})
    concept = [a for a in firing if a["kind"] == "concept_drift"]
    print(f"performance drop:     {len(drops)} alert"
          + (f" from window {drops[0]} on (accuracy {synthetic.ACCURACY} -> "
             f"{synthetic.ACCURACY_SHIFTED} at the shift)" if drops else "s"))
    print("concept drift:        " + (", ".join(
        f"{a['evidence']['statistic']} at labelled prediction {a['evidence']['n']}"
        for a in concept) or "none"))
    unshifted = sorted(set(per_feature) - set(synthetic.SHIFTED))
    missed = sorted(set(synthetic.SHIFTED) - set(per_feature))
    print(f"shifted features:     {', '.join(synthetic.SHIFTED)}; missed: "
          f"{', '.join(missed) or 'none'}; false alarms on unshifted: "
          f"{', '.join(unshifted) or 'none'}")
    print(f"demo took {elapsed:.0f} s")


def run_external(bootstrap: str, config: Path, *, duration: float, rate: int,
                 seed: int) -> int:
    """The demo's traffic against a running Kafka and worker (the compose stack's demo
    profile): produce, then print the alerts and the summary as they come."""
    began = time.monotonic()
    demo = Demo(bootstrap, config, duration, rate, seed, metrics_port=0)
    if synthetic.MODEL not in demo.settings.models:
        raise DriftwardenError(f"{config} has no model {synthetic.MODEL!r}: use the demo's "
                               "monitor file (examples/demo.yaml)")
    asyncio.run(ensure_topics(bootstrap, demo.settings))
    print(f"producing {demo.total} predictions of model '{synthetic.MODEL}' at ~{rate}/s to "
          f"{demo.settings.topics.name('predictions')} on {bootstrap}; "
          f"{', '.join(synthetic.SHIFTED)} shift from window {demo.shift_window + 1}\n")
    asyncio.run(demo.run())
    summarise(demo, {}, time.monotonic() - began)
    return 0


def run_demo(duration: float = 60.0, rate: int = 2000, seed: int = 7) -> int:
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="driftwarden-demo-"))
    metrics_port = free_port()
    config = write_files(workdir, seed, metrics_port)
    print(f"driftwarden demo: files in {workdir}")
    broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
    print(f"embedded broker on {broker.bootstrap} (pid {broker.pid})")
    worker: subprocess.Popen[bytes] | None = None
    try:
        demo = Demo(broker.bootstrap, config, duration, rate, seed, metrics_port)
        asyncio.run(ensure_topics(broker.bootstrap, demo.settings))
        log = open(workdir / "worker.log", "wb")  # noqa: SIM115
        worker = subprocess.Popen(
            [sys.executable, "-m", "app", "worker", "-c", str(config),
             "--bootstrap", broker.bootstrap],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_bind_to_parent)
        log.close()
        print(f"worker started (pid {worker.pid}, log {workdir / 'worker.log'}, metrics "
              f"http://127.0.0.1:{metrics_port}/metrics)")
        print(f"producing {demo.total} predictions of model '{synthetic.MODEL}' at "
              f"~{rate}/s in {demo.windows} five-minute event-time windows; "
              f"{', '.join(synthetic.SHIFTED)} shift from window {demo.shift_window + 1}\n")
        asyncio.run(demo.run())
        metrics = scrape(metrics_port)
        summarise(demo, metrics, time.monotonic() - began)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the worker and the broker", file=sys.stderr)
        return 130
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        broker.stop()
