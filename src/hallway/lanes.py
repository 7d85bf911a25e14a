"""The IRK trial lane: advertisements that may cost a trial against every IRK wait their turn.

Trying a new resolvable private address costs one AES block per enrolled IRK (with 30,000 IRKs,
10-40 ms of the loop on a busy small computer), and the trial budget (``irk_trials_per_s``)
grants about ten a second. Done inline by the pump, a trial holds the loop while advertisements
already stamped wait in the same batch, and the events they cause wait behind it; in a flood
several trials land in one batch. So the pump sends an advertisement from a resolvable private
address that is not known to resolve (``wants``) to this lane instead of feeding it, and feeds
every other advertisement at once. The lane is fed in slices of its own, in arrival order
(so one address's advertisements stay in order), each only when nothing else waits: the
hand-off is empty and the hub has delivered every event published so far (``busy`` false), or
when it has waited ``max_wait_s`` (so it is never starved). A slice ends after ``slice_s`` of
work, after a trial (an advertisement that took longer than ``_TRIAL_S``), or as soon as it
caused an event, which is published at once: subscriber delivery goes before the next trial.

Addresses the pipeline resolved by IRK are remembered (``_HINTS_MAX`` of them, oldest
forgotten first) and go straight through afterwards, so a contact's phone is not held behind
strangers' trials; ``forget_hints`` clears them when contacts change (an address of a removed
contact would otherwise cost its next trial inline: a cost, never a wrong answer). The lane is
bounded (``max_items``): past it the oldest waiting advertisement is shed and counted; it is a
stranger's as likely as not, and the hand-off's drops stay for what the pump cannot take.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from hallway.models import Advertisement, KeyKind, PresenceEvent

_RPA_FIRST = frozenset("4567")  # first hex digit of a resolvable private address
_TRIAL_S = 0.001  # one advertisement that took this long was (most likely) an IRK trial
_HINTS_MAX = 4096
_RETRY_S = 0.001  # while busy, look again this soon


class TrialLane:
    """Advertisements that may need an IRK trial, fed when the loop has nothing better to do."""

    def __init__(self, feed: Callable[[Advertisement], list[PresenceEvent]],
                 matched_via: Callable[[], KeyKind | None],
                 publish: Callable[[list[PresenceEvent]], None], *,
                 busy: Callable[[], bool], slice_s: float = 0.002, max_wait_s: float = 0.1,
                 max_items: int = 16_384) -> None:
        self._feed = feed
        self._matched_via = matched_via
        self._publish = publish
        self._busy = busy
        self._slice_s = slice_s
        self._max_wait_s = max_wait_s
        self._max_items = max_items
        self._items: deque[Advertisement] = deque()
        self._hints: dict[str, None] = {}  # addresses resolved by IRK, oldest first
        self._handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._waiting_since: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.fed = 0
        self.shed = 0
        self.slices = 0
        self.forced = 0  # slices run while busy, after max_wait_s
        self.longest_wait_s = 0.0

    def wants(self, adv: Advertisement) -> bool:
        """True for a resolvable private address not known to resolve: it may cost a trial."""
        address = adv.address
        return (adv.address_type == "random" and address[:1] in _RPA_FIRST
                and address not in self._hints)

    def put(self, adv: Advertisement) -> None:
        """Queue one advertisement (call from the loop); sheds the oldest when full."""
        items = self._items
        if len(items) >= self._max_items:
            items.popleft()
            self.shed += 1
        items.append(adv)
        if self._handle is None:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._waiting_since = time.monotonic()
            self._handle = self._loop.call_soon(self._run)

    def forget_hints(self) -> None:
        """Contacts changed: addresses that resolved may no longer (see the module docstring)."""
        self._hints.clear()

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        """Stop scheduling slices; what waits is dropped (the daemon is stopping)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._items.clear()

    def stats(self) -> dict[str, int | float]:
        """Counters for ``status``."""
        return {"queued": len(self._items), "fed": self.fed, "shed": self.shed,
                "slices": self.slices, "forced": self.forced,
                "longest_wait_ms": round(self.longest_wait_s * 1000, 1)}

    def _run(self) -> None:
        self._handle = None
        loop = self._loop
        assert loop is not None
        now = time.monotonic()
        waited = now - (self._waiting_since or now)
        if self._busy():
            if waited < self._max_wait_s:
                self._handle = loop.call_later(_RETRY_S, self._run)
                return
            self.forced += 1
        self.longest_wait_s = max(self.longest_wait_s, waited)
        self.slices += 1
        items, feed, via, hints = self._items, self._feed, self._matched_via, self._hints
        clock = time.perf_counter
        start = clock()
        deadline = start + self._slice_s
        events: list[PresenceEvent] = []
        while items:
            adv = items.popleft()
            before = clock()
            found = feed(adv)
            self.fed += 1
            if via() is KeyKind.IRK:
                hints[adv.address] = None
                if len(hints) > _HINTS_MAX:
                    del hints[next(iter(hints))]
            if found:
                events.extend(found)
                break
            after = clock()
            if after - before > _TRIAL_S or after > deadline:
                break
        if events:
            self._publish(events)
        if items:
            self._waiting_since = time.monotonic()
            self._handle = loop.call_soon(self._run)
