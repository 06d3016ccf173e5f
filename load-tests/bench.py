"""Throughput and memory of driftwarden workers against the raw-consumer ceiling, in one run.

Everything runs on the embedded broker on 127.0.0.1 and stops by itself. For JSON-array
messages (500 events) and for single-event messages, on fresh topics each time (deleted
afterwards: the embedded broker keeps every record in RAM):

1. **ceiling**: a raw aiokafka consumer (``getmany``, large batches) reading and
   orjson-decoding the predictions, touching every event, in a fresh process of its own
   (``ceiling.py``), before the others and again after them;
2. **faust bare**: a faust agent (the worker's faust settings) that only iterates them;
3. **driftwarden**: a real worker process with a realistic configuration: 5 models x 20
   features (17 numeric, 3 categorical), drift (features and outputs), data quality and
   performance (a third of the predictions get a label) on, one-minute windows.

Like the ceiling, faust bare and the workers read a backlog: once a consumer has counted
a warm-up event (joined its group, consuming), it is paused (SIGSTOP), the messages (and
the labels) are produced, and it is resumed; throughput is measured from the resumption
to its last prediction counted (its own ``/metrics``), then on to its last window
evaluated. The producer neither competes for the two cores nor sets the pace.
4. with ``--two-workers``: two worker processes sharing the partitions (array messages).

``--soak SECONDS`` instead runs one worker under a steady load at ``--rate`` events/s with
wall-clock event times (a drift on one model from the second minute), sampling the
worker's resident memory and its consumer lag every 5 s, and measures window close to
evaluation/alert on the topic (the due time is the window's end plus its lateness).

Usage::

    python load-tests/bench.py --events 100000 [--two-workers]
    python load-tests/bench.py --soak 600 --rate 1000     # the 10-minute soak
    python load-tests/bench.py --soak 3600 --rate 500     # opt-in: the hour-long soak

The embedded broker keeps every record in RAM: an hour at 500 predictions/s holds
1.8 million (roughly 1 to 2 GiB with the outcomes); the soak's topics are deleted at its end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import statistics
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
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

from app.broker import EmbeddedBroker, free_port  # noqa: E402
from app.kafka import ensure_topics  # noqa: E402
from app.settings import load_settings  # noqa: E402

NUMERIC, CATEGORICAL = 17, 3
WINDOW_MS = 60_000
LATENESS_MS = 1_000
LABELLED = 3  # one prediction in LABELLED gets an outcome
CLK = os.sysconf("SC_CLK_TCK")


# --- data -----------------------------------------------------------------------------

def feature_row(rng: np.random.Generator, shift: float = 0.0) -> dict[str, Any]:
    num = rng.normal(shift, 1, NUMERIC).round(4)
    row: dict[str, Any] = {f"f{j}": float(num[j]) for j in range(NUMERIC)}
    row.update({f"c{j}": f"v{rng.integers(0, 6)}" for j in range(CATEGORICAL)})
    return row


def make_events(n: int, models: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    num = rng.normal(0, 1, (n, NUMERIC)).round(4)
    cats = rng.integers(0, 6, (n, CATEGORICAL))
    scores = rng.uniform(0, 1, n).round(4)
    t0 = 1_700_000_000_000 // WINDOW_MS * WINDOW_MS
    per_model_step = max(1, WINDOW_MS * 10 * models // n)  # ~10 windows per model
    out = []
    for i in range(n):
        feats: dict[str, Any] = {f"f{j}": float(num[i, j]) for j in range(NUMERIC)}
        feats.update({f"c{j}": f"v{cats[i, j]}" for j in range(CATEGORICAL)})
        out.append({"prediction_id": f"p{i}", "model": f"m{i % models}", "model_version": "v1",
                    "features": feats, "prediction": bool(scores[i] >= 0.5),
                    "scores": {"1": float(scores[i])}, "latency_ms": 20.0 + i % 17,
                    "timestamp": t0 + (i // models) * per_model_step})
    return out


def outcomes_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"prediction_id": e["prediction_id"], "model": e["model"],
             "label": e["prediction"] if i % 10 else not e["prediction"],
             "timestamp": e["timestamp"] + 5_000}
            for i, e in enumerate(events) if i % LABELLED == 0]


def messages(events: list[dict[str, Any]], array: int) -> list[tuple[bytes, bytes]]:
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


# --- Kafka helpers --------------------------------------------------------------------

async def produce(bootstrap: str, topic: str, msgs: list[tuple[bytes, bytes]]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20,
                         max_request_size=8 << 20)
    await p.start()
    try:
        futs = [await p.send(topic, v, key=k) for k, v in msgs]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def delete_topics(bootstrap: str, prefix: str) -> None:
    """Free the embedded broker's memory between phases (best effort)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            with contextlib.suppress(Exception):
                await admin.delete_topics(names)
    finally:
        await admin.close()


