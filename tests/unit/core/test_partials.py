"""Numeric window counts made where messages are decoded (app.core.partials): a worker's
state is the same to the last byte whether its slices count the values or add the
counts, and counts are added only where they fit."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from app.core import partials
from app.core.monitor import ModelMonitor
from app.core.partials import Binning, count, message_counts
from app.core.signals import Columns
from app.core.windows import Slice
from app.events.block import EventBlock, block_of
from app.events.checks import PREDICTION
from app.events.decode import decode_message
from app.reference import NumericReference, load_references
from app.settings import settings_from_mapping
from app.sketches import BinnedHistogram, QuantileSketch
from app.sketches.quantile import default_buckets

T0 = 1_700_000_000_000 // 60_000 * 60_000
MINUTE = 60_000


def _settings(tmp: Path, window: str = "1m", hop: str | None = None, **model: Any) -> Any:
    rng = np.random.default_rng(3)
    ref = tmp / "ref.jsonl"
    ref.write_bytes(b"\n".join(orjson.dumps(
        {"x": float(rng.normal(0, 1)), "y": float(rng.normal(5, 2)), "n": int(rng.integers(0, 5)),
         "c": str(rng.choice(["a", "b"])), "scores.1": float(rng.uniform())})
        for _ in range(400)))
    features = {"x": {"type": "numeric"}, "y": {"type": "numeric"}, "n": {"type": "numeric"},
                "c": {"type": "categorical"}}
    defaults: dict[str, Any] = {"window": window, "lateness": "1s", "min_samples": 20}
    if hop is not None:
        defaults["hop"] = hop
    return settings_from_mapping({"defaults": defaults, "models": {"m": {
        "features": features, "reference": {"file": str(ref)}, **model}}}, env={})


def _values(rng: np.random.Generator, kind: str) -> dict[str, Any]:
    x = {"normal": float(rng.normal(0, 1)), "zero": 0.0, "tiny": 1e-12,
         "wide": float(rng.choice([1e-6, 1e6])) * float(rng.normal())}[kind]
    return {"x": round(x, 9), "y": round(float(rng.normal(5, 2)), 3),
            "n": int(rng.integers(0, 5)), "c": str(rng.choice(["a", "b", "z"]))}


def _events(rng: np.random.Generator, n: int, start: int, span_ms: int, *, kind: str = "normal",
            versions: tuple[str, ...] = ("v1",)) -> list[dict[str, Any]]:
    return [{"prediction_id": f"p{start}-{i}", "model": "m",
             "model_version": str(rng.choice(versions)),
             "features": _values(rng, kind), "prediction": bool(rng.integers(0, 2)),
             "scores": {"1": round(float(rng.uniform()), 4)},
             "timestamp": start + int(rng.integers(0, span_ms))} for i in range(n)]


def _block(events: list[dict[str, Any]], monitor: ModelMonitor | None) -> EventBlock:
    """The events as a decode process hands them over: a block, counted when
    ``monitor`` (whose binnings it is told) is given."""
    out = block_of(decode_message(orjson.dumps(events), PREDICTION, max_bytes=1 << 24,
                                  max_elements=100_000).events, "prediction",
                   buckets=True)
    assert out is not None
    if monitor is not None:
        counts = message_counts(out, monitor.hop_ms, monitor.binnings())
        if counts is not None:
            out.partials = {key: [c] for key, c in counts.items()}
    return out


def _feed(monitor: ModelMonitor, messages: list[list[dict[str, Any]]], *, counted: bool
          ) -> None:
    """Ingest the messages as batches of up to three, deferred and windowed together, as
    a worker does."""
    for i in range(0, len(messages), 3):
        for events in messages[i:i + 3]:
            b = _block(events, monitor if counted else None)
            monitor.ingest(b, b.column("timestamp"), None, defer=True)
        monitor.window_deferred()


def _same(settings: Any, messages: list[list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
          ) -> tuple[int, int]:
    """Feed two monitors the messages, counted and not: their states are the same to the
    last byte. Returns how many slice updates were given counts, and how many of those
    added them."""
    refs = load_references(settings)
    given, added = [], []
    real_update, real_add = Slice.update, partials.add_counts

    def update(self: Slice, events: Any, columns: Any = None, counted: Any = None) -> None:
        given.append(bool(counted))
        real_update(self, events, columns, counted)

    monkeypatch.setattr(Slice, "update", update)
    monkeypatch.setattr("app.core.windows.add_counts", lambda *a: added.append(1) or real_add(*a))
    plain, counted = ModelMonitor("m", settings, refs["m"]), ModelMonitor("m", settings, refs["m"])
    _feed(plain, messages, counted=False)
    assert not any(given) and not added
    given.clear()
    _feed(counted, messages, counted=True)
    assert orjson.dumps(counted.to_state()) == orjson.dumps(plain.to_state())
    return sum(given), len(added)


@pytest.mark.parametrize("seed", range(6))
def test_counted_messages_leave_the_same_state_as_counting_their_values(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Messages within a window, across windows, of two versions, with zeros and values
    far apart, and late ones: the same state, and counts added wherever they could be."""
    settings = _settings(tmp_path, **({"segments": ["region"]} if seed == 5 else {}))
    rng = np.random.default_rng(seed)
    messages = []
    for j in range(12):
        start = T0 + j * 20_000  # three messages a window; every other one spans two
        kind = ["normal", "zero", "tiny", "wide"][j % 4]
        messages.append(_events(rng, int(rng.integers(5, 60)), start,
                                30_000 if j % 2 else 10_000, kind=kind,
                                versions=("v1", "v2") if seed % 2 else ("v1",)))
    # late: a message reaching back a minute before what came already
    messages.append(_events(rng, 30, T0 + 2 * MINUTE, 20_000))
    given, added = _same(settings, messages, monkeypatch)
    assert given > added >= 4  # (given, not added: where the late message is windowed)


