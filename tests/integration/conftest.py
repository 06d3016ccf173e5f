import pytest

from app.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


@pytest.fixture
def worker_factory(broker, tmp_path):
    from support import Worker

    started = []

    def make(config):
        w = Worker(config, broker.bootstrap, tmp_path / f"worker-{len(started)}.log").start()
        started.append(w)
        return w

    yield make
    for w in started:
        if w.proc is not None and w.proc.poll() is None:
            w.stop()
