"""Alert episodes: hysteresis, resolution, cooldown, escalation, detections, silences,
routes, and the book's state across a restart."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from app.errors import ConfigError, StateError
from app.outputs.cloudevents import iso
from app.policy.alerts import AlertBook, alert_key
from app.policy.routing import EpisodePolicy, episode_policy
from app.replay import run_replay
from app.settings import settings_from_mapping
from app.settings_alerting import AlertingSettings

MIN = 60_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a Thursday


def candidate(start: int, *, severity: str = "warning", feature: str = "plan",
              kind: str = "feature_drift") -> dict[str, Any]:
    """A window's candidate alert, as the judges build it (one id per window)."""
    wid = f"{kind}-{feature}-{start}"
    return {"specversion": "1.0", "type": "io.driftwarden.alert.firing", "id": wid,
            "time": iso(start + MIN),
            "data": {"alert_id": wid, "status": "firing", "severity": severity, "kind": kind,
                     "model": "churn", "model_version": "v1", "feature": feature,
                     "window": {"start": iso(start), "end": iso(start + MIN)},
                     "evidence": {"statistic": "psi", "value": 0.3}, "summary": "churn: plan",
                     "owners": {"on_call": "oncall", "data": "data-eng"},
                     "labels": {"alertname": "driftwarden_feature_drift"},
                     "startsAt": iso(start + MIN), "endsAt": None}}


KEY = alert_key(candidate(0)["data"])


def run(book: AlertBook, pattern: str, first: int = 0) -> list[list[tuple[str, str]]]:
    """Feed windows ``first``.. with verdicts ``B`` (bad), ``G`` (good), ``-`` (too few
    events); per window the (status, alert_id) published."""
    out = []
    for i, verdict in enumerate(pattern, start=first):
        start = T0 + i * MIN
        bad = [candidate(start)] if verdict == "B" else []
        good = [KEY] if verdict == "G" else []
        events, _ = book.window(start + MIN, start, bad, good)
        out.append([(e["data"]["status"], e["data"]["alert_id"]) for e in events])
    return out


def statuses(published: list[list[tuple[str, str]]]) -> list[str]:
    return ["".join(s[0][0] for s in w) or "." for w in published]


def book(**policy: Any) -> AlertBook:
    p = EpisodePolicy(**policy)
    return AlertBook("churn", lambda kind: p)


def test_flapping_fires_nothing_three_bad_fire_once_two_good_resolve_once():
    b = book(fire_after=2, resolve_after=2)
    published = run(b, "BGBGBG" + "BBB" + "GG" + "G")
    assert statuses(published) == list("......" + ".f." + ".r" + ".")
    fired, resolved = published[7][0], published[10][0]
    assert fired[1] == resolved[1]  # the same alert id
    assert b.episodes == {}  # nothing left once resolved (no cooldown)


def test_windows_without_a_verdict_neither_count_nor_break_a_streak():
    b = book(fire_after=2, resolve_after=2)
    assert statuses(run(b, "B-B-G-G")) == list("..f...r")


def test_the_episode_id_is_deterministic_and_names_its_first_bad_window():
    a, b = book(fire_after=2), book(fire_after=2)
    first, second = run(a, "GBB"), run(b, "GBB")
    assert first == second
    fired = a.firing()[0]["data"]
    assert fired["episode"] == {"bad_windows": 2, "fire_after": 2, "resolve_after": 2,
                                "first_window": iso(T0 + MIN)}
    assert fired["alert_id"] != candidate(T0 + 2 * MIN)["id"]


def test_cooldown_holds_a_recurrence_back_until_it_ends():
    b = book(fire_after=1, resolve_after=1, cooldown_ms=5 * MIN)
    # fires at 0, resolves at the end of 1 (T0 + 2 min); bad again from 2: held back
    # until the cooldown ends (T0 + 7 min, the end of window 6), then fires once, anew.
    published = run(b, "BGBBBBBBB")
    assert statuses(published) == list("fr....f..")
    assert published[0][0][1] != published[6][0][1]
    assert b.drain_suppressed() == {"cooldown": 4}


