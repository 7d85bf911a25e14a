"""What every advertisement source offers, and the bounded hand-off to the pipeline.

A source runs in the daemon's event loop and pushes ``Advertisement`` records into a
``Handoff`` with ``put_nowait``, which never blocks and never raises: when the pipeline falls
behind, the oldest queued advertisement is dropped and counted (a fresh sighting is worth more
than a stale one). The pipeline takes them out in batches with ``get_batch``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from enum import StrEnum
from typing import Protocol, runtime_checkable

from hallway.models import Advertisement


class SourceState(StrEnum):
    """Where a source's supervisor is."""

    STOPPED = "stopped"  # not running (before run(), after it ended or was cancelled)
    STARTING = "starting"  # trying to start scanning / open the input
    SCANNING = "scanning"  # delivering advertisements
    BACKOFF = "backoff"  # a start failed or the radio went away; waiting before trying again
    FAILED = "failed"  # cannot work with this configuration; waits to be cancelled


class Handoff:
    """Bounded FIFO from a source to the pipeline; full means the oldest entry is dropped."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._items: deque[Advertisement] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self._dropped = 0
        self._total = 0

    @property
    def maxsize(self) -> int:
        """How many advertisements fit before the oldest is dropped."""
        return self._maxsize

    def put_nowait(self, adv: Advertisement) -> None:
        """Queue one advertisement; never blocks; drops (and counts) the oldest when full."""
        items = self._items
        if len(items) >= self._maxsize:
            items.popleft()
            self._dropped += 1
        items.append(adv)
        self._total += 1
        if not self._ready.is_set():
            self._ready.set()

    async def get_batch(self, max_items: int = 512) -> list[Advertisement]:
        """Wait until at least one advertisement is queued; return up to ``max_items`` of them."""
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        items = self._items
        count = min(max_items, len(items))
        batch = [items.popleft() for _ in range(count)]
        if not items:
            self._ready.clear()
        return batch

    def stats(self) -> dict[str, int]:
        """``queued`` now, ``dropped`` and ``total`` (accepted by ``put_nowait``) since creation."""
        return {"queued": len(self._items), "dropped": self._dropped, "total": self._total}


@runtime_checkable
class AdvertisementSource(Protocol):
    """A supervised producer of advertisements (bleak, replay, simulator)."""

    name: str

    @property
    def state(self) -> SourceState:
        """The supervisor's current state."""
        ...

    @property
    def last_error(self) -> str | None:
        """The most recent failure, as text fit for a log or status page (no addresses)."""
        ...

    async def run(self, handoff: Handoff) -> None:
        """Deliver advertisements into ``handoff`` until cancelled; radio faults never raise."""
        ...

    def healthy(self, now: float) -> bool:
        """For the service watchdog; ``now`` is ``time.monotonic()``."""
        ...

    def stats(self) -> dict[str, int | float | str]:
        """Counters and the current status line, for logs and the status command."""
        ...
