"""Forward the alerts topic to Alertmanager's API v2: ``driftwarden alertmanager-bridge``.

Each alert CloudEvent becomes an Alertmanager alert whose labels carry ``alert_id``, so
the firing and the resolved event of an alert update the same Alertmanager alert. Firing
alerts are re-sent every ``--resend`` (Alertmanager resolves an alert whose ``endsAt``
passes, and gives a firing one ``now + resolve_timeout``); a resolved event is sent
once, with ``endsAt`` set, and forgotten. Offsets are committed only after Alertmanager
accepted the alert (at-least-once: it deduplicates on the labels). On partition
assignment the partition is read again from its start up to the committed offset,
without sending, to rebuild the set of firing alerts to re-send. Credentials for an
Alertmanager behind authentication come from the environment (``--auth-env``), never
the URL: see :mod:`app.alertmanager_http`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.alertmanager_http import (
    AlertmanagerRejected,
    Sender,
    authorization_from_env,
    check_url,
    display_url,
    http_sender,
)
from app.durations import parse_duration
from app.errors import DriftwardenError
from app.settings import MonitorSettings

log = logging.getLogger(__name__)

FIRING = "io.driftwarden.alert.firing"
RESOLVED = "io.driftwarden.alert.resolved"
MAX_BATCH = 500  # alerts per POST

Alert = dict[str, Any]
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_]")


class InvalidAlertEvent(ValueError):
    """A record of the alerts topic that is not an alert CloudEvent."""


@dataclass(frozen=True)
class Converted:
    """An alert event converted for Alertmanager.

    Attributes
    ----------
    alert_id : str
        The alert's deterministic id (also in ``alert["labels"]["alert_id"]``).
    firing : bool
        True for a firing event, False for a resolved one.
    alert : dict
        The Alertmanager ``postableAlert``.
    """

    alert_id: str
    firing: bool
    alert: Alert


def _name(key: str) -> str:
    name = _BAD_NAME_CHARS.sub("_", key)
    return f"_{name}" if not name or name[0].isdigit() else name


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _string_map(value: Any) -> dict[str, str]:
    """Valid Alertmanager label names to string values; null values are left out."""
    if not isinstance(value, dict):
        return {}
    return {_name(str(k)): _text(v) for k, v in value.items() if v is not None}


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def to_alertmanager(event: Any, *, now: datetime | None = None) -> Converted:
    """Convert an alert CloudEvent to an Alertmanager API v2 alert.

    Parameters
    ----------
    event : Any
        The decoded CloudEvent (see ``schemas/alert.schema.json``).
    now : datetime, optional
        The resolution time of a resolved event without ``endsAt`` (default: now).

    Returns
    -------
    Converted
        The alert id, whether it fires, and the payload: string ``labels`` (with
        ``alert_id``; ``alertname`` defaults to ``driftwarden_<kind>``), string
        ``annotations``, ``startsAt``, ``endsAt`` (resolved events only, never before
        ``startsAt``) and ``generatorURL`` when the event has an http(s) one.

    Raises
    ------
    InvalidAlertEvent
        When the event is not an alert CloudEvent.

    Examples
    --------
    >>> ev = {"type": FIRING, "id": "a1", "time": "2024-05-01T11:00:00Z",
    ...       "data": {"alert_id": "a1", "status": "firing", "kind": "feature_drift",
    ...                "labels": {"model": "churn", "n": 3},
    ...                "startsAt": "2024-05-01T11:00:00Z", "endsAt": None}}
    >>> c = to_alertmanager(ev)
    >>> c.firing, c.alert["labels"]
    (True, {'model': 'churn', 'n': '3', 'alertname': 'driftwarden_feature_drift', \
'alert_id': 'a1'})
    """
    if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
        raise InvalidAlertEvent("not a CloudEvent with a data object")
    data = event["data"]
    kind = event.get("type")
    if kind not in (FIRING, RESOLVED):
        status = data.get("status")
        if status not in ("firing", "resolved"):
            raise InvalidAlertEvent(f"unknown alert event type {kind!r}")
        kind = FIRING if status == "firing" else RESOLVED
    alert_id = data.get("alert_id") or event.get("id")
    if not isinstance(alert_id, str) or not alert_id:
        raise InvalidAlertEvent("the event has no alert_id")
    labels = _string_map(data.get("labels"))
    labels.setdefault("alertname", f"driftwarden_{data.get('kind') or 'alert'}")
    labels["alert_id"] = alert_id
    alert: Alert = {"labels": labels, "annotations": _string_map(data.get("annotations"))}
    starts = data.get("startsAt") or event.get("time")
    if isinstance(starts, str) and starts:
        alert["startsAt"] = starts
    generator = data.get("generatorURL")
    if isinstance(generator, str) and generator.startswith(("http://", "https://")):
        alert["generatorURL"] = generator
    firing = kind == FIRING
    if not firing:
        ends_at = data.get("endsAt")
        ends = _parse_time(ends_at) if isinstance(ends_at, str) else None
        ends = ends or now or datetime.now(UTC)
        started = _parse_time(starts) if isinstance(starts, str) else None
        alert["endsAt"] = _rfc3339(max(ends, started) if started else ends)
    return Converted(alert_id, firing, alert)


class FiringAlerts:
    """The firing alerts the bridge re-sends, by alert id, at most ``cap`` of them.

    Parameters
    ----------
    cap : int
        Most alerts kept; a new alert past it is forwarded once but not re-sent (warned).
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._alerts: dict[str, tuple[Any, Alert]] = {}
        self._warned = False

    def __len__(self) -> int:
        return len(self._alerts)

    def __contains__(self, alert_id: object) -> bool:
        return alert_id in self._alerts

    def add(self, alert_id: str, alert: Alert, partition: Any = None) -> bool:
        """Keep (or update) a firing alert; False when the cap is reached."""
        if alert_id not in self._alerts and len(self._alerts) >= self.cap:
            if not self._warned:
                log.warning("more than %d firing alerts: new ones are forwarded once but not "
                            "re-sent, and Alertmanager will resolve them after its "
                            "resolve_timeout", self.cap)
                self._warned = True
            return False
        self._alerts[alert_id] = (partition, alert)
        return True

    def get(self, alert_id: str) -> Alert | None:
        """The firing alert kept under this id, if any."""
        kept = self._alerts.get(alert_id)
        return None if kept is None else kept[1]

    def remove(self, alert_id: str) -> None:
        """Forget an alert (resolved)."""
        self._alerts.pop(alert_id, None)
        if len(self._alerts) < self.cap:
            self._warned = False

    def drop_partitions(self, partitions: set[Any]) -> None:
        """Forget the alerts read from partitions this bridge no longer owns."""
        for alert_id in [a for a, (p, _) in self._alerts.items() if p in partitions]:
            self.remove(alert_id)

    def alerts(self) -> list[Alert]:
        """The firing alerts, oldest first."""
        return [alert for _, alert in self._alerts.values()]


