"""The pure window core: closing by watermark and wall clock, lateness, state, warm-up."""

import numpy as np
import orjson
import pytest

from app.core.monitor import ModelMonitor
from app.errors import StateError
from app.policy import decide_drift_alerts
from app.reference import build_reference
from app.settings import settings_from_mapping

W = 60_000  # one-minute windows


def make_settings(**model_extra):
    model = {
        "features": {"x": {"type": "numeric"}, "y": {"type": "numeric"},
                     "c": {"type": "categorical"}, "d": {"type": "categorical"}},
        "reference": {"file": "given-by-the-test.jsonl"},
        **model_extra,
    }
    return settings_from_mapping(
        {"defaults": {"window": "1m", "lateness": "10s", "min_samples": 100},
         "models": {"m": model}}, env={})


def rows(rng, n, shift=False):
    x = rng.normal(1.0 if shift else 0.0, 1, n)
    y = rng.normal(5, 2, n)
    c = rng.choice(["a", "b", "c"], n, p=(0.2, 0.3, 0.5) if shift else (0.5, 0.3, 0.2))
    d = rng.choice(["u", "v"], n)
    return [{"x": float(x[i]), "y": float(y[i]), "c": str(c[i]), "d": str(d[i])}
            for i in range(n)]


def events(feats, version="v1"):
    return [{"model": "m", "model_version": version, "features": f, "prediction": 1}
            for f in feats]


@pytest.fixture
def reference():
    s = make_settings()
    return build_reference(rows(np.random.default_rng(0), 5000), "m", s.models["m"],
                           origin="test")


def test_window_closes_when_watermark_passes_end_plus_lateness(reference):
    m = ModelMonitor("m", make_settings(), reference)
    rng = np.random.default_rng(1)
    m.ingest(events(rows(rng, 300)), [1_000 + i * 100 for i in range(300)], now=100.0)
    assert m.due(now=100.0) == []  # watermark 30.9 s: window [0, 60 s) still open
    m.ingest(events(rows(rng, 1)), [W + 9_000], now=100.0)
    assert m.due(now=100.0) == []  # 69 s < 60 s + 10 s lateness
    m.ingest(events(rows(rng, 1)), [W + 10_000], now=100.0)
    assert m.due(now=100.0) == [0]
    ev = m.begin_close(0)[0]
    assert ev.n == 300 and ev.start_ms == 0 and ev.end_ms == W
    m.finish_close(0)
    assert m.due(now=100.0) == [] and list(m.windows) == [W]


def test_idle_stream_closes_by_wall_clock(reference):
    m = ModelMonitor("m", make_settings(), reference)
    m.ingest(events(rows(np.random.default_rng(2), 10)), [W - 1] * 10, now=1000.0)
    assert m.due(now=1000.0) == []
    assert m.due(now=1010.0) == []  # effective watermark W - 1 + 10 s < W + 10 s
    assert m.due(now=1010.002) == [0]


def test_late_events_are_counted_not_dropped(reference):
    m = ModelMonitor("m", make_settings(), reference)
    rng = np.random.default_rng(3)
    m.ingest(events(rows(rng, 5)), [10] * 5, now=0.0)
    m.ingest(events(rows(rng, 1)), [3 * W], now=0.0)
    for ws in m.due(now=0.0):
        m.begin_close(ws)
        m.finish_close(ws)
    r = m.ingest(events(rows(rng, 4)), [20] * 4, now=0.0)
    assert r.late == 4 and r.accepted == 0
    m.ingest(events(rows(rng, 1)), [5 * W], now=0.0)
    ev = m.begin_close(3 * W)[0]
    assert ev.late_events == 4


