import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import StateError
from app.performance import JoinResult, LabelJoin, Labelled

PARAMS = {"horizon_ms": 10_000, "orphan_horizon_ms": 5_000, "max_pending": 1000,
          "max_orphans": 1000}


def join(**kw):
    return LabelJoin(**{**PARAMS, **kw})


def restore(records, **kw):
    return LabelJoin.restore(orjson.loads(orjson.dumps(records)), **{**PARAMS, **kw})


def apply(log, drained):
    """What a compacted changelog keeps: the latest value of each key, None deletes."""
    for key, value in drained.items():
        if value is None:
            log.pop(key, None)
        else:
            log[key] = value


def test_either_order_joins_with_the_predictions_event_time():
    j = join()
    assert j.add_predictions([("a", 100, "v1", 1, 0.8)]).labelled == []
    (a,) = j.add_outcomes([("a", 1, 900, 42)]).labelled
    assert a == Labelled("a", 100, "v1", 1, 0.8, 1, 900, 42) and a.delay_ms == 800
    assert j.add_outcomes([("b", 0, 50, 7)]).labelled == []
    (b,) = j.add_predictions([("b", 200, "v2", 1, 0.3)]).labelled
    assert (b.event_ms, b.label, b.seen_ms) == (200, 0, 7)  # seen_ms carried through the wait
    assert j.pending_count == 0 and j.orphan_count == 0


def test_duplicates_count_once():
    j = join()
    j.add_predictions([("a", 100, "v1", 1, None)])
    assert len(j.add_outcomes([("a", 1, 200, 0)]).labelled) == 1
    r = j.add_outcomes([("a", 1, 300, 0), ("a", 0, 301, 0)])
    assert r.labelled == [] and r.duplicates == 2
    assert j.add_predictions([("a", 100, "v1", 1, None)]).labelled == []  # redelivered
    # an outcome twice while its prediction is missing: it waits once
    r = j.add_outcomes([("b", 1, 300, 0), ("b", 1, 300, 0)])
    assert r.duplicates == 1 and j.orphan_count == 1
    assert len(j.add_predictions([("b", 250, "v1", 1, None)] * 2).labelled) == 1
    assert j.add_outcomes([("b", 1, 300, 0)]).duplicates == 1
    assert j.add_predictions([("b", 250, "v1", 1, None)]).labelled == []
    assert j.pending_count == 0 and j.orphan_count == 0


def test_a_redelivered_pending_prediction_is_ignored():
    j = join()
    j.add_predictions([("a", 100, "v1", 1, None), ("a", 100, "v1", 1, None)])
    j.add_predictions([("a", 100, "v1", 0, None)])
    assert j.pending_count == 1
    (a,) = j.add_outcomes([("a", 1, 200, 0)]).labelled
    assert a.predicted == 1


def test_labels_later_than_the_horizon_count_as_too_late():
    j = join()
    j.add_predictions([("a", 0, "v1", 1, None)])
    r = j.add_outcomes([("a", 1, 10_001, 0)])
    assert (r.labelled, r.too_late, j.pending_count) == ([], 1, 0)
    assert j.add_outcomes([("a", 1, 10_002, 0)]).duplicates == 1
    j.add_outcomes([("b", 1, 20_000, 0)])  # the outcome first
    r = j.add_predictions([("b", 9_999, "v1", 1, None)])
    assert (r.labelled, r.too_late, j.orphan_count, j.pending_count) == ([], 1, 0, 0)
    assert j.add_predictions([("b", 9_999, "v1", 1, None)]).expired == 0  # redelivered
    assert j.pending_count == 0


