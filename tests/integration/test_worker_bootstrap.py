"""A configured bootstrap server starts nothing; without one, the embedded broker."""

from app.broker import metadata_answers
from app.settings import settings_from_mapping
from app.worker import resolve_bootstrap

MODELS = {"m": {"features": {"x": {"type": "numeric"}}, "reference": {"warmup": 100}}}


def test_named_bootstrap_starts_nothing():
    s = settings_from_mapping({"kafka": {"bootstrap": "kafka.example:9092"}, "models": MODELS},
                              env={})
    assert resolve_bootstrap(s) == ("kafka.example:9092", None)
    assert resolve_bootstrap(s, "other:9092") == ("other:9092", None)


def test_no_bootstrap_starts_the_embedded_broker():
    s = settings_from_mapping({"models": MODELS}, env={})
    bootstrap, broker = resolve_bootstrap(s)
    try:
        assert broker is not None and bootstrap == broker.bootstrap
        host, port = bootstrap.split(":")
        assert metadata_answers(host, int(port))
    finally:
        broker.stop()
