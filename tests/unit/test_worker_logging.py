"""The worker's faust worker leaves the root logger at the level asked for."""

from __future__ import annotations

import logging

import pytest

from app.batch_consumer import BatchApp
from app.worker import faust_worker


@pytest.mark.parametrize("level", ["warn", "error"])
def test_no_spinner_sets_the_root_logger_to_debug(level):
    """faust's spinner, at WARN and above, would set the root logger to DEBUG: every debug
    message of faust and aiokafka would then build a log record to be dropped."""
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        worker = faust_worker(BatchApp("logging-test", broker="kafka://127.0.0.1:1"), level)
        worker._setup_logging()
        assert not logging.getLogger("aiokafka.consumer.fetcher").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("faust.topics").isEnabledFor(logging.DEBUG)
        assert root.getEffectiveLevel() >= logging.WARNING
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
