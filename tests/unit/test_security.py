"""Secrets stay out of logs, reprs, error texts and published events; the Kafka security
settings reach every client the project builds.

Each client is started against a loopback stand-in for a broker that requires SASL
(``kafka_fake``), with a marker password in the environment and every logger at DEBUG.
The stand-in records the login it receives, then refuses it: so the test sees both what
went on the wire (mechanism, user, password, TLS verified with ``kafka.ssl_cafile``) and
what was logged and raised on the way (aiokafka logs the SASL request at DEBUG, the
PLAIN password in it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import io
import json
import logging
import secrets
import subprocess
import sys
import textwrap
import threading
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import yaml
from kafka_fake import FakeSaslBroker, client_certificate, self_signed
from prometheus_client import CollectorRegistry

from app import redact
from app.alertmanager_http import authorization_from_env, check_url, http_sender
from app.cli import main
from app.errors import ConfigError, DriftwardenError
from app.kafka import client_kwargs, ensure_topics, secret_variables
from app.observability import Metrics
from app.plan import read_last_retrains
from app.reference import build_reference
from app.references_topic import ReferenceFollower, publish_reference
from app.retrain_listener import RetrainListener, Trigger, command_env, run_command
from app.settings import MetricsSettings, MonitorSettings, settings_from_mapping
from app.streaming import build_app, faust_settings

PASSWORD_ENV = "DW_TEST_KAFKA_PASSWORD"
USER = "dw-user"
UNIT = Path(__file__).resolve().parent


@pytest.fixture
def marker(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh password, in the environment variable the settings name."""
    value = f"mk-{secrets.token_hex(6)}-pw"
    monkeypatch.setenv(PASSWORD_ENV, value)
    return value


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    return self_signed(tmp_path_factory.mktemp("tls"))


def monitor(bootstrap: str, protocol: str, mechanism: str | None = None,
            cafile: Path | None = None) -> dict[str, Any]:
    kafka: dict[str, Any] = {"bootstrap": bootstrap, "security_protocol": protocol}
    if mechanism:
        kafka.update(sasl_mechanism=mechanism, sasl_username=USER,
                     sasl_password_env=PASSWORD_ENV)
    if cafile:
        kafka["ssl_cafile"] = str(cafile)
    return {"kafka": kafka, "metrics": {"enabled": False},
            "models": {"churn": {"features": {"x": {"type": "numeric"}},
                                 "reference": {"warmup": 100}}}}


def settings_of(mapping: dict[str, Any]) -> MonitorSettings:
    return settings_from_mapping(mapping, env={})


# -- every client the project builds, started against the stand-in ----------------------
Client = Callable[[MonitorSettings, str, Path], Awaitable[Any]]


async def topics_admin(s: MonitorSettings, bootstrap: str, tmp: Path) -> None:
    await ensure_topics(bootstrap, s)


async def reference_publisher(s: MonitorSettings, bootstrap: str, tmp: Path) -> None:
    rows = [{"x": float(i)} for i in range(300)]
    ref = build_reference(rows, "churn", s.models["churn"], version="v1", origin="test")
    await publish_reference(bootstrap, s, ref)


async def reference_follower(s: MonitorSettings, bootstrap: str, tmp: Path) -> None:
    follower = ReferenceFollower(bootstrap, s, lambda ref: None)
    try:
        await follower.start()
    finally:
        await follower.stop()


async def plan_last_retrain(s: MonitorSettings, bootstrap: str, tmp: Path) -> Any:
    return await read_last_retrains(s, bootstrap, ["churn"], 10.0)  # never raises


async def retrain_listener(s: MonitorSettings, bootstrap: str, tmp: Path) -> None:
    await RetrainListener(s, bootstrap, "true").run(asyncio.Event())


async def alertmanager_bridge(s: MonitorSettings, bootstrap: str, tmp: Path) -> None:
    from app.bridge import run_bridge

    async def send(alerts: list[dict[str, Any]]) -> None:
        raise AssertionError("nothing is sent")

    await run_bridge(s, bootstrap, "http://127.0.0.1:9", stop=asyncio.Event(), send=send)


