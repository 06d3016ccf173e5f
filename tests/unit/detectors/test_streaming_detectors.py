"""Streaming change detectors: golden indices against river, exact restores, registry contract."""

import pickle
from functools import cache
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import drift
from river.drift import binary

from app.detectors import kernels, streaming
from app.detectors.streaming import (
    STREAM_DETECTORS,
    PageHinkleyDetector,
    RiverDetector,
    StreamDetector,
    detector_from_state,
    make_detector,
)
from app.errors import StateError

ERROR_STREAM = {"ddm", "eddm", "hddm_a", "hddm_w"}

# Parameters per detector for which river is quiet on the stationary streams below.
PARAMS: dict[str, dict[str, Any]] = {
    "adwin": {},
    "page_hinkley": {"delta": 0.05},
    "kswin": {"alpha": 1e-4, "seed": 0},
    "ddm": {"warm_start": 200},
    "eddm": {"alpha": 0.8, "beta": 0.75},
    "hddm_a": {},
    "hddm_w": {},
}
RIVER = {
    "adwin": drift.ADWIN,
    "page_hinkley": drift.PageHinkley,
    "kswin": drift.KSWIN,
    "ddm": binary.DDM,
    "eddm": binary.EDDM,
    "hddm_a": binary.HDDM_A,
    "hddm_w": binary.HDDM_W,
}

# Literal indices river 0.23.0 reports: a change here means river's behaviour changed.
# "change": N(0,1) then N(2,1), or error rate 0.1 then 0.4, switching at 1000 (of 2000).
# "multi": three segments of 800: means 0, 2, -1, or error rates 0.1, 0.4, 0.7.
EXPECTED = {
    "adwin": {"change": [1023], "multi": [831, 1631]},
    "page_hinkley": {"change": [1005], "multi": [830, 1612]},
    "kswin": {"change": [1020], "multi": [821, 1615]},
    "ddm": {"change": [1066], "multi": [849, 1704]},
    "eddm": {"change": [239, 1052], "multi": [396, 909, 1042, 1606]},  # EDDM is jumpy
    "hddm_a": {"change": [1038], "multi": [866, 1675]},
    "hddm_w": {"change": [1034], "multi": [866, 1618, 2226]},
}


@cache
def stream(name: str, shape: str) -> tuple[float, ...]:
    """A seeded stream of the detector's kind: "change", "stationary" or "multi"."""
    if name in ERROR_STREAM:
        seed, segments = {"change": (11, [(0.1, 1000), (0.4, 1000)]),
                          "stationary": (12, [(0.1, 2000)]),
                          "multi": (13, [(0.1, 800), (0.4, 800), (0.7, 800)])}[shape]
        rng = np.random.default_rng(seed)
        parts = [(rng.random(n) < p).astype(np.float64) for p, n in segments]
    else:
        seed, segments = {"change": (7, [(0.0, 1000), (2.0, 1000)]),
                          "stationary": (8, [(0.0, 2000)]),
                          "multi": (9, [(0.0, 800), (2.0, 800), (-1.0, 800)])}[shape]
        rng = np.random.default_rng(seed)
        parts = [rng.normal(m, 1.0, n) for m, n in segments]
    return tuple(np.concatenate(parts).tolist())


def river_run(name: str, values: tuple[float, ...]) -> tuple[list[int], list[int]]:
    """Detections and warnings of river's own detector, run directly."""
    det = RIVER[name](**PARAMS[name])
    detections, warnings = [], []
    for i, x in enumerate(values):
        det.update(x)
        if det.drift_detected:
            detections.append(i)
        if getattr(det, "warning_detected", False):
            warnings.append(i)
    return detections, warnings


def wrapper_run(det: RiverDetector, values: tuple[float, ...] | list[float],
                offset: int = 0) -> tuple[list[int], list[int]]:
    detections, warnings = [], []
    for i, x in enumerate(values, start=offset):
        if det.update(x):
            detections.append(i)
        if getattr(det, "warning", False):
            warnings.append(i)
    return detections, warnings


def json_round_trip(state: dict[str, Any]) -> Any:
    return orjson.loads(orjson.dumps(state))


NAMES = sorted(STREAM_DETECTORS)


def test_every_registry_entry_has_golden_cases() -> None:
    assert sorted(EXPECTED) == sorted(PARAMS) == sorted(RIVER) == NAMES
    assert list(STREAM_DETECTORS) == [
        "adwin", "page_hinkley", "kswin", "ddm", "eddm", "hddm_a", "hddm_w"]


