"""The faust app: topics, the state table, and thin adapters around the pure core.

Hot path (DESIGN §6, §9): the input topics reach :meth:`Pipeline.process_batch` in
batches straight from the consumer's fetches (:mod:`app.batch_consumer`: a message
count, a byte size or a wait; no faust stream, event or channel per record). A batch's
messages are decoded and validated (msgspec in C, the precise checks when it refuses),
each message's events routed to their model at once, each model's window sketches
updated with numpy over the batch, and the changed models' states written to the table
at checkpoints, **at most once per batch** (every ``worker.checkpoint_interval`` while a
backlog is read, after every batch when events trickle in); a batch is acknowledged
only once the broker has its outputs and a checkpoint after it. Windows close by
watermark plus lateness, or by wall clock when a stream is idle: a timer checks every
``worker.tick_interval``; faust's
``on_window_close`` is not used (it does not fire for windows restored from the
changelog).

Table writes name their partition explicitly (the partition the model's events come
from), so a batch mixing partitions, and the timer, write each key where it belongs.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from aiokafka.errors import KafkaError
from faust.types import Message

from app.batch_consumer import BatchApp, BatchLimits, Later, Settle
from app.core.engine import ClosedWindow, Engine
from app.core.partials import Binning
from app.core.signals import public_name
from app.errors import DriftwardenError, StateError
from app.events.checks import SPECS
from app.events.decode import Rejection, decode_message, element_bytes
from app.events.decode_pool import DecodePool
from app.events.fields import concat
from app.kafka import client_kwargs, ensure_topics
from app.observability import Metrics
from app.outputs.cloudevents import CONTENT_TYPE
from app.reference import Reference
from app.references_topic import ReferenceFollower
from app.settings import MonitorSettings

# seconds between checks that every topic exists (a broker that came back empty)
TOPIC_GUARD_INTERVAL = 5.0
# refused records larger than this are not parsed again for their model's name
_LABEL_PARSE_MAX = 64 * 1024

log = logging.getLogger("driftwarden")
CE_HEADERS = [("content-type", CONTENT_TYPE.encode())]
STATE_TABLE = "model-state"
STATE_MAX_BYTES = 16 * 1024 * 1024  # a model's state record: references can be large


async def wait_all(futures: list[Any]) -> None:
    """Wait for sends (faust futures) to be acknowledged by the broker, in order."""
    for fut in futures:
        await fut


async def flush_sends(pipeline: Any) -> None:
    """Wait until the broker has every record in ``pipeline.unflushed`` (state records
    being sent), and what other tasks add meanwhile. Records leave the list only once
    confirmed: a task that finds records another task already waits for waits for them
    too, never returning before the broker has them."""
    while pipeline.unflushed:
        pending = list(pipeline.unflushed)
        await wait_all(pending)
        sent = set(map(id, pending))
        pipeline.unflushed = [f for f in pipeline.unflushed if id(f) not in sent]


def state_bytes(value: Any) -> bytes:
    """A state record's JSON, in a buffer of its own size, to keep in a table.

    ``orjson.dumps`` hands back its working buffer (4 KiB at least), so each record
    kept as it comes would hold that much whatever its length: thousands of small
    records a model made hundreds of MiB. A copy is exact.

    >>> import tracemalloc
    >>> tracemalloc.start(); before = tracemalloc.get_traced_memory()[0]
    >>> kept = [state_bytes({"n": i}) for i in range(100)]
    >>> (tracemalloc.get_traced_memory()[0] - before) / 100 < 200  # bytes a record
    True
    >>> tracemalloc.stop()
    """
    return bytes(memoryview(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)))


async def rewind_states(pipeline: Any, topic: str, name_of: Any, configured: Any) -> None:
    """Forget every applied position of ``topic`` (recreated empty: its offsets start
    from 0 again) in each state a pipeline holds, and save those states
    (``pipeline.save``: the sources' pipeline writes them to the (new) changelog at once,
    the predictions' pipeline at the checkpoint its ``rewind`` makes next).
    ``name_of(table key)`` names the model or source a record belongs to."""
    for key in list(pipeline.table.data.keys()):  # the local copies hold positions too
        name = name_of(key.decode() if isinstance(key, bytes) else str(key))
        if name in configured:
            pipeline.engine.monitor(name)
    pipeline.engine.rewind(topic)
    for name in list(pipeline.engine.monitors):
        pipeline.save(name)
    await pipeline.flush_state()


class ConsumerLag:
    """Offsets processed per input partition, and the lag they leave behind the
    partitions' high watermarks (``driftwarden_consumer_lag_messages``)."""

    def __init__(self, metrics: Metrics, topics: set[str]) -> None:
        self.metrics = metrics
        self.topics = topics
        self.done: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset
        self.exported: set[tuple[str, int]] = set()

    def processed(self, messages: list[Message]) -> None:
        """A processed batch (in offset order per partition: the last one wins)."""
        done = self.done
        for msg in messages:
            done[(msg.topic, msg.partition)] = msg.offset + 1

    async def update(self, consumer: Any) -> None:
        """One pass over the assigned input partitions."""
        seen = set()
        for tp in consumer.assignment():
            if tp.topic not in self.topics:
                continue
            key = (tp.topic, tp.partition)
            try:
                highwater = consumer.highwater(tp)
                done = self.done.get(key)
                if done is None:  # nothing processed since the assignment: where it starts
                    done = await consumer.position(tp)
            except Exception:  # e.g. revoked meanwhile: judged again on the next pass
                continue
            if highwater is None or done is None:
                continue
            seen.add(key)
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, int(highwater) - int(done)))
        for key in self.exported - seen:
            self.metrics.consumer_lag.remove(key[0], str(key[1]))
            self.done.pop(key, None)
        self.exported = seen