def demo(s: MonitorSettings, bootstrap: str, tmp: Path) -> Any:
    from app.demo.run import Demo

    return Demo(bootstrap, tmp / "monitor.yaml", duration=1, rate=10, seed=1, metrics_port=0)


async def demo_producer(s: MonitorSettings, bootstrap: str, tmp: Path) -> None:
    await demo(s, bootstrap, tmp).produce()


async def demo_consumer(s: MonitorSettings, bootstrap: str, tmp: Path) -> None:
    await demo(s, bootstrap, tmp).consume()


async def worker_faust_app(s: MonitorSettings, bootstrap: str, tmp: Path) -> None:
    app, _ = build_app(s, bootstrap, {}, Metrics(CollectorRegistry()))
    try:
        await app.producer.start()
    finally:
        await app.producer.stop()


CLIENTS: dict[str, Client] = {
    "topics admin": topics_admin, "reference publisher": reference_publisher,
    "reference follower": reference_follower, "plan": plan_last_retrain,
    "retrain listener": retrain_listener, "alertmanager bridge": alertmanager_bridge,
    "demo producer": demo_producer, "demo consumer": demo_consumer,
    "worker faust app": worker_faust_app,
}


async def attempt(client: Client, s: MonitorSettings, bootstrap: str, tmp: Path) -> list[str]:
    """Run ``client`` (it fails: the login is refused); the texts it produced."""
    try:
        result = await asyncio.wait_for(client(s, bootstrap, tmp), 30)
    except Exception as exc:
        return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    return [repr(result)]


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return caplog.text + "".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)


SECURITY = [("SASL_SSL", "PLAIN"), ("SASL_PLAINTEXT", "PLAIN"),
            ("SASL_PLAINTEXT", "SCRAM-SHA-512"), ("SSL", None)]


@pytest.mark.parametrize(("protocol", "mechanism"), SECURITY,
                         ids=[f"{p}-{m}" for p, m in SECURITY])