def test_an_escalation_is_published_once_with_the_same_alert_id():
    b = book(fire_after=1, resolve_after=1)
    e0, _ = b.window(T0 + MIN, T0, [candidate(T0)], [])
    e1, _ = b.window(T0 + 2 * MIN, T0 + MIN, [candidate(T0 + MIN, severity="critical")], [])
    e2, _ = b.window(T0 + 3 * MIN, T0 + 2 * MIN, [candidate(T0 + 2 * MIN, severity="critical")],
                     [])
    assert [e["data"]["severity"] for e in e0 + e1] == ["warning", "critical"] and e2 == []
    assert e0[0]["data"]["alert_id"] == e1[0]["data"]["alert_id"]
    assert e0[0]["id"] != e1[0]["id"]  # two CloudEvents, one alert
    resolved, _ = b.window(T0 + 4 * MIN, T0 + 3 * MIN, [], [KEY])
    assert resolved[0]["data"]["severity"] == "critical"
    assert resolved[0]["type"] == "io.driftwarden.alert.resolved"
    assert resolved[0]["data"]["endsAt"] == iso(T0 + 4 * MIN)


def test_a_revised_window_counts_once_and_older_windows_are_ignored():
    b = book(fire_after=2, resolve_after=2)
    s = T0 + 5 * MIN
    assert b.window(s + MIN, s, [candidate(s)], [])[0] == []
    assert b.window(s + 2 * MIN, s, [candidate(s)], [])[0] == []  # the same window again
    assert b.window(s + 3 * MIN, s - MIN, [candidate(s - MIN)], [])[0] == []  # older
    assert len(b.window(s + 4 * MIN, s + MIN, [candidate(s + MIN)], [])[0]) == 1


def test_the_most_severe_candidate_of_a_window_speaks_for_its_versions():
    b = book(fire_after=1)
    v1, v2 = candidate(T0), candidate(T0, severity="critical")
    v2["id"] = v2["data"]["alert_id"] = "other-version"
    events, ids = b.window(T0 + MIN, T0, [v1, v2], [])
    assert [e["data"]["severity"] for e in events] == ["critical"]
    assert ids[v1["id"]] == ids[v2["id"]] == events[0]["data"]["alert_id"]


def test_detections_fire_at_once_deduplicate_and_resolve_after_the_hold():
    b = book(hold_ms=10 * MIN)
    first = candidate(T0, kind="concept_drift")
    again = candidate(T0 + 3 * MIN, kind="concept_drift")
    again["id"] = again["data"]["alert_id"] = "second-detection"
    assert [e["id"] for e in b.detections([first])] == [first["id"]]
    assert b.detections([again]) == []  # the same problem, still firing
    assert b.expire(T0 + 12 * MIN) == []  # 10 min after the second detection, at 3 + 1
    resolved = b.expire(T0 + 14 * MIN)
    assert [e["data"]["status"] for e in resolved] == ["resolved"]
    assert resolved[0]["data"]["alert_id"] == first["id"]


def silenced(silences: list[dict[str, Any]], **policy: Any) -> AlertBook:
    settings = AlertingSettings.model_validate({"silences": silences})
    p = EpisodePolicy(**policy)
    return AlertBook("churn", lambda kind: p, silences=settings.silences)


def test_a_silence_holds_the_firing_back_and_publishes_it_when_it_ends():
    b = silenced([{"match": {"model": ["churn"], "kind": ["feature_drift"]},
                   "starts": iso(T0), "ends": iso(T0 + 3 * MIN + 30_000), "reason": "backfill"}],
                 fire_after=1, resolve_after=2)
    published = run(b, "BBBBGG")
    # bad from window 0; the silence covers window ends 1..3; published at the end of 3..4
    assert statuses(published) == list("...f.r")
    assert b.drain_suppressed() == {"silenced": 1}


