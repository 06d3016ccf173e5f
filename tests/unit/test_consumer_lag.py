"""The consumer-lag gauge: high watermark minus the next offset to process, per assigned
input partition; series of partitions no longer assigned are removed."""

from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from app.observability import Metrics
from app.streaming import ConsumerLag


class FakeConsumer:
    def __init__(self, highwaters, positions):
        self.highwaters, self.positions = highwaters, positions

    def assignment(self):
        return set(self.highwaters)

    def highwater(self, tp):
        return self.highwaters[tp]

    async def position(self, tp):
        return self.positions[tp]


class TP(tuple):
    @property
    def topic(self):
        return self[0]

    @property
    def partition(self):
        return self[1]


def message(topic, partition, offset):
    return SimpleNamespace(topic=topic, partition=partition, offset=offset)


def lag_values(metrics):
    return {(s.labels["topic"], s.labels["partition"]): s.value
            for fam in metrics.registry.collect() if fam.name == "driftwarden_consumer_lag_messages"
            for s in fam.samples}


async def test_lag_per_partition_and_revoked_partitions_dropped():
    metrics = Metrics(CollectorRegistry())
    lag = ConsumerLag(metrics, {"preds", "outs"})
    p0, p1, o0, other = TP(("preds", 0)), TP(("preds", 1)), TP(("outs", 0)), TP(("x", 0))
    lag.processed([message("preds", 0, 10), message("preds", 0, 11), message("preds", 1, 4)])
    consumer = FakeConsumer({p0: 20, p1: 5, o0: 7, other: 99}, {o0: 3})
    await lag.update(consumer)
    # 20 - 12; 5 - 5; outcomes never processed: from the fetch position (7 - 3)
    assert lag_values(metrics) == {("preds", "0"): 8, ("preds", "1"): 0, ("outs", "0"): 4}
    lag.processed([message("preds", 0, 19)])
    consumer.highwaters = {p0: 20, o0: None}  # p1 revoked; o0's highwater not known yet
    await lag.update(consumer)
    assert lag_values(metrics) == {("preds", "0"): 0}