@pytest.mark.parametrize("name", list(CLIENTS))
async def test_every_client_connects_as_configured_and_logs_no_secret(
        name: str, protocol: str, mechanism: str | None, marker: str, cert: Path | None,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tls = protocol in ("SSL", "SASL_SSL")
    if tls and cert is None:
        pytest.skip("no openssl command to make the test certificate")
    caplog.set_level(logging.DEBUG)
    broker = await FakeSaslBroker(cert if tls else None).start()
    try:
        mapping = monitor(broker.bootstrap, protocol, mechanism, cert if tls else None)
        (tmp_path / "monitor.yaml").write_text(yaml.safe_dump(mapping))  # for the demo
        texts = await attempt(CLIENTS[name], settings_of(mapping), broker.bootstrap, tmp_path)
    finally:
        await broker.stop()
    # On the wire: TLS verified against ssl_cafile (else no request arrives), then the
    # configured mechanism, user and password.
    assert broker.logins and all(login.requests for login in broker.logins), \
        f"{name}: no request reached the broker"
    if mechanism is None:
        assert all(login.mechanism is None for login in broker.logins)
    else:
        assert {(login.mechanism, login.username) for login in broker.logins} == \
            {(mechanism, USER)}
        if mechanism == "PLAIN":
            assert {login.password for login in broker.logins} == {marker}
            if name != "plan":  # which silences aiokafka while it reads
                # aiokafka logged the authentication request, and it was masked
                assert "SaslAuthenticateRequest_v1(<redacted>)" in caplog.text
    leaks = [t for t in [logged(caplog), *texts] if marker in t]
    assert not leaks, f"{name}: the password leaked in {leaks[0][:300]!r}"


async def test_tls_refuses_a_broker_the_ca_file_does_not_vouch_for(
        marker: str, cert: Path | None, tmp_path: Path) -> None:
    """Without ``ssl_cafile`` the self-signed broker is refused before any request: the
    previous test's TLS logins really depended on the CA file."""
    if cert is None:
        pytest.skip("no openssl command to make the test certificate")
    broker = await FakeSaslBroker(cert).start()
    try:
        s = settings_of(monitor(broker.bootstrap, "SASL_SSL", "PLAIN"))
        texts = await attempt(topics_admin, s, broker.bootstrap, tmp_path)
    finally:
        await broker.stop()
    assert not any(login.requests for login in broker.logins)
    assert not any(marker in t for t in texts)


KEY_PASSPHRASE_ENV = "DW_TEST_KEY_PASSPHRASE"


@pytest.fixture
def passphrase(monkeypatch: pytest.MonkeyPatch) -> str:
    value = f"kp-{secrets.token_hex(6)}-pw"
    monkeypatch.setenv(KEY_PASSPHRASE_ENV, value)
    return value


def mutual(mapping: dict[str, Any], client: tuple[Path, Path], passphrase_env: bool = True
           ) -> dict[str, Any]:
    kafka = {**mapping["kafka"], "ssl_certfile": str(client[0]), "ssl_keyfile": str(client[1])}
    if passphrase_env:
        kafka["ssl_keyfile_password_env"] = KEY_PASSPHRASE_ENV
    return {**mapping, "kafka": kafka}


MTLS_CLIENTS = ["topics admin", "reference follower", "retrain listener", "worker faust app"]


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
@pytest.mark.parametrize("name", MTLS_CLIENTS)
async def test_mutual_tls_presents_the_client_certificate(
        name: str, protocol: str, marker: str, passphrase: str, cert: Path | None,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A broker that requires a client certificate: the configured one (its key
    encrypted, the passphrase from the environment) is presented and verified; the
    passphrase is in no log or error."""
    client = None if cert is None else client_certificate(tmp_path, passphrase)
    if cert is None or client is None:
        pytest.skip("no openssl command to make the test certificates")
    caplog.set_level(logging.DEBUG)
    broker = await FakeSaslBroker(cert, client_ca=client[0]).start()
    try:
        mapping = monitor(broker.bootstrap, protocol,
                          "PLAIN" if protocol == "SASL_SSL" else None, cert)
        texts = await attempt(CLIENTS[name], settings_of(mutual(mapping, client)),
                              broker.bootstrap, tmp_path)
    finally:
        await broker.stop()
    assert broker.logins and all(login.requests for login in broker.logins), \
        f"{name}: no request reached the broker"
    assert {login.client_cn for login in broker.logins} == {"driftwarden-client"}
    leaks = [t for t in [logged(caplog), *texts] if passphrase in t or marker in t]
    assert not leaks, f"{name}: a secret leaked in {leaks[0][:300]!r}"


async def test_a_broker_requiring_a_client_certificate_refuses_a_client_without(
        cert: Path | None, tmp_path: Path) -> None:
    """The previous test's logins really depended on the client certificate."""
    client = None if cert is None else client_certificate(tmp_path)
    if cert is None or client is None:
        pytest.skip("no openssl command to make the test certificates")
    broker = await FakeSaslBroker(cert, client_ca=client[0]).start()
    try:
        s = settings_of(monitor(broker.bootstrap, "SSL", None, cert))
        await attempt(topics_admin, s, broker.bootstrap, tmp_path)
    finally:
        await broker.stop()
    assert not any(login.requests for login in broker.logins)


@pytest.mark.parametrize(("change", "message"), [
    ({"ssl_keyfile_password_env": None}, "kafka.ssl_keyfile is encrypted: put its passphrase "
     "in an environment variable and name it in kafka.ssl_keyfile_password_env"),
    ({"ssl_keyfile_password_env": "DW_TEST_UNSET_VARIABLE"},
     "kafka.ssl_keyfile_password_env names 'DW_TEST_UNSET_VARIABLE', which is not set"),
    ({"ssl_certfile": None}, "kafka.ssl_keyfile is set without kafka.ssl_certfile"),
    ({"ssl_keyfile": "/nonexistent/key.pem"}, "do not load: No such file or directory"),
    ({"security_protocol": "PLAINTEXT", "ssl_cafile": None},
     "kafka.ssl_certfile is set but kafka.security_protocol is PLAINTEXT, which does not "
     "use TLS"),
])
def test_mutual_tls_settings_that_cannot_work_are_refused_clearly(
        change: dict[str, Any], message: str, passphrase: str, cert: Path | None,
        tmp_path: Path) -> None:
    """Each fails at once with what to do (an encrypted key without its passphrase
    would otherwise have OpenSSL ask on the terminal: a worker that hangs)."""
    client = None if cert is None else client_certificate(tmp_path, passphrase)
    if cert is None or client is None:
        pytest.skip("no openssl command to make the test certificates")
    mapping = mutual(monitor("kafka:9093", "SSL", None, cert), client)
    mapping["kafka"] = {k: v for k, v in {**mapping["kafka"], **change}.items() if v is not None}
    with pytest.raises(DriftwardenError, match=message) as err:
        client_kwargs(settings_of(mapping).kafka)
    assert passphrase not in str(err.value)


def test_a_wrong_passphrase_is_named_as_a_cause(monkeypatch: pytest.MonkeyPatch,
                                                cert: Path | None, tmp_path: Path) -> None:
    client = None if cert is None else client_certificate(tmp_path, "the-right-one")
    if cert is None or client is None:
        pytest.skip("no openssl command to make the test certificates")
    monkeypatch.setenv(KEY_PASSPHRASE_ENV, "a-wrong-one")
    s = settings_of(mutual(monitor("kafka:9093", "SSL", None, cert), client))
    with pytest.raises(DriftwardenError, match=f"the passphrase in '{KEY_PASSPHRASE_ENV}' "
                       "does not decrypt the key") as err:
        client_kwargs(s.kafka)
    assert "a-wrong-one" not in str(err.value)


WORKER = textwrap.dedent("""
    import asyncio, sys, threading
    sys.path.insert(0, sys.argv[1])
    import faust
    from kafka_fake import FakeSaslBroker
    from prometheus_client import CollectorRegistry
    from app.observability import Metrics
    from app.settings import settings_from_mapping
    from app.streaming import build_app
    import json

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    broker = asyncio.run_coroutine_threadsafe(FakeSaslBroker().start(), loop).result()
    mapping = json.loads(sys.argv[2])
    mapping["kafka"]["bootstrap"] = broker.bootstrap
    settings = settings_from_mapping(mapping, env={})
    app, _ = build_app(settings, broker.bootstrap, {}, Metrics(CollectorRegistry()))
    worker = faust.Worker(app, loglevel="DEBUG", quiet=False, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        print("worker exit", exc.code, [(l.mechanism, l.username, l.password)
                                        for l in broker.logins], file=sys.stderr)
""")


def test_a_faust_worker_at_debug_logs_no_secret(marker: str) -> None:
    """The worker's faust app started by faust's own worker (which installs its own log
    handlers) at DEBUG, in a subprocess: the whole output is checked."""
    mapping = monitor("set-by-the-script", "SASL_PLAINTEXT", "PLAIN")
    proc = subprocess.run([sys.executable, "-c", WORKER, str(UNIT), orjson.dumps(mapping)],
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert f"worker exit 1 [('PLAIN', '{USER}', '{marker}')]" in out, out[-3000:]
    assert "SaslAuthenticateRequest_v1(<redacted>)" in out, out[-3000:]
    assert "[DEBUG]" in out
    assert marker not in out.replace(f"'{USER}', '{marker}')]", "")


def test_the_worker_command_failing_to_connect_prints_no_secret(
        marker: str, tmp_path: Path) -> None:
    """``driftwarden worker`` against a broker that refuses the login: its whole output
    (the traceback of the connection failure included) shows no password."""
    async def scenario() -> subprocess.CompletedProcess[str]:
        broker = await FakeSaslBroker().start()
        config = tmp_path / "monitor.yaml"
        config.write_text(yaml.safe_dump(monitor(broker.bootstrap, "SASL_PLAINTEXT",
                                                 "PLAIN")))
        try:
            return await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "app", "worker", "-c", str(config),
                                 "--log-level", "debug"],
                capture_output=True, text=True, timeout=120)
        finally:
            await broker.stop()

    proc = asyncio.run(scenario())
    assert proc.returncode != 0
    assert "Unable to bootstrap" in proc.stderr, proc.stderr[-2000:]
    assert marker not in proc.stdout + proc.stderr


# -- settings errors name the variable, never a value -------------------------------------
def test_a_missing_password_variable_is_named(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    mapping = monitor("kafka:9092", "SASL_SSL", "PLAIN")
    s = settings_of(mapping)
    expected = f"kafka.sasl_password_env names '{PASSWORD_ENV}', which is not set"
    with pytest.raises(DriftwardenError, match=expected):
        client_kwargs(s.kafka)
    with pytest.raises(DriftwardenError, match=expected):  # the worker's faust app
        faust_settings(s, "kafka:9092", embedded=False)
    config = tmp_path / "monitor.yaml"
    config.write_text(yaml.safe_dump(mapping))
    assert main(["topics", "create", "-c", str(config)]) == 2
    assert expected in capsys.readouterr().err


def test_a_password_given_in_place_of_its_variable_is_not_echoed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    password = f"hunter-{secrets.token_hex(4)}!"
    monkeypatch.delenv(password, raising=False)
    mapping = monitor("kafka:9092", "SASL_SSL", "PLAIN")
    mapping["kafka"]["sasl_password_env"] = password
    with pytest.raises(DriftwardenError, match=r"names a variable \(not shown") as err:
        client_kwargs(settings_of(mapping).kafka)
    assert password not in str(err.value)
    with pytest.raises(DriftwardenError, match=r"names a variable \(not shown") as err:
        authorization_from_env(password, env={})
    assert password not in str(err.value)


def test_an_empty_password_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "")
    s = settings_of(monitor("kafka:9092", "SASL_SSL", "SCRAM-SHA-256"))
    with pytest.raises(DriftwardenError, match=f"'{PASSWORD_ENV}', which is set but empty"):
        client_kwargs(s.kafka)


@pytest.mark.parametrize(("kafka", "message"), [
    ({"sasl_mechanism": "PLAIN", "sasl_username": USER, "sasl_password_env": PASSWORD_ENV},
     "kafka.sasl_.* are set but kafka.security_protocol is PLAINTEXT, which does not "
     "authenticate"),
    ({"security_protocol": "SSL", "sasl_username": USER}, "is SSL, which does not"),
    ({"ssl_cafile": "/etc/ca.pem"}, "kafka.ssl_cafile is set but .* does not use TLS"),
    ({"security_protocol": "SASL_SSL"}, "SASL_SSL needs kafka.sasl_mechanism"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"},
     "needs kafka.sasl_username"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": USER},
     "needs kafka.sasl_password_env"),
    ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"},
     "kafka.ssl_cafile '/nonexistent/ca.pem' does not load: No such file"),
])
def test_settings_that_would_connect_less_securely_than_they_say_are_refused(
        kafka: dict[str, Any], message: str, marker: str) -> None:
    s = settings_of({**monitor("kafka:9092", "PLAINTEXT"),
                     "kafka": {"bootstrap": "kafka:9092", **kafka}})
    with pytest.raises(DriftwardenError, match=message) as err:
        client_kwargs(s.kafka)
    assert marker not in str(err.value)