def ceiling(bootstrap: str, topic: str, total: int) -> float:
    """Events per second of a raw consumer reading and decoding ``total`` events, in a
    fresh process of its own (``ceiling.py``)."""
    out = subprocess.run([sys.executable, str(ROOT / "load-tests" / "ceiling.py"), bootstrap,
                          topic, str(total)], cwd=ROOT, capture_output=True, timeout=600,
                         check=True)
    return float(orjson.loads(out.stdout.splitlines()[-1])["eps"])


# --- processes ------------------------------------------------------------------------

WORKER: dict[str, Any] = {}  # worker settings of every config (--decode-processes)


def write_config(tmp: Path, models: int, prefix: str, port: int, *,
                 window: str = "1m") -> Path:
    rng = np.random.default_rng(99)
    ref = tmp / "ref.jsonl"
    rows = []
    for _ in range(5000):
        r = feature_row(rng)
        s = float(rng.uniform(0, 1))
        r.update(prediction=s >= 0.5, **{"scores.1": round(s, 4)})
        rows.append(r)
    ref.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    feats = {f"f{j}": {"type": "numeric"} for j in range(NUMERIC)}
    feats.update({f"c{j}": {"type": "categorical"} for j in range(CATEGORICAL)})
    cfg = {
        # a long session: the throughput phases pause the consumers (SIGSTOP) while the
        # backlog is produced, and a paused member must not be evicted from its group
        "kafka": {"partitions": 4, "rebalance_timeout": "3s", "session_timeout": "60s"},
        "topics": {"prefix": prefix},
        "metrics": {"host": "127.0.0.1", "port": port},
        "worker": {"app_id": f"bench-{prefix.strip('.')}", "data_dir": str(tmp / "data"),
                   **WORKER},
        "defaults": {"window": window, "lateness": f"{LATENESS_MS // 1000}s",
                     "min_samples": 100},
        "models": {f"m{i}": {
            "features": feats, "reference": {"file": str(ref)},
            "performance": {"positive_class": "1", "score_key": "1", "baseline": 0.9,
                            "max_drop": 0.05, "min_labels": 50, "label_horizon": "2m",
                            "after": ["0s"], "max_label_lag": "2m"},
            "slo": {"latency_p99_ms": 250}}
            for i in range(models)},
    }
    path = tmp / f"{prefix}yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def proc_stats(pid: int) -> tuple[float, int, int]:
    """(CPU seconds, peak RSS bytes, current RSS bytes) of a process."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK
    hwm = rss = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                hwm = int(line.split()[1]) * 1024
            elif line.startswith("VmRSS"):
                rss = int(line.split()[1]) * 1024
    return cpu, hwm, rss


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (a worker's decode processes)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    return out


def family_stats(pid: int) -> tuple[float, int, int]:
    """:func:`proc_stats` of a worker with its decode processes, summed (a worker is all
    of them: its CPU and memory are theirs together)."""
    total = [0.0, 0, 0]
    for p in [pid, *children(pid)]:
        try:
            stats = proc_stats(p)
        except OSError:
            continue
        for j in range(3):
            total[j] += stats[j]
    return total[0], int(total[1]), int(total[2])


Query = tuple[str, dict[str, str]]  # a sample name and the labels it must have


def scrape_many(port: int, queries: list[Query]) -> list[float]:
    """Sums of the samples matching each query, from one scrape of a worker's /metrics
    (0 when it does not answer). The driftwarden metrics are rendered alone (``name[]``):
    a whole scrape renders every series, on the cores the worker runs on. (Collectors
    that do not describe their metrics, such as the process collector, are not found
    by name: those are scraped whole.)"""
    import urllib.parse
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    out = [0.0] * len(queries)
    names = {name for name, _ in queries}
    query = "" if any(not n.startswith("driftwarden_") for n in names) else \
        "?" + urllib.parse.urlencode([("name[]", n) for n in sorted(names)])
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics{query}",
                                      timeout=2).read()
    except OSError:
        return out
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            if s.name not in names:
                continue
            for i, (name, labels) in enumerate(queries):
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    out[i] += s.value
    return out


def scrape(port: int, name: str, **labels: str) -> float:
    return scrape_many(port, [(name, labels)])[0]


def held_partitions(port: int, topic: str) -> set[str]:
    """Partitions of ``topic`` a worker reports a consumer lag for: those it holds."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return set()
    return {s.labels["partition"] for fam in text_string_to_metric_families(text.decode())
            for s in fam.samples
            if s.name == "driftwarden_consumer_lag_messages" and s.labels.get("topic") == topic}


