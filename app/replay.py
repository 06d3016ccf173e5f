"""``driftwarden replay``: the workers' engine over JSON-lines files, without a broker.

Each line of an input file is one event or a JSON array of them (the same values a
producer would write to Kafka): predictions, and optionally outcomes (``--outcomes``) and
model lifecycle events (``--model-events``). Each file is read in its own order, the
files merged by event time (a line's first timestamp), like a worker reading three
topics; events go through the engine in batches. Windows close and performance
checkpoints fall due by event time only (there is no wall clock offline); at the end of
the input, every window still open is closed and every checkpoint left is evaluated.
The outputs are the CloudEvents a worker publishes, one per line:

- ``DIR/alerts.jsonl`` and ``DIR/evaluations.jsonl``;
- ``DIR/retrain-triggers.jsonl``: the retrain requests the models' policies issued;
- ``DIR/deadletter.jsonl``: what was refused, with the reason, the line and the value.

Events without a ``timestamp`` are refused (``missing_timestamp``): offline there is no
Kafka record time to fall back on.
"""

from __future__ import annotations

import heapq
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from app.core.engine import ClosedWindow, Engine
from app.errors import DriftwardenError
from app.events.checks import SPECS, timestamp_ms
from app.events.decode import Decoded, decode_message
from app.reference import Reference, load_references
from app.settings import MonitorSettings
from app.sources.engine import SourcesEngine

LINES_PER_BATCH = 1000


@dataclass
class ReplaySummary:
    lines: int = 0
    events: int = 0
    rejected: int = 0
    windows: int = 0
    alerts: int = 0
    alerts_by_feature: dict[str, int] = field(default_factory=dict)


class Progress:
    """A one-line progress bar on stderr (only when it is a terminal)."""

    def __init__(self, total_bytes: int, enabled: bool) -> None:
        self.total = max(total_bytes, 1)
        self.enabled = enabled and sys.stderr.isatty()
        self.last = 0.0

    def show(self, done_bytes: int, events: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.2):
            return
        self.last = now
        share = min(done_bytes / self.total, 1.0)
        bar = "#" * int(share * 30)
        sys.stderr.write(f"\rreplay [{bar:<30}] {share:4.0%}  {events:,} events")
        if force:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _lines(path: Path) -> Iterator[tuple[int, bytes, int]]:
    """(line number, line, bytes read so far) of a JSON-lines file."""
    done = 0
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            done += len(line)
            if line.strip():
                yield lineno, line.rstrip(b"\r\n"), done


