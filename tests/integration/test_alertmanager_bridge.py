"""The Alertmanager bridge against a real Alertmanager and the embedded broker: a firing
alert becomes active in Alertmanager, its resolved event resolves it."""

import asyncio
import copy
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from support import ROOT, create_topics, produce, settings_of, write_config

from app.bridge import FIRING, RESOLVED, run_bridge
from app.broker import free_port

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
pytestmark = pytest.mark.skipif(
    not Path(ALERTMANAGER).exists(),
    reason="needs Alertmanager: /usr/bin/prometheus-alertmanager (Debian package "
           "prometheus-alertmanager) is not installed")


@pytest.fixture
def alertmanager(tmp_path):
    port = free_port()
    (tmp_path / "am.yml").write_text(
        'route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    log = open(tmp_path / "alertmanager.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [ALERTMANAGER, f"--web.listen-address=127.0.0.1:{port}",
         f"--storage.path={tmp_path / 'am-data'}", f"--config.file={tmp_path / 'am.yml'}",
         "--cluster.listen-address="],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, (tmp_path / "alertmanager.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Alertmanager did not become ready"
            time.sleep(0.1)
        yield url
    finally:
        proc.kill()
        proc.wait()
        log.close()


def am_alerts(url: str, alert_id: str, active: bool = True) -> list[dict]:
    query = f"filter=alert_id%3D%22{alert_id}%22&active={str(active).lower()}"
    with urllib.request.urlopen(f"{url}/api/v2/alerts?{query}", timeout=2) as r:
        return json.loads(r.read())


async def wait_for(check, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await asyncio.to_thread(check)
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def alert_event(alert_id: str, status: str) -> bytes:
    ev = json.loads((ROOT / "schemas" / "examples" / "alert.json").read_text())
    ev = copy.deepcopy(ev)
    ev["type"] = FIRING if status == "firing" else RESOLVED
    ev["id"] = alert_id
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    ev["data"].update(alert_id=alert_id, status=status, startsAt=now,
                      endsAt=None if status == "firing" else now)
    return orjson.dumps(ev)


async def test_bridge_forwards_firing_and_resolved(broker, alertmanager, tmp_path):
    settings = settings_of(write_config(tmp_path))
    await asyncio.to_thread(create_topics, broker.bootstrap, settings)
    topic = settings.topics.name("alerts")
    stop = asyncio.Event()
    task = asyncio.create_task(run_bridge(settings, broker.bootstrap, alertmanager, stop=stop,
                                          resend=1.0))
    try:
        await asyncio.to_thread(produce, broker.bootstrap, topic,
                                [alert_event("it-alert-1", "firing")], b"churn")

        def active() -> list[dict]:
            assert not task.done(), task
            return [a for a in am_alerts(alertmanager, "it-alert-1")
                    if a["status"]["state"] == "active"]

        [alert] = await wait_for(active, "the firing alert in Alertmanager")
        assert alert["labels"]["alertname"] == "driftwarden_feature_drift"
        assert alert["labels"]["model"] == "churn"
        assert alert["annotations"]["summary"].startswith("churn: feature drift")
        await asyncio.sleep(2.5)  # re-sent meanwhile (resend 1s): still active, once
        assert len(active()) == 1

        await asyncio.to_thread(produce, broker.bootstrap, topic,
                                [alert_event("it-alert-1", "resolved")], b"churn")
        await wait_for(lambda: not active(), "the alert to leave the active list")
        await asyncio.sleep(1.5)  # the bridge no longer re-sends it
        assert not active()
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def test_restarted_bridge_rebuilds_firing_alerts(broker, alertmanager, tmp_path):
    """Offsets are committed after sending; a restarted bridge reads its partitions again up
    to them, without forwarding, and re-sends the alerts still firing."""
    settings = settings_of(write_config(tmp_path))
    await asyncio.to_thread(create_topics, broker.bootstrap, settings)
    topic = settings.topics.name("alerts")
    await asyncio.to_thread(produce, broker.bootstrap, topic,
                            [alert_event("it-a", "firing"), alert_event("it-b", "firing"),
                             alert_event("it-a", "resolved")], b"churn")
    stop = asyncio.Event()
    first = asyncio.create_task(run_bridge(settings, broker.bootstrap, alertmanager, stop=stop))
    try:
        await wait_for(lambda: am_alerts(alertmanager, "it-b"), "it-b in Alertmanager")
        await asyncio.sleep(1.0)  # let the commit land
    finally:
        stop.set()
        await asyncio.wait_for(first, 20)

    sent: list[list[dict]] = []

    async def record(alerts: list[dict]) -> None:
        sent.append(alerts)

    stop = asyncio.Event()
    second = asyncio.create_task(run_bridge(settings, broker.bootstrap, alertmanager,
                                            stop=stop, send=record))
    try:
        await wait_for(lambda: sent, "the re-send of the rebuilt firing alerts")
        assert [[a["labels"]["alert_id"] for a in batch] for batch in sent] == [["it-b"]]
        assert "endsAt" not in sent[0][0]
    finally:
        stop.set()
        await asyncio.wait_for(second, 20)
