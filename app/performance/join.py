"""Joining outcomes (ground-truth labels) to earlier predictions, in either order.

The join is local to a model's state (predictions and outcomes are co-partitioned by
model). Memory is bounded: a pending prediction keeps only what the metrics need (event
time, version, predicted value, the positive-class score), and leaves when it is
labelled, when its label comes later than the label horizon (``too_late``), or when the
watermark passes its event time by more than the horizon (counted as expired, like the
oldest ones evicted past ``max_pending``). An outcome that arrives first waits, for at
most the orphan horizon and at most ``max_orphans`` of them, then is counted as an
orphan. A second outcome for the same prediction is counted as a duplicate and ignored.

Ids that left are remembered until the watermark passes their time by the horizon (and
at most about ``max_pending`` of them per map), so a prediction is labelled at most once:
a duplicated outcome never finds it pending again, and a redelivered prediction is
ignored, or past the horizon (late data, counted expired) once forgotten by time.

Persistence is a stream of small records (see :mod:`app.performance.segments`), so that
each batch writes only what it changed: pending predictions under ``j/p/``, waiting
outcomes under ``j/o/`` (their removal records say why each id left: ``"j"`` labelled,
``"l"`` too late, ``"x"`` expired or evicted, ``"o"`` orphaned, which is how joined ids
are still recognised after a restore) and ``j/m``, the format version and watermark.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from app.errors import StateError
from app.performance.segments import Entry, SegmentedMap, picker
from app.sketches._state import check_state

STATE_KIND = "label-join"
STATE_VERSION = 2  # 1 was a single blob (to_state/load)

META = "j/m"
PENDING = "j/p/"
ORPHANS = "j/o/"
JOINED, LATE, EXPIRED, ORPHANED = "j", "l", "x", "o"  # why an id left a map


class Labelled(NamedTuple):
    """A prediction joined to its label: what the metrics of its window need (a named
    tuple: a batch of them is built, and read as columns, in C)."""

    prediction_id: str
    event_ms: int  # the prediction's event time: its window
    version: str
    predicted: Any
    score: float | None
    label: Any
    label_ms: int  # when the label came (its event time)
    seen_ms: int  # the caller's mark attached to the outcome (e.g. its stream's watermark)

    @property
    def delay_ms(self) -> int:
        return self.label_ms - self.event_ms


def _no_labels() -> list[list[Any]]:
    return [[] for _ in Labelled._fields]


@dataclass
class JoinResult:
    """What a call to the join found. The labelled predictions are kept as columns, in
    :class:`Labelled`'s field order (``columns[j][i]`` is field ``j`` of the ``i``-th):
    the join finds a batch's labels as columns and the tracker places them as columns,
    so no row tuple is built per label in between; :attr:`labelled` reads them as
    rows."""

    columns: list[list[Any]] = field(default_factory=_no_labels)
    expired: int = 0  # predictions past the horizon (or evicted) without a label
    orphans: int = 0  # outcomes whose prediction never came
    duplicates: int = 0  # second outcomes for the same prediction
    too_late: int = 0  # labels that came more than the horizon after their prediction

    @property
    def labelled(self) -> list[Labelled]:
        """The labelled predictions, in the order they were labelled."""
        return list(map(Labelled._make, zip(*self.columns, strict=True)))

    def add(self, labelled: Labelled) -> None:
        for col, value in zip(self.columns, labelled, strict=True):
            col.append(value)

    def add_columns(self, columns: Sequence[Sequence[Any]]) -> None:
        """Labelled predictions given as columns (in :class:`Labelled`'s field order)."""
        for col, values in zip(self.columns, columns, strict=True):
            col += values


class LabelJoin:
    """Pending predictions and early outcomes of one model, persisted as records.

    Parameters
    ----------
    horizon_ms
        A label counts when it comes at most this long after its prediction; a pending
        prediction expires when the watermark passes its event time by more than this.
    orphan_horizon_ms
        An early outcome waits until the watermark passes its label time by more than this.
    max_pending, max_orphans
        Budgets: past them the oldest are evicted (counted expired, resp. orphans).
        Each map also remembers about that many removed ids (for duplicates).
    segment_size
        Entries per segment record.

    Examples
    --------
    >>> j = LabelJoin(horizon_ms=1000, orphan_horizon_ms=1000, max_pending=10, max_orphans=10)
    >>> j.add_outcomes([("p1", 1, 50, 7)]).labelled       # the label comes first
    []
    >>> [(x.label, x.seen_ms) for x in j.add_predictions([("p1", 10, "v1", 1, 0.9)]).labelled]
    [(1, 7)]
    >>> j.add_outcomes([("p1", 1, 60, 8)]).duplicates
    1
    >>> sorted(j.drain_records())                          # the orphan's segment never left
    ['j/m', 'j/o/n', 'j/o/r1']
    >>> LabelJoin.restore(j.records(), horizon_ms=1000, orphan_horizon_ms=1000, max_pending=10,
    ...                   max_orphans=10).add_outcomes([("p1", 1, 70, 9)]).duplicates
    1
    """

    def __init__(self, *, horizon_ms: int, orphan_horizon_ms: int, max_pending: int,
                 max_orphans: int, segment_size: int = 2000) -> None:
        for name, v in (("horizon_ms", horizon_ms), ("orphan_horizon_ms", orphan_horizon_ms),
                        ("max_pending", max_pending), ("max_orphans", max_orphans),
                        ("segment_size", segment_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.horizon_ms = horizon_ms
        self.orphan_horizon_ms = orphan_horizon_ms
        self.max_pending = max_pending
        self.max_orphans = max_orphans
        self.segment_size = segment_size
        # prediction_id -> (event_ms, version, predicted, score)
        self.pending = SegmentedMap(PENDING, segment_size=segment_size,
                                    max_removed=max_pending, width=4)
        # prediction_id -> (label_ms, label, seen_ms)
        self.orphans = SegmentedMap(ORPHANS, segment_size=segment_size,
                                    max_removed=max_orphans, width=3)
        self._watermark: int | None = None  # the highest expire() argument
        self._sent_watermark: int | None = None
        self._meta_written = False

    @property
    def pending_count(self) -> int:
        return len(self.pending)

    @property
    def orphan_count(self) -> int:
        return len(self.orphans)

    @property
    def watermark(self) -> int | None:
        return self._watermark

    def add_predictions(self, rows: Sequence[tuple[str, int, str, Any, float | None]]
                        ) -> JoinResult:
        """Add ``(prediction_id, event_ms, version, predicted, score)`` rows.

        A prediction whose outcome waits joins at once, wherever the watermark is; a
        redelivered one (pending, or remembered as labelled, too late or expired) is
        ignored; one already past the horizon at the watermark whose outcome does not wait
        (late data: its label, had it come in time, would be waiting) counts as expired.

        The watermark is the outcome stream's (:meth:`expire`), so the outcomes of a
        backlog read ahead of its predictions (a smaller topic is read faster) push it
        past predictions still to come: those whose outcomes wait must join them, as
        they would have had they come first. Which predictions are labelled then depends
        only on the outcomes, not on how the two streams interleave.
        """
        cols = [list(c) for c in zip(*rows, strict=True)] if rows else [[]] * 5
        return self.add_prediction_columns(cols[0], cols[1:])

    def add_prediction_columns(self, pids: list[str], cols: Sequence[Sequence[Any]]
                               ) -> JoinResult:
        """:meth:`add_predictions` of the ids and their entries as columns
        (``event_ms``, ``version``, ``predicted``, ``score``): no row tuple per
        prediction, and in the usual batch none at all."""
        out = JoinResult()
        if not pids:
            return out
        unique = set(pids)
        parts = self._known_parts(unique)
        known = set().union(*parts)  # _known, from its parts (read again below)
        wm, horizon = self._watermark, self.horizon_ms
        if self._usual(pids, unique):
            # the usual batch: no id twice; only the ids either map knows (redelivered,
            # or awaited by an outcome) need a look of their own, and the late ones
            # among the others are counted
            keep = self._known_predictions(pids, parts, cols, out) if known else None
            if wm is not None and min(cols[0]) + horizon < wm:  # some late ones
                late = list(map(operator.lt, cols[0], itertools.repeat(wm - horizon)))
                if keep is not None:
                    late = list(map(operator.and_, late, keep))
                out.expired += late.count(True)
                keep = list(map(operator.not_, late)) if keep is None else \
                    list(map(operator.and_, keep, map(operator.not_, late)))
            if keep is not None:
                pids = list(itertools.compress(pids, keep))
                cols = [list(itertools.compress(c, keep)) for c in cols]
            # distinct (a usual batch), and none pending (known: none was redelivered)
            self.pending.add_columns(pids, cols, new=True)
            self._budget_pending(out)
            return out
        fresh: dict[str, Entry] = {}
        for pid, entry in zip(pids, zip(*cols, strict=True), strict=True):
            if pid in fresh:
                continue  # redelivered within the batch
            if pid not in known:  # in neither map (nor remembered): only late data to see
                if wm is not None and entry[0] + horizon < wm:
                    out.expired += 1
                else:
                    fresh[pid] = entry
            elif self._known_prediction(pid, entry, out):
                fresh[pid] = entry
        self.pending.add(fresh.items())
        self._budget_pending(out)
        return out

    @staticmethod
    def _usual(pids: list[str], unique: set[str]) -> bool:
        """Whether a batch of predictions has no id twice."""
        return len(unique) == len(pids)

    def _known_predictions(self, pids: list[str],
                           parts: tuple[set[str], set[str], set[str]],
                           cols: Sequence[Sequence[Any]], out: JoinResult) -> list[bool]:
        """:meth:`_known_prediction` of each prediction of a usual batch (distinct ids)
        whose id either map knows (``parts``: :meth:`_known_parts`), but for lateness:
        whether each of ``pids`` is neither redelivered nor joined (the caller counts
        the late ones among those). Which are redelivered and whose outcome waited is
        found with set operations over the batch (the outcomes of a backlog read from both
        topics at once mostly come first: then most of a batch's ids are known); those
        whose outcome waited leave the orphans together."""
        orphans, horizon = self.orphans, self.horizon_ms
        in_pending, waiting, gone = parts
        redelivered = in_pending | {pid for pid in gone
                                    if orphans.removed(pid) in (JOINED, LATE)}
        waited = waiting - redelivered  # outcomes waiting for these
        dropped = waited | redelivered
        keep = list(map(operator.not_, map(dropped.__contains__, pids)))
        # predictions whose outcome waits for them
        early = list(itertools.compress(range(len(pids)), map(waited.__contains__, pids)))
        if not early:
            return keep
        pick = picker(early)
        ids, event_ms = pick(pids), pick(cols[0])
        label_ms, labels, seen_ms = orphans.columns(ids)
        # remembered until the prediction's own time is past the horizon too, so that a
        # redelivery is never pending again
        remember = max(max(label_ms), max(event_ms))
        joined = [lm - em <= horizon for lm, em in zip(label_ms, event_ms, strict=True)]
        found = [ids, event_ms, pick(cols[1]), pick(cols[2]), pick(cols[3]), labels,
                 label_ms, seen_ms]
        late = joined.count(False)
        out.add_columns(found if not late else
                        [list(itertools.compress(c, joined)) for c in found])
        out.too_late += late
        orphans.pop_each(ids, [JOINED if j else LATE for j in joined], remember)
        return keep

    def _redelivered(self, pid: str) -> bool:
        """Whether a prediction's id was seen before: pending, remembered as removed, or
        joined (or too late) to an outcome that had waited for it."""
        return (pid in self.pending or self.pending.removed(pid) is not None
                or self.orphans.removed(pid) in (JOINED, LATE))

    def _known_prediction(self, pid: str, entry: Entry, out: JoinResult) -> bool:
        """A prediction whose id either map knows: ``True`` when it is to wait (neither
        redelivered, nor late, nor joined at once to an outcome that waited for it)."""
        if self._redelivered(pid):
            return False
        event_ms, version, predicted, score = entry
        early = self.orphans.get(pid)
        if early is None:
            if self._watermark is not None and event_ms + self.horizon_ms < self._watermark:
                out.expired += 1  # late data, no outcome waiting for it
                return False
            return True
        label_ms, label, seen_ms = early
        # remembered until the prediction's own time is past the horizon too, so that a
        # redelivery is never pending again
        remember = max(label_ms, event_ms)
        if label_ms - event_ms > self.horizon_ms:
            self.orphans.pop(pid, LATE, remember)
            out.too_late += 1
        else:
            self.orphans.pop(pid, JOINED, remember)
            out.add(Labelled(pid, event_ms, version, predicted, score, label, label_ms,
                             seen_ms))
        return False

    def _known(self, ids: set[str]) -> set[str]:
        """The ids of a batch that either map holds or remembers: only these need the
        per-id checks."""
        return set().union(*self._known_parts(ids))

    def _known_parts(self, ids: set[str]) -> tuple[set[str], set[str], set[str]]:
        """:meth:`_known` in three parts: the ids the pending map holds or remembers,
        those the orphans map holds (outcomes waiting), and those it remembers."""
        return (self.pending.known(ids), self.orphans.present(ids),
                self.orphans.removed_among(ids))

    def _budget_pending(self, out: JoinResult) -> None:
        while len(self.pending) > self.max_pending:  # over budget: the oldest go unlabelled
            self.pending.pop_oldest(EXPIRED)
            out.expired += 1

    def add_outcomes(self, rows: Sequence[tuple[str, Any, int, int]]) -> JoinResult:
        """Add ``(prediction_id, label, label_ms, seen_ms)`` rows.

        ``seen_ms`` is carried through an orphan wait into :attr:`Labelled.seen_ms`. A
        label more than the horizon after its prediction counts as ``too_late`` (and the
        prediction leaves); a second outcome for an id counts as a duplicate; an early
        outcome already past the orphan horizon at the watermark counts as an orphan.
        """
        out = JoinResult()
        ids = {r[0] for r in rows}
        if rows and len(ids) == len(rows) and self.pending.has_all(ids):
            self._join_pending(rows, out)  # the usual batch: each labels a pending prediction
            return out
        known = self._known(ids)
        if self._all_new(rows, ids, known):
            self._add_orphans(rows, out)  # outcomes before their predictions (a backlog)
            return out
        if self._pending_or_new(rows, ids, known):
            # a backlog of both topics read at once: some outcomes label pending
            # predictions (the known ids), the others come before theirs; each kind as
            # its own batch (ids distinct: what one row does never changes what another
            # finds)
            pending = list(map(known.__contains__, map(operator.itemgetter(0), rows)))
            self._join_pending(list(itertools.compress(rows, pending)), out)
            self._add_orphans([r for r, p in zip(rows, pending, strict=True) if not p], out)
            return out
        fresh: dict[str, Entry] = {}
        wm = self._watermark
        # distinct ids (the usual batch): the labelled predictions leave together below;
        # otherwise each leaves at once, before a later row of the batch asks for it
        removing: dict[str, list[str]] | None = {JOINED: [], LATE: []} \
            if len(ids) == len(rows) else None
        for pid, label, label_ms, seen_ms in rows:
            if pid not in known:  # in neither map (nor remembered): the checks below, inline
                if pid in fresh:
                    out.duplicates += 1
                elif wm is not None and label_ms + self.orphan_horizon_ms < wm:
                    out.orphans += 1
                else:
                    fresh[pid] = (label_ms, label, seen_ms)
                continue
            hit = self.pending.get(pid)
            if hit is not None:
                event_ms, version, predicted, score = hit
                reason = LATE if label_ms - event_ms > self.horizon_ms else JOINED
                if removing is None:
                    self.pending.pop(pid, reason)
                else:
                    removing[reason].append(pid)
                if reason == LATE:
                    out.too_late += 1
                else:
                    out.add(Labelled(pid, event_ms, version, predicted, score, label,
                                     label_ms, seen_ms))
            elif (self.pending.removed(pid) in (JOINED, LATE) or pid in self.orphans
                  or pid in fresh or self.orphans.removed(pid) is not None):
                out.duplicates += 1
            elif (self._watermark is not None
                  and label_ms + self.orphan_horizon_ms < self._watermark):
                out.orphans += 1
            else:
                fresh[pid] = (label_ms, label, seen_ms)
        for reason, pids in (removing or {}).items():
            if pids:
                self.pending.pop_many(pids, reason)
        self.orphans.add(fresh.items())
        self._budget_orphans(out)
        return out

    @staticmethod
    def _all_new(rows: Sequence[Any], ids: set[str], known: set[str]) -> bool:
        """Whether a batch of outcomes has no id twice and none either map knows."""
        return bool(rows) and len(ids) == len(rows) and not known

    def _pending_or_new(self, rows: Sequence[Any], ids: set[str], known: set[str]) -> bool:
        """Whether a batch of outcomes has no id twice, and its ``known`` ids (those
        either map knows) are all pending while the others are new, neither kind empty
        (a subset check over the known ids only)."""
        return (len(ids) == len(rows) and 0 < len(known) < len(ids)
                and self.pending.has_all(known))

    def _add_orphans(self, rows: Sequence[tuple[str, Any, int, int]], out: JoinResult
                     ) -> None:
        """:meth:`add_outcomes` of distinct ids neither map knows, as columns: each waits
        for its prediction, unless already past the orphan horizon at the watermark."""
        pids, labels, label_ms, seen_ms = (list(c) for c in zip(*rows, strict=True))
        cols = [label_ms, labels, seen_ms]
        if self._watermark is not None:
            # kept: label_ms + orphan_horizon_ms >= watermark
            keep = list(map(operator.ge, label_ms,
                            itertools.repeat(self._watermark - self.orphan_horizon_ms)))
            dropped = keep.count(False)
            if dropped:
                out.orphans += dropped
                pids = list(itertools.compress(pids, keep))
                cols = [list(itertools.compress(c, keep)) for c in cols]
        self.orphans.add_columns(pids, cols, new=True)  # distinct, and neither map knows them
        self._budget_orphans(out)

    def _budget_orphans(self, out: JoinResult) -> None:
        while len(self.orphans) > self.max_orphans:  # over budget: the oldest go
            self.orphans.pop_oldest(ORPHANED)
            out.orphans += 1

    def _join_pending(self, rows: Sequence[tuple[str, Any, int, int]], out: JoinResult
                      ) -> None:
        """:meth:`add_outcomes` of distinct ids that are all pending, as columns: what the
        rows one by one would do (each prediction leaves, labelled or too late)."""
        pids, labels, label_ms, seen_ms = (list(c) for c in zip(*rows, strict=True))
        event_ms, versions, predicted, scores = self.pending.columns(pids)
        horizon = self.horizon_ms
        late = [lm - em > horizon for lm, em in zip(label_ms, event_ms, strict=True)]
        found = [pids, event_ms, versions, predicted, scores, labels, label_ms, seen_ms]
        if any(late):
            joined = list(map(operator.not_, late))
            found = [list(itertools.compress(c, joined)) for c in found]
            self.pending.pop_many(found[0], JOINED)
            self.pending.pop_many(list(itertools.compress(pids, late)), LATE)
            out.too_late += late.count(True)
        else:
            self.pending.pop_many(pids, JOINED)
        out.add_columns(found)

    def expire(self, watermark_ms: int) -> JoinResult:
        """Drop predictions older than the horizon and outcomes older than theirs.

        The watermark never goes back (the highest argument so far counts). Removed ids
        of both maps are remembered until ``watermark - horizon_ms`` passes their time.
        An early outcome that joined is remembered by the later of its own time and its
        prediction's, as long as a prediction labelled after it came: not for the orphan
        horizon, which bounds only how long an outcome waits. (An orphan's id, past the
        orphan horizon already, is remembered only when the label horizon is longer.)
        """
        w = watermark_ms if self._watermark is None else max(self._watermark, watermark_ms)
        self._watermark = w
        out = JoinResult()
        out.expired = self.pending.drop_older_than(w - self.horizon_ms, EXPIRED)
        out.orphans = self.orphans.drop_older_than(w - self.orphan_horizon_ms, ORPHANED)
        self.pending.forget_before(w - self.horizon_ms)
        self.orphans.forget_before(w - self.horizon_ms)
        return out

    def drain_records(self) -> dict[str, Any | None]:
        """Record key -> value (``None``: delete) changed since the last drain; once a batch."""
        out = self.pending.drain_records()
        out.update(self.orphans.drain_records())
        if (out and not self._meta_written) or self._watermark != self._sent_watermark:
            out[META] = self._meta()
            self._meta_written = True
            self._sent_watermark = self._watermark
        return out

    def records(self) -> dict[str, Any]:
        """All live records (what the accumulated drains hold)."""
        out = self.pending.records()
        out.update(self.orphans.records())
        if out or self._meta_written or self._watermark is not None:
            out[META] = self._meta()
        return out

    def _meta(self) -> dict[str, Any]:
        return {"kind": STATE_KIND, "v": STATE_VERSION, "w": self._watermark}

    @classmethod
    def restore(cls, records: Mapping[str, Any], *, horizon_ms: int, orphan_horizon_ms: int,
                max_pending: int, max_orphans: int, segment_size: int = 2000) -> LabelJoin:
        """Rebuild a join from its live records (keys outside ``j/`` are ignored).

        Raises :class:`~app.errors.StateError` when the records are malformed.
        """
        j = cls(horizon_ms=horizon_ms, orphan_horizon_ms=orphan_horizon_ms,
                max_pending=max_pending, max_orphans=max_orphans, segment_size=segment_size)
        own = {k: v for k, v in records.items()
               if isinstance(k, str) and k.startswith("j/") and v is not None}
        for key in own:
            if key != META and not key.startswith((PENDING, ORPHANS)):
                raise StateError(f"unknown label-join record {key!r}")
        if META not in own:
            if own:
                raise StateError(f"label-join records without their {META!r} record: "
                                 f"{sorted(own)[:3]}...")
            return j
        meta = check_state(own[META], STATE_KIND, frozenset({STATE_VERSION}))
        w = meta.get("w")
        if w is not None and (isinstance(w, bool) or not isinstance(w, int)):
            raise StateError(f"label-join watermark must be an int or null, got {w!r}")
        j.pending = SegmentedMap.restore(own, prefix=PENDING, segment_size=segment_size,
                                         max_removed=max_pending, width=4)
        j.orphans = SegmentedMap.restore(own, prefix=ORPHANS, segment_size=segment_size,
                                         max_removed=max_orphans, width=3)
        j._watermark = j._sent_watermark = w
        j._meta_written = True
        return j