class Workers:
    """One or more ``driftwarden worker`` processes on one monitor file."""

    def __init__(self, cfg: Path, bootstrap: str, tmp: Path, tag: str, count: int = 1) -> None:
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = []
        doc = yaml.safe_load(cfg.read_text())
        for i in range(count):
            port = free_port()
            doc["metrics"]["port"] = port
            own = tmp / f"{tag}-{i}.yaml"
            own.write_text(yaml.safe_dump(doc))
            log = open(tmp / f"worker-{tag}-{i}.log", "wb")  # noqa: SIM115
            self.logs.append(log)
            self.ports.append(port)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "app", "worker", "-c", str(own), "--bootstrap",
                 bootstrap], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))

    def metric(self, name: str, **labels: str) -> float:
        return sum(scrape(p, name, **labels) for p in self.ports)

    def log_lines(self, levels: tuple[str, ...]) -> list[str]:
        """The workers' log lines at these levels (with the second and later lines of
        what each logged, a traceback say, left out)."""
        out = []
        for log in self.logs:
            if not log.closed:
                log.flush()
            for line in Path(log.name).read_text(errors="replace").splitlines():
                if any(f"[{level}]" in line for level in levels):
                    out.append(line)
        return out

    def metrics(self, queries: list[Query]) -> list[float]:
        """Each query summed over the workers, one scrape per worker."""
        per = [scrape_many(p, queries) for p in self.ports]
        return [sum(values) for values in zip(*per, strict=True)]

    def cpu(self) -> float:
        return sum(family_stats(p.pid)[0] for p in self.procs)

    def peak_rss(self) -> int:
        return max(family_stats(p.pid)[1] for p in self.procs)

    def pause(self) -> None:
        for p in self.procs:
            os.kill(p.pid, signal.SIGSTOP)

    def resume(self) -> None:
        for p in self.procs:
            os.kill(p.pid, signal.SIGCONT)

    def alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"a worker exited ({p.returncode}); see {self.logs[0].name}")

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in self.logs:
            log.close()


def warm_up(bootstrap: str, topic: str, msgs: list[tuple[bytes, bytes]],
            counted: Any, timeout: float = 120) -> None:
    """One event first: once it is counted, the consumer has joined and is consuming."""
    first = dict(orjson.loads(msgs[0][1])[0] if msgs[0][1].startswith(b"[")
                 else orjson.loads(msgs[0][1]), prediction_id="warm-up")
    asyncio.run(produce(bootstrap, topic, [(msgs[0][0], orjson.dumps(first))]))
    deadline = time.monotonic() + timeout
    while counted() < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the consumer did not start in time")
        time.sleep(0.05)


