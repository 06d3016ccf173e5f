"""The compose stack: ``docker-compose config`` accepts it (Debian package
``docker-compose``, installed by ``.ci/run``; skipped where absent), every file it
mounts exists, the monitor files it runs load, Kafka's internal topics are at
replication factor 1, and Alertmanager accepts its configuration (``amtool``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.demo.run import standalone_config
from app.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose")
AMTOOL = shutil.which("amtool")


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None
    return subprocess.run([COMPOSE, "-f", str(ROOT / "docker-compose.yml"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose not installed (Debian package "
                                            "'docker-compose'; .ci/run installs it)")
def test_compose_config_is_valid_with_and_without_the_demo_profile():
    for profile in ((), ("--profile", "demo")):
        done = compose(*profile, "config")
        assert done.returncode == 0, done.stderr
        services = yaml.safe_load(done.stdout)["services"]
        assert {"kafka", "topics", "worker", "alertmanager-bridge", "prometheus",
                "alertmanager", "grafana"} <= set(services)
    demo = {n for n, svc in services.items() if svc.get("profiles") == ["demo"]}
    assert demo == {"demo-topics", "demo-worker", "demo-bridge", "demo"}
    assert all(not svc.get("profiles") for n, svc in services.items() if n not in demo)


def test_mounted_files_exist_and_monitor_files_load():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        command = svc.get("command") or []
        if "-c" in command:
            path = command[command.index("-c") + 1]
            assert path.startswith("/etc/driftwarden/"), (name, path)
            local = ROOT / "examples" / path.removeprefix("/etc/driftwarden/")
            load_settings(local, env={"DRIFTWARDEN_BOOTSTRAP": "kafka:19092"})
    env = services["kafka"]["environment"]
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_DEFAULT_REPLICATION_FACTOR"):
        assert env[key] == "1", key
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # topics: partition counts


def test_the_demo_monitor_file_is_the_demos():
    text = (ROOT / "examples" / "demo.yaml").read_text()
    assert yaml.safe_load(text) == standalone_config(), \
        "run: driftwarden demo --write-config examples/demo.yaml"
    demo = load_settings(ROOT / "examples" / "demo.yaml", env={})
    assert demo.topics.name("predictions") == "demo.mlmon.predictions"
    assert demo.worker.app_id != load_settings(ROOT / "examples" / "monitor.yaml",
                                               env={}).worker.app_id


@pytest.mark.skipif(AMTOOL is None, reason="amtool not installed (Debian package "
                                           "'prometheus-alertmanager'; .ci/run installs it)")
def test_alertmanager_config_is_valid():
    assert AMTOOL is not None
    done = subprocess.run([AMTOOL, "check-config",
                           str(ROOT / "deploy" / "alertmanager" / "alertmanager.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