class Bridge:
    """Alert lifecycle to Alertmanager: forwarding, retries and periodic re-sending.

    Parameters
    ----------
    send : Sender
        Posts a list of alerts; raises ``AlertmanagerRejected`` for a refusal that will not
        change, any other exception for a failure worth retrying.
    stop : asyncio.Event
        Set to give up retrying (shutdown).
    resend : float
        Seconds between re-sends of the firing alerts.
    max_firing : int
        Most firing alerts kept for re-sending.
    clock : callable, optional
        Monotonic seconds (tests pass a fake).
    backoff : tuple of float
        First and longest delay between retries, in seconds (doubling).
    """

    def __init__(self, send: Sender, stop: asyncio.Event, *, resend: float = 60.0,
                 max_firing: int = 10_000, clock: Callable[[], float] = time.monotonic,
                 backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        self.send, self.stop, self.resend, self.clock = send, stop, resend, clock
        self.backoff = backoff
        self.firing = FiringAlerts(max_firing)
        self.next_resend = clock() + resend

    async def deliver(self, alerts: list[Alert]) -> bool:
        """Send alerts, retrying with backoff until sent, refused or stopped.

        Returns
        -------
        bool
            True when done with (sent, or refused by Alertmanager: logged and dropped);
            False when stopped before they were sent.
        """
        delay, attempt = self.backoff[0], 0
        for start in range(0, len(alerts), MAX_BATCH):
            chunk = alerts[start:start + MAX_BATCH]
            while True:
                try:
                    await self.send(chunk)
                    break
                except AlertmanagerRejected as exc:
                    log.error("Alertmanager refused %d alert(s), dropped: %s", len(chunk), exc)
                    break
                except Exception as exc:
                    attempt += 1
                    log.warning("cannot send %d alert(s) to Alertmanager (attempt %d, next in "
                                "%.1fs): %s", len(chunk), attempt, delay, exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), delay)
                    if self.stop.is_set():
                        return False
                    delay = min(delay * 2, self.backoff[1])
        return True

    async def handle(self, event: Any, partition: Any = None, *, replay: bool = False) -> bool:
        """Forward one alert event and update the firing set.

        Parameters
        ----------
        event : Any
            The decoded CloudEvent; an invalid one is logged and skipped.
        partition : Any, optional
            Where it was read (firing alerts of a revoked partition are forgotten).
        replay : bool
            Rebuild the firing set only, without sending (already sent before a restart);
            the replayed alerts are re-sent within a second.

        Returns
        -------
        bool
            False when stopped before the alert was sent (do not commit it).
        """
        try:
            converted = to_alertmanager(event)
        except InvalidAlertEvent as exc:
            if not replay:
                log.warning("skipping a record of the alerts topic: %s", exc)
            return True
        if replay:
            if converted.firing:
                self.firing.add(converted.alert_id, converted.alert, partition)
            else:
                self.firing.remove(converted.alert_id)
            self.next_resend = min(self.next_resend, self.clock() + 1.0)
            return True
        batch = [converted.alert]
        previous = self.firing.get(converted.alert_id) if converted.firing else None
        if previous is not None and previous["labels"] != converted.alert["labels"]:
            # An escalation (same alert, new severity): Alertmanager identifies an alert by
            # its labels, so the one with the old labels is ended, not left to time out.
            ended = {**previous, "endsAt": _rfc3339(datetime.now(UTC))}
            batch.insert(0, ended)
        if not await self.deliver(batch):
            return False
        if converted.firing:
            self.firing.add(converted.alert_id, converted.alert, partition)
        else:
            self.firing.remove(converted.alert_id)
        return True

    async def resend_if_due(self) -> bool:
        """Re-send every firing alert when ``resend`` seconds have passed.

        Returns
        -------
        bool
            False when stopped before they were sent.
        """
        if self.clock() < self.next_resend:
            return True
        alerts = self.firing.alerts()
        if alerts and not await self.deliver(alerts):
            return False
        self.next_resend = self.clock() + self.resend
        return True


