"""Robust RSSI smoothing on two time scales, with a detector of movement between them.

Received power in dB is the path loss plus shadowing (roughly Gaussian in dB, σ 4-8 dB, part
of it slowly varying as bodies move) plus occasional deep drops. Two questions need different
answers: "has this person just walked off?" wants a short memory, "is this seated person at
11 m or at 13 m?" wants the longest memory the person's stillness allows.

So the filter keeps two exponential averages of the same samples: ``fast`` (seconds) and
``level`` (up to a minute or more). Both weigh samples by time, not by count, so a phone sending
ten advertisements a second and one sending one get the same lag, and both start (and restart)
as plain running means (weights 1/n) so they settle quickly; past that no one sample weighs
more than half, however long after the previous one it came. Each residual is clipped to a few
times the running mean absolute residual, which bounds what one deep drop can do.

Between them sits a CUSUM change detector: while ``fast`` keeps away from ``level`` by more
than ``motion_db`` the excess (dB·s) adds up, and past ``evidence_db_s`` the device is deemed to
have moved: ``level`` restarts from ``fast``. A still device thus gets a long average; a moving
one a short one. After a silence only ``fast`` restarts: someone who paused on a seat is
usually still on it, and if not, the detector notices within seconds.

Every estimate is a convex combination of samples, so a device whose samples stay within a band
keeps both estimates within it.
"""

from __future__ import annotations

import math

_INITIAL_SCALE_DB = 4.0
_SCALE_WEIGHT = 0.05
_MAX_WEIGHT = 0.5
_RESTART_COUNT = 2  # after a detected move, `level` restarts as if it had seen this many samples


class LevelFilter:
    """Smoothed RSSI level (dB) on a short and a long time scale; time-ordered samples."""

    __slots__ = (
        "_clip_k",
        "_clip_min_db",
        "_evidence",
        "_fast_count",
        "_gap_s",
        "_motion_db",
        "_slow_count",
        "_tau_fast",
        "_tau_slow",
        "down",
        "estimate",
        "fast",
        "last_fall_ts",
        "last_move_ts",
        "last_ts",
        "level",
        "moves",
        "scale",
        "up",
    )

    def __init__(
        self,
        *,
        fast_time_constant_s: float,
        slow_time_constant_s: float,
        motion_db: float,
        evidence_db_s: float,
        clip_min_db: float = 6.0,
        clip_k: float = 2.0,
        gap_reset_s: float | None = None,
    ) -> None:
        self._tau_fast = fast_time_constant_s
        self._tau_slow = max(slow_time_constant_s, fast_time_constant_s)
        self._motion_db = motion_db
        self._evidence = evidence_db_s
        self._clip_min_db = clip_min_db
        self._clip_k = clip_k
        self._gap_s = 3.0 * fast_time_constant_s if gap_reset_s is None else gap_reset_s
        self.fast = 0.0
        self.level = 0.0
        self.estimate = 0.0
        self.scale = _INITIAL_SCALE_DB
        self._fast_count = 0
        self._slow_count = 0
        self.up = 0.0  # CUSUM of fast rising above level
        self.down = 0.0  # CUSUM of fast falling below level
        self.moves = 0
        self.last_move_ts = -math.inf
        self.last_fall_ts = -math.inf  # the last detected move away (level falling)
        self.last_ts = -math.inf

    @property
    def count(self) -> int:
        """Samples behind ``level`` since it last (re)started."""
        return self._slow_count

    def shift(self, delta: float) -> None:
        """Move every estimate by ``delta`` dB (the samples' reference changed, not the device)."""
        self.fast += delta
        self.level += delta
        self.estimate += delta

    def update(self, ts: float, value: float) -> float:
        """Add one sample taken at ``ts``; return ``estimate``: the long-memory ``level``,
        leaning towards ``fast`` as far as the evidence of a move goes."""
        if self._fast_count == 0:
            self.fast = self.level = self.estimate = value
            self._fast_count = self._slow_count = 1
            self.last_ts = self.last_move_ts = ts
            return value
        dt = ts - self.last_ts
        dt = max(dt, 0.0)
        fast_count = self._fast_count
        if dt > self._gap_s:
            fast_count = 1
        limit = self._clip_k * self.scale
        limit = max(limit, self._clip_min_db)

        weight = 1.0 - math.exp(-dt / self._tau_fast)
        # No single sample past the first ones weighs more than half: where samples are rare
        # (a receiver listening in windows) time alone would let each one set the estimate.
        weight = min(weight, _MAX_WEIGHT)
        weight = max(weight, 1.0 / (fast_count + 1))
        residual = value - self.fast
        if residual > limit:
            residual = limit
        elif residual < -limit:
            residual = -limit
        self.fast += weight * residual
        self.scale += _SCALE_WEIGHT * (abs(residual) - self.scale)
        self._fast_count = fast_count + 1

        slow_count = self._slow_count
        weight = 1.0 - math.exp(-dt / self._tau_slow)
        weight = max(weight, 1.0 / (slow_count + 1))
        residual = value - self.level
        if residual > limit:
            residual = limit
        elif residual < -limit:
            residual = -limit
        self.level += weight * residual
        self._slow_count = slow_count + 1

        # Movement: CUSUM of the gap between the two averages beyond the allowance.
        gap = self.fast - self.level
        step = dt if dt < self._gap_s else self._gap_s
        up = self.up + (gap - self._motion_db) * step
        down = self.down + (-gap - self._motion_db) * step
        self.up = up if up > 0.0 else 0.0
        self.down = down if down > 0.0 else 0.0
        if self.up > self._evidence or self.down > self._evidence:
            if self.down > self._evidence:
                self.last_fall_ts = ts
            self.level = self.fast
            self._slow_count = _RESTART_COUNT
            self.up = self.down = 0.0
            self.moves += 1
            self.last_move_ts = ts
        self.last_ts = max(self.last_ts, ts)
        # While evidence of a move builds up, lean from the long average towards the fast one.
        lean = max(self.up, self.down) / self._evidence
        self.estimate = self.level + lean * (self.fast - self.level)
        return self.estimate