def test_sliding_windows_add_a_message_s_counts_to_each_window_holding_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path, window="2m", hop="1m")
    rng = np.random.default_rng(7)
    messages = [_events(rng, 40, T0 + j * 30_000, 25_000) for j in range(8)]
    # each batch is in two or three windows (one per hop back)
    given, added = _same(settings, messages, monkeypatch)
    assert given >= added >= 6


def test_counts_are_not_added_where_the_events_are_not_all_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message some of whose events are late (the watermark passed their window's close
    within the message): its window is counted from the events that are windowed."""
    settings = _settings(tmp_path)
    rng = np.random.default_rng(8)
    early = _events(rng, 20, T0, 10_000)
    jump = _events(rng, 1, T0 + 2 * MINUTE, 1)
    # events of the first window before and after one two minutes on: those after are late
    mixed = early[:10] + jump + early[10:]
    for i, e in enumerate(mixed):
        e["prediction_id"] = f"q{i}"
    # given for both windows, added to the jump's own only
    assert _same(settings, [mixed], monkeypatch) == (2, 1)


def test_counts_of_another_binning_are_not_added(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A version's reference replaced while its window is open: the slice keeps the bins
    it opened with, and counts made with the new ones are not added to it."""
    settings = _settings(tmp_path)
    refs = load_references(settings)
    rng = np.random.default_rng(9)
    first, second = _events(rng, 30, T0, 10_000), _events(rng, 30, T0 + 20_000, 10_000)
    plain, counted = ModelMonitor("m", settings, refs["m"]), ModelMonitor("m", settings, refs["m"])
    for m in (plain, counted):
        m.ingest(_block(first, m if m is counted else None), [e["timestamp"] for e in first],
                 None)
    old = refs["m"]
    assert old is not None
    feats = dict(old.features)
    x = feats["x"]
    assert isinstance(x, NumericReference)
    feats["x"] = NumericReference(tuple(e + 0.25 for e in x.edges), x.counts, x.missing,
                                  x.mean, x.std, x.quantiles, x.distribution)
    new = type(old)(**{**old.__dict__, "features": feats})
    added = []
    monkeypatch.setattr("app.core.windows.add_counts", lambda *a: added.append(1))
    for m in (plain, counted):
        m.install_reference("v1", new)
        b = _block(second, m if m is counted else None)
        assert (b.partials is not None) is (m is counted)
        m.ingest(b, [e["timestamp"] for e in second], None)
    assert not added
    assert orjson.dumps(counted.to_state()) == orjson.dumps(plain.to_state())


