"""``driftwarden plan``: the operating plan of each model, and its gaps."""

import json
import textwrap
import time

import pytest

from app.broker import free_port
from app.cli import main
from app.plan import NO_BROKER, LastRetrain, build_plan, find_gaps, render_text
from app.settings import load_settings

FULL = """
defaults: {window: 1h, lateness: 5m, min_samples: 200}
sources:
  crm:     {owner: data-eng, freshness: 15m, volume: {expected: 5000}}
  billing: {owner: payments-data, freshness: 1h}
models:
  churn:
    owners: {monitoring: ml-platform, on_call: churn-oncall, data: data-eng}
    features:
      tenure_months:   {type: numeric, source: crm, range: [0, 600]}
      monthly_charges: {type: numeric, source: billing}
      plan:            {type: categorical, source: billing, values: [free, pro, team]}
    reference: {warmup: 5000}
    drift: {statistic: psi, warning: 0.07, critical: 0.3, fdr: 0.01}
    change_detectors:
      - {signal: feature.tenure_months, detector: page_hinkley, severity: critical}
    performance:
      metric: accuracy
      baseline: 0.88
      max_drop: 0.03
      min_labels: 300
      label_horizon: 14d
      after: [0s, 1d, 3d]
      min_coverage: 0.5
      coverage_after: 3d
    quality: {max_null_rate: 0.02}
    freshness: 30m
    retrain:
      "on": [feature_drift, performance_drop, concept_drift]
      cooldown: 24h
      max_age: 30d
      expected_duration: 6h
  upsell:
    owners: {on_call: growth-oncall}
    task: regression
    features:
      plan: {type: categorical, source: billing}
    reference: {warmup: 1000}
    performance: {metric: mae, max_drop: 2.5}
    freshness: 1h
    retrain: {"on": [performance_drop], max_age: 14d}
"""

# No owner for alerts, no label source, a source without an owner or freshness SLO, a
# feature without a source, no retrain policy, no model freshness.
GAPPY = """
sources:
  crm: {}
models:
  churn:
    owners: {data: data-eng}
    features:
      tenure_months: {type: numeric, source: crm}
      plan: {type: categorical}
    reference: {warmup: 500}
"""


@pytest.fixture(autouse=True)
def _no_env_bootstrap(monkeypatch):
    monkeypatch.delenv("DRIFTWARDEN_BOOTSTRAP", raising=False)


