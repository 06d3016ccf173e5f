import heapq
from collections import OrderedDict

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import StateError
from app.performance.segments import SegmentedMap

IDS = [f"k{i}" for i in range(12)]


def apply(log, drained):
    """What a compacted changelog keeps: the latest value of each key, None deletes."""
    for key, value in drained.items():
        if value is None:
            log.pop(key, None)
        else:
            log[key] = value


def json_round_trip(records):
    return orjson.loads(orjson.dumps(records))


def test_keys_formats_and_segment_size():
    m = SegmentedMap("x/", segment_size=2)
    m.add([("a", (5, "A")), ("b", (3, "B")), ("c", (9, "C"))])
    assert m.drain_records() == {
        "x/s0": {"i": ["a", "b"], "c": [[5, 3], ["A", "B"]]},
        "x/s1": {"i": ["c"], "c": [[9], ["C"]]},
        "x/n": {"n": 2, "d": None},
    }
    assert m.pop("b", "why") == (3, "B") and m.pop("b", "why") is None
    assert m.removed("b") == "why" and m.removed("a") is None and "b" not in m
    assert m.drain_records() == {"x/r2": {"t": 3, "g": [[0, "why", ["b"]]]},
                                 "x/n": {"n": 3, "d": None}}
    assert m.drain_records() == {}  # nothing changed, nothing written
    assert m.pop_oldest("old") == ("a", (5, "A"))  # s0 now empty: deleted
    assert m.pop_oldest("old") == ("c", (9, "C"))
    assert m.pop_oldest("old") is None
    assert m.drain_records() == {"x/s0": None, "x/s1": None,
                                 "x/r3": {"t": 9, "g": [[0, "old", ["a"]], [1, "old", ["c"]]]},
                                 "x/n": {"n": 4, "d": None}}


def test_a_segment_added_and_emptied_in_one_batch_is_never_written():
    m = SegmentedMap("x/")
    m.add([("a", (1,))])
    m.pop("a", "gone")
    assert m.drain_records() == {"x/r1": {"t": 1, "g": [[0, "gone", ["a"]]]},
                                 "x/n": {"n": 2, "d": None}}


def test_removals_past_the_drop_time_are_not_kept():
    m = SegmentedMap("x/")
    m.add([("a", (1,)), ("b", (50,))])
    m.forget_before(10)
    m.pop_older_than(10, "expired")
    drained = m.drain_records()
    assert [k for k in drained if "/r" in k] == []  # all older than the drop time
    assert m.removed("a") is None
    # ... but the segment still listing "a" is rewritten, so that a restore cannot revive it
    assert drained["x/s0"] == {"i": ["b"], "c": [[50]]}
    again = SegmentedMap.restore(json_round_trip(m.records()), prefix="x/")
    assert list(again.items()) == [("b", (50,))]


def test_pop_older_than_scans_only_segments_that_can_hold_old_entries(monkeypatch):
    m = SegmentedMap("x/", segment_size=10)
    m.add([(f"k{i}", (i,)) for i in range(10_000)])  # 1000 segments
    pops = []
    real = heapq.heappop
    monkeypatch.setattr(heapq, "heappop", lambda h: pops.append(1) or real(h))
    assert [k for k, _ in m.pop_older_than(25, "x")] == [f"k{i}" for i in range(25)]
    assert len(pops) == 3  # segments 0, 1 and 2; the 997 others are not looked at
    assert m.pop_older_than(25, "x") == [] and len(pops) == 3


def test_max_removed_bounds_what_is_remembered_and_never_revives_an_entry():
    m = SegmentedMap("x/", segment_size=100, max_removed=3)
    m.add([(k, (i,)) for i, k in enumerate(IDS)])
    log = {}
    for k in IDS[:8]:
        m.pop(k, "done")
        apply(log, m.drain_records())
    assert [m.removed(k) for k in IDS[:8]] == [None] * 5 + ["done"] * 3
    assert log == m.records()
    # compacted as the removals went: it lists no id that is neither present nor remembered
    assert log["x/s0"]["i"] == IDS[8:]
    assert all(k in m or m.removed(k) for k in log["x/s0"]["i"])
    again = SegmentedMap.restore(json_round_trip(log), prefix="x/", max_removed=3)
    assert list(again.items()) == list(m.items())
    assert [again.removed(k) for k in IDS] == [m.removed(k) for k in IDS]


