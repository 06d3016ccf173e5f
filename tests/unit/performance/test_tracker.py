"""Performance from delayed labels through the engine: checkpoints, baselines, alerts.

The accuracy-drop tests are the product's founding scenario: a churn model that scored
0.88 and sank to 0.82. Documented bounds (README, "Performance"): with 1 000 labelled
predictions per window, ``performance_drop`` fires within 3 windows (3 000 labelled
events) of the change and ``concept_drift`` within 5 000 labelled events; at a steady
0.88, neither fires over 100 windows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from app.core.engine import Engine
from app.demo.labelled import labelled_stream
from app.errors import StateError
from app.performance.tracker import chunk_columns
from app.replay import run_replay
from app.settings import MonitorSettings, settings_from_mapping

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z, a window boundary


def settings(**performance: Any) -> MonitorSettings:
    perf = {"baseline": 0.88, "max_drop": 0.03, "min_labels": 200, "label_horizon": "2d",
            **performance}
    return settings_from_mapping({
        "defaults": {"window": "1h", "lateness": "5m", "min_samples": 100},
        "models": {"churn": {
            "features": {"tenure": {"type": "numeric"}},
            "reference": {"warmup": 200},
            "prediction_drift": False,
            "performance": perf,
        }},
    })


def write(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


def replay(tmp: Path, cfg: MonitorSettings, preds: list[dict[str, Any]],
           outs: list[dict[str, Any]], model_events: list[dict[str, Any]] | None = None
           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    out = tmp / "out"
    run_replay(cfg, write(tmp / "p.jsonl", preds), out, outcomes=write(tmp / "o.jsonl", outs),
               model_events=write(tmp / "e.jsonl", model_events) if model_events else None,
               progress=False)
    read = lambda name: [orjson.loads(x) for x in (out / name).read_bytes().splitlines()]  # noqa: E731
    return read("alerts.jsonl"), read("evaluations.jsonl")


def performance_evaluations(evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in evaluations if e["data"]["kind"] == "performance"]


def kinds(alerts: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [a["data"] for a in alerts if a["data"]["kind"] == kind]


def window_index(data: dict[str, Any]) -> int:
    return (data["window"]["start_ms"] if "start_ms" in data["window"] else
            _parse(data["window"]["start"])) // HOUR - T0 // HOUR


def _parse(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def test_accuracy_drop_from_088_to_082_raises_performance_drop_and_concept_drift(tmp_path):
    change = 20
    preds, outs = labelled_stream(seed=11, windows=40, per_window=1000, window_ms=HOUR, t0=T0,
                                  accuracy=lambda w: 0.88 if w < change else 0.82,
                                  delay_ms=DAY, jitter_ms=HOUR)
    alerts, _evaluations = replay(tmp_path, settings(), preds, outs)
    drops = kinds(alerts, "performance_drop")
    assert drops, "no performance_drop after the accuracy fell to 0.82"
    first = min(window_index(d) for d in drops)
    assert change <= first < change + 3
    assert all(window_index(d) >= change for d in drops)
    assert drops[0]["evidence"]["reference_value"] == 0.88
    assert drops[0]["evidence"]["interval"][1] < 0.85  # the whole interval is below
    concept = kinds(alerts, "concept_drift")
    assert concept, "no concept_drift after the accuracy fell to 0.82"
    # The detectors count labelled predictions of the version in event-time order.
    first_index = min(d["evidence"]["n"] for d in concept)
    assert change * 1000 < first_index <= change * 1000 + 5000
    assert len({a["id"] for a in alerts}) == len(alerts)


def test_steady_088_raises_neither_over_100_windows(tmp_path):
    preds, outs = labelled_stream(seed=12, windows=100, per_window=1000, window_ms=HOUR,
                                  t0=T0, accuracy=lambda w: 0.88, delay_ms=DAY,
                                  jitter_ms=HOUR)
    alerts, evaluations = replay(tmp_path, settings(), preds, outs)
    assert kinds(alerts, "performance_drop") == []
    assert kinds(alerts, "concept_drift") == []
    final = [e for e in performance_evaluations(evaluations) if e["final"]]
    assert len(final) == 100
    assert all(e["labelled"] == e["predictions"] == 1000 for e in final)


def test_figures_equal_the_joined_data_and_windows_follow_prediction_time(tmp_path):
    preds, outs = labelled_stream(seed=3, windows=4, per_window=500, window_ms=HOUR, t0=T0,
                                  accuracy=lambda w: 0.9 - 0.05 * w, delay_ms=DAY,
                                  jitter_ms=3 * HOUR)
    _, evaluations = replay(tmp_path, settings(), preds, outs)
    labels = {o["prediction_id"]: o["label"] for o in outs}
    final = {window_index(e): e for e in performance_evaluations(evaluations) if e["final"]}
    assert sorted(final) == [0, 1, 2, 3]
    for w, e in final.items():
        rows = [(labels[p["prediction_id"]], p["prediction"]) for p in preds
                if (p["timestamp"] - T0) // HOUR == w]
        accuracy = sum(a == b for a, b in rows) / len(rows)
        assert e["performance"]["value"] == pytest.approx(accuracy, abs=1e-12)
        assert e["labelled"] == e["predictions"] == 500 and e["label_coverage"] == 1.0
        assert 21 * 3600 <= e["label_delay_seconds"]["p50"] <= 27 * 3600
    # Revisions of one window share its window id and grow in revision.
    revs = [e for e in performance_evaluations(evaluations) if window_index(e) == 0]
    assert len({e["window_id"] for e in revs}) == 1
    assert [e["revision"] for e in revs] == sorted({e["revision"] for e in revs})
    drift = [e["data"] for e in evaluations if e["data"]["kind"] == "drift"]
    assert {e["window_id"] for e in drift} >= {e["window_id"] for e in final.values()}


def test_late_labels_re_evaluate_a_closed_window_under_the_same_window_id(tmp_path):
    # Half the labels come within the hour, half two hours later.
    preds, outs = labelled_stream(seed=5, windows=3, per_window=400, window_ms=HOUR, t0=T0,
                                  accuracy=lambda w: 0.7, delay_ms=HOUR,
                                  jitter_ms=HOUR)
    _, evaluations = replay(tmp_path, settings(baseline=None), preds, outs)
    first = [e for e in performance_evaluations(evaluations) if window_index(e) == 0]
    assert len(first) >= 2
    assert first[0]["labelled"] < first[-1]["labelled"] == 400
    assert [e["labelled"] for e in first] == sorted(e["labelled"] for e in first)
    assert len({e["evaluation_id"] for e in first}) == len(first)


def test_a_drop_fires_once_however_many_windows_and_revisions(tmp_path):
    preds, outs = labelled_stream(seed=6, windows=2, per_window=2000, window_ms=HOUR, t0=T0,
                                  accuracy=lambda w: 0.7, delay_ms=2 * HOUR,
                                  jitter_ms=2 * HOUR)
    alerts, _evaluations = replay(tmp_path, settings(), preds, outs)
    drops = kinds(alerts, "performance_drop")
    assert [window_index(d) for d in drops] == [0]  # window 1 continues the same problem
    assert drops[0]["severity"] == "critical"  # 0.70 is far below 0.88 - 2 x 0.03


def test_baseline_from_the_versions_model_event_and_learned(tmp_path):
    preds, outs = labelled_stream(seed=8, windows=8, per_window=1000, window_ms=HOUR, t0=T0,
                                  accuracy=lambda w: 0.9 if w < 4 else 0.75, delay_ms=HOUR)
    deployed = [{"model": "churn", "version": "v1", "event": "deployed", "timestamp": T0 - 1,
                 "metrics": {"accuracy": 0.97}}]
    alerts, evaluations = replay(tmp_path, settings(baseline=None), preds, outs, deployed)
    finals = [e for e in performance_evaluations(evaluations) if e["final"]]
    assert {e["performance"]["baseline_source"] for e in finals} == {"model_event"}
    # 0.90 is far below 0.97 - 0.03 for the holdout's baseline: every window is bad, one
    # problem from the first window on, escalated once when a window is past 2 x max_drop.
    drops = kinds(alerts, "performance_drop")
    assert [(window_index(d), d["severity"], d["status"]) for d in drops] == [
        (0, "warning", "firing"), (2, "critical", "firing")]
    assert drops[0]["alert_id"] == drops[1]["alert_id"]
    assert drops[1]["episode"]["escalated"] is True

    alerts, evaluations = replay(tmp_path, settings(baseline=None, baseline_windows=3),
                                 preds, outs)
    finals = [e for e in performance_evaluations(evaluations) if e["final"]]
    learned = [e["performance"]["baseline"] for e in finals]
    assert learned[:3] == [None, None, None]  # learning from the first three
    assert learned[3] == pytest.approx(0.9, abs=0.02)
    assert [window_index(d) for d in kinds(alerts, "performance_drop")] == [4]


def test_label_coverage_alert_when_labels_stop(tmp_path):
    preds, outs = labelled_stream(seed=9, windows=6, per_window=500, window_ms=HOUR, t0=T0,
                                  accuracy=lambda w: 0.88, delay_ms=HOUR)
    # Labels stop for windows 3..5; predictions go on for two more days.
    outs = [o for o in outs if (o["timestamp"] - HOUR - T0) // HOUR < 3]
    more, _ = labelled_stream(seed=10, windows=50, per_window=20, window_ms=HOUR,
                              t0=T0 + 6 * HOUR, accuracy=lambda w: 0.88, delay_ms=HOUR,
                              id_prefix="q")
    cfg = settings(min_coverage=0.5, coverage_after="2h", label_horizon="1d",
                   max_label_lag="6h")
    alerts, _evaluations = replay(tmp_path, cfg, preds + more, outs)
    cov = kinds(alerts, "label_coverage")
    assert sorted(window_index(a) for a in cov if window_index(a) < 6) == [3]  # then 4, 5
    assert cov[0]["evidence"]["value"] == 0.0 and cov[0]["severity"] == "critical"


def as_version_2(records: dict[str, Any]) -> dict[str, Any]:
    """The records as version 2 wrote them: chunk records with their rows as rows."""
    out = dict(records)
    for key, rec in records.items():
        if key.startswith("w/"):
            out[key] = {**rec, "v": 2}
        elif key.startswith("c/"):
            rows = [list(r) for r in zip(*chunk_columns(rec), strict=True)]
            out[key] = {"start": rec["start"], "version": rec["version"], "k": rec["k"],
                        "rows": rows}
    return out


def as_version_1(records: dict[str, Any]) -> dict[str, Any]:
    """The records as version 1 wrote them: each bucket lists its chunk records."""
    out = as_version_2(records)
    records = dict(out)
    chunks = sorted((int(k[2:]), r) for k, r in records.items() if k.startswith("c/"))
    for key, rec in records.items():
        if key.startswith("w/"):
            rec = {**rec, "v": 1}
            del rec["upto"]
            for version, sl in rec["slices"].items():
                for k, b in sl["buckets"].items():
                    b["chunks"] = [[seq, len(r["rows"])] for seq, r in chunks
                                   if r["start"] == rec["start"] and r["version"] == version
                                   and r["k"] == int(k)]
            out[key] = rec
    return out


def with_an_unfinished_save(records: dict[str, Any]) -> dict[str, Any]:
    """A chunk record of a save cut short (numbered past every window's ``upto``), naming
    a live bucket: its rows must not count."""
    out = dict(records)
    for key, rec in records.items():
        if key.startswith("w/"):
            for version, sl in rec["slices"].items():
                for k in sl["buckets"]:
                    out["c/999999"] = {"start": rec["start"], "version": version, "k": int(k),
                                       "event_ms": [rec["start"]] * 500,
                                       "errors": [1.0] * 500, "losses": [50.0] * 500}
                    return out
    raise AssertionError("no open bucket to test with")


@pytest.mark.parametrize("saved_as", [lambda r: r, as_version_2, as_version_1,
                                      with_an_unfinished_save],
                         ids=["current", "version-2 records", "version-1 records",
                              "an unfinished save"])
def test_the_join_state_survives_a_restore_mid_stream(saved_as):
    cfg = settings()
    preds, outs = labelled_stream(seed=4, windows=6, per_window=300, window_ms=HOUR, t0=T0,
                                  accuracy=lambda w: 0.8, delay_ms=3 * HOUR,
                                  jitter_ms=HOUR)
    stream = sorted([(p["timestamp"], 0, p) for p in preds] +
                    [(o["timestamp"], 1, o) for o in outs], key=lambda x: (x[0], x[1]))

    def run(restart_at: int | None) -> list[dict[str, Any]]:
        engine = Engine(cfg, {"churn": None}, source="urn:test")
        outputs: list[dict[str, Any]] = []
        saved: dict[str, Any] = {}
        records: dict[str, Any] = {}
        for i in range(0, len(stream), 250):
            if restart_at is not None and i == restart_at:  # a new worker: state from saves
                main = orjson.loads(orjson.dumps(saved))
                restored = saved_as(orjson.loads(orjson.dumps(records)))
                engine = Engine(cfg, {"churn": None}, source="urn:test",
                                load_state=lambda m, main=main: main,
                                load_records=lambda m, r=restored: r)
            batch = engine.batch()
            for _, kind, e in stream[i:i + 250]:
                batch.add(e, 0, kind="outcome" if kind else "prediction")
            engine.apply(batch, None)
            outs_now = engine.detections("churn")
            outputs += [e for _, e in outs_now]
            engine.ack_detections("churn", len(outs_now))
            for start in engine.due("churn", None):
                engine.begin_close("churn", start)
                engine.finish_close("churn", start)
            m = engine.monitor("churn")
            for key, value in m.drain_records().items():  # as the changelog does
                if value is None:
                    records.pop(key, None)
                else:
                    records[key] = orjson.loads(orjson.dumps(value))
            saved = m.to_state()
        engine.flush("churn")
        return outputs + [e for _, e in engine.detections("churn")]

    plain = run(None)
    restarted = run(1750)  # mid-stream: predictions pending, labels on their way
    assert [e["id"] for e in restarted] == [e["id"] for e in plain]
    assert [e["data"] for e in restarted] == [e["data"] for e in plain]
    assert any(e["data"].get("labelled") == 300 for e in plain)


def test_a_windows_record_does_not_grow_with_its_batches():
    """Labels in many small batches: each adds a chunk record, and the window's record
    (rewritten every batch it changes) stays the same size, not a list of them all."""
    cfg = settings(label_horizon="3h", after=["0s"])
    preds, outs = labelled_stream(seed=2, windows=1, per_window=3000, window_ms=HOUR, t0=T0,
                                  accuracy=lambda w: 0.8, delay_ms=1000, jitter_ms=0)
    engine = Engine(cfg, {"churn": None}, source="urn:test")
    batch = engine.batch()
    for p in preds:
        batch.add(p, 0)
    engine.apply(batch, None)
    engine.monitor("churn").drain_records()
    sizes, chunks = [], 0
    for i in range(0, len(outs), 10):  # 300 batches of 10 labels, one window
        batch = engine.batch()
        for o in outs[i:i + 10]:
            batch.add(o, 0, kind="outcome")
        engine.apply(batch, None)
        drained = engine.monitor("churn").drain_records()
        chunks += sum(1 for k, v in drained.items() if k.startswith("c/") and v is not None)
        sizes += [len(orjson.dumps(v)) for k, v in drained.items()
                  if k == f"w/{T0}" and v is not None]
    assert chunks >= 250 and len(sizes) >= 250
    # the delays and metrics sketches settle; 250 chunk ids would add over 2 KiB
    assert max(sizes[-100:]) - sizes[100] < 200, (sizes[100], max(sizes[-100:]))


def test_the_pending_predictions_share_one_string_per_version_and_class():
    """Decoded events carry their own string objects: the label join keeps one per
    distinct version and class for its pending predictions (not one per prediction), and
    so does a restore of its records."""
    cfg = settings(positive_class="yes")
    preds = [orjson.loads(orjson.dumps(
        {"prediction_id": f"p{i}", "model": "churn", "model_version": "v" + "7" * (i % 2 + 1),
         "timestamp": T0 + i, "features": {}, "prediction": ["yes", "no", "maybe"][i % 3],
         "scores": {"yes": 0.5}})) for i in range(600)]
    assert len({id(p["model_version"]) for p in preds}) == 600  # as a decoder gives them
    engine = Engine(cfg, {"churn": None}, source="urn:test")
    for i in (0, 300):  # two batches: one object per value across batches too
        batch = engine.batch()
        for p in preds[i:i + 300]:
            batch.add(p, 0)
        engine.apply(batch, None)
    m = engine.monitor("churn")
    _, versions, predicted, _ = m.performance.join.pending.columns([p["prediction_id"]
                                                                     for p in preds])
    assert versions == [p["model_version"] for p in preds]
    assert predicted == [p["prediction"] for p in preds]
    assert len(set(map(id, versions))) == 2 and len(set(map(id, predicted))) == 3
    records = orjson.loads(orjson.dumps(m.drain_records()))
    main = orjson.loads(orjson.dumps(m.to_state()))
    again = Engine(cfg, {"churn": None}, source="urn:test", load_state=lambda _: main,
                   load_records=lambda _: records).monitor("churn")
    _, versions, predicted, _ = again.performance.join.pending.columns(
        [p["prediction_id"] for p in preds])
    assert versions == [p["model_version"] for p in preds]
    assert len(set(map(id, versions))) == 2 and len(set(map(id, predicted))) == 3


def test_settings_reject_what_cannot_be_measured():
    base = {"features": {"x": {"type": "numeric"}}, "reference": {"warmup": 100}}
    with pytest.raises(Exception, match="needs a classification task"):
        settings_from_mapping({"models": {"m": {**base, "task": "regression",
                                                 "performance": {"metric": "accuracy"}}}})
    with pytest.raises(Exception, match="use signal: loss"):
        settings_from_mapping({"models": {"m": {**base, "task": "regression", "performance": {
            "metric": "mae", "concept_drift": [{"detector": "adwin", "signal": "error"}]}}}})
    regression = settings_from_mapping({"models": {"m": {**base, "task": "regression",
                                                          "performance": {}}}})
    assert [c.signal for c in regression.models["m"].concept_detectors] == ["loss"]
    with pytest.raises(Exception, match="is for binary models"):
        settings_from_mapping({"models": {"m": {
            **base, "task": "multiclass_classification", "performance": {"metric": "f1"}}}})
    with pytest.raises(Exception, match="reads the error indicator"):
        settings_from_mapping({"models": {"m": {**base, "performance": {
            "concept_drift": [{"detector": "ddm", "signal": "loss"}]}}}})


def test_a_corrupt_saved_performance_state_fails_clearly():
    from app.performance.tracker import PerformanceTracker

    cfg = settings()
    t = PerformanceTracker("churn", cfg.models["churn"], window_ms=HOUR, lateness_ms=0)
    with pytest.raises(StateError, match="version 7 is not supported"):
        t.load({**t.to_state(), "v": 7}, {})
    with pytest.raises(StateError, match="corrupt performance state"):
        t.load({**t.to_state(), "learned": 5}, {})


def test_chunk_records_are_read_as_columns_or_rows_and_a_corrupt_one_fails_clearly():
    from app.performance.tracker import (
        Bucket,
        PerformanceTracker,
        PerfSlice,
        PerfWindow,
        _window_state,
    )

    cfg = settings()
    t = PerformanceTracker("churn", cfg.models["churn"], window_ms=HOUR, lateness_ms=0)
    w = PerfWindow(T0, T0 + HOUR)
    w.slices["v1"] = PerfSlice(t._metrics(), buckets={0: Bucket(t._metrics())})
    head = {"start": T0, "version": "v1", "k": 0}
    as_columns = {"event_ms": [T0 + 2, T0 + 1], "errors": [1, 0.0], "losses": [0.5, 0.25]}
    as_rows = {"rows": [[T0 + 2, 1.0, 0.5], [T0 + 1, 0.0, 0.25]]}
    for chunk in (as_columns, as_rows):
        t.load({**t.to_state(), "next_chunk": 1},
               {f"w/{T0}": _window_state(w, 1), "c/0": {**head, **chunk}})
        b = t.windows[T0].slices["v1"].buckets[0]
        assert (b.event_ms, b.errors, b.losses, b.chunks, b.unsaved) == (
            [T0 + 2, T0 + 1], [1.0, 0.0], [0.5, 0.25], [(0, 2)], 0)
        assert type(b.errors[0]) is float
        assert b.in_order() == ([T0 + 1, T0 + 2], [0.0, 1.0], [0.25, 0.5])
        records = t.records()
        assert records["c/0"] == {**head, **as_columns, "errors": [1.0, 0.0]}
    with pytest.raises(StateError, match="corrupt performance state"):
        t.load({**t.to_state(), "next_chunk": 1}, {
            f"w/{T0}": _window_state(w, 1), "c/0": {**head, **as_columns, "errors": [1.0]}})
    with pytest.raises(StateError, match="version 4 is not supported"):
        t.load(t.to_state(), {f"w/{T0}": {**_window_state(w, 1), "v": 4}})


def test_a_worse_new_version_recommends_rolling_back_to_the_previous_one(tmp_path):
    v1, v1_outs = labelled_stream(seed=31, windows=6, per_window=1000, window_ms=HOUR, t0=T0,
                                  accuracy=lambda w: 0.88, delay_ms=HOUR, version="v1",
                                  id_prefix="a")
    for worse, expect in ((0.70, True), (0.88, False)):
        v2, v2_outs = labelled_stream(seed=32, windows=4, per_window=1000, window_ms=HOUR,
                                      t0=T0 + 6 * HOUR, accuracy=lambda w, x=worse: x,
                                      delay_ms=HOUR, version="v2", id_prefix="b")
        events = [{"model": "churn", "version": "v1", "event": "deployed", "timestamp": T0 - 1},
                  {"model": "churn", "version": "v2", "event": "deployed",
                   "timestamp": T0 + 6 * HOUR - 1}]
        out = tmp_path / f"run-{worse}"
        out.mkdir()
        alerts, _ = replay(out, settings(baseline=None, label_horizon="2h"), v1 + v2,
                           sorted(v1_outs + v2_outs, key=lambda o: o["timestamp"]), events)
        rollbacks = [a for a in kinds(alerts, "rollback_recommended")
                     if a["status"] == "firing"]
        if expect:
            assert len(rollbacks) == 1
            r = rollbacks[0]
            assert r["model_version"] == "v2" and r["evidence"]["rollback_to"] == "v1"
            assert r["evidence"]["reference_value"] == pytest.approx(0.88, abs=0.02)
            assert "roll back to v1" in r["summary"]
        else:
            assert rollbacks == []
