"""Throughput of a driftwarden worker against the raw-consumer ceiling, in one run.

Everything runs on the embedded broker on 127.0.0.1 and stops by itself:

1. **ceiling**: a raw aiokafka consumer (``getmany``, large batches) reading and
   orjson-decoding the same messages, iterating every event;
2. **driftwarden**: a real worker process (5 models x 23 features, drift on). Once it
   has counted one warm-up event (it has joined its group and consumes), the same
   messages are produced as fast as the producer goes; measured from then to its last
   event counted (its own ``/metrics``), and on to its last window evaluated.

Both for JSON-array messages (500 events each) and single-event messages. Output: a
markdown table of events/s, the ratio to the ceiling, worker CPU seconds per million
events and peak RSS. Usage::

    python load-tests/bench.py --events 200000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from app.broker import EmbeddedBroker, free_port  # noqa: E402
from app.kafka import ensure_topics  # noqa: E402
from app.settings import load_settings  # noqa: E402

NUMERIC, CATEGORICAL = 20, 3
WINDOW_MS = 60_000
CLK = os.sysconf("SC_CLK_TCK")


def make_events(n: int, models: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    num = rng.normal(0, 1, (n, NUMERIC)).round(4)
    cats = rng.integers(0, 6, (n, CATEGORICAL))
    t0 = 1_700_000_000_000 // WINDOW_MS * WINDOW_MS
    per_model_step = max(1, WINDOW_MS * 10 * models // n)  # ~10 windows per model
    out = []
    for i in range(n):
        feats: dict[str, Any] = {f"f{j}": float(num[i, j]) for j in range(NUMERIC)}
        feats.update({f"c{j}": f"v{cats[i, j]}" for j in range(CATEGORICAL)})
        out.append({"prediction_id": f"p{i}", "model": f"m{i % models}", "model_version": "v1",
                    "features": feats, "prediction": 1,
                    "timestamp": t0 + (i // models) * per_model_step})
    return out


def messages(events: list[dict[str, Any]], models: int, array: int) -> list[tuple[bytes, bytes]]:
    by_model: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_model.setdefault(e["model"], []).append(e)
    out = []
    for model, evs in by_model.items():
        key = model.encode()
        if array > 1:
            out += [(key, orjson.dumps(evs[i:i + array])) for i in range(0, len(evs), array)]
        else:
            out += [(key, orjson.dumps(e)) for e in evs]
    return out


async def produce(bootstrap: str, topic: str, msgs: list[tuple[bytes, bytes]]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20,
                         max_request_size=8 << 20)
    await p.start()
    try:
        futs = [await p.send(topic, v, key=k) for k, v in msgs]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def ceiling(bootstrap: str, topic: str, total: int) -> float:
    """Events per second of a raw consumer reading and decoding ``total`` events."""
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False, group_id=None,
                         max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20)
    await c.start()
    seen, began = 0, None
    try:
        while seen < total:
            if began is None:
                began = time.perf_counter()  # from the first fetch, as for the worker
            batch = await c.getmany(timeout_ms=500, max_records=100_000)
            for records in batch.values():
                for r in records:
                    doc = orjson.loads(r.value)
                    if isinstance(doc, list):
                        for e in doc:
                            seen += 1 if e["model"] else 0
                    else:
                        seen += 1 if doc["model"] else 0
    finally:
        await c.stop()
    return total / (time.perf_counter() - (began or time.perf_counter()))


def write_config(tmp: Path, models: int, prefix: str, port: int) -> Path:
    rng = np.random.default_rng(99)
    ref = tmp / "ref.jsonl"
    rows = []
    for _ in range(5000):
        r: dict[str, Any] = {f"f{j}": float(v) for j, v in enumerate(rng.normal(0, 1, NUMERIC))}
        r.update({f"c{j}": f"v{rng.integers(0, 6)}" for j in range(CATEGORICAL)})
        rows.append(r)
    ref.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    feats = {f"f{j}": {"type": "numeric"} for j in range(NUMERIC)}
    feats.update({f"c{j}": {"type": "categorical"} for j in range(CATEGORICAL)})
    cfg = {
        "kafka": {"partitions": 4, "rebalance_timeout": "3s", "session_timeout": "6s"},
        "topics": {"prefix": prefix},
        "metrics": {"host": "127.0.0.1", "port": port},
        "worker": {"app_id": f"bench-{prefix.strip('.')}", "data_dir": str(tmp / "data")},
        "defaults": {"window": "1m", "lateness": "1s", "min_samples": 100},
        "models": {f"m{i}": {"features": feats, "reference": {"file": str(ref)}}
                   for i in range(models)},
    }
    path = tmp / f"{prefix}yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of a process."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK
    with open(f"/proc/{pid}/status") as fh:
        hwm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM"))
    return cpu, hwm


def scrape(port: int, name: str, **labels: str) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return 0.0
    return sum(s.value for fam in text_string_to_metric_families(text.decode())
               for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def run_worker(bootstrap: str, tmp: Path, msgs: list[tuple[bytes, bytes]], total: int,
               models: int, tag: str) -> dict[str, float]:
    port = free_port()
    cfg = write_config(tmp, models, f"{tag}.", port)
    settings = load_settings(cfg)
    topic = settings.topics.name("predictions")
    asyncio.run(ensure_topics(bootstrap, settings))
    log = open(tmp / f"worker-{tag}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "app", "worker", "-c", str(cfg),
                             "--bootstrap", bootstrap], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        # One event first: once it is counted, the worker has joined and is consuming.
        first = dict(orjson.loads(msgs[0][1])[0] if msgs[0][1].startswith(b"[")
                     else orjson.loads(msgs[0][1]), prediction_id="warm-up")
        asyncio.run(produce(bootstrap, topic, [(msgs[0][0], orjson.dumps(first))]))
        deadline = time.monotonic() + 120
        while scrape(port, "driftwarden_events_total", outcome="valid") < 1:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"worker not ready: {(tmp / f'worker-{tag}.log').read_text()}")
            time.sleep(0.05)
        total += 1
        began, cpu0 = time.perf_counter(), proc_stats(proc.pid)[0]
        asyncio.run(produce(bootstrap, topic, msgs))  # the load, as fast as it goes
        all_in = None
        deadline = time.monotonic() + 600
        windows = 0.0
        while time.monotonic() < deadline:
            done = scrape(port, "driftwarden_events_total", outcome="valid")
            if all_in is None and done >= total:
                all_in = time.perf_counter()
                cpu_in = proc_stats(proc.pid)[0]
            windows = scrape(port, "driftwarden_windows_closed_total")
            if done >= total and windows >= models * 10:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: {(tmp / f'worker-{tag}.log').read_text()}")
            time.sleep(0.02)
        finished = time.perf_counter()
        if all_in is None:
            raise RuntimeError("the worker did not process every event in time")
        _, rss = proc_stats(proc.pid)
        # The last window of each model closes by wall clock once its stream is idle
        # (lateness 1 s + tick): reported apart from throughput.
        return {"eps": total / max(all_in - began, 1e-9),
                "cpu_per_m": (cpu_in - (cpu0 or 0)) / total * 1e6,
                "rss_mb": rss / 2**20, "windows": windows, "to_last_eval": finished - began}
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--array", type=int, default=500)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    events = make_events(args.events, args.models)
    rows = []
    with tempfile.TemporaryDirectory() as d, EmbeddedBroker() as broker:
        tmp = Path(d)
        for run in range(args.runs):
            for label, size in (("array", args.array), ("single", 1)):
                msgs = messages(events, args.models, size)
                topic = f"ceiling-{label}-{run}"

                async def setup(topic: str = topic) -> None:
                    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
                    await admin.start()
                    await admin.create_topics([NewTopic(topic, 4, 1)])
                    await admin.close()

                asyncio.run(setup())
                asyncio.run(produce(broker.bootstrap, topic, msgs))
                ceil_eps = asyncio.run(ceiling(broker.bootstrap, topic, len(events)))
                res = run_worker(broker.bootstrap, tmp, msgs, len(events), args.models,
                                 f"b{run}{label}")
                rows.append((label, len(msgs), ceil_eps, res))
                print(f"run {run} {label}: ceiling {ceil_eps:,.0f} ev/s, driftwarden "
                      f"{res['eps']:,.0f} ev/s", file=sys.stderr, flush=True)
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; {args.events} events, {args.models} models x "
          f"{NUMERIC + CATEGORICAL} features; embedded broker.\n")
    print("| messages | count | ceiling ev/s | driftwarden ev/s | ratio | worker CPU s / M events "
          "| first event to last evaluation s | worker peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for label, count, ceil_eps, r in rows:
        print(f"| {label} | {count} | {ceil_eps:,.0f} | {r['eps']:,.0f} | "
              f"{r['eps'] / ceil_eps:.1%} | {r['cpu_per_m']:.1f} | {r['to_last_eval']:.1f} | "
              f"{r['rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
