"""Movement and radio: where a person is at a time, and what a scanner at the origin hears.

A visit is a piecewise-linear path (walking between waypoints, standing still at dwell spots)
between the person's entry into the venue and their exit; outside it they are out of radio
reach. The received power is the log-distance model with the device's true 1 m power,
log-normal shadowing split into a slow part (an Ornstein-Uhlenbeck process: bodies and the
person turning) and a fast per-packet part, occasional deep drops, collisions (a base packet
loss) and the receiver's sensitivity edge.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field

SCANNER_HEIGHT_M = 0.4  # height difference between a scanner on a table and a phone in a hand
SENSITIVITY_DBM = -100.0
SENSITIVITY_SOFT_DB = 6.0  # loss grows over this range above the sensitivity
OUTLIER_PROBABILITY = 0.03
SLOW_SHADOW_TAU_S = 6.0


@dataclass(frozen=True, slots=True)
class Radio:
    """A venue's radio conditions."""

    path_loss_exponent: float
    shadowing_db: float  # total σ of the shadowing, split into slow and fast parts
    packet_loss: float  # collisions and the like, independent of the signal level

    @property
    def slow_sigma_db(self) -> float:
        """σ of the slowly varying part (0.6 of the total, by variance 36 %)."""
        return 0.6 * self.shadowing_db

    @property
    def fast_sigma_db(self) -> float:
        """σ of the per-packet part (0.8 of the total, by variance 64 %)."""
        return 0.8 * self.shadowing_db


@dataclass(slots=True)
class Path:
    """Piecewise-linear motion: ``points[k] = (t, x, y)`` with increasing ``t``."""

    points: list[tuple[float, float, float]]
    _times: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._times = [p[0] for p in self.points]

    @property
    def start(self) -> float:
        """When the person enters the venue."""
        return self.points[0][0]

    @property
    def end(self) -> float:
        """When the person leaves the venue (out of reach from then on)."""
        return self.points[-1][0]

    def position(self, t: float) -> tuple[float, float]:
        """Where the person is at ``t`` (clamped to the path's ends)."""
        points = self.points
        if t <= points[0][0]:
            return points[0][1], points[0][2]
        if t >= points[-1][0]:
            return points[-1][1], points[-1][2]
        k = bisect.bisect_right(self._times, t)
        t0, x0, y0 = points[k - 1]
        t1, x1, y1 = points[k]
        f = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
        return x0 + f * (x1 - x0), y0 + f * (y1 - y0)

    def distance(self, t: float) -> float:
        """True distance (m) from the scanner at the origin at ``t``."""
        x, y = self.position(t)
        return math.sqrt(x * x + y * y + SCANNER_HEIGHT_M * SCANNER_HEIGHT_M)


class PathBuilder:
    """Builds a path step by step: walk to a point, stand for a while."""

    def __init__(self, t: float, x: float, y: float, *, speed_mps: float) -> None:
        self.points: list[tuple[float, float, float]] = [(t, x, y)]
        self.speed_mps = speed_mps

    @property
    def t(self) -> float:
        """The time at the end of the path so far."""
        return self.points[-1][0]

    @property
    def here(self) -> tuple[float, float]:
        """The position at the end of the path so far."""
        return self.points[-1][1], self.points[-1][2]

    def walk(self, x: float, y: float) -> PathBuilder:
        """Walk in a straight line to ``(x, y)``."""
        t, x0, y0 = self.points[-1]
        length = math.hypot(x - x0, y - y0)
        self.points.append((t + max(length / self.speed_mps, 0.1), x, y))
        return self

    def stand(self, seconds: float) -> PathBuilder:
        """Stay where the path is for ``seconds``."""
        t, x, y = self.points[-1]
        self.points.append((t + max(seconds, 0.1), x, y))
        return self

    def build(self) -> Path:
        """The finished path."""
        return Path(list(self.points))


class Shadowing:
    """Per-device received-power disturbance: slow OU part, fast part, deep drops."""

    __slots__ = ("_fast", "_rng", "_slow", "_t", "value")

    def __init__(self, radio: Radio, rng: random.Random) -> None:
        self._rng = rng
        self._slow = radio.slow_sigma_db
        self._fast = radio.fast_sigma_db
        self.value = rng.gauss(0.0, self._slow)
        self._t: float | None = None

    def sample(self, t: float) -> float:
        """The disturbance (dB) of a packet sent at ``t`` (times must not go backwards)."""
        rng = self._rng
        if self._t is not None:
            decay = math.exp(-(t - self._t) / SLOW_SHADOW_TAU_S)
            self.value = self.value * decay + self._slow * math.sqrt(
                max(0.0, 1.0 - decay * decay)
            ) * rng.gauss(0.0, 1.0)
        self._t = t
        noise = self.value + rng.gauss(0.0, self._fast)
        if rng.random() < OUTLIER_PROBABILITY:
            noise -= rng.uniform(8.0, 20.0)
        return noise


def received(
    rng: random.Random, *, power_1m_dbm: float, distance_m: float, exponent: float,
    disturbance_db: float, packet_loss: float,
) -> int | None:
    """The RSSI a scanner reports for one packet, or None when the packet is lost."""
    rssi = power_1m_dbm - 10.0 * exponent * math.log10(max(distance_m, 0.1)) + disturbance_db
    if rssi < SENSITIVITY_DBM:
        return None
    edge = (rssi - SENSITIVITY_DBM) / SENSITIVITY_SOFT_DB
    loss = packet_loss if edge >= 1.0 else 1.0 - (1.0 - packet_loss) * edge
    if rng.random() < loss:
        return None
    return max(-127, min(20, round(rssi)))
