"""The offline replay: same engine, files in, CloudEvents files out."""

import numpy as np
import orjson
import yaml

from app.cli import main
from app.replay import run_replay
from app.settings import load_settings

W = 60_000


def rows(rng, n, shifted=False):
    x = rng.normal(0.5 if shifted else 0.0, 1, n)
    c = rng.choice(["a", "b"], n, p=(0.4, 0.6) if shifted else (0.7, 0.3))
    z = rng.normal(3, 1, n)
    return [{"x": float(x[i]), "c": str(c[i]), "z": float(z[i])} for i in range(n)]


def setup(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "ref.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in rows(rng, 4000)))
    cfg = {"defaults": {"window": "1m", "lateness": "0s", "min_samples": 100},
           "models": {"m": {"features": {"x": {"type": "numeric"}, "c": {"type": "categorical"},
                                         "z": {"type": "numeric"}},
                            "reference": {"file": "ref.jsonl"}}}}
    (tmp_path / "monitor.yaml").write_text(yaml.safe_dump(cfg))
    lines = []
    for w in range(4):
        feats = rows(rng, 500, shifted=w >= 2)
        events = [{"prediction_id": f"{w}-{i}", "model": "m", "model_version": "v1",
                   "features": f, "prediction": 0, "timestamp": w * W + i * 100}
                  for i, f in enumerate(feats)]
        lines += [orjson.dumps(events[i:i + 50]) for i in range(0, 500, 50)]
    lines += [b"not json", orjson.dumps({**events[0], "model": "other"}),
              orjson.dumps({k: v for k, v in events[0].items() if k != "timestamp"})]
    (tmp_path / "p.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return load_settings(tmp_path / "monitor.yaml")


def read(path):
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def test_replay_closes_every_window_and_alerts_on_the_shifted_features(tmp_path):
    settings = setup(tmp_path)
    summary = run_replay(settings, tmp_path / "p.jsonl", tmp_path / "out", progress=False)
    assert summary.events == 2000 and summary.windows == 4 and summary.rejected == 3
    evals = read(tmp_path / "out" / "evaluations.jsonl")
    assert [e["data"]["window"]["start_ms"] for e in evals] == [0, W, 2 * W, 3 * W]
    assert all(e["data"]["n"] == 500 for e in evals)
    alerts = read(tmp_path / "out" / "alerts.jsonl")
    by_window = {}
    for a in alerts:
        by_window.setdefault(a["data"]["window"]["start"][:19], set()).add(a["data"]["feature"])
    # Each shifted feature is one problem from its first bad window on.
    assert by_window == {"1970-01-01T00:02:00": {"x", "c"}}
    assert {a["data"]["status"] for a in alerts} == {"firing"}
    dead = read(tmp_path / "out" / "deadletter.jsonl")
    assert sorted(d["reason"] for d in dead) == ["invalid_json", "missing_timestamp",
                                                 "unknown_model"]
    assert (tmp_path / "out" / "retrain-triggers.jsonl").read_bytes() == b""


def test_replay_is_deterministic(tmp_path):
    settings = setup(tmp_path)
    run_replay(settings, tmp_path / "p.jsonl", tmp_path / "a", progress=False)
    run_replay(settings, tmp_path / "p.jsonl", tmp_path / "b", progress=False)
    for name in ("alerts", "evaluations", "deadletter"):
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == \
            (tmp_path / "b" / f"{name}.jsonl").read_bytes()


def test_replay_command(tmp_path, capsys):
    setup(tmp_path)
    code = main(["replay", "-c", str(tmp_path / "monitor.yaml"), "--predictions",
                 str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "o"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "2000 events, 3 rejected; 4 windows closed, 2 alerts" in out
    assert main(["replay", "-c", str(tmp_path / "monitor.yaml"), "--predictions",
                 str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2


def test_replay_publishes_change_detections(tmp_path):
    setup(tmp_path)
    cfg = yaml.safe_load((tmp_path / "monitor.yaml").read_text())
    cfg["models"]["m"]["change_detectors"] = [{"signal": "feature.x", "detector": "adwin"}]
    (tmp_path / "monitor.yaml").write_text(yaml.safe_dump(cfg))
    settings = load_settings(tmp_path / "monitor.yaml")
    summary = run_replay(settings, tmp_path / "p.jsonl", tmp_path / "out", progress=False)
    alerts = read(tmp_path / "out" / "alerts.jsonl")
    changes = [a for a in alerts if a["data"]["evidence"]["statistic"] == "adwin"]
    assert changes and all(a["data"]["feature"] == "x" for a in changes)
    # the shift starts with the third window (event 1000): ADWIN sees it soon after
    first = changes[0]["data"]["evidence"]["n"]
    assert 1000 < first < 1300
    assert summary.alerts == len(alerts)


def test_replay_installs_version_references(tmp_path, capsys):
    settings = setup(tmp_path)
    # a reference for v1 built from shifted data: the clean windows now drift, the
    # shifted ones do not
    rng = np.random.default_rng(1)
    (tmp_path / "shifted.jsonl").write_bytes(
        b"\n".join(orjson.dumps(r) for r in rows(rng, 4000, shifted=True)))
    assert main(["reference", "build", str(tmp_path / "shifted.jsonl"), "-c",
                 str(tmp_path / "monitor.yaml"), "--model", "m", "--version", "v1",
                 "--out", str(tmp_path / "m-v1.reference.json")]) == 0
    assert main(["replay", "-c", str(tmp_path / "monitor.yaml"), "--predictions",
                 str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "o"), "--no-progress",
                 "--reference", str(tmp_path / "m-v1.reference.json")]) == 0
    evals = read(tmp_path / "o" / "evaluations.jsonl")
    assert all(e["data"]["reference_version"] == "v1" and not e["data"]["reference_fallback"]
               for e in evals)
    drifted = [bool(e["data"]["alerts"]) for e in evals]
    assert drifted == [True, True, False, False]
    assert settings.topics.name("references") == "mlmon.references"
