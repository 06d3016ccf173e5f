"""Write or check ``requirements.lock``: the exact versions of driftwarden's dependency
closure as installed in this virtualenv.

Usage::

    python tools/lock.py > requirements.lock          # what `make lock` runs
    python tools/lock.py --check requirements.lock    # `make audit` (CI) runs it first

The closure is walked from driftwarden's own requirements (the runtime ones, then the
``dev`` extra) through each installed distribution's requirements whose environment
markers hold here, so packages installed by hand are left out. Every install uses the
file as constraints (``pip install -c requirements.lock``: the Makefile, the
Dockerfile), so what CI tests and the image runs is what ``make audit`` audited.
``--check`` fails when the installed closure and the file differ (a dependency added to
pyproject.toml without ``make lock``: it would be installed unpinned and unaudited).
"""

from __future__ import annotations

import argparse
import platform
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = "driftwarden"
EXTRA = "dev"


def closure(extras: frozenset[str] = frozenset()) -> dict[str, str]:
    """Canonical name -> installed version of everything ``driftwarden[extras]`` needs."""
    found: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(ROOT, extras)]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        key = (canonicalize_name(name), wanted)
        if key in done:
            continue
        done.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"lock: {name} is required but not installed here: "
                     "run `make .venv/.installed-dev` (or `make lock`) first")
        if key[0] != ROOT:
            found[key[0]] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e})
                                         for e in wanted | {""}):
                todo.append((req.name, frozenset(req.extras)))
    return found


def render() -> str:
    runtime = closure()
    dev = {k: v for k, v in closure(frozenset({EXTRA})).items() if k not in runtime}
    where = (f"{platform.python_implementation()} {sys.version_info.major}."
             f"{sys.version_info.minor} on {platform.system()} {platform.machine()}")
    lines = [
        "# Exact versions of driftwarden's dependency closure, for " + where + ".",
        "# Generated from the working virtualenv by `make lock` (python tools/lock.py);",
        "# do not edit. Every install uses it as constraints (pip install -c ...);",
        "# `make audit` checks it matches what is installed and audits it.",
        "#",
        "# runtime: pip install .",
        *(f"{name}=={runtime[name]}" for name in sorted(runtime)),
        "#",
        f"# development only: pip install -e '.[{EXTRA}]'",
        *(f"{name}=={dev[name]}" for name in sorted(dev)),
    ]
    return "\n".join(lines) + "\n"


def pins(text: str) -> dict[str, str]:
    """The ``name==version`` lines of a lock file (comments ignored)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            if not sep:
                sys.exit(f"lock: not an exact pin: {line!r}")
            out[canonicalize_name(name)] = version.strip()
    return out


def check(path: Path) -> int:
    locked, installed = pins(path.read_text()), pins(render())
    problems = [f"  {n}: installed {installed[n]}, not in the lock"
                for n in sorted(installed.keys() - locked.keys())]
    problems += [f"  {n}: locked {locked[n]}, no longer needed"
                 for n in sorted(locked.keys() - installed.keys())]
    problems += [f"  {n}: locked {locked[n]}, installed {installed[n]}"
                 for n in sorted(locked.keys() & installed.keys())
                 if locked[n] != installed[n]]
    if problems:
        print(f"{path} does not match the installed dependencies (run `make lock` and "
              "commit the file):", *problems, sep="\n", file=sys.stderr)
        return 1
    print(f"{path}: {len(locked)} pins, the installed closure")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", metavar="LOCK", type=Path,
                        help="compare LOCK with the installed closure instead of printing")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.check)
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