def write(tmp_path, text, name="monitor.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def run(capsys, *argv):
    code = main(["plan", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_text_answers_the_three_questions(tmp_path, capsys):
    code, out, _ = run(capsys, "-c", write(tmp_path, FULL))
    assert code == 0
    # 1. monitored how, who is alerted
    for owner in ("ml-platform", "churn-oncall", "data-eng", "growth-oncall"):
        assert owner in out
    assert "psi" in out and "0.07" in out and "0.3" in out and "fdr 0.01" in out
    assert "page_hinkley" in out and "feature.tenure_months" in out
    assert "max_null_rate" not in out and "null          0.02" in out
    assert "accuracy from labels on mlmon.outcomes" in out
    assert "0.88 (configured)" in out
    assert "below 0.85 (critical: below 0.82), with 300+ labels" in out
    assert "0s, 1d, 3d, 14d after each window" in out
    assert "label_coverage under 50% labelled 3d after the window" in out
    assert "hddm_a" in out  # the default concept-drift detectors
    assert "model_silent after 30m" in out
    # the regression model's baseline comes from model events or is learned
    assert "'mae' of the version's deployed or retrain_completed event metrics" in out
    assert "above baseline + 2.5" in out
    # 2. sources with owners, SLOs and volume; billing is shared by both models
    lines = out.splitlines()
    crm = next(line for line in lines if line.strip().startswith("crm "))
    assert "data-eng" in crm and "15m" in crm and "5000/window" in crm
    billing = [line for line in lines if line.strip().startswith("billing ")]
    assert len(billing) == 2
    assert "payments-data" in billing[0] and "1h" in billing[0] and "upsell" in billing[0]
    assert "monthly_charges, plan" in billing[0] and billing[1].rstrip().endswith("churn")
    # 3. retrain policy, rollback, last retrain
    assert "feature_drift, performance_drop, concept_drift" in out
    assert "cooldown          1d" in out and "30d (then retrain_overdue)" in out
    assert "6h (then retrain_stuck)" in out
    assert ("rollback advice after a deploy: the new version's outputs against the previous "
            "version's last 12 windows, in its first 24 windows; accuracy of each window "
            "against the previous version's pooled figure") in out
    assert "not checked (no broker configured" in out
    assert out.count("Gaps: none") == 2 and "2 model(s), 0 gap(s)" in out


def test_complete_config_passes_strict(tmp_path, capsys):
    code, _, _ = run(capsys, "-c", write(tmp_path, FULL), "--strict")
    assert code == 0


def test_json_has_the_sections(tmp_path, capsys):
    code, out, _ = run(capsys, "-c", write(tmp_path, FULL), "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["gap_count"] == 0 and set(doc["models"]) == {"churn", "upsell"}
    churn = doc["models"]["churn"]
    mon = churn["monitoring"]
    assert mon["owners"] == {"monitoring": "ml-platform", "on_call": "churn-oncall",
                             "data": "data-eng"}
    assert {"statistic": "psi", "applies_to": "numeric signals", "warning": 0.07,
            "critical": 0.3} in mon["drift"]["thresholds"]
    perf = mon["performance"]
    assert perf["baseline"] == 0.88 and perf["warning_bound"] == 0.85
    assert perf["checkpoints"] == [0, 86400, 3 * 86400, 14 * 86400]
    assert mon["freshness"] == {"model_silent": 1800}
    sources = {s["name"]: s for s in churn["dependencies"]["sources"]}
    assert sources["crm"]["owner"] == "data-eng" and sources["crm"]["freshness"] == 900
    assert sources["billing"]["shared_with"] == ["upsell"]
    retrain = churn["degradation"]["retrain"]
    assert retrain["on"] == ["feature_drift", "performance_drop", "concept_drift"]
    assert retrain["max_age"] == 30 * 86400
    assert churn["degradation"]["last_retrain"]["status"] == "not_checked"


def test_strict_names_missing_owner_and_label_source(tmp_path, capsys):
    code, out, _ = run(capsys, "-c", write(tmp_path, GAPPY), "--strict")
    assert code == 1
    assert "no_alert_owner" in out and "no owner for its alerts" in out
    assert "no_label_source" in out and "no label source" in out
    assert "source_without_owner" in out and "source 'crm'" in out
    assert "source_without_freshness" in out
    assert "feature_without_source" in out and "plan" in out
    assert "no_retrain_policy" in out and "no_model_freshness" in out
    assert "1 model(s), 7 gap(s)" in out
    # without --strict the same plan exits 0
    code, _, _ = run(capsys, "-c", write(tmp_path, GAPPY))
    assert code == 0


def test_json_lists_the_gaps(tmp_path, capsys):
    code, out, _ = run(capsys, "-c", write(tmp_path, GAPPY), "--format", "json", "--strict")
    assert code == 1
    doc = json.loads(out)
    gaps = doc["models"]["churn"]["gaps"]
    assert {g["code"] for g in gaps} == {
        "no_alert_owner", "no_label_source", "source_without_owner",
        "source_without_freshness", "feature_without_source", "no_retrain_policy",
        "no_model_freshness"} and doc["gap_count"] == len(gaps) == 7
    assert all(g["message"] for g in gaps)
    assert doc["models"]["churn"]["monitoring"]["performance"] is None
    assert doc["models"]["churn"]["dependencies"]["unsourced_features"] == ["plan"]


def test_retrain_on_a_kind_never_raised_and_a_missing_reference_file(tmp_path):
    text = FULL.replace("reference: {warmup: 1000}", "reference: {file: nowhere.parquet}")
    text = text.replace('retrain: {"on": [performance_drop], max_age: 14d}',
                        'retrain: {"on": [label_coverage, model_silent]}')
    settings = load_settings(write(tmp_path, text), env={})
    gaps = find_gaps(settings, "upsell")
    codes = [(g.code, g.subject) for g in gaps]
    assert ("no_reference", "nowhere.parquet") in codes
    assert ("retrain_trigger_never_fires", "label_coverage") in codes
    assert ("retrain_trigger_never_fires", "model_silent") not in codes  # freshness: 1h
    assert find_gaps(settings, "churn") == []


def test_model_filter_and_unknown_model(tmp_path, capsys):
    path = write(tmp_path, FULL)
    code, out, _ = run(capsys, "-c", path, "--model", "upsell")
    assert code == 0 and "model upsell" in out and "model churn" not in out
    code, out, err = run(capsys, "-c", path, "--model", "nope")
    assert code == 2 and out == ""
    assert "model 'nope' is not in" in err and "churn" in err


def test_config_error_exits_2(tmp_path, capsys):
    code, _, err = run(capsys, "-c", write(tmp_path, "models: {m: {features: {}}}"))
    assert code == 2 and "monitor.yaml" in err and "models.m" in err


def test_no_broker_reachable_is_reported_not_fatal(tmp_path, capsys):
    port = free_port()  # nothing listens on it
    started = time.monotonic()
    code, out, _ = run(capsys, "-c", write(tmp_path, FULL), "--bootstrap",
                       f"127.0.0.1:{port}", "--timeout", "2")
    assert time.monotonic() - started < 5
    assert code == 0
    assert out.count(f"last retrain      {NO_BROKER}") == 2


def test_no_broker_from_config_bootstrap_in_json(tmp_path, capsys):
    text = f"kafka: {{bootstrap: '127.0.0.1:{free_port()}'}}\n" + textwrap.dedent(FULL)
    code, out, _ = run(capsys, "-c", write(tmp_path, text), "--format", "json",
                       "--timeout", "2", "--model", "churn")
    assert code == 0
    last = json.loads(out)["models"]["churn"]["degradation"]["last_retrain"]
    assert last["status"] == "unknown" and last["detail"] == NO_BROKER


def test_last_retrain_found_shows_version_age_and_overdue(tmp_path):
    settings = load_settings(write(tmp_path, FULL), env={})
    now_ms = 1_700_000_000_000
    found = LastRetrain("found", version="v7", timestamp_ms=now_ms - (40 * 86400 + 7200) * 1000,
                        age=40 * 86400 + 7200)
    plan = build_plan(settings, ["churn"], {"churn": found})
    last = plan["models"]["churn"]["degradation"]["last_retrain"]
    assert last["version"] == "v7" and last["overdue"] is True
    text = render_text(plan)
    assert "version v7, 40d 2h ago (2023-10-05T" in text and "older than max_age" in text
