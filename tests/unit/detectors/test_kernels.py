"""The compiled ADWIN (app.detectors.kernels.adwin_run) against river's own: the same
detections at the same values, and the same state to the last bit, after every run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.detectors import kernels
from app.detectors.streaming import ADWINDetector, RiverDetector, make_detector

pytestmark = pytest.mark.skipif(not kernels.enabled(), reason="numba is not installed")


def _river_steps(det: ADWINDetector, values: list[float]) -> list[int]:
    """river's code, value by value (what the compiled runs replace)."""
    return RiverDetector._steps(det, values)


def _same_runs(params: dict[str, Any], values: list[float], cuts: list[int]) -> list[int]:
    """Feed ``values`` to a compiled and a value-by-value detector in runs ending at
    ``cuts``: after each run, the same detections and the same saved state."""
    fast, slow = ADWINDetector(**params), ADWINDetector(**params)
    hits = []
    for a, b in zip([0, *cuts], [*cuts, len(values)], strict=True):
        got, want = fast._steps(values[a:b]), _river_steps(slow, values[a:b])
        assert got == want
        assert orjson.dumps(fast.to_state()) == orjson.dumps(slow.to_state())
        hits += [a + i for i in got]
    return hits


STREAMS = {
    # losses of a classifier whose error rate rises, then falls back
    "bernoulli": lambda rng: np.concatenate([rng.random(6000) < 0.1, rng.random(6000) < 0.35,
                                             rng.random(6000) < 0.1]).astype(float),
    "brier": lambda rng: np.concatenate([rng.random(8000) ** 2,
                                         0.2 + 0.8 * rng.random(4000) ** 2]),
    "gaussian": lambda rng: np.concatenate([rng.normal(0, 1, 3000), rng.normal(0.8, 2, 3000)]),
    "constant": lambda rng: np.zeros(3000),
    "tiny and huge": lambda rng: np.concatenate([rng.normal(0, 1e-9, 2000),
                                                 rng.normal(1e9, 1e3, 2000)]),
}


@pytest.mark.parametrize("stream", sorted(STREAMS))
@pytest.mark.parametrize("params", [{}, {"delta": 0.05, "clock": 1, "max_buckets": 2},
                                    {"delta": 0.2, "clock": 7, "max_buckets": 2,
                                     "min_window_length": 50, "grace_period": 300}])
def test_compiled_runs_are_river_s_adwin_to_the_bit(stream: str, params: dict[str, Any]
                                                    ) -> None:
    rng = np.random.default_rng(len(stream))
    values = STREAMS[stream](rng).tolist()
    cuts = sorted(set(rng.integers(1, len(values), 12).tolist()))  # short and long runs
    hits = _same_runs(params, values, cuts)
    if stream in ("bernoulli", "brier", "tiny and huge"):
        assert hits  # (detections, and the fresh detector after each, were compared)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=400),
       st.lists(st.integers(1, 399), max_size=5),
       st.fixed_dictionaries({"delta": st.floats(0.001, 0.9), "clock": st.integers(1, 40),
                              "max_buckets": st.integers(2, 6),
                              "min_window_length": st.integers(1, 12),
                              "grace_period": st.integers(0, 50)}))
def test_any_stream_and_hyperparameters(values: list[float], cuts: list[int],
                                        params: dict[str, Any]) -> None:
    usual, ADWINDetector.COMPILED_FROM = ADWINDetector.COMPILED_FROM, 1  # however short
    try:
        _same_runs(params, values, sorted({c for c in cuts if c < len(values)}))
    finally:
        ADWINDetector.COMPILED_FROM = usual


def test_a_restored_detector_runs_on_compiled_as_it_would_have() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.random(5000) < 0.1, rng.random(5000) < 0.4]).astype(float)
    whole = ADWINDetector()
    hits = whole._steps(values.tolist())
    first = ADWINDetector()
    first._steps(values[:4000].tolist())
    restored = ADWINDetector.from_state(orjson.loads(orjson.dumps(first.to_state())))
    assert [4000 + i for i in restored._steps(values[4000:].tolist())] == hits
    assert restored.to_state() == whole.to_state() and hits


def test_disabled_kernels_leave_numba_out_and_run_river_s_code() -> None:
    """``worker.compiled_detectors: false``: the detectors run river's code, the same
    detections, and numba is never imported (its memory stays out of the worker)."""
    code = """
import sys
import numpy as np
from app.detectors import kernels
from app.detectors.streaming import make_detector
kernels.disable()
values = np.concatenate([np.zeros(3000), np.ones(300)]).tolist()
hits = make_detector("adwin").update_many(values), make_detector("hddm_a").update_many(values)
assert all(hits), hits
assert "numba" not in sys.modules and not kernels.enabled()
print(hits)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[3])
    adwin, hddm_a = ADWINDetector(), make_detector("hddm_a")
    values = np.concatenate([np.zeros(3000), np.ones(300)]).tolist()
    assert out.stdout.strip() == str((adwin.update_many(values), hddm_a.update_many(values)))


def test_without_a_writable_cache_the_kernels_are_compiled_all_the_same() -> None:
    """Where numba finds no writable place for its cache (a read-only install), it
    refuses ``cache=True``: the kernels are then compiled at each start."""
    code = """
import numba
real = numba.njit
def njit(*args, **kwargs):
    if kwargs.get("cache"):
        raise RuntimeError("cannot cache function: no locator available")
    return real(*args, **kwargs)
numba.njit = njit
import numpy as np
from app.detectors import kernels
from app.detectors.streaming import make_detector
assert kernels.enabled()
values = np.concatenate([np.zeros(3000), np.ones(300)]).tolist()
print(make_detector("adwin").update_many(values))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[3])
    values = np.concatenate([np.zeros(3000), np.ones(300)]).tolist()
    assert out.stdout.strip() == str(ADWINDetector().update_many(values))


@pytest.mark.parametrize("compiled", [True, False])
def test_the_worker_setting_decides_whether_the_detectors_run_compiled(compiled: bool
                                                                       ) -> None:
    """``worker.compiled_detectors``: a worker built with it loads the kernels at its start;
    without it, numba is never imported."""
    code = f"""
import sys
from prometheus_client import CollectorRegistry
from app.detectors import kernels
from app.observability.metrics import Metrics
from app.settings import settings_from_mapping
from app.streaming import build_app
settings = settings_from_mapping({{"worker": {{"compiled_detectors": {compiled}}}, "models": {{
    "m": {{"features": {{"x": {{"type": "numeric"}}}}, "reference": {{"file": "r.jsonl"}},
           "performance": {{"positive_class": "1"}}}}}}}}, env={{}})
build_app(settings, "kafka:9092", {{}}, Metrics(CollectorRegistry()))
print(kernels._state, "numba" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.split() == [str(compiled), str(compiled)]