def test_restore_continues_the_sequence_numbers():
    m = SegmentedMap("x/")
    m.add([("a", (1,))])
    m.drain_records()
    m.pop("a", "y")
    m.drain_records()  # x/s0 deleted, x/r1 written
    m.forget_before(2)
    assert m.drain_records() == {"x/r1": None, "x/n": {"n": 2, "d": 2}}
    assert m.records() == {"x/n": {"n": 2, "d": 2}}  # nothing else left
    again = SegmentedMap.restore(m.records(), prefix="x/")
    again.add([("b", (3,))])
    assert list(again.drain_records()) == ["x/s2", "x/n"]


def test_add_rejects_what_it_cannot_persist():
    m = SegmentedMap("x/", width=2)
    m.add([("a", (1, "x"))])
    with pytest.raises(ValueError, match="already in the map"):
        m.add([("a", (2, "y"))])
    with pytest.raises(ValueError, match="already in the map"):
        m.add([("b", (2, "y")), ("b", (3, "z"))])
    with pytest.raises(ValueError, match="int time"):
        m.add([("c", ("soon", "y"))])
    with pytest.raises(ValueError, match="expected 2"):
        m.add([("c", (1, "y", "z"))])
    with pytest.raises(ValueError, match="segment_size"):
        SegmentedMap("x/", segment_size=0)


@pytest.mark.parametrize(("records", "message"), [
    ({"x/q1": {}}, "unknown record 'x/q1'"),
    ({"x/s01": {}}, "unknown record"),
    ({"x/s0": {"i": ["a"]}}, "must be {'i'"),
    ({"x/s0": {"i": ["a", "b"], "c": [[1], [2, 3]]}}, "every column must have 2 values"),
    ({"x/s0": {"i": ["a"], "c": [["1"], [2]]}}, "int times"),
    ({"x/s0": {"i": ["a", "a"], "c": [[1, 2], [3, 4]]}}, "distinct string ids"),
    ({"x/s0": {"i": ["a"], "c": [[1], [2], [3]]}}, "3 columns, expected 2"),
    ({"x/r1": {"t": 1, "g": [[0, "y"]]}}, "a group must be"),
    ({"x/r1": {"t": "1", "g": []}}, "must be {'t'"),
    ({"x/n": 3}, "record 'x/n' must be"),
    ({"x/s0": {"i": ["a"], "c": [[1], [2]]}, "x/s1": {"i": ["a"], "c": [[1], [2]]}},
     "'a' is present in both x/s0 and x/s1"),
])
def test_malformed_records_raise_state_error(records, message):
    with pytest.raises(StateError, match=message.replace("[", r"\[").replace("{", r"\{")):
        SegmentedMap.restore(records, prefix="x/", width=2)


# -- model-based: restore at any batch boundary is invisible ------------------------------

reasons = st.sampled_from(["a", "b"])
ops = st.one_of(
    st.tuples(st.just("add"), st.lists(st.tuples(st.sampled_from(IDS),
                                                 st.integers(0, 40)), max_size=6)),
    st.tuples(st.just("pop"), st.sampled_from(IDS), reasons),
    st.tuples(st.just("many"), st.lists(st.sampled_from(IDS), unique=True, max_size=6), reasons),
    st.tuples(st.just("older"), st.integers(0, 45), reasons),
    st.tuples(st.just("drop"), st.integers(0, 45), reasons),
    st.tuples(st.just("oldest"), reasons),
    st.tuples(st.just("forget"), st.integers(0, 45)),
)
batches = st.lists(st.lists(ops, min_size=1, max_size=4), min_size=2, max_size=14)