# -- golden indices ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["change", "multi"])
@pytest.mark.parametrize("name", NAMES)
def test_golden_indices_equal_river_run_directly(name: str, shape: str) -> None:
    values = stream(name, shape)
    river_detections, _ = river_run(name, values)
    assert river_detections == EXPECTED[name][shape]
    assert make_detector(name, **PARAMS[name]).update_many(np.array(values)) == river_detections


@pytest.mark.parametrize("name", NAMES)
def test_stationary_stream_reports_nothing(name: str) -> None:
    values = stream(name, "stationary")
    assert river_run(name, values)[0] == []
    det = make_detector(name, **PARAMS[name])
    assert det.update_many(list(values)) == []
    assert det.n == len(values) and det.n_detections == 0


@pytest.mark.parametrize("name", NAMES)
def test_update_one_by_one_equals_river_including_warnings(name: str) -> None:
    values = stream(name, "change")[:1100]  # past the first detection of every detector
    det = make_detector(name, **PARAMS[name])
    detections, warnings = wrapper_run(det, values)
    river_detections, river_warnings = river_run(name, values)
    assert detections == river_detections != []
    # river may keep EDDM's warning flag up at the detection itself; ours is reset by then
    assert warnings == [i for i in river_warnings if i not in river_detections]
    assert det.n == len(values) and det.n_detections == len(detections)


# -- reset semantics ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_detector_is_already_reset_when_update_returns_true(name: str) -> None:
    values = stream(name, "multi")
    first = EXPECTED[name]["multi"][0]
    det = make_detector(name, **PARAMS[name])
    assert det.update_many(values[:first]) == []
    assert det.update(values[first]) is True
    state = det.to_state()
    fresh = make_detector(name, **PARAMS[name]).to_state()
    assert state["detector"] == fresh["detector"]  # the run restarted at the detection
    assert (state["n"], state["n_detections"]) == (first + 1, 1)  # counters did not
    assert det.update(values[first + 1]) is False
    assert det.n == first + 2


# -- restore equivalence -----------------------------------------------------------------


def run_with_restores(name: str, values: tuple[float, ...], cuts: list[int]
                      ) -> tuple[list[int], list[int]]:
    """Run ``values``, restoring from a JSON round trip of ``to_state()`` at each cut."""
    cls = STREAM_DETECTORS[name]
    det: RiverDetector = make_detector(name, **PARAMS[name])
    detections, warnings = [], []
    start = 0
    for cut in [*sorted(cuts), len(values)]:
        d, w = wrapper_run(det, values[start:cut], offset=start)
        detections += d
        warnings += w
        det = cls.from_state(json_round_trip(det.to_state()))
        assert det.n == cut
        start = cut
    return detections, warnings


@cache
def uninterrupted(name: str) -> tuple[list[int], list[int]]:
    return wrapper_run(make_detector(name, **PARAMS[name]), stream(name, "multi"))


@pytest.mark.parametrize("name", NAMES)
def test_restore_at_and_around_detections_equals_uninterrupted_run(name: str) -> None:
    values = stream(name, "multi")
    expected = EXPECTED[name]["multi"]
    reference = uninterrupted(name)
    assert reference[0] == expected
    cuts = [1, *expected[:2], *(d + 1 for d in expected[:2])]  # before, at, right after
    if name == "kswin":  # ~0.25 ms per value: one run with all the cuts
        assert run_with_restores(name, values, cuts) == reference
    else:
        for cut in cuts:
            assert run_with_restores(name, values, [cut]) == reference


@pytest.mark.parametrize("name", NAMES)
def test_restored_river_object_is_indistinguishable_from_the_original(name: str) -> None:
    # pickle only as a deep comparison of every internal attribute, numeric types included:
    # it catches a field the state forgot even where the default parameters never read it
    values = stream(name, "multi")
    det = make_detector(name, **PARAMS[name])
    done = 0
    for k in [0, 1, 300, EXPECTED[name]["multi"][0] + 1, 1200]:
        det.update_many(values[done:k])
        done = k
        restored = STREAM_DETECTORS[name].from_state(json_round_trip(det.to_state()))
        assert pickle.dumps(restored._river) == pickle.dumps(det._river), k


CHEAP = [n for n in NAMES if n != "kswin"]


@pytest.mark.parametrize("name", CHEAP)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_restore_at_arbitrary_cuts_equals_uninterrupted_run(name: str, data: st.DataObject
                                                            ) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream(name, "multi"))), max_size=3))
    assert run_with_restores(name, stream(name, "multi"), cuts) == uninterrupted(name)


# -- contract over every registry entry --------------------------------------------------


def fed(name: str, k: int = 300) -> RiverDetector:
    det = make_detector(name, **PARAMS[name])
    det.update_many(stream(name, "change")[:k])
    return det


