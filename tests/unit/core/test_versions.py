"""Rollback advice from prediction drift: a new version's outputs against the previous
version's recent outputs, without waiting for labels."""

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from app.core.versions import Profile, VersionOutputs, compare_outputs
from app.errors import StateError
from app.replay import run_replay
from app.settings import DriftSettings, RollbackSettings, settings_from_mapping
from app.sketches import QuantileSketch

ROOT = Path(__file__).resolve().parents[3]
W = 60_000
T0 = 1_700_000_000_000 // W * W
PER_WINDOW = 1000


def settings(**model: Any):
    return settings_from_mapping(
        {"defaults": {"window": "1m", "lateness": "0s", "min_samples": 200},
         "models": {"m": {"features": {"x": {"type": "numeric"}},
                          "reference": {"warmup": 2000}, **model}}}, env={})


def stream(rng, windows, *, first, version, score_mean, start=0):
    """``windows`` windows of predictions from window ``first`` on; the x feature never
    moves, the score (and so the predicted class) has mean ``score_mean``."""
    out = []
    for w in range(first, first + windows):
        x = rng.normal(0, 1, PER_WINDOW)
        s = np.clip(rng.normal(score_mean, 0.15, PER_WINDOW), 0, 1)
        for i in range(PER_WINDOW):
            out.append({"prediction_id": f"{version}-{start + len(out)}", "model": "m",
                        "model_version": version, "features": {"x": round(float(x[i]), 5)},
                        "prediction": bool(s[i] >= 0.5),
                        "scores": {"churn": round(float(s[i]), 5),
                                   "stay": round(float(1 - s[i]), 5)},
                        "timestamp": T0 + w * W + i * (W // PER_WINDOW)})
    return out


def deployed(version, at_ms):
    return {"model": "m", "version": version, "event": "deployed", "timestamp": at_ms}


def replay(tmp: Path, cfg, preds, model_events):
    out = tmp / "out"
    p, e = tmp / "p.jsonl", tmp / "e.jsonl"
    p.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in preds))
    e.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in model_events))
    run_replay(cfg, p, out, model_events=e, progress=False)
    return [orjson.loads(x) for x in (out / "alerts.jsonl").read_bytes().splitlines()]


def rollbacks(alerts):
    return [a for a in alerts if a["data"]["kind"] == "rollback_recommended"
            and a["type"].endswith("firing")]


@pytest.mark.parametrize("v2_mean, expect", [(0.6, True), (0.3, False)])
def test_a_deploy_whose_outputs_move_recommends_rolling_back(tmp_path, v2_mean, expect):
    rng = np.random.default_rng(17)
    v1 = stream(rng, 6, first=0, version="v1", score_mean=0.3)
    v2 = stream(rng, 10, first=6, version="v2", score_mean=v2_mean)
    events = [deployed("v1", T0 - 1), deployed("v2", T0 + 6 * W - 1)]
    alerts = replay(tmp_path, settings(), v1 + v2, events)
    advice = rollbacks(alerts)
    if not expect:  # the same outputs: ten windows judged, no advice
        assert advice == []
        return
    assert len(advice) == 1  # once per pair of versions, however many windows follow
    a = advice[0]["data"]
    assert a["model_version"] == "v2" and a["evidence"]["rollback_to"] == "v1"
    assert a["window"]["start"].startswith("2023-11-14T22:19")  # v2's first window
    assert {s["signal"] for s in a["evidence"]["signals"]} == {
        "prediction", "scores.churn", "scores.stay"}
    assert all(s["value"] >= s["threshold"] and s["p_adjusted"] <= 0.005
               for s in a["evidence"]["signals"])
    assert a["severity"] == "critical" and "roll back to v1" in a["summary"]
    # v1's windows pooled: the first two were its warm-up (its reference), unwindowed
    assert a["evidence"]["reference_n"] == 4 * PER_WINDOW
    assert advice[0]["id"] == a["alert_id"]
    schema = orjson.loads((ROOT / "schemas/alert.schema.json").read_bytes())
    problems = [e.message for e in Draft202012Validator(
        schema, format_checker=FormatChecker()).iter_errors(advice[0])]
    assert problems == []


