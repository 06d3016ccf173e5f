"""A failed or interrupted batch is withheld: faust's acknowledgement (which
``take_events`` makes in a ``finally`` clause, failures included) must not reach the
consumer's commit bookkeeping. These pin the faust behaviour the worker relies on."""

from __future__ import annotations

from types import SimpleNamespace

from faust.types.tuples import Message

from app.streaming import withhold


class Consumer:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message: Message) -> bool:
        self.acked.append(message.offset)
        return True


def message(offset: int) -> Message:
    m = Message("t.predictions", 0, offset, 0.0, 0, None, b"k", b"{}", None)
    m.incref()  # one stream holds it, as in a worker
    return m


def test_an_acknowledged_message_reaches_the_consumer():
    consumer, m = Consumer(), message(7)
    assert m.ack(consumer) is True  # the last reference: its offset becomes committable


def test_a_withheld_batch_never_reaches_the_consumer():
    consumer = Consumer()
    events = [SimpleNamespace(message=message(i)) for i in range(3)]
    withhold(events)  # type: ignore[arg-type]
    assert [e.message.ack(consumer) for e in events] == [False, False, False]
    assert consumer.acked == []
