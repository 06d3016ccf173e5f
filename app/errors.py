"""One root exception and the domain errors that carry their data."""

from __future__ import annotations


class DriftwardenError(Exception):
    """Root of every error driftwarden raises on purpose."""


class ConfigError(DriftwardenError):
    """A monitor file that does not load.

    The message names the file, the path inside it and what was expected.
    """

    def __init__(self, file: str, problems: list[tuple[str, str]]) -> None:
        self.file = file
        self.problems = problems
        lines = [f"{file}: {path or '<root>'}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


class StateError(DriftwardenError):
    """A serialised state that cannot be loaded (unknown version, wrong kind, corrupt)."""


#: What reading a malformed state raises: a key or an index missing, a value of the wrong
#: type, shape or range (``int(1e400)``, an int64 array of 10**30). State loaders turn
#: these into :class:`StateError`.
MALFORMED_STATE = (AttributeError, IndexError, KeyError, OverflowError, TypeError, ValueError)


class ReferenceDataError(DriftwardenError):
    """A reference that cannot be built or loaded."""


class BrokerError(DriftwardenError):
    """The embedded broker could not be started or did not answer."""
