"""The embedded broker answers Kafka metadata requests and never outlives its parent."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faust.types import TP

from app.batch_consumer import true_ends
from app.broker import EmbeddedBroker, metadata_answers

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import time
from app.broker import EmbeddedBroker
b = EmbeddedBroker().start()
print(b.pid, b.port, flush=True)
time.sleep(120)
"""


def alive(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            state = next(line for line in fh if line.startswith("State:"))
    except FileNotFoundError:
        return False
    return "Z" not in state.split()[1]  # a zombie has exited


def wait_gone(pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def spawn_parent():
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    pid, port = map(int, proc.stdout.readline().split())
    assert alive(pid) and metadata_answers("127.0.0.1", port)
    return proc, pid, port


def test_start_probe_stop():
    with EmbeddedBroker() as b:
        assert metadata_answers(b.host, b.port)
        pid = b.pid
    assert wait_gone(pid)
    assert not metadata_answers(b.host, b.port, timeout=0.3)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_broker_dies_with_its_parent(sig):
    proc, pid, _ = spawn_parent()
    proc.send_signal(sig)
    proc.wait(10)
    assert wait_gone(pid), f"broker {pid} outlived its parent after signal {sig}"


def test_broker_stops_on_normal_exit():
    code = CHILD.replace("time.sleep(120)", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=30, check=True)
    pid = int(out.stdout.split()[0])
    assert wait_gone(pid)


def test_busy_port_is_a_clear_error():
    from app.errors import BrokerError

    with EmbeddedBroker() as b, pytest.raises(BrokerError, match="is in use"):
        EmbeddedBroker(port=b.port, startup_timeout=5).start()


def test_true_ends_are_one_past_the_last_record_of_a_batch_of_several(broker):
    """The embedded broker lists a partition's end as one past its last record batch's
    first offset; ``true_ends`` (what table recovery reads the changelogs up to) reads
    that batch and gives one past its last record. Without it, recovery drops the tail
    of a checkpoint's records."""
    async def go() -> dict:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic("ends", 3, 1)])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        for batch in (17, 5):  # two record batches on partition 1
            sent = [await producer.send("ends", b"v", partition=1) for _ in range(batch)]
            await asyncio.gather(*sent)
        await (await producer.send("ends", b"v", partition=2))  # one record
        await producer.stop()
        tps = [TP("ends", p) for p in range(3)]
        listing = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await listing.start()
        listed = await listing.end_offsets(tps)
        await listing.stop()
        return await true_ends(listed, bootstrap_servers=broker.bootstrap)

    ends = asyncio.run(go())
    assert ends == {TP("ends", 0): 0, TP("ends", 1): 22, TP("ends", 2): 1}