@dataclass
class Pipeline:
    """The faust side of prediction monitoring: Kafka records in, Kafka records out.

    Decisions are the engine's (``app.core.engine``); this adapter decodes messages,
    dead-letters what the engine refuses, publishes what it produces, and writes the
    changed models' states to the table's changelog: at a checkpoint (:meth:`checkpoint`),
    once every ``worker.checkpoint_interval`` while batches keep coming, and at every
    tick. A model's state is then one record however many batches changed it since the
    last checkpoint, and a batch is acknowledged once a checkpoint after it is on the
    broker (:class:`~app.batch_consumer.Later`).
    """

    settings: MonitorSettings
    engine: Engine
    metrics: Metrics
    table: Any  # faust Table[bytes, bytes]
    alerts: Any  # faust topics
    evaluations: Any
    deadletter: Any
    retrain_triggers: Any
    locks: dict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    kinds: dict[str, str] = field(default_factory=dict)  # topic name -> event kind
    decodes: DecodePool | None = None  # array messages decoded on other cores
    # what the decode processes count each model's numeric values with (share_binnings)
    binnings: dict[str, tuple[int, dict[str | None, Binning]]] = field(default_factory=dict)
    _binnings_shared: bool = False  # once, from the configured references (prepare)

    def share_binnings(self, models: Iterable[str]) -> None:
        """Tell the decode processes how these models' versions are binned, so that
        they count the numeric values of the messages handed over next
        (:mod:`app.core.partials`); sent only when that changed (a version or a
        reference came). Before a model's state is loaded, its configured reference
        tells how any version would be binned: the first messages are counted too."""
        if self.decodes is None or self.decodes.broken:
            return
        for model in models:
            m = self.engine.monitors.get(model)
            if m is not None:
                binnings = m.binnings()
            else:
                ref = self.engine.references.get(model)
                binning = None if ref is None else Binning.of(ref)
                binnings = {} if binning is None else {None: binning}
            if binnings:
                self.binnings[model] = (int(self.settings.hop_of(model) * 1000), binnings)
            else:
                self.binnings.pop(model, None)
        self.decodes.configure(self.binnings)

    def prepare(self, batches: list[list[Message]]) -> bool:
        """The next batches to process, in order: their large messages start decoding in
        the decode pool now, while the batches before them are processed. Whether any
        did."""
        if self.decodes is None:
            return False
        if not self._binnings_shared:  # (the first batches: no model's state loaded yet)
            self._binnings_shared = True
            self.share_binnings(self.settings.models)
        return self.decodes.submit(((m.topic, m.partition, m.offset), m.value,
                                    self.kinds.get(m.topic, "prediction"))
                                   for batch in batches for m in batch) > 0

    # -- state ------------------------------------------------------------------------
    def load_state(self, model: str) -> Any:
        raw = self.table.data.get(model.encode())
        if raw is None:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise StateError(f"saved state is not JSON: {exc}") from None

    def load_records(self, model: str) -> dict[str, Any]:
        """The model's side records (label join segments, performance windows)."""
        prefix = f"{model}/".encode()
        out = {}
        for key in list(self.table.data.keys()):
            if isinstance(key, bytes) and key.startswith(prefix):
                try:
                    out[key[len(prefix):].decode()] = orjson.loads(self.table.data[key])
                except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise StateError(f"saved record {key!r} is not JSON: {exc}") from None
        if out:
            kinds: dict[str, int] = defaultdict(int)
            for suffix in out:
                kinds[suffix.rsplit("/", 1)[0] if "/" in suffix else suffix] += 1
            log.info("model %r: restoring %d side records %s", model, len(out), dict(kinds))
        return out

    def on_state_error(self, model: str, exc: StateError) -> None:
        self.metrics.state_errors.labels(model).inc()
        log.error("cannot restore the state of model %r, starting afresh: %s", model, exc)

    def save(self, model: str) -> None:
        """The model's state changed: the next checkpoint writes it."""
        self.changed[model] = None

    async def checkpoint(self) -> list[Any]:
        """Write the state of every model changed since the last checkpoint (see
        :meth:`write`), once the broker has every record sent before (so records reach
        the changelog in order); returns the sends in flight."""
        await self.flush_state()
        self.checkpointed = time.monotonic()
        changed, self.changed = self.changed, {}
        for model in changed:
            self.write(model)
        return list(self.unflushed)

    def checkpoint_due(self) -> bool:
        return time.monotonic() - self.checkpointed >= self.settings.worker.checkpoint_interval

    def write(self, model: str) -> None:
        """One changelog record for this model, and its side records (never per event);
        :meth:`flush_state` waits until the broker has them."""
        m = self.engine.monitor(model)
        if m.partition is None:
            return
        key = model.encode()
        # Drained before the main state is taken: draining files new chunks that the
        # main state lists. Sent first: a restore never sees a main state newer than
        # its records.
        records = m.drain_records()
        value = state_bytes(m.to_state())
        for suffix, record in records.items():
            rkey = f"{model}/{suffix}".encode()
            if record is None:
                self.table.data.pop(rkey, None)
                self.unflushed.append(self.table.send_changelog(m.partition, rkey, None))
            else:
                raw = state_bytes(record)
                self.table.data[rkey] = raw
                self.unflushed.append(self.table.send_changelog(m.partition, rkey, raw))
        self.table.data[key] = value
        self.unflushed.append(self.table.send_changelog(m.partition, key, value))

    async def flush_state(self) -> None:
        """Wait until the broker has every state record written so far: a batch is
        acknowledged (its offsets committable) only after its state is on the changelog,
        or a restart would restore an older state and skip the batch."""
        await flush_sends(self)

    assigned: Any = None  # () -> set of predictions partitions this worker holds
    unflushed: list[Any] = field(default_factory=list)  # state records being sent
    changed: dict[str, None] = field(default_factory=dict)  # models to write, in order
    checkpointed: float = -math.inf  # time.monotonic() of the last checkpoint

    def local_models(self) -> list[str]:
        """Models whose state this worker holds for a partition it is assigned."""
        names = set(self.engine.monitors)
        for key in list(self.table.data.keys()):
            name = key.decode() if isinstance(key, bytes) else str(key)
            names.add(name.partition("/")[0])  # "<model>" or "<model>/<side record>"
        owned = self.assigned() if self.assigned is not None else None
        out = []
        for name in sorted(n for n in names if n in self.settings.models):
            if owned is not None and self.engine.monitor(name).partition not in owned:
                # Another worker owns it now: never close its windows or write its state
                # from here. (Its local copy stays: faust may hand the partition back.)
                self.forget([name])
                continue
            out.append(name)
        return out

    async def rewind(self, topic: str) -> None:
        """See :func:`rewind_states`: the models' positions of a recreated ``topic``
        (a table key is ``<model>`` or ``<model>/<side record>``)."""
        await rewind_states(self, topic, lambda key: key.partition("/")[0],
                            self.settings.models)
        await self.checkpoint()  # (save only marks a model's state to be written)
        await self.flush_state()

    async def revoke(self, partitions: set[int]) -> None:
        """The partitions are revoked: a checkpoint first (their models' states changed
        by batches that will be acknowledged are written while this worker still owns
        them), then their states are forgotten here."""
        await self.checkpoint()
        self.forget_partitions(partitions)

    def forget_partitions(self, partitions: set[int]) -> None:
        if self.decodes is not None:
            self.decodes.forget()  # what was fetched is fetched again after the rebalance
        self.forget([n for n, m in self.engine.monitors.items() if m.partition in partitions])

    def forget(self, models: list[str]) -> None:
        """Drop the models' states held here, with what was not written of them (no
        acknowledged batch is among what is lost: a batch is acknowledged only once a
        checkpoint after it is on the broker)."""
        self.engine.forget(models)
        for model in models:
            self.changed.pop(model, None)

    # -- the batch path ----------------------------------------------------------------
    async def process_batch(self, messages: list[Message], now: float | None = None, *,
                            wait: bool = True) -> list[Any] | None:
        """Process one batch of input messages: decode, dead-letter, monitor, save the
        states and publish what is due.

        With ``wait`` it makes a checkpoint and returns once the broker has its records
        (:meth:`flush_state`). Without, it makes a checkpoint only when one is due
        (``worker.checkpoint_interval``) and returns its sends, left in flight, or
        ``None`` when it made none (a later checkpoint covers the batch). The caller
        waits for the sends (:func:`wait_all`) before it acknowledges the batch, and
        the next checkpoint (:meth:`flush_state`) before it writes records of its own.
        The broker's round trip then overlaps the next batches' work, and the records
        still reach the broker in order, each checkpoint's after the previous one's are
        confirmed. The next batches' outputs do not wait for them: should the records
        fail, the worker stops before acknowledging anything after them, and the
        batches read again publish the same outputs (their ids are deterministic).
        """
        started = time.perf_counter()
        now = time.time() if now is None else now
        wset = self.settings.worker
        topic = self.settings.topics.name("predictions")
        batch = self.engine.batch()
        dead: list[tuple[Message, Rejection]] = []
        read: dict[str, int] = defaultdict(int)  # topic -> messages read
        pool = self.decodes
        pooled = 0  # messages the decode pool decoded
        if pool is not None:
            await pool.wait((m.topic, m.partition, m.offset) for m in messages)
        for msg in messages:
            value: bytes = msg.value or b""
            position = f"{msg.topic}:{msg.partition}"
            kind = self.kinds.get(msg.topic, "prediction")
            decoded = None if pool is None else pool.decoded(
                (msg.topic, msg.partition, msg.offset), value, kind)
            if decoded is None:
                decoded = decode_message(value, SPECS[kind], max_bytes=wset.max_message_bytes,
                                         max_elements=wset.max_array_elements)
            else:
                pooled += 1
            dead.extend((msg, r) for r in decoded.rejections)
            default_ms = int(msg.timestamp * 1000) if msg.timestamp else int(now * 1000)
            if kind == "prediction":
                for r in decoded.rejections:
                    if r.reason == "non_finite_number":  # dead-lettered, and counted
                        batch.add_non_finite(r.raw, default_ms)
            read[msg.topic] += 1
            for i in batch.add_many(decoded.events, default_ms, position=(position, msg.offset),
                                    partition=msg.partition, kind=kind):
                obj = decoded.events[i]
                index = None if decoded.positions is None else decoded.positions[i]
                dead.append((msg, Rejection(
                    "unknown_model", f"model {obj['model']!r} is not configured",
                    element_bytes(value, obj, decoded), index)))
        for name, n in read.items():
            self.metrics.messages.labels(name).inc(n)
        if pooled:
            self.metrics.decoded.labels("pool").inc(pooled)
        if pooled < len(messages):
            self.metrics.decoded.labels("worker").inc(len(messages) - pooled)
        topic_of = {"prediction": topic, **{kind: name for name, kind in self.kinds.items()}}
        batch.finish()
        for model, runs in batch.runs.items():  # once per model and kind, not per run
            valid: dict[str, int] = defaultdict(int)
            for kind, accepted, _ in runs:
                valid[kind] += len(accepted)
            for kind, n in valid.items():
                self.metrics.events.labels(topic_of[kind], model, "valid").inc(n)
            predicted = [accepted for kind, accepted, _ in runs if kind == "prediction"]
            if predicted:
                self.metrics.observe_predictions(model, concat(predicted))
        for (kind, model), n in batch.duplicated.items():
            self.metrics.events.labels(topic_of[kind], model, "duplicate").inc(n)
        # Dead letters first: they are owed nowhere in the state, so they are on the
        # broker before the state that skips their positions after a restart is saved.
        await self._dead_letter(dead)
        results = self.engine.apply(batch, now)
        self.share_binnings(results)
        for model, result in results.items():
            for problem in result.problems:
                self.metrics.state_errors.labels(model).inc()
                log.error("model %r: warm-up reference not built: %s", model, problem)
            if result.late:
                self.metrics.late_events.labels(model).inc(result.late)
                self.metrics.events.labels(topic, model, "late").inc(result.late)
            m = self.engine.monitor(model)
            if m.watermark_ms is not None:
                self.metrics.watermark.labels(model).set(m.watermark_ms / 1000)
            if result.performance is not None:
                self.metrics.observe_performance(model, result.performance, m.performance)
            self.save(model)
        self.metrics.batch_events.observe(batch.accepted + len(dead))
        await self.publish_due(batch.models, now)
        sends = await self.checkpoint() if wait or self.checkpoint_due() else None
        if wait:
            await self.flush_state()
            sends = []
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return sends

    def _model_label(self, rej: Rejection) -> str:
        """The configured model a refused record names, or "" (unparseable, unnamed, or a
        name not configured: refused records never mint new label values)."""
        if len(rej.raw) > _LABEL_PARSE_MAX:
            return ""
        try:  # NaN is not JSON: such an element is read as the batch reads it for quality
            model = (json.loads(rej.raw) if rej.reason == "non_finite_number"
                     else orjson.loads(rej.raw)).get("model")
        except (ValueError, AttributeError, RecursionError):
            return ""
        return model if isinstance(model, str) and model in self.settings.models else ""

    async def _dead_letter(self, dead: list[tuple[Message, Rejection]]) -> None:
        futures = []
        limit = self.settings.worker.deadletter_max_bytes
        for msg, rej in dead:
            value = rej.raw
            headers = [
                ("dw-reason", rej.reason.encode()),
                ("dw-error", rej.detail.encode("utf-8", "replace")[:512]),
                ("dw-source-topic", msg.topic.encode()),
                ("dw-source-partition", str(msg.partition).encode()),
                ("dw-source-offset", str(msg.offset).encode()),
            ]
            if rej.index is not None:
                headers.append(("dw-element-index", str(rej.index).encode()))
            if len(value) > limit:
                headers += [("dw-truncated-from", str(len(value)).encode()),
                            ("dw-sha256", hashlib.sha256(value).hexdigest().encode())]
                value = value[:limit]
            futures.append(await self.deadletter.send(key=msg.key, value=value,
                                                      headers=headers))
            outcome = "unknown_model" if rej.reason == "unknown_model" else "invalid"
            self.metrics.events.labels(msg.topic, self._model_label(rej), outcome).inc()
            self.metrics.deadletters.labels(msg.topic, rej.reason).inc()
        for fut in futures:
            await fut

    # -- closing windows ------------------------------------------------------------
    async def close_due(self, model: str, now: float | None = None, *,
                        detections: bool = False) -> int:
        """Close every due window of ``model``; returns how many closed.

        With ``detections``, its streaming detections go first (alerts for streaming
        change detections, performance evaluations and their alerts), in the first due
        window's round trip to the broker: all sent, in order, before any is waited for;
        alone when no window is due. They are acknowledged in the state once
        sent; under the model's lock, so the agent and the timer never send the same
        ones, and detections added while sending (appended) are not acknowledged by
        mistake. As when each had its own round trip, detections failing are raised (the
        window that shared theirs reopened), and a window's outputs failing is logged,
        the window closing again later (the detections before them acknowledged).
        """
        closed = 0
        async with self.locks[model]:
            now = time.time() if now is None else now
            pending = self.engine.detections(model) if detections else []
            for start in self.engine.due(model, now):
                result = self.engine.begin_close(model, start, now)
                try:  # all sent before any is waited for: one round trip
                    ahead = await self._sends(model, self._targets(pending))
                    try:
                        window: list[Any] | Exception = await self._sends(
                            model, self._window_outputs(result))
                    except Exception as exc:  # (raised below, after the detections)
                        window = exc
                    await wait_all(ahead)
                except Exception:  # the detections' failure: raised, as ever
                    self.engine.abort_close(model, start, result)
                    raise
                if pending:
                    self._detections_sent(model, pending)
                    pending = []
                try:
                    if isinstance(window, Exception):
                        raise window
                    await wait_all(window)
                except Exception:
                    self.engine.abort_close(model, start, result)
                    log.exception("publishing window %s of %r failed; will retry", start, model)
                    break
                self._window_published(model, result)
                self.engine.finish_close(model, start)
                self.save(model)
                closed += 1
                if result.due_since is not None:
                    self.metrics.window_close_lag.observe(
                        max(0.0, time.time() - result.due_since))
            if pending:  # no window due: the detections alone
                await self._send(model, self._targets(pending))
                self._detections_sent(model, pending)
        return closed

    async def publish_due(self, models: Iterable[str], now: float) -> None:
        """Each model's streaming detections and due windows (:meth:`close_due`), the
        models at once. A model's own outputs keep their order, each window closed
        only once the broker has its outputs, but the round trips of different models'
        outputs overlap. Windows of many models fall due together (every model's at the
        minute, on the tick or read from a backlog); published one model after another,
        the last model's alert waited for every other model's acknowledgements."""
        failed = [r for r in await asyncio.gather(
            *(self.close_due(model, now, detections=True) for model in models),
            return_exceptions=True) if isinstance(r, BaseException)]
        if failed:  # (raised once every model's publishing is over)
            raise failed[0]

    def _targets(self, outputs: list[tuple[str, dict[str, Any]]]
                 ) -> list[tuple[Any, dict[str, Any]]]:
        """Detections' outputs with the topics they go to."""
        targets = {"alerts": self.alerts, "evaluations": self.evaluations,
                   "retrain_triggers": self.retrain_triggers}
        return [(targets[t], e) for t, e in outputs]

    def _detections_sent(self, model: str, outputs: list[tuple[str, dict[str, Any]]]) -> None:
        """The broker has a model's detections (:meth:`~app.core.engine.Engine.detections`):
        counted, and acknowledged in its state."""
        self.metrics.observe_alerts(model, [e for t, e in outputs if t == "alerts"],
                                    self.engine.monitor(model).alerts)
        for target, e in outputs:
            if target == "alerts":
                continue
            if target == "retrain_triggers":
                self.metrics.retrain_triggers.labels(model).inc()
            else:
                self.metrics.observe_performance_evaluation(model, e["data"])
        self.engine.ack_detections(model, len(outputs))
        self.save(model)

    async def tick(self) -> None:
        """Wall-clock pass: close windows of idle streams, evaluate due checkpoints, judge
        freshness and the retrain lifecycle."""
        now = time.time()
        models = self.local_models()
        for model in models:
            async with self.locks[model]:
                checked = self.engine.check_time(model, now)
                if checked.freshness or checked.lifecycle:
                    self.save(model)
                update = self.engine.advance(model, now)
                if update is not None and (update.evaluations or update.detections
                                           or update.expired or update.orphans):
                    m = self.engine.monitor(model)
                    self.metrics.observe_performance(model, update, m.performance)
                    self.save(model)
        await self.publish_due(models, now)  # also what was left before a restart
        await self.checkpoint()
        await self.flush_state()

    async def _sends(self, model: str, outputs: list[tuple[Any, dict[str, Any]]]
                     ) -> list[Any]:
        """Publish CloudEvents keyed by model; returns the sends, the broker's
        acknowledgements to wait for (:func:`wait_all`)."""
        key = model.encode()
        return [await topic.send(key=key, value=orjson.dumps(event), headers=CE_HEADERS)
                for topic, event in outputs]

    async def _send(self, model: str, outputs: list[tuple[Any, dict[str, Any]]]) -> None:
        """Publish CloudEvents keyed by model and wait until the broker has them all."""
        await wait_all(await self._sends(model, outputs))

    def _window_outputs(self, closed: ClosedWindow) -> list[tuple[Any, dict[str, Any]]]:
        """A closed window's outputs with the topics they go to."""
        return ([(self.alerts, a) for a in closed.alerts]
                + [(self.evaluations, e) for e in closed.evaluation_events]
                + [(self.retrain_triggers, t) for t in closed.triggers])

    def _window_published(self, model: str, closed: ClosedWindow) -> None:
        """The broker has a closed window's outputs: counted in the metrics."""
        if closed.triggers:
            self.metrics.retrain_triggers.labels(model).inc(len(closed.triggers))
        self.metrics.observe_alerts(model, closed.alerts, self.engine.monitor(model).alerts)
        self.metrics.windows_closed.labels(model).inc()
        self.metrics.window_events.labels(model).set(
            sum(ev.n for ev in closed.evaluations if ev.segment is None))
        for event in closed.evaluation_events:
            serving = event["data"].get("serving")
            if serving:
                self.metrics.set_serving(model, event["data"]["model_version"], serving)
        for ev in closed.evaluations:
            if ev.segment is not None:
                continue  # per-segment figures are in the evaluations, not in metrics
            for fe in ev.features:
                if fe.value is not None:
                    self.metrics.set_drift(model, ev.model_version, public_name(fe.feature),
                                           fe.statistic, fe.value)
            for feature, rates in (ev.quality_rates or {}).items():
                for counter, rate in rates.items():
                    if counter != "present":
                        self.metrics.set_quality(model, ev.model_version, feature, counter,
                                                 rate)


