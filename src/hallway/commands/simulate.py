"""``hallway simulate --scenario NAME --out DIR``: a simulated venue written out to files.

DIR gets ``contacts.jsonl`` (SPEC §1, for ``hallway contacts import``), ``trace.jsonl`` (SPEC
§2, for ``hallway replay``), ``truth.jsonl`` (per contact: presence intervals within the
presence radius and the true distance once a second) and ``venue.toml`` (the venue's
path-loss exponent, as a site survey would give it). The same seed gives the same files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_START_TS = 1795251600.0  # 2026-11-21 09:00 UTC: fixed, so a seed gives the same files


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``simulate``."""
    parser = sub.add_parser(
        "simulate", parents=[common],
        help="write a simulated venue: contacts, advertisement trace and ground truth",
    )
    parser.add_argument("--scenario", required=True,
                        help="a simulated venue: booth, keynote, corridor, or the harder "
                             "pocket-desk, lossy-booth, crowd-keynote, pi-corridor")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write into")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--duration", type=float, metavar="S",
                        help="seconds of venue time (default: the scenario's own length)")
    parser.add_argument("--start", type=float, metavar="TS", default=DEFAULT_START_TS,
                        help="Unix time of the first second (default 2026-11-21 09:00 UTC)")
    parser.add_argument("--radius", type=float, metavar="M",
                        help="presence radius of the truth (default: the scenario's own, else "
                             "proximity.presence_radius_m)")
    parser.add_argument("--references", metavar="M,M", default="",
                        help="reference beacons at these distances (m), written to venue.toml "
                             "as [[proximity.reference]]")
    parser.add_argument("--true-exponent", type=float, metavar="N",
                        help="the venue's real path-loss exponent (venue.toml keeps the "
                             "scenario's: a venue configured wrong)")
    parser.set_defaults(func=run)


def _trace_line(adv: Any) -> str:
    """One SPEC §2 line, written without a general-purpose encoder (the simulator's hot path)."""
    mfr = ", ".join(f'"{k}": "{v.hex()}"' for k, v in adv.manufacturer_data.items())
    svc = ", ".join(f'"{k}": "{v.hex()}"' for k, v in adv.service_data.items())
    uuids = ", ".join(f'"{u}"' for u in adv.service_uuids)
    return (
        f'{{"ts": {adv.ts:.4f}, "address": "{adv.address}", "address_type": "{adv.address_type}", '
        f'"rssi": {adv.rssi}, "tx_power": null, "local_name": null, '
        f'"manufacturer_data": {{{mfr}}}, "service_data": {{{svc}}}, '
        f'"service_uuids": [{uuids}], "scanner": "{adv.scanner}"}}\n'
    )


def run(args: argparse.Namespace) -> int:
    """Simulate and write the files; prints what was written."""
    from hallway.commands._common import config_from_args
    from hallway.contacts_io import contact_to_line
    from hallway.simulator import Simulation, scenario, scenario_names

    if args.scenario not in scenario_names():
        print(f"hallway: unknown scenario {args.scenario!r}; choose from "
              f"{', '.join(scenario_names())}", file=sys.stderr)
        return 2
    if args.duration is not None and not 1 <= args.duration <= 7 * 86400:
        print("hallway: --duration must be from 1 s to 7 days", file=sys.stderr)
        return 2
    config = config_from_args(args)
    radius = args.radius
    if radius is None and scenario(args.scenario).radius_m is None:
        radius = config.proximity.presence_radius_m
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        references = [float(v) for v in args.references.split(",") if v.strip()]
    except ValueError:
        print(f"hallway: --references must be distances in metres, e.g. 1.5,8 "
              f"(got {args.references!r})", file=sys.stderr)
        return 2
    if any(not 0.1 <= d <= 100 for d in references):
        print("hallway: --references: distances must be from 0.1 to 100 m", file=sys.stderr)
        return 2
    if args.true_exponent is not None and not 1.0 <= args.true_exponent <= 6.0:
        print("hallway: --true-exponent must be from 1 to 6", file=sys.stderr)
        return 2
    sim = Simulation(args.scenario, seed=args.seed, start_ts=args.start,
                     duration_s=args.duration, radius_m=radius, references=references,
                     true_exponent=args.true_exponent)
    with (out / "contacts.jsonl").open("w", encoding="utf-8") as handle:
        for contact in sim.contacts:
            handle.write(contact_to_line(contact) + "\n")
    tty = sys.stderr.isatty()
    count = 0
    next_report = time.monotonic() + 0.5
    with (out / "trace.jsonl").open("w", encoding="utf-8") as handle:
        write = handle.write
        for adv in sim.advertisements():
            write(_trace_line(adv))
            count += 1
            if tty and count % 4096 == 0 and time.monotonic() >= next_report:
                next_report = time.monotonic() + 0.5
                done = (adv.ts - sim.start_ts) / sim.duration_s
                print(f"\rsimulating {args.scenario}: {done:6.1%}  {count:,} advertisements",
                      end="", file=sys.stderr, flush=True)
    if tty:
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr)
    truth = sim.truth()
    with (out / "truth.jsonl").open("w", encoding="utf-8") as handle:
        for row in truth:
            handle.write(json.dumps(row, separators=(",", ":")) + "\n")
    (out / "venue.toml").write_text(sim.venue_config(), encoding="utf-8")
    intervals = sum(len(row["present"]) for row in truth)
    print(f"scenario: {args.scenario} (seed {args.seed}): {sim.spec.description}")
    print(f"duration_s: {sim.duration_s:g}")
    print(f"contacts: {len(sim.contacts)}  ({out / 'contacts.jsonl'})")
    print(f"advertisements: {count}  ({out / 'trace.jsonl'})")
    print(f"presence_intervals: {intervals}  ({out / 'truth.jsonl'})")
    print(f"venue: path_loss_exponent {sim.configured_exponent} (true "
          f"{sim.spec.radio.path_loss_exponent}), radius {sim.radius_m} m  ({out / 'venue.toml'})")
    print(f"wall_time_s: {time.perf_counter() - started:.2f}")
    return 0
