"""Streaming change detectors: river's detectors behind one small protocol, with explicit state.

Seven detectors sit in one registry, :data:`STREAM_DETECTORS`. ``adwin``, ``page_hinkley``
and ``kswin`` take real values. ``ddm``, ``eddm``, ``hddm_a`` and ``hddm_w`` take error
streams: 1 for an error, 0 for a correct prediction. Each one wraps river's own detector
and produces numbers only: ``update`` says whether a change was detected at that value,
and the policy layer decides what to do about it.

Reset semantics
---------------
river resets a detector on the update *after* a detection: ``drift_detected`` is True
for that one update, and the next ``update`` call starts from a fresh state. The wrapper
makes the reset explicit and does it *at* the detection. :meth:`RiverDetector.update`
returns True for exactly the value at which river reports the change, and by the time
it returns, the river detector has already been replaced by a fresh one built from the
same hyperparameters. river's reset does not depend on the next value, so every later
detection is the same as river's. ``to_state()`` taken right after a detection is a
fresh run's state plus the counters. Two things do not reset at a detection: ``n``
(values seen since construction or the last :meth:`~RiverDetector.reset`) and
``n_detections``.

State
-----
``to_state()`` returns plain JSON data, not a pickle::

    {"kind": "adwin", "v": 1, "river": "0.23.0", "params": {...}, "n": 2000,
     "n_detections": 1, "detector": {...}}

``detector`` mirrors river's internal attributes. Each class lists them by name in its
``_FIELDS`` table, which documents the river 0.23.0 layout. A detector reads these
attributes once when it is built. If a river release renames or drops one of them,
building the detector fails with :class:`~app.errors.StateError`, so the state cannot be
silently lost. ``river`` records the version that wrote the state and is for
information only. Numbers keep the int or float type river gave them. JSON cannot hold
infinities or NaN, so those are written as the strings ``"inf"``, ``"-inf"`` and ``"nan"``.

Native parts
~~~~~~~~~~~~
Three detectors keep part of their state in compiled code. It is read and written as
plain numbers:

- KSWIN draws its reference sample with ``random.Random(seed).sample``. The Mersenne
  Twister state is stored as 625 integers (about 7 KB of JSON), so a restored detector
  draws the same samples. ``seed`` defaults to 0, so replays give the same detections.
- ADWIN keeps its buckets in the Cython class ``river.drift.adwin_c.AdaptiveWindowing``.
  Its scalar fields and every bucket's arrays are read and written through Cython's
  auto-pickle hooks, ``__reduce_cython__`` and ``__setstate_cython__``. The field layout
  is checked against the checksum Cython derives from the field names. Only plain
  numbers are stored, never the pickle.
- HDDM_W's ``stats.EWMean`` is river's Rust ``RsEWMean``. Its ``__getstate__`` bytes
  are the bincode encoding of ``(mean, alpha, alpha)``, and only ``mean`` is stored.

Because the real river object does the work, there is no port of river's algorithms
here. Restores are exact, bit for bit. The tests check this three ways: detection
indices match river run directly, restored runs match uninterrupted ones, and a restored
river object pickles to the same bytes as the original. The pickle is used only for that
comparison.

Costs
-----
Per-value cost of ``update_many`` with default hyperparameters, wrapper included, with
river's own detector run directly in brackets. Measured with timeit on river 0.23.0 and
CPython 3.11, on a busy two-core machine: 20,000 values (KSWIN 4,000) with one change,
median of 5 runs.

=============  ==================  =========================================
detector       µs per value        notes
=============  ==================  =========================================
adwin          3.1 (river 2.9)     Cython; checks cuts every ``clock`` values
page_hinkley   0.7 (0.6)
kswin          270 (265)           ``scipy.stats.ks_2samp`` on every value
ddm            0.6 (0.5)
eddm           0.5 (0.4)
hddm_a         4.5 (4.4)           river's occasional ``Mean.clone()`` is costly
hddm_w         4.7 (4.5)
=============  ==================  =========================================

DESIGN measured KSWIN at about 146 µs per value on another machine. The wrapper adds
0.1 to 0.2 µs per value. ``to_state`` plus ``from_state`` takes under 0.15 ms. The JSON
state is under 1 KB, except ADWIN (about 3 KB, growing with the log of its window) and
KSWIN (about 9 KB, mostly the RNG). These detectors are meant for sampled or aggregated
signals such as error rates and window statistics, not for every raw event. KSWIN in
particular is too slow for that.

>>> import numpy as np
>>> rng = np.random.default_rng(7)
>>> stream = np.concatenate([rng.normal(0, 1, 1000), rng.normal(2, 1, 1000)])
>>> det = make_detector("adwin")
>>> det.update_many(stream)
[1023]
>>> det.n, det.n_detections
(2000, 1)
"""

from __future__ import annotations

import collections
import copy
import hashlib
import importlib.metadata
import math
import numbers
import random
import struct
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any, ClassVar, NamedTuple, Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt
from river import drift, stats
from river.drift import adwin_c, binary

from app.detectors import kernels
from app.errors import MALFORMED_STATE, StateError
from app.sketches._state import check_state

_RIVER_VERSION = importlib.metadata.version("river")
_C_INT_MAX = 2**31 - 1  # ADWIN's hyperparameters are C ints in river's Cython class


