"""Playing a time-ordered stream of advertisements in real time (shared by replay and simulator).

Record ``k`` is handed over when the monotonic clock reaches ``t0 + (ts_k - ts_0) / speed``,
where ``t0`` is when playing began and ``ts_0`` the stream's start time. Records whose moment
has passed (a slow consumer, an out-of-order trace) are handed over at once and counted late.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from hallway.errors import SourceError
from hallway.logs import get_logger
from hallway.models import Advertisement
from hallway.sources.base import Handoff, SourceState

_LATE_S = 1.0  # a record handed over more than this after its moment counts as late
_YIELD_EVERY = 1024  # hand the loop back at least this often while catching up

log = get_logger(__name__)

Records = Iterable[Advertisement] | AsyncIterator[Advertisement]


async def _as_async(records: Records) -> AsyncIterator[Advertisement]:
    if isinstance(records, AsyncIterator):
        async for adv in records:
            yield adv
    else:
        for adv in records:
            yield adv


class PacedSource:
    """Supervisor shared by sources that play records in real time; subclasses open the stream."""

    def __init__(self, name: str, *, speed: float = 1.0, shift_ts: bool = False,
                 wall_clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if not speed > 0:
            raise ValueError("speed must be positive")
        self.name = name
        self._speed = speed
        self._shift_ts = shift_ts
        self._wall = wall_clock
        self._mono = monotonic
        self._state = SourceState.STOPPED
        self._last_error: str | None = None
        self._delivered = 0
        self._late = 0
        self._status = "stopped"

    # -- for subclasses -------------------------------------------------------------------
    def _open(self, start_ts: float) -> tuple[float | None, Records]:
        """Return ``(ts_0 or None for the first record's ts, records)``; raise SourceError."""
        raise NotImplementedError

    def _extra_stats(self) -> dict[str, int | float | str]:
        return {}

    # -- AdvertisementSource --------------------------------------------------------------
    @property
    def state(self) -> SourceState:
        """The supervisor's current state."""
        return self._state

    @property
    def last_error(self) -> str | None:
        """Why the source failed, if it did."""
        return self._last_error

    def healthy(self, now: float) -> bool:
        """Healthy unless the stream could not be opened."""
        del now
        return self._state is not SourceState.FAILED

    def stats(self) -> dict[str, int | float | str]:
        """Delivered and late counts, and the status line."""
        return {"state": self._state.value, "status": self._status,
                "delivered": self._delivered, "late": self._late, **self._extra_stats()}

    def _set_state(self, state: SourceState, status: str, **fields: Any) -> None:
        self._state = state
        self._status = status
        level = log.warning if state is SourceState.FAILED else log.info
        level("source_state", source=self.name, state=state.value, status=status, **fields)

    async def run(self, handoff: Handoff) -> None:
        """Play the stream into ``handoff``; returns when a finite stream ends."""
        self._set_state(SourceState.STARTING, "opening")
        start_wall = self._wall()
        try:
            ts0, records = self._open(start_wall)
        except SourceError as exc:
            self._last_error = str(exc)
            self._set_state(SourceState.FAILED, f"failed: {exc}")
            await asyncio.Event().wait()  # stay FAILED until cancelled
            return
        self._set_state(SourceState.SCANNING, "playing")
        t0 = self._mono()
        speed = self._speed
        since_yield = 0
        ended = False
        try:
            async for record in _as_async(records):
                if ts0 is None:
                    ts0 = record.ts
                offset = (record.ts - ts0) / speed
                wait = t0 + offset - self._mono()
                if wait > 0.001:
                    await asyncio.sleep(wait)
                    since_yield = 0
                elif wait < -_LATE_S:
                    self._late += 1
                adv = record
                if self._shift_ts:
                    adv = record._replace(ts=start_wall + offset)
                handoff.put_nowait(adv)
                self._delivered += 1
                since_yield += 1
                if since_yield >= _YIELD_EVERY:
                    since_yield = 0
                    await asyncio.sleep(0)
            ended = True
        finally:
            self._set_state(SourceState.STOPPED, "finished" if ended else "stopped",
                            delivered=self._delivered)
