"""Windows of several models falling due together are published at once
(``Pipeline.publish_due``): the broker's round trips for different models' outputs
overlap, while each model's own windows still close one after the other, each once the
broker has its outputs."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from app.core.engine import Engine
from app.observability.metrics import Metrics
from app.settings import settings_from_mapping
from app.streaming import Pipeline

T0 = 1_700_000_000_000 // 60_000 * 60_000
MODELS = ("a", "b")


def _done() -> asyncio.Future[None]:
    """A send the broker has acknowledged."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.set_result(None)
    return fut


class Table:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def send_changelog(self, partition: int, key: bytes, value: bytes | None) -> Any:
        return _done()


class Held:
    """A topic whose sends the broker acknowledges only when released."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, asyncio.Future[None]]] = []  # model, window, ack

    async def send(self, key: bytes, value: bytes, headers: Any = None) -> Any:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        data = orjson.loads(value)["data"]
        self.sent.append((key.decode(), data["window"]["start_ms"], fut))
        return fut

    def release(self) -> None:
        for _, _, fut in self.sent:
            if not fut.done():
                fut.set_result(None)


class Done:
    async def send(self, **_: Any) -> Any:
        return _done()


def _pipeline() -> tuple[Pipeline, Held]:
    settings = settings_from_mapping(
        {"defaults": {"window": "1m", "lateness": "2m", "min_samples": 10},
         "models": {m: {"features": {"x": {"type": "numeric"}},
                        "reference": {"warmup": 10}} for m in MODELS}}, env={})
    engine = Engine(settings, {}, source="urn:test")
    evaluations = Held()
    pipeline = Pipeline(settings, engine, Metrics(CollectorRegistry()), Table(), Done(),
                        evaluations, Done(), Done())
    engine.load_state, engine.load_records = pipeline.load_state, pipeline.load_records
    pipeline.kinds = {"predictions": "prediction"}
    return pipeline, evaluations


def _message(offset: int, model: str, times: list[int]) -> Any:
    events = [{"prediction_id": f"{model}{offset}-{i}", "model": model, "model_version": "v1",
               "features": {"x": float(i % 7)}, "prediction": 1, "timestamp": t}
              for i, t in enumerate(times)]
    return SimpleNamespace(topic="predictions", partition=0, offset=offset, key=model.encode(),
                           value=orjson.dumps(events), timestamp=T0 / 1000)


def _fill(model: str, offset: int) -> list[Any]:
    """A warm-up, then two windows' events of ``model`` (neither due: 2 minutes' lateness)."""
    return [_message(offset, model, [T0 + i for i in range(40)]),
            _message(offset + 1, model, [T0 + 60_000 + i for i in range(30)])]


async def _until(condition: Any) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("never came")


def test_models_windows_are_published_at_once_each_model_s_in_order() -> None:
    pipeline, evaluations = _pipeline()

    async def go() -> None:
        await pipeline.process_batch(_fill("a", 0) + _fill("b", 10))
        assert not evaluations.sent  # nothing due yet
        # one event of each model past both windows: four windows fall due at once
        late = [_message(20, m, [T0 + 240_001]) for m in MODELS]
        batch = asyncio.ensure_future(pipeline.process_batch(late))
        await _until(lambda: {m for m, _, _ in evaluations.sent} == set(MODELS))
        # both models' first windows are on their way, none acknowledged: the round
        # trips overlap; each model's second window waits for its first's
        assert sorted((m, w) for m, w, _ in evaluations.sent) == [("a", T0), ("b", T0)]
        assert not any(f.done() for _, _, f in evaluations.sent)
        assert not batch.done()
        for _ in range(2):  # the broker answers: the next windows go, in order
            evaluations.release()
            await _until(lambda: len(evaluations.sent) == 4 or batch.done())
        evaluations.release()
        await batch
        by_model = {m: [w for mm, w, _ in evaluations.sent if mm == m] for m in MODELS}
        assert by_model == {m: [T0, T0 + 60_000] for m in MODELS}
        assert all(not pipeline.engine.due(m, time.time()) for m in MODELS)

    asyncio.run(go())


class RefusingFor:
    """A topic whose sends for one model's key fail at once (the broker refused them)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.sent: list[tuple[str, str]] = []

    async def send(self, key: bytes, value: bytes, headers: Any = None) -> Any:
        if key.decode() == self.model:
            raise RuntimeError(f"the broker refused {self.model}'s detections")
        self.sent.append((key.decode(), orjson.loads(value)["id"]))
        return _done()


def _detection(model: str, n: int = 0) -> tuple[str, dict[str, Any]]:
    """A streaming detection's output waiting to be published."""
    return ("alerts", {"id": f"{model}-detection-{n}",
                       "data": {"kind": "concept_drift", "severity": "warning",
                                "status": "firing"}})


