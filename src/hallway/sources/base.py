"""What every advertisement source offers, and the bounded hand-off to the pipeline.

A source runs in the daemon's event loop and pushes ``Advertisement`` records into a
``Handoff`` with ``put_nowait``, which never blocks and never raises: when the pipeline falls
behind, the oldest queued advertisement is dropped and counted (a fresh sighting is worth more
than a stale one). The pipeline takes them out in batches: ``drain`` (the daemon's pump: a loop
callback per batch, no task wake-up) or ``get_batch``.

A hand-off may carry a ``screen`` (``Resolver.screen``): a source that can look at an
advertisement's raw fields first asks it, and for a stranger's advertisement only counts it
(in its ``stats()["screened"]``) instead of building and queueing a record the resolver would
drop. In a busy hall most advertisements are strangers', so this is most of the daemon's work
saved, and nothing about a stranger's device gets as far as a record.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable, Mapping, Sequence
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


Screen = Callable[[str, str, Mapping[int, bytes], Mapping[str, bytes], Sequence[str]], bool]
"""``(address, address_type, manufacturer_data, service_data, service_uuids) -> could be a
contact's`` (see ``Resolver.screen``)."""


class Handoff:
    """Bounded FIFO from a source to the pipeline; full means the oldest entry is dropped.

    One consumer at a time: a task awaiting ``get_batch``, or ``drain``, which calls a
    function from a loop callback as advertisements arrive (no task wake-up per batch).
    """

    def __init__(self, maxsize: int, *, screen: Screen | None = None,
                 heard: Callable[[float], None] | None = None) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.screen = screen  # None: every advertisement is queued
        # The time of an advertisement the screen ruled out (the receiver's listening pattern
        # is learned from everyone's arrival times; nothing else about a stranger goes on).
        self.heard = heard
        self._items: deque[Advertisement] = deque()
        self._maxsize = maxsize
        self._idle = False  # a consumer waits: the next put must call _wake
        self._wake: Callable[[], object] = _nothing
        self._consuming = False
        self._stop: asyncio.Future[None] | None = None
        self._dropped = 0
        self._total = 0

    @property
    def queued(self) -> int:
        """Advertisements waiting for the consumer now."""
        return len(self._items)

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
        if self._idle:
            self._idle = False
            self._wake()

    def _take(self, max_items: int) -> list[Advertisement]:
        items = self._items
        if len(items) <= max_items:
            batch = list(items)
            items.clear()
            return batch
        return [items.popleft() for _ in range(max_items)]

    def _claim(self) -> None:
        if self._consuming:
            raise RuntimeError("the hand-off already has a consumer")
        self._consuming = True

    def _release(self) -> None:
        self._consuming = False
        self._idle = False
        self._wake = _nothing

    async def get_batch(self, max_items: int = 512) -> list[Advertisement]:
        """Wait until at least one advertisement is queued; return up to ``max_items`` of them."""
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        if not self._items:
            self._claim()
            try:
                waiter = asyncio.get_running_loop().create_future()
                self._wake = functools.partial(_set_done, waiter)
                self._idle = True
                await waiter
            finally:
                self._release()
        return self._take(max_items)

    async def drain(self, consume: Callable[[list[Advertisement]], None], *,
                    max_items: int = 512) -> None:
        """Call ``consume`` with batches of up to ``max_items`` soon after they arrive.

        Runs until cancelled or ``stop_draining``; an exception from ``consume`` ends it with
        that exception (the batch it was given is gone). A batch is handled in a loop callback
        of its own; when more than ``max_items`` wait, the rest go in the next one.
        """
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self._claim()
        loop = asyncio.get_running_loop()
        stop = self._stop = loop.create_future()

        def run() -> None:
            if stop.done():
                return
            try:
                if batch := self._take(max_items):
                    consume(batch)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                stop.set_exception(exc)
                return
            if self._items:
                loop.call_soon(run)
            else:
                self._idle = True

        try:
            self._wake = functools.partial(loop.call_soon, run)
            if self._items:
                loop.call_soon(run)
            else:
                self._idle = True
            await stop
        finally:
            self._stop = None
            self._release()

    def stop_draining(self) -> None:
        """Make a running ``drain`` return; what is queued stays queued."""
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)

    def stats(self) -> dict[str, int]:
        """``queued`` now, ``dropped`` and ``total`` (accepted by ``put_nowait``) since creation."""
        return {"queued": len(self._items), "dropped": self._dropped, "total": self._total}


def _nothing() -> None:
    return None


def _set_done(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


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