def run(batch_list, params, restore_at=None, source="records"):
    """Apply the batches (draining after each), checking against a plain model; return
    everything observable. restore_at: rebuild the map from its records before that batch."""
    m = SegmentedMap("x/", **params)
    model = OrderedDict()
    log, trace = {}, []
    for b, batch in enumerate(batch_list):
        if b == restore_at:
            records = m.records() if source == "records" else log
            m = SegmentedMap.restore(json_round_trip(records), prefix="x/", **params)
        for op in batch:
            if op[0] == "add":
                fresh = {}
                for k, t in op[1]:
                    if k not in model and k not in fresh:
                        fresh[k] = (t, f"v{t}")
                m.add(fresh.items())
                model.update(fresh)
                got = None
            elif op[0] == "pop":
                got = m.pop(op[1], op[2])
                assert got == model.pop(op[1], None)
            elif op[0] == "many":  # the present ones, together
                present = [k for k in op[1] if k in model]
                got = m.pop_many(present, op[2])
                for k in present:
                    del model[k]
            elif op[0] == "older":
                got = m.pop_older_than(op[1], op[2])
                want = [(k, e) for k, e in model.items() if e[0] < op[1]]
                assert got == want
                for k, _ in want:
                    del model[k]
            elif op[0] == "drop":  # pop_older_than, counted only
                got = m.drop_older_than(op[1], op[2])
                want = [k for k, e in model.items() if e[0] < op[1]]
                assert got == len(want)
                for k in want:
                    del model[k]
            elif op[0] == "oldest":
                got = m.pop_oldest(op[1])
                assert got == (model.popitem(last=False) if model else None)
            else:
                got = m.forget_before(op[1])
            trace.append(got)
        drained = m.drain_records()
        apply(log, drained)
        trace.append(drained)
        assert log == m.records()  # the changelog holds exactly the live records
        assert list(m.items()) == list(model.items()) and len(m) == len(model)
        trace.append({k: m.removed(k) for k in IDS})
        if params.get("max_removed") is not None:  # bounded memory of removals
            assert m._known <= params["max_removed"] + len(IDS)
    return trace, m.records()


@settings(max_examples=300, deadline=None)
@given(batches, st.integers(1, 4), st.none() | st.integers(1, 6), st.data())
def test_restore_from_records_or_changelog_is_invisible(batch_list, size, max_removed, data):
    params = {"segment_size": size, "max_removed": max_removed, "width": 2}
    want, want_records = run(batch_list, params)
    at = data.draw(st.integers(1, max(1, len(batch_list) - 1)))  # mid-run, state to restore
    source = data.draw(st.sampled_from(["records", "changelog"]))
    got, got_records = run(batch_list, params, restore_at=at, source=source)
    assert got == want
    assert got_records == json_round_trip(want_records)


def test_heaps_stay_proportional_to_what_is_live():
    # segments emptied by id (labelled), never by time, and removals dropped by the
    # budget, never by time: neither heap may keep an entry for each of them
    m = SegmentedMap("j/p/", segment_size=10, max_removed=50)
    for b in range(500):
        m.add([(f"k{b}-{i}", (10 * b + i,)) for i in range(10)])
        for i in range(10):
            m.pop(f"k{b}-{i}", "j")
        m.drain_records()
    assert len(m) == 0 and len(m._segs) == 0
    assert len(m._seg_heap) <= 2 * len(m._segs) + 64
    assert len(m._rem_heap) <= 2 * len(m._rems) + 64
    assert m.removed("k499-0") == "j" and m.removed("k0-0") is None
    m.forget_before(10**9)  # the rebuilt heap still forgets by time
    assert m.removed("k499-0") is None and m.drain_records()["j/p/n"]["d"] == 10**9


def test_the_ids_of_one_removal_share_their_reason():
    m = SegmentedMap("j/p/", segment_size=100)
    m.add([(f"k{i}", (i,)) for i in range(100)])
    for i in range(100):
        m.pop(f"k{i}", "j" if i % 2 else "x")
    m.drain_records()
    assert len({id(m._gone[f"k{i}"]) for i in range(100)}) == 2  # one per reason
    back = SegmentedMap.restore(m.records(), prefix="j/p/")
    assert len({id(back._gone[f"k{i}"]) for i in range(100)}) == 2
    assert [back.removed(f"k{i}") for i in range(3)] == ["x", "j", "x"]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 12), size=st.integers(1, 5))
def test_add_columns_writes_what_add_writes(n, size):
    rows = [(f"p{i}", (i * 7, "v1", i % 2, None)) for i in range(n)]
    by_rows, by_cols = SegmentedMap("x/", segment_size=size), SegmentedMap("x/", segment_size=size)
    by_rows.add(rows)
    by_cols.add_columns([k for k, _ in rows],
                        [list(c) for c in zip(*(e for _, e in rows), strict=True)] or [[]] * 4)
    assert by_cols.drain_records() == by_rows.drain_records()
    assert [by_cols.get(k) for k, _ in rows] == [e for _, e in rows]


