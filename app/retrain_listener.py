"""``driftwarden retrain-listener``: run a training command for every retrain trigger.

A reference consumer of the retrain-triggers topic that users run as is or copy. For
each trigger it publishes ``retrain_started`` to the model-events topic, runs the
command through the shell (the trigger CloudEvent on stdin; ``DW_TRIGGER_ID``,
``DW_MODEL``, ``DW_MODEL_VERSION`` and ``DW_REASONS`` in the environment, which is the
listener's less the variable holding its Kafka password), then publishes
``retrain_completed`` (and, with ``--deploy``, ``deployed``) or ``retrain_failed``. The
command reports on its last stdout line::

    {"version": "v2", "metrics": {"accuracy": 0.9}, "reference": "s3://..."}

Delivery is at least once: a trigger's offset is committed only after its outcome event
is published. A trigger runs once: trigger ids already answered by a
``retrain_completed`` or ``retrain_failed`` event (read from the model-events topic at
start, then remembered) are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import re
import signal
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from app import redact
from app.durations import parse_duration
from app.errors import DriftwardenError
from app.settings import MonitorSettings

log = logging.getLogger("driftwarden.retrain_listener")

TRIGGER_TYPE = "io.driftwarden.retrain.requested"
DEFAULT_TIMEOUT = 6 * 3600.0
HANDLED_MAX = 100_000  # trigger ids remembered
TAIL_BYTES = 64 * 1024  # kept of the command's stdout and stderr
UNKNOWN_VERSION = "unknown"  # model events need a version; a trigger's may be null
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class HandledTriggers:
    """A bounded set of trigger ids, forgetting the oldest first.

    >>> h = HandledTriggers(maxsize=2)
    >>> for t in ("a", "b", "c"):
    ...     h.add(t)
    >>> "a" in h, "b" in h, "c" in h
    (False, True, True)
    """

    def __init__(self, maxsize: int = HANDLED_MAX) -> None:
        self.maxsize = maxsize
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, trigger_id: str) -> None:
        """Remember ``trigger_id`` (refreshing it if already known)."""
        self._ids[trigger_id] = None
        self._ids.move_to_end(trigger_id)
        while len(self._ids) > self.maxsize:
            self._ids.popitem(last=False)

    def __contains__(self, trigger_id: object) -> bool:
        return trigger_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


@dataclass(frozen=True)
class Trigger:
    """The fields of a retrain trigger the listener uses, and its raw CloudEvent."""

    trigger_id: str
    model: str
    model_version: str | None
    reasons: list[str]
    raw: bytes

    @property
    def version(self) -> str:
        """The degraded version, for the model events (``unknown`` when null)."""
        return self.model_version or UNKNOWN_VERSION


def parse_trigger(value: bytes | None) -> Trigger:
    """Decode a retrain-trigger CloudEvent.

    Parameters
    ----------
    value
        The Kafka message value.

    Returns
    -------
    Trigger
        The trigger.

    Raises
    ------
    ValueError
        When the value is not a retrain trigger, with the reason.
    """
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("type") != TRIGGER_TYPE:
        raise ValueError(f"not a CloudEvent of type {TRIGGER_TYPE}")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise ValueError("no 'data' object")
    trigger_id, model = data.get("trigger_id"), data.get("model")
    version = data.get("model_version")
    if not isinstance(trigger_id, str) or not 1 <= len(trigger_id) <= 128:
        raise ValueError("data.trigger_id: expected a string of 1 to 128 characters")
    if not isinstance(model, str) or not _NAME_RE.match(model):
        raise ValueError("data.model: expected a model name")
    if version is not None and (not isinstance(version, str) or not 1 <= len(version) <= 128):
        raise ValueError("data.model_version: expected a string of 1 to 128 characters or null")
    reasons = data.get("reasons")
    ids = [str(r.get("alert_id") or r.get("kind") or "") for r in reasons
           if isinstance(r, dict)] if isinstance(reasons, list) else []
    return Trigger(trigger_id, model, version, [i for i in ids if i], bytes(value or b""))


def trigger_env(trigger: Trigger) -> dict[str, str]:
    """The environment variables describing ``trigger`` for the command.

    >>> t = Trigger("t1", "churn", None, ["a1", "a2"], b"{}")
    >>> trigger_env(t)["DW_REASONS"], trigger_env(t)["DW_MODEL_VERSION"]
    ('a1,a2', '')
    """
    return {"DW_TRIGGER_ID": trigger.trigger_id, "DW_MODEL": trigger.model,
            "DW_MODEL_VERSION": trigger.model_version or "",
            "DW_REASONS": ",".join(trigger.reasons)}


@dataclass(frozen=True)
class TrainingOutput:
    """What a successful command reported on its last stdout line."""

    version: str
    metrics: dict[str, float] = field(default_factory=dict)
    reference: str | None = None


def parse_output(stdout: str) -> TrainingOutput:
    """Parse the JSON object on the last non-empty line of the command's stdout.

    Parameters
    ----------
    stdout
        The command's standard output (or its tail).

    Returns
    -------
    TrainingOutput
        The new version, its metrics and reference.

    Raises
    ------
    ValueError
        When the line is missing, not a JSON object, or lacks a valid ``version``.

    >>> parse_output('training...\\n{"version": "v2", "metrics": {"acc": 0.9}}\\n')
    TrainingOutput(version='v2', metrics={'acc': 0.9}, reference=None)
    """
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ValueError("the command printed nothing on stdout; its last line must be a "
                         'JSON object like {"version": "v2"}')
    last = lines[-1].strip()
    try:
        doc = orjson.loads(last)
    except orjson.JSONDecodeError:
        raise ValueError(f"the last stdout line is not JSON: {last[:200]!r}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"the last stdout line is not a JSON object: {last[:200]!r}")
    version = doc.get("version")
    if not isinstance(version, str) or not 1 <= len(version) <= 128:
        raise ValueError("the output has no 'version' (a string of 1 to 128 characters): "
                         "the listener cannot name the new version without it")
    metrics = doc.get("metrics", {})
    if not isinstance(metrics, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in metrics.values()):
        raise ValueError("'metrics' must be an object of finite numbers")
    reference = doc.get("reference")
    if reference is not None and (not isinstance(reference, str)
                                  or not 1 <= len(reference) <= 1024):
        raise ValueError("'reference' must be a string of 1 to 1024 characters")
    return TrainingOutput(version, {str(k): float(v) for k, v in metrics.items()}, reference)


async def _tail(stream: asyncio.StreamReader | None, limit: int = TAIL_BYTES) -> bytes:
    """Read ``stream`` to its end, keeping the last ``limit`` bytes."""
    kept = b""
    if stream is None:
        return kept
    while chunk := await stream.read(65536):
        kept = (kept + chunk)[-limit:]
    return kept


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the command's process group (the shell and what it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def command_env(trigger: Trigger, withhold: Iterable[str] = ()) -> dict[str, str]:
    """The command's environment: the listener's, less the ``withhold`` variables (its
    Kafka password: the command does not need it, and what it prints goes to the
    model-events topic when it fails), plus :func:`trigger_env`.

    >>> t = Trigger("t1", "churn", None, [], b"{}")
    >>> env = command_env(t, withhold=["HOME"])
    >>> "HOME" in env, env["DW_MODEL"]
    (False, 'churn')
    """
    held = set(withhold)
    return {**{k: v for k, v in os.environ.items() if k not in held}, **trigger_env(trigger)}


async def run_command(command: str, trigger: Trigger, timeout: float, *,
                      withhold: Iterable[str] = ()) -> TrainingOutput:
    """Run ``command`` through the shell for ``trigger`` and parse its output.

    Parameters
    ----------
    command
        A shell command line.
    trigger
        The trigger: its CloudEvent goes to stdin, its fields to the environment.
    timeout
        Seconds before the command's process group is killed.
    withhold
        Environment variables the command does not get (see :func:`command_env`).

    Returns
    -------
    TrainingOutput
        What the command reported.

    Raises
    ------
    RuntimeError
        When the command fails, times out or reports badly, with the reason (and the
        tail of its stderr).
    """
    proc = await asyncio.create_subprocess_shell(
        command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=command_env(trigger, withhold),
        start_new_session=True)

    async def feed() -> None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(trigger.raw)
            await proc.stdin.drain()
        proc.stdin.close()

    async def run() -> tuple[bytes, bytes, int]:
        _, out, err = await asyncio.gather(feed(), _tail(proc.stdout), _tail(proc.stderr))
        return out, err, await proc.wait()

    try:
        out, err, code = await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        _kill_group(proc)
        await proc.wait()
        raise RuntimeError(f"timed out after {timeout:g} s (killed)") from None
    except BaseException:  # cancelled (shutdown): leave nothing running
        _kill_group(proc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        raise
    stderr = err.decode(errors="replace").strip()[-2000:]
    if code != 0:
        raise RuntimeError(f"exited with status {code}" + (f"; stderr: {stderr}" if stderr else ""))
    try:
        return parse_output(out.decode(errors="replace"))
    except ValueError as exc:
        raise RuntimeError(str(exc) + (f"; stderr: {stderr}" if stderr else "")) from None


def model_event(trigger: Trigger, event: str, version: str, **extra: Any) -> dict[str, Any]:
    """A model lifecycle event answering ``trigger``, timestamped now (epoch ms)."""
    return {"model": trigger.model, "version": version, "event": event,
            "trigger_id": trigger.trigger_id, "timestamp": int(time.time() * 1000), **extra}


async def scan_handled(consumer: Any, topic: str, handled: HandledTriggers) -> int:
    """Add to ``handled`` the trigger ids of finished retrains on the model-events topic.

    Reads ``topic`` from the start to its end offsets as of now with ``consumer`` (a
    started consumer without a group). Returns how many ids were found.
    """
    from aiokafka import TopicPartition

    if topic not in await consumer.topics():
        return 0
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    if not tps:
        return 0
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends = await consumer.end_offsets(tps)
    found = 0
    while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
        for records in (await consumer.getmany(timeout_ms=500)).values():
            for record in records:
                try:
                    doc = orjson.loads(record.value or b"null")
                except orjson.JSONDecodeError:
                    continue
                for ev in doc if isinstance(doc, list) else [doc]:
                    if (isinstance(ev, dict) and ev.get("event") in ("retrain_completed",
                                                                      "retrain_failed")
                            and isinstance(ev.get("trigger_id"), str)):
                        handled.add(ev["trigger_id"])
                        found += 1
    return found


class RetrainListener:
    """Consumes retrain triggers and runs a command for each, once.

    Parameters
    ----------
    settings
        The monitor settings (topics, Kafka security, ``worker.app_id``).
    bootstrap
        Kafka bootstrap servers.
    command
        The shell command run per trigger.
    group
        Consumer group (default ``<app_id>-retrain-listener``).
    timeout
        Seconds a run may take.
    deploy
        Also publish ``deployed`` for each new version.
    """

    def __init__(self, settings: MonitorSettings, bootstrap: str, command: str, *,
                 group: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 deploy: bool = False) -> None:
        self.settings, self.bootstrap, self.command = settings, bootstrap, command
        self.group = group or f"{settings.worker.app_id}-retrain-listener"
        self.timeout, self.deploy = timeout, deploy
        self.handled = HandledTriggers()
        self.events_topic = settings.topics.name("model_events")
        self.triggers_topic = settings.topics.name("retrain_triggers")
        self.runs = 0  # commands started

    async def run(self, stop: asyncio.Event) -> int:
        """Consume until ``stop`` is set; returns the exit code (0)."""
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        from app.kafka import client_kwargs

        kw = client_kwargs(self.settings.kafka)
        scanner = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                   enable_auto_commit=False, **kw)
        try:  # a client that failed to start is closed too
            await scanner.start()
            found = await scan_handled(scanner, self.events_topic, self.handled)
        finally:
            await scanner.stop()
        log.info("%d finished retrain(s) on %s", found, self.events_topic)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", **kw)
        consumer = AIOKafkaConsumer(
            self.triggers_topic, bootstrap_servers=self.bootstrap, group_id=self.group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_interval_ms=int((self.timeout + 300) * 1000), **kw)
        try:
            await producer.start()
            try:
                await consumer.start()
                log.info("listening on %s as group %s", self.triggers_topic, self.group)
                await self._consume(consumer, producer, stop)
            finally:
                await consumer.stop()
        finally:
            await producer.stop()
        return 0

    async def _consume(self, consumer: Any, producer: Any, stop: asyncio.Event) -> None:
        from aiokafka.errors import KafkaError

        while not stop.is_set():
            try:
                batch = await consumer.getmany(timeout_ms=500, max_records=1)
            except KafkaError as exc:  # a broker hiccup: keep listening
                log.error("reading %s failed (%s); retrying", self.triggers_topic, exc)
                await asyncio.sleep(1.0)
                continue
            for tp, records in batch.items():
                for record in records:
                    if stop.is_set() or not await self._handle(record.value, producer, stop):
                        # not finished: uncommitted, so it runs again after a restart
                        with contextlib.suppress(Exception):
                            consumer.seek(tp, record.offset)
                        break
                    try:
                        await consumer.commit({tp: record.offset + 1})
                    except KafkaError as exc:  # e.g. the partition moved in a rebalance
                        log.warning("could not commit trigger offset %s/%d (%s): it may be "
                                    "redelivered", tp, record.offset, exc)

    async def _handle(self, value: bytes | None, producer: Any, stop: asyncio.Event) -> bool:
        """Process one trigger; False when stopped before its outcome was published."""
        try:
            trigger = parse_trigger(value)
        except ValueError as exc:
            log.error("skipping a record on %s: %s", self.triggers_topic, exc)
            return True
        if trigger.trigger_id in self.handled:
            log.info("trigger %s (%s) already handled: skipped", trigger.trigger_id,
                     trigger.model)
            return True
        if not await self._publish(producer, model_event(trigger, "retrain_started",
                                                         trigger.version), stop):
            return False
        self.runs += 1
        log.info("retraining %s (trigger %s): %s", trigger.model, trigger.trigger_id,
                 self.command)
        from app.kafka import secret_variables

        run = asyncio.ensure_future(run_command(self.command, trigger, self.timeout,
                                                withhold=secret_variables(self.settings.kafka)))
        halt = asyncio.ensure_future(stop.wait())
        await asyncio.wait({run, halt}, return_when=asyncio.FIRST_COMPLETED)
        halt.cancel()
        if not run.done():
            run.cancel()
            with contextlib.suppress(BaseException):
                await run
            log.warning("stopped during the run of trigger %s: it will run again",
                        trigger.trigger_id)
            return False
        try:
            out = run.result()
        except Exception as exc:  # a failed run never stops the listener
            log.error("retrain of %s (trigger %s) failed: %s", trigger.model,
                      trigger.trigger_id, exc)
            events = [model_event(trigger, "retrain_failed", trigger.version, metrics={},
                                  reason=redact.mask(str(exc))[:2000])]
        else:
            extra: dict[str, Any] = {"metrics": out.metrics}
            if out.reference is not None:
                extra["reference"] = out.reference
            events = [model_event(trigger, "retrain_completed", out.version, **extra)]
            if self.deploy:
                events.append(model_event(trigger, "deployed", out.version, **extra))
            log.info("retrained %s: version %s %s", trigger.model, out.version, out.metrics)
        for event in events:
            if not await self._publish(producer, event, stop):
                return False
        self.handled.add(trigger.trigger_id)
        return True

    async def _publish(self, producer: Any, event: dict[str, Any], stop: asyncio.Event) -> bool:
        """Publish ``event`` keyed by model, retrying until it is sent or ``stop`` is set."""
        while True:
            try:
                await producer.send_and_wait(self.events_topic, orjson.dumps(event),
                                             key=event["model"].encode())
                return True
            except Exception as exc:
                log.error("publishing %s to %s failed (%s); retrying", event["event"],
                          self.events_topic, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)
            if stop.is_set():
                return False


async def run_listener(settings: MonitorSettings, bootstrap: str, command: str, *,
                       stop: asyncio.Event | None = None, group: str | None = None,
                       timeout: float = DEFAULT_TIMEOUT, deploy: bool = False) -> int:
    """Run a :class:`RetrainListener` until ``stop`` is set, or SIGTERM/SIGINT.

    Parameters
    ----------
    settings, bootstrap, command, group, timeout, deploy
        As for :class:`RetrainListener`.
    stop
        Set it to stop; without it, SIGTERM and SIGINT stop the listener.

    Returns
    -------
    int
        The exit code.
    """
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    listener = RetrainListener(settings, bootstrap, command, group=group, timeout=timeout,
                               deploy=deploy)
    return await listener.run(stop)


def cmd_retrain_listener(args: argparse.Namespace) -> int:
    """The ``retrain-listener`` subcommand."""
    from app.settings import load_settings

    try:
        timeout = parse_duration(args.timeout)
    except ValueError as exc:
        raise DriftwardenError(f"--timeout: {exc}") from None
    if timeout <= 0:
        raise DriftwardenError("--timeout must be longer than 0")
    settings = load_settings(args.config)
    bootstrap = args.bootstrap or settings.kafka.bootstrap
    if not bootstrap:
        raise DriftwardenError("no bootstrap server: set kafka.bootstrap or pass --bootstrap")
    logging.getLogger("driftwarden").setLevel(args.log_level.upper().replace("WARN", "WARNING"))
    return asyncio.run(run_listener(settings, bootstrap, args.exec, group=args.group,
                                    timeout=timeout, deploy=args.deploy))


def add_parser(subparsers: Any) -> None:
    """Register the ``retrain-listener`` subcommand on ``subparsers``."""
    p = subparsers.add_parser("retrain-listener",
                              help="run a training command for every retrain trigger")
    p.add_argument("-c", "--config", required=True, help="the monitor YAML file")
    p.add_argument("--exec", required=True, metavar="CMD",
                   help="shell command run per trigger: the CloudEvent on stdin, DW_* "
                        "variables in the environment (the listener's, less the "
                        "kafka.sasl_password_env and kafka.ssl_keyfile_password_env ones); its "
                        "last stdout line is a JSON "
                        'object like {"version": "v2", "metrics": {...}, "reference": "..."}')
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (overrides kafka.bootstrap)")
    p.add_argument("--group", help="consumer group (default <worker.app_id>-retrain-listener)")
    p.add_argument("--timeout", default="6h",
                   help="longest run before the command is killed (default 6h)")
    p.add_argument("--deploy", action="store_true",
                   help="also publish 'deployed' for each retrained version")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"])
    p.set_defaults(func=cmd_retrain_listener)
