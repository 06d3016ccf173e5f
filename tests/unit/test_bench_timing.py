"""The load test's estimate of when a worker counted its last event (``load-tests``)."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "load-tests"))
    try:
        spec = importlib.util.spec_from_file_location("bench", ROOT / "load-tests" / "bench.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "load-tests"))


def test_a_count_that_stops_at_the_total_is_not_taken_at_the_poll_that_saw_it(bench):
    """1 000 events a second, polled every 0.2 s: the 1 500th counted at 1.5 s, seen at
    the poll at 1.6 s (the count stopped there at 1 500)."""
    polls = [(0.2 * i, 200.0 * i) for i in range(8)]  # up to 1.4 s, 1 400 counted
    assert bench.finish_time(polls, 1.6, 1_500) == pytest.approx(1.5)


def test_the_estimate_is_never_after_the_poll_that_saw_the_total(bench):
    assert bench.finish_time([(0.0, 0.0), (1.0, 10.0)], 1.2, 1_000) == 1.2  # slowed down
    assert bench.finish_time([(0.0, 0.0)], 0.3, 10) == 0.3  # seen at the first poll
    assert bench.finish_time([(0.0, 5.0), (0.2, 5.0)], 0.4, 10) == 0.4  # no rate known
