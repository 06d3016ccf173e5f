import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import StateError
from app.performance import LabelJoin


def join(**kw):
    args = {"horizon_ms": 10_000, "orphan_horizon_ms": 5_000, "max_pending": 1000,
            "max_orphans": 1000, **kw}
    return LabelJoin(**args)


def test_either_order_joins_with_the_predictions_event_time():
    j = join()
    assert j.add_prediction("a", 100, "v1", 1, 0.8).labelled == []
    (a,) = j.add_outcome("a", 1, label_ms=900).labelled
    assert (a.event_ms, a.version, a.predicted, a.score, a.label, a.delay_ms) == \
        (100, "v1", 1, 0.8, 1, 800)
    assert j.add_outcome("b", 0, label_ms=50).labelled == []
    (b,) = j.add_prediction("b", 200, "v2", 1, 0.3).labelled
    assert (b.event_ms, b.label) == (200, 0)
    assert not j.pending and not j.orphans


def test_duplicates_count_once():
    j = join()
    j.add_prediction("a", 100, "v1", 1, None)
    assert len(j.add_outcome("a", 1, label_ms=200).labelled) == 1
    r = j.add_outcome("a", 1, label_ms=300)
    assert r.labelled == [] and r.duplicates == 1
    assert j.add_prediction("a", 100, "v1", 1, None).labelled == []  # redelivered


def test_horizons_and_budgets_bound_memory():
    j = join(max_pending=3, max_orphans=2)
    for i in range(5):
        r = j.add_prediction(f"p{i}", i, "v1", 0, None)
    assert len(j.pending) == 3 and r.expired == 1
    r = j.add_outcome("x1", 0, label_ms=0)
    j.add_outcome("x2", 0, label_ms=1)
    r = j.add_outcome("x3", 0, label_ms=2)
    assert len(j.orphans) == 2 and r.orphans == 1
    r = j.expire(watermark_ms=20_000)
    assert r.expired == 3 and r.orphans == 2 and not j.pending and not j.orphans


def test_state_round_trip_keeps_pending_predictions():
    j = join()
    j.add_prediction("a", 100, "v1", "churn", 0.7)
    j.add_outcome("b", "stay", label_ms=5)
    again = join()
    again.load(orjson.loads(orjson.dumps(j.to_state())))
    (a,) = again.add_outcome("a", "churn", label_ms=500).labelled
    assert a.predicted == "churn" and a.score == 0.7
    assert len(again.add_prediction("b", 7, "v1", "stay", None).labelled) == 1
    with pytest.raises(StateError, match="version 9 is not supported"):
        again.load({**j.to_state(), "v": 9})


@settings(max_examples=100, deadline=None)
@given(st.permutations([("p", i) for i in range(20)] + [("o", i) for i in range(20)]))
def test_any_interleaving_joins_every_pair_once(order):
    j = join()
    got = []
    for kind, i in order:
        r = (j.add_prediction(f"id{i}", i, "v1", i % 2, 0.5) if kind == "p"
             else j.add_outcome(f"id{i}", (i + 1) % 2, label_ms=100 + i))
        got += r.labelled
    assert sorted(x.prediction_id for x in got) == sorted(f"id{i}" for i in range(20))
    assert all(x.event_ms == int(x.prediction_id[2:]) for x in got)
    assert not j.pending and not j.orphans
