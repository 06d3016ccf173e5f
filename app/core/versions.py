"""Versions side by side by their outputs: rollback advice from prediction drift (pure).

Labels often arrive days after the predictions; a new version that predicts something
very different from the version it replaced should not wait for them. Each version's
outputs (the predicted class or value, the class scores) are kept, per closed window,
as bin-independent profiles: category counts by name, and quantile sketches. After a
``deployed`` event, each window of the new live version is compared with the previous
version's last ``previous_windows`` windows (its most recent traffic, so that slow input
drift is not mistaken for the new version's doing), with the drift statistic the model's
settings choose for the window's size and a two-sample test per output signal
(Benjamini-Hochberg adjusted across them). A ``rollback_recommended`` alert needs both
the **critical** drift threshold and significance: the new version was meant to differ
somewhat (it was retrained), so only a large and real change counts. Advice is given
once per pair of versions, within the first ``judge_windows`` windows after the deploy,
and never towards a version that was itself advised against. A ``rolled_back`` event
changes the live version without judging it (it is returning to a known version).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.evaluation import chosen_statistic
from app.core.signals import is_output_signal, public_name
from app.core.windows import Window
from app.detectors import STATISTICS, bh_adjusted, choose_statistic, p_value
from app.errors import MALFORMED_STATE, StateError
from app.settings import DriftSettings, RollbackSettings
from app.sketches import BinnedHistogram, CategoryCounts, QuantileSketch
from app.sketches.categorical import OTHER

MAX_VERSIONS = 8  # versions whose profiles are kept
STATE_KIND = "version-outputs"


@dataclass
class Profile:
    """One output signal over some windows: category counts by name, or a quantile sketch."""

    counts: dict[str, int] | None = None
    quantiles: QuantileSketch | None = None

    @property
    def n(self) -> int:
        if self.counts is not None:
            return sum(self.counts.values())
        return self.quantiles.n if self.quantiles is not None else 0

    def merged(self, other: Profile) -> Profile:
        if self.counts is not None and other.counts is not None:
            out = dict(self.counts)
            for k, v in other.counts.items():
                out[k] = out.get(k, 0) + v
            return Profile(counts=out)
        if self.quantiles is not None and other.quantiles is not None \
                and self.quantiles.same_grid(other.quantiles):
            return Profile(quantiles=self.quantiles.merge(other.quantiles))
        return other  # a signal whose type changed: the newer windows win

    def to_state(self) -> dict[str, Any]:
        if self.counts is not None:
            return {"counts": self.counts}
        assert self.quantiles is not None
        return {"quantiles": self.quantiles.to_state()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Profile:
        if "counts" in state:
            return cls(counts={str(k): int(v) for k, v in state["counts"].items()})
        return cls(quantiles=QuantileSketch.from_state(state["quantiles"]))


def window_profiles(window: Window, version: str) -> dict[str, Profile]:
    """The output signals of ``version``'s slice of ``window`` (segments aside)."""
    sl = window.slices.get(version)
    if sl is None:
        return {}
    out: dict[str, Profile] = {}
    for name, sketch in sl.sketches.items():
        if not is_output_signal(name):
            continue
        if isinstance(sketch, CategoryCounts):
            labels = [*sketch.categories, OTHER]
            out[name] = Profile(counts={lab: int(c) for lab, c in
                                        zip(labels, sketch.counts.tolist(), strict=True) if c})
        elif isinstance(sketch, BinnedHistogram) and name in sl.quantiles:
            q = sl.quantiles[name]
            out[name] = Profile(quantiles=QuantileSketch.from_state(q.to_state()))
    return out


def _pooled(windows: list[tuple[int, dict[str, Profile]]]) -> dict[str, Profile]:
    out: dict[str, Profile] = {}
    for _, profiles in windows:
        for name, p in profiles.items():
            out[name] = p if name not in out else out[name].merged(p)
    return out


@dataclass(frozen=True)
class OutputComparison:
    signal: str  # public name: "prediction", "scores.churn"
    statistic: str
    value: float
    threshold: float  # the critical threshold it reached
    p_adjusted: float
    n: int  # the live version's outputs in the window
    previous_n: int  # the previous version's outputs compared with
    summary: str  # "true 30% -> 62%", "median 0.31 -> 0.58"