def faust_settings(settings: MonitorSettings, bootstrap: str, *, embedded: bool) -> dict[str, Any]:
    kafka, worker = settings.kafka, settings.worker
    conf: dict[str, Any] = {
        "broker": [f"kafka://{b.strip()}" for b in bootstrap.split(",")],
        "store": worker.store,
        "datadir": worker.data_dir,
        "web_enabled": False,
        "topic_partitions": kafka.partitions,
        "topic_replication_factor": kafka.replication_factor,
        "topic_disable_leader": True,
        "table_standby_replicas": 0,
        "consumer_auto_offset_reset": "earliest",
        "stream_buffer_maxsize": worker.stream_buffer,
        # Dead letters can be as large as what arrived: allow up to the dead-letter cap.
        "producer_max_request_size": max(worker.max_message_bytes,
                                         worker.deadletter_max_bytes) + 64 * 1024,
        "consumer_max_fetch_size": max(worker.max_message_bytes * 2, 4 * 1024 * 1024),
        # A batch's state records (tens of KiB each, several per changelog partition)
        # go out in one record batch per partition: aiokafka sends one per partition and
        # request, so at 16 KiB (faust's default) each record took a round trip of its own.
        "producer_max_batch_size": 1024 * 1024,
        "broker_rebalance_timeout": kafka.rebalance_timeout,
        "broker_session_timeout": kafka.session_timeout,
        "broker_heartbeat_interval": min(3.0, kafka.session_timeout / 3),
        # Topics the guard recreates (a broker that lost its data) are found by the next
        # metadata refresh, which rebalances the group onto them: every few seconds, not
        # the client's default five minutes without reading them (one small request).
        "consumer_metadata_max_age_ms": int(TOPIC_GUARD_INTERVAL * 2 * 1000),
    }
    if embedded:
        # The embedded broker makes every group join wait the full rebalance timeout.
        conf.update(broker_rebalance_timeout=3.0, broker_session_timeout=6.0,
                    broker_heartbeat_interval=1.0)
    if kafka.security_protocol != "PLAINTEXT":
        conf["broker_credentials"] = _credentials(settings)
    return conf


