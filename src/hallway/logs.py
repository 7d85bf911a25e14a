"""structlog, configured once: JSON lines off a terminal (journald), console on a terminal.

Stdlib loggers (bleak, zeroconf, dbus-fast) are routed through the same renderer. Tracebacks
are rendered without frame locals, which could hold keys.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from hallway.config import LoggingConfig

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(config: LoggingConfig, *, stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger (safe to call again)."""
    out = stream if stream is not None else sys.stderr
    fmt = config.format
    if fmt == "auto":
        fmt = "console" if hasattr(out, "isatty") and out.isatty() else "json"
    level = _LEVELS[config.level]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=hasattr(out, "isatty") and out.isatty(),
            exception_formatter=structlog.dev.plain_traceback,
        )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_hallway", False):
            root.removeHandler(old)
    handler._hallway = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party loggers stay at WARNING unless we debug; bleak's and dbus-fast's debug lines
    # print every device's address and payload, and aiosqlite's print statement parameters
    # (keys): those never go below INFO, whatever the level.
    for name in ("zeroconf", "asyncio"):
        logging.getLogger(name).setLevel(level if level <= logging.DEBUG else logging.WARNING)
    for name in ("bleak", "dbus_fast"):
        logging.getLogger(name).setLevel(max(level, logging.INFO))
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    # aiohttp (the web pages): no request lines at any level; request paths carry no secrets,
    # but nothing about who opened which page is kept either.
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


def get_logger(name: str) -> Any:
    """A bound structlog logger for a module."""
    return structlog.get_logger(name)


class FailureStreak:
    """A run of failures of one kind, logged without flooding: the first at WARNING, the rest
    at DEBUG with their number (``streak``). ``count`` is the length of the current streak;
    ``ended`` closes it and says how long it was (0: there was none), for a recovery line."""

    __slots__ = ("_log", "count")

    def __init__(self, logger: Any) -> None:
        self._log = logger
        self.count = 0

    def failed(self, event: str, **fields: Any) -> None:
        """One more failure: ``event`` with ``fields`` at WARNING if it is the first."""
        self.count += 1
        if self.count == 1:
            self._log.warning(event, **fields)
        else:
            self._log.debug(event, streak=self.count, **fields)

    def ended(self) -> int:
        """The streak is over (a success): its length, now reset to 0."""
        count, self.count = self.count, 0
        return count
