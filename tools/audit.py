"""Known vulnerabilities of the locked dependencies: what ``make audit`` runs.

Usage::

    python tools/audit.py requirements.lock [--if-unreachable fail|fallback]

It runs pip-audit over the lock with PyPI's vulnerability service (``--no-deps
--disable-pip``: the pins as they are; ``--strict``: a pin that cannot be audited
fails), and fails on any known vulnerability but those in ``IGNORED``.

pip-audit reads PyPI's per-release JSON (``/pypi/<name>/<version>/json``); where that
cannot be reached it reports every pin as "not found" and "No known vulnerabilities",
so this script probes it first. Unreachable, the audit fails saying so, unless
``--if-unreachable fallback``: then it reads each project's JSON (``/pypi/<name>/json``)
instead, which lists the known vulnerabilities of the project's newest release only. A
pin that is the newest release is audited in full; for an older pin the vulnerabilities
still open in the newest release are reported (they most likely affect it too), and
the pin is named NOT AUDITED for the rest. CI's network reaches PyPI's project pages but
not the per-release ones, so ``.ci/run`` uses the fallback; it audits again in full by
itself once the service answers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PYPI = "https://pypi.org/pypi"
TIMEOUT = 15.0


@dataclass(frozen=True)
class Ignore:
    """A known vulnerability accepted for now."""

    id: str  # the advisory id or an alias (PYSEC-..., GHSA-..., CVE-...)
    reason: str  # why it does not apply, or why no fixed release can be taken yet
    added: str  # YYYY-MM-DD
    review_by: str  # YYYY-MM-DD: from then on it fails the audit again until reviewed


# Each entry: why, since when, until when. None is needed today (the audit of 2026-12-02
# found no known vulnerability in the lock). Example:
#   Ignore("GHSA-xxxx-xxxx-xxxx", "no fixed release; driftwarden never calls the affected "
#          "parser", added="2026-12-02", review_by="2027-03-01"),
IGNORED: tuple[Ignore, ...] = ()


def active_ignores(today: dt.date | None = None) -> dict[str, Ignore]:
    today = today or dt.date.today()
    active = {}
    for ignore in IGNORED:
        if dt.date.fromisoformat(ignore.review_by) < today:
            print(f"audit: the ignore of {ignore.id} (added {ignore.added}: {ignore.reason}) "
                  f"was due for review on {ignore.review_by}: it counts again")
        else:
            active[ignore.id] = ignore
    return active


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip()] = version.strip()
    if not pins:
        sys.exit(f"audit: {path} pins nothing")
    return pins


def get_json(url: str) -> tuple[int, Any]:
    """HTTP status and decoded body of ``url`` (status 0: no answer, body the reason)."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError) as exc:
        return 0, str(exc)


def probe(pins: dict[str, str]) -> str | None:
    """None when pip-audit's service answers for the first pin, else what happened."""
    name, version = next(iter(pins.items()))
    url = f"{PYPI}/{name}/{version}/json"
    status, body = get_json(url)
    if status == 200:
        return None
    return f"GET {url} -> " + (f"HTTP {status}" if status else f"no answer ({body})")


def run_pip_audit(lock: Path, ignores: dict[str, Ignore]) -> int:
    cmd = [sys.executable, "-m", "pip_audit", "-r", str(lock), "--no-deps", "--disable-pip",
           "--strict", "--vulnerability-service", "pypi", "--progress-spinner", "off",
           "--desc", "on", "--timeout", str(int(TIMEOUT))]
    for vuln_id in ignores:
        cmd += ["--ignore-vuln", vuln_id]
    print("audit:", " ".join(cmd[2:]), flush=True)
    return subprocess.run(cmd, check=False).returncode


def banner(*lines: str) -> None:
    bar = "!" * 88
    print(bar, *(f"!! {line}" for line in lines), bar, sep="\n", flush=True)


def fallback(pins: dict[str, str], ignores: dict[str, Ignore]) -> int:
    """Audit from the project pages (newest release's vulnerabilities); see the module."""
    def fetch(name: str) -> tuple[int, Any]:
        return get_json(f"{PYPI}/{name}/json")

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = dict(zip(pins, pool.map(fetch, pins), strict=True))
    findings, unaudited, audited = [], [], 0
    for name, version in pins.items():
        status, doc = answers[name]
        if status != 200 or not isinstance(doc, dict):
            unaudited.append(f"{name}=={version}: project page unavailable "
                             f"({'HTTP ' + str(status) if status else doc})")
            continue
        newest = doc["info"]["version"]
        reported: set[str] = set()  # one finding per advisory, whichever its id
        for vuln in doc.get("vulnerabilities") or []:
            ids = {vuln["id"], *(vuln.get("aliases") or [])}
            if vuln.get("withdrawn") or ids & (ignores.keys() | reported):
                continue
            reported |= ids
            fixed = ", ".join(vuln.get("fixed_in") or []) or "no fixed release"
            where = "" if newest == version else f" (open in the newest release {newest})"
            aliases = ", ".join(sorted(ids - {vuln["id"]}))
            findings.append(f"{name}=={version}: {vuln['id']} ({aliases}){where}; fixed in: "
                            f"{fixed}; {vuln.get('link', '')}\n    "
                            + (vuln.get("summary") or vuln.get("details") or "")[:300])
        if newest == version:
            audited += 1
        else:
            unaudited.append(f"{name}=={version}: newest release is {newest}")
    print(f"audit (fallback, from PyPI's project pages): {audited} of {len(pins)} pins "
          f"audited in full, {len(findings)} known vulnerabilit"
          f"{'y' if len(findings) == 1 else 'ies'}")
    for finding in findings:
        print("  VULNERABLE", finding)
    if unaudited:
        banner(f"AUDIT INCOMPLETE: {len(unaudited)} of {len(pins)} pins were NOT AUDITED.",
               "PyPI's per-release vulnerability service (what pip-audit reads) cannot be",
               "reached from here, and the project pages list the newest release only.",
               "Audit on a machine that reaches it (`make audit`), or upgrade these pins",
               "where pyproject.toml allows (`make lock UPGRADE=1`):",
               *(f"  {u}" for u in unaudited))
    return 1 if findings else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("--if-unreachable", choices=["fail", "fallback"], default="fail",
                        help="when PyPI's per-release vulnerability service does not "
                             "answer: fail (default), or audit from the project pages")
    args = parser.parse_args(argv)
    started = time.monotonic()
    pins = read_pins(args.lock)
    ignores = active_ignores()
    for ignore in ignores.values():
        print(f"audit: ignoring {ignore.id} until {ignore.review_by}: {ignore.reason}")
    problem = probe(pins)
    if problem is None:
        code = run_pip_audit(args.lock, ignores)
    elif args.if_unreachable == "fail":
        banner("AUDIT NOT RUN: PyPI's per-release vulnerability service does not answer",
               f"({problem}).", "Nothing was audited. Run it where pypi.org is reachable, or",
               "pass --if-unreachable fallback for the partial audit from the project pages.")
        return 2
    else:
        banner("pip-audit NOT RUN: PyPI's per-release vulnerability service does not answer",
               f"({problem});", "falling back to the project pages (a partial audit).")
        code = fallback(pins, ignores)
    print(f"audit: {'FAILED' if code else 'passed'} in {time.monotonic() - started:.1f} s")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