def _credentials(settings: MonitorSettings) -> Any:
    kw = client_kwargs(settings.kafka)
    if settings.kafka.sasl_mechanism:
        return faust.SASLCredentials(
            username=kw.get("sasl_plain_username"), password=kw.get("sasl_plain_password"),
            mechanism=settings.kafka.sasl_mechanism, ssl_context=kw.get("ssl_context"))
    return faust.SSLCredentials(kw["ssl_context"])


async def guarded(app: faust.App, name: str, process: Any, messages: list[Message], *,
                  what: str | None = None) -> Any:
    """Run one batch (or wait for what it sent, or a checkpoint: ``what`` names it in the
    log); returns what ``process`` returns. The
    consumer acknowledges a batch only once this returned (:mod:`app.batch_consumer`):
    a batch that raised or was cancelled (a stop, a rebalance) is never committed, nor is
    any later offset of its partitions.

    A failure other than a stop or a rebalance (an output the broker never took within
    the producer's request timeout, a bug) stops the worker with an error: its state may
    be ahead of its outputs, and a fresh start from the last commit and the changelog is
    the one consistent way on. The orchestrator restarts it.
    """
    try:
        return await process(messages)
    except Exception as exc:
        log.critical("%s failed (%s: %s); its offsets stay uncommitted and the worker "
                     "stops, to start again from the last commit",
                     what or f"{name} batch of {len(messages)} messages",
                     type(exc).__name__, exc)
        await app.crash(exc)
        raise