def test_reprs_show_no_secret(marker: str, cert: Path | None) -> None:
    s = settings_of(monitor("kafka:9092", "SASL_SSL" if cert else "SASL_PLAINTEXT", "PLAIN",
                            cert))
    app, pipeline = build_app(s, "kafka:9092", {}, Metrics(CollectorRegistry()))
    credentials = app.conf.broker_credentials
    assert credentials.password == marker and credentials.username == USER
    assert (credentials.ssl_context is not None) == (cert is not None)
    for obj in (s, s.kafka, app, app.conf, credentials, pipeline):
        assert marker not in repr(obj) and marker not in str(obj), type(obj)


def test_metrics_bind_to_loopback_unless_configured() -> None:
    assert MetricsSettings().host == "127.0.0.1"


def test_a_password_put_in_the_file_by_mistake_is_not_echoed(marker: str) -> None:
    mapping = monitor("kafka:9092", "PLAINTEXT")
    mapping["kafka"]["sasl_password"] = marker
    with pytest.raises(ConfigError) as err:
        settings_of(mapping)
    assert "kafka.sasl_password" in str(err.value)
    assert "kafka.sasl_password_env" in str(err.value)  # what to do instead
    assert marker not in str(err.value)


@pytest.mark.parametrize("where", [("kafka", "ssl_key_password"), ("kafka", "api_token"),
                                   ("alerting", "webhook_secret")])