@dataclass(frozen=True)
class OutputRollback:
    """Advice: return from ``version`` to ``target``; the signals that moved, worst first."""

    version: str
    target: str
    window_start_ms: int
    window_end_ms: int
    previous_windows: int  # how many of the target's windows it was compared with
    comparisons: tuple[OutputComparison, ...]


def _categorical(previous: dict[str, int], window: dict[str, int]
                 ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], str]:
    labels = sorted(set(previous) | set(window))
    ref = np.array([previous.get(k, 0) for k in labels], dtype=np.float64)
    win = np.array([window.get(k, 0) for k in labels], dtype=np.float64)
    shares_r, shares_w = ref / max(ref.sum(), 1), win / max(win.sum(), 1)
    i = int(np.argmax(np.abs(shares_w - shares_r)))
    label = labels[i].strip("_")
    return ref, win, f"{label} {shares_r[i]:.0%} -> {shares_w[i]:.0%}"


def compare_outputs(previous: Mapping[str, Profile], window: Mapping[str, Profile],
                    drift: DriftSettings, *, min_samples: int) -> list[OutputComparison]:
    """Every output signal of ``window`` whose move from ``previous`` reaches the critical
    threshold of its statistic with an adjusted p-value at most ``drift.fdr``; worst first.

    >>> prev = {"@prediction": Profile(counts={"true": 300, "false": 700})}
    >>> same = {"@prediction": Profile(counts={"true": 310, "false": 690})}
    >>> moved = {"@prediction": Profile(counts={"true": 750, "false": 250})}
    >>> compare_outputs(prev, same, DriftSettings(), min_samples=200)
    []
    >>> [(c.signal, c.statistic, c.summary) for c in
    ...  compare_outputs(prev, moved, DriftSettings(), min_samples=200)]
    [('prediction', 'jensen_shannon', 'true 30% -> 75%')]
    """
    tested: list[tuple[str, str, float, float, int, int, str]] = []
    for name, win in window.items():
        prev = previous.get(name)
        if prev is None or win.n < min_samples or prev.n < min_samples:
            continue
        if win.counts is not None and prev.counts is not None:
            statistic = chosen_statistic(drift, "categorical", win.n)
            ref_c, win_c, summary = _categorical(prev.counts, win.counts)
            value = STATISTICS[statistic](ref_c, win_c)
            p = p_value(statistic, ref_c, win_c)
        elif win.quantiles is not None and prev.quantiles is not None \
                and win.quantiles.same_grid(prev.quantiles):
            statistic = chosen_statistic(drift, "numeric", win.n)
            spec = STATISTICS[statistic]
            if spec.input != "quantiles":  # a counts statistic named for numeric signals
                statistic = choose_statistic("numeric", win.n)
                spec = STATISTICS[statistic]
            value = spec(prev.quantiles, win.quantiles)
            p = p_value(statistic, prev.quantiles, win.quantiles)
            summary = (f"median {prev.quantiles.quantile(0.5):.4g} -> "
                       f"{win.quantiles.quantile(0.5):.4g}")
        else:
            continue
        if value != value or p != p:  # NaN: nothing comparable
            continue
        tested.append((name, statistic, float(value), float(p), win.n, prev.n, summary))
    adjusted = bh_adjusted([t[3] for t in tested])
    out = []
    for (name, statistic, value, _, n, prev_n, summary), q in zip(tested, adjusted,
                                                                  strict=True):
        critical = drift.thresholds_for(statistic)[1]
        if q <= drift.fdr and value >= critical:
            out.append(OutputComparison(public_name(name), statistic, value, critical, q, n,
                                        prev_n, summary))
    return sorted(out, key=lambda c: (-c.value / c.threshold, c.signal))