def _ready(app: faust.App) -> bool:
    """Timers act only on a settled worker: not rebalancing, tables recovered."""
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    return not app.rebalancing and bool(recovery.completed.is_set())


def build_app(settings: MonitorSettings, bootstrap: str, references: Mapping[str, Reference | None],
              metrics: Metrics, *, embedded: bool = False) -> tuple[BatchApp, Pipeline]:
    """The faust app of one worker and the pipeline its agents drive."""
    if any(m.performance is not None or m.change_detectors for m in settings.models.values()):
        # river's import (its drift package pulls in its datasets, and with them scipy
        # and sklearn: seconds) paid now, not by the first batch that runs a detector,
        # holding the event loop; likewise the compiled detectors (numba: loaded from
        # their cache on disk, or compiled the first time)
        importlib.import_module("app.detectors.streaming")
        kernels = importlib.import_module("app.detectors.kernels")
        if settings.worker.compiled_detectors:
            kernels.warm_up()
        else:
            kernels.disable()
    app = BatchApp(settings.worker.app_id, **faust_settings(settings, bootstrap,
                                                           embedded=embedded))
    app.batch_limits = BatchLimits(settings.worker.batch_size,
                                   settings.worker.batch_max_bytes,
                                   settings.worker.batch_within)
    app.fetch_max_wait = settings.kafka.fetch_max_wait
    topics = settings.topics
    parts = settings.kafka.partitions

    def raw_topic(name: str) -> Any:
        return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw", partitions=parts)

    # Predictions, outcomes and model events are all keyed by model and co-partitioned:
    # one agent reads the three, so a model's state has a single writer.
    streams = app.topic(topics.name("predictions"), topics.name("outcomes"),
                        topics.name("model_events"), key_type=bytes, value_type=bytes,
                        key_serializer="raw", value_serializer="raw", partitions=parts)
    table = app.Table(STATE_TABLE, partitions=parts, key_type=bytes, value_type=bytes,
                      extra_topic_configs={"max.message.bytes": str(STATE_MAX_BYTES)})
    engine = Engine(settings, references, source=f"urn:driftwarden:{settings.worker.app_id}")
    pipeline = Pipeline(settings, engine, metrics, table,
                        alerts=raw_topic(topics.name("alerts")),
                        evaluations=raw_topic(topics.name("evaluations")),
                        deadletter=raw_topic(topics.name("deadletter")),
                        retrain_triggers=raw_topic(topics.name("retrain_triggers")))
    engine.load_state = pipeline.load_state
    engine.load_records = pipeline.load_records
    pipeline.kinds = {topics.name("predictions"): "prediction",
                      topics.name("outcomes"): "outcome",
                      topics.name("model_events"): "model_event"}
    engine.on_state_error = pipeline.on_state_error
    pipeline.decodes = DecodePool(
        settings.worker.decode_process_count(), max_bytes=settings.worker.max_message_bytes,
        max_elements=settings.worker.max_array_elements)
    if pipeline.decodes.processes:
        app.batch_prepare = pipeline.prepare
    predictions_name = topics.name("predictions")
    pipeline.assigned = lambda: {tp.partition for tp in app.assignor.assigned_actives()
                                 if tp.topic == predictions_name}
    lag = ConsumerLag(metrics, {topics.name(t) for t in
                                ("predictions", "outcomes", "model_events", "inputs")})

    async def predictions(messages: list[Message]) -> Settle | Later:
        # The consumer acknowledges a batch once process_batch has published its outputs
        # and the broker has a checkpoint's records made with or after it (settle),
        # which it waits for after handing over the next batch of the fetch, if any.
        sends = await guarded(app, "predictions", process_in_flight, messages)
        lag.processed(messages)
        return later if sends is None else settle_when_sent(sends, messages)

    async def process_in_flight(messages: list[Message]) -> list[Any] | None:
        return await pipeline.process_batch(messages, wait=False)

    def settle_when_sent(sends: list[Any], messages: list[Message]) -> Settle:
        async def settle() -> None:
            await guarded(app, "predictions", lambda _: wait_all(sends), messages)
        return settle

    async def checkpoint() -> Settle:
        """A checkpoint for batches not covered by one yet (the consumer's turn ends)."""
        what = "the checkpoint of the predictions batches"
        sends = await guarded(app, "predictions", lambda _: pipeline.checkpoint(), [],
                              what=what)

        async def settle() -> None:
            await guarded(app, "predictions", lambda _: wait_all(sends), [], what=what)
        return settle

    later = Later(checkpoint)

    app.route_batches(streams, predictions)

    async def tick() -> None:
        if _ready(app):
            await pipeline.tick()

    app.timer(settings.worker.tick_interval, name="driftwarden.tick")(tick)

    async def measure_lag() -> None:
        if _ready(app):
            await lag.update(app.consumer)

    app.timer(max(1.0, settings.worker.tick_interval), name="driftwarden.lag")(measure_lag)

    rewinders = [pipeline.rewind]
    if settings.sources:
        rewinders.append(_add_sources(app, settings, metrics, raw_topic, pipeline, lag).rewind)

    async def follow_references() -> None:
        """Keep installing references published while the worker runs."""
        follower = ReferenceFollower(bootstrap, settings, engine.install_reference)
        try:
            await follower.start()
            await follower.follow()
        finally:
            await follower.stop()

    app.task(follow_references)

    changelogs = {t.changelog_topic.get_topic_name(): parts for t in app.tables.values()}
    inputs = {topics.name(t) for t in ("predictions", "outcomes", "model_events", "inputs")}
    reread: set[tuple[str, int]] = set()  # partitions to read again from offset 0

    async def guard_topics() -> None:
        """A broker that came back empty (a new cluster, lost storage): recreate every
        topic with its partition count before a client's first touch auto-creates one
        with the broker's default count (faust then stops on PartitionsMismatch).

        An input topic recreated here numbers its partitions from 0 again: the positions
        the state holds for it are dropped at once (nothing was read from the new topic
        yet), the state is written to the new changelog, and each partition is read from
        its start once assigned (faust would skip offsets below those it had read)."""
        try:
            created = await asyncio.wait_for(
                ensure_topics(bootstrap, settings, extra=changelogs,
                              compact=frozenset(changelogs)), TOPIC_GUARD_INTERVAL)
        except DriftwardenError as exc:
            log.error("topic check: %s", exc)
            return
        except (TimeoutError, KafkaError, OSError) as exc:  # broker away: later
            log.debug("topic check: broker unavailable (%s)", exc)
            return
        lost = sorted(inputs & set(created or ()))
        if lost:
            log.warning("topics %s were missing and are recreated (a broker that lost its "
                        "data?): their partitions are read from offset 0", lost)
            for name in lost:
                for rewind in rewinders:
                    await rewind(name)
                reread.update((name, p) for p in range(parts))
        for tp in list(app.consumer.assignment()):
            if (tp.topic, tp.partition) in reread:
                reread.discard((tp.topic, tp.partition))
                lag.done.pop((tp.topic, tp.partition), None)
                await app.consumer.seek(tp, 0)

    app.timer(TOPIC_GUARD_INTERVAL, name="driftwarden.topics")(guard_topics)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _revoked(app_: Any, revoked: set[Any], **_: Any) -> None:
        await pipeline.revoke({tp.partition for tp in revoked
                                    if tp.topic == topics.name("predictions")})

    return app, pipeline