@runtime_checkable
class StreamDetector(Protocol):
    """A change detector fed one value at a time. Its state can be serialised."""

    name: str

    def update(self, x: float) -> bool:
        """Add one value; True when a change is detected at this value."""
        ...

    def update_many(self, values: npt.NDArray[np.float64] | Sequence[float]) -> list[int]:
        """Add values in order; the offsets (within ``values``) of the detections."""
        ...

    @property
    def n(self) -> int:
        """Values seen since construction or the last :meth:`reset` (not detections)."""
        ...

    def reset(self) -> None:
        """Forget everything: a fresh detector with the same hyperparameters."""
        ...

    def to_state(self) -> dict[str, Any]:
        """Plain JSON data: ``{"kind": ..., "v": 1, ...}``."""
        ...

    @classmethod
    def from_state(cls, state: Any) -> StreamDetector:
        """The detector ``state`` describes, or :class:`~app.errors.StateError`."""
        ...


# -- codecs: one river attribute <-> plain JSON data ------------------------------------


class _Codec(NamedTuple):
    dump: Callable[[Any], Any]  # river value -> plain data
    load: Callable[[Any, Any], Any]  # (plain data, river's current value) -> river value


def _dump_float(value: Any) -> float | str:
    v = float(value)
    return v if math.isfinite(v) else repr(v)  # JSON has no inf/nan: "inf", "-inf", "nan"


def _load_float(data: Any) -> float:
    if isinstance(data, str) and data in ("inf", "-inf", "nan"):
        return float(data)
    if isinstance(data, bool) or not isinstance(data, (int, float)):
        raise TypeError(f"expected a number, got {data!r}")
    return float(data)


def _dump_number(value: Any) -> int | float | str:
    """A river number as JSON, keeping ints ints: river starts some sums at ``0`` or ``-1``."""
    return value if type(value) is int else _dump_float(value)


def _load_number(data: Any) -> int | float:
    return data if type(data) is int else _load_float(data)


def _load_int(data: Any) -> int:
    if isinstance(data, bool) or not isinstance(data, int):
        raise TypeError(f"expected an integer, got {data!r}")
    return int(data)


def _load_bool(data: Any) -> bool:
    if not isinstance(data, bool):
        raise TypeError(f"expected a boolean, got {data!r}")
    return data


_NUMBER = _Codec(_dump_number, lambda data, _: _load_number(data))
_OPT_FLOAT = _Codec(
    lambda v: None if v is None else _dump_float(v),
    lambda data, _: None if data is None else _load_float(data),
)
_INT = _Codec(int, lambda data, _: _load_int(data))
_BOOL = _Codec(bool, lambda data, _: _load_bool(data))


def _load_window(data: Any, current: collections.deque[float]) -> collections.deque[float]:
    if not isinstance(data, list) or len(data) > (current.maxlen or 0):
        raise ValueError(f"window must be a list of at most {current.maxlen} numbers")
    return collections.deque((_load_float(v) for v in data), maxlen=current.maxlen)


def _dump_rng(rng: random.Random) -> dict[str, Any]:
    version, internal, gauss_next = rng.getstate()
    return {"version": version, "mt": list(internal), "gauss_next": gauss_next}


def _load_rng(data: Any, _: Any) -> random.Random:
    rng = random.Random()
    mt = tuple(_load_int(i) for i in data["mt"])
    gauss = data["gauss_next"]
    rng.setstate((_load_int(data["version"]), mt, None if gauss is None else _load_float(gauss)))
    return rng


_WINDOW = _Codec(lambda w: [_dump_float(v) for v in w], _load_window)
_RNG = _Codec(_dump_rng, _load_rng)
# KSWIN's p_value is 0 until the first test, then the numpy float scipy returns.
_P_VALUE = _Codec(
    _dump_number,
    lambda data, _: v if isinstance(v := _load_number(data), int) else np.float64(v),
)

# river's Rust RsEWMean pickles as bincode of {ewmean: {mean, alpha}, alpha}: three f64.
_EWMEAN_LAYOUT = struct.Struct("<3d")


def _ewmean_fields(rs: Any) -> tuple[float, float, float]:
    raw = rs.__getstate__()
    if not isinstance(raw, bytes) or len(raw) != _EWMEAN_LAYOUT.size:
        raise StateError(_layout_message("stats.EWMean (RsEWMean)", "its pickled state changed"))
    mean, alpha, alpha_again = _EWMEAN_LAYOUT.unpack(raw)
    if alpha != alpha_again or not (mean == rs.get() or math.isnan(mean)):
        raise StateError(_layout_message("stats.EWMean (RsEWMean)", "its pickled state changed"))
    return mean, alpha, alpha_again


def _load_ewmean(data: Any, rs: Any) -> Any:
    _, alpha, alpha_again = _ewmean_fields(rs)
    rs.__setstate__(_EWMEAN_LAYOUT.pack(_load_float(data), alpha, alpha_again))
    return rs


_EWMEAN = _Codec(lambda rs: _dump_float(_ewmean_fields(rs)[0]), _load_ewmean)

# ADWIN: river.drift.adwin_c.AdaptiveWindowing and Bucket are Cython classes whose
# auto-pickle support exposes every field, in sorted order, with a layout checksum.
_ADWIN_FIELDS = (
    "clock", "delta", "detect", "detect_twice", "grace_period", "max_buckets",
    "max_n_buckets", "min_window_length", "n_buckets", "n_detections", "tick", "total",
    "total_width", "variance", "width",
)  # fmt: skip
_ADWIN_HYPER = frozenset({"clock", "delta", "grace_period", "max_buckets", "min_window_length"})
_ADWIN_FLOATS = frozenset({"total", "total_width", "variance", "width"})
_BUCKET_FIELDS = ("current_idx", "max_size", "total_array", "variance_array")


