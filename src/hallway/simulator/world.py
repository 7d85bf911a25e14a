"""Movement and radio: where a person is at a time, and what a scanner at the origin hears.

A visit is a piecewise-linear path (walking between waypoints, standing still at dwell spots)
between the person's entry into the venue and their exit; outside it they are out of radio
reach. The received power is the log-distance model with the device's true 1 m power,
log-normal shadowing split into a slow part (an Ornstein-Uhlenbeck process: bodies and the
person turning) and a fast per-packet part, occasional deep drops, collisions (a base packet
loss) and the receiver's sensitivity edge.

Harder radios (``Receiver``, ``Fading``, ``Air``) are what real receivers add on top: a scanner
that listens only in windows (duty cycle), Wi-Fi sharing the antenna (bursts of lost packets),
collisions that grow with the crowd on the channel (the stronger packet may still be captured),
a per-receiver gain offset, and multipath fading that swings the level by tens of dB within a
few centimetres. A scenario without them gets the plain radio above, draw for draw.
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


@dataclass(frozen=True, slots=True)
class Receiver:
    """What the scanner itself does to reception (the defaults: an ideal, always-on receiver).

    - ``duty_cycle`` of ``scan_period_s``: it listens in a window at the start of each period
      (Android's low-power scans, a host that shares the radio); packets outside are lost.
    - ``wifi_loss``: share of ``wifi_slot_s`` slots in which Wi-Fi holds the shared antenna
      (a Raspberry Pi's combo chip); packets in them are lost.
    - ``collisions``: packets collide with the crowd's (airtime ``AIRTIME_S`` on one of three
      channels); a colliding packet survives if it is ``capture_db`` above the interferer.
    - ``rx_offset_db``: the receiver's own gain error, added to every RSSI.
    - ``fading``: Rician multipath fading (``rician_k``) on top of the shadowing.
    """

    duty_cycle: float = 1.0
    scan_period_s: float = 1.28
    wifi_loss: float = 0.0
    wifi_slot_s: float = 0.05
    collisions: bool = False
    capture_db: float = 6.0
    rx_offset_db: float = 0.0
    fading: bool = False
    rician_k: float = 1.0

    @property
    def ideal(self) -> bool:
        """True for the plain receiver (the original scenarios' radio, draw for draw)."""
        return self == IDEAL_RECEIVER

    def listening(self, t: float, phase: float) -> bool:
        """True when the scanner listens at ``t`` (its windows start at ``phase``)."""
        if self.duty_cycle < 1.0:
            period = self.scan_period_s
            if ((t - phase) % period) >= self.duty_cycle * period:
                return False
        if self.wifi_loss > 0.0:
            slot = int(t / self.wifi_slot_s)
            # A cheap deterministic hash of the slot: Wi-Fi bursts are the same for every device.
            mixed = (slot * 2654435761 + 0x9E3779B9) & 0xFFFFFFFF
            mixed ^= mixed >> 15
            mixed = (mixed * 2246822519) & 0xFFFFFFFF
            mixed ^= mixed >> 13
            if (mixed & 0xFFFF) / 65536.0 < self.wifi_loss:
                return False
        return True


IDEAL_RECEIVER = Receiver()
AIRTIME_S = 0.000376  # a 31-byte advertising PDU at 1 Mbit/s
CHANNELS = 3
MEAN_INTERVAL_S = 0.5  # of the crowd's devices, for the collision rate
INTERFERER_DBM = (-80.0, 10.0)  # mean and σ of a colliding packet's level


class Air:
    """The crowd on the channel: how many devices transmit now (kept by the merge)."""

    __slots__ = ("transmitting",)

    def __init__(self) -> None:
        self.transmitting = 0

    def collision_probability(self) -> float:
        """The chance that a packet overlaps another one (pure ALOHA, per channel)."""
        load = max(self.transmitting - 1, 0) * AIRTIME_S / MEAN_INTERVAL_S
        return 1.0 - math.exp(-2.0 * load)


class Fading:
    """Rician multipath fading per advertising channel: a complex AR(1) process that
    decorrelates with time (people moving nearby) and with the device's own movement (about
    a quarter wavelength, 3 cm, swings it)."""

    __slots__ = ("_k", "_rng", "_state", "_t", "_x", "_y")

    TIME_CONSTANT_S = 1.5
    DECORRELATION_M = 0.03

    def __init__(self, rician_k: float, rng: random.Random) -> None:
        self._rng = rng
        self._k = rician_k
        self._state = [complex(rng.gauss(0, 1), rng.gauss(0, 1)) / math.sqrt(2)
                       for _ in range(CHANNELS)]
        self._t: float | None = None
        self._x = self._y = 0.0

    def sample(self, t: float, x: float, y: float) -> float:
        """The fading (dB, mean 0 dB) of a packet sent at ``t`` from ``(x, y)``."""
        rng = self._rng
        if self._t is not None:
            moved = math.hypot(x - self._x, y - self._y)
            rho = math.exp(-(t - self._t) / self.TIME_CONSTANT_S - moved / self.DECORRELATION_M)
            spread = math.sqrt(max(0.0, 1.0 - rho * rho) / 2.0)
            self._state = [
                rho * h + complex(rng.gauss(0, spread), rng.gauss(0, spread)) for h in self._state
            ]
        self._t, self._x, self._y = t, x, y
        h = self._state[rng.randrange(CHANNELS)]
        return _fading_db(self._k, h) - _fading_mean_db(self._k)


def _fading_db(k: float, h: complex) -> float:
    amplitude = math.sqrt(k / (k + 1.0)) + math.sqrt(1.0 / (k + 1.0)) * h
    return 10.0 * math.log10(max(abs(amplitude) ** 2, 1e-4))


_FADING_MEANS: dict[float, float] = {}


def _fading_mean_db(k: float) -> float:
    """The mean of the fading in dB (about -2 dB at K = 1): taken off, so a device's 1 m power
    is its mean RSSI at 1 m, as a calibration by averaging readings measures it."""
    mean = _FADING_MEANS.get(k)
    if mean is None:
        rng = random.Random(f"fading:{k}")
        draws = [_fading_db(k, complex(rng.gauss(0, 1), rng.gauss(0, 1)) / math.sqrt(2))
                 for _ in range(20000)]
        mean = _FADING_MEANS[k] = sum(draws) / len(draws)
    return mean


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


def survives(rng: random.Random, rssi: float, receiver: Receiver, air: Air) -> bool:
    """Whether a packet heard at ``rssi`` outlives a collision with the crowd's packets."""
    if not receiver.collisions or rng.random() >= air.collision_probability():
        return True
    mean, sigma = INTERFERER_DBM
    return rssi - rng.gauss(mean, sigma) >= receiver.capture_db
