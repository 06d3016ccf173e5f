"""The Alertmanager bridge: CloudEvent to Alertmanager alert, and the firing bookkeeping."""

import asyncio
import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.bridge import (
    FIRING,
    RESOLVED,
    AlertmanagerRejected,
    Bridge,
    InvalidAlertEvent,
    add_parser,
    to_alertmanager,
)

EXAMPLE = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "examples" /
                      "alert.json").read_text())


def firing(alert_id: str = "a1", **labels: object) -> dict:
    ev = copy.deepcopy(EXAMPLE)
    ev["type"], ev["id"] = FIRING, alert_id
    ev["data"].update(alert_id=alert_id, status="firing", endsAt=None)
    ev["data"]["labels"].update(labels)
    return ev


def resolved(alert_id: str = "a1", ends_at: str | None = "2024-05-01T13:00:00.000Z") -> dict:
    ev = firing(alert_id)
    ev["type"] = RESOLVED
    ev["data"].update(status="resolved", endsAt=ends_at)
    return ev


class FakeSender:
    def __init__(self, failures: int = 0, reject: bool = False) -> None:
        self.sent: list[list[dict]] = []
        self.failures, self.reject = failures, reject

    async def __call__(self, alerts: list[dict]) -> None:
        if self.reject:
            raise AlertmanagerRejected("HTTP 400: bad")
        if self.failures:
            self.failures -= 1
            raise OSError("connection refused")
        self.sent.append(alerts)

    def ids(self) -> list[list[str]]:
        return [[a["labels"]["alert_id"] for a in batch] for batch in self.sent]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_firing_event_to_alertmanager():
    c = to_alertmanager(firing(n=3, flag=True, gone=None))
    assert c.firing and c.alert_id == "a1"
    labels = c.alert["labels"]
    assert all(isinstance(v, str) for v in labels.values())
    assert labels["alert_id"] == "a1"
    assert labels["alertname"] == "driftwarden_feature_drift"
    assert labels["n"] == "3" and labels["flag"] == "true" and "gone" not in labels
    assert c.alert["annotations"]["summary"].startswith("churn: feature drift")
    assert c.alert["startsAt"] == EXAMPLE["data"]["startsAt"]
    assert "endsAt" not in c.alert  # Alertmanager sets now + resolve_timeout
    assert "generatorURL" not in c.alert  # the event source is not an http URL


def test_resolved_event_has_ends_at():
    c = to_alertmanager(resolved())
    assert not c.firing and c.alert["labels"]["alert_id"] == "a1"
    assert c.alert["endsAt"] == "2024-05-01T13:00:00.000Z"
    assert c.alert["labels"] == to_alertmanager(firing()).alert["labels"]


def test_resolved_without_ends_at_ends_now_and_never_before_start():
    now = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    assert to_alertmanager(resolved(ends_at=None), now=now).alert["endsAt"] == (
        "2024-06-01T12:00:00.000Z")
    early = to_alertmanager(resolved(ends_at="2024-05-01T10:00:00Z"))
    assert early.alert["endsAt"] == "2024-05-01T11:00:00.000Z"  # startsAt


def test_label_names_are_made_valid_and_alertname_defaults():
    ev = firing()
    ev["data"]["labels"] = {"scores.1": 0.5, "9x": "y"}
    labels = to_alertmanager(ev).alert["labels"]
    assert labels == {"scores_1": "0.5", "_9x": "y", "alertname": "driftwarden_feature_drift",
                      "alert_id": "a1"}


@pytest.mark.parametrize("event", [None, [], {"type": FIRING}, {"type": "x", "data": {}},
                                   {"type": FIRING, "data": {"labels": {}}}])
def test_invalid_events(event):
    with pytest.raises(InvalidAlertEvent):
        to_alertmanager(event)


async def test_resend_bookkeeping():
    send, clock = FakeSender(), Clock()
    bridge = Bridge(send, asyncio.Event(), resend=60, clock=clock)
    assert await bridge.handle(firing("a1"), "p0")
    assert await bridge.handle(firing("a2"), "p1")
    assert send.ids() == [["a1"], ["a2"]]
    assert await bridge.resend_if_due()  # not due yet
    assert len(send.sent) == 2
    clock.t += 60
    assert await bridge.resend_if_due()
    assert send.ids()[-1] == ["a1", "a2"]
    assert await bridge.handle(resolved("a1"), "p0")
    assert send.sent[-1][0]["endsAt"] == "2024-05-01T13:00:00.000Z"
    assert "a1" not in bridge.firing
    clock.t += 59
    assert await bridge.resend_if_due()
    assert send.ids()[-1] == ["a1"]  # the resolved one, no resend yet
    clock.t += 1
    assert await bridge.resend_if_due()
    assert send.ids()[-1] == ["a2"]
    bridge.firing.drop_partitions({"p1"})  # revoked
    clock.t += 60
    n = len(send.sent)
    assert await bridge.resend_if_due()
    assert len(send.sent) == n  # nothing firing: nothing sent


async def test_an_escalation_ends_the_alert_with_the_old_labels():
    send = FakeSender()
    bridge = Bridge(send, asyncio.Event(), resend=60, clock=Clock())
    assert await bridge.handle(firing("a1", severity="warning"), "p0")
    assert await bridge.handle(firing("a1", severity="warning"), "p0")  # redelivered
    assert [len(b) for b in send.sent] == [1, 1]
    assert await bridge.handle(firing("a1", severity="critical"), "p0")
    ended, escalated = send.sent[-1]
    assert ended["labels"]["severity"] == "warning" and "endsAt" in ended
    assert escalated["labels"]["severity"] == "critical" and "endsAt" not in escalated
    assert bridge.firing.alerts() == [escalated]


async def test_replay_rebuilds_without_sending():
    send, clock = FakeSender(), Clock()
    bridge = Bridge(send, asyncio.Event(), resend=60, clock=clock)
    for ev in (firing("a1"), firing("a2"), resolved("a1")):
        assert await bridge.handle(ev, "p0", replay=True)
    assert send.sent == []
    clock.t += 1  # replayed alerts are re-sent within a second
    assert await bridge.resend_if_due()
    assert send.ids() == [["a2"]]


async def test_retries_until_sent_and_stops_on_shutdown():
    send = FakeSender(failures=2)
    bridge = Bridge(send, asyncio.Event(), backoff=(0.01, 0.02))
    assert await bridge.handle(firing("a1"))
    assert send.ids() == [["a1"]]

    stop = asyncio.Event()
    down = FakeSender(failures=10**9)
    bridge = Bridge(down, stop, backoff=(0.01, 0.02))
    task = asyncio.create_task(bridge.handle(firing("a1")))
    await asyncio.sleep(0.05)
    stop.set()
    assert await task is False  # not sent: the offset must not be committed
    assert "a1" not in bridge.firing


async def test_rejected_alerts_are_dropped_not_retried():
    bridge = Bridge(FakeSender(reject=True), asyncio.Event())
    assert await bridge.handle(firing("a1"))


async def test_firing_cap():
    send = FakeSender()
    bridge = Bridge(send, asyncio.Event(), max_firing=1)
    await bridge.handle(firing("a1"))
    await bridge.handle(firing("a2"))
    assert send.ids() == [["a1"], ["a2"]]  # forwarded once
    assert len(bridge.firing) == 1 and "a2" not in bridge.firing


def test_add_parser():
    import argparse

    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["alertmanager-bridge", "-c", "m.yaml", "--url", "http://am:9093"])
    assert args.resend == "60s" and args.group is None and args.bootstrap is None
    assert callable(args.func)
