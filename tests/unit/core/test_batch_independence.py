"""The same events give the same windows, however they are cut into batches: what lets
an offline replay reproduce a worker's decisions exactly."""

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.monitor import ModelMonitor
from app.reference import build_reference
from app.settings import settings_from_mapping

W = 60_000
S = settings_from_mapping(
    {"defaults": {"window": "1m", "lateness": "5s", "min_samples": 10},
     "models": {"m": {"features": {"x": {"type": "numeric"}, "c": {"type": "categorical"}},
                      "reference": {"warmup": 40}}}}, env={})


def stream(seed):
    rng = np.random.default_rng(seed)
    out, times = [], []
    t = 0
    for i in range(400):
        t += int(rng.integers(0, 2_000))
        jitter = int(rng.integers(-20_000, 1))  # out of order, some past the lateness
        version = "v1" if i < 150 else ("v2" if i < 300 else "v3")
        out.append({"model": "m", "model_version": version,
                    "features": {"x": float(rng.normal(i / 200, 1)),
                                 "c": str(rng.choice(["a", "b"]))}})
        times.append(max(0, t + jitter))
    return out, times


def run(events, times, cuts):
    m = ModelMonitor("m", S, None)
    bounds = [0, *sorted(set(cuts)), len(events)]
    late = 0
    closed = []
    for a, b in itertools.pairwise(bounds):
        if a == b:
            continue
        late += m.ingest(events[a:b], times[a:b], now=None).late
        for ws in m.due_by_watermark():
            closed += [(ev.start_ms, ev.model_version, ev.n, ev.reference_version, ev.fallback,
                        [(f.feature, f.value) for f in ev.features]) for ev in m.begin_close(ws)]
            m.finish_close(ws)
    for ws in sorted(m.windows):
        closed += [(ev.start_ms, ev.model_version, ev.n, ev.reference_version, ev.fallback,
                    [(f.feature, f.value) for f in ev.features]) for ev in m.begin_close(ws)]
        m.finish_close(ws)
    return late, closed


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 5), cuts=st.lists(st.integers(1, 399), max_size=12))
def test_batch_cuts_do_not_change_any_figure(seed, cuts):
    events, times = stream(seed)
    assert run(events, times, cuts) == run(events, times, [])


def test_the_stream_exercises_lateness_and_fallback():
    events, times = stream(0)
    late, closed = run(events, times, [])
    assert late > 0
    assert any(fallback for *_, fallback, _ in closed)  # v2/v3 while they warm up
    assert any(not fallback for *_, fallback, _ in closed)


def test_a_message_routed_at_once_is_routed_as_event_by_event():
    from app.core.engine import Engine

    cfg = settings_from_mapping(
        {"defaults": {"window": "1m", "lateness": "5s", "min_samples": 10},
         "models": {m: {"features": {"x": {"type": "numeric"}},
                        "reference": {"warmup": 40}} for m in ("a", "b")}}, env={})

    def event(model, i, ts=None):
        e = {"model": model, "model_version": "v1", "features": {"x": float(i)},
             "prediction": 1, "prediction_id": f"{model}{i}"}
        if ts is not None:
            e["timestamp"] = ts
        return e

    messages = [
        [event("a", i, 1_000 + i) for i in range(5)],  # one model: routed together
        [event("a", 5, "2024-05-01T10:00:00Z"), event("b", 0), event("zz", 0)],  # mixed
        [event("zz", 1), event("zz", 2)],  # an unknown model only
        [event("b", 1, 5_000.0)],  # an integral float timestamp
    ]

    def route(many):
        engine = Engine(cfg, {}, source="t")
        batch, refused = engine.batch(), []
        for offset, msg in enumerate(messages * 2):  # the second pass: redeliveries
            position = ("t:0", offset % len(messages))
            if many:
                refused += batch.add_many(msg, 7, position=position, partition=0)
            else:
                refused += [i for i, e in enumerate(msg)
                            if batch.add(e, 7, position=position, partition=0) is not None]
            if offset == len(messages) - 1:
                engine.apply(batch, None)  # positions applied: the rest are duplicates
                batch = engine.batch()
        return batch, refused

    batch_one, refused_one = route(many=False)
    batch_many, refused_many = route(many=True)
    assert refused_many == refused_one == [2, 0, 1, 2, 0, 1]
    assert (batch_many.accepted, batch_many.duplicates, batch_many.runs) == (
        batch_one.accepted, batch_one.duplicates, batch_one.runs)
    assert batch_many.duplicates == 8 and len(batch_many.unknown) == 3


R = settings_from_mapping(
    {"defaults": {"window": "1m", "lateness": "5s", "min_samples": 10},
     "models": {"m": {"features": {"x": {"type": "numeric"}, "c": {"type": "categorical"}},
                      "reference": {"file": "given-by-the-test.jsonl"}}}}, env={})


def reference():
    rng = np.random.default_rng(3)
    rows = [{"x": float(rng.normal()), "c": str(rng.choice(["a", "b"]))} for _ in range(500)]
    return build_reference(rows, "m", R.models["m"], origin="test")


def run_deferred(events, times, runs, batches):
    """Runs ingested with their windowing deferred to the end of each batch (as
    ``Engine.apply`` does), windows closed between batches."""
    m = ModelMonitor("m", R, reference())
    run_bounds = [0, *sorted(set(runs)), len(events)]
    batch_ends = set(batches) | {len(events)}
    late, closed = 0, []

    def close(starts):
        nonlocal closed
        for ws in starts:
            closed += [(ev.start_ms, ev.model_version, ev.n,
                        [(f.feature, f.value) for f in ev.features]) for ev in m.begin_close(ws)]
            m.finish_close(ws)

    for a, b in itertools.pairwise(run_bounds):
        if a < b:
            late += m.ingest(events[a:b], times[a:b], now=None, defer=True).late
        if b in batch_ends or b == len(events):
            late += m.window_deferred().late
            close(m.due_by_watermark())
    close(sorted(m.windows))
    return late, closed


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 5), runs=st.lists(st.integers(1, 399), max_size=20),
       batches=st.lists(st.integers(1, 399), max_size=4))
def test_deferred_windowing_of_a_batchs_runs_changes_no_figure(seed, runs, batches):
    events, times = stream(seed)
    assert run_deferred(events, times, runs, batches) == run_deferred(events, times, [], [])
    late, closed = run_deferred(events, times, runs, batches)
    assert late > 0 and len(closed) > 3  # late events and several windows, each version