def test_a_model_s_failure_is_raised_once_the_others_are_published() -> None:
    pipeline, evaluations = _pipeline()
    pipeline.alerts = RefusingFor("a")

    async def go() -> None:
        await pipeline.process_batch(_fill("a", 0) + _fill("b", 10))
        for m in MODELS:
            pipeline.engine.monitor(m).pending_outputs.append(_detection(m))
        late = [_message(20, m, [T0 + 240_001]) for m in MODELS]
        batch = asyncio.ensure_future(pipeline.process_batch(late))
        for _ in range(50):
            await asyncio.sleep(0)
        # a failed at once; the batch still waits for b's window on its way
        assert [(m, w) for m, w, _ in evaluations.sent] == [("b", T0)]
        assert not batch.done()
        while not batch.done():
            evaluations.release()
            await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="refused a's"):
            await batch
        # b's detection and windows were published and closed all the same; a's
        # detection waits to be sent again, and its windows stay due
        assert pipeline.alerts.sent == [("b", "b-detection-0")]
        assert [w for m, w, _ in evaluations.sent if m == "b"] == [T0, T0 + 60_000]
        assert not pipeline.engine.due("b", time.time())
        assert pipeline.engine.due("a", time.time()) == [T0, T0 + 60_000]
        assert pipeline.engine.detections("a") == [_detection("a")]
        assert pipeline.engine.detections("b") == []

    asyncio.run(go())


class RefusingEvaluations:
    """An evaluations topic whose sends fail at once (a window's outputs refused)."""

    async def send(self, key: bytes, value: bytes, headers: Any = None) -> Any:
        raise RuntimeError("the broker refused the evaluation")


def test_a_window_s_failure_after_its_detections_is_logged_and_retried(caplog) -> None:
    """The detections sharing a window's round trip are acknowledged once the broker has
    them, however the window's own outputs fare; those failing is logged, not raised, and
    the window closes again later (as when each had its own round trip)."""
    pipeline, _ = _pipeline()
    alerts = pipeline.alerts = HeldAlerts()

    async def go() -> None:
        await pipeline.process_batch(_fill("a", 0))
        pipeline.engine.monitor("a").pending_outputs.append(_detection("a"))
        pipeline.evaluations = RefusingEvaluations()
        batch = asyncio.ensure_future(pipeline.process_batch(
            [_message(20, "a", [T0 + 240_001])]))
        await _until(lambda: alerts.sent)
        alerts.release()
        await batch  # not raised
        assert pipeline.engine.detections("a") == []  # acknowledged
        assert pipeline.engine.due("a", time.time()) == [T0, T0 + 60_000]  # to retry
        assert "publishing window" in caplog.text

    asyncio.run(go())


class HeldAlerts(Held):
    """:class:`Held` for alerts, whose events have no window."""

    async def send(self, key: bytes, value: bytes, headers: Any = None) -> Any:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent.append((key.decode(), orjson.loads(value)["id"], fut))
        return fut


def test_detections_share_the_first_window_s_round_trip() -> None:
    """A model's detections and its first due window's outputs go in one round trip:
    all sent before the broker answers any; the detections are acknowledged once it has
    them, the window closed once it has its outputs; the next window waits for that."""
    pipeline, evaluations = _pipeline()
    alerts = pipeline.alerts = HeldAlerts()

    async def go() -> None:
        await pipeline.process_batch(_fill("a", 0))
        pipeline.engine.monitor("a").pending_outputs += [_detection("a", 0), _detection("a", 1)]
        batch = asyncio.ensure_future(pipeline.process_batch(
            [_message(20, "a", [T0 + 240_001])]))
        await _until(lambda: evaluations.sent)
        for _ in range(20):
            await asyncio.sleep(0)
        assert [i for _, i, _ in alerts.sent] == ["a-detection-0", "a-detection-1"]
        assert [w for _, w, _ in evaluations.sent] == [T0]  # in the same round trip
        assert not any(f.done() for _, _, f in alerts.sent + evaluations.sent)
        assert len(pipeline.engine.detections("a")) == 2  # not acknowledged yet
        alerts.release()
        for _ in range(20):
            await asyncio.sleep(0)
        # the detections are acknowledged; the window waits for its own outputs
        assert pipeline.engine.detections("a") == []
        m = pipeline.engine.monitor("a")
        assert [w for _, w, _ in evaluations.sent] == [T0] and m.closing == {T0}
        evaluations.release()
        await _until(lambda: len(evaluations.sent) == 2)
        assert T0 not in m.windows and m.closing == {T0 + 60_000}  # the next one's turn
        evaluations.release()
        await batch
        assert not pipeline.engine.due("a", time.time())
        assert [i for _, i, _ in alerts.sent] == ["a-detection-0", "a-detection-1"]

    asyncio.run(go())


def test_detections_with_no_window_due_are_sent_alone() -> None:
    pipeline, evaluations = _pipeline()
    alerts = pipeline.alerts = HeldAlerts()

    async def go() -> None:
        await pipeline.process_batch(_fill("a", 0))
        pipeline.engine.monitor("a").pending_outputs.append(_detection("a"))
        publish = asyncio.ensure_future(pipeline.publish_due(["a"], time.time()))
        await _until(lambda: alerts.sent)
        assert not publish.done() and pipeline.engine.detections("a") == [_detection("a")]
        alerts.release()
        await publish
        assert pipeline.engine.detections("a") == [] and not evaluations.sent

    asyncio.run(go())