@pytest.mark.parametrize("batch_path", [True, False])
def test_a_prediction_past_the_horizon_joins_its_waiting_outcome_else_is_late_data(
        batch_path):
    """Outcomes read ahead of their predictions (a backlog: the smaller topic is read
    faster) push the watermark past predictions still to come. One whose outcome waits
    joins it, as it would have had it come first; one whose outcome does not wait is late
    data (its label, had it come in time, would be waiting): expired."""
    j = join()
    if not batch_path:
        j._usual = lambda *_: False
    j.add_outcomes([("a", 1, 9_000, 0), ("d", 1, 12_000, 0)])
    j.expire(12_000)
    r = j.add_predictions([("c", 1_500, "v1", 1, None), ("a", 1_000, "v1", 1, None),
                           ("b", 2_000, "v1", 1, None), ("d", 1_900, "v1", 1, None)])
    assert [(x.prediction_id, x.label_ms) for x in r.labelled] == [("a", 9_000)]
    # c: late, nothing waits; d: its label came more than the horizon after it
    assert (r.expired, r.too_late, j.pending_count, j.orphan_count) == (1, 1, 1, 0)
    assert j.add_predictions([("a", 1_000, "v1", 1, None)]).expired == 0  # redelivered


def test_horizons_and_budgets_bound_memory():
    j = join(max_pending=3, max_orphans=2)
    r = j.add_predictions([(f"p{i}", i, "v1", 0, None) for i in range(5)])
    assert j.pending_count == 3 and r.expired == 2
    assert j.add_outcomes([("p0", 1, 5, 0)]).labelled == []  # p0 was evicted
    r = j.add_outcomes([("x1", 0, 0, 0), ("x2", 0, 1, 0), ("x3", 0, 2, 0)])
    assert j.orphan_count == 2 and r.orphans == 2  # p0's outcome and x1
    r = j.expire(20_000)
    assert (r.expired, r.orphans, j.pending_count, j.orphan_count) == (3, 2, 0, 0)
    # what is already past its horizon at the watermark is counted at once
    r = j.add_predictions([("old", 9_999, "v1", 0, None), ("new", 10_000, "v1", 0, None)])
    assert r.expired == 1 and j.pending_count == 1
    r = j.add_outcomes([("o1", 0, 14_999, 0), ("o2", 0, 15_000, 0)])
    assert r.orphans == 1 and j.orphan_count == 1
    assert j.expire(19_000).expired == 0 and j.watermark == 20_000  # never goes back


def test_remembered_ids_are_bounded_too():
    j = join(max_pending=10, segment_size=4)
    for b in range(20):
        rows = [(f"p{b}-{i}", b, "v1", 0, None) for i in range(5)]
        j.add_predictions(rows)
        j.add_outcomes([(pid, 0, b, 0) for pid, *_ in rows])
        j.drain_records()
    ids_in_records = sum(len(g[2]) for k, v in j.records().items() if "/r" in k
                         for g in v["g"])
    assert ids_in_records <= 10 + 5  # max_pending, plus the newest batch
    assert j.add_outcomes([("p19-0", 0, 19, 0)]).duplicates == 1  # recent: still known


def remembered(j, prefix):
    return sum(len(g[2]) for k, v in j.records().items() if k.startswith(prefix + "r")
               for g in v["g"])


def test_early_outcomes_that_joined_are_remembered_for_the_label_horizon_only():
    # outcomes first, their predictions next, time moving 100 ms a batch: with the
    # orphan horizon far longer than the label horizon, the joined ids must still be
    # forgotten once the label horizon passes them (they are no orphans)
    j = join(horizon_ms=1_000, orphan_horizon_ms=10**9, max_pending=10**6,
             max_orphans=10**6, segment_size=50)
    counts = []
    for b in range(100):
        rows = [(f"p{b}-{i}", 100 * b, "v1", 0, None) for i in range(50)]
        j.add_outcomes([(pid, 1, t + 5, 0) for pid, t, *_ in rows])
        assert len(j.add_predictions(rows).labelled) == 50
        j.expire(100 * b)
        j.drain_records()
        counts.append(remembered(j, "j/o/"))
    # about ten batches' ids (one label horizon) at a time, not all 5000 of them
    assert max(counts[20:]) <= 11 * 50 and counts[-1] == counts[50]
    assert j.add_outcomes([("p99-0", 1, 9_905, 0)]).duplicates == 1  # recent: still known
    assert j.add_predictions([("p99-1", 9_900, "v1", 0, None)]).labelled == []  # redelivered
    assert j.pending_count == 0


