"""How well a venue finds its scanners' receive offsets from their reference beacons (#17).
Prints figures; asserts nothing.

Monte Carlo over simulated venues: N scanners at random places in a hall (each at least 3 m
from the others, pairs heard up to ``--reach`` metres), each with a receive offset drawn from
what phones and USB dongles show (uniform -8..0 dB) and a beacon that is off its stated power
by N(0, ``--tx-sd``; 2 dB by default). A scanner's level of another's beacon is what its
calibrator keeps: the median of ten minute medians, taken here as the truth plus N(0,
``--sigma``) (1.5 dB by default: what ten minutes of 5 dB fading leave). Three estimates of
every receive offset are scored against the truth (mean absolute error, and the share within
2 dB):

- ``none``: no calibration (0 dB);
- ``alone``: each scanner on its own, its peers' beacons as plain references (the mean of
  level + path loss: its own offset plus the peers' beacon errors);
- ``pairs``: the venue's joint fit (``hallway.proximity.scanners.solve``), which tells
  receive from transmit errors.

    .venv/bin/python bench/scanner_offsets.py [--venues 300] [--sigma 1.5] [--tx-sd 2]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

from hallway.proximity.scanners import PairReading, solve


def venue(rng: random.Random, scanners: int, size_m: float) -> dict[str, tuple[float, float]]:
    places: dict[str, tuple[float, float]] = {}
    while len(places) < scanners:
        spot = (rng.uniform(0, size_m), rng.uniform(0, size_m))
        if all(math.dist(spot, other) >= 3.0 for other in places.values()):
            places[f"s{len(places)}"] = spot
    return places


def run(scanners: int, *, venues: int, sigma: float, reach: float, exponent: float,
        tx_sd: float, seed: int) -> dict[str, list[float]]:
    rng = random.Random(seed)
    errors: dict[str, list[float]] = {"none": [], "alone": [], "pairs": []}
    for _ in range(venues):
        places = venue(rng, scanners, size_m=4.0 * scanners)
        rx = {n: rng.uniform(-8.0, 0.0) for n in places}
        tx = {n: rng.gauss(0.0, tx_sd) for n in places}
        readings = []
        for i, a in places.items():
            for j, b in places.items():
                d = math.dist(a, b)
                if i == j or d > reach:
                    continue
                level = rx[i] + tx[j] - 10 * exponent * math.log10(d) + rng.gauss(0, sigma)
                readings.append(PairReading(i, j, d, level, sigma))
        solution = solve(readings, exponent=exponent)
        for name in places:
            own = [r.level_db + 10 * exponent * math.log10(r.distance_m)
                   for r in readings if r.receiver == name]
            alone = statistics.fmean(own) if own else 0.0
            fitted = solution.offsets[name].offset_db if name in solution.offsets else 0.0
            errors["none"].append(abs(rx[name]))
            errors["alone"].append(abs(alone - rx[name]))
            errors["pairs"].append(abs(fitted - rx[name]))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venues", type=int, default=300)
    parser.add_argument("--sigma", type=float, default=1.5)
    parser.add_argument("--reach", type=float, default=25.0)
    parser.add_argument("--exponent", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tx-sd", type=float, default=2.0,
                        help="how far beacons are off their stated power (dB, default 2)")
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"{args.venues} venues per row, reading error sigma {args.sigma} dB, beacons off "
          f"by sigma {args.tx_sd} dB, reach {args.reach} m, seed {args.seed}")
    print(f"{'scanners':>8} | {'none: mean / <=2 dB':>20} | {'alone: mean / <=2 dB':>21} | "
          f"{'pairs: mean / <=2 dB':>21}")
    for count in (2, 3, 4, 6, 10):
        errors = run(count, venues=args.venues, sigma=args.sigma, reach=args.reach,
                     exponent=args.exponent, tx_sd=args.tx_sd, seed=args.seed + count)
        cells = []
        for key in ("none", "alone", "pairs"):
            values = errors[key]
            share = sum(1 for v in values if v <= 2.0) / len(values)
            cells.append(f"{statistics.fmean(values):5.2f} dB / {share:5.1%}")
        print(f"{count:>8} | {cells[0]:>20} | {cells[1]:>21} | {cells[2]:>21}")
    print(f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