class Replay:
    def __init__(self, settings: MonitorSettings, out: Path,
                 references: dict[str, Reference | None] | None = None) -> None:
        self.settings = settings
        uri = f"urn:driftwarden:{settings.worker.app_id}"
        self.engine = Engine(settings, load_references(settings) if references is None
                             else references, source=uri)
        self.sources = SourcesEngine(settings, source_uri=uri)
        # Freshness offline: the event time of every stream is the clock. A model or
        # source is due a check when that clock passes its last event plus its SLO.
        self.clock_ms: int | None = None
        self.deadlines: dict[tuple[str, str], int] = {}  # (kind, name) -> last event + SLO
        self.slo_ms = {("model", m): round(s.freshness * 1000)
                       for m, s in settings.models.items() if s.freshness is not None}
        self.slo_ms.update({("source", n): round(s.freshness * 1000)
                            for n, s in settings.sources.items() if s.freshness is not None})
        out.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, IO[bytes]] = {
            name: open(out / f"{name}.jsonl", "wb")  # noqa: SIM115
            for name in ("alerts", "evaluations", "retrain-triggers", "deadletter")}
        self.summary = ReplaySummary()

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()

    def _write(self, name: str, doc: dict[str, Any]) -> None:
        self.files[name].write(orjson.dumps(doc) + b"\n")

    def _reject(self, lineno: int, reason: str, detail: str, value: bytes,
                index: int | None, kind: str = "prediction") -> None:
        self.summary.rejected += 1
        self._write("deadletter", {"reason": reason, "detail": detail, "input": kind,
                                   "line": lineno, "index": index,
                                   "value": value.decode("utf-8", "replace")})

    def _emit(self, model: str, start: int) -> None:
        closed: ClosedWindow = self.engine.begin_close(model, start)
        for alert in closed.alerts:
            self._count_alert(alert)
        for event in closed.evaluation_events:
            self._write("evaluations", event)
        for trigger in closed.triggers:
            self._write("retrain-triggers", trigger)
        self.engine.finish_close(model, start)
        self.summary.windows += 1

    def _count_alert(self, alert: dict[str, Any]) -> None:
        self._write("alerts", alert)
        feature = alert["data"]["feature"]
        self.summary.alerts_by_feature[feature] = \
            self.summary.alerts_by_feature.get(feature, 0) + 1
        self.summary.alerts += 1

    def _decoded(self, path: Path, kind: str, order: int
                 ) -> Iterator[tuple[int, int, str, int, Decoded, int]]:
        """(event time, file order, kind, line number, decoded line, bytes read) per line."""
        wset = self.settings.worker
        key = np.iinfo(np.int64).min
        for lineno, line, done in _lines(path):
            decoded = decode_message(line, SPECS[kind], max_bytes=wset.max_message_bytes,
                                     max_elements=wset.max_array_elements)
            for obj in decoded.events:
                if "timestamp" in obj:
                    key = timestamp_ms(obj["timestamp"])
                    break
            yield key, order, kind, lineno, decoded, done

    def run(self, predictions: Path, *, outcomes: Path | None = None,
            model_events: Path | None = None, inputs: Path | None = None,
            progress: bool = True) -> ReplaySummary:
        files = [(p, kind) for p, kind in ((model_events, "model_event"),
                                           (inputs, "input"),
                                           (predictions, "prediction"),
                                           (outcomes, "outcome")) if p is not None]
        bar = Progress(sum(os.path.getsize(p) for p, _ in files), progress)
        streams = [self._decoded(p, kind, i) for i, (p, kind) in enumerate(files)]
        self.batch, self.source_batch = self.engine.batch(), self.sources.batch()
        pending = 0
        done: dict[str, int] = {}
        for key, _, kind, lineno, decoded, read in heapq.merge(*streams,
                                                               key=lambda x: (x[0], x[1])):
            done[kind] = read
            self.summary.lines += 1
            self._advance_clock(key)
            for r in decoded.rejections:
                self._reject(lineno, r.reason, r.detail, r.raw, r.index, kind)
                if kind == "prediction" and r.reason == "non_finite_number":
                    self.batch.add_non_finite(r.raw, 0)
            for i, obj in enumerate(decoded.events):
                index = None if decoded.positions is None else decoded.positions[i]
                if "timestamp" not in obj:
                    self._reject(lineno, "missing_timestamp",
                                 "offline, every event needs a timestamp", orjson.dumps(obj),
                                 index, kind)
                    continue
                self._add(obj, kind, lineno, index)
            pending += 1
            if pending >= LINES_PER_BATCH:
                self._flush()
                pending = 0
                bar.show(sum(done.values()), self.summary.events)
        self._flush()
        for model in list(self.engine.monitors):  # end of input: close what is open
            for start in self.engine.open_windows(model):
                self._emit(model, start)
            self.engine.flush(model)
            self._outputs(model)
        for source in list(self.sources.monitors):
            self.sources.flush(source)
            self._source_outputs(source)
        bar.show(sum(done.values()), self.summary.events, force=True)
        return self.summary

    def _add(self, obj: dict[str, Any], kind: str, lineno: int, index: int | None) -> None:
        t = timestamp_ms(obj["timestamp"])
        if kind == "input":
            name = ("source", obj["source"])
            if self.source_batch.add(obj, 0) is not None:
                self._reject(lineno, "unknown_source",
                             f"source {obj['source']!r} is not configured", orjson.dumps(obj),
                             index, kind)
                return
        else:
            name = ("model", obj["model"])
            if self.batch.add(obj, 0, kind=kind) is not None:
                self._reject(lineno, "unknown_model", f"model {obj['model']!r} is not configured",
                             orjson.dumps(obj), index, kind)
                return
        if name in self.slo_ms and (kind in ("input", "prediction")):
            self.deadlines[name] = max(self.deadlines.get(name, t), t + self.slo_ms[name])

    first_ms: int | None = None  # the first event time of the input: never-heard-of
    # sources are judged silent since then

    def _advance_clock(self, key: int) -> None:
        """Event time moves: when it passes a model's or source's last event plus its SLO,
        apply what is pending and judge freshness at exactly that point."""
        if key == np.iinfo(np.int64).min or (self.clock_ms is not None and key <= self.clock_ms):
            return
        if self.first_ms is None:
            self.first_ms = key
            self.deadlines.update({k: key + slo for k, slo in self.slo_ms.items()
                                   if k[0] == "source"})
        due = any(d < key for d in self.deadlines.values())
        self.clock_ms = key
        if due:
            self._flush()
            self.deadlines = {k: d for k, d in self.deadlines.items() if d >= key}

    def _publish(self, outputs: list[tuple[str, dict[str, Any]]]) -> None:
        """Write (target, CloudEvent) outputs to their files, as a worker publishes them."""
        for target, event in outputs:
            if target == "alerts":
                self._count_alert(event)
            else:
                self._write(target.replace("_", "-"), event)

    def _outputs(self, model: str) -> None:
        outputs = self.engine.detections(model)
        self._publish(outputs)
        self.engine.ack_detections(model, len(outputs))

    def _source_outputs(self, source: str) -> None:
        outputs = self.sources.outputs(source)
        self._publish(outputs)
        self.sources.ack(source, len(outputs))

    def _flush(self) -> None:
        batch, self.batch = self.batch, self.engine.batch()
        sbatch, self.source_batch = self.source_batch, self.sources.batch()
        self.engine.apply(batch, None)
        self.sources.apply(sbatch, None)
        self.summary.events += batch.accepted + sbatch.accepted
        for model in batch.models:
            self._outputs(model)
            for start in self.engine.due(model, None):
                self._emit(model, start)
        for model in self.settings.models:  # clock-driven checks on the event-time clock
            if model in self.engine.monitors or model in batch.models:
                self.engine.check_time(model, None, self.clock_ms)
                self._outputs(model)
        for source, s in self.settings.sources.items():
            if source in self.sources.monitors or s.freshness is not None:
                self.sources.check(source, None, self.clock_ms, since_ms=self.first_ms)
                self._source_outputs(source)


def run_replay(settings: MonitorSettings, predictions: Path, out: Path, *,
               outcomes: Path | None = None, model_events: Path | None = None,
               inputs: Path | None = None,
               progress: bool = True, installed: list[Reference] | None = None
               ) -> ReplaySummary:
    """Replay ``predictions``; ``installed`` are per-version references, as a worker reads
    them from the references topic."""
    replay = Replay(settings, out)
    try:
        for ref in installed or []:
            if not replay.engine.install_reference(ref):
                raise DriftwardenError(f"reference of {ref.model!r} version {ref.version!r}: "
                                       "unknown model, or built without --version")
        return replay.run(predictions, outcomes=outcomes, model_events=model_events,
                          inputs=inputs, progress=progress)
    finally:
        replay.close()
