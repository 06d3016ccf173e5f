"""The JSON Schemas in ``schemas/``: well-formed, their examples valid, and the code agrees.

The alert and evaluation examples are exactly what the builders in
``app/outputs/cloudevents.py`` (drift) and ``app/outputs/performance.py`` (performance)
produce for the window built by :func:`example_window` and its performance one day later,
:func:`example_performance`. After changing a builder, regenerate them from the repository
root with::

    .venv/bin/python -m tests.unit.events.test_schemas
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import numpy as np
import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from app.core.evaluation import FeatureEvaluation, WindowEvaluation
from app.events import checks
from app.events.checks import SPECS, check_event
from app.outputs.cloudevents import (
    ALERT_FIRING,
    EVALUATION,
    alert_event,
    evaluation_event,
    stable_id,
    window_id,
)
from app.outputs.performance import (
    concept_alert_event,
    performance_alert_event,
    performance_evaluation_event,
)
from app.performance.tracker import ConceptDetection, PerformanceEvaluation, checkpoint_delays
from app.policy.alerts import AlertBook, alert_key
from app.policy.drift import AlertDecision, decide_drift_alerts
from app.policy.performance import PerformanceDecision, decide_coverage, decide_performance
from app.policy.routing import EpisodePolicy
from app.settings import DriftSettings, ModelSettings, PerformanceMetric

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = ROOT / "schemas"
EXAMPLES = SCHEMAS / "examples"
SOURCE = "/driftwarden/driftwarden"

# schema file stem -> (example file, spec name in app.events.checks.SPECS or None)
CONTRACT: dict[str, tuple[str, str | None]] = {
    "prediction": ("prediction.json", "prediction"),
    "outcome": ("outcome.json", "outcome"),
    "input": ("input.json", "input"),
    "model-event": ("model-event.json", "model_event"),
    "alert": ("alert.json", None),
    "retrain-trigger": ("retrain-trigger.json", None),
    "evaluation": ("evaluation.json", None),
}
INPUTS = [stem for stem, (_, spec) in CONTRACT.items() if spec is not None]
# Further examples of a schema: example file -> schema file stem.
MORE_EXAMPLES: dict[str, str] = {
    "evaluation-performance.json": "evaluation",
    "alert-performance.json": "alert",
    "alert-resolved.json": "alert",
}
EXAMPLE_FILES: dict[str, str] = {
    **{example: stem for stem, (example, _) in CONTRACT.items()}, **MORE_EXAMPLES}
# The examples that are exactly what a builder produces (see build_examples).
BUILT = ["alert.json", "evaluation.json", "alert-performance.json",
         "evaluation-performance.json", "alert-resolved.json"]


def load_schema(stem: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{stem}.schema.json").read_text(encoding="utf-8"))


def load_example(stem: str) -> Any:
    return load_example_file(CONTRACT[stem][0])


def load_example_file(name: str) -> Any:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def validator(stem: str) -> Draft202012Validator:
    # Formats asserted too: the output schemas annotate their times as date-time.
    return Draft202012Validator(load_schema(stem), format_checker=FormatChecker())


def errors(stem: str, doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator(stem).iter_errors(doc)]


def as_published(payload: dict[str, Any]) -> Any:
    """The payload as a consumer reads it: serialised the way the worker does (orjson)."""
    return orjson.loads(orjson.dumps(payload))


# --- a realistic closed window -------------------------------------------------------

WINDOW_START = 1_714_557_600_000  # 2024-05-01T10:00:00Z
WINDOW_END = WINDOW_START + 3_600_000


def example_model() -> ModelSettings:
    return ModelSettings.model_validate({
        "owners": {"monitoring": "ml-platform", "on_call": "churn-oncall", "data": "data-eng"},
        "features": {
            "tenure_months": {"type": "numeric", "source": "crm", "range": [0, 600]},
            "plan": {"type": "categorical", "source": "billing", "values": ["free", "pro", "team"]},
            "monthly_charges": {"type": "numeric", "source": "billing"},
            "support_tier": {"type": "categorical", "source": "crm"},
        },
        "reference": {"file": "data/churn_train.parquet"},
        "drift": {"statistic": "psi", "warning": 0.1, "critical": 0.25},
        "performance": {"baseline": 0.88, "max_drop": 0.03, "min_labels": 200,
                        "label_horizon": "7d", "after": ["0s", "1h", "1d"],
                        "min_coverage": 0.5, "coverage_after": "1d"},
    })


def example_window() -> WindowEvaluation:
    features = [
        FeatureEvaluation("tenure_months", "numeric", "psi", 0.3127, 1480, 20, 50_000,
                          "mean 24.1", "mean 31.7", None, 1.2e-41, 3.6e-41,
                          {"psi": 0.3127, "jensen_shannon": 0.151, "hellinger": 0.139,
                           "chi2": 0.18, "ks": 0.19, "wasserstein": 0.42}),
        FeatureEvaluation("plan", "categorical", "psi", 0.1342, 1500, 0, 50_000,
                          "pro 30%", "pro 41%", None, 3.3e-17, 4.95e-17,
                          {"psi": 0.1342, "jensen_shannon": 0.12, "hellinger": 0.11,
                           "chi2": 0.13, "unseen_rate": 0.0}),
        FeatureEvaluation("monthly_charges", "numeric", "psi", 0.0213, 1497, 3, 50_000,
                          "mean 64.2", "mean 65", None, 0.21, 0.21,
                          {"psi": 0.0213, "ks": 0.03, "wasserstein": 0.04}),
        FeatureEvaluation("support_tier", "unknown", "psi", None, 0, 0, 50_000, "", "",
                          "feature not sketched in this window"),
    ]
    return WindowEvaluation("churn", "2024-05-01.3", {"2024-05-01.3": 1412, "2024-04-17.1": 88},
                            WINDOW_START, WINDOW_END, 1412, 200, 12, "file:churn_train.parquet",
                            reference_version="2024-04-17.1", fallback=True, features=features)


def example_decisions(ev: WindowEvaluation) -> list[AlertDecision]:
    return decide_drift_alerts(ev, example_model().drift)


# The same window's performance one day after its end: 74% of its 1412 predictions of
# version 2024-05-01.3 are labelled; accuracy 0.81 is under the configured 0.88 - 0.03.
PERF_AFTER_MS = 86_400_000
TP, FP, FN, TN = 150, 77, 122, 696  # positive class "1": the customer churned


def example_performance_decision() -> PerformanceDecision:
    return PerformanceDecision(
        "performance_drop", "warning", "accuracy", 0.8096, 0.85, 0.88,
        "accuracy 0.810 (95% interval 0.785..0.832, n=1045) is below 0.850: baseline 0.880 "
        "- allowed 0.03")


def example_performance(decisions: list[PerformanceDecision] | None = None,
                        **changes: Any) -> PerformanceEvaluation:
    delays = checkpoint_delays(example_model().performance, WINDOW_END - WINDOW_START)
    predictions, labelled = 1412, TP + FP + FN + TN
    fields: dict[str, Any] = dict(
        model="churn", model_version="2024-05-01.3", start_ms=WINDOW_START,
        end_ms=WINDOW_END, checkpoint=delays.index(PERF_AFTER_MS), after_ms=PERF_AFTER_MS,
        final=False, predictions=predictions, labelled=labelled, new_labels=633,
        coverage=labelled / predictions,
        delay_quantiles={"p50": 20_160.0, "p90": 61_920.0, "p99": 83_520.0},
        figures={"accuracy": 0.8096, "accuracy_low": 0.7846, "accuracy_high": 0.8322,
                 "precision": 0.6608, "precision_low": 0.597, "precision_high": 0.7193,
                 "recall": 0.5515, "recall_low": 0.4921, "recall_high": 0.6095,
                 "f1": 0.6012, "f1_low": 0.5576, "f1_high": 0.6432,
                 "macro_f1": 0.7381, "macro_f1_low": 0.7077, "macro_f1_high": 0.7668,
                 "log_loss": 0.4312, "log_loss_low": 0.4105, "log_loss_high": 0.4519,
                 "roc_auc": 0.8527, "roc_auc_low": 0.8262, "roc_auc_high": 0.8792,
                 "roc_auc_error": 0.0012},
        metric="accuracy", value=0.8096, interval=(0.7846, 0.8322), baseline=0.88,
        baseline_source="configured", min_labels=200,
        decisions=[example_performance_decision()] if decisions is None else decisions)
    fields.update(changes)
    return PerformanceEvaluation(**fields)


def build_examples() -> dict[str, dict[str, Any]]:
    """The alert and evaluation examples by file name, straight from the builders."""
    ev = example_window()
    decisions = example_decisions(ev)
    perf = example_performance()
    return {
        "alert.json": alert_event(decisions[0], ev, example_model(), source=SOURCE),
        "evaluation.json": evaluation_event(ev, decisions, source=SOURCE),
        "alert-performance.json": performance_alert_event(
            perf.decisions[0], perf, example_model(), source=SOURCE),
        "evaluation-performance.json": performance_evaluation_event(perf, source=SOURCE),
        "alert-resolved.json": example_resolution(ev, decisions[0]),
    }


def example_resolution(ev: WindowEvaluation, decision: AlertDecision) -> dict[str, Any]:
    """The alert lifecycle's end: the example's problem, bad for two windows (so it fires
    with fire_after 2), then good for two (so it resolves with resolve_after 2)."""
    hour = WINDOW_END - WINDOW_START
    p = EpisodePolicy(fire_after=2, resolve_after=2)
    book = AlertBook("churn", lambda kind: p)
    key = ""
    for i in range(4):
        start = WINDOW_START + (i - 1) * hour
        window = replace(ev, start_ms=start, end_ms=start + hour)
        candidate = alert_event(decision, window, example_model(), source=SOURCE)
        key = alert_key(candidate["data"])
        published, _ = book.window(start + hour, start, [candidate] if i < 2 else [], [key])
    assert [e["data"]["status"] for e in published] == ["resolved"]
    return published[0]


# --- the schemas themselves ----------------------------------------------------------

def test_every_schema_file_is_in_the_contract_and_has_an_example():
    stems = {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")}
    assert stems == set(CONTRACT)
    examples = {p.name for p in EXAMPLES.glob("*.json")}
    assert examples == set(EXAMPLE_FILES)
    assert set(BUILT) <= examples


@pytest.mark.parametrize("stem", CONTRACT)
def test_schema_is_a_valid_2020_12_schema(stem):
    schema = load_schema(stem)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://driftwarden.io/schemas/{stem}.schema.json"
    assert schema["title"] and schema["description"]
    Draft202012Validator.check_schema(schema)


def _properties(node: Any, path: str = "#") -> list[tuple[str, Any]]:
    """Every (path, subschema) under a ``properties`` keyword, recursively."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, sub in node.items():
            if key == "properties" and isinstance(sub, dict):
                found += [(f"{path}/properties/{k}", v) for k, v in sub.items()]
            found += _properties(sub, f"{path}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            found += _properties(sub, f"{path}/{i}")
    return found


@pytest.mark.parametrize("stem", CONTRACT)
def test_every_property_has_a_description(stem):
    schema = load_schema(stem)
    # Properties inside if/then only narrow a property described elsewhere.
    undocumented = [path for path, sub in _properties(schema)
                    if "/allOf/" not in path and not sub.get("description")]
    assert undocumented == []


@pytest.mark.parametrize("stem", INPUTS)
def test_input_schemas_use_the_runtime_patterns(stem):
    defs = load_schema(stem)["$defs"]
    assert defs["name"]["pattern"] == checks.NAME_PATTERN
    assert defs["timestamp"]["anyOf"][0]["pattern"] == checks.RFC3339_PATTERN


def test_prediction_schema_limits_match_the_runtime():
    schema = load_schema("prediction")
    assert schema["properties"]["features"]["maxProperties"] == checks.MAX_FEATURES
    kinds = load_schema("model-event")["properties"]["event"]["enum"]
    assert set(kinds) == checks.MODEL_EVENT_KINDS


@pytest.mark.parametrize("stem", ["alert", "retrain-trigger", "evaluation"])
def test_output_schemas_use_the_runtime_date_time_pattern(stem):
    assert load_schema(stem)["$defs"]["datetime"]["pattern"] == checks.RFC3339_PATTERN


# --- the examples --------------------------------------------------------------------

@pytest.mark.parametrize("example", EXAMPLE_FILES)
def test_example_validates_against_its_schema(example):
    assert errors(EXAMPLE_FILES[example], load_example_file(example)) == []


@pytest.mark.parametrize("stem", INPUTS)
def test_input_example_is_accepted_by_the_runtime_checks(stem):
    spec = SPECS[CONTRACT[stem][1]]
    assert check_event(spec, load_example(stem)) is None


@pytest.mark.parametrize("stem", INPUTS)
def test_input_example_as_an_array_is_accepted_by_the_runtime_checks(stem):
    from app.events.decode import decode_message

    doc = load_example(stem)
    value = json.dumps([doc, doc]).encode()
    decoded = decode_message(value, SPECS[CONTRACT[stem][1]], max_bytes=1 << 20,
                             max_elements=10)
    assert decoded.rejections == [] and decoded.positions == [0, 1]
    assert decoded.events == [doc, doc]


def test_examples_that_reference_each_other_agree():
    alert = load_example("alert")
    trigger = load_example("retrain-trigger")
    assert alert["data"]["alert_id"] in {r["alert_id"] for r in trigger["data"]["reasons"]}
    assert trigger["data"]["model"] == alert["data"]["model"] == load_example("prediction")["model"]
    lifecycle = load_example("model-event")
    assert lifecycle["trigger_id"] == trigger["data"]["trigger_id"]


def test_performance_examples_refer_to_the_drift_evaluation_of_their_window():
    drift = load_example("evaluation")["data"]
    perf = load_example_file("evaluation-performance.json")["data"]
    alert = load_example_file("alert-performance.json")["data"]
    assert (drift["kind"], perf["kind"]) == ("drift", "performance")
    assert perf["window_id"] == drift["window_id"] == alert["evidence"]["window_id"]
    assert perf["window"] == drift["window"]
    assert perf["model_version"] == drift["model_version"] == alert["model_version"]
    assert perf["predictions"] == drift["versions"][perf["model_version"]]
    assert perf["alerts"] == [alert["alert_id"]]
    assert alert["kind"] == "performance_drop" and alert["evidence"]["after"] == perf["after"]


def test_performance_example_decision_is_what_the_policy_decides():
    perf = example_model().performance
    ev = example_performance()
    assert ev.value == ev.figures["accuracy"]
    assert ev.interval == (ev.figures["accuracy_low"], ev.figures["accuracy_high"])
    assert ev.coverage is not None and round(ev.coverage, 2) == 0.74
    decided = decide_performance(ev.metric, ev.value, ev.interval, perf.baseline,
                                 perf.max_drop, n=ev.labelled, min_labels=perf.min_labels)
    assert decided == example_performance_decision()
    # 74% labelled is above the example's coverage floor: no label_coverage alert.
    assert decide_coverage(ev.coverage, perf.min_coverage, ev.after_ms) is None


@pytest.mark.parametrize("example", BUILT)
def test_output_example_is_exactly_what_the_builder_produces(example):
    built = as_published(build_examples()[example])
    assert built == load_example_file(example), (
        f"schemas/examples/{example} is stale; regenerate it with "
        "`.venv/bin/python -m tests.unit.events.test_schemas`")


# --- the builders against the output schemas -----------------------------------------

def test_alert_builder_output_validates():
    ev = example_window()
    decisions = example_decisions(ev)
    assert [(d.subject, d.severity) for d in decisions] == [
        ("tenure_months", "critical"), ("plan", "warning")]
    for d in decisions:
        payload = as_published(alert_event(d, ev, example_model(), source=SOURCE))
        assert errors("alert", payload) == []
        assert payload["type"] == ALERT_FIRING
        assert payload["id"] == payload["data"]["alert_id"]
        assert payload["data"]["feature"] == d.subject
        assert payload["subject"] == f"churn/{d.subject}"
        assert payload["data"]["window"] == {"start": "2024-05-01T10:00:00.000Z",
                                             "end": "2024-05-01T11:00:00.000Z"}


def test_alert_builder_output_validates_without_version_or_owners():
    ev = WindowEvaluation("churn", "v1", {}, 0, 60_000, 300, 200, 0, "warmup:1000", features=[
        FeatureEvaluation("x", "numeric", "psi", 2.5, 300, 0, 1000, "mean 0", "mean 1.1",
                          None, 1e-30, 1e-30)])
    model = ModelSettings.model_validate({"features": {"x": {"type": "numeric"}},
                                          "reference": {"warmup": 1000}})
    (d,) = decide_drift_alerts(ev, DriftSettings())
    payload = as_published(alert_event(d, ev, model, source=SOURCE))
    assert errors("alert", payload) == []
    assert payload["data"]["model_version"] == "v1" and payload["data"]["owners"] == {}


def test_evaluation_builder_output_validates():
    ev = example_window()
    decisions = example_decisions(ev)
    payload = as_published(evaluation_event(ev, decisions, source=SOURCE))
    assert errors("evaluation", payload) == []
    assert payload["type"] == EVALUATION
    assert payload["data"]["alerts"] == [
        stable_id("churn", ev.model_version, "feature_drift", d.subject, WINDOW_START)
        for d in decisions]
    assert payload["data"]["sufficient"] is True
    assert payload["data"]["kind"] == "drift"
    assert payload["data"]["window_id"] == window_id("churn", ev.model_version, WINDOW_START)


def test_evaluation_builder_output_validates_for_an_empty_window():
    ev = WindowEvaluation("churn", "v1", {}, 0, 60_000, 0, 200, 0, "warmup:1000")
    payload = as_published(evaluation_event(ev, [], source=SOURCE))
    assert errors("evaluation", payload) == []
    assert payload["data"]["sufficient"] is False


def test_builders_on_a_window_closed_by_the_real_pipeline_validate():
    """The full path: events -> window -> evaluation -> decisions -> CloudEvents."""
    from app.core.monitor import ModelMonitor
    from app.reference import build_reference
    from app.settings import settings_from_mapping

    settings = settings_from_mapping({
        "defaults": {"window": "1m", "lateness": "10s", "min_samples": 100},
        "models": {"m": {
            "owners": {"on_call": "m-oncall"},
            "features": {"x": {"type": "numeric"}, "c": {"type": "categorical"}},
            "reference": {"file": "given.jsonl"}}}}, env={})
    rng = np.random.default_rng(7)

    def rows(n: int, shift: bool) -> list[dict[str, Any]]:
        x = rng.normal(1.5 if shift else 0.0, 1, n)
        c = rng.choice(["a", "b", "c"], n, p=(0.1, 0.2, 0.7) if shift else (0.5, 0.3, 0.2))
        return [{"x": float(x[i]), "c": str(c[i])} for i in range(n)]

    reference = build_reference(rows(3000, False), "m", settings.models["m"], origin="test")
    monitor = ModelMonitor("m", settings, reference)
    events = [{"model": "m", "model_version": "v1", "features": f, "prediction": 1}
              for f in rows(2000, True)]
    monitor.ingest(events, [10] * len(events), now=0.0)
    monitor.ingest(events[:1], [120_000], now=0.0)
    assert monitor.due(now=0.0)[0] == 0
    ev = monitor.begin_close(0)[0]
    decisions = decide_drift_alerts(ev, settings.models["m"].drift)
    assert decisions, "a shifted window should alert"
    for d in decisions:
        payload = as_published(alert_event(d, ev, settings.models["m"], source=SOURCE))
        assert errors("alert", payload) == []
    payload = as_published(evaluation_event(ev, decisions, source=SOURCE))
    assert errors("evaluation", payload) == []


def test_performance_evaluation_builder_output_validates():
    ev = example_performance()
    payload = as_published(performance_evaluation_event(ev, source=SOURCE))
    assert errors("evaluation", payload) == []
    data = payload["data"]
    assert payload["type"] == EVALUATION and payload["id"] == data["evaluation_id"]
    assert payload["time"] == "2024-05-02T11:00:00.000Z"  # the checkpoint: end + 1d
    assert (data["kind"], data["revision"], data["after"], data["final"]) == (
        "performance", 2, "1d", False)
    assert data["window_id"] == window_id("churn", "2024-05-01.3", WINDOW_START)
    assert data["performance"]["interval"] == [0.7846, 0.8322]
    assert data["performance"]["sufficient"] is True
    assert data["alerts"] == [stable_id("churn", "2024-05-01.3", "performance_drop",
                                        "accuracy", WINDOW_START)]


def test_revisions_of_a_window_share_its_window_id():
    early = as_published(performance_evaluation_event(
        example_performance([], checkpoint=0, after_ms=0), source=SOURCE))
    late = as_published(performance_evaluation_event(example_performance(), source=SOURCE))
    assert early["data"]["window_id"] == late["data"]["window_id"]
    assert early["id"] != late["id"]
    assert (early["data"]["revision"], early["data"]["after"]) == (0, "0s")
    assert errors("evaluation", early) == []


@pytest.mark.parametrize("changes", [
    # A window of the version without labels yet, and no baseline yet.
    dict(labelled=0, new_labels=0, coverage=0.0, delay_quantiles=None,
         figures={"accuracy": None}, value=None, interval=None, baseline=None,
         baseline_source=None, decisions=[]),
    # No predictions of the version in the window.
    dict(predictions=0, labelled=0, new_labels=0, coverage=None, delay_quantiles=None,
         figures={"accuracy": None}, value=None, interval=None, decisions=[]),
    # The last checkpoint, against a baseline learned on an earlier version.
    dict(checkpoint=3, after_ms=7 * 86_400_000, final=True, baseline=0.87,
         baseline_source="learned:2024-04-17.1", decisions=[]),
    dict(baseline_source="model_event"),
    dict(baseline_source="learned"),
])
def test_performance_evaluation_builder_output_validates_in_other_states(changes):
    payload = as_published(performance_evaluation_event(example_performance(**changes),
                                                        source=SOURCE))
    assert errors("evaluation", payload) == []


def test_performance_alert_builder_output_validates():
    ev = example_performance()
    payload = as_published(performance_alert_event(ev.decisions[0], ev, example_model(),
                                                   source=SOURCE))
    assert errors("alert", payload) == []
    data = payload["data"]
    assert payload["type"] == ALERT_FIRING and payload["id"] == data["alert_id"]
    assert payload["subject"] == "churn/accuracy"
    assert (data["kind"], data["severity"], data["feature"]) == (
        "performance_drop", "warning", "accuracy")
    assert data["evidence"]["reference_value"] == 0.88
    assert data["evidence"]["interval"] == [0.7846, 0.8322]
    assert data["window"] == {"start": "2024-05-01T10:00:00.000Z",
                              "end": "2024-05-01T11:00:00.000Z"}


def test_label_coverage_alert_builder_output_validates():
    ev = example_performance(labelled=353, coverage=353 / 1412)
    d = decide_coverage(ev.coverage, 0.5, ev.after_ms)
    assert d is not None and (d.kind, d.severity) == ("label_coverage", "warning")
    ev = example_performance([d], labelled=353, coverage=353 / 1412)
    payload = as_published(performance_alert_event(d, ev, example_model(), source=SOURCE))
    assert errors("alert", payload) == []
    assert payload["data"]["kind"] == "label_coverage"
    assert payload["data"]["labels"]["alertname"] == "driftwarden_label_coverage"
    assert payload["data"]["evidence"]["interval"] is None
    assert payload["data"]["evidence"]["reference_value"] == 0.5
    evaluation = as_published(performance_evaluation_event(ev, source=SOURCE))
    assert errors("evaluation", evaluation) == []
    assert evaluation["data"]["alerts"] == [payload["id"]]


@pytest.mark.parametrize("before_mean", [0.118, None])
def test_concept_alert_builder_output_validates(before_mean):
    detected_ms = WINDOW_START + 2_460_000  # 10:41
    det = ConceptDetection("2024-05-01.3", "hddm_a", "error",
                           "hddm_a:error:drift_confidence=0.0001", 6210, detected_ms,
                           before_mean, 0.231, "warning")
    payload = as_published(concept_alert_event(det, "churn", example_model(),
                                               WINDOW_END - WINDOW_START, source=SOURCE))
    assert errors("alert", payload) == []
    data = payload["data"]
    assert (data["kind"], data["feature"], data["model_version"]) == (
        "concept_drift", "error", "2024-05-01.3")
    assert data["evidence"]["reference_value"] == before_mean
    assert data["evidence"]["detected_at"] == "2024-05-01T10:41:00.000Z"
    assert data["window"] == {"start": "2024-05-01T10:00:00.000Z",
                              "end": "2024-05-01T11:00:00.000Z"}


@pytest.mark.parametrize("baseline", [0.88, None])
def test_performance_outputs_of_the_real_pipeline_validate(tmp_path, baseline):
    """The full path: predictions and late labels -> replay -> evaluations and alerts."""
    from app.demo.labelled import labelled_stream
    from app.replay import run_replay
    from app.settings import settings_from_mapping

    hour = 3_600_000
    settings = settings_from_mapping({
        "defaults": {"window": "1h", "lateness": "5m", "min_samples": 100},
        "models": {"churn": {
            "features": {"tenure": {"type": "numeric"}}, "reference": {"warmup": 200},
            "prediction_drift": False,
            "performance": {"baseline": baseline, "max_drop": 0.03, "min_labels": 200,
                            "label_horizon": "2d", "min_coverage": 0.9}}}})
    preds, outs = labelled_stream(seed=11, windows=12, per_window=500, window_ms=hour,
                                  t0=WINDOW_START, accuracy=lambda w: 0.88 if w < 5 else 0.75,
                                  delay_ms=24 * hour, jitter_ms=hour)
    outs = outs[:len(outs) * 2 // 3]  # the labels stop: label_coverage
    for name, events in (("p.jsonl", preds), ("o.jsonl", outs)):
        (tmp_path / name).write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    run_replay(settings, tmp_path / "p.jsonl", tmp_path / "out",
               outcomes=tmp_path / "o.jsonl", progress=False)

    def read(name: str) -> list[dict[str, Any]]:
        return [orjson.loads(x) for x in (tmp_path / "out" / name).read_bytes().splitlines()]

    evaluations, alerts = read("evaluations.jsonl"), read("alerts.jsonl")
    assert {e["data"]["kind"] for e in evaluations} == {"drift", "performance"}
    assert {a["data"]["kind"] for a in alerts} >= {
        "performance_drop", "label_coverage", "concept_drift"}
    assert [errors("evaluation", e) for e in evaluations if errors("evaluation", e)] == []
    assert [errors("alert", a) for a in alerts if errors("alert", a)] == []


def test_evaluation_schema_metrics_match_the_runtime():
    schema = load_schema("evaluation")
    perf = schema["$defs"]["performance_evaluation"]["properties"]["performance"]
    assert set(perf["properties"]["metric"]["enum"]) == set(get_args(PerformanceMetric))
    assert set(schema["properties"]["data"]["properties"]["kind"]["enum"]) == {
        "drift", "performance", "source"}


# --- the schemas reject what they should ---------------------------------------------

def test_alert_schema_rejects_a_status_that_contradicts_the_type():
    alert = load_example("alert")
    alert["data"]["status"] = "resolved"
    assert errors("alert", alert)
    alert["type"] = "io.driftwarden.alert.resolved"
    assert errors("alert", alert)  # a resolved alert has an endsAt
    alert["data"]["endsAt"] = "2024-05-01T13:00:00.000Z"
    assert errors("alert", alert) == []


@pytest.mark.parametrize(("path", "value"), [
    (("data", "severity"), "info"),
    (("data", "kind"), "vibes"),
    (("data", "labels", "severity"), 2),
    (("data", "evidence", "n"), -1),
    (("data", "window", "start"), "2024-05-01"),
    (("specversion",), "0.3"),
    (("datacontenttype",), "text/plain"),
])
def test_alert_schema_rejects_bad_fields(path, value):
    alert = load_example("alert")
    node = alert
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert errors("alert", alert)


@pytest.mark.parametrize(("example", "path", "value"), [
    ("evaluation.json", ("data", "kind"), "vibes"),
    ("evaluation.json", ("data", "kind"), "performance"),  # drift fields, wrong kind
    ("evaluation.json", ("data", "window_id"), "not-a-window-id"),
    ("evaluation-performance.json", ("data", "kind"), "drift"),
    ("evaluation-performance.json", ("data", "revision"), -1),
    ("evaluation-performance.json", ("data", "after"), "one day"),
    ("evaluation-performance.json", ("data", "label_coverage"), 1.5),
    ("evaluation-performance.json", ("data", "label_delay_seconds"), {"p50": 1.0}),
    ("evaluation-performance.json", ("data", "performance", "metric"), "vibes"),
    ("evaluation-performance.json", ("data", "performance", "interval"), [0.7, 0.8, 0.9]),
    ("evaluation-performance.json", ("data", "performance", "baseline_source"), "guessed"),
    ("evaluation-performance.json", ("data", "performance", "figures", "accuracy"), "81%"),
    ("alert-performance.json", ("data", "evidence", "interval"), [0.7]),
    ("alert-performance.json", ("data", "evidence", "window_id"), "w1"),
    ("alert-performance.json", ("data", "evidence", "label_coverage"), -0.1),
])
def test_schemas_reject_bad_evaluation_and_performance_fields(example, path, value):
    doc = load_example_file(example)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert errors(EXAMPLE_FILES[example], doc)


@pytest.mark.parametrize(("example", "field"), [
    ("evaluation.json", "kind"),
    ("evaluation.json", "window_id"),
    ("evaluation.json", "features"),
    *[("evaluation-performance.json", f) for f in (
        "kind", "window_id", "revision", "after", "final", "predictions", "labelled",
        "new_labels", "label_coverage", "label_delay_seconds", "performance", "alerts")],
])
def test_evaluation_schema_requires_the_fields_of_its_kind(example, field):
    doc = load_example_file(example)
    del doc["data"][field]
    assert errors("evaluation", doc)


def test_retrain_trigger_schema_requires_reasons_and_policy():
    trigger = load_example("retrain-trigger")
    trigger["data"]["reasons"] = []
    assert errors("retrain-trigger", trigger)
    trigger = load_example("retrain-trigger")
    del trigger["data"]["policy"]["cooldown_until"]
    assert errors("retrain-trigger", trigger)
    trigger = load_example("retrain-trigger")
    trigger["data"]["policy"] = {"cooldown_until": None, "last_retrain": None}
    assert errors("retrain-trigger", trigger) == []


if __name__ == "__main__":
    for name, payload in build_examples().items():
        path = EXAMPLES / name
        path.write_text(json.dumps(as_published(payload), indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