def test_the_orphan_budget_bounds_the_remembered_outcome_ids():
    j = join(max_pending=10_000, max_orphans=10, segment_size=4)
    for b in range(20):
        rows = [(f"p{b}-{i}", b, "v1", 0, None) for i in range(5)]
        j.add_outcomes([(pid, 0, b, 0) for pid, *_ in rows])
        j.add_predictions(rows)
        j.drain_records()
    assert remembered(j, "j/o/") <= 10 + 5  # max_orphans, plus the newest batch
    assert j.add_outcomes([("p19-0", 0, 19, 0)]).duplicates == 1


def test_removal_records_say_why_ids_left():
    j = join()
    j.add_predictions([("a", 0, "v1", 0, None), ("b", 0, "v1", 0, None),
                       ("c", 0, "v1", 0, None)])
    j.drain_records()
    j.add_outcomes([("a", 1, 5, 0), ("b", 1, 10_005, 0)])
    j.expire(1_000)
    drained = j.drain_records()
    (removal,) = [v for k, v in drained.items() if k.startswith("j/p/r")]
    assert removal == {"t": 0, "g": [[0, "j", ["a"]], [0, "l", ["b"]]]}
    assert drained["j/m"] == {"kind": "label-join", "v": 2, "w": 1_000}
    r = j.expire(10_001)
    assert r.expired == 1
    assert j.drain_records()["j/p/s0"] is None


@settings(max_examples=100, deadline=None)
@given(st.permutations([("p", i) for i in range(20)] + [("o", i) for i in range(20)]),
       st.integers(1, 5))
def test_any_interleaving_joins_every_pair_once(order, size):
    j = join(segment_size=size)
    got = []
    for kind, i in order:
        r = (j.add_predictions([(f"id{i}", i, "v1", i % 2, 0.5)]) if kind == "p"
             else j.add_outcomes([(f"id{i}", (i + 1) % 2, 100 + i, i)]))
        got += r.labelled
        j.drain_records()
    assert sorted(x.prediction_id for x in got) == sorted(f"id{i}" for i in range(20))
    assert all(x.event_ms == x.seen_ms == int(x.prediction_id[2:]) for x in got)
    assert j.pending_count == 0 and j.orphan_count == 0


# -- restore equivalence ------------------------------------------------------------------

IDS = [f"id{i}" for i in range(10)]
prediction_rows = st.lists(st.tuples(st.sampled_from(IDS), st.integers(0, 60),
                                     st.sampled_from(["v1", "v2"]), st.integers(0, 1),
                                     st.none() | st.sampled_from([0.25, 0.5])), max_size=5)
outcome_rows = st.lists(st.tuples(st.sampled_from(IDS), st.integers(0, 1), st.integers(0, 80),
                                  st.integers(0, 99)), max_size=5)
steps = st.lists(st.one_of(st.tuples(st.just("p"), prediction_rows),
                           st.tuples(st.just("o"), outcome_rows),
                           st.tuples(st.just("e"), st.integers(0, 100))),
                 min_size=2, max_size=16)
join_params = st.fixed_dictionaries({
    "horizon_ms": st.integers(1, 30), "orphan_horizon_ms": st.integers(1, 30),
    "max_pending": st.integers(1, 6), "max_orphans": st.integers(1, 6),
    "segment_size": st.integers(1, 3)})


