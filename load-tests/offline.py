"""The worker's batch path without a broker: CPU per event of ``Pipeline.process_batch``.

The bench's own messages (5 models x 20 features, arrays of 500 events, a third of the
predictions labelled) go through a real :class:`~app.streaming.Pipeline` and engine in
batches of a few messages, as a worker reading a backlog gets them; the faust pieces the
pipeline writes to (topics, the state table) are stand-ins that only count. What it
measures is the batch path's own CPU, free of the broker, the fetch thread and the
consumer: the steadier figure for comparing two versions of the code (run them
alternately, a few times each: the machines are noisy).

    .venv/bin/python load-tests/offline.py --events 150000
    .venv/bin/python load-tests/offline.py --events 300000 --profile /tmp/batch.prof
    .venv/bin/python load-tests/offline.py --events 150000 --blocks  # with a decode pool

Everything stays in this process and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import make_events, messages, outcomes_of, write_config
from prometheus_client import CollectorRegistry

import app.detectors.streaming  # noqa: F401  (the first evaluation's lazy import: not timed)
from app.core.engine import Engine
from app.detectors.kernels import warm_up
from app.events.decode_pool import NOT_MINE, OK, DecodePool, Result, decode_payload, handle
from app.observability.metrics import Metrics
from app.reference import load_references
from app.runtime import tune_gc
from app.settings import load_settings
from app.streaming import Pipeline


class _Sent:
    """A send the broker has confirmed already."""

    def __await__(self) -> Any:
        return iter(())


class _Topic:
    def __init__(self) -> None:
        self.sent = 0

    async def send(self, key: Any = None, value: Any = None, headers: Any = None) -> _Sent:
        self.sent += 1
        return _Sent()


class _Table:
    """The state table: records kept, their sends counted."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.records = 0
        self.bytes = 0

    def send_changelog(self, partition: int, key: bytes, value: bytes | None) -> _Sent:
        self.records += 1
        self.bytes += len(value or b"")
        return _Sent()


class _Decoded(DecodePool):
    """A decode pool that decodes in this process, untimed: each message as a decode
    process decodes it, counting its numeric values with the binnings the pipeline
    configured by then (:meth:`~app.events.decode_pool.DecodePool.configure`), when the
    batch path waits for it; the CPU that takes is left out of the timing
    (``untimed``)."""

    def __init__(self, settings: Any) -> None:
        w = settings.worker
        super().__init__(1, max_bytes=w.max_message_bytes, max_elements=w.max_array_elements,
                         min_bytes=0)
        self.untimed = 0.0  # CPU seconds spent decoding
        self.values: dict[Any, tuple[bytes, str]] = {}

    def _start(self) -> list[Any]:
        return [_Here(self)]  # no process: configurations handled here, values kept

    def submit(self, messages: Any) -> int:
        before = len(self.values)
        for key, value, kind in messages:
            self.values[key] = (value, kind)
        return len(self.values) - before

    async def wait(self, keys: Any, timeout: float = 0.0) -> None:
        began = time.process_time()
        for key in keys:
            value, kind = self.values.pop(key)
            f: Future[Result] = Future()
            payload = decode_payload(value, kind, self.max_bytes, self.max_elements)
            f.set_result((NOT_MINE, b"") if payload is None else (OK, payload))
            self._futures[key] = f  # type: ignore[assignment]
        self.untimed += time.process_time() - began


class _Here:
    """The one "channel" of :class:`_Decoded`: a configuration it is sent is handled
    here, as a decode process handles it (its binnings this process's)."""

    outstanding = 0

    def __init__(self, pool: _Decoded) -> None:
        self.pool = pool

    def attach(self, loop: Any) -> None:
        pass

    def send(self, future: Any, value: bytes, kind: str) -> None:
        handle(value, kind, self.pool.max_bytes, self.pool.max_elements)  # (CONFIG only)

    def close(self) -> None:
        pass