def test_no_value_under_a_secret_looking_key_is_echoed(marker: str, where) -> None:
    # a secret under a key the file does not know: refused, and never repeated
    mapping = monitor("kafka:9092", "SASL_SSL")
    section, key = where
    mapping.setdefault(section, {})[key] = marker
    with pytest.raises(ConfigError) as err:
        settings_of(mapping)
    assert f"{section}.{key}" in str(err.value) and marker not in str(err.value)


def test_values_under_other_keys_are_still_shown() -> None:
    mapping = monitor("kafka:9092", "PLAINTEXT")
    mapping["kafka"]["partitions"] = "many"
    with pytest.raises(ConfigError, match=r"kafka.partitions: .*\(got 'many'\)"):
        settings_of(mapping)


# -- the masking itself ------------------------------------------------------------------
@pytest.mark.parametrize("secret", ["p'a\"ss\\wörd\x01", "it's-\\secret", "plain-Secret1"])
def test_every_spelling_of_a_secret_is_masked(secret: str) -> None:
    s = redact.Secrets()
    s.add(secret)
    for text in (secret, repr(secret), repr(secret.encode()), repr((secret, "'")),
                 repr(b"'" + secret.encode()), repr(b'"' + secret.encode()),
                 json.dumps({"p": secret}), quote(secret, safe=""), f"x{secret}y"):
        assert s.mask(text).count("***") == 1, text
    assert s.mask("nothing to hide") == "nothing to hide"


