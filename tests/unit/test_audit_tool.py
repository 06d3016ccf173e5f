"""tools/audit.py and tools/lock.py: the dependency audit's decisions, offline (PyPI's
answers are given)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"tools_{name}", TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


audit = load("audit")
lock = load("lock")

VULN = {"id": "PYSEC-2099-1", "aliases": ["CVE-2099-1", "GHSA-aaaa-bbbb-cccc"],
        "fixed_in": ["2.0"], "link": "https://osv.dev/PYSEC-2099-1", "summary": "bad",
        "withdrawn": None}
TWIN = {**VULN, "id": "GHSA-aaaa-bbbb-cccc", "aliases": ["CVE-2099-1", "PYSEC-2099-1"]}


def pypi(pages: dict[str, tuple[str, list[dict[str, Any]]]], per_release: int = 404):
    """A stand-in for ``get_json``: project pages (newest version, vulnerabilities)."""
    def get_json(url: str) -> tuple[int, Any]:
        parts = url.removeprefix(audit.PYPI + "/").split("/")
        if len(parts) == 3:  # /<name>/<version>/json, what pip-audit reads
            return per_release, None
        if parts[0] not in pages:
            return 0, "no route to host"
        newest, vulns = pages[parts[0]]
        return 200, {"info": {"version": newest}, "vulnerabilities": vulns}
    return get_json


@pytest.fixture
def lockfile(tmp_path: Path) -> Path:
    path = tmp_path / "requirements.lock"
    path.write_text("# a comment\nlib==1.0\nother==3.1  # pinned\n")
    return path


def test_unreachable_service_fails_loudly_by_default(lockfile, monkeypatch, capsys):
    monkeypatch.setattr(audit, "get_json", pypi({"lib": ("1.0", []), "other": ("3.1", [])}))
    assert audit.main([str(lockfile)]) == 2
    out = capsys.readouterr().out
    assert "AUDIT NOT RUN" in out and "lib/1.0/json -> HTTP 404" in out


def test_fallback_fails_on_a_vulnerability_of_a_pin_that_is_the_newest_release(
        lockfile, monkeypatch, capsys):
    monkeypatch.setattr(audit, "get_json", pypi({"lib": ("1.0", [VULN, TWIN]),
                                                 "other": ("3.1", [])}))
    assert audit.main([str(lockfile), "--if-unreachable", "fallback"]) == 1
    out = capsys.readouterr().out
    assert out.count("VULNERABLE") == 1  # one advisory under two ids
    assert "lib==1.0: PYSEC-2099-1 (CVE-2099-1, GHSA-aaaa-bbbb-cccc); fixed in: 2.0" in out
    assert "2 of 2 pins audited in full" in out and "NOT AUDITED" not in out


def test_fallback_names_what_it_could_not_audit_and_passes(lockfile, monkeypatch, capsys):
    monkeypatch.setattr(audit, "get_json", pypi({"lib": ("1.2", [])}))
    assert audit.main([str(lockfile), "--if-unreachable", "fallback"]) == 0
    out = capsys.readouterr().out
    assert "AUDIT INCOMPLETE: 2 of 2 pins were NOT AUDITED" in out
    assert "lib==1.0: newest release is 1.2" in out
    assert "other==3.1: project page unavailable (no route to host)" in out


def test_a_vulnerability_open_in_the_newest_release_counts_for_an_older_pin(
        lockfile, monkeypatch, capsys):
    monkeypatch.setattr(audit, "get_json", pypi({"lib": ("1.5", [VULN]),
                                                 "other": ("3.1", [])}))
    assert audit.main([str(lockfile), "--if-unreachable", "fallback"]) == 1
    assert "(open in the newest release 1.5)" in capsys.readouterr().out


def test_ignores_match_aliases(lockfile, monkeypatch, capsys):
    monkeypatch.setattr(audit, "get_json", pypi({"lib": ("1.0", [VULN, TWIN]),
                                                 "other": ("3.1", [])}))
    monkeypatch.setattr(audit, "IGNORED", (audit.Ignore(
        "CVE-2099-1", "not reachable from our code", "2026-12-01", "2999-01-01"),))
    assert audit.main([str(lockfile), "--if-unreachable", "fallback"]) == 0
    out = capsys.readouterr().out
    assert "ignoring CVE-2099-1 until 2999-01-01: not reachable" in out
    assert "VULNERABLE" not in out


def test_an_ignore_past_its_review_date_counts_again(monkeypatch, capsys):
    ignore = audit.Ignore("CVE-2099-1", "wait for 2.0", "2026-01-01", "2026-06-01")
    monkeypatch.setattr(audit, "IGNORED", (ignore,))
    assert audit.active_ignores(dt.date(2026, 5, 31)) == {"CVE-2099-1": ignore}
    assert audit.active_ignores(dt.date(2026, 6, 2)) == {}
    assert "was due for review on 2026-06-01: it counts again" in capsys.readouterr().out


def test_a_reachable_service_runs_pip_audit_strictly(lockfile, monkeypatch):
    monkeypatch.setattr(audit, "get_json", pypi({}, per_release=200))
    ran: list[list[str]] = []

    class Done:
        returncode = 1

    def run(cmd: list[str], check: bool) -> Done:
        ran.append(cmd)
        return Done()

    monkeypatch.setattr(audit.subprocess, "run", run)
    monkeypatch.setattr(audit, "IGNORED", (audit.Ignore("GHSA-x", "r", "2026-01-01",
                                                        "2999-01-01"),))
    assert audit.main([str(lockfile), "--if-unreachable", "fallback"]) == 1
    (cmd,) = ran
    for flag in ("--no-deps", "--disable-pip", "--strict", "--ignore-vuln"):
        assert flag in cmd
    assert cmd[cmd.index("--vulnerability-service") + 1] == "pypi"
    assert cmd[cmd.index("-r") + 1] == str(lockfile)


def test_lock_check_names_every_difference(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lock, "render", lambda: "a==1\nb==2\nnew==0.1\n")
    path = tmp_path / "requirements.lock"
    path.write_text("# header\na==1\nb==1.9\ngone==5\n")
    assert lock.check(path) == 1
    err = capsys.readouterr().err
    assert "new: installed 0.1, not in the lock" in err
    assert "gone: locked 5, no longer needed" in err
    assert "b: locked 1.9, installed 2" in err
    path.write_text("A==1\nb==2\nNew==0.1\n")
    assert lock.check(path) == 0


def test_the_lock_is_the_installed_closure_of_driftwarden() -> None:
    runtime, dev = lock.closure(), lock.closure(frozenset({"dev"}))
    assert {"faust-streaming", "aiokafka", "pydantic"} <= runtime.keys()
    assert "pytest" not in runtime and {"pytest", "pip-audit"} <= dev.keys()
    assert runtime.items() <= dev.items()