def run(step_list, params, restore_at=None, source="records"):
    """Each step is a batch (drained after it); restore before step ``restore_at``."""
    j = LabelJoin(**params)
    log, trace = {}, []
    for n, (kind, arg) in enumerate(step_list):
        if n == restore_at:
            j = LabelJoin.restore(orjson.loads(orjson.dumps(j.records() if source == "records"
                                                            else log)), **params)
            assert j.drain_records() == {}  # a consistent restore has nothing to repair
        r = (j.add_predictions(arg) if kind == "p" else j.add_outcomes(arg) if kind == "o"
             else j.expire(arg))
        drained = j.drain_records()
        apply(log, drained)
        assert log == j.records()  # the changelog holds exactly the live records
        assert j.pending_count <= params["max_pending"]
        assert j.orphan_count <= params["max_orphans"]
        trace.append((r, drained, j.pending_count, j.orphan_count))
    return trace, j.records()


@settings(max_examples=300, deadline=None)
@given(steps, join_params, st.data())
def test_restore_from_records_or_changelog_equals_an_uninterrupted_run(step_list, params,
                                                                      data):
    want, want_records = run(step_list, params)
    at = data.draw(st.integers(1, max(1, len(step_list) - 1)))  # mid-run, state to restore
    source = data.draw(st.sampled_from(["records", "changelog"]))
    got, got_records = run(step_list, params, restore_at=at, source=source)
    assert got == want  # joined pairs, every count, every record written afterwards
    assert got_records == want_records


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("p"), st.lists(st.integers(0, 9), max_size=4)),
    st.tuples(st.just("o"), st.lists(st.tuples(st.integers(0, 9), st.integers(-5, 40)),
                                     max_size=4)),
    st.tuples(st.just("e"), st.integers(0, 80))), max_size=30),
    st.integers(1, 20), st.integers(1, 20))
def test_a_prediction_is_labelled_at_most_once(steps, horizon, orphan_horizon):
    """Duplicated outcomes, redelivered predictions (same event time), any expiry."""
    j = join(horizon_ms=horizon, orphan_horizon_ms=orphan_horizon, max_pending=50,
             max_orphans=50, segment_size=2)
    labelled = []
    for kind, arg in steps:
        if kind == "p":
            r = j.add_predictions([(f"id{i}", 3 * i, "v1", 1, None) for i in arg])
        elif kind == "o":
            r = j.add_outcomes([(f"id{i}", 1, 3 * i + d, 0) for i, d in arg])
        else:
            r = j.expire(arg)
        j.drain_records()
        labelled += [x.prediction_id for x in r.labelled]
    assert len(labelled) == len(set(labelled))


# -- writes are proportional to the batch, and nothing is left behind ---------------------

def test_each_batch_writes_in_proportion_to_itself_not_to_the_pending_total():
    j = join(max_pending=100_000, max_orphans=100)
    t0 = 1_767_225_600_000
    batches = [[(f"pred-{b:02d}-{i:04d}", t0 + 1_000 * b + i, "v1", i % 2, 0.5)
                for i in range(1000)] for b in range(10)]
    writes = []
    for rows in batches:
        j.add_predictions(rows)
        drained = j.drain_records()
        assert len(drained) <= 3  # one segment, the counter (and the meta record, once)
        writes.append(len(orjson.dumps(drained)))
    total = len(orjson.dumps(j.records()))  # 10 000 pending predictions
    for rows in batches:
        labelled = j.add_outcomes([(pid, 1, t + 5, t) for pid, t, *_ in rows]).labelled
        assert len(labelled) == 1000
        drained = j.drain_records()
        assert len(drained) == 3  # the emptied segment's tombstone, one removal, the counter
        writes.append(len(orjson.dumps(drained)))
    assert j.pending_count == 0
    # a batch of 1000 writes at most 48 bytes a row (~40 a prediction, ~15 an outcome),
    # whatever is pending: every drain is under a ninth of the 10 batches' state
    assert max(writes) <= 48 * 1000 + 200
    assert max(writes) * 9 < total
    for same_kind in (writes[1:10], writes[10:]):  # not growing with the pending set
        assert max(same_kind) - min(same_kind) <= 10  # (a counter gaining a digit)


