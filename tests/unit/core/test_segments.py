"""Drift per segment: a shift confined to one region is found there and named."""

import numpy as np
import orjson
import pytest

from app.core.monitor import ModelMonitor
from app.policy import decide_drift_alerts
from app.reference import build_reference
from app.settings import settings_from_mapping

W = 60_000
REGIONS = ("na", "emea", "apac")


def settings(**extra):
    return settings_from_mapping(
        {"defaults": {"window": "1m", "lateness": "0s", "min_samples": 200},
         "models": {"m": {"features": {"x": {"type": "numeric"}, "c": {"type": "categorical"}},
                          "reference": {"file": "given.jsonl"}, "segments": ["region"],
                          "drift": {"statistic": "psi"}, **extra}}}, env={})


def events(rng, n, shift_region=None):
    out = []
    for _ in range(n):
        region = str(rng.choice(REGIONS))
        base = {"na": 0.0, "emea": 1.0, "apac": -1.0}[region]  # regions differ by nature
        x = rng.normal(base + (1.0 if region == shift_region else 0.0), 1)
        out.append({"model": "m", "model_version": "v1", "segment": {"region": region},
                    "features": {"x": float(x), "c": str(rng.choice(["a", "b"]))}})
    return out


@pytest.fixture
def reference():
    s = settings()
    rng = np.random.default_rng(1)
    rows = []
    for e in events(rng, 9000):
        rows.append({**e["features"], "#segment.region": e["segment"]["region"]})
    return build_reference(rows, "m", s.models["m"], origin="t")


def close(m, start):
    return {(ev.segment, a.subject) for ev in m.begin_close(start)
            for a in decide_drift_alerts(ev, m.settings.drift)}


def test_reference_has_a_part_per_segment_value(reference):
    assert set(reference.segments) == {"region=na", "region=emea", "region=apac"}
    assert reference.segments["region=emea"].features["x"].mean == pytest.approx(1.0, abs=0.1)
    again = type(reference).from_dict(orjson.loads(orjson.dumps(reference.to_dict())))
    assert set(again.segments) == set(reference.segments)


def test_a_shift_in_one_segment_alerts_there_only(reference):
    s = settings()
    rng = np.random.default_rng(2)
    m = ModelMonitor("m", s, reference)
    m.ingest(events(rng, 6000), [10] * 6000, now=None)
    m.ingest(events(rng, 6000, shift_region="apac"), [W + 10] * 6000, now=None)
    m.ingest(events(rng, 1), [3 * W], now=None)
    assert close(m, 0) == set()  # regions differ from each other, not from themselves
    found = close(m, W)
    assert ("region=apac", "x") in found
    assert not any(seg in ("region=na", "region=emea") for seg, _ in found)
    evs = m.begin_close(W)
    assert [ev.segment for ev in evs] == [None, "region=apac", "region=emea", "region=na"]
    assert sum(ev.n for ev in evs[1:]) == evs[0].n == 6000


def test_values_outside_the_references_frequent_ones_share_its_other_part():
    s = settings(max_segment_values=2)
    rng = np.random.default_rng(3)
    rows = []
    for e in events(rng, 9000):  # na, emea, apac ~3000 each: two get parts, one is other
        rows.append({**e["features"], "#segment.region": e["segment"]["region"]})
    reference = build_reference(rows, "m", s.models["m"], origin="t")
    assert len(reference.segments) == 3 and "region=__other__" in reference.segments
    m = ModelMonitor("m", s, reference)
    live = events(rng, 3000)
    for e in live[:50]:
        e["segment"]["region"] = "latam"  # never in the reference: compared as other
    m.ingest(live, [10] * 3000, now=None)
    labels = {sl.segment for sl in m.windows[0].slices.values()}
    assert labels == {None} | set(reference.segments)
    other = next(sl for sl in m.windows[0].slices.values() if sl.segment == "region=__other__")
    kept = {k.partition("=")[2] for k in reference.segments} - {"__other__"}
    assert other.n == sum(1 for e in live if e["segment"]["region"] not in kept)