def only_plain_json(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and only_plain_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(only_plain_json(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


@pytest.mark.parametrize("name", NAMES)
def test_state_is_plain_json_and_round_trips(name: str) -> None:
    det = fed(name)
    state = det.to_state()
    assert only_plain_json(state)
    assert state["kind"] == name and state["v"] == 1 and state["params"] == det.params
    assert json_round_trip(state) == state
    again = STREAM_DETECTORS[name].from_state(json_round_trip(state))
    assert again.to_state() == state
    assert detector_from_state(state).to_state() == state
    assert isinstance(again, StreamDetector)


@pytest.mark.parametrize("name", NAMES)
def test_fresh_state_round_trips(name: str) -> None:
    state = make_detector(name).to_state()
    assert STREAM_DETECTORS[name].from_state(json_round_trip(state)).to_state() == state


@pytest.mark.parametrize("name", NAMES)
def test_reset_gives_a_fresh_detector(name: str) -> None:
    det = fed(name, 1100)
    assert det.n_detections >= 1
    det.reset()
    assert det.n == 0 and det.n_detections == 0
    assert det.to_state() == make_detector(name, **PARAMS[name]).to_state()


@pytest.mark.parametrize("name", NAMES)
def test_repr_rebuilds_the_same_detector(name: str) -> None:
    det = fed(name)
    cls = STREAM_DETECTORS[name]
    text = repr(det)
    assert text.startswith(f"{cls.__name__}(")
    rebuilt = eval(text, {cls.__name__: cls})
    assert rebuilt.params == det.params
    assert rebuilt.to_state() == make_detector(name, **PARAMS[name]).to_state()


@pytest.mark.parametrize("name", NAMES)
def test_unknown_version_or_kind_fails_clearly(name: str) -> None:
    cls = STREAM_DETECTORS[name]
    state = fed(name).to_state()
    with pytest.raises(StateError, match="version 99 is not supported"):
        cls.from_state({**state, "v": 99})
    other = "adwin" if name != "adwin" else "kswin"
    with pytest.raises(StateError, match=f"expected a '{name}' state, got kind '{other}'"):
        cls.from_state(make_detector(other).to_state())
    with pytest.raises(StateError, match="must be a mapping"):
        cls.from_state([state])
    with pytest.raises(StateError, match="not a stream detector state"):
        detector_from_state({**state, "kind": "cusum"})


@pytest.mark.parametrize("name", NAMES)
def test_corrupt_state_fails_clearly(name: str) -> None:
    cls = STREAM_DETECTORS[name]
    state = fed(name).to_state()
    key = next(iter(state["detector"]))
    dropped = {k: v for k, v in state["detector"].items() if k != key}
    with pytest.raises(StateError, match=f"corrupt {name} state"):
        cls.from_state({**state, "detector": dropped})
    with pytest.raises(StateError, match=f"corrupt {name} state"):
        cls.from_state({**state, "detector": {**state["detector"], key: "garbage"}})
    with pytest.raises(StateError, match=f"corrupt {name} state"):
        cls.from_state({**state, "n": -1.5})
    with pytest.raises(StateError, match="counters n=-1"):
        cls.from_state({**state, "n": -1})
    bad_param = next(iter(state["params"]))
    with pytest.raises(StateError, match=f"corrupt {name} state"):
        cls.from_state({**state, "params": {**state["params"], bad_param: "x"}})


# Bad keyword hyperparameters; the message must name the last one and its value.
BAD_PARAMS: dict[str, list[dict[str, Any]]] = {
    "adwin": [{"delta": 0.0}, {"delta": 1.5}, {"clock": 0}, {"clock": 2.5},
              {"max_buckets": 1}, {"min_window_length": True}, {"grace_period": -1}],
    "page_hinkley": [{"mode": "sideways"}, {"threshold": 0.0}, {"alpha": 1.5},
                     {"delta": float("nan")}, {"min_instances": -3}],
    "kswin": [{"alpha": 2.0}, {"alpha": 0.0}, {"stat_size": 30, "window_size": 50},
              {"stat_size": 0}, {"seed": -1}, {"seed": "abc"}],
    "ddm": [{"warm_start": -1}, {"warning_threshold": 0.0}, {"drift_threshold": 1.5}],
    "eddm": [{"alpha": 1.2}, {"beta": 0.99}, {"beta": 0.0}, {"warm_start": 3.0}],
    "hddm_a": [{"drift_confidence": 0.0}, {"drift_confidence": 0.01},
               {"warning_confidence": 1.0}, {"two_sided_test": 1}],
    "hddm_w": [{"lambda_val": 0.0}, {"lambda_val": 1.5}, {"drift_confidence": -0.1},
               {"two_sided_test": "yes"}],
}


@pytest.mark.parametrize("name", NAMES)
def test_bad_hyperparameter_raises_value_error_naming_it(name: str) -> None:
    assert sorted(BAD_PARAMS) == NAMES
    for kwargs in BAD_PARAMS[name]:
        key, value = list(kwargs.items())[-1]
        with pytest.raises(ValueError, match=key) as info:
            make_detector(name, **kwargs)
        assert repr(value) in str(info.value), (kwargs, str(info.value))
    with pytest.raises(ValueError, match="unexpected keyword argument 'bogus'"):
        make_detector(name, bogus=1)


def test_unknown_detector_name() -> None:
    with pytest.raises(ValueError, match="unknown stream detector 'cusum'; known: "):
        make_detector("cusum")


@pytest.mark.parametrize("name", NAMES)
def test_bad_values_are_rejected_before_any_is_applied(name: str) -> None:
    det = fed(name)
    before = det.to_state()
    with pytest.raises(ValueError, match="nan"):
        det.update(float("nan"))
    with pytest.raises(ValueError, match="at offset 2"):
        det.update_many([0.0, 1.0, float("inf"), 0.0])
    if name in ERROR_STREAM:
        with pytest.raises(ValueError, match=r"0 \(correct\) or 1 \(error\), got 0.5"):
            det.update(0.5)
        with pytest.raises(ValueError, match="at offset 1"):
            det.update_many(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="one-dimensional"):
        det.update_many(np.zeros((2, 2)))
    assert det.to_state() == before
    assert det.update_many([]) == []
    assert det.update_many(np.array([True, False])) == []  # booleans are 1 and 0


# -- river layout changes fail clearly ---------------------------------------------------


def test_a_river_without_an_expected_attribute_fails_at_construction(monkeypatch) -> None:
    class ChangedPageHinkley(drift.PageHinkley):
        def _reset(self) -> None:
            super()._reset()
            del self._sum_increase

    monkeypatch.setattr(PageHinkleyDetector, "_RIVER_CLS", ChangedPageHinkley)
    with pytest.raises(StateError, match=r"river 0\.\d+.*no attribute '_sum_increase'"):
        PageHinkleyDetector()


def test_a_changed_adwin_cython_layout_fails_at_construction(monkeypatch) -> None:
    renamed = tuple("bucket_width" if f == "width" else f for f in streaming._ADWIN_FIELDS)
    monkeypatch.setattr(streaming, "_ADWIN_FIELDS", renamed)
    with pytest.raises(StateError, match=r"AdaptiveWindowing .* fields are no longer"):
        make_detector("adwin")


@pytest.mark.parametrize("compiled", [True, False])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_hddm_a_batches_equal_value_by_value(compiled: bool, data: st.DataObject) -> None:
    """HDDM_A's batch path writes river's arithmetic out (compiled by numba, or in
    Python): the same detections, warnings and state bytes as river's ``update`` value
    by value, both sides of the test, any confidences, any cuts between batches."""
    if compiled and not kernels.enabled():
        pytest.skip("numba is not installed")
    usual, kernels._state = kernels.enabled(), compiled
    try:
        _hddm_a_batches(data)
    finally:
        kernels._state = usual


def _hddm_a_batches(data: st.DataObject) -> None:
    params = {"drift_confidence": data.draw(st.sampled_from([0.001, 0.01, 0.05])),
              "warning_confidence": 0.05, "two_sided_test": data.draw(st.booleans())}
    batched, single = make_detector("hddm_a", **params), make_detector("hddm_a", **params)
    for _ in range(data.draw(st.integers(1, 4))):
        rate = data.draw(st.floats(0, 1))
        size = data.draw(st.integers(0, 400))
        seed = data.draw(st.integers(0, 2**32 - 1))
        values = (np.random.default_rng(seed).random(size) < rate).astype(float).tolist()
        assert batched.update_many(values) == [i for i, v in enumerate(values)
                                               if single.update(v)]
        assert orjson.dumps(batched.to_state()) == orjson.dumps(single.to_state())
        assert batched.warning == single.warning  # type: ignore[attr-defined]
        assert (batched.n, batched.n_detections) == (single.n, single.n_detections)


def test_hddm_a_batch_detects_where_river_does() -> None:
    values = [0.0] * 300 + [1.0] * 60 + [0.0] * 500 + [1.0] * 200
    river, hits = binary.HDDM_A(), []
    for i, v in enumerate(values):
        river.update(v)
        if river.drift_detected:
            hits.append(i)
    assert len(hits) >= 2
    assert make_detector("hddm_a").update_many(values) == hits
