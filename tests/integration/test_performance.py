"""Delayed labels on the real broker: the join, performance per window, and restarts.

Labels come a simulated day (event time) after their predictions, out of order, some
before their predictions; the worker's figures equal scikit-learn's on the joined data
and equal ``driftwarden replay`` on the same streams.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)
from support import MODEL, cloud_events, collect, create_topics, produce, settings_of

from app.demo.labelled import labelled_stream
from app.replay import run_replay

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_767_225_600_000  # a window boundary
WINDOWS, PER_WINDOW = 6, 300
ACCURACY = [0.9, 0.9, 0.85, 0.8, 0.72, 0.7]


def performance_config(tmp: Path) -> Path:
    from support import write_config

    path = write_config(tmp)
    cfg = yaml.safe_load(path.read_text())
    cfg["defaults"] = {"window": "1h", "lateness": "5m", "min_samples": 100}
    cfg["models"][MODEL] = {
        "owners": {"on_call": "it-oncall"},
        "features": {"tenure": {"type": "numeric"}},
        "reference": {"warmup": 200},
        "prediction_drift": False,
        "performance": {"baseline": 0.88, "max_drop": 0.03, "min_labels": 200,
                        "label_horizon": "2d", "min_coverage": 0.5},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def streams() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    preds, outs = labelled_stream(seed=21, windows=WINDOWS, per_window=PER_WINDOW,
                                  window_ms=HOUR, t0=T0, accuracy=lambda w: ACCURACY[w],
                                  delay_ms=DAY, jitter_ms=2 * HOUR, model=MODEL)
    rng = np.random.default_rng(5)
    for i in range(0, len(outs), 100):  # out of order within every 100 labels
        block = outs[i:i + 100]
        outs[i:i + 100] = [block[j] for j in rng.permutation(len(block))]
    return preds, outs


def tail_events() -> tuple[dict[str, Any], dict[str, Any]]:
    """A later prediction and an orphan label: event time moves past every checkpoint."""
    later = {"prediction_id": "late-clock", "model": MODEL, "model_version": "v1",
             "timestamp": T0 + 4 * DAY, "features": {"tenure": 1.0}, "prediction": 0,
             "scores": {"1": 0.1}}
    orphan = {"prediction_id": "never-predicted", "model": MODEL, "label": 0,
              "timestamp": T0 + 5 * DAY}
    return later, orphan


def batches(events: list[dict[str, Any]], size: int) -> list[bytes]:
    return [orjson.dumps(events[i:i + size]) for i in range(0, len(events), size)]


def expected_figures(preds: list[dict[str, Any]], outs: list[dict[str, Any]], w: int
                     ) -> dict[str, float]:
    labels = {o["prediction_id"]: o["label"] for o in outs}
    rows = [p for p in preds if (p["timestamp"] - T0) // HOUR == w]
    y = [labels[p["prediction_id"]] for p in rows]
    yhat = [p["prediction"] for p in rows]
    score = [p["scores"]["1"] for p in rows]
    return {"accuracy": accuracy_score(y, yhat), "precision": precision_score(y, yhat),
            "recall": recall_score(y, yhat), "f1": f1_score(y, yhat),
            "log_loss": log_loss(y, score), "roc_auc": roc_auc_score(y, score)}


def finals(evaluations: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {(e["data"]["window"]["start_ms"] - T0) // HOUR: e["data"] for e in evaluations
            if e["data"]["kind"] == "performance" and e["data"]["final"]}


def replay_outputs(tmp: Path, config: Path, preds: list[bytes], outs: list[bytes]
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    (tmp / "p.jsonl").write_bytes(b"\n".join(preds) + b"\n")
    (tmp / "o.jsonl").write_bytes(b"\n".join(outs) + b"\n")
    run_replay(settings_of(config), tmp / "p.jsonl", tmp / "replay", outcomes=tmp / "o.jsonl",
               progress=False)
    read = lambda n: [orjson.loads(x) for x in (tmp / "replay" / n).read_bytes().splitlines()]  # noqa: E731
    return read("alerts.jsonl"), read("evaluations.jsonl")


def in_scope(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outputs about the scenario's windows (not the clock-moving tail)."""
    def start(e: dict[str, Any]) -> int:
        w = e["data"]["window"]
        return w.get("start_ms", 0)
    # At-least-once: a redelivered output is the same event (same id, same data).
    unique = {e["id"]: e for e in events if start(e) < T0 + WINDOWS * HOUR}
    return sorted(unique.values(), key=lambda e: e["id"])


