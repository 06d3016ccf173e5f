"""Keeping secrets out of logs and out of the texts driftwarden publishes.

A secret read from the environment (the Kafka SASL password, the Alertmanager
credentials) is registered with :func:`register` when it is read. From then on every log
record, of any logger (ours, faust's, aiokafka's), is created with the secret replaced by
``***``, and :func:`mask` does the same to a text that goes elsewhere (an event published
to Kafka).

The masking is done where records are made (a log record factory), not by a handler or a
filter: faust's worker replaces the logging handlers when it starts, and a filter on a
logger does not see what its children propagate.

aiokafka logs every request it sends at DEBUG, the SASL authentication bytes included
(with ``PLAIN``, the password in clear, cut after 100 bytes, so a long password would
leak its start even past the masking): such a request is logged as its name alone.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any
from urllib.parse import quote

MASK = "***"
# aiokafka's request structs (``SaslAuthenticateRequest_v0``, ``_v1``...) carrying the
# authentication bytes.
_SASL_REQUESTS = ("SaslAuthenticateRequest",)
_formatter = logging.Formatter()
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


def _spellings(secret: str) -> set[str]:
    """How ``secret`` can appear in a rendered message: as is, inside the repr of a str or
    of bytes (either quote style), in JSON, or percent-encoded in a URL."""
    forms = {secret, json.dumps(secret)[1:-1], quote(secret, safe="")}
    for single in (repr(secret + "'\"")[1:-4], repr(secret.encode() + b"'\"")[2:-4]):
        # A repr holding both quotes uses single ones and escapes them; one holding only
        # single quotes uses double ones and leaves them as they are.
        forms |= {single, single.replace("\\'", "'")}
    forms.discard("")
    return forms


def _is_sasl_request(arg: object) -> bool:
    return type(arg).__name__.startswith(_SASL_REQUESTS)


class Secrets:
    """The secrets to mask, and how to mask them in a text or a log record.

    >>> s = Secrets()
    >>> s.add("pa55'word")
    >>> s.mask("login with pa55'word failed"), s.mask(repr(b"me:pa55'word"))
    ('login with *** failed', 'b"me:***"')
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._forms: tuple[str, ...] = ()  # every spelling of every secret, longest first

    def add(self, secret: str) -> None:
        """Mask ``secret`` from now on (an empty one is ignored)."""
        if secret:
            with self._lock:
                self._forms = tuple(sorted(set(self._forms) | _spellings(secret), key=len,
                                           reverse=True))

    def __bool__(self) -> bool:
        return bool(self._forms)

    def mask(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def scrub(self, record: logging.LogRecord) -> None:
        """Mask the secrets in ``record`` (its message, exception and stack texts); a SASL
        authentication request among its arguments becomes its name."""
        args = record.args
        if isinstance(args, tuple) and any(_is_sasl_request(a) for a in args):
            record.args = tuple(f"{type(a).__name__}(<redacted>)" if _is_sasl_request(a)
                                else a for a in args)
        if not self._forms:
            return
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it, as without us
            return
        masked = self.mask(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and record.exc_info[1] is not None:
            text = _formatter.formatException(record.exc_info)
            masked = self.mask(text)
            if masked != text:
                record.exc_text = masked  # formatters print it rather than the exception
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)


SECRETS = Secrets()  # the process's secrets, masked in every log record
_installed = False
_install_lock = threading.Lock()


def register(secret: str | None) -> None:
    """Mask ``secret`` in every log record from now on, and in :func:`mask`.

    Installs the masking log record factory on first use. Empty values are ignored.
    """
    if not secret:
        return
    SECRETS.add(secret)
    _install()


def mask(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    return SECRETS.mask(text)


def env_name(name: str) -> str:
    """How an error names the environment variable ``name`` a setting gives: quoted when
    it looks like one (upper case, digits, ``_``), else not at all, since a setting meant
    to name the variable holding a secret sometimes holds the secret itself.

    >>> env_name("DW_KAFKA_PASSWORD")
    "'DW_KAFKA_PASSWORD'"
    >>> env_name("hunter2!")
    'a variable (not shown: not an upper-case name, it may be the secret itself)'
    """
    if _ENV_NAME.fullmatch(name):
        return repr(name)
    return "a variable (not shown: not an upper-case name, it may be the secret itself)"


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        make_record = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            SECRETS.scrub(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