def ordered(predictions: list[Any], outcomes: list[Any], how: str) -> list[Any]:
    """The input topics' messages in the order the batch path gets them: ``first``, the
    outcomes before the predictions, as the bench's worker reads its backlog (the
    outcomes topic, a fifth of the bytes, comes whole in the first fetches, each
    partition's response being bounded by ``consumer_max_fetch_size``); ``interleaved``,
    each outcome message after the prediction messages it labels, as labels trickle in."""
    if how == "first":
        return outcomes + predictions
    return interleaved(predictions, outcomes)


def interleaved(predictions: list[Any], outcomes: list[Any]) -> list[Any]:
    """One outcome message after every few prediction messages (both in the same
    order of models)."""
    step = max(1, len(predictions) // max(1, len(outcomes)))
    out: list[Any] = []
    for j in range(0, len(predictions), step):
        out += predictions[j:j + step]
        if j // step < len(outcomes):
            out.append(outcomes[j // step])
    return out + outcomes[len(predictions) // step + 1:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=150_000, help="predictions (default 150000)")
    ap.add_argument("--array", type=int, default=500, help="events per message (500)")
    ap.add_argument("--batch-messages", type=int, default=5,
                    help="messages per batch (5: about the worker's 1 MiB batches)")
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--profile", metavar="FILE", help="write a cProfile of the run here")
    ap.add_argument("--outcomes", choices=("first", "interleaved"), default="first",
                    help="the outcome messages before the predictions (as the bench's "
                         "worker reads them), or each after the predictions it labels")
    ap.add_argument("--blocks", action="store_true",
                    help="messages decoded as by a decode process, untimed: the worker's "
                         "thread's own share")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(write_config(Path(tmp), args.models, "offline.", 0))
        engine = Engine(settings, load_references(settings), source="urn:offline")
        table = _Table()
        pipeline = Pipeline(settings, engine, Metrics(CollectorRegistry()), table, _Topic(),
                            _Topic(), _Topic(), _Topic())
        engine.load_state = pipeline.load_state
        engine.load_records = pipeline.load_records
        pt, ot = settings.topics.name("predictions"), settings.topics.name("outcomes")
        pipeline.kinds = {pt: "prediction", ot: "outcome"}
        events = make_events(args.events, args.models)
        partition = {f"m{i}".encode(): i % 4 for i in range(args.models)}

        def records(topic: str, msgs: list[tuple[bytes, bytes]]) -> list[Any]:
            return [SimpleNamespace(topic=topic, partition=partition[k], offset=i, key=k,
                                    value=v, timestamp=1.0) for i, (k, v) in enumerate(msgs)]

        by_model = sorted(outcomes_of(events), key=lambda e: int(e["model"][1:]))
        stream = ordered(records(pt, messages(events, args.array)),
                         records(ot, messages(by_model, args.array)), args.outcomes)
        del events
        n = args.batch_messages
        batches = [stream[i:i + n] for i in range(0, len(stream), n)]
        if args.blocks:  # what the decode process does, left out of the timing
            pipeline.decodes = _Decoded(settings)
        now = 1_700_000_000.0  # after every event: windows close as their data completes

        async def run() -> None:  # as the worker: checkpoints when due, and at the end
            for batch in batches:
                pipeline.prepare([batch])  # (with --blocks: hands it to the pool)
                await pipeline.process_batch(batch, now, wait=False)
            await pipeline.checkpoint()

        warm_up()  # (the compiled detectors, loaded as the worker does at its start)
        tune_gc()  # as the worker does after start-up
        began = time.process_time()
        if args.profile:
            cProfile.runctx("asyncio.run(run())", globals(), {"run": run}, args.profile)
        else:
            asyncio.run(run())
        cpu = time.process_time() - began
        if isinstance(pipeline.decodes, _Decoded):
            cpu -= pipeline.decodes.untimed
            counted = f"; {pipeline.decodes.counted} of {pipeline.decodes.used} decoded " \
                      "messages counted in the pool"
        else:
            counted = ""
        gc.unfreeze()
    print(f"{args.events} predictions in {len(batches)} batches: {cpu:.2f} CPU s, "
          f"{cpu / args.events * 1e6:.2f} us per event; evaluations "
          f"{pipeline.evaluations.sent}, alerts {pipeline.alerts.sent}, state records "
          f"{table.records} ({table.bytes / 1e6:.1f} MB){counted}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
