"""The venue's pairwise fit of per-scanner receive offsets (``hallway.proximity.scanners``)."""

from __future__ import annotations

import math
import random

from hallway.proximity.scanners import PairReading, distances, solve

POSITIONS = {"a": (0.0, 0.0), "b": (6.0, 0.0), "c": (0.0, 8.0), "d": (6.0, 8.0)}


def _readings(rx: dict[str, float], tx: dict[str, float], *, exponent: float = 2.0,
              sigma: float = 0.5, seed: int = 1, skip: tuple[tuple[str, str], ...] = (),
              moved: dict[tuple[str, str], float] | None = None) -> list[PairReading]:
    rng = random.Random(seed)
    out = []
    for (i, j), d in distances(POSITIONS).items():
        if (i, j) in skip:
            continue
        level = rx[i] + tx[j] - 10 * exponent * math.log10(d) + rng.gauss(0, sigma)
        level += (moved or {}).get((i, j), 0.0)
        out.append(PairReading(i, j, d, level, 1.0))
    return out


def test_the_offset_receiver_is_found_and_told_from_a_loud_beacon() -> None:
    rx = {"a": 0.0, "b": -8.0, "c": 0.0, "d": -2.0}
    tx = {"a": 0.0, "b": 0.0, "c": 4.0, "d": 0.0}  # c's beacon is loud, not everyone's ears
    solution = solve(_readings(rx, tx), exponent=2.0)
    got = {name: off.offset_db for name, off in solution.offsets.items()}
    assert abs(got["b"] + 8.0) < 1.5, got
    assert abs(got["d"] + 2.0) < 1.5, got
    assert abs(got["c"]) < 1.5, got  # its loud beacon is not taken for a loud receiver
    assert abs((got["b"] - got["a"]) + 8.0) < 1.0  # relative offsets are what pairs pin down
    assert all(off.confidence > 0.7 for off in solution.offsets.values())
    assert not solution.left_out


def test_a_scanner_nobody_reaches_keeps_no_confidence_and_bounds_hold() -> None:
    readings = [PairReading("a", "b", 5.0, -14.0 - 60.0)]  # absurd: 60 dB below the model
    solution = solve(readings, exponent=2.0)
    assert solution.offsets["a"].offset_db == -20.0  # bounded
    lone = solve([], exponent=2.0)
    assert lone.offsets == {}


def test_a_moved_scanner_pair_is_left_out_and_named() -> None:
    rx = {"a": 0.0, "b": -6.0, "c": 0.0, "d": 0.0}
    tx = dict.fromkeys(rx, 0.0)
    readings = _readings(rx, tx, moved={("a", "c"): -20.0})
    solution = solve(readings, exponent=2.0)
    assert list(solution.left_out) == [("a", "c")]
    assert "moved" in solution.left_out[("a", "c")]
    assert abs(solution.offsets["b"].offset_db + 6.0) < 1.5
    assert abs(solution.offsets["a"].offset_db) < 1.5
