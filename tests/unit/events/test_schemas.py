"""The JSON Schemas in ``schemas/``: well-formed, their examples valid, and the code agrees.

The alert and evaluation examples are exactly what the builders in
``app/outputs/cloudevents.py`` produce for the window built by :func:`example_window`.
After changing a builder, regenerate them from the repository root with::

    .venv/bin/python -m tests.unit.events.test_schemas
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
)
from app.policy.drift import AlertDecision, decide_drift_alerts
from app.settings import DriftSettings, ModelSettings

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


def load_schema(stem: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{stem}.schema.json").read_text(encoding="utf-8"))


def load_example(stem: str) -> Any:
    return json.loads((EXAMPLES / CONTRACT[stem][0]).read_text(encoding="utf-8"))


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


def build_examples() -> dict[str, dict[str, Any]]:
    """The alert and evaluation examples, straight from the builders."""
    ev = example_window()
    decisions = example_decisions(ev)
    return {"alert": alert_event(decisions[0], ev, example_model(), source=SOURCE),
            "evaluation": evaluation_event(ev, decisions, source=SOURCE)}


# --- the schemas themselves ----------------------------------------------------------

def test_every_schema_file_is_in_the_contract_and_has_an_example():
    stems = {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")}
    assert stems == set(CONTRACT)
    examples = {p.name for p in EXAMPLES.glob("*.json")}
    assert examples == {example for example, _ in CONTRACT.values()}


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

@pytest.mark.parametrize("stem", CONTRACT)
def test_example_validates_against_its_schema(stem):
    assert errors(stem, load_example(stem)) == []


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


@pytest.mark.parametrize("stem", ["alert", "evaluation"])
def test_output_example_is_exactly_what_the_builder_produces(stem):
    built = as_published(build_examples()[stem])
    assert built == load_example(stem), (
        f"schemas/examples/{CONTRACT[stem][0]} is stale; regenerate it with "
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
    for stem, payload in build_examples().items():
        path = EXAMPLES / CONTRACT[stem][0]
        path.write_text(json.dumps(as_published(payload), indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