def faust_bare(bootstrap: str, tmp: Path, msgs: list[tuple[bytes, bytes]], total: int,
               per_message: int, tag: str) -> float:
    cfg = write_config(tmp, 1, f"{tag}.", 0)
    settings = load_settings(cfg)
    topic = settings.topics.name("predictions")
    asyncio.run(ensure_topics(bootstrap, settings))
    status = tmp / f"{tag}.count"
    status.write_text("0")
    log = open(tmp / f"bare-{tag}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, str(ROOT / "load-tests" / "faust_bare.py"),
                             str(cfg), bootstrap, topic, str(status), str(per_message)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def counted() -> int:
        with contextlib.suppress(ValueError):
            return int(status.read_text() or 0)
        return 0

    try:
        warm_up(bootstrap, topic, msgs[:1] if per_message == 1 else
                [(msgs[0][0], orjson.dumps(orjson.loads(msgs[0][1])[:1]))], counted)
        base = counted()
        os.kill(proc.pid, signal.SIGSTOP)  # joined and idle: the backlog is produced first
        try:
            asyncio.run(produce(bootstrap, topic, msgs))
        finally:
            began = time.perf_counter()
            os.kill(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 600
        while counted() - base < total:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"faust bare stalled: {(tmp / f'bare-{tag}.log').read_text()}")
            time.sleep(0.01)
        return total / (time.perf_counter() - began)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        asyncio.run(delete_topics(bootstrap, f"{tag}."))


def finish_time(polls: list[tuple[float, float]], now: float, total: int) -> float:
    """When the count reached ``total``, first seen at the poll at ``now``: from the
    last poll before it, at the rate between the last two polls before it, no later than
    ``now``. (Interpolating between that poll and ``now`` always gives ``now``: the count
    stops at ``total``. The estimate then fell on the 0.2 s grid of the polls, and a run
    of about 2 s took up to 0.2 s longer than it did.)

    >>> round(finish_time([(0.0, 0.0), (1.0, 100.0), (1.2, 120.0)], 1.4, 130), 9)
    1.3
    >>> finish_time([(0.0, 0.0), (1.0, 100.0)], 1.05, 200)
    1.05
    """
    t_last, done_last = polls[-1]
    t_prev, done_prev = polls[-2] if len(polls) > 1 else (t_last, done_last)
    rate = (done_last - done_prev) / (t_last - t_prev) if t_last > t_prev else 0.0
    if rate <= 0:
        return now
    return min(now, t_last + (total - done_last) / rate)


def run_workers(bootstrap: str, tmp: Path, events: list[dict[str, Any]], array: int,
                models: int, tag: str, count: int = 1) -> dict[str, float]:
    cfg = write_config(tmp, models, f"{tag}.", 0)
    settings = load_settings(cfg)
    topic = settings.topics.name("predictions")
    asyncio.run(ensure_topics(bootstrap, settings))
    msgs = messages(events, array)
    labels = messages(outcomes_of(events), array)
    total = len(events)
    workers = Workers(cfg, bootstrap, tmp, tag, count)
    try:
        warm_up(bootstrap, topic, msgs,
                lambda: workers.metric("driftwarden_events_total", outcome="valid",
                                       topic=topic))
        if count > 1:  # every worker holds partitions: no rebalance during the load
            deadline = time.monotonic() + 120
            while not all(held_partitions(port, topic) for port in workers.ports):
                if time.monotonic() > deadline:
                    raise RuntimeError("the workers did not share the partitions in time")
                workers.alive()
                time.sleep(0.2)
        total += 1
        # The backlog is produced while the joined workers are paused, then read, as the
        # ceiling reads it: the producer neither competes for the cores nor sets the pace.
        workers.pause()
        try:
            asyncio.run(produce(bootstrap, topic, msgs))
            asyncio.run(produce(bootstrap, settings.topics.name("outcomes"), labels))
        finally:
            began, cpu0 = time.perf_counter(), workers.cpu()
            workers.resume()
        all_in = cpu_in = None
        deadline = time.monotonic() + 900
        windows = 0.0
        queries: list[Query] = [("driftwarden_events_total", {"outcome": "valid", "topic": topic}),
                                ("driftwarden_windows_closed_total", {})]
        polls = [(began, 0.0)]  # (time, events counted)
        while time.monotonic() < deadline:
            # Polled five times a second, and only the two metrics read: a scrape costs
            # the worker, on the same two cores; 40 times a second once nine tenths are
            # counted, for the moment the last event was counted (see finish_time).
            now = time.perf_counter()
            done, windows = workers.metrics(queries)
            if all_in is None and done >= total:
                all_in = finish_time(polls, now, total)
                cpu_in = workers.cpu()
            polls.append((now, done))
            if done >= total and windows >= models * 10:
                break
            workers.alive()
            time.sleep(0.025 if all_in is None and done >= 0.9 * total else 0.2)
        finished = time.perf_counter()
        if all_in is None or cpu_in is None:
            raise RuntimeError("the workers did not process every event in time")
        return {"eps": total / max(all_in - began, 1e-9),
                "cpu_per_m": (cpu_in - cpu0) / total * 1e6,
                "rss_mb": workers.peak_rss() / 2**20, "windows": windows,
                "to_last_eval": finished - began}
    finally:
        workers.stop()
        asyncio.run(delete_topics(bootstrap, f"{tag}."))


# --- the soak -------------------------------------------------------------------------

async def steady_load(bootstrap: str, topic: str, outcomes: str, seconds: float, rate: int,
                      models: int, drift_from: float) -> int:
    """``rate`` predictions/s with wall-clock event times, in arrays of one model's
    events every 100 ms; model m0's features shift after ``drift_from`` seconds."""
    rng = np.random.default_rng(5)
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=8 << 20)
    await p.start()
    sent = 0
    began = time.monotonic()
    try:
        tick = 0.1
        per_tick = max(models, int(rate * tick))
        while (elapsed := time.monotonic() - began) < seconds:
            now_ms = int(time.time() * 1000)
            batch: dict[str, list[dict[str, Any]]] = {}
            for i in range(per_tick):
                model = f"m{i % models}"
                shift = 0.8 if model == "m0" and elapsed >= drift_from else 0.0
                s = float(rng.uniform(0, 1))
                batch.setdefault(model, []).append({
                    "prediction_id": f"s{sent + i}", "model": model, "model_version": "v1",
                    "features": feature_row(rng, shift), "prediction": s >= 0.5,
                    "scores": {"1": round(s, 4)}, "latency_ms": 20.0, "timestamp": now_ms})
            for model, evs in batch.items():
                await p.send(topic, orjson.dumps(evs), key=model.encode())
                labelled = [{"prediction_id": e["prediction_id"], "model": model,
                             "label": e["prediction"], "timestamp": now_ms}
                            for e in evs[::LABELLED]]
                await p.send(outcomes, orjson.dumps(labelled), key=model.encode())
            sent += per_tick
            await asyncio.sleep(max(0.0, began + (sent / rate) - time.monotonic()))
        await p.flush()
    finally:
        await p.stop()
    return sent


