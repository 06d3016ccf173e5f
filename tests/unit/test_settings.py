import os
import textwrap

import pytest

from app.cli import main
from app.errors import ConfigError
from app.settings import load_settings, settings_from_mapping

GOOD = """
defaults: {window: 1h, lateness: 5m, min_samples: 200}
sources:
  crm: {owner: data-eng, freshness: 15m}
models:
  churn:
    owners: {monitoring: ml-platform, on_call: churn-oncall}
    features:
      tenure_months: {type: numeric, source: crm, range: [0, 600]}
      plan: {type: categorical, values: [free, pro]}
    reference: {warmup: 500}
    drift: {statistic: psi, warning: 0.1, critical: 0.25}
"""


def write(tmp_path, text):
    p = tmp_path / "monitor.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_good_file_loads_into_frozen_settings(tmp_path):
    s = load_settings(write(tmp_path, GOOD), env={})
    assert s.window_of("churn") == 3600 and s.lateness_of("churn") == 300
    assert s.models["churn"].features["tenure_months"].range == (0, 600)
    assert s.kafka.bootstrap is None
    with pytest.raises(Exception, match="frozen"):
        s.defaults.window = 5  # type: ignore[misc]


def test_env_overrides_bootstrap(tmp_path):
    s = load_settings(write(tmp_path, GOOD), env={"DRIFTWARDEN_BOOTSTRAP": "kafka:9092"})
    assert s.kafka.bootstrap == "kafka:9092"


def test_env_overrides_the_metrics_bind_address(tmp_path):
    assert load_settings(write(tmp_path, GOOD), env={}).metrics.host == "127.0.0.1"
    s = load_settings(write(tmp_path, GOOD), env={"DRIFTWARDEN_METRICS_HOST": "0.0.0.0"})
    assert s.metrics.host == "0.0.0.0"


@pytest.mark.parametrize(("patch", "path", "expected"), [
    ("drift: {statistic: psi, warning: high}", "models.churn.drift.warning", "valid number"),
    ("drift: {statistic: psi, warning: 0.3, critical: 0.2}", "models.churn.drift",
     "must be at least warning"),
    ("drift: {warning: 0.3}", "models.churn.drift", "apply to a named statistic"),
    ("drift: {thresholds: {energy: [1, 2]}}", "models.churn.drift", "unknown statistic"),
    ("drift: {statistic: median}", "models.churn.drift.statistic", "wasserstein"),
    ("window: soon", "models.churn.window", "duration"),
    # a bug once: accepted, then every batch failed with OverflowError (window ends are
    # integer milliseconds)
    ("window: 1.0e+30", "models.churn.window", "at most 1000 years"),
    ("reference: {}", "models.churn.reference", "exactly one of 'file' or 'warmup'"),
    ("task: ranking", "models.churn.task", "binary_classification"),
    ("colour: blue", "models.churn.colour", "Extra inputs are not permitted"),
])
def test_errors_name_file_path_and_expectation(tmp_path, patch, path, expected):
    text = GOOD.replace("    drift: {statistic: psi, warning: 0.1, critical: 0.25}",
                        "    " + patch)
    if patch.startswith("reference"):
        text = text.replace("    reference: {warmup: 500}\n", "")
    f = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(f, env={})
    message = str(err.value)
    assert str(f) in message and path in message and expected in message


def test_unknown_source_is_named(tmp_path):
    f = write(tmp_path, GOOD.replace("source: crm", "source: billing"))
    with pytest.raises(ConfigError, match="unknown source 'billing'"):
        load_settings(f, env={})


def test_bad_model_name_and_broken_yaml(tmp_path):
    with pytest.raises(ConfigError, match="must match"):
        settings_from_mapping({"models": {"bad name": {"features": {"a": {"type": "numeric"}},
                                                        "reference": {"warmup": 100}}}})
    f = write(tmp_path, "models: [unclosed")
    with pytest.raises(ConfigError, match=r"line 1.*not valid YAML"):
        load_settings(f)
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_settings(tmp_path / "missing.yaml")


def test_check_config_command(tmp_path, capsys):
    assert main(["check-config", str(write(tmp_path, GOOD))]) == 0
    assert "OK: 1 model(s)" in capsys.readouterr().out
    bad = write(tmp_path, GOOD.replace("min_samples: 200", "min_samples: -3"))
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "defaults.min_samples" in err and "greater than or equal to 1" in err


def test_shipped_example_is_valid():
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "monitor.yaml"
    s = load_settings(example, env={})
    assert "churn" in s.models and s.kafka.bootstrap == "localhost:9092"


def test_default_concept_detectors_are_valid_and_importing_settings_stays_light():
    import subprocess
    import sys

    from app.settings import (
        DEFAULT_CONCEPT_DETECTORS,
        DEFAULT_REGRESSION_DETECTORS,
        ConceptDetectorSettings,
    )

    for d in DEFAULT_CONCEPT_DETECTORS + DEFAULT_REGRESSION_DETECTORS:
        assert ConceptDetectorSettings.model_validate(d.model_dump()) == d
    code = ("import sys, app.streaming; "
            "print(sorted(m for m in ('river', 'pandas', 'scipy', 'sklearn') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"  # heavy imports happen only for models that use them


def test_decode_processes_are_one_where_a_worker_has_two_cpus_unless_set():
    base = {"models": {"m": {"features": {"a": {"type": "numeric"}},
                             "reference": {"warmup": 100}}}}
    worker = settings_from_mapping(base, env={}).worker
    assert worker.decode_processes == "auto"
    assert [worker.decode_process_count(cpus) for cpus in (1, 2, 16)] == [0, 1, 1]
    assert worker.decode_process_count() == (1 if len(os.sched_getaffinity(0)) > 1 else 0)
    for value in (0, 2):
        set_ = settings_from_mapping({**base, "worker": {"decode_processes": value}},
                                     env={}).worker
        assert set_.decode_processes == value and set_.decode_process_count(16) == value
    for bad in (-1, 65, "many"):
        with pytest.raises(ConfigError, match=r"worker\.decode_processes"):
            settings_from_mapping({**base, "worker": {"decode_processes": bad}}, env={})


def test_the_checkpoint_interval_is_a_duration_from_zero_to_ten_minutes():
    base = {"models": {"m": {"features": {"a": {"type": "numeric"}},
                             "reference": {"warmup": 100}}}}
    assert settings_from_mapping(base, env={}).worker.checkpoint_interval == 1.0
    for value, seconds in (("0s", 0.0), ("250ms", 0.25), ("10m", 600.0), (5, 5.0)):
        worker = settings_from_mapping({**base, "worker": {"checkpoint_interval": value}},
                                       env={}).worker
        assert worker.checkpoint_interval == seconds
    for bad in ("-1s", "11m", "often"):
        with pytest.raises(ConfigError, match=r"worker\.checkpoint_interval"):
            settings_from_mapping({**base, "worker": {"checkpoint_interval": bad}}, env={})