@cache
def _cython_checksums(fields: tuple[str, ...]) -> frozenset[int]:
    """The checksums Cython's auto-pickle derives from a cdef class's sorted field names."""
    names = " ".join(fields).encode()
    return frozenset(
        int(hashlib.new(algo, names, usedforsecurity=False).hexdigest()[:7], 16)
        for algo in ("sha256", "sha1", "md5")
    )


def _cython_fields(obj: Any, fields: tuple[str, ...]) -> tuple[Any, ...]:
    """Every field of a Cython object, in ``fields`` order (plus ``__dict__`` if any)."""
    what = f"drift.adwin_c.{type(obj).__name__}"
    try:
        reduced = obj.__reduce_cython__()
        checksum = reduced[1][1]
        values = reduced[2] if len(reduced) > 2 and reduced[2] is not None else reduced[1][2]
    except (AttributeError, IndexError, TypeError):
        raise StateError(_layout_message(what, "it no longer pickles its fields")) from None
    if checksum not in _cython_checksums(fields) or len(values) < len(fields):
        raise StateError(_layout_message(what, f"its fields are no longer {', '.join(fields)}"))
    return tuple(values)


AdwinBucket = tuple[int, npt.NDArray[np.float64], npt.NDArray[np.float64]]


def _read_adwin(helper: Any) -> tuple[dict[str, Any], list[AdwinBucket]]:
    """river's ADWIN object as its fields (by name) and its bucket rows, newest first:
    (slots used, totals, variances) each."""
    values = _cython_fields(helper, _ADWIN_FIELDS)
    try:
        bucket_deque = values[len(_ADWIN_FIELDS)]["bucket_deque"]
    except (IndexError, KeyError, TypeError):
        raise StateError(_layout_message("drift.adwin_c.AdaptiveWindowing",
                                         "it no longer keeps a bucket_deque")) from None
    buckets = []
    for bucket in bucket_deque:
        used, _, totals, variances = _cython_fields(bucket, _BUCKET_FIELDS)
        buckets.append((int(used), totals, variances))
    return dict(zip(_ADWIN_FIELDS, values, strict=False)), buckets


def _write_adwin(helper: Any, fields: dict[str, Any], buckets: Iterable[AdwinBucket]) -> None:
    """Set river's ADWIN object to these fields and bucket rows (:func:`_read_adwin`)."""
    size = fields["max_buckets"]
    bucket_deque: collections.deque[Any] = collections.deque()
    for used, totals, variances in buckets:
        bucket = adwin_c.Bucket(size)
        bucket.__setstate_cython__((used, size, totals, variances))  # type: ignore[attr-defined]
        bucket_deque.append(bucket)
    helper.__setstate_cython__((*(fields[k] for k in _ADWIN_FIELDS),
                                {"bucket_deque": bucket_deque}))


def _dump_adwin(helper: Any) -> dict[str, Any]:
    fields, buckets = _read_adwin(helper)
    out: dict[str, Any] = {k: (_dump_float(v) if k in _ADWIN_FLOATS else int(v))
                           for k, v in fields.items() if k not in _ADWIN_HYPER}
    out["buckets"] = [{"used": used, "totals": [_dump_float(t) for t in totals],
                       "variances": [_dump_float(v) for v in variances]}
                      for used, totals, variances in buckets]
    return out


def _load_adwin(data: Any, helper: Any) -> Any:
    fields, _ = _read_adwin(helper)
    expected = set(_ADWIN_FIELDS) - _ADWIN_HYPER | {"buckets"}
    if not isinstance(data, dict) or set(data) != expected:
        raise ValueError(f"ADWIN state needs exactly the fields {sorted(expected)}")
    for k in expected - {"buckets"}:
        fields[k] = _load_float(data[k]) if k in _ADWIN_FLOATS else _load_int(data[k])
    size = fields["max_buckets"]
    buckets = []
    for b in data["buckets"]:
        totals = np.array([_load_float(t) for t in b["totals"]], dtype=np.float64)
        variances = np.array([_load_float(v) for v in b["variances"]], dtype=np.float64)
        used = _load_int(b["used"])
        if totals.size != size + 1 or variances.size != size + 1 or not 0 <= used <= size + 1:
            raise ValueError(f"an ADWIN bucket holds {size + 1} slots, got {b!r}")
        buckets.append((used, totals, variances))
    if not buckets:
        raise ValueError("ADWIN state has no buckets")
    _write_adwin(helper, fields, buckets)
    return helper


_ADWIN = _Codec(_dump_adwin, _load_adwin)


def _layout_message(what: str, problem: str) -> str:
    return (
        f"river {_RIVER_VERSION}: {what} does not have the layout driftwarden's detector "
        f"state was written for (river 0.23): {problem}; update app/detectors/streaming.py"
    )


Field = tuple[str, str, _Codec]  # (key in the state, dotted river attribute path, codec)


# -- hyperparameter validation -----------------------------------------------------------