SLOW_CLOSE = 2.0  # seconds: the target for window close -> alert


async def watch_closes(bootstrap: str, evaluations: str, alerts: str, stop: asyncio.Event,
                       out: dict[str, list[float]]) -> None:
    """Seconds from each window's due time (end + lateness) to its drift evaluation, and
    to each firing alert of a closed window, as a consumer sees them."""
    c = AIOKafkaConsumer(evaluations, alerts, bootstrap_servers=bootstrap,
                         auto_offset_reset="latest", enable_auto_commit=False, group_id=None)
    await c.start()
    try:
        while not stop.is_set():
            batch = await c.getmany(timeout_ms=200)
            seen = time.time()
            for records in batch.values():
                for r in records:
                    data = orjson.loads(r.value)["data"]
                    if r.topic == evaluations and data.get("kind") == "drift":
                        due = (data["window"]["end_ms"] + LATENESS_MS) / 1000
                        out["evaluation"].append(seen - due)
                        if seen - due > SLOW_CLOSE:  # named in the report, with when
                            out["slow"].append((seen, seen - due, data.get("model", "?"),
                                                data["window"]["start_ms"]))
                    elif r.topic == alerts and data.get("kind") == "feature_drift" and \
                            data.get("status") == "firing":
                        from datetime import datetime

                        end = datetime.fromisoformat(data["window"]["end"].replace(
                            "Z", "+00:00")).timestamp()
                        out["alert"].append(seen - end - LATENESS_MS / 1000)
    finally:
        await c.stop()


