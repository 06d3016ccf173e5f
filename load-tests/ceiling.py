"""The ceiling: a raw aiokafka consumer reading and orjson-decoding a topic, alone in a
fresh process.

``getmany`` with large batches; every event of every message is touched (its ``model``
read). Timed from the first fetch to the last of ``total`` events; prints one JSON line:
events/s and the process's CPU seconds over the read. Run by ``bench.py``.

It runs in a process of its own, as the workers and faust bare do, holding nothing but
its consumer: read in the benchmark's own process, whose heap holds every generated
event, CPython's full collections walked those objects during the read, 0.2 to 0.35 s of
a 1.1 s read, once or twice depending on what the process had allocated before. The
ceiling then moved by a quarter with what had run between two readings.

    python load-tests/ceiling.py BOOTSTRAP TOPIC TOTAL
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
from aiokafka import AIOKafkaConsumer


async def ceiling(bootstrap: str, topic: str, total: int) -> tuple[float, float]:
    """Events per second reading and decoding ``total`` events, and the CPU seconds."""
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False, group_id=None,
                         max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20)
    await c.start()
    seen, began, cpu = 0, None, 0.0
    try:
        while seen < total:
            if began is None:
                began, cpu = time.perf_counter(), time.process_time()  # from the first fetch
            batch = await c.getmany(timeout_ms=500, max_records=100_000)
            for records in batch.values():
                for r in records:
                    doc = orjson.loads(r.value)
                    if isinstance(doc, list):
                        for e in doc:
                            seen += 1 if e["model"] else 0
                    else:
                        seen += 1 if doc["model"] else 0
        elapsed = time.perf_counter() - (began or time.perf_counter())
        cpu = time.process_time() - cpu
    finally:
        await c.stop()
    return total / elapsed, cpu


def main() -> int:
    bootstrap, topic, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    eps, cpu = asyncio.run(ceiling(bootstrap, topic, total))
    print(orjson.dumps({"eps": eps, "cpu_s": cpu}).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