def _number(name: str, value: Any, *, gt: float | None = None, ge: float | None = None,
            lt: float | None = None, le: float | None = None, why: str = "") -> float:
    """``value`` as a float when finite and inside the bounds, else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if (not math.isfinite(v) or (gt is not None and not v > gt) or (ge is not None and v < ge)
            or (lt is not None and not v < lt) or (le is not None and v > le)):
        low = f"({gt}" if gt is not None else f"[{ge}" if ge is not None else "(-inf"
        high = f"{lt})" if lt is not None else f"{le}]" if le is not None else "inf)"
        raise ValueError(f"{name} must be in {low}, {high}{why}, got {value!r}")
    return v


def _integer(name: str, value: Any, *, ge: int, le: int = _C_INT_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not ge <= int(value) <= le:
        raise ValueError(f"{name} must be between {ge} and {le}, got {value!r}")
    return int(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


# -- the wrapper -------------------------------------------------------------------------


class RiverDetector:
    """A river drift detector behind :class:`StreamDetector`, with explicit state.

    Subclasses name river's class (``_RIVER_CLS``), validate their keyword
    hyperparameters (river's own names) and list the river attributes that make up the
    state (``_FIELDS``). The reset happens at the detection (see the module docstring).
    ``n`` counts the values seen since construction or the last :meth:`reset`.
    Detections do not clear it.

    >>> import numpy as np, orjson
    >>> rng = np.random.default_rng(7)
    >>> stream = np.concatenate([rng.normal(0, 1, 1000), rng.normal(2, 1, 1000)])
    >>> a = make_detector("page_hinkley", delta=0.05)
    >>> a.update_many(stream[:1005]), a.update(stream[1005])
    ([], True)
    >>> b = PageHinkleyDetector.from_state(orjson.loads(orjson.dumps(a.to_state())))
    >>> b.update_many(stream[1006:]) == a.update_many(stream[1006:]) == []
    True
    >>> b
    PageHinkleyDetector(min_instances=30, delta=0.05, threshold=50.0, alpha=0.9999, mode='both')
    """

    name: str = ""
    VERSION: ClassVar[int] = 1
    _RIVER_CLS: ClassVar[type[Any]]
    _FIELDS: ClassVar[tuple[Field, ...]]
    _BINARY: ClassVar[bool] = False

    __slots__ = ("_n", "_n_detections", "_params", "_river")

    def __init__(self, **params: Any) -> None:
        self._params = params
        self._river = self._RIVER_CLS(**params)
        self._n = 0
        self._n_detections = 0
        self._dump_fields()  # fails now, clearly, if river's layout is not the one we know

    @property
    def n(self) -> int:
        """Values seen since construction or the last :meth:`reset`."""
        return self._n

    @property
    def n_detections(self) -> int:
        """Changes detected since construction or the last :meth:`reset`."""
        return self._n_detections

    @property
    def params(self) -> dict[str, Any]:
        """The hyperparameters (river's names), validated."""
        return dict(self._params)

    def update(self, x: float) -> bool:
        """Add one value; True when river detects a change at it (the detector is then reset).

        Raises :class:`ValueError` for a non-finite value, or a value other than 0 and 1
        on the error-stream detectors.
        """
        v = float(x)
        if not math.isfinite(v) or (self._BINARY and v != 0.0 and v != 1.0):
            raise ValueError(f"{self.name} takes {self._accepts()}, got {x!r}")
        return self._step(v)

    def update_many(self, values: npt.NDArray[np.float64] | Sequence[float]) -> list[int]:
        """Add ``values`` in order; the offsets within ``values`` where changes were detected.

        The batch is validated before any value is applied.
        """
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"values must be one-dimensional, got shape {arr.shape}")
        bad = ~np.isfinite(arr)
        if self._BINARY:
            bad |= (arr != 0.0) & (arr != 1.0)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{self.name} takes {self._accepts()}, got {arr[i]!r} at offset {i}")
        return self._steps(arr.tolist())

    def _steps(self, values: list[float]) -> list[int]:
        """:meth:`_step` on each of the (valid) values; the offsets of the detections."""
        step = self._step
        return [i for i, v in enumerate(values) if step(v)]

    def _step(self, x: float) -> bool:
        det = self._river
        det.update(x)
        self._n += 1
        if det.drift_detected:
            # river would reset on the next update; we reset now, to the same fresh state.
            self._river = self._RIVER_CLS(**self._params)
            self._n_detections += 1
            return True
        return False

    def _accepts(self) -> str:
        return "0 (correct) or 1 (error)" if self._BINARY else "finite values"

    def reset(self) -> None:
        """Forget everything, counters included: a fresh detector, same hyperparameters."""
        self._river = self._RIVER_CLS(**self._params)
        self._n = 0
        self._n_detections = 0

    def to_state(self) -> dict[str, Any]:
        """Plain JSON data (no pickles) from which :meth:`from_state` restores this detector."""
        return {
            "kind": self.name,
            "v": self.VERSION,
            "river": _RIVER_VERSION,
            "params": dict(self._params),
            "n": self._n,
            "n_detections": self._n_detections,
            "detector": self._dump_fields(),
        }

    @classmethod
    def from_state(cls, state: Any) -> Self:
        """The detector ``state`` describes; it continues exactly as the original would.

        Raises :class:`~app.errors.StateError` for another kind, an unknown version or a
        corrupt state.
        """
        state = check_state(state, cls.name, frozenset({cls.VERSION}))
        try:
            params = state["params"]
            if not isinstance(params, dict):
                raise TypeError(f"params must be a mapping, got {params!r}")
            out = cls(**params)
            out._n = _load_int(state["n"])
            out._n_detections = _load_int(state["n_detections"])
            if not 0 <= out._n_detections <= out._n:
                raise ValueError(f"counters n={out._n}, n_detections={out._n_detections}")
            out._load_fields(state["detector"])
        except MALFORMED_STATE as exc:
            raise StateError(f"corrupt {cls.name} state: {exc!r}") from None
        return out

    def _dump_fields(self) -> dict[str, Any]:
        out = {}
        for key, path, codec in self._FIELDS:
            parent, attr = self._resolve(path)
            out[key] = codec.dump(getattr(parent, attr))
        return out

    def _load_fields(self, data: Any) -> None:
        keys = {key for key, _, _ in self._FIELDS}
        if not isinstance(data, dict) or set(data) != keys:
            raise ValueError(f"detector fields must be exactly {sorted(keys)}")
        for key, path, codec in self._FIELDS:
            parent, attr = self._resolve(path)
            setattr(parent, attr, codec.load(data[key], getattr(parent, attr)))

    def _resolve(self, path: str) -> tuple[Any, str]:
        *parents, attr = path.split(".")
        obj = self._river
        try:
            for p in parents:
                obj = getattr(obj, p)
            getattr(obj, attr)
        except AttributeError:
            what = f"drift.{type(self._river).__name__}"
            raise StateError(_layout_message(what, f"it has no attribute {path!r}")) from None
        return obj, attr

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"{type(self).__name__}({args})"


class _ErrorStreamDetector(RiverDetector):
    """A detector on an error stream (1 error, 0 correct) that also reports a warning zone."""

    _BINARY = True
    __slots__ = ()

    @property
    def warning(self) -> bool:
        """True when the last value put the detector in its warning zone (False after a change)."""
        return bool(self._river.warning_detected)


def _mean(key: str, path: str) -> tuple[Field, Field]:
    """The two fields of a ``river.stats.Mean``: its weight sum ``n`` and ``_mean``."""
    return (f"{key}_n", f"{path}.n", _NUMBER), (f"{key}_mean", f"{path}._mean", _NUMBER)


class ADWINDetector(RiverDetector):
    """ADWIN (river ``drift.ADWIN``): adaptive window, detects a change in the mean.

    Parameters
    ----------
    delta
        Significance value in (0, 1); smaller means fewer, later detections.
    clock
        Check for changes every ``clock`` values.
    max_buckets
        Buckets of each size kept before merging; at least 2 (with 1, river's ADWIN
        divides by zero once its newest buckets are all merged).
    min_window_length
        Minimum length of each sub-window compared.
    grace_period
        No detection before this many values.

    Notes
    -----
    State: river's ``AdaptiveWindowing`` fields (width, total, variance, total_width,
    tick, n_buckets, max_n_buckets, n_detections, detect, detect_twice) and every
    bucket's ``used`` count and ``max_buckets + 1`` totals and variances.

    >>> import numpy as np
    >>> det = ADWINDetector(delta=0.002)
    >>> rng = np.random.default_rng(3)
    >>> det.update_many(np.concatenate([rng.random(500), rng.random(500) + 0.5]))
    [543]
    """

    name = "adwin"
    _RIVER_CLS = drift.ADWIN
    _FIELDS = (("window", "_helper", _ADWIN),)
    __slots__ = ()
    #: Values below which a run goes value by value through river (reading river's
    #: state into arrays and back costs about a hundred values' worth).
    COMPILED_FROM = 64

    def __init__(self, *, delta: float = 0.002, clock: int = 32, max_buckets: int = 5,
                 min_window_length: int = 5, grace_period: int = 10) -> None:
        super().__init__(
            delta=_number("delta", delta, gt=0.0, lt=1.0),
            clock=_integer("clock", clock, ge=1),
            max_buckets=_integer("max_buckets", max_buckets, ge=2),
            min_window_length=_integer("min_window_length", min_window_length, ge=1),
            grace_period=_integer("grace_period", grace_period, ge=0),
        )

    def _steps(self, values: list[float]) -> list[int]:
        """river's ``AdaptiveWindowing.update`` of each value, compiled
        (:mod:`app.detectors.kernels`): river's state is read into arrays, the
        values run through, the state is written back; at a detection, the rest goes to
        a fresh detector, as ``_step`` does."""
        if len(values) < self.COMPILED_FROM or self._river.drift_detected \
                or not kernels.enabled():  # (never at rest: _step resets at once)
            return super()._steps(values)
        x = np.asarray(values, dtype=np.float64)
        p = self._params
        hits: list[int] = []
        at = 0
        while at < x.size:
            fields, buckets = _read_adwin(self._river._helper)
            state = _adwin_arrays(fields, buckets)
            i = kernels.adwin_run(x[at:], *state, float(p["delta"]), int(p["clock"]),
                                 int(p["max_buckets"]), int(p["min_window_length"]),
                                 int(p["grace_period"]))
            if i < 0:
                _set_adwin_arrays(self._river._helper, fields, *state)
                self._n += x.size - at
                break
            hits.append(at + i)  # as _step: a fresh detector, same hyperparameters
            self._n += i + 1
            self._n_detections += 1
            self._river = self._RIVER_CLS(**self._params)  # type: ignore[no-untyped-call]
            at += i + 1
        return hits


AdwinArrays = tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.float64],
                    npt.NDArray[np.float64], npt.NDArray[np.int64]]