def test_add_columns_refuses_what_add_refuses():
    m = SegmentedMap("x/")
    m.add_columns(["a"], [[1], ["v"]])
    with pytest.raises(ValueError, match="already in the map"):
        m.add_columns(["a"], [[2], ["v"]])
    with pytest.raises(ValueError, match="must be a tuple starting with an int"):
        m.add_columns(["b"], [["late"], ["v"]])
    # new=True: the caller found the ids distinct and absent; types are still checked
    with pytest.raises(ValueError, match="must be a tuple starting with an int"):
        m.add_columns(["b"], [["late"], ["v"]], new=True)
    with pytest.raises(TypeError, match="ids must be strings"):
        m.add_columns([7], [[1], ["v"]], new=True)
    m.add_columns(["b", "c"], [[2, 3], ["v", "w"]], new=True)
    assert [m.get(k) for k in "abc"] == [(1, "v"), (2, "v"), (3, "w")]


def test_pop_each_leaves_what_pop_one_by_one_leaves_with_the_latest_time():
    one, each = SegmentedMap("x/", segment_size=3), SegmentedMap("x/", segment_size=3)
    for m in (one, each):
        m.add([(f"k{i}", (i, f"v{i}")) for i in range(8)])
        m.drain_records()
    keys, reasons, times = ["k5", "k1", "k2", "k7"], ["j", "l", "j", "j"], [40, 90, 10, 60]
    for k, r, t in zip(keys, reasons, times, strict=True):
        one.pop(k, r, t)
    each.pop_each(keys, reasons, max(times))
    assert list(one.items()) == list(each.items())
    assert {k: one.removed(k) for k in IDS} == {k: each.removed(k) for k in IDS}
    assert one.drain_records() == each.drain_records()  # the same records, in the same order
    each.forget_before(91)
    assert each.removed("k1") is None


@settings(max_examples=150, deadline=None)
@given(order=st.permutations(range(10)), data=st.data())
def test_pop_each_of_runs_and_mixed_reasons_leaves_what_one_by_one_leaves(order, data):
    """Ids in any order, across segments, with reasons that change or not (runs of one
    segment and reason leave together), some removed once before and added again."""
    count = data.draw(st.integers(1, 10))
    keys = [f"k{i}" for i in order[:count]]
    reasons = data.draw(st.lists(st.sampled_from("jlxo"), min_size=count, max_size=count))
    again = data.draw(st.sets(st.sampled_from(keys)))
    one, each = SegmentedMap("x/", segment_size=3), SegmentedMap("x/", segment_size=3)
    for m in (one, each):
        m.add([(f"k{i}", (i, f"v{i}")) for i in range(10)])
        for k in sorted(again):  # removed before, and back
            m.pop(k, "x", 5)
        m.add([(k, (int(k[1:]) + 20, "again")) for k in sorted(again)])
        m.drain_records()
    for k, r in zip(keys, reasons, strict=True):
        one.pop(k, r, 70)
    each.pop_each(keys, reasons, 70)
    assert list(one.items()) == list(each.items())
    assert {k: one.removed(k) for k in IDS} == {k: each.removed(k) for k in IDS}
    assert one.drain_records() == each.drain_records()


def test_pop_each_needs_a_reason_per_id():
    m = SegmentedMap("x/")
    m.add([("a", (1, "v"))])
    with pytest.raises(ValueError, match="1 reasons for 0 ids"):
        m.pop_each([], ["j"], 1)
    m.pop_each([], [], 1)
    assert "a" in m


def test_pop_many_leaves_what_pop_one_by_one_leaves():
    one, many = SegmentedMap("x/", segment_size=3), SegmentedMap("x/", segment_size=3)
    for m in (one, many):
        m.add([(f"k{i}", (i, f"v{i}")) for i in range(8)])
        m.drain_records()
    for k in ["k5", "k1", "k2", "k7"]:
        one.pop(k, "j")
    many.pop_many(["k5", "k1", "k2", "k7"], "j")
    assert list(one.items()) == list(many.items())
    assert {k: one.removed(k) for k in IDS} == {k: many.removed(k) for k in IDS}
    a, b = one.drain_records(), many.drain_records()
    assert a.keys() == b.keys()
    restored = [SegmentedMap.restore(json_round_trip(m.records()), prefix="x/", segment_size=3)
                for m in (one, many)]
    assert list(restored[0].items()) == list(restored[1].items())
    assert {k: restored[0].removed(k) for k in IDS} == {k: restored[1].removed(k) for k in IDS}
