"""Running one worker process: references, metrics endpoint, topics, the faust worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from app.broker import EmbeddedBroker
from app.detectors import STATISTICS
from app.kafka import ensure_topics
from app.observability import Metrics
from app.reference import Reference, load_references
from app.references_topic import ReferenceFollower
from app.runtime import tune_gc, tune_malloc
from app.settings import MonitorSettings

log = logging.getLogger("driftwarden")


async def preload_references(bootstrap: str, settings: MonitorSettings,
                             install: Callable[[Reference], bool]) -> int:
    """Every reference published so far, installed before the first event is processed."""
    follower = ReferenceFollower(bootstrap, settings, install)
    try:
        return await follower.start()
    finally:
        await follower.stop()


def resolve_bootstrap(settings: MonitorSettings,
                      override: str | None = None) -> tuple[str, EmbeddedBroker | None]:
    """The bootstrap servers to use; starts the embedded broker only when none is named."""
    bootstrap = override or settings.kafka.bootstrap
    if bootstrap:
        return bootstrap, None
    broker = EmbeddedBroker().start()
    print(f"driftwarden: no kafka.bootstrap configured: started the embedded broker on "
          f"{broker.bootstrap} (development only)", flush=True)
    return broker.bootstrap, broker


def faust_worker(app: Any, log_level: str) -> Any:
    """The faust worker of ``app``, logging at ``log_level``, without a terminal spinner:
    with one, at WARN and above, faust sets the root logger to DEBUG so that every
    message turns it, and every debug message of faust and aiokafka (per published
    record, per fetch) builds a log record, its caller looked up on the stack, for the
    real handler to drop."""
    import faust

    worker = faust.Worker(app, loglevel=log_level.upper(), quiet=True, redirect_stdouts=False)
    worker.spinner = None
    return worker


def run_worker(settings: MonitorSettings, *, bootstrap: str | None = None,
               log_level: str = "warn") -> int:
    from app.streaming import build_app

    tune_malloc()  # (before the references and the app take their memory)
    bootstrap, broker = resolve_bootstrap(settings, bootstrap)
    embedded = broker is not None
    try:
        references = load_references(settings)
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # process_resident_memory_bytes, CPU seconds
        PlatformCollector(registry=registry)
        metrics = Metrics(registry, max_feature_series=settings.metrics.max_feature_series)
        for name, model in settings.models.items():
            for counter in (metrics.late_events, metrics.state_errors, metrics.windows_closed):
                counter.labels(name)  # known series start at 0, not absent
            metrics.events.labels(settings.topics.name("predictions"), name, "valid")
            for statistic in STATISTICS:
                warning, critical = model.drift.thresholds_for(statistic)
                metrics.drift_threshold.labels(name, statistic, "warning").set(warning)
                metrics.drift_threshold.labels(name, statistic, "critical").set(critical)
            if model.slo.latency_p99_ms is not None:
                metrics.slo_objective.labels(name, "latency_slo").set(
                    model.slo.latency_p99_ms / 1000)
            if model.slo.cost_per_1k is not None:
                metrics.slo_objective.labels(name, "cost_budget").set(model.slo.cost_per_1k)
        if settings.metrics.enabled:
            start_http_server(settings.metrics.port, addr=settings.metrics.host,
                              registry=registry)
        asyncio.run(ensure_topics(bootstrap, settings))
        app, pipeline = build_app(settings, bootstrap, references, metrics, embedded=embedded)
        installed = asyncio.run(preload_references(bootstrap, settings,
                                                   pipeline.engine.install_reference))
        if installed:
            log.warning("installed %d version reference(s) from %s", installed,
                        settings.topics.name("references"))
        worker = faust_worker(app, log_level)
        if pipeline.decodes is not None:
            pipeline.decodes.start()
        tune_gc()
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            return int(exc.code or 0)
        finally:
            if pipeline.decodes is not None:
                pipeline.decodes.close()
        return 0
    finally:
        if broker is not None:
            broker.stop()