def _adwin_arrays(fields: dict[str, Any], buckets: list[AdwinBucket]) -> AdwinArrays:
    """River's ADWIN state (:func:`_read_adwin`) as :func:`~app.detectors.kernels.adwin_run`
    reads it."""
    rows = max(kernels.ROWS, len(buckets) + 1)
    totals = np.zeros((rows, fields["max_buckets"] + 1), dtype=np.float64)
    variances = np.zeros_like(totals)
    used = np.zeros(rows, dtype=np.int64)
    for r, (slots, row_totals, row_variances) in enumerate(buckets):
        used[r], totals[r], variances[r] = slots, row_totals, row_variances
    floats = np.array([fields["total"], fields["variance"], fields["width"],
                       fields["total_width"]], dtype=np.float64)
    ints = np.array([fields["n_buckets"], fields["tick"], fields["n_detections"],
                     fields["max_n_buckets"], len(buckets)], dtype=np.int64)
    return floats, ints, totals, variances, used


def _set_adwin_arrays(helper: Any, fields: dict[str, Any], floats: npt.NDArray[np.float64],
                      ints: npt.NDArray[np.int64], totals: npt.NDArray[np.float64],
                      variances: npt.NDArray[np.float64], used: npt.NDArray[np.int64]
                      ) -> None:
    """Write :func:`_adwin_arrays` back into river's object (its own types: C doubles
    and ints; ``fields``: the others, as read)."""
    fields = {**fields, "total": float(floats[0]), "variance": float(floats[1]),
              "width": float(floats[2]), "total_width": float(floats[3]),
              "n_buckets": int(ints[0]), "tick": int(ints[1]), "n_detections": int(ints[2]),
              "max_n_buckets": int(ints[3])}
    _write_adwin(helper, fields, ((int(used[r]), totals[r].copy(), variances[r].copy())
                                  for r in range(int(ints[4]))))


