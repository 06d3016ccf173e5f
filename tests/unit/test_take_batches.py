"""take_batches: faust's take_events with a bound on a batch's bytes as well."""

import asyncio

import faust
import pytest

from app.streaming import take_batches


def run_batches(sizes: list[int], max_messages: int, max_bytes: int, within: float
                ) -> list[list[int]]:
    """The batches (their messages' value sizes) an agent takes of ``sizes``."""
    app = faust.App("take-batches-test", broker="kafka://127.0.0.1:1", store="memory://")
    got: list[list[int]] = []
    done = asyncio.Event()

    async def body(stream: faust.StreamT) -> None:
        async for batch in take_batches(stream, max_messages, max_bytes, within):
            got.append([len(e.value) for e in batch])
            if sum(map(len, got)) >= len(sizes):
                done.set()

    agent = app.agent(value_type=bytes)(body)

    async def main() -> None:
        async with agent.test_context() as a:
            for n in sizes:
                await a.put(b"x" * n)
            await asyncio.wait_for(done.wait(), 10)

    asyncio.run(main())
    return got


def test_a_batch_is_complete_once_its_values_reach_max_bytes() -> None:
    # large messages: four of 300 bytes reach 1000 bytes, far below 100 messages
    assert run_batches([300] * 12, 100, 1000, 5.0) == [[300] * 4] * 3


def test_small_messages_gather_up_to_max_messages_then_wait_within() -> None:
    got = run_batches([10] * 12, 5, 1 << 20, 0.2)
    assert got == [[10] * 5, [10] * 5, [10] * 2]


@pytest.mark.parametrize("max_bytes", [1, 299])
def test_one_message_over_max_bytes_is_a_batch_of_its_own(max_bytes: int) -> None:
    assert run_batches([300, 300], 100, max_bytes, 5.0) == [[300], [300]]