def test_a_problem_that_clears_during_its_silence_publishes_nothing():
    b = silenced([{"match": {}, "starts": iso(T0), "ends": iso(T0 + 60 * MIN), "reason": "r"}],
                 fire_after=1, resolve_after=1)
    assert statuses(run(b, "BBG")) == list("...")
    assert b.episodes == {}


def test_weekly_maintenance_windows_silence_operational_alerts_and_their_resolution():
    # Thursdays 00:00..00:10 UTC.
    b = silenced([{"match": {"kind": ["model_silent"]},
                   "weekly": {"days": ["thu"], "start": "00:00", "end": "00:10"},
                   "reason": "nightly deploy"}])
    firing = candidate(T0, kind="model_silent")
    resolved = {**firing, "data": {**firing["data"], "status": "resolved"}}
    assert b.passthrough([firing]) == [] and b.passthrough([resolved]) == []
    later = candidate(T0 + 15 * MIN, kind="model_silent")
    assert [e["id"] for e in b.passthrough([later])] == [later["id"]]


def test_routes_name_the_receiving_owner_first_match_wins_with_a_fallback():
    routes = AlertingSettings.model_validate({"routes": [
        {"match": {"kind": ["data_quality"]}, "owner": "data", "receiver": "data-slack"},
        {"match": {"severity": ["critical"]}, "owner": "on_call", "receiver": "pager"},
    ]}).routes
    p = EpisodePolicy()
    b = AlertBook("churn", lambda kind: p, routes=routes)
    quality = b.detections([candidate(T0, kind="data_quality", severity="critical")])[0]["data"]
    assert quality["route"] == {"owner": "data", "to": "data-eng", "receiver": "data-slack"}
    assert quality["labels"]["team"] == "data-eng" and quality["labels"]["receiver"] == \
        "data-slack"
    drift = b.detections([candidate(T0, severity="warning")])[0]["data"]
    assert drift["route"] == {"owner": "on_call", "to": "oncall", "receiver": None}
    assert "receiver" not in drift["labels"]


def test_the_book_restored_from_its_state_neither_refires_nor_forgets_to_resolve():
    b = book(fire_after=2, resolve_after=2)
    assert statuses(run(b, "BBB")) == list(".f.")
    state = orjson.loads(orjson.dumps(b.to_state()))  # as saved in the changelog
    restored = book(fire_after=2, resolve_after=2)
    restored.load(state)
    published = run(restored, "BBGG", first=3)
    assert statuses(published) == list("...r")
    assert published[3][0][1] == b.firing()[0]["data"]["alert_id"]


@pytest.mark.parametrize("state", [None, {"kind": "alert-book", "v": 99, "episodes": []},
                                   {"kind": "alert-book", "v": 1, "episodes": [{"x": 1}]}])
def test_a_state_this_build_cannot_read_fails_clearly(state):
    with pytest.raises(StateError):
        book().load(state)


def test_episode_settings_resolve_model_kind_over_model_over_top_level():
    settings = settings_from_mapping({
        "defaults": {"window": "10m"},
        "alerting": {"fire_after": 3, "cooldown": "1h",
                     "kinds": {"performance_drop": {"fire_after": 1}}},
        "models": {"churn": {"features": {"x": {"type": "numeric"}},
                             "reference": {"warmup": 100},
                             "alerting": {"resolve_after": 4,
                                          "kinds": {"feature_drift": {"fire_after": 2}}}}}})
    model = settings.models["churn"].alerting
    get = lambda kind: episode_policy(settings.alerting, model, kind, 600_000)  # noqa: E731
    assert get("feature_drift") == EpisodePolicy(2, 4, 3_600_000, 2_400_000)
    assert get("performance_drop").fire_after == 1
    assert get("data_quality").fire_after == 3