async def run_bridge(settings: MonitorSettings, bootstrap: str, url: str, *,
                     stop: asyncio.Event, resend: float = 60.0, group: str | None = None,
                     max_firing: int = 10_000, send: Sender | None = None,
                     authorization: str | None = None) -> None:
    """Consume the alerts topic and forward it to Alertmanager until ``stop`` is set.

    Parameters
    ----------
    settings : MonitorSettings
        For the alerts topic, the Kafka security settings and ``worker.app_id``.
    bootstrap : str
        Kafka bootstrap servers.
    url : str
        Alertmanager's base URL, e.g. ``http://alertmanager:9093``.
    stop : asyncio.Event
        Set to shut down: the alert being sent is not committed.
    resend : float
        Seconds between re-sends of the firing alerts.
    group : str, optional
        Consumer group (default ``<app_id>-alertmanager-bridge``).
    max_firing : int
        Most firing alerts kept for re-sending.
    send : Sender, optional
        Replaces the HTTP sender (tests).
    authorization : str, optional
        The ``Authorization`` header value for Alertmanager (see ``--auth-env``).
    """
    from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
    from aiokafka.errors import CommitFailedError, KafkaError

    from app.kafka import client_kwargs

    kafka = settings.kafka
    topic = settings.topics.name("alerts")
    bridge = Bridge(send or http_sender(url, authorization=authorization), stop, resend=resend,
                    max_firing=max_firing)
    replay_until: dict[TopicPartition, int] = {}
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap,
        group_id=group or f"{settings.worker.app_id}-alertmanager-bridge",
        enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=100,
        session_timeout_ms=int(kafka.session_timeout * 1000),
        rebalance_timeout_ms=int(kafka.rebalance_timeout * 1000),
        **client_kwargs(kafka))

    class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            bridge.firing.drop_partitions(set(revoked))
            for tp in revoked:
                replay_until.pop(tp, None)

        async def on_partitions_assigned(self, assigned: Any) -> None:
            for tp in assigned:
                committed = await consumer.committed(tp)
                if committed:  # rebuild the firing set from what was already sent
                    replay_until[tp] = committed
                    consumer.seek(tp, 0)

    consumer.subscribe([topic], listener=Rebalance())
    try:
        await consumer.start()  # inside: a consumer that failed to start is closed too
        log.warning("forwarding %s to %s", topic, display_url(url))
        while not stop.is_set():
            if not await bridge.resend_if_due():
                break
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                commit_to = None
                for record in records:
                    replay = record.offset < replay_until.get(tp, 0)
                    try:
                        event = json.loads(record.value) if record.value is not None else None
                    except ValueError:
                        event = None
                    if not await bridge.handle(event, tp, replay=replay):
                        break
                    if not replay:
                        commit_to = record.offset + 1
                if commit_to is not None:
                    try:
                        await consumer.commit({tp: commit_to})
                    except (CommitFailedError, KafkaError) as exc:
                        log.warning("cannot commit %s offset %d (the alerts will be sent "
                                    "again): %s", tp, commit_to, exc)
                if stop.is_set():
                    break
    finally:
        await consumer.stop()


