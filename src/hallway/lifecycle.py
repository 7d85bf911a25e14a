"""Bounded shutdown steps shared by the composition roots (the daemon and ``hallway venue``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from hallway.errors import HallwayError
from hallway.logs import get_logger

log = get_logger(__name__)

STEP_TIMEOUT_S = 5.0


class _Closable(Protocol):
    def close(self) -> Awaitable[Any]: ...


class _Accepting(Protocol):
    def stop_accepting(self) -> Awaitable[Any]: ...


async def bounded(step: Awaitable[Any], name: str) -> None:
    """Await one shutdown step for at most STEP_TIMEOUT_S; a timeout or failure is logged."""
    try:
        await asyncio.wait_for(step, timeout=STEP_TIMEOUT_S)
    except TimeoutError:
        log.warning("shutdown_step_timed_out", step=name, timeout_s=STEP_TIMEOUT_S)
    except (HallwayError, OSError) as exc:
        log.warning("shutdown_step_failed", step=name, error=str(exc))


async def close_edges(
    *,
    announcer: _Closable | None,
    server: _Closable | None,
    hub: _Closable | None,
    store: _Closable | None,
) -> None:
    """Close what was built, in reverse order of start-up: mDNS goodbye, sockets, hub, store."""
    for part, name in (
        (announcer, "mdns_goodbye"),
        (server, "close_server"),
        (hub, "close_hub"),
        (store, "close_store"),
    ):
        if part is not None:
            await bounded(part.close(), name)


async def stop_front(
    *,
    announcer: _Closable | None,
    server: _Accepting | None,
    tasks: Sequence[asyncio.Task[None]],
) -> None:
    """First half of an orderly stop: mDNS goodbye, stop accepting, end the long-lived loops."""
    if announcer is not None:
        await bounded(announcer.close(), "mdns_goodbye")
    if server is not None:
        await bounded(server.stop_accepting(), "stop_accepting")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
