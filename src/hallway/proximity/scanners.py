"""Per-scanner receive offsets from scanners that hear each other's reference beacons.

In a venue each scanner can advertise a beacon of its own (``[scanner.beacon]``) and hear the
others'. Scanner ``i`` hearing scanner ``j``'s beacon, at the known distance ``d`` between
them, reads the level (RSSI minus the 1 m power the beacon states)

    L(i, j) = r(i) + t(j) - 10·n·log10(d)

``r(i)``: ``i``'s receive offset (its gain error, what the venue wants); ``t(j)``: how far
``j``'s beacon is off the power it states (its transmit error). One scanner alone cannot tell
its own ``r`` from the others' ``t``; pairs can: ``L(i, j) - L(j, i)`` is
``r(i) - r(j) - (t(i) - t(j))``, and with three or more scanners every ``r`` and ``t`` is
over-determined but for one shared constant, which the priors settle: beacons within
``TX_PRIOR_SD_DB`` of what they state, receive offsets loosely within ``RX_PRIOR_SD_DB`` of 0
(loose, so that the receivers' shared offset comes from the beacons, not from a pull to 0).

``solve`` is that weighted least-squares fit with the priors (a small dense system): each
scanner's offset, bounded to ``OFFSET_BOUNDS``, with its standard error and a confidence (the
share of ``CONFIDENCE_SD_DB``'s variance the readings removed, as the single-scanner
calibrator counts it: 0 for a scanner nobody's pairs reach, near 1 for one heard and hearing
well). A pair lying more than ``OUTLIER_DB`` off the fit of the
rest (a scanner moved, a beacon broken or blocked) is left out and named; so is a reading of
a scanner the positions do not know.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

RX_PRIOR_SD_DB = 10.0  # loose: the receivers' shared offset is settled by the beacons' prior
TX_PRIOR_SD_DB = 2.0
CONFIDENCE_SD_DB = 4.0  # confidence: the share of this variance the readings removed
OFFSET_BOUNDS = (-20.0, 10.0)
OUTLIER_DB = 8.0


def reference_digest(badge_key: str) -> str:
    """What a reference badge is called on the venue's broker: a digest of its key text
    (``KIND:VALUE``), so the venue can match scanners' beacons without any badge key leaving
    a scanner."""
    return hashlib.sha256(f"hallway-reference:{badge_key.lower()}".encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class PairReading:
    """``receiver`` heard ``transmitter``'s beacon at ``level_db`` (± ``error_db``)."""

    receiver: str
    transmitter: str
    distance_m: float
    level_db: float
    error_db: float = 1.5


@dataclass(frozen=True, slots=True)
class ScannerOffset:
    """One scanner's fitted receive offset."""

    offset_db: float
    standard_error_db: float
    confidence: float
    readings: int  # pairs it is in, as receiver or transmitter


@dataclass(frozen=True, slots=True)
class Solution:
    """Every scanner's offset, and the pairs left out with why."""

    offsets: dict[str, ScannerOffset]
    left_out: dict[tuple[str, str], str]


def distances(positions: Mapping[str, Sequence[float]]) -> dict[tuple[str, str], float]:
    """The distance between every two scanners with known positions (metres)."""
    names = sorted(positions)
    out = {}
    for a in names:
        for b in names:
            if a != b:
                out[(a, b)] = math.dist(positions[a], positions[b])
    return out


def solve(readings: Sequence[PairReading], *, exponent: float) -> Solution:
    """The receive offsets the readings support (see the module docstring)."""
    left_out: dict[tuple[str, str], str] = {}
    usable = [r for r in readings if r.receiver != r.transmitter and r.distance_m > 0]
    while True:
        offsets, residuals = _fit(usable, exponent)
        if len(usable) < 3:
            break
        worst = max(range(len(usable)), key=lambda k: abs(residuals[k]))
        if abs(residuals[worst]) <= OUTLIER_DB:
            break
        bad = usable.pop(worst)
        left_out[(bad.receiver, bad.transmitter)] = (
            f"reads {residuals[worst]:+.0f} dB off the others' fit (moved, or its beacon "
            "blocked or broken?)")
    return Solution(offsets, left_out)


def _fit(readings: Sequence[PairReading], exponent: float
         ) -> tuple[dict[str, ScannerOffset], list[float]]:
    scanners = sorted({r.receiver for r in readings} | {r.transmitter for r in readings})
    count = len(scanners)
    index = {name: k for k, name in enumerate(scanners)}
    size = 2 * count  # r(0..count-1), then t(0..count-1)
    matrix = [[0.0] * size for _ in range(size)]
    vector = [0.0] * size
    for k in range(count):
        matrix[k][k] += 1.0 / RX_PRIOR_SD_DB ** 2
        matrix[count + k][count + k] += 1.0 / TX_PRIOR_SD_DB ** 2
    targets = []
    for reading in readings:
        i, j = index[reading.receiver], count + index[reading.transmitter]
        target = reading.level_db + 10.0 * exponent * math.log10(reading.distance_m)
        targets.append(target)
        weight = 1.0 / max(reading.error_db, 0.1) ** 2
        for a in (i, j):
            vector[a] += weight * target
            for b in (i, j):
                matrix[a][b] += weight
    inverse = _invert(matrix)
    solution = [sum(inverse[a][b] * vector[b] for b in range(size)) for a in range(size)]
    residuals = [
        target - solution[index[r.receiver]] - solution[count + index[r.transmitter]]
        for r, target in zip(readings, targets, strict=True)
    ]
    offsets = {}
    for name, k in index.items():
        variance = max(inverse[k][k], 0.0)
        in_pairs = sum(1 for r in readings if name in (r.receiver, r.transmitter))
        offsets[name] = ScannerOffset(
            offset_db=min(max(solution[k], OFFSET_BOUNDS[0]), OFFSET_BOUNDS[1]),
            standard_error_db=math.sqrt(variance),
            confidence=max(0.0, 1.0 - variance / CONFIDENCE_SD_DB ** 2),
            readings=in_pairs,
        )
    return offsets, residuals


def _invert(matrix: list[list[float]]) -> list[list[float]]:
    """The inverse of a symmetric positive-definite matrix (Gauss-Jordan; the priors make it
    so)."""
    size = len(matrix)
    work = [row[:] + [1.0 if a == b else 0.0 for b in range(size)]
            for a, row in enumerate(matrix)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(work[r][col]))
        work[col], work[pivot] = work[pivot], work[col]
        lead = work[col][col]
        work[col] = [v / lead for v in work[col]]
        for row in range(size):
            if row != col and work[row][col] != 0.0:
                factor = work[row][col]
                work[row] = [v - factor * p for v, p in zip(work[row], work[col], strict=True)]
    return [row[size:] for row in work]
