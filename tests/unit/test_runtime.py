import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.runtime import GC_THRESHOLDS, MALLOC_VARIABLES, tune_gc

ROOT = Path(__file__).resolve().parents[2]


def test_tune_gc_freezes_start_up_objects_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
        assert gc.isenabled()  # cycles are still collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


# Four 256 KiB blocks held together, then freed, over and over: what a batch's arrays do.
# With glibc's defaults the freed heap top is trimmed each time and every page faults
# again on the next round.
_ROUNDS = """
import resource, sys
from app.runtime import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tuned" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def batch():
    held = [bytearray(256 << 10) for _ in range(4)]  # zero-filled: every page touched
    del held
for _ in range(3):
    batch()
before = faults()
for _ in range(50):
    batch()
print(tuned, (faults() - before) / 50)
"""


def _python(code: str, *args: str, **env: str) -> list[str]:
    """What ``code`` prints, as words, run by a fresh interpreter (the project importable)."""
    return subprocess.run([sys.executable, "-c", code, *args], check=True,
                          capture_output=True, text=True,
                          env={**os.environ, **env, "PYTHONPATH": str(ROOT)}).stdout.split()


def _rounds(mode: str, **env: str) -> tuple[str, float]:
    out = _python(_ROUNDS, mode, **env)
    return out[0], float(out[1])


def test_tune_malloc_keeps_a_batch_s_memory_from_faulting_in_again() -> None:
    tuned, faults = _rounds("tuned")
    if tuned != "True":
        pytest.skip("not glibc: tune_malloc leaves the allocator as it is")
    _, untuned = _rounds("untuned")
    assert untuned > 100  # every page of the 1 MiB, each round (256 of them)
    assert faults < 5


def test_tune_malloc_leaves_the_operator_s_own_thresholds() -> None:
    for name in MALLOC_VARIABLES:
        tuned, _ = _rounds("tuned", **{name: str(1 << 20)})
        assert tuned == "False"


_DECODE_PROCESS = """
import gc, os
from app.events.decode_pool import NICENESS, settle_in
nice = os.nice(0)
settle_in()
print(*gc.get_threshold(), gc.get_freeze_count() > 0, os.nice(0) == min(19, nice + NICENESS))
"""


def test_a_decode_process_settles_in_with_the_worker_s_collector_tuning() -> None:
    """What a decode process sets at its start: among others, the collector tuned as in
    the worker, since a message decodes into about a thousand containers. (That a real
    decode process calls it shows in its priority: ``tests/unit/events/test_block.py``.)"""
    assert _python(_DECODE_PROCESS) == [*map(str, GC_THRESHOLDS), "True", "True"]