def soak(bootstrap: str, tmp: Path, seconds: float, rate: int, models: int) -> dict[str, Any]:
    cfg = write_config(tmp, models, "soak.", 0)
    settings = load_settings(cfg)
    topics = settings.topics
    asyncio.run(ensure_topics(bootstrap, settings))
    workers = Workers(cfg, bootstrap, tmp, "soak")
    samples: list[tuple[float, int, float]] = []  # (s since start, RSS bytes, lag messages)
    closes: dict[str, list[Any]] = {"evaluation": [], "alert": [], "slow": []}
    try:
        # The load starts once the worker holds its partitions (joined its group, read
        # its state): the first windows then measure the steady load, not the start-up.
        # (The group join waits about half the session timeout on the embedded broker:
        # 30 s with the long session the throughput phases need for their pauses.)
        deadline = time.monotonic() + 120
        while not held_partitions(workers.ports[0], topics.name("predictions")):
            if time.monotonic() > deadline:
                raise RuntimeError("the soak worker did not join its group in time")
            workers.alive()
            time.sleep(0.2)

        async def run() -> int:
            stop = asyncio.Event()
            watcher = asyncio.create_task(watch_closes(
                bootstrap, topics.name("evaluations"), topics.name("alerts"), stop, closes))
            began = time.monotonic()

            async def sample() -> None:
                while not stop.is_set():
                    samples.append((time.monotonic() - began,
                                    family_stats(workers.procs[0].pid)[2],
                                    scrape(workers.ports[0],
                                           "driftwarden_consumer_lag_messages")))
                    await asyncio.sleep(5)

            sampler = asyncio.create_task(sample())
            closes["began"] = [time.time()]
            sent = await steady_load(bootstrap, topics.name("predictions"),
                                     topics.name("outcomes"), seconds, rate, models,
                                     drift_from=120)
            await asyncio.sleep(8)  # the last windows close (idle)
            stop.set()
            await asyncio.gather(watcher, sampler)
            return sent

        sent = asyncio.run(run())
        lag = workers.metric("driftwarden_consumer_lag_messages")
        processed = workers.metric("driftwarden_events_total", outcome="valid",
                                   topic=topics.name("predictions"))
    finally:
        workers.stop()
        asyncio.run(delete_topics(bootstrap, "soak."))
    tail = [rss for t, rss, _ in samples if t >= seconds - 480]
    lags = [lag for t, _, lag in samples if t >= seconds - 480]
    return {"sent": sent, "processed": processed, "lag_end": lag, "samples": samples,
            "rss_first_mb": samples[0][1] / 2**20 if samples else 0,
            "rss_tail_min_mb": min(tail) / 2**20 if tail else 0,
            "rss_tail_max_mb": max(tail) / 2**20 if tail else 0,
            "lag_tail_max": max(lags) if lags else 0,
            "lag_tail_halves": _halves(lags),
            "closes": closes, "log": workers.log_lines(("WARNING", "ERROR", "CRITICAL"))}