def test_a_fully_labelled_and_expired_run_leaves_no_records_behind():
    j = join(max_pending=50, max_orphans=50, segment_size=7)
    log, seen = {}, set()

    def batch(result):
        drained = j.drain_records()
        apply(log, drained)
        seen.update(k[:5] for k in drained)
        return result

    for b in range(10):
        preds = [(f"p{b}-{i}", 100 * b + i, "v1", 0, None) for i in range(20)]
        batch(j.add_outcomes([(f"p{b}-{i}", 1, 100 * b + 30, 0) for i in range(0, 20, 3)]))
        batch(j.add_predictions(preds[:15]))  # 15..19 never come: their outcomes are orphans
        batch(j.add_outcomes([(pid, 0, t + 50, 0) for pid, t, *_ in preds if t % 3]
                             + [(f"p{b}-1", 0, 100 * b, 0)]))  # a duplicate
        batch(j.expire(100 * b))
    assert seen >= {"j/p/s", "j/p/r", "j/o/s", "j/o/r"}
    r = j.expire(10**9)
    apply(log, j.drain_records())
    assert r.orphans > 0 and j.pending_count == 0 and j.orphan_count == 0
    # only the constant-size meta and sequence counters stay
    assert log == j.records() == {
        "j/m": {"kind": "label-join", "v": 2, "w": 10**9},
        "j/p/n": {"n": log["j/p/n"]["n"], "d": 10**9 - 10_000},
        "j/o/n": {"n": log["j/o/n"]["n"], "d": 10**9 - 10_000},
    }


# -- malformed records --------------------------------------------------------------------

def some_records():
    j = join()
    j.add_predictions([("a", 100, "v1", "churn", 0.7)])
    j.add_outcomes([("b", "stay", 5, 3)])
    return j.records()


def test_restore_keeps_pending_predictions_and_waiting_outcomes():
    again = restore({**some_records(), "other/key": 1})  # other keys are not the join's
    (a,) = again.add_outcomes([("a", "churn", 500, 0)]).labelled
    assert a.predicted == "churn" and a.score == 0.7
    (b,) = again.add_predictions([("b", 7, "v1", "stay", None)]).labelled
    assert (b.label, b.seen_ms) == ("stay", 3)
    assert restore({}).pending_count == 0


@pytest.mark.parametrize(("change", "message"), [
    ({"j/m": {"kind": "label-join", "v": 9, "w": None}}, "version 9 is not supported"),
    ({"j/m": {"kind": "sketch", "v": 2, "w": None}}, "expected a 'label-join' state"),
    ({"j/m": {"kind": "label-join", "v": 2, "w": "late"}}, "watermark must be an int"),
    ({"j/m": None}, "without their 'j/m' record"),
    ({"j/x": 1}, "unknown label-join record 'j/x'"),
    ({"j/p/s0": {"i": ["a"], "c": [[100], ["v1"], ["churn"]]}}, "3 columns, expected 4"),
    ({"j/o/r7": {"t": 1}}, "removal record 'j/o/r7' must be"),
    ({"j/p/z": 1}, "unknown record 'j/p/z'"),
])
def test_malformed_records_raise_state_error(change, message):
    records = {**some_records(), **change}
    with pytest.raises(StateError, match=message):
        restore({k: v for k, v in records.items() if v is not None})


def test_join_result_defaults_and_rows():
    r = JoinResult()
    assert r == JoinResult([[] for _ in Labelled._fields], 0, 0, 0, 0) and r.labelled == []
    a = Labelled("a", 1, "v1", "1", 0.5, "0", 2, 3)
    b = Labelled("b", 4, "v2", "0", None, "0", 5, 6)
    r.add(a)
    r.add_columns([[x] for x in b])
    assert r.labelled == [a, b]
    assert r.columns[0] == ["a", "b"] and r.columns[4] == [0.5, None]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("p"), st.lists(st.tuples(st.integers(0, 30), st.integers(0, 60)),
                                     max_size=8)),
    st.tuples(st.just("o"), st.lists(st.tuples(st.integers(0, 30), st.integers(-5, 40)),
                                     max_size=8)),
    st.tuples(st.just("a"), st.tuples(st.integers(1, 3),
                                     st.sampled_from([-5, 0, 13, 19, 20, 21, 40]))),
    st.tuples(st.just("e"), st.integers(0, 90))), max_size=25))