def test_advice_is_not_given_for_a_rollback_nor_towards_a_version_advised_against(tmp_path):
    rng = np.random.default_rng(18)
    v1 = stream(rng, 4, first=0, version="v1", score_mean=0.3)
    v2 = stream(rng, 3, first=4, version="v2", score_mean=0.6)
    back = stream(rng, 3, first=7, version="v1", score_mean=0.3, start=10_000)
    v3 = stream(rng, 3, first=10, version="v3", score_mean=0.3)
    events = [deployed("v1", T0 - 1), deployed("v2", T0 + 4 * W - 1),
              {"model": "m", "version": "v1", "event": "rolled_back",
               "timestamp": T0 + 7 * W - 1},
              deployed("v3", T0 + 10 * W - 1)]
    advice = rollbacks(replay(tmp_path, settings(), v1 + v2 + back + v3, events))
    # v2 is advised against; returning to v1 is not judged against v2; v3 predicts like
    # v1 and is compared with v1's recent windows: no advice
    assert [(a["data"]["model_version"], a["data"]["evidence"]["rollback_to"])
            for a in advice] == [("v2", "v1")]


def test_switched_off_or_outside_the_judged_windows_nothing_is_advised(tmp_path):
    rng = np.random.default_rng(19)
    v1 = stream(rng, 4, first=0, version="v1", score_mean=0.3)
    late = stream(rng, 1, first=4, version="v2", score_mean=0.3) + \
        stream(rng, 2, first=5, version="v2", score_mean=0.65, start=5000)
    events = [deployed("v1", T0 - 1), deployed("v2", T0 + 4 * W - 1)]
    off = settings(rollback={"on_prediction_drift": False})
    assert rollbacks(replay(tmp_path, off, v1 + late, events)) == []
    (tmp_path / "b").mkdir()
    one = settings(rollback={"judge_windows": 1})  # only v2's first (unchanged) window
    assert rollbacks(replay(tmp_path / "b", one, v1 + late, events)) == []


def test_numeric_outputs_compare_their_quantile_sketches():
    rng = np.random.default_rng(4)

    def profile(mean, n):
        q = QuantileSketch()
        q.update(rng.normal(mean, 10, n))
        return {"@prediction": Profile(quantiles=q)}

    before = profile(100, 6000)
    assert compare_outputs(before, profile(100, 1000), DriftSettings(), min_samples=200) == []
    (moved,) = compare_outputs(before, profile(108, 1000), DriftSettings(), min_samples=200)
    assert (moved.signal, moved.statistic) == ("prediction", "wasserstein")
    assert moved.value >= moved.threshold and moved.summary.startswith("median 1")
    # too few outputs on either side: not compared
    assert compare_outputs(before, profile(130, 150), DriftSettings(), min_samples=200) == []


def test_state_round_trip_and_corrupt_state():
    rng = np.random.default_rng(5)
    vo = VersionOutputs(RollbackSettings())
    vo.note_event({"event": "deployed", "version": "v1"})
    vo.note_event({"event": "deployed", "version": "v2"})
    q = QuantileSketch()
    q.update(rng.normal(0, 1, 500))
    vo.windows["v1"] = [(0, {"@scores.a": Profile(quantiles=q),
                             "@prediction": Profile(counts={"a": 3, "b": 4})})]
    vo.mark_advised("v2>v1")
    again = VersionOutputs(RollbackSettings())
    again.load(orjson.loads(orjson.dumps(vo.to_state())))
    assert again.to_state() == vo.to_state()
    assert (again.live, again.previous, again.advised, again.bad) == (
        "v2", "v1", ["v2>v1"], ["v2"])
    with pytest.raises(StateError, match="version-outputs"):
        again.load({**vo.to_state(), "kind": "other"})
    with pytest.raises(StateError, match="corrupt"):
        again.load({**vo.to_state(), "windows": {"v1": [[0, {"@p": {"nope": 1}}]]}})