@pytest.mark.parametrize("alerting, message", [
    ({"silences": [{"reason": "r"}]}, "either starts and ends, or weekly"),
    ({"silences": [{"starts": "2026-01-01T00:00:00Z", "reason": "r"}]}, "both starts and ends"),
    ({"silences": [{"starts": "2026-01-02T00:00:00Z", "ends": "2026-01-01T00:00:00Z",
                    "reason": "r"}]}, "ends must be after starts"),
    ({"silences": [{"weekly": {"start": "25:00", "end": "01:00"}, "reason": "r"}]},
     "HH:MM"),
    ({"routes": [{"owner": "pager"}]}, "alerting.routes.0.owner"),
    ({"fire_after": 0}, "alerting.fire_after"),
])
def test_a_broken_alerting_section_names_the_path(alerting, message):
    with pytest.raises(ConfigError) as err:
        settings_from_mapping({"alerting": alerting, "models": {"m": {
            "features": {"x": {"type": "numeric"}}, "reference": {"warmup": 100}}}})
    assert message in str(err.value)


@pytest.fixture
def drift_stream():
    def make(pattern: str, seed: int = 5) -> list[dict[str, Any]]:
        rng = np.random.default_rng(seed)
        events = []
        for w, verdict in enumerate("GG" + pattern):  # two windows of warm-up first
            x = rng.normal(1.0 if verdict == "B" else 0.0, 1, 1000)
            events += [{"prediction_id": f"p{w}-{i}", "model": "churn", "model_version": "v1",
                        "timestamp": T0 + w * MIN + i * 50, "features": {"x": float(x[i])},
                        "prediction": 0} for i in range(1000)]
        return events
    return make


def test_replay_of_flapping_then_persistent_drift(tmp_path, drift_stream):
    cfg = settings_from_mapping({
        "defaults": {"window": "1m", "lateness": "1s", "min_samples": 200},
        "alerting": {"fire_after": 2, "resolve_after": 2},
        "models": {"churn": {"features": {"x": {"type": "numeric"}},
                             "reference": {"warmup": 2000}, "prediction_drift": False}}})
    pattern = "BGBGBG" + "BBB" + "GG" + "GB"
    (tmp_path / "p.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n"
                                                for e in drift_stream(pattern)))
    run_replay(cfg, tmp_path / "p.jsonl", tmp_path / "out", progress=False)
    alerts = [orjson.loads(x) for x in (tmp_path / "out" / "alerts.jsonl").read_bytes()
              .splitlines()]
    minute = lambda a: (orjson.loads(orjson.dumps(a))["time"][14:16])  # noqa: E731
    # Windows 2..7 flap: nothing. 8, 9, 10 bad: fires at the end of window 9. 11, 12
    # good: resolves at the end of 12. 13 good, 14 bad: nothing (one bad window).
    assert [(a["data"]["status"], minute(a)) for a in alerts] == [
        ("firing", "10"), ("resolved", "13")]
    assert alerts[0]["data"]["alert_id"] == alerts[1]["data"]["alert_id"]
    assert alerts[0]["data"]["episode"]["first_window"] == iso(T0 + 8 * MIN)
    evaluations = [orjson.loads(x)["data"] for x in
                   (tmp_path / "out" / "evaluations.jsonl").read_bytes().splitlines()]
    named = {e["window"]["start_ms"]: e["alerts"] for e in evaluations}
    # Bad windows name the firing alert once it fires; counting windows name none.
    assert named[T0 + 8 * MIN] == [] and named[T0 + 9 * MIN] == named[T0 + 10 * MIN] == [
        alerts[0]["data"]["alert_id"]]


def test_the_firing_gauge_adds_up_books_that_share_a_model_label():
    from prometheus_client import CollectorRegistry

    from app.observability.metrics import Metrics

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    crm, billing = AlertBook("crm", lambda k: EpisodePolicy()), \
        AlertBook("billing", lambda k: EpisodePolicy())
    for b in (crm, billing):  # every source's alerts have the model label ""
        metrics.observe_alerts("", b.detections([candidate(T0, kind="schema_change")]), b)
    labels = {"model": "", "kind": "schema_change", "severity": "warning"}
    assert registry.get_sample_value("driftwarden_alerts_firing", labels) == 2
    metrics.observe_alerts("", crm.expire(T0 + 60 * MIN), crm)  # crm's resolves
    assert registry.get_sample_value("driftwarden_alerts_firing", labels) == 1
