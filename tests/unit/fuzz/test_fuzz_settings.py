"""Fuzzing the monitor-file loader: a bad file is a ConfigError, a good one is usable.

``load_settings`` (text) and ``settings_from_mapping`` (parsed YAML) raise nothing but
:class:`~app.errors.ConfigError`, whatever they are given: random YAML-able mappings,
valid monitor files (``examples/``, with an ``alerting`` section) with defects, and the
text of a valid file with bytes changed. A file that loads is usable: every string in it
is text, it encodes as JSON, and a model monitor and a source monitor can be built from
it and fed an event.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from fuzz_support import mutated, texts, values
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from app.core.monitor import ModelMonitor
from app.errors import ConfigError
from app.settings import MonitorSettings, load_settings, settings_from_mapping
from app.sources.engine import SourcesEngine

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
ALERTING = yaml.safe_load("""
fire_after: 2
resolve_after: 2
cooldown: 1h
hold: 2h
kinds: {performance_drop: {fire_after: 1}}
routes:
  - {match: {kind: [data_quality, schema_change, source_stale]}, owner: data}
  - {match: {severity: [critical]}, owner: on_call, receiver: pager}
silences:
  - {match: {model: [churn]}, starts: 2026-12-24T00:00:00Z, ends: 2026-12-27T00:00:00Z,
     reason: holiday traffic}
  - {match: {kind: [source_volume]}, weekly: {days: [sun], start: "02:00", end: "04:00"},
     reason: weekly backfill}