def _halves(values: list[float]) -> tuple[float, float]:
    """Mean of the first and of the second half: a growing lag shows as a rise."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (0.0, 0.0)
    mid = len(values) // 2
    return statistics.fmean(values[:mid]), statistics.fmean(values[mid:])


def quantiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    v = sorted(values)
    # "inclusive": within the values seen (the default extrapolates past the largest of
    # a few dozen, and gave a p99 above the max)
    q = statistics.quantiles(v, n=100, method="inclusive") if len(v) > 1 else [v[0]] * 99
    return f"p50 {q[49]:.2f} s, p99 {q[98]:.2f} s, max {v[-1]:.2f} s (n={len(v)})"


# --- main -----------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--array", type=int, default=500)
    ap.add_argument("--two-workers", action="store_true")
    ap.add_argument("--decode-processes", type=int, default=None, metavar="N",
                    help="the workers' worker.decode_processes (default: theirs)")
    ap.add_argument("--messages", choices=["both", "array", "single"], default="both")
    ap.add_argument("--soak", type=float, default=0.0, metavar="SECONDS")
    ap.add_argument("--rate", type=int, default=1000, help="soak: predictions per second")
    args = ap.parse_args()
    if args.decode_processes is not None:
        WORKER["decode_processes"] = args.decode_processes
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}; embedded broker"
               + ("" if args.decode_processes is None else
                  f"; worker.decode_processes {args.decode_processes}"))
    with tempfile.TemporaryDirectory() as d, EmbeddedBroker() as broker:
        tmp = Path(d)
        if args.soak:
            r = soak(broker.bootstrap, tmp, args.soak, args.rate, args.models)
            flat = (r["rss_tail_max_mb"] - r["rss_tail_min_mb"]) / max(r["rss_tail_min_mb"], 1)
            print(f"\nSoak: {machine}; {args.soak:.0f} s at {args.rate} predictions/s "
                  f"({args.models} models x {NUMERIC + CATEGORICAL} features, 1 in "
                  f"{LABELLED} labelled, drift on m0 from 120 s).\n")
            print(f"- sent {r['sent']}, processed {r['processed']:.0f}, consumer lag at the "
                  f"end {r['lag_end']:.0f}")
            first, second = r["lag_tail_halves"]
            print(f"- consumer lag over the last 8 minutes: max {r['lag_tail_max']:.0f} "
                  f"messages, mean {first:.1f} then {second:.1f} (first and second half)")
            print(f"- worker RSS: {r['rss_first_mb']:.0f} MiB at the start; over the last "
                  f"8 minutes {r['rss_tail_min_mb']:.0f}..{r['rss_tail_max_mb']:.0f} MiB "
                  f"({flat:.1%} spread)")
            closes = r["closes"]
            print(f"- window due -> evaluation on the topic: {quantiles(closes['evaluation'])}")
            print(f"- window due -> drift alert on the topic: {quantiles(closes['alert'])}")
            began = closes["began"][0] if closes.get("began") else 0.0
            for seen, late, model, start_ms in closes["slow"]:
                print(f"  - slower than {SLOW_CLOSE:.0f} s: {model}'s window from "
                      f"{time.strftime('%H:%M:%S', time.gmtime(start_ms / 1000))} UTC, "
                      f"{late:.1f} s after due, published {seen - began:.0f} s into the soak")
            print(f"- worker log: {len(r['log'])} warnings and errors"
                  + "".join(f"\n  - {line[:200]}" for line in r["log"][:8]))
            print("- RSS samples (s, MiB): " + ", ".join(
                f"{t:.0f}:{rss / 2**20:.0f}" for t, rss, _ in r["samples"][::12]))
            return 0
        events = make_events(args.events, args.models)
        rows = []
        for label, size in (("array", args.array), ("single", 1)):
            if args.messages not in ("both", label):
                continue
            msgs = messages(events, size)
            tag = f"c{label}"
            settings = load_settings(write_config(tmp, 1, f"{tag}.", 0))
            asyncio.run(ensure_topics(broker.bootstrap, settings))
            topic = settings.topics.name("predictions")
            asyncio.run(produce(broker.bootstrap, topic, msgs))
            # The ceiling is read before the others and again after them, from the same
            # topic, and their mean is the ceiling: the machine's speed drifts over a
            # run, and a ceiling read only before the worker ran made the ratio drift too
            before = ceiling(broker.bootstrap, topic, len(events))
            bare_eps = faust_bare(broker.bootstrap, tmp, msgs, len(events), size, f"f{label}")
            res = run_workers(broker.bootstrap, tmp, events, size, args.models, f"w{label}")
            two = None
            if args.two_workers and label == "array":
                two = run_workers(broker.bootstrap, tmp, events, size, args.models,
                                  "w2array", count=2)
            after = ceiling(broker.bootstrap, topic, len(events))
            asyncio.run(delete_topics(broker.bootstrap, f"{tag}."))
            ceil = (before + after) / 2, before, after
            rows.append((label, len(msgs), ceil, bare_eps, res, 1))
            print(f"{label}: ceiling {before:,.0f} then {after:,.0f} ev/s, faust bare "
                  f"{bare_eps:,.0f} ev/s, driftwarden {res['eps']:,.0f} ev/s",
                  file=sys.stderr, flush=True)
            if two is not None:
                rows.append((label, len(msgs), ceil, bare_eps, two, 2))
                print(f"two workers: {two['eps']:,.0f} ev/s", file=sys.stderr, flush=True)
    print(f"\nMachine: {machine}; {args.events} predictions (+1 in {LABELLED} labelled), "
          f"{args.models} models x {NUMERIC + CATEGORICAL} features; drift, quality, "
          "performance and a latency SLO on.\n")
    print("| messages | workers | ceiling ev/s (before, after) | faust bare ev/s | "
          "driftwarden ev/s | of ceiling | of faust bare | worker CPU s / M events | "
          "first event to last evaluation s | worker peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, _count, (ceil_eps, before, after), bare_eps, r, n in rows:
        print(f"| {label} | {n} | {ceil_eps:,.0f} ({before / 1e3:,.0f}k, {after / 1e3:,.0f}k) "
              f"| {bare_eps:,.0f} | {r['eps']:,.0f} | "
              f"{r['eps'] / ceil_eps:.1%} | {r['eps'] / bare_eps:.1%} | "
              f"{r['cpu_per_m']:.1f} | {r['to_last_eval']:.1f} | {r['rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
