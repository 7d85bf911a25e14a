"""hallway's exception tree; library exceptions are translated into these where they enter.

    HallwayError
    ├── ConfigError          a config file is missing or invalid (exit 78, EX_CONFIG)
    ├── StoreError           the database cannot be opened, migrated or written
    │   └── ImportRejected   an import file had bad lines; nothing was stored
    ├── ContactNotFound      no contact with that id
    ├── KeyFormatError       a key's text is not a valid key of its kind (never echoes the key)
    ├── NetworkFileError     a network export cannot be read (never quotes its content)
    ├── SourceError          an advertisement source failed (radio, trace file, simulator)
    ├── BrokerError          the MQTT broker cannot be reached, refused us, or dropped us
    └── ProtocolError        a socket peer sent something the protocol does not allow
"""

from __future__ import annotations

from dataclasses import dataclass


class HallwayError(Exception):
    """Root of every error hallway raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem found in a file: where it is and why it is wrong."""

    file: str
    key: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.reason}"


class ConfigError(HallwayError):
    """A config file is missing or invalid; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StoreError(HallwayError):
    """The database cannot be opened, migrated or written."""


class ImportRejected(StoreError):
    """An import file had bad lines; nothing from it was stored."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ContactNotFound(HallwayError):
    """No contact with that id."""


class KeyFormatError(HallwayError, ValueError):
    """A key's text is not a valid key of its kind. The message never contains the key."""


class NetworkFileError(HallwayError, ValueError):
    """A network export (LinkedIn, X, vCard, CSV) cannot be read. The message names the
    place and the reason, never the file's content."""


class SourceError(HallwayError):
    """An advertisement source failed."""


class BrokerError(HallwayError):
    """The MQTT broker cannot be reached, refused the connection, or dropped it."""


class ProtocolError(HallwayError):
    """A socket peer broke the protocol; ``code`` is the SPEC §6 error code to send."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)