def cmd_alertmanager_bridge(args: argparse.Namespace) -> int:
    """Run the bridge until SIGTERM or SIGINT; the ``alertmanager-bridge`` command."""
    from app.settings import load_settings

    settings = load_settings(args.config)
    bootstrap = args.bootstrap or settings.kafka.bootstrap
    if not bootstrap:
        raise DriftwardenError("no bootstrap server: set kafka.bootstrap or pass --bootstrap")
    check_url(args.url)
    authorization = authorization_from_env(args.auth_env) if args.auth_env else None
    try:
        resend = parse_duration(args.resend)
    except ValueError as exc:
        raise DriftwardenError(f"--resend: {exc}") from None
    if resend <= 0:
        raise DriftwardenError("--resend must be longer than 0")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_bridge(settings, bootstrap, args.url, stop=stop, resend=resend,
                         group=args.group, max_firing=args.max_firing,
                         authorization=authorization)

    asyncio.run(main())
    return 0


def add_parser(subparsers: Any) -> None:
    """Register the ``alertmanager-bridge`` subcommand on the CLI's subparsers."""
    b = subparsers.add_parser("alertmanager-bridge",
                              help="forward the alerts topic to Alertmanager (API v2)")
    b.add_argument("-c", "--config", required=True, help="the monitor YAML file")
    b.add_argument("--url", required=True,
                   help="Alertmanager base URL, e.g. http://alertmanager:9093")
    b.add_argument("--auth-env", metavar="NAME",
                   help="environment variable holding the Authorization header value for "
                        "Alertmanager ('Bearer <token>' or 'Basic <base64 user:password>'); "
                        "credentials never go in --url")
    b.add_argument("--bootstrap", help="Kafka bootstrap servers (overrides kafka.bootstrap)")
    b.add_argument("--resend", default="60s",
                   help="re-send firing alerts this often (default 60s; keep it under "
                        "Alertmanager's resolve_timeout)")
    b.add_argument("--group", help="consumer group (default <app_id>-alertmanager-bridge)")
    b.add_argument("--max-firing", type=int, default=10_000,
                   help="most firing alerts kept for re-sending (default 10000)")
    b.set_defaults(func=cmd_alertmanager_bridge)