def _add_sources(app: BatchApp, settings: MonitorSettings, metrics: Metrics, raw_topic: Any,
                 pipeline: Pipeline, lag: ConsumerLag) -> Any:
    """The inputs agent and its state table (sources are keyed by source, not model)."""
    from app.sources.engine import SourcesEngine
    from app.streaming_sources import SOURCE_TABLE, SourcePipeline

    topics = settings.topics
    parts = settings.kafka.partitions
    inputs_name = topics.name("inputs")
    table = app.Table(SOURCE_TABLE, partitions=parts, key_type=bytes, value_type=bytes,
                      extra_topic_configs={"max.message.bytes": str(STATE_MAX_BYTES)})
    engine = SourcesEngine(settings, source_uri=f"urn:driftwarden:{settings.worker.app_id}")
    sources = SourcePipeline(settings, engine, metrics, table,
                             targets={"alerts": pipeline.alerts,
                                      "evaluations": pipeline.evaluations},
                             dead_letter=pipeline._dead_letter, send=pipeline._send)
    engine.load_state = sources.load_state
    engine.on_state_error = sources.on_state_error
    sources.assigned = lambda: {tp.partition for tp in app.assignor.assigned_actives()
                                if tp.topic == inputs_name}
    async def inputs(messages: list[Message]) -> None:
        await guarded(app, "inputs", sources.process_batch, messages)
        lag.processed(messages)

    app.route_batches(raw_topic(inputs_name), inputs)

    async def tick() -> None:
        if _ready(app):
            await sources.tick()

    app.timer(settings.worker.tick_interval, name="driftwarden.sources-tick")(tick)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _revoked(app_: Any, revoked: set[Any], **_: Any) -> None:
        engine.forget([s for s, m in engine.monitors.items()
                       if m.partition in {tp.partition for tp in revoked
                                          if tp.topic == inputs_name}])

    return sources