def test_a_batch_of_labels_for_pending_predictions_joins_as_row_by_row(steps):
    """The batch path of add_outcomes (distinct ids, all pending) against the general
    one: the same labelled predictions, counts and records, late labels included."""
    fast, general = join(horizon_ms=20, segment_size=3), join(horizon_ms=20, segment_size=3)
    general.pending.has_all = lambda ids: False  # every batch takes the general path
    for kind, arg in steps:
        results = []
        pending = sorted(fast.pending.items())
        for j in (fast, general):
            if kind == "p":
                results.append(j.add_predictions([(f"id{i}", t, f"v{i % 2}", i % 3, i / 31)
                                                  for i, t in arg]))
            elif kind == "o":
                rows = {f"id{i}": (f"id{i}", i % 2, i + d, i) for i, d in arg}
                results.append(j.add_outcomes(list(rows.values())))
            elif kind == "a":  # labels for every few pending predictions (the batch path)
                every, d = arg
                results.append(j.add_outcomes([(pid, 1, t + d + int(pid[2:]) % 2, 0)
                                               for pid, (t, *_) in pending[::every]]))
            else:
                results.append(j.expire(arg))
        assert results[0] == results[1]
        assert fast.drain_records() == general.drain_records()
    assert fast.records() == general.records()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("p"), st.lists(st.tuples(st.integers(0, 30), st.integers(0, 60)),
                                     max_size=8, unique_by=lambda r: r[0])),
    st.tuples(st.just("d"), st.lists(st.tuples(st.integers(0, 30), st.integers(0, 60)),
                                     max_size=8)),
    st.tuples(st.just("o"), st.lists(st.tuples(st.integers(0, 30), st.integers(-5, 40)),
                                     max_size=8)),
    st.tuples(st.just("e"), st.integers(0, 90))), max_size=25))
def test_a_batch_of_distinct_predictions_joins_as_row_by_row(steps):
    """The batch path of add_predictions (no id twice, none late), with ids the join
    knows among them (redelivered, or awaited by an outcome), against the general one:
    the same labelled predictions, counts and records."""
    fast, general = join(horizon_ms=20, segment_size=3), join(horizon_ms=20, segment_size=3)
    general._usual = lambda *_: False  # every batch takes the general path
    _same_steps(fast, general, steps)


def _same_steps(fast, general, steps):
    """Predictions (``p``: distinct ids; ``d``: any), outcomes (``o``) and expiries
    (``e``) on both joins: the same results after every step, the same records."""
    for kind, arg in steps:
        results = []
        for j in (fast, general):
            if kind in "pd":
                results.append(j.add_predictions([(f"id{i}", t, f"v{i % 2}", i % 3, i / 31)
                                                  for i, t in arg]))
            elif kind == "o":
                rows = {f"id{i}": (f"id{i}", i % 2, i + d, i) for i, d in arg}
                results.append(j.add_outcomes(list(rows.values())))
            else:
                results.append(j.expire(arg))
        assert results[0] == results[1]
        assert fast.drain_records() == general.drain_records()
    assert fast.records() == general.records()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("p"), st.lists(st.tuples(st.integers(0, 30), st.integers(0, 60)),
                                     max_size=8, unique_by=lambda r: r[0])),
    st.tuples(st.just("o"), st.lists(st.tuples(st.integers(0, 30), st.integers(-30, 40)),
                                     max_size=8)),
    st.tuples(st.just("e"), st.integers(0, 90))), max_size=25))