def test_log_records_are_masked_whatever_the_handler(marker: str) -> None:
    """A record is masked when made: a logger with its own handler (as faust's worker
    installs) gets it masked too, arguments, exception and all."""
    redact.register(marker)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger("test_security.isolated")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG)
    try:
        log.debug("password=%s, 100%% sure", marker)
        log.info({"password": marker})
        try:
            raise RuntimeError(f"login with {marker} refused")
        except RuntimeError:
            log.exception("failed")
        log.info("%s %d", "bad format")  # the handler reports it, as without the masking
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "password=***, 100% sure" in text and "{'password': '***'}" in text
    assert "RuntimeError: login with *** refused" in text
    assert marker not in text


def test_a_long_sasl_request_is_logged_as_its_name(caplog: pytest.LogCaptureFixture) -> None:
    """aiokafka cuts the logged SASL bytes after 100 bytes: the start of a longer
    password would survive masking its whole value, so the request is not shown."""
    from aiokafka.protocol.admin import SaslAuthenticateRequest_v1

    password = "x" * 90 + secrets.token_hex(20)
    redact.register(password)
    caplog.set_level(logging.DEBUG)
    request = SaslAuthenticateRequest_v1(b"user\0user\0" + password.encode())
    logging.getLogger("aiokafka.conn").debug("Request to %s:%d %d: %s", "h", 1, 2, request)
    assert caplog.records[-1].getMessage() == \
        "Request to h:1 2: SaslAuthenticateRequest_v1(<redacted>)"


# -- the retrain listener's command -------------------------------------------------------
async def test_the_training_command_gets_no_kafka_password(marker: str) -> None:
    trigger = Trigger("t1", "churn", "v1", [], b"{}")
    assert PASSWORD_ENV not in command_env(trigger, withhold=[PASSWORD_ENV])
    kafka = settings_of(mutual(monitor("kafka:9092", "SASL_SSL", "PLAIN"),
                               (Path("c.pem"), Path("k.pem")))).kafka
    assert secret_variables(kafka) == [PASSWORD_ENV, KEY_PASSPHRASE_ENV]  # what is held back
    with pytest.raises(RuntimeError, match="exited with status 3") as err:
        await run_command(f'echo "pw=${PASSWORD_ENV}" >&2; exit 3', trigger, 30,
                          withhold=[PASSWORD_ENV])
    assert "pw=" in str(err.value) and marker not in str(err.value)


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append(orjson.loads(value))


