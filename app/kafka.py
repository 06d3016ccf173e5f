"""Kafka plumbing shared by workers, the demo and tests: client settings and topics."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app import redact
from app.errors import DriftwardenError
from app.settings import KafkaSettings, MonitorSettings

TOPIC_ALREADY_EXISTS = 36
SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
TLS_PROTOCOLS = ("SSL", "SASL_SSL")


def client_kwargs(kafka: KafkaSettings, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """aiokafka connection arguments (security) from the settings; secrets from the env.

    Every Kafka client driftwarden builds takes these (workers' faust app, topic admin,
    references, retrain listener, Alertmanager bridge, demo, plan). The SASL password is
    read from the variable ``kafka.sasl_password_env`` names (the client key's
    passphrase from ``kafka.ssl_keyfile_password_env``'s) and registered with
    :mod:`app.redact`, so no log record shows it from then on.

    Raises
    ------
    DriftwardenError
        For settings that would connect less securely than they say (SASL settings
        without a SASL protocol, TLS files without TLS), a SASL protocol without a
        mechanism, user or password variable, a password variable that is not set or
        empty (the message names the variable, never a value), a CA file that does not
        load, or a client certificate and key (mutual TLS) that do not: a key without
        its certificate, an encrypted key without ``kafka.ssl_keyfile_password_env``, a
        passphrase that does not decrypt it.

    >>> from app.settings import KafkaSettings
    >>> client_kwargs(KafkaSettings())
    {'security_protocol': 'PLAINTEXT'}
    >>> client_kwargs(KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN",
    ...     sasl_username="dw", sasl_password_env="DW_KAFKA_PASSWORD"), env={})
    Traceback (most recent call last):
    ...
    app.errors.DriftwardenError: kafka.sasl_password_env names 'DW_KAFKA_PASSWORD', ...
    """
    env = os.environ if env is None else env
    protocol = kafka.security_protocol
    kw: dict[str, Any] = {"security_protocol": protocol}
    if protocol in SASL_PROTOCOLS:
        if not kafka.sasl_mechanism:
            raise DriftwardenError(f"kafka.security_protocol {protocol} needs "
                                   "kafka.sasl_mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)")
        if not kafka.sasl_username:
            raise DriftwardenError(f"kafka.security_protocol {protocol} needs kafka.sasl_username")
        name = kafka.sasl_password_env
        if not name:
            raise DriftwardenError(
                f"kafka.security_protocol {protocol} needs kafka.sasl_password_env: the name "
                "of the environment variable holding the SASL password")
        password = _secret_from_env("kafka.sasl_password_env", name, env)
        kw["sasl_mechanism"] = kafka.sasl_mechanism
        kw["sasl_plain_username"] = kafka.sasl_username
        kw["sasl_plain_password"] = password
    elif kafka.sasl_mechanism or kafka.sasl_username or kafka.sasl_password_env:
        raise DriftwardenError(
            f"kafka.sasl_* are set but kafka.security_protocol is {protocol}, which does not "
            "authenticate: use SASL_SSL (or SASL_PLAINTEXT), or remove them")
    if protocol in TLS_PROTOCOLS:
        kw["ssl_context"] = _ssl_context(kafka, env)
    else:
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_keyfile_password_env"):
            if getattr(kafka, name):
                raise DriftwardenError(
                    f"kafka.{name} is set but kafka.security_protocol is {protocol}, which "
                    "does not use TLS: use SSL or SASL_SSL, or remove it")
    return kw


def secret_variables(kafka: KafkaSettings) -> list[str]:
    """The environment variables the settings read secrets from (what a child process
    such as the training command must not inherit)."""
    return [v for v in (kafka.sasl_password_env, kafka.ssl_keyfile_password_env) if v]


def _ssl_context(kafka: KafkaSettings, env: Mapping[str, str]) -> ssl.SSLContext:
    """The TLS context: the broker verified (against ``ssl_cafile``, else the system's
    CAs) and, for mutual TLS, the client's certificate and key loaded."""
    from aiokafka.helpers import create_ssl_context

    if kafka.ssl_keyfile and not kafka.ssl_certfile:
        raise DriftwardenError("kafka.ssl_keyfile is set without kafka.ssl_certfile: mutual "
                               "TLS needs the client's certificate too")
    if kafka.ssl_keyfile_password_env and not kafka.ssl_certfile:
        raise DriftwardenError("kafka.ssl_keyfile_password_env is set without "
                               "kafka.ssl_certfile (and kafka.ssl_keyfile)")
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=kafka.ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        raise DriftwardenError(f"kafka.ssl_cafile {kafka.ssl_cafile!r} does not load: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
    if kafka.ssl_certfile:
        password = _key_password(kafka, env)
        files = " and ".join(repr(f) for f in (kafka.ssl_certfile, kafka.ssl_keyfile) if f)
        try:
            context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile, password)
        except _EncryptedKey as exc:
            raise DriftwardenError(str(exc)) from None
        except ssl.SSLError as exc:
            hint = (f" (or the passphrase in {redact.env_name(kafka.ssl_keyfile_password_env)} "
                    "does not decrypt the key)" if kafka.ssl_keyfile_password_env else "")
            raise DriftwardenError(
                f"kafka.ssl_certfile/ssl_keyfile: {files} are not a PEM certificate and its "
                f"private key{hint}; a certificate file without its key needs "
                f"kafka.ssl_keyfile ({exc.reason or exc})") from None
        except OSError as exc:
            raise DriftwardenError(f"kafka.ssl_certfile/ssl_keyfile: {files} do not load: "
                                   f"{exc.strerror or exc}") from None
    return context


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> str:
    # Without a callback OpenSSL would ask on the terminal: a worker would hang.
    raise _EncryptedKey("kafka.ssl_keyfile is encrypted: put its passphrase in an "
                        "environment variable and name it in kafka.ssl_keyfile_password_env")


def _key_password(kafka: KafkaSettings, env: Mapping[str, str]) -> Any:
    name = kafka.ssl_keyfile_password_env
    if not name:
        return _no_passphrase
    return _secret_from_env("kafka.ssl_keyfile_password_env", name, env)


def _secret_from_env(setting: str, name: str, env: Mapping[str, str]) -> str:
    """The value of the variable a setting names, masked in every log from now on; an
    unset or empty one is an error naming the variable, never a value."""
    value = env.get(name)
    if value is None:
        raise DriftwardenError(f"{setting} names {redact.env_name(name)}, which is not set in "
                               "the environment")
    if not value:
        raise DriftwardenError(f"{setting} names {redact.env_name(name)}, which is set but empty")
    redact.register(value)
    return value


async def ensure_topics(bootstrap: str, settings: MonitorSettings,
                        extra: dict[str, int] | None = None,
                        compact: frozenset[str] = frozenset()) -> list[str]:
    """Create every driftwarden topic with its partition count, before workers start;
    returns the names it created (none: all were there).

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
        compacted = {settings.topics.name("references"), *compact}  # + changelogs
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
        return [t.name for t in missing]
    finally:
        await admin.close()