def test_a_message_is_counted_per_window_and_version(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    monitor = ModelMonitor("m", settings, load_references(settings)["m"])
    rng = np.random.default_rng(4)
    events = _events(rng, 50, T0 + 40_000, 40_000, versions=("v1", "v2"))
    monitor.versions_seen += ["v1", "v2"]
    b = _block(events, None)
    counts = message_counts(b, MINUTE, monitor.binnings())
    assert counts is not None
    expected: dict[tuple[int, str], int] = {}
    for e in events:
        key = (e["timestamp"] // MINUTE * MINUTE, e["model_version"])
        expected[key] = expected.get(key, 0) + 1
    assert {k: c.counts.n for k, c in counts.items()} == expected and len(expected) == 4
    # a version nobody said how to count, or times that are not epoch milliseconds
    assert message_counts(b, MINUTE, {"v1": monitor.binnings()["v1"]}) is None
    # any other version: binned as a version not seen yet would be
    fresh = ModelMonitor("m", settings, load_references(settings)["m"])
    assert set(fresh.binnings()) == {None}
    other = message_counts(b, MINUTE, fresh.binnings())
    assert other is not None and {k: c.counts.n for k, c in other.items()} == expected
    stamped = [{**e, "timestamp": "2023-11-14T22:14:00Z"} for e in events]
    assert message_counts(_block(stamped, None), MINUTE, monitor.binnings()) is None


def test_counts_equal_the_sketches_own_counting() -> None:
    rng = np.random.default_rng(5)
    edges = (np.array([-1.0, 0.0, 1.0]), np.array([0.5]), np.array([-2.0, 2.0, 3.0, 4.0]))
    binning = Binning(("a", "b", "c"), edges, 2048)
    for x in (rng.normal(0, 1, (3, 200)).round(3), np.zeros((3, 5)),
              np.array([[1e-12, 1.0, -1.0], [0.5, 0.5, 0.5], [1e5, -1e-5, 0.0]])):
        c = count(binning, x, default_buckets(x))
        assert c is not None and c.n == x.shape[1]
        hists, quants = [BinnedHistogram(e) for e in edges], [QuantileSketch() for _ in edges]
        partials.add_counts(hists, quants, [c, c], np.concatenate([x, x], axis=1))
        h2, q2 = [BinnedHistogram(e) for e in edges], [QuantileSketch() for _ in edges]
        BinnedHistogram.update_rows(h2, np.concatenate([x, x], axis=1))
        QuantileSketch.update_rows(q2, np.concatenate([x, x], axis=1))
        assert [h.to_state() for h in hists] == [h.to_state() for h in h2]
        assert [q.to_state() for q in quants] == [q.to_state() for q in q2]
    # what the sketches count value by value is not counted
    assert count(binning, np.array([[np.nan, 1.0]] * 3), None) is None
    assert count(binning, np.array([[1e200, 1.0]] * 3), None) is None


def test_a_binning_is_what_the_slices_count_with(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    ref = load_references(settings)["m"]
    assert ref is not None
    b = Binning.of(ref)
    assert b is not None and set(b.names) == {"x", "y", "n", "@scores.1"} - (
        set(b.names) ^ {n for n, f in ref.features.items() if isinstance(f, NumericReference)})
    hists = [ref.features[n].sketch() for n in b.names]  # type: ignore[union-attr]
    quants = [ref.features[n].empty_quantile_sketch() for n in b.names]  # type: ignore[union-attr]
    assert b.fits(b.names, hists, quants)
    assert not b.fits(b.names[::-1], hists[::-1], quants[::-1])
    assert not b.fits(b.names, hists, [QuantileSketch(alpha=0.02)] * len(b.names))
    assert not b.fits(b.names, [BinnedHistogram(h.edges + 1) for h in hists], quants)


def test_categorical_tallies_leave_the_same_state_as_reading_the_values(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The category counts and quality counts (nulls, unseen values) made from the
    tallies decode processes send: the same state as from the values. A column with a
    value of another type (an integer among the strings) is not tallied: its values are
    read, the other signals' tallies still used."""
    settings = _settings(tmp_path)
    rng = np.random.default_rng(11)
    messages = []
    for j in range(9):
        events = _events(rng, 40, T0 + j * 20_000, 15_000)
        for e in events[::7]:
            e["features"]["c"] = None
        if j == 4:
            events[3]["features"]["c"] = 3
        messages.append(events)
    used: dict[str, list[bool]] = {"windows": [], "monitor": []}
    for where in used:

        def recording(counted: Any, names: Any, n: int, *, _to: list[bool] = used[where]
                      ) -> Any:
            out = partials.tallies_of(counted, names, n)
            _to.append(bool(out))
            return out

        monkeypatch.setattr(f"app.core.{where}.tallies_of", recording)
    _same(settings, messages, monkeypatch)
    # three batches of three messages, each batch in a window of its own, fed to a
    # monitor without counts, then to one with: the slice's category counts and the
    # quality counts of c from the tallies, but in the fourth message's batch
    expected = [False] * 3 + [True, False, True]
    assert used == {"windows": expected, "monitor": expected}
    assert partials.tallies(Columns(_block(messages[4], None)), ["c", "@prediction"]) == {
        "@prediction": Counter(e["prediction"] for e in messages[4])}


def _with_serving(rng: np.random.Generator, events: list[dict[str, Any]], kind: str
                  ) -> list[dict[str, Any]]:
    """Serving fields: ``floats`` (every event a float latency, none a cost: counted
    where decoded), or a mix the worker counts itself (ints, absent, costs, zeros)."""
    for i, e in enumerate(events):
        if kind == "floats":
            e["latency_ms"] = round(float(rng.lognormal(3, 1)), 3) if i % 7 else 0.0
        elif i % 3 == 0:
            e["latency_ms"] = int(rng.integers(1, 500))
        elif i % 3 == 1:
            e["cost"] = round(float(rng.uniform(0, 0.01)), 6)
    return events


@pytest.mark.parametrize("kind", ["floats", "mixed"])
def test_serving_latency_counted_where_decoded_leaves_the_same_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """The windows' serving figures (latency quantiles, cost) are the same whether the
    worker reads the latencies or adds a decode process's counts of them; counts are
    added only for messages every event of which has a float latency and no cost."""
    from app.core.serving import ServingStats

    settings = _settings(tmp_path)
    rng = np.random.default_rng(11)
    messages = [_with_serving(rng, _events(rng, int(rng.integers(5, 60)), T0 + j * 20_000,
                                           30_000 if j % 2 else 10_000,
                                           versions=("v1", "v2")), kind)
                for j in range(9)]
    messages.append(_with_serving(rng, _events(rng, 30, T0 + MINUTE, 20_000), kind))  # late
    used: list[int] = []
    real = ServingStats.add_latency_counts

    def add_latency_counts(self: ServingStats, counted: Any, n: int) -> None:
        used.append(n)
        real(self, counted, n)

    monkeypatch.setattr(ServingStats, "add_latency_counts", add_latency_counts)
    _same(settings, messages, monkeypatch)
    refs = load_references(settings)
    m = ModelMonitor("m", settings, refs["m"])
    _feed(m, messages, counted=True)
    figures = [st.figures() for w in m.windows.values() for st in w.serving.values()]
    assert figures and all(f["latency_ms"] is not None for f in figures)
    if kind == "floats":
        assert len(used) >= 4 and sum(used) > 200
        stats = [st for w in m.windows.values() for st in w.serving.values()]
        assert all(st.n == st.latency.n > 0 for st in stats)
    else:
        assert not used
        assert all(f["cost"] is not None for f in figures)
