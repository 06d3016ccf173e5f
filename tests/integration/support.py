"""Helpers for tests against the real embedded broker and real worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.broker import free_port
from app.kafka import ensure_topics
from app.settings import MonitorSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
MODEL = "churn-it"
WINDOW_MS = 60_000


def feature_rows(rng: np.random.Generator, n: int, shifted: bool = False) -> list[dict[str, Any]]:
    """Four features; when shifted, n1 moves by 0.6 sd and c2's shares swap."""
    n1 = rng.normal(0.6 if shifted else 0.0, 1.0, n)
    n2 = rng.gamma(2.0, 3.0, n)
    c1 = rng.choice(["a", "b", "c"], n, p=(0.5, 0.3, 0.2))
    c2 = rng.choice(["x", "y"], n, p=(0.3, 0.7) if shifted else (0.7, 0.3))
    return [{"n1": round(float(n1[i]), 4), "n2": round(float(n2[i]), 4), "c1": str(c1[i]),
             "c2": str(c2[i])} for i in range(n)]


def predictions(rows: list[dict[str, Any]], times_ms: list[int], *, model: str = MODEL,
                start_id: int = 0, version: str = "v1") -> list[dict[str, Any]]:
    return [{"prediction_id": f"p-{start_id + i}", "model": model, "model_version": version,
             "features": f, "prediction": 1, "timestamp": t, "scores": {"1": 0.7}}
            for i, (f, t) in enumerate(zip(rows, times_ms, strict=True))]


def write_config(tmp: Path, **overrides: Any) -> Path:
    tag = uuid.uuid4().hex[:8]
    rng = np.random.default_rng(42)
    ref = tmp / "train.jsonl"
    ref.write_bytes(b"\n".join(orjson.dumps(r) for r in feature_rows(rng, 5000)))
    config: dict[str, Any] = {
        "kafka": {"partitions": 2, "rebalance_timeout": "3s", "session_timeout": "6s"},
        "topics": {"prefix": f"t{tag}."},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "worker": {"app_id": f"dw-test-{tag}", "data_dir": str(tmp / "data"),
                   "tick_interval": 0.25},
        "defaults": {"window": "1m", "lateness": "1s", "min_samples": 200},
        "models": {MODEL: {
            "owners": {"monitoring": "ml-platform", "on_call": "it-oncall"},
            "features": {"n1": {"type": "numeric"}, "n2": {"type": "numeric"},
                         "c1": {"type": "categorical"}, "c2": {"type": "categorical"}},
            "reference": {"file": "train.jsonl"},
        }},
    }
    for key, value in overrides.items():
        config.setdefault(key, {}).update(value)
    path = tmp / "monitor.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Worker:
    """A real ``driftwarden worker`` process with its own metrics port."""

    def __init__(self, config: Path, bootstrap: str, log: Path) -> None:
        self.config, self.bootstrap, self.log = config, bootstrap, log
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cfg = yaml.safe_load(self.config.read_text())
        cfg["metrics"]["port"] = self.port
        run_cfg = self.config.with_name(f"run-{self.port}.yaml")
        run_cfg.write_text(yaml.safe_dump(cfg))
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", "worker", "-c", str(run_cfg),
                 "--bootstrap", self.bootstrap,
                 "--log-level", os.environ.get("DW_TEST_LOG_LEVEL", "warn")],
                stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                          timeout=2).read().decode()
        except OSError:
            return {}
        return {(s.name, frozenset(s.labels.items())): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def metric(self, name: str, **labels: str) -> float:
        want = set(labels.items())
        return sum(v for (n, lab), v in self.metrics().items() if n == name and want <= lab)

    def wait_metric(self, name: str, value: float, timeout: float = 60, **labels: str) -> None:
        deadline = time.monotonic() + timeout
        last = 0.0
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            last = self.metric(name, **labels)
            if last >= value:
                return
            time.sleep(0.2)
        raise AssertionError(f"{name}{labels} reached {last}, not {value}\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def partitions_of(worker: Worker, topic: str) -> set[str]:
    """The partitions of ``topic`` a worker holds (those it reports a lag for)."""
    return {dict(labels)["partition"] for (name, labels), _ in worker.metrics().items()
            if name == "driftwarden_consumer_lag_messages" and ("topic", topic) in labels}


def settings_of(config: Path) -> MonitorSettings:
    return load_settings(config, env={})


def create_topics(bootstrap: str, settings: MonitorSettings) -> None:
    asyncio.run(ensure_topics(bootstrap, settings))


def produce(bootstrap: str, topic: str, values: list[bytes], key: bytes = MODEL.encode()) -> None:
    async def go() -> None:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 * 1024 * 1024)
        await p.start()
        try:
            for v in values:
                await p.send_and_wait(topic, v, key=key)
        finally:
            await p.stop()

    asyncio.run(go())


def collect(bootstrap: str, topic: str, done: Callable[[list[Any]], bool],
            timeout: float = 60) -> list[Any]:
    """Records of ``topic`` from the start until ``done(records)`` or the timeout."""

    async def go() -> list[Any]:
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, max_partition_fetch_bytes=16 * 1024 * 1024,
                             fetch_max_bytes=32 * 1024 * 1024)
        await c.start()
        out: list[Any] = []
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not done(out):
                batch = await c.getmany(timeout_ms=300)
                for records in batch.values():
                    out.extend(records)
        finally:
            await c.stop()
        return out

    return asyncio.run(go())


def cloud_events(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]


class InBackground:
    """A service (e.g. a ``RetrainListener``): its ``run(stop)`` coroutine in a thread and
    event loop of its own."""

    def __init__(self, listener: Any) -> None:
        self.listener = listener
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self.listener.run(self.stop))
        except BaseException as exc:
            self.error = exc
        finally:
            self.loop.close()

    def __enter__(self) -> InBackground:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)
        assert not self.thread.is_alive(), "the listener did not stop"
        assert self.error is None, repr(self.error)
