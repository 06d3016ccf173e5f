"""Posting alerts to Alertmanager's API v2: the Alertmanager bridge's HTTP sender.

An Alertmanager behind authentication gets its credentials from the environment, never
from the command line (process listings) or the URL (logs): ``--auth-env NAME`` names a
variable holding the whole ``Authorization`` header value, ``Bearer <token>`` or
``Basic <base64 of user:password>``. The value is registered with :mod:`app.redact`, so
no log record shows it; it is sent to the configured URL only: redirects are not
followed (urllib would turn the POST into a GET, losing the alerts while answering
200, and carry the header to wherever the redirect points).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from app import redact
from app.errors import DriftwardenError

log = logging.getLogger(__name__)

ALERTS_PATH = "/api/v2/alerts"
RETRYABLE_STATUS = frozenset({408, 425, 429})
_LOOPBACK = ("localhost", "127.0.0.1", "::1")

Alert = dict[str, Any]
Sender = Callable[[list[Alert]], Awaitable[None]]


class AlertmanagerRejected(Exception):
    """Alertmanager refused the alerts (HTTP 4xx): sending them again will not help."""


def display_url(url: str) -> str:
    """``url`` as logged: without user info, query or fragment.

    >>> display_url("https://am.example:9093/base?token=x")
    'https://am.example:9093/base'
    """
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def check_url(url: str) -> None:
    """Refuse what is not an http(s) URL, or carries credentials.

    >>> check_url("http://alertmanager:9093")
    >>> check_url("http://bridge:s3cret@alertmanager:9093")
    Traceback (most recent call last):
    ...
    app.errors.DriftwardenError: --url http://alertmanager:9093 must not carry credentials...
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DriftwardenError(f"--url must be an http(s) URL, got {display_url(url)!r}")
    if "@" in parts.netloc:
        raise DriftwardenError(
            f"--url {display_url(url)} must not carry credentials (they would show in "
            "process listings and logs): put the Authorization header value ('Basic ...' "
            "or 'Bearer ...') in an environment variable and name it with --auth-env")


def authorization_from_env(name: str, env: Mapping[str, str] | None = None) -> str:
    """The ``Authorization`` header value held by the environment variable ``name``.

    Raises ``DriftwardenError`` naming the variable (never a value) when it is not set
    or is empty.
    """
    value = (os.environ if env is None else env).get(name)
    if value is None:
        raise DriftwardenError(f"--auth-env names {redact.env_name(name)}, which is not set "
                               "in the environment")
    value = value.strip()
    if not value:
        raise DriftwardenError(f"--auth-env names {redact.env_name(name)}, which is set but "
                               "empty")
    redact.register(value)
    scheme, _, credentials = value.partition(" ")
    redact.register(credentials.strip())  # as it would be printed on its own
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError):
            redact.register(base64.b64decode(credentials, validate=True).decode()
                            .partition(":")[2])  # the password
    return value


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx code


def http_sender(url: str, *, timeout: float = 10.0,
                authorization: str | None = None) -> Sender:
    """A ``Sender`` posting to ``{url}/api/v2/alerts`` with urllib in a worker thread.

    Raises ``AlertmanagerRejected`` on a 4xx answer (but 408, 425 and 429), another
    exception on a connection failure, a redirect or a 5xx answer (sent again later).
    ``authorization`` is the ``Authorization`` header value, if any.
    """
    check_url(url)
    endpoint = url.rstrip("/") + ALERTS_PATH
    opener = urllib.request.build_opener(_NoRedirect)
    if authorization is not None and urlsplit(url).scheme == "http" \
            and urlsplit(url).hostname not in _LOOPBACK:
        log.warning("sending the Alertmanager credentials over plain HTTP to %s: use https",
                    display_url(url))

    def post(alerts: list[Alert]) -> None:
        request = urllib.request.Request(
            endpoint, data=json.dumps(alerts).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        if authorization is not None:
            request.add_unredirected_header("Authorization", authorization)
        try:
            with opener.open(request, timeout=timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            body = redact.mask(exc.read().decode(errors="replace")[:500])
            if 300 <= exc.code < 400:
                where = display_url(exc.headers.get("Location") or "?")
                raise OSError(f"HTTP {exc.code}: redirected to {where}, not followed: "
                              "--url must name Alertmanager itself") from None
            if 400 <= exc.code < 500 and exc.code not in RETRYABLE_STATUS:
                raise AlertmanagerRejected(f"HTTP {exc.code}: {body}") from None
            raise OSError(f"HTTP {exc.code}: {body}") from None

    async def send(alerts: list[Alert]) -> None:
        await asyncio.to_thread(post, alerts)

    return send
