"""Per-version references published to the compacted topic reach every worker, before
and while it runs; a version without one falls back to an earlier version's."""

import asyncio
import time

import numpy as np
import orjson
from support import (
    MODEL,
    WINDOW_MS,
    cloud_events,
    collect,
    create_topics,
    feature_rows,
    predictions,
    produce,
    settings_of,
    write_config,
)

from app.reference import build_reference
from app.references_topic import publish_reference


def test_worker_uses_published_version_references(broker, worker_factory, tmp_path):
    config = write_config(tmp_path)
    settings = settings_of(config)
    create_topics(broker.bootstrap, settings)
    model = settings.models[MODEL]
    rng = np.random.default_rng(21)
    v2_ref = build_reference(feature_rows(rng, 5000, shifted=True), MODEL, model, version="v2",
                             origin="file:v2.parquet")
    asyncio.run(publish_reference(broker.bootstrap, settings, v2_ref))  # before the worker
    worker = worker_factory(config)

    t0 = 1_700_000_000_000 // WINDOW_MS * WINDOW_MS
    times = [t0 + i * 50 for i in range(600)]
    values = [  # versions in the order they were deployed: v1, v2, v3
        orjson.dumps(predictions(feature_rows(rng, 600), times, version="v1", start_id=2000)),
        orjson.dumps(predictions(feature_rows(rng, 600, shifted=True), times, version="v2")),
        orjson.dumps(predictions(feature_rows(rng, 600, shifted=True), times, version="v3",
                                 start_id=1000)),
        orjson.dumps(predictions(feature_rows(rng, 1), [t0 + 2 * WINDOW_MS], version="v1",
                                 start_id=9000)),
    ]
    produce(broker.bootstrap, settings.topics.name("predictions"), values)
    evaluations = cloud_events(collect(broker.bootstrap, settings.topics.name("evaluations"),
                                       lambda r: len(r) >= 3, timeout=60))
    by_version = {e["data"]["model_version"]: e["data"] for e in evaluations}
    assert set(by_version) == {"v1", "v2", "v3"}, worker.tail()
    assert by_version["v2"]["reference_version"] == "v2"
    assert by_version["v2"]["reference_fallback"] is False
    assert by_version["v3"]["reference_version"] == "v2"  # the newest earlier version's
    assert by_version["v3"]["reference_fallback"] is True
    assert by_version["v1"]["reference_fallback"] is True  # the configured reference
    # shifted data against the shifted reference, unshifted against the unshifted one
    significant = [(e["data"]["model_version"], f["feature"], f["statistic"], f["value"])
                   for e in evaluations for f in e["data"]["features"]
                   if f["p_adjusted"] is not None and f["p_adjusted"] < 0.01]
    assert all(e["data"]["alerts"] == [] for e in evaluations), significant

    # A reference published while the worker runs is installed too.
    v4_ref = build_reference(feature_rows(rng, 5000, shifted=True), MODEL, model, version="v4",
                             origin="file:v4.parquet")
    asyncio.run(publish_reference(broker.bootstrap, settings, v4_ref))
    time.sleep(2)
    t1 = t0 + 4 * WINDOW_MS
    produce(broker.bootstrap, settings.topics.name("predictions"), [
        orjson.dumps(predictions(feature_rows(rng, 300, shifted=True), [t1] * 300,
                                 version="v4", start_id=10_000)),
        orjson.dumps(predictions(feature_rows(rng, 1), [t1 + 2 * WINDOW_MS], version="v4",
                                 start_id=20_000))])
    evaluations = cloud_events(collect(broker.bootstrap, settings.topics.name("evaluations"),
                                       lambda r: len(r) >= 4, timeout=60))
    v4 = [e["data"] for e in evaluations if e["data"]["model_version"] == "v4"]
    assert v4 and v4[0]["reference_version"] == "v4" and v4[0]["reference"] == "file:v4.parquet"