async def test_a_failed_run_publishes_no_secret(marker: str) -> None:
    """A command that prints a secret it got some other way: the ``retrain_failed``
    event's reason (published to Kafka) and the log are masked."""
    s = settings_of(monitor("kafka:9092", "SASL_PLAINTEXT", "PLAIN"))
    client_kwargs(s.kafka)  # reads (and registers) the password, as the listener does
    listener = RetrainListener(s, "kafka:9092", f"echo 'auth failed for {marker}' >&2; exit 1")
    trigger = {"id": "t9", "type": "io.driftwarden.retrain.requested",
               "data": {"trigger_id": "t9", "model": "churn", "model_version": "v1",
                        "reasons": []}}
    producer = RecordingProducer()
    assert await listener._handle(orjson.dumps(trigger), producer, asyncio.Event())
    failed = [e for e in producer.sent if e["event"] == "retrain_failed"]
    assert failed and "auth failed for ***" in failed[0]["reason"]
    assert marker not in orjson.dumps(producer.sent).decode()


# -- the Alertmanager bridge's credentials ------------------------------------------------
class Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/moved"):
            self.send_response(302)
            self.send_header("Location", "/elsewhere/api/v2/alerts")
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def alertmanager() -> Any:
    Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", Recorder.seen
    finally:
        server.shutdown()
        server.server_close()


async def test_the_bridge_sends_its_credentials_to_alertmanager_only(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    token = secrets.token_hex(12)
    monkeypatch.setenv("DW_TEST_AM_AUTH", f"Bearer {token}")
    caplog.set_level(logging.DEBUG)
    authorization = authorization_from_env("DW_TEST_AM_AUTH")
    with alertmanager() as (url, seen):
        await http_sender(url, authorization=authorization)([{"labels": {"a": "b"}}])
        assert seen == [("/api/v2/alerts", f"Bearer {token}")]
        # A redirect is not followed: the POST would become a GET (alerts lost, yet 200)
        # and the header would go wherever it points.
        with pytest.raises(OSError, match="HTTP 302: redirected to /elsewhere/api/v2/alerts"):
            await http_sender(url + "/moved", authorization=authorization)([{}])
        assert seen[1:] == [("/moved/api/v2/alerts", f"Bearer {token}")]
        logging.getLogger("driftwarden").warning("header %s", authorization)
    assert "header ***" in caplog.text and token not in logged(caplog)


def test_basic_credentials_are_masked_decoded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    password = secrets.token_hex(8)
    value = base64.b64encode(f"bridge:{password}".encode()).decode()
    monkeypatch.setenv("DW_TEST_AM_AUTH", f"Basic {value}")
    authorization_from_env("DW_TEST_AM_AUTH")
    assert redact.mask(f"{value} bridge:{password}") == "*** bridge:***"


def test_the_bridge_refuses_credentials_in_its_url(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    password = secrets.token_hex(8)
    with pytest.raises(DriftwardenError, match="must not carry credentials") as err:
        check_url(f"https://bridge:{password}@am.example:9093/")
    assert password not in str(err.value) and "https://am.example:9093/" in str(err.value)
    config = tmp_path / "monitor.yaml"
    config.write_text(yaml.safe_dump(monitor("kafka:9092", "PLAINTEXT")))
    url = f"http://bridge:{password}@am.example:9093"
    assert main(["alertmanager-bridge", "-c", str(config), "--url", url]) == 2
    assert "must not carry credentials" in capsys.readouterr().err
    monkeypatch.delenv("DW_TEST_AM_AUTH", raising=False)
    assert main(["alertmanager-bridge", "-c", str(config), "--url", "http://am:9093",
                 "--auth-env", "DW_TEST_AM_AUTH"]) == 2
    assert "--auth-env names 'DW_TEST_AM_AUTH', which is not set" in capsys.readouterr().err