def test_state_round_trip_mid_window_continues_the_same_window(reference):
    s = make_settings()
    rng = np.random.default_rng(4)
    first, second = rows(rng, 150), rows(rng, 150)
    m = ModelMonitor("m", s, reference)
    m.partition = 3
    m.ingest(events(first), [1000] * 150, now=5.0)
    restored = ModelMonitor.from_state(orjson.loads(orjson.dumps(m.to_state())), s, reference)
    assert restored.partition == 3 and restored.watermark_ms == 1000
    restored.ingest(events(second), [2000] * 150, now=6.0)
    restored.ingest(events(rows(rng, 1)), [W + 10_000], now=6.0)
    assert restored.due(now=6.0) == [0]
    ev = restored.begin_close(0)[0]
    one_pass = ModelMonitor("m", s, reference)
    one_pass.ingest(events(first + second), [1000] * 300, now=5.0)
    expected = one_pass.begin_close(0)[0]
    assert ev.n == 300
    assert [f.value for f in ev.features] == [f.value for f in expected.features]


def test_unknown_state_version_fails_clearly(reference):
    s = make_settings()
    state = ModelMonitor("m", s, reference).to_state()
    state["v"] = 7
    with pytest.raises(StateError, match="version 7 is not supported"):
        ModelMonitor.from_state(state, s, reference)


def test_warmup_builds_the_reference_from_the_first_events():
    s = make_settings(reference={"warmup": 1000})
    m = ModelMonitor("m", s, None)
    rng = np.random.default_rng(5)
    r = m.ingest(events(rows(rng, 800)), [0] * 800, now=0.0)
    assert r.warmup == 800 and m.reference is None and not m.windows
    r = m.ingest(events(rows(rng, 400)), [W] * 400, now=0.0)
    assert r.warmup == 200 and r.accepted == 200
    assert m.reference is not None and m.reference.n == 1000
    assert m.reference.origin == "warmup:1000"
    again = ModelMonitor.from_state(orjson.loads(orjson.dumps(m.to_state())), s, None)
    assert again.reference is not None and again.reference.n == 1000
    assert again.windows[W].n == 200


def test_a_restart_during_a_warm_up_starts_it_over_and_keeps_state_small():
    s = make_settings(reference={"warmup": 1000})
    m = ModelMonitor("m", s, None)
    m.ingest(events(rows(np.random.default_rng(17), 800)), [0] * 800, now=None)
    raw = orjson.dumps(m.to_state())
    assert len(raw) < 10_000  # the 800 warm-up rows are not in every batch's record
    m = ModelMonitor.from_state(orjson.loads(raw), s, None)
    r = m.ingest(events(rows(np.random.default_rng(18), 400)), [W] * 400, now=None)
    assert r.warmup == 400 and m.reference is None


def test_shifted_features_alert_and_unshifted_do_not(reference):
    s = make_settings()
    rng = np.random.default_rng(6)
    m = ModelMonitor("m", s, reference)
    m.ingest(events(rows(rng, 3000)), [10] * 3000, now=0.0)
    m.ingest(events(rows(rng, 3000, shift=True)), [W + 10] * 3000, now=0.0)
    m.ingest(events(rows(rng, 1)), [3 * W], now=0.0)
    drift = s.models["m"].drift
    clean = decide_drift_alerts(m.begin_close(0)[0], drift)
    shifted = decide_drift_alerts(m.begin_close(W)[0], drift)
    assert clean == []
    assert {a.subject for a in shifted} == {"x", "c"}
    assert all(a.kind == "feature_drift" and a.value >= a.threshold for a in shifted)


def test_small_windows_report_but_never_alert(reference):
    s = make_settings()
    rng = np.random.default_rng(7)
    m = ModelMonitor("m", s, reference)
    m.ingest(events(rows(rng, 99, shift=True)), [10] * 99, now=0.0)
    m.ingest(events(rows(rng, 1)), [3 * W], now=0.0)
    ev = m.begin_close(0)[0]
    assert not ev.sufficient and ev.n == 99
    assert any(f.value and f.value > 0.25 for f in ev.features)  # figures are reported
    assert decide_drift_alerts(ev, s.models["m"].drift) == []


