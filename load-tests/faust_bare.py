"""The faust-bare baseline: a faust agent that only iterates a topic.

Same faust settings as a driftwarden worker (``app.streaming.faust_settings`` of the
given monitor file). It neither decodes nor processes: per message it counts the events
the producer put in it (passed in), and writes the count to a status file (every 200
messages and every 50 ms). Run by ``bench.py``; stops on SIGTERM.

    python load-tests/faust_bare.py MONITOR_FILE BOOTSTRAP TOPIC STATUS_FILE EVENTS_PER_MESSAGE
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faust  # noqa: E402

from app.settings import load_settings  # noqa: E402
from app.streaming import faust_settings  # noqa: E402


def main() -> int:
    config, bootstrap, topic_name, status, per_message = sys.argv[1:6]
    mode = sys.argv[6] if len(sys.argv) > 6 else "iterate"  # or "take": take_events batches
    settings = load_settings(Path(config))
    conf = faust_settings(settings, bootstrap, embedded=True)
    app = faust.App(f"{settings.worker.app_id}-bare", **conf)
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw", partitions=settings.kafka.partitions)
    per = int(per_message)
    out = Path(status)
    seen = 0

    async def bare(stream: faust.StreamT[bytes]) -> None:
        nonlocal seen
        if mode == "take":
            async for events in stream.take_events(settings.worker.batch_size,
                                                   within=settings.worker.batch_within):
                seen += per * len(events)
            return
        async for _value in stream:
            seen += per
            if seen % (per * 200) == 0:
                out.write_text(str(seen))

    async def report() -> None:
        out.write_text(str(seen))

    app.agent(topic, name="bare")(bare)
    app.timer(0.05)(report)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