""")


def _base(name: str) -> dict[str, Any]:
    data = yaml.safe_load((EXAMPLES / name).read_text())
    data["alerting"] = copy.deepcopy(ALERTING)
    churn = data["models"]["churn"]
    churn["retrain"] = {True: ["performance_drop"], "cooldown": "1d", "max_per_day": 2,
                        "max_age": "30d", "expected_duration": "2h"}  # YAML reads `on:` so
    churn["alerting"] = {"fire_after": 1, "routes": [{"match": {}, "owner": "monitoring"}]}
    churn["segments"] = ["region"]
    return data


BASES = [_base("monitor.yaml"), _base("demo.yaml")]
for base in BASES:  # the bases themselves are valid
    settings_from_mapping(base, env={})


def load(data: Any) -> MonitorSettings | None:
    """The settings, or None for a ConfigError; anything else raised fails the test."""
    try:
        return settings_from_mapping(data, env={})
    except ConfigError as exc:
        assert str(exc)  # the message names the file and the path, and is text
        str(exc).encode("utf-8")
        return None


def assert_usable(s: MonitorSettings) -> None:
    """What the worker does with settings at start and with the first events."""
    dumped = s.model_dump(mode="json")
    json.dumps(dumped, ensure_ascii=False).encode("utf-8")  # every string is text
    assert not _nans(dumped)
    for name in s.models:
        assert s.window_of(name) > 0 and 0 < s.hop_of(name) <= s.window_of(name)
        m = ModelMonitor(name, s, None)
        features = {f: (1.5 if spec.type == "numeric" else "a")
                    for f, spec in s.models[name].features.items()}
        events = [{"prediction_id": f"p{i}", "model": name, "model_version": "v1",
                   "features": features, "prediction": 1, "scores": {"1": 0.5},
                   "latency_ms": 3, "cost": 0.1} for i in range(3)]
        m.ingest(events, [1_700_000_000_000 + i for i in range(3)], now=None)
        for start in m.due_by_watermark():
            m.begin_close(start)
            m.finish_close(start)
        orjson.dumps(m.to_state(), option=orjson.OPT_SERIALIZE_NUMPY)
    engine = SourcesEngine(s, source_uri="urn:test")
    for source in s.sources:
        engine.monitor(source, 0)
        orjson.dumps(engine.to_state(source))


def _nans(doc: Any) -> list[Any]:
    stack, found = [doc], []
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            stack += x.values()
        elif isinstance(x, list):
            stack += x
        elif isinstance(x, float) and math.isnan(x):
            found.append(x)
    return found


# --- generated mappings ------------------------------------------------------------

@settings(max_examples=100)
@given(data=st.dictionaries(texts | st.sampled_from(["models", "kafka", "worker", "defaults",
                                                     "sources", "alerting"]), values,
                            max_size=5) | values)
def test_random_documents_are_config_errors(data):
    assert load(data) is None  # no model in them can be valid


def patched(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """``doc`` with the value at ``path`` replaced (a regression example)."""
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


CHURN = ("models", "churn")


@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.sampled_from(BASES).flatmap(lambda base: mutated(base, max_mutations=4)))
# each a bug once: OverflowError (round(inf), float(10**400)) ...
@example(doc=patched(BASES[0], ("defaults", "window"), math.inf))
@example(doc=patched(BASES[0], ("defaults", "window"), 10**400))
@example(doc=patched(BASES[0], ("defaults", "window"), "9" * 400))
# ... or accepted, and trouble later: NaN bounds, names no JSON encoder writes
@example(doc=patched(BASES[0], (*CHURN, "window"), math.nan))
@example(doc=patched(BASES[0], (*CHURN, "features", "tenure_months", "range"), [math.nan, 1]))
@example(doc=patched(BASES[0], (*CHURN, "performance", "baseline"), math.nan))
@example(doc=patched(BASES[0], (*CHURN, "features", "a\ud800"), {"type": "numeric"}))
@example(doc=patched(BASES[0], (*CHURN, "owners", "on_call"), "pager\udfff"))
def test_mutated_monitor_files_load_or_fail_clearly(doc):
    s = load(doc)
    event("loads" if s is not None else "ConfigError")
    if s is not None:
        assert_usable(s)


# --- text ------------------------------------------------------------------------------

GOOD_TEXT = (EXAMPLES / "monitor.yaml").read_bytes()


@st.composite
def text_mutations(draw: st.DrawFn) -> bytes:
    raw = bytearray(GOOD_TEXT)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(raw) - 1))
        how = draw(st.sampled_from(["flip", "insert", "delete", "cut", "junk"]))
        if how == "flip":
            raw[i] = draw(st.integers(0, 255))
        elif how == "insert":
            raw[i:i] = draw(st.sampled_from([b"[", b"{", b": ", b"- ", b"&a ", b"*a", b"!!",
                                             b"\t", b"\n  ", b"'", b'"', b"\xff", b"%"]))
        elif how == "delete":
            del raw[i:i + draw(st.integers(1, 20))]
        elif how == "cut":
            del raw[i:]
        else:
            raw[i:i] = draw(st.binary(max_size=8))
        if not raw:
            break
    return bytes(raw)


@settings(max_examples=150)
@given(raw=text_mutations())
def test_mutated_text_loads_or_fails_clearly(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "monitor.yaml"
    path.write_bytes(raw)
    try:
        s = load_settings(path, env={})
    except ConfigError as exc:
        assert str(path) in str(exc)
        return
    assert_usable(s)


@settings(max_examples=60)
@given(data=st.data())
def test_mutated_files_written_as_yaml(tmp_path_factory, data):
    doc = data.draw(mutated(BASES[0]))
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, UnicodeError):  # pragma: no cover - some values do not dump
        assume(False)
    path = tmp_path_factory.mktemp("cfg") / "monitor.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        s = load_settings(path, env={})
    except ConfigError:
        return
    assert_usable(s)


# --- explicit cases --------------------------------------------------------------------

MODEL = "models: {m: {features: {x: {type: numeric}}, reference: {warmup: 10}}}\n"


@pytest.mark.parametrize(("text", "expected"), [
    ("[" * 100_000, "nested too deeply"),  # RecursionError once
    ("".join("  " * i + "a:\n" for i in range(3000)), "nested too deeply"),
    ("worker: {batch_size: " + "9" * 5000 + "}\n" + MODEL, "4300 digits"),  # ValueError once
    ("worker: {batch_size: 2024-02-30}\n" + MODEL, "day is out of range"),  # ValueError once
    ("defaults: {window: .inf}\n" + MODEL, "finite"),  # OverflowError once
    ("defaults: {window: .nan}\n" + MODEL, "finite"),
    ("defaults: {lateness: " + "9" * 400 + "}\n" + MODEL, "finite"),  # OverflowError once
    ("models: {m: {features: {x: {type: numeric, range: [.nan, 1]}}, reference: {warmup: 10}}}",
     "low <= high"),  # accepted once: every value out of range
    ('models: {"m\\ud800": {features: {x: {type: numeric}}, reference: {warmup: 10}}}',
     "surrogate"),
    ('models: {m: {features: {"x\\udfff": {type: numeric}}, reference: {warmup: 10}}}',
     "surrogate"),  # accepted once: a feature name no JSON encoder writes
    ("models: !!python/object:os.system {}", "could not determine a constructor"),
    ("a: &a [*a]\nmodels: *a", "valid dictionary"),
    ("\t" + MODEL, "not valid YAML"),
])
def test_bad_files_are_config_errors(tmp_path, text, expected):
    path = tmp_path / "monitor.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=expected):
        load_settings(path, env={})


def test_an_alias_bomb_is_not_expanded(tmp_path):
    """YAML aliases share one object: validation meets each list once per place it is
    named, and fails at the first element that is not what the schema wants."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = tmp_path / "monitor.yaml"
    path.write_text("\n".join(lines) + "\nmodels: {m: {features: {x: {type: numeric}}, "
                    "reference: {warmup: 10}, segments: *a8, change_detectors: *a8}}\n")
    started = time.perf_counter()
    with pytest.raises(ConfigError):
        load_settings(path, env={})
    assert time.perf_counter() - started < 5  # 10**9 leaves if expanded: it takes ms


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"models: {m: \xc3\x28}"])
def test_not_utf8(tmp_path, raw):
    path = tmp_path / "monitor.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(path, env={})


def test_unreadable_paths(tmp_path):
    for path in (tmp_path / "missing.yaml", tmp_path):
        with pytest.raises(ConfigError, match="cannot read"):
            load_settings(path, env={})