def test_each_version_is_evaluated_on_its_own(reference):
    m = ModelMonitor("m", make_settings(), reference)
    rng = np.random.default_rng(8)
    m.ingest(events(rows(rng, 300), "v1") + events(rows(rng, 500, shift=True), "v2"),
             [10] * 800, now=0.0)
    m.ingest(events(rows(rng, 1)), [3 * W], now=0.0)
    v1, v2 = m.begin_close(0)
    assert (v1.model_version, v1.n, v2.model_version, v2.n) == ("v1", 300, "v2", 500)
    assert v1.versions == v2.versions == {"v1": 300, "v2": 500}
    drift = make_settings().models["m"].drift
    assert decide_drift_alerts(v1, drift) == []
    assert {a.subject for a in decide_drift_alerts(v2, drift)} == {"x", "c"}
    assert v1.fallback and v1.reference_version is None  # the configured reference


def test_new_version_falls_back_to_the_previous_versions_reference_while_warming_up():
    s = make_settings(reference={"warmup": 500})
    m = ModelMonitor("m", s, None)
    rng = np.random.default_rng(11)
    r = m.ingest(events(rows(rng, 500), "v1"), [0] * 500, now=None)
    assert r.warmup == 500 and r.accepted == 0 and not m.windows  # nothing to compare with
    # v2 arrives shifted: compared with v1's reference while it warms up its own
    r = m.ingest(events(rows(rng, 400, shift=True), "v2"), [W] * 400, now=None)
    assert r.warmup == 400 and r.accepted == 400
    m.ingest(events(rows(rng, 1), "v1"), [3 * W], now=None)
    (ev,) = m.begin_close(W)
    assert ev.model_version == "v2" and ev.fallback and ev.reference_version == "v1"
    assert {a.subject for a in decide_drift_alerts(ev, s.models["m"].drift)} == {"x", "c"}
    # after 500 events v2 has its own reference, and its later windows use it
    m.ingest(events(rows(rng, 100, shift=True), "v2"), [2 * W] * 100, now=None)
    assert set(m.references) == {"v1", "v2"}
    m.ingest(events(rows(rng, 300, shift=True), "v2"), [4 * W] * 300, now=None)
    m.ingest(events(rows(rng, 1), "v1"), [9 * W], now=None)
    (own,) = m.begin_close(4 * W)
    assert not own.fallback and own.reference_version == "v2"
    assert decide_drift_alerts(own, s.models["m"].drift) == []
    # references survive a restart
    again = ModelMonitor.from_state(orjson.loads(orjson.dumps(m.to_state())), s, None)
    assert set(again.references) == {"v1", "v2"} and again.versions_seen == ["v1", "v2"]


def test_installed_reference_wins_over_fallback(reference):
    m = ModelMonitor("m", make_settings(), reference)
    other = build_reference(rows(np.random.default_rng(12), 3000, shift=True), "m",
                            make_settings().models["m"], version="v9", origin="file:v9")
    m.install_reference("v9", other)
    m.ingest(events(rows(np.random.default_rng(13), 300, shift=True), "v9"), [10] * 300,
             now=None)
    m.ingest(events(rows(np.random.default_rng(14), 1)), [3 * W], now=None)
    (ev,) = m.begin_close(0)
    assert ev.reference_origin == "file:v9" and not ev.fallback
    assert decide_drift_alerts(ev, make_settings().models["m"].drift) == []


def test_numeric_column_never_raises_on_odd_values():
    from app.core.signals import numeric_column

    col = numeric_column([{"x": 10**400}, {"x": -(10**400)}, {"x": "7"}, {"x": None}, {},
                          {"x": True}, {"x": 2.5}], "x")
    assert col[0] == np.inf and col[1] == -np.inf
    assert np.isnan(col[2:5]).all() and col[5] == 1.0 and col[6] == 2.5