def test_a_batch_of_early_outcomes_waits_as_row_by_row(steps):
    """The orphans' path of add_outcomes (distinct ids neither map knows: outcomes before
    their predictions), against the general one: the same orphans, counts and records,
    outcomes already past the orphan horizon included."""
    fast = join(horizon_ms=20, orphan_horizon_ms=15, segment_size=3)
    general = join(horizon_ms=20, orphan_horizon_ms=15, segment_size=3)
    general._all_new = lambda *_: False  # every batch takes the general path
    _same_steps(fast, general, steps)
    assert fast.orphan_count == general.orphan_count


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("p"), st.lists(st.tuples(st.integers(0, 30), st.integers(0, 60)),
                                     max_size=8, unique_by=lambda r: r[0])),
    st.tuples(st.just("d"), st.lists(st.tuples(st.integers(0, 30), st.integers(0, 60)),
                                     max_size=4)),
    st.tuples(st.just("o"), st.lists(st.tuples(st.integers(0, 30), st.integers(-30, 40)),
                                     max_size=12)),
    st.tuples(st.just("e"), st.integers(0, 90))), max_size=25))
def test_a_batch_of_outcomes_for_pending_and_new_ids_joins_as_row_by_row(steps):
    """The mixed path of add_outcomes (distinct ids, some pending, the others new: a
    backlog of both topics read at once), against the general one: the same labelled
    predictions in the same order, counts, orphans and records, late labels and
    outcomes past the orphan horizon included."""
    fast = join(horizon_ms=20, orphan_horizon_ms=15, segment_size=3)
    general = join(horizon_ms=20, orphan_horizon_ms=15, segment_size=3)
    general._pending_or_new = lambda *_: False  # every mixed batch takes the general path
    _same_steps(fast, general, steps)
    assert fast.orphan_count == general.orphan_count


def test_the_mixed_path_of_outcomes_is_taken():
    """A batch of outcomes for a pending prediction and a new one takes the mixed path,
    and labels the first while the second waits."""
    j = join(horizon_ms=100, orphan_horizon_ms=100)
    taken_by = j._pending_or_new
    j._pending_or_new = lambda *a: taken.append(taken_by(*a)) or taken[-1]
    taken: list[bool] = []
    j.add_predictions([("a", 10, "v1", 1, None)])
    r = j.add_outcomes([("b", 0, 20, 5), ("a", 1, 30, 6)])
    assert taken == [True]
    assert [(x.prediction_id, x.label, x.seen_ms) for x in r.labelled] == [("a", 1, 6)]
    assert j.orphan_count == 1 and j.pending_count == 0
    assert [x.prediction_id for x in j.add_predictions([("b", 15, "v1", 0, None)]).labelled] \
        == ["b"]


def test_early_outcomes_past_the_orphan_horizon_are_orphans_at_once():
    j = join(horizon_ms=20, orphan_horizon_ms=15)
    j.expire(100)  # the watermark: outcomes older than 85 no longer wait
    r = j.add_outcomes([("a", 1, 84, 0), ("b", 0, 85, 0), ("c", 1, 99, 0)])
    assert r.orphans == 1 and j.orphan_count == 2
    assert "a" not in j.orphans and "b" in j.orphans


def test_a_batch_with_an_awaited_and_a_redelivered_prediction_keeps_its_order():
    j = join(horizon_ms=1_000)
    j.add_predictions([("a", 10, "v1", 1, None)])
    j.add_outcomes([("c", 0, 30, 7)])  # waits for its prediction
    r = j.add_predictions([("b", 20, "v1", 1, 0.5), ("a", 10, "v1", 1, None),
                           ("c", 30, "v2", 0, 0.25), ("d", 40, "v1", 1, 0.75)])
    assert [(x.prediction_id, x.version, x.label, x.seen_ms) for x in r.labelled] == [
        ("c", "v2", 0, 7)]
    assert [pid for pid, _ in j.pending.items()] == ["a", "b", "d"]
    assert j.orphan_count == 0