class VersionOutputs:
    """Per-version output profiles of recent windows, the live and previous version, and
    the rollback advice already given (see the module docstring)."""

    def __init__(self, settings: RollbackSettings) -> None:
        self.settings = settings
        self.windows: dict[str, list[tuple[int, dict[str, Profile]]]] = {}
        self.live: str | None = None
        self.previous: str | None = None
        self.judged = 0  # windows of the live version judged since its deploy
        self.judging = False  # set by deployed, cleared by rolled_back
        self.advised: list[str] = []  # "new>old" pairs already advised
        self.bad: list[str] = []  # versions advised against

    def note_event(self, event: Mapping[str, Any]) -> None:
        """A model-lifecycle event: ``deployed`` and ``rolled_back`` move the live version."""
        kind, version = event.get("event"), event.get("version")
        if kind not in ("deployed", "rolled_back") or not isinstance(version, str) \
                or version == self.live:
            return
        self.previous, self.live = self.live, version
        self.judged = 0
        self.judging = kind == "deployed"

    def close(self, window: Window, drift: DriftSettings, *, min_samples: int,
              already: set[str] | frozenset[str] = frozenset()) -> OutputRollback | None:
        """Judge ``window`` (see the module docstring), then keep its profiles.

        ``already`` names pairs advised on other evidence (performance), not repeated.
        """
        advice = None
        live, previous = self.live, self.previous
        profiles = {v: window_profiles(window, v) for v in window.versions}
        if self.settings.on_prediction_drift and self.judging and live is not None \
                and previous is not None and live in window.slices:
            pair = f"{live}>{previous}"
            if self.judged < self.settings.judge_windows and pair not in self.advised \
                    and pair not in already and previous not in self.bad \
                    and window.slices[live].n >= min_samples:
                self.judged += 1
                recent = self.windows.get(previous, [])[-self.settings.previous_windows:]
                found = compare_outputs(_pooled(recent), profiles.get(live, {}), drift,
                                        min_samples=min_samples)
                if found:
                    advice = OutputRollback(live, previous, window.start_ms, window.end_ms,
                                            len(recent), tuple(found))
                    self.mark_advised(pair)
        for version, kept in profiles.items():
            if kept and window.slices[version].n >= min_samples:
                self._keep(version, window.start_ms, kept)
        return advice

    def _keep(self, version: str, start_ms: int, profiles: dict[str, Profile]) -> None:
        kept = self.windows.pop(version, [])  # re-inserted: the newest version last
        kept = [w for w in kept if w[0] != start_ms] + [(start_ms, profiles)]
        self.windows[version] = kept[-self.settings.previous_windows:]
        while len(self.windows) > MAX_VERSIONS:  # drop the stalest, never live or previous
            spare = [v for v in self.windows if v not in (self.live, self.previous)]
            self.windows.pop(spare[0] if spare else next(iter(self.windows)))

    def mark_advised(self, pair: str) -> None:
        """Advice given (here, or on performance evidence): not repeated, and its new
        version never a target."""
        if pair not in self.advised:
            self.advised = [*self.advised, pair][-MAX_VERSIONS:]
            bad = pair.partition(">")[0]
            self.bad = [*[v for v in self.bad if v != bad], bad][-MAX_VERSIONS:]

    # -- state ----------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {"kind": STATE_KIND, "v": 1, "live": self.live, "previous": self.previous,
                "judged": self.judged, "judging": self.judging, "advised": self.advised,
                "bad": self.bad,
                "windows": {v: [[start, {k: p.to_state() for k, p in profiles.items()}]
                                for start, profiles in kept]
                            for v, kept in self.windows.items()}}

    def load(self, state: Any) -> None:
        try:
            if state["kind"] != STATE_KIND or state["v"] != 1:
                raise StateError(f"not a {STATE_KIND} v1 state: {state['kind']!r} "
                                 f"v{state['v']!r}")
            self.live, self.previous = state["live"], state["previous"]
            self.judged, self.judging = int(state["judged"]), bool(state["judging"])
            self.advised = [str(p) for p in state["advised"]]
            self.bad = [str(v) for v in state["bad"]]
            self.windows = {str(v): [(int(start), {str(k): Profile.from_state(p)
                                                   for k, p in profiles.items()})
                                     for start, profiles in kept]
                            for v, kept in state["windows"].items()}
        except StateError:
            raise
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt {STATE_KIND} state: {exc!r}") from None