class PageHinkleyDetector(RiverDetector):
    """Page-Hinkley (river ``drift.PageHinkley``): cumulative deviation from a fading mean.

    Parameters
    ----------
    min_instances
        No detection before this many values.
    delta
        Tolerated drift of the mean per value.
    threshold
        Detection threshold (lambda).
    alpha
        Forgetting factor of the cumulative sums, in (0, 1].
    mode
        ``"up"``, ``"down"`` or ``"both"``: which changes of the mean to detect.

    Notes
    -----
    State (river 0.23 attributes): ``_x_mean`` (a ``stats.Mean``: ``n``, ``_mean``),
    ``_sum_increase``, ``_sum_decrease``, ``_min_increase`` (``inf`` at start) and
    ``_max_decrease``.
    """

    name = "page_hinkley"
    _RIVER_CLS = drift.PageHinkley
    _FIELDS = (
        *_mean("mean", "_x_mean"),
        ("sum_increase", "_sum_increase", _NUMBER),
        ("sum_decrease", "_sum_decrease", _NUMBER),
        ("min_increase", "_min_increase", _NUMBER),
        ("max_decrease", "_max_decrease", _NUMBER),
    )
    __slots__ = ()

    def __init__(self, *, min_instances: int = 30, delta: float = 0.005,
                 threshold: float = 50.0, alpha: float = 1 - 0.0001, mode: str = "both") -> None:
        if mode not in ("up", "down", "both"):
            raise ValueError(f"mode must be 'up', 'down' or 'both', got {mode!r}")
        super().__init__(
            min_instances=_integer("min_instances", min_instances, ge=0),
            delta=_number("delta", delta, ge=0.0),
            threshold=_number("threshold", threshold, gt=0.0),
            alpha=_number("alpha", alpha, gt=0.0, le=1.0),
            mode=mode,
        )


class KSWINDetector(RiverDetector):
    """KSWIN (river ``drift.KSWIN``): Kolmogorov-Smirnov test over a sliding window.

    Parameters
    ----------
    alpha
        Significance of the KS test, in (0, 1); river recommends below 0.01.
    window_size
        Sliding window length; at least ``2 * stat_size``.
    stat_size
        Length of the recent sub-window, and of the sample drawn from the older part.
    seed
        Seed of the sampling RNG, re-seeded at every reset. Defaults to 0 so that
        replays give the same detections. ``None`` seeds from the OS: restores are
        still exact, but runs are not reproducible.

    Notes
    -----
    State (river 0.23 attributes): ``window`` (the last ``window_size`` values),
    ``_rng`` (``random.Random`` state: version, 625 Mersenne Twister words,
    ``gauss_next``), ``n`` (values since river's last reset) and ``p_value``.

    >>> import numpy as np
    >>> rng = np.random.default_rng(7)
    >>> stream = np.concatenate([rng.normal(0, 1, 1000), rng.normal(2, 1, 1000)])
    >>> KSWINDetector(alpha=0.0001).update_many(stream)
    [1020]
    """

    name = "kswin"
    _RIVER_CLS = drift.KSWIN
    _FIELDS = (
        ("window", "window", _WINDOW),
        ("rng", "_rng", _RNG),
        ("n", "n", _INT),
        ("p_value", "p_value", _P_VALUE),
    )
    __slots__ = ()

    def __init__(self, *, alpha: float = 0.005, window_size: int = 100, stat_size: int = 30,
                 seed: int | None = 0) -> None:
        stat_size = _integer("stat_size", stat_size, ge=1)
        window_size = _integer("window_size", window_size, ge=2)
        if window_size < 2 * stat_size:
            raise ValueError(f"window_size must be at least 2 * stat_size ({2 * stat_size}) so "
                             f"the older part can supply a sample, got {window_size!r}")
        if seed is not None:
            seed = _integer("seed", seed, ge=0, le=2**63 - 1)
        super().__init__(alpha=_number("alpha", alpha, gt=0.0, lt=1.0),
                         window_size=window_size, stat_size=stat_size, seed=seed)