def test_due_since_dates_the_moment_a_window_became_due(reference):
    m = ModelMonitor("m", make_settings(), reference)
    m.ingest(events(rows(np.random.default_rng(9), 10)), [W - 1_000] * 10, now=500.0)
    # end (60 s) + lateness (10 s) - watermark (59 s) = 11 s after the last arrival
    assert m.due_since(0) == pytest.approx(511.0)
    m.ingest(events(rows(np.random.default_rng(9), 1)), [3 * W], now=520.0)
    assert m.due_since(0) == pytest.approx(520.0)  # the watermark passed it on arrival


def test_hopping_windows_hold_each_event_window_over_hop_times(reference):
    s = make_settings(window="3m", hop="1m")
    m = ModelMonitor("m", s, reference)
    rng = np.random.default_rng(10)
    # one event per minute-long slot: minutes 0, 1, 2, 3
    m.ingest(events(rows(rng, 4)), [10, W + 10, 2 * W + 10, 3 * W + 10], now=None)
    assert sorted(m.windows) == [-2 * W, -W, 0, W, 2 * W, 3 * W]
    assert m.windows[0].n == 3 and m.windows[W].n == 3 and m.windows[3 * W].n == 1
    m.ingest(events(rows(rng, 1)), [10 * W], now=None)
    assert m.due_by_watermark() == [-2 * W, -W, 0, W, 2 * W, 3 * W]
    for ws in m.due_by_watermark():
        m.begin_close(ws)
        m.finish_close(ws)
    r = m.ingest(events(rows(rng, 1)), [2 * W + 5], now=None)
    assert r.late == 1 and r.accepted == 0


def test_hop_must_divide_the_window():
    from app.errors import ConfigError

    with pytest.raises(ConfigError, match=r"hop .* must divide the window"):
        make_settings(window="1h", hop="7m")
    with pytest.raises(ConfigError, match="no longer than it"):
        make_settings(window="1m", hop="2m")


def test_a_p_value_that_underflows_to_zero_still_alerts(reference):
    s = make_settings(drift={"statistic": "psi"})
    m = ModelMonitor("m", s, reference)
    rng = np.random.default_rng(15)
    big = rows(rng, 20_000)
    for r in big:
        r["x"] += 5.0  # five standard deviations: the test's p-value is exactly 0.0
    m.ingest(events(big), [10] * len(big), now=None)
    m.ingest(events(rows(rng, 1)), [3 * W], now=None)
    (ev,) = m.begin_close(0)
    x = next(f for f in ev.features if f.feature == "x")
    assert x.p_value == 0.0 and x.p_adjusted == 0.0
    assert "x" in {a.subject for a in decide_drift_alerts(ev, s.models["m"].drift)}


def test_downtime_is_not_idle_time(reference):
    s = make_settings()
    m = ModelMonitor("m", s, reference)
    rng = np.random.default_rng(16)
    m.ingest(events(rows(rng, 10)), [W - 20_000] * 10, now=1_000.0)
    state = orjson.loads(orjson.dumps(m.to_state()))
    restored = ModelMonitor.from_state(state, s, reference)
    # restarted an hour later: the backlog is read before the window may close
    assert restored.due(now=4_600.0) == []
    r = restored.ingest(events(rows(rng, 5)), [W - 10_000] * 5, now=4_600.5)
    assert r.late == 0 and r.accepted == 5
    assert restored.due(now=4_600.5 + 21) == [0]  # and the idle clock runs from the restart


def test_a_warm_up_without_usable_data_warms_up_again():
    s = settings_from_mapping(
        {"defaults": {"window": "1m", "lateness": "0s", "min_samples": 10},
         "models": {"m": {"features": {"y": {"type": "numeric"}},
                          "reference": {"warmup": 10}}}}, env={})
    m = ModelMonitor("m", s, None)
    nulls = [{"model": "m", "model_version": "v1", "features": {"y": None}}] * 10
    r = m.ingest(nulls, [0] * 10, now=None)
    assert r.problems and "no feature" in r.problems[0] and m.reference is None
    good = [{"model": "m", "model_version": "v1", "features": {"y": float(i)}} for i in range(10)]
    r = m.ingest(good, [0] * 10, now=None)
    assert r.problems == [] and m.reference is not None
