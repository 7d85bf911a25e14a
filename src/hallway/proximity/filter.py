"""Robust RSSI smoothing: an exponential average whose step is Huber-clipped.

Received power in dB is the path loss plus shadowing (roughly Gaussian in dB, σ 4-8 dB) plus
occasional deep drops when a body or a wall gets in the way. An exponential average with a time
constant (not a per-sample weight) gives the same lag at 10 advertisements a second as at one;
clipping each residual to a few times the running mean absolute residual bounds what a single
outlier can do without slowing the response to a real walk away. The first samples (and the
first after a long gap) are averaged with weights 1/n so the estimate settles quickly.
"""

from __future__ import annotations

import math

_INITIAL_SCALE_DB = 4.0
_SCALE_WEIGHT = 0.05


class RssiFilter:
    """Smoothed level (dB) of a noisy RSSI stream; ``update`` takes time-ordered samples."""

    __slots__ = (
        "_clip_k", "_clip_min_db", "_gap_s", "_tau_s", "count", "last_ts", "level", "scale"
    )

    def __init__(
        self,
        *,
        time_constant_s: float,
        clip_min_db: float = 6.0,
        clip_k: float = 2.0,
        gap_reset_s: float | None = None,
    ) -> None:
        self._tau_s = time_constant_s
        self._clip_min_db = clip_min_db
        self._clip_k = clip_k
        self._gap_s = 3.0 * time_constant_s if gap_reset_s is None else gap_reset_s
        self.level = 0.0
        self.scale = _INITIAL_SCALE_DB
        self.count = 0
        self.last_ts = -math.inf

    def update(self, ts: float, value: float) -> float:
        """Add one sample taken at ``ts``; return the new level."""
        count = self.count
        if count == 0:
            self.level = value
            self.count = 1
            self.last_ts = ts
            return value
        dt = ts - self.last_ts
        if dt > self._gap_s:
            # After a long silence the old level is stale: let the next few samples outvote it.
            count = 1
        weight = 1.0 - math.exp(-dt / self._tau_s) if dt > 0.0 else 0.0
        warm = 1.0 / (count + 1)
        weight = max(weight, warm)
        residual = value - self.level
        limit = self._clip_k * self.scale
        limit = max(limit, self._clip_min_db)
        if residual > limit:
            residual = limit
        elif residual < -limit:
            residual = -limit
        self.level += weight * residual
        self.scale += _SCALE_WEIGHT * (abs(residual) - self.scale)
        self.count = count + 1
        self.last_ts = max(self.last_ts, ts)
        return self.level