class DDMDetector(_ErrorStreamDetector):
    """DDM (river ``drift.binary.DDM``): error rate above its minimum plus k sigmas.

    Parameters
    ----------
    warm_start
        No detection before this many values.
    warning_threshold
        Sigmas above the minimum for the warning zone.
    drift_threshold
        Sigmas above the minimum for a change; at least ``warning_threshold``.

    Notes
    -----
    State (river 0.23 attributes): ``_p`` (a ``stats.Mean``), ``_p_min`` and ``_s_min``
    (``None`` until the warm start), ``_ps_min`` (``inf`` at start) and
    ``_warning_detected``.

    >>> import numpy as np
    >>> rng = np.random.default_rng(11)
    >>> errors = np.concatenate([rng.random(1000) < 0.1, rng.random(1000) < 0.4])
    >>> DDMDetector(warm_start=200).update_many(errors)
    [1066]
    """

    name = "ddm"
    _RIVER_CLS = binary.DDM
    _FIELDS = (
        *_mean("p", "_p"),
        ("p_min", "_p_min", _OPT_FLOAT),
        ("s_min", "_s_min", _OPT_FLOAT),
        ("ps_min", "_ps_min", _NUMBER),
        ("warning", "_warning_detected", _BOOL),
    )
    __slots__ = ()

    def __init__(self, *, warm_start: int = 30, warning_threshold: float = 2.0,
                 drift_threshold: float = 3.0) -> None:
        warning_threshold = _number("warning_threshold", warning_threshold, gt=0.0)
        drift_threshold = _number("drift_threshold", drift_threshold, ge=warning_threshold,
                                  why=" (at least warning_threshold)")
        super().__init__(warm_start=_integer("warm_start", warm_start, ge=0),
                         warning_threshold=warning_threshold, drift_threshold=drift_threshold)


class EDDMDetector(_ErrorStreamDetector):
    """EDDM (river ``drift.binary.EDDM``): shrinking distance between errors.

    Parameters
    ----------
    warm_start
        No detection before this many values and this many errors.
    alpha
        Warning level, in (0, 1]. The ratio of ``mean + 2 std`` of the distance between
        errors to its maximum.
    beta
        Change level, in (0, alpha].

    Notes
    -----
    State (river 0.23 attributes): ``_error_distances`` (a ``stats.Var``: ``mean.n``,
    ``mean._mean``, ``_S``), ``_n``, ``_last_error``, ``_n_errors``,
    ``_p2s_prime_max`` and ``_warning_detected``.
    """

    name = "eddm"
    _RIVER_CLS = binary.EDDM
    _FIELDS = (
        *_mean("distance", "_error_distances.mean"),
        ("distance_s", "_error_distances._S", _NUMBER),
        ("n", "_n", _INT),
        ("last_error", "_last_error", _INT),
        ("n_errors", "_n_errors", _INT),
        ("p2s_prime_max", "_p2s_prime_max", _NUMBER),
        ("warning", "_warning_detected", _BOOL),
    )
    __slots__ = ()

    def __init__(self, *, warm_start: int = 30, alpha: float = 0.95, beta: float = 0.9) -> None:
        alpha = _number("alpha", alpha, gt=0.0, le=1.0)
        super().__init__(warm_start=_integer("warm_start", warm_start, ge=0), alpha=alpha,
                         beta=_number("beta", beta, gt=0.0, le=alpha,
                                              why=" (at most alpha)"))


def _confidences(drift_confidence: float, warning_confidence: float) -> dict[str, float]:
    warning_confidence = _number("warning_confidence", warning_confidence, gt=0.0, lt=1.0)
    return {
        "drift_confidence": _number("drift_confidence", drift_confidence, gt=0.0,
                                    le=warning_confidence, why=" (at most warning_confidence)"),
        "warning_confidence": warning_confidence,
    }


class _CopiedMean(stats.Mean):
    """river's ``stats.Mean`` whose clone with its attributes is a plain copy.

    river's ``clone`` reads the class signature with ``inspect`` at every call (about
    30 µs), and ``HDDM_A.update`` clones its global mean into a cut point on most values
    of a steady error stream. The two attributes are floats: a copy is the same clone.
    """

    def clone(self, new_params: dict[str, Any] | None = None,
              include_attributes: bool = False) -> Any:
        if include_attributes and not new_params:
            return copy.copy(self)
        return super().clone(new_params, include_attributes)


class _HDDM_A(binary.HDDM_A):
    """river's HDDM_A on :class:`_CopiedMean` (same figures, same state fields)."""

    def _reset(self) -> None:
        super()._reset()  # type: ignore[no-untyped-call]
        self._x_min, self._x_max, self._z = (
            _CopiedMean(), _CopiedMean(), _CopiedMean())  # type: ignore[no-untyped-call]


