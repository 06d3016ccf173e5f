"""Kafka plumbing shared by workers, the demo and tests: client settings and topics."""

from __future__ import annotations

import os
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.errors import DriftwardenError
from app.settings import KafkaSettings, MonitorSettings

TOPIC_ALREADY_EXISTS = 36


def client_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """aiokafka connection arguments (security) from the settings; secrets from the env."""
    kw: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.sasl_mechanism:
        kw["sasl_mechanism"] = kafka.sasl_mechanism
        kw["sasl_plain_username"] = kafka.sasl_username
        if kafka.sasl_password_env:
            password = os.environ.get(kafka.sasl_password_env)
            if password is None:
                raise DriftwardenError(
                    f"kafka.sasl_password_env names {kafka.sasl_password_env!r}, "
                    "which is not set in the environment")
            kw["sasl_plain_password"] = password
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        kw["ssl_context"] = create_ssl_context(cafile=kafka.ssl_cafile)
    return kw


async def ensure_topics(bootstrap: str, settings: MonitorSettings,
                        extra: dict[str, int] | None = None) -> None:
    """Create every driftwarden topic with its partition count, before workers start.

    A topic that already exists with another partition count is an error: faust
    refuses co-partitioned topics whose counts differ.
    """
    kafka = settings.kafka
    wanted = dict.fromkeys(settings.topics.all_names(), kafka.partitions)
    wanted.update(extra or {})
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_kwargs(kafka))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        compacted = {settings.topics.name("references")}
        large = {"max.message.bytes": str(16 * 1024 * 1024)}
        missing = [NewTopic(name, parts, kafka.replication_factor,
                            topic_configs={"cleanup.policy": "compact", **large}
                            if name in compacted else large)
                   for name, parts in wanted.items() if name not in existing]
        if missing:
            resp = await admin.create_topics(missing)
            for topic, code, message in getattr(resp, "topic_errors", []):
                if code not in (0, TOPIC_ALREADY_EXISTS):
                    raise DriftwardenError(f"cannot create topic {topic!r}: {message} ({code})")
        present = [name for name in wanted if name in existing]
        if present:
            for desc in await admin.describe_topics(present):
                have = len(desc.get("partitions", []))
                want = wanted[desc["topic"]]
                if have != want:
                    raise DriftwardenError(
                        f"topic {desc['topic']!r} has {have} partitions but the configuration "
                        f"asks for {want} (kafka.partitions); recreate it or change the setting")
    finally:
        await admin.close()
