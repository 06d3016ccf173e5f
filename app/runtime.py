"""Process-wide settings of the long-running commands (worker, replay)."""

from __future__ import annotations

import ctypes
import gc
import os

#: The cyclic collector's thresholds in a worker (CPython's default: 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 100)
#: glibc's ``mallopt`` parameters, and what a worker sets them to (see tune_malloc).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # bytes: the largest glibc takes on 64-bit platforms
TRIM_THRESHOLD = 64 << 20
#: The environment variables through which an operator sets them instead.
MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path.

    A batch allocates tens of thousands of containers (decoded events, feature rows,
    label-join entries) that die with it. With CPython's defaults they set off thousands
    of young collections a minute and, every few seconds, a full collection that walks
    every object the imports left (faust, aiokafka, river and what it pulls in): 16 % of
    a batch's CPU in the load test. The objects alive at start-up are moved to the
    permanent generation (``gc.freeze``: never scanned again) and collections run about
    70 times less often. Reference cycles are still collected; what the batch path
    creates is freed by reference counting as before.

    Call it once, after start-up's imports and set-up, before the first batch.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def tune_malloc() -> bool:
    """Keep the C allocator from handing a batch's memory back to the system and taking
    it again, page fault by page fault, batch after batch; whether it did.

    A batch's arrays (feature matrices, bucket indices, their temporaries) and the
    consumer's read buffers (a fetch of array messages is megabytes) are hundreds of
    kilobytes to megabytes each. With glibc's defaults such a block is mapped afresh
    for each allocation, or taken from the heap's top and trimmed off it again when it
    is freed: either way every page of it costs a page fault the next time. Blocks up
    to ``MMAP_THRESHOLD`` now come from the heap, and up to ``TRIM_THRESHOLD`` of free
    memory stays at its top: the process keeps what its largest batches use instead of
    returning it between them (its resident memory stays at that plateau). On the
    benchmark (300 000 events in array messages), the consumer's fetch thread took
    11 000 page faults instead of 41 000 and 0.24 CPU seconds instead of 0.33; a decode
    process 500 instead of 2 900.

    Only with glibc (elsewhere nothing changes), and not where the operator set either
    threshold through glibc's own variables (:data:`MALLOC_VARIABLES`): those win. Call
    it at a process's start: a worker, a replay, a decode process.
    """
    if any(name in os.environ for name in MALLOC_VARIABLES):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's C library's
    except (OSError, AttributeError):  # no such function: not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