class HDDMADetector(_ErrorStreamDetector):
    """HDDM_A (river ``drift.binary.HDDM_A``): Hoeffding bound on moving averages.

    Parameters
    ----------
    drift_confidence
        Confidence of a change, in (0, warning_confidence].
    warning_confidence
        Confidence of the warning zone, in (0, 1).
    two_sided_test
        Also detect decreases of the error rate.

    Notes
    -----
    State (river 0.23 attributes): three ``stats.Mean`` (``_z`` global, ``_x_min`` and
    ``_x_max`` cut points) and ``_warning_detected``.
    """

    name = "hddm_a"
    _RIVER_CLS = _HDDM_A
    _FIELDS = (
        *_mean("z", "_z"),
        *_mean("x_min", "_x_min"),
        *_mean("x_max", "_x_max"),
        ("warning", "_warning_detected", _BOOL),
    )
    __slots__ = ()

    def __init__(self, *, drift_confidence: float = 0.001, warning_confidence: float = 0.005,
                 two_sided_test: bool = False) -> None:
        super().__init__(**_confidences(drift_confidence, warning_confidence),
                         two_sided_test=_flag("two_sided_test", two_sided_test))

    def _steps(self, values: list[float]) -> list[int]:
        """river's ``HDDM_A.update`` (0.23) on each value, its arithmetic written out
        (:func:`~app.detectors.kernels.hddm_a_run`, compiled, or in Python): the same
        figures and detections as value by value, without a method call and a copy of a
        mean per value (a test compares the two)."""
        det = self._river
        if det.drift_detected:  # (never at rest: ``_step`` replaces a detector that fired)
            return super()._steps(values)
        dc, wc, two = det.drift_confidence, det.warning_confidence, det.two_sided_test
        log_dc, log_2dc, log_2wc = (math.log(1.0 / dc), math.log(2.0 / dc),
                                    math.log(2.0 / wc))
        zn, zm = det._z.n, det._z._mean
        an, am = det._x_min.n, det._x_min._mean  # the cut point of an increase
        bn, bm = det._x_max.n, det._x_max._mean  # the cut point of a decrease
        warning = det._warning_detected
        n = len(values)
        state = [zn, zm, an, am, bn, bm, warning]
        if kernels.enabled():
            numbers = np.array(state, dtype=np.float64)
            found = np.empty(n, dtype=np.int64)
            count = kernels.hddm_a_run(np.asarray(values, dtype=np.float64), numbers, log_dc,
                                       log_2dc, log_2wc, bool(two), found)
            hits: list[int] = found[:count].tolist()
            state = numbers.tolist()
        else:  # the same loop in Python, on floats and lists
            run = getattr(kernels.hddm_a_run, "py_func", kernels.hddm_a_run)
            hits = [0] * n
            del hits[run(values, state, log_dc, log_2dc, log_2wc, bool(two), hits):]
        zn, zm, an, am, bn, bm = state[:6]
        warning = bool(state[6])
        self._n += n
        self._n_detections += len(hits)
        if hits:
            det = self._river = self._RIVER_CLS(**self._params)  # type: ignore[no-untyped-call]
        if zn:  # (a fresh detector keeps its integer zeros)
            det._z.n, det._z._mean = zn, zm
            det._x_min.n, det._x_min._mean = an, am
            det._x_max.n, det._x_max._mean = bn, bm
        det._warning_detected = warning
        return hits


def _sample(key: str) -> tuple[Field, ...]:
    """The fields of one HDDM_W ``SampleInfo``: its EWMA, ``_is_init`` and ``_ibc``."""
    return (
        (f"{key}_ewma", f"_{key}._ewma._ewmean", _EWMEAN),
        (f"{key}_init", f"_{key}._is_init", _BOOL),
        (f"{key}_ibc", f"_{key}._ibc", _NUMBER),
    )


class HDDMWDetector(_ErrorStreamDetector):
    """HDDM_W (river ``drift.binary.HDDM_W``): McDiarmid bound on weighted moving averages.

    Parameters
    ----------
    drift_confidence
        Confidence of a change, in (0, warning_confidence].
    warning_confidence
        Confidence of the warning zone, in (0, 1).
    lambda_val
        Weight of recent data in the EWMA, in (0, 1].
    two_sided_test
        Also detect decreases of the error rate.

    Notes
    -----
    State (river 0.23 attributes): five ``SampleInfo`` (``_total``, ``_s1_incr``,
    ``_s2_incr``, ``_s1_decr``, ``_s2_decr``), each with its EWMA (river's Rust
    ``RsEWMean``), ``_is_init`` and ``_ibc``; ``_incr_cutpoint`` (``inf`` at start),
    ``_decr_cutpoint`` (``-inf`` at start) and ``_warning_detected``.
    """

    name = "hddm_w"
    _RIVER_CLS = binary.HDDM_W
    _FIELDS = (
        *(f for key in ("total", "s1_incr", "s2_incr", "s1_decr", "s2_decr") for f in _sample(key)),
        ("incr_cutpoint", "_incr_cutpoint", _NUMBER),
        ("decr_cutpoint", "_decr_cutpoint", _NUMBER),
        ("warning", "_warning_detected", _BOOL),
    )
    __slots__ = ()

    def __init__(self, *, drift_confidence: float = 0.001, warning_confidence: float = 0.005,
                 lambda_val: float = 0.05, two_sided_test: bool = False) -> None:
        super().__init__(**_confidences(drift_confidence, warning_confidence),
                         lambda_val=_number("lambda_val", lambda_val, gt=0.0, le=1.0),
                         two_sided_test=_flag("two_sided_test", two_sided_test))


STREAM_DETECTORS: dict[str, type[RiverDetector]] = {
    "adwin": ADWINDetector,
    "page_hinkley": PageHinkleyDetector,
    "kswin": KSWINDetector,
    "ddm": DDMDetector,
    "eddm": EDDMDetector,
    "hddm_a": HDDMADetector,
    "hddm_w": HDDMWDetector,
}


def make_detector(name: str, **params: Any) -> RiverDetector:
    """A detector from the registry, its keyword hyperparameters validated.

    Raises :class:`ValueError` for an unknown name or a bad hyperparameter value.
    """
    try:
        cls = STREAM_DETECTORS[name]
    except KeyError:
        raise ValueError(
            f"unknown stream detector {name!r}; known: {sorted(STREAM_DETECTORS)}") from None
    try:
        return cls(**params)
    except TypeError as exc:  # an unknown keyword
        raise ValueError(f"{name}: {exc}") from None


def detector_from_state(state: Any) -> RiverDetector:
    """Restore any registry detector from its state, picking the class by ``kind``."""
    kind = state.get("kind") if isinstance(state, dict) else None
    if not isinstance(kind, str) or kind not in STREAM_DETECTORS:
        raise StateError(f"not a stream detector state: kind {kind!r}; "
                         f"known: {sorted(STREAM_DETECTORS)}")
    return STREAM_DETECTORS[kind].from_state(state)