def test_late_out_of_order_labels_give_sklearn_figures_and_match_replay(
        broker, worker_factory, tmp_path):
    config = performance_config(tmp_path)
    settings = settings_of(config)
    create_topics(broker.bootstrap, settings)
    worker = worker_factory(config)
    preds, outs = streams()
    later, orphan = tail_events()
    # Ten labels arrive before any prediction (they wait as early outcomes).
    early, rest = outs[:10], outs[10:]
    outcome_values = batches(early, 10) + batches(rest, 50) + [orjson.dumps(orphan)]
    prediction_values = [*batches(preds, 50), orjson.dumps(later)]
    produce(broker.bootstrap, settings.topics.name("outcomes"), batches(early, 10))
    produce(broker.bootstrap, settings.topics.name("predictions"), batches(preds, 50))
    produce(broker.bootstrap, settings.topics.name("outcomes"), batches(rest, 50))
    # The clock-moving tail only once every label is in: had the later prediction come
    # first, the labels would lag it by more than max_label_lag, and checkpoints would
    # be judged without them (by design, and then not like replay's event-time order).
    worker.wait_metric("driftwarden_labels_total", WINDOWS * PER_WINDOW, outcome="joined")
    produce(broker.bootstrap, settings.topics.name("outcomes"), [orjson.dumps(orphan)])
    produce(broker.bootstrap, settings.topics.name("predictions"), [orjson.dumps(later)])

    def complete(records: list[Any]) -> bool:  # every final revision and drift window
        events = cloud_events(records)
        drift = {e["data"]["window"]["start_ms"] for e in events
                 if e["data"]["kind"] == "drift"}
        return len(finals(events)) >= WINDOWS and len(drift) >= WINDOWS

    records = collect(broker.bootstrap, settings.topics.name("evaluations"), complete,
                      timeout=120)
    evaluations = cloud_events(records)
    final = finals(evaluations)
    assert sorted(final) == list(range(WINDOWS)), worker.tail()
    for w, data in final.items():
        assert data["predictions"] == data["labelled"] == PER_WINDOW
        assert data["label_coverage"] == 1.0
        assert 20 * 3600 <= data["label_delay_seconds"]["p50"] <= 28 * 3600
        figures = data["performance"]["figures"]
        for name, value in expected_figures(preds, outs, w).items():
            tolerance = figures["roc_auc_error"] if name == "roc_auc" else 1e-9
            assert abs(figures[name] - value) <= tolerance + 1e-12, (w, name)
    alerts = cloud_events(collect(broker.bootstrap, settings.topics.name("alerts"),
                                  lambda r: False, timeout=3))
    drops = {(a["data"]["kind"], (_start(a) - T0) // HOUR) for a in alerts
             if a["data"]["kind"] == "performance_drop"}
    # One problem from the shift on (labels out of order may settle window 3 or 4 first).
    firing = [a for a in alerts if a["data"]["kind"] == "performance_drop"
              and a["data"]["status"] == "firing"]
    assert len({a["data"]["alert_id"] for a in firing}) == 1, firing
    # (an escalation to critical in a later window is the same alert)
    assert drops and drops <= {("performance_drop", w) for w in (3, 4, 5)}, drops
    assert not drops & {("performance_drop", 0), ("performance_drop", 1)}
    assert worker.metric("driftwarden_labels_total", outcome="duplicate") == 0
    assert worker.metric("driftwarden_label_coverage_ratio", after="2d") == 1.0

    # The same streams offline: the same figures and the same alert ids.
    r_alerts, r_evaluations = replay_outputs(tmp_path, config, prediction_values,
                                             outcome_values)
    worker_data = [e["data"] for e in in_scope(evaluations)]
    replay_data = [e["data"] for e in in_scope(r_evaluations)]
    assert worker_data == replay_data, _first_difference(worker_data, replay_data)
    # The same problems fire with the same ids; when a detection's hold runs out (its
    # resolution) depends on how far the worker's windows had closed when it stopped.
    def fired(events: list[dict[str, Any]]) -> list[str]:
        return [a["id"] for a in in_scope(events) if a["data"]["status"] == "firing"]
    assert fired(alerts) == fired(r_alerts)


def _first_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    if len(a) != len(b):
        return f"{len(a)} worker evaluations, {len(b)} replayed"
    for x, y in zip(a, b, strict=True):
        if x != y:
            keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
            return f"{x.get('kind')} {x.get('window')} revision {x.get('revision')}: " + \
                "; ".join(f"{k}: {x.get(k)!r} != {y.get(k)!r}" for k in keys)[:3000]
    return "equal"


def _start(alert: dict[str, Any]) -> int:
    from datetime import datetime

    iso = alert["data"]["window"]["start"].replace("Z", "+00:00")
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def test_restart_with_pending_predictions_keeps_the_join(broker, worker_factory, tmp_path,
                                                         monkeypatch):
    monkeypatch.setenv("DW_TEST_LOG_LEVEL", "info")  # the restore is logged
    config = performance_config(tmp_path)
    settings = settings_of(config)
    create_topics(broker.bootstrap, settings)
    preds, outs = streams()
    later, orphan = tail_events()
    half = len(outs) // 2

    first = worker_factory(config)
    produce(broker.bootstrap, settings.topics.name("predictions"), batches(preds, 50))
    produce(broker.bootstrap, settings.topics.name("outcomes"), batches(outs[:half], 50))
    first.wait_metric("driftwarden_labels_total", half, outcome="joined")
    assert first.metric("driftwarden_labels_pending", side="predictions") == \
        len(preds) - half
    assert first.stop() == 0

    second = worker_factory(config)
    produce(broker.bootstrap, settings.topics.name("outcomes"), batches(outs[half:], 50))
    try:
        second.wait_metric("driftwarden_labels_total", len(outs) - half, outcome="joined",
                           timeout=90)
    except AssertionError as exc:
        figures = {(n, tuple(sorted(lab))): v for (n, lab), v in second.metrics().items()
                   if "label" in n or "unlabelled" in n or "state_errors" in n
                   or n in ("driftwarden_events_total", "driftwarden_messages_total")}
        raise AssertionError(f"{exc}\n{figures}") from None
    # Only then move event time past every checkpoint.
    produce(broker.bootstrap, settings.topics.name("outcomes"), [orjson.dumps(orphan)])
    produce(broker.bootstrap, settings.topics.name("predictions"), [orjson.dumps(later)])
    records = collect(broker.bootstrap, settings.topics.name("evaluations"),
                      lambda r: len(finals(cloud_events(r))) >= WINDOWS, timeout=90)
    final = finals(cloud_events(records))
    assert sorted(final) == list(range(WINDOWS)), second.tail()
    # Every prediction labelled once: nothing lost to the restart, nothing counted twice.
    assert all(d["labelled"] == d["predictions"] == PER_WINDOW for d in final.values())
    assert second.metric("driftwarden_labels_total", outcome="duplicate") == 0
