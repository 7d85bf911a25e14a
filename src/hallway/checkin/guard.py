"""Admission of GATT writes from centrals (phones, or anyone): pure, every call takes ``now``.

A central is known by the object path BlueZ gives it. At most ``max_centrals`` are known at
once. When the table is full, a new central takes the slot of the longest-done central that
already checked in (it has had its answer; it is to be disconnected); only when every slot
is held by a central that has not checked in yet is the newcomer refused (``too_many``) and
to be disconnected.
Each known central has a token bucket of ``writes_per_s`` (burst ``max(2, 2·rate)``): a write
beyond it is refused (``rate_limited``), and a central that keeps writing into an empty bucket
(``FLOOD_STRIKES`` refusals in a row) is to be disconnected. A central is to be disconnected
(and forgotten) ``LINGER_S`` after a valid check-in (a phone writes and goes; its slot is free
for the next) or ``idle_s`` after its first write without one (an attacker who holds a
connection open loses it). The table is a dict with at most ``max_centrals`` entries, so a
flood costs no memory. The budgets of the last ``REMEMBERED`` centrals that left are kept
for ``idle_s``, so a central cannot refill its budget by reconnecting.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import StrEnum

FLOOD_STRIKES = 20
"""Refused writes in a row (rate) after which the central is disconnected."""
REMEMBERED = 256
"""Centrals whose budget is remembered after they leave the table."""
LINGER_S = 2.0
"""How long a central that checked in may stay connected (its reply must get out first)."""


class Verdict(StrEnum):
    """What to do with one write; the value names the ``status`` counter of a refusal."""

    ADMIT = "admitted"
    TOO_MANY = "too_many_centrals"
    RATE_LIMITED = "rate_limited"


class _Central:
    __slots__ = ("deadline", "done", "strikes", "tokens", "tokens_ts")

    def __init__(self, now: float, tokens: float, deadline: float) -> None:
        self.deadline = deadline
        self.done = False  # checked in: its slot may be reclaimed
        self.tokens = tokens
        self.tokens_ts = now
        self.strikes = 0


class CentralGuard:
    """The table of known centrals and their budgets (see the module docstring)."""

    def __init__(self, *, max_centrals: int, writes_per_s: float, idle_s: float) -> None:
        if max_centrals < 1 or writes_per_s <= 0 or idle_s <= 0:
            raise ValueError("max_centrals, writes_per_s and idle_s must be positive")
        self._max = max_centrals
        self._rate = writes_per_s
        self._burst = max(2.0, 2.0 * writes_per_s)
        self._idle_s = idle_s
        self._centrals: dict[str, _Central] = {}
        self._left: OrderedDict[str, tuple[float, float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._centrals)

    def admit(self, central: str, now: float) -> tuple[Verdict, str | None]:
        """May ``central`` write now (spending one token if so), and the central evicted to
        make room for it, if any (to be disconnected)."""
        evicted = None
        entry = self._centrals.get(central)
        if entry is None:
            if len(self._centrals) >= self._max:
                done = [(e.deadline, c) for c, e in self._centrals.items() if e.done]
                if not done:
                    return Verdict.TOO_MANY, None
                evicted = min(done)[1]
                self.forget(evicted, now=now)
            entry = self._centrals[central] = _Central(now, self._burst, now + self._idle_s)
            left = self._left.pop(central, None)
            if left is not None and now - left[2] < self._idle_s:
                entry.tokens, entry.tokens_ts, _ = left
        elapsed = max(0.0, now - entry.tokens_ts)
        entry.tokens = min(self._burst, entry.tokens + elapsed * self._rate)
        entry.tokens_ts = now
        if entry.tokens < 1.0:
            entry.strikes += 1
            return Verdict.RATE_LIMITED, evicted
        entry.tokens -= 1.0
        entry.strikes = 0
        return Verdict.ADMIT, evicted

    def flooding(self, central: str) -> bool:
        """True once ``central`` kept writing into an empty bucket: disconnect it."""
        entry = self._centrals.get(central)
        return entry is not None and entry.strikes >= FLOOD_STRIKES

    def checked_in(self, central: str, now: float) -> None:
        """``central`` made a valid check-in at ``now``: it may stay ``LINGER_S`` more."""
        entry = self._centrals.get(central)
        if entry is not None:
            entry.deadline = now + LINGER_S
            entry.done = True

    def idle(self, now: float) -> list[str]:
        """Centrals past their time (see the module docstring): forgotten here, to be
        disconnected."""
        gone = [c for c, e in self._centrals.items() if e.deadline <= now]
        for central in gone:
            self.forget(central, now=now)
        return gone

    def forget(self, central: str, *, now: float) -> None:
        """``central`` disconnected (or was disconnected): its slot is free; its budget is
        remembered a while."""
        entry = self._centrals.pop(central, None)
        if entry is None:
            return
        self._left[central] = (entry.tokens, entry.tokens_ts, now)
        self._left.move_to_end(central)
        while len(self._left) > REMEMBERED:
            self._left.popitem(last=False)
