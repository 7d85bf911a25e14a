"""``hallway simulate --scenario NAME --out DIR``: a simulated venue written out to files.

``--import`` puts the scenario's contacts into the config's database instead (or as well): the
same people a daemon with ``scanner.source = "simulator"`` and the same scenario and seed hears,
so the service can be tried without Bluetooth. Their ids name the scenario and the seed
(``corridor-7-0001``), so two runs never merge different people.

``--scenario venue`` is several rooms, one scanner each (``hallway.simulator.floorplan``): DIR
gets ``contacts.jsonl`` (shared by every scanner), ``trace-<scanner>.jsonl`` per scanner,
``truth.jsonl``, ``rooms.json``, and ready configs for a venue on one machine:
``<scanner>.toml`` per scanner (replaying its trace, publishing to the broker at
``--broker HOST:PORT`` over TLS with the client certificate ``DIR/tls/<scanner>.pem``) and
``venue.toml`` for ``hallway venue`` (Home Assistant discovery on, serving on
``--venue-port``). docs/venue.md's quick-start uses them.

For the other scenarios DIR gets ``contacts.jsonl`` (SPEC §1, for ``hallway contacts
import``), ``trace.jsonl`` (SPEC §2, for ``hallway replay``), ``truth.jsonl`` (per contact:
presence intervals within the presence radius and the true distance once a second) and
``venue.toml`` (the venue's path-loss exponent, as a site survey would give it). The same seed
gives the same files.
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
                        help="booth, keynote, corridor, meetup, the harder pocket-desk, "
                             "lossy-booth, crowd-keynote, pi-corridor, ... or venue (rooms)")
    parser.add_argument("--out", metavar="DIR", help="folder to write into")
    parser.add_argument("--import", dest="import_contacts", action="store_true",
                        help="import the scenario's contacts into the config's database "
                        "(for a daemon with scanner.source = \"simulator\")")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--duration", type=float, metavar="S",
                        help="seconds of venue time (default: the scenario's own length; "
                        "venue: 1800)")
    parser.add_argument("--start", type=float, metavar="TS",
                        help="Unix time of the first second (default 2026-11-21 09:00 UTC; "
                        "venue: now, so its traces replay as live)")
    parser.add_argument("--radius", type=float, metavar="M",
                        help="presence radius of the truth (default: the scenario's own, else "
                             "proximity.presence_radius_m)")
    parser.add_argument("--references", metavar="M,M", default="",
                        help="reference beacons at these distances (m), written to venue.toml "
                             "as [[proximity.reference]]")
    parser.add_argument("--true-exponent", type=float, metavar="N",
                        help="the venue's real path-loss exponent (venue.toml keeps the "
                             "scenario's: a venue configured wrong)")
    parser.add_argument("--rooms", type=int, default=3, metavar="N",
                        help="venue: the number of rooms, one scanner each (default 3)")
    parser.add_argument("--contacts", type=int, default=12, metavar="N",
                        help="venue: the number of contacts (default 12)")
    parser.add_argument("--broker", default="127.0.0.1:8883", metavar="HOST:PORT",
                        help="venue: the MQTT broker's TLS listener the configs name")
    parser.add_argument("--venue-port", type=int, default=7447, metavar="PORT",
                        help="venue: the TCP port hallway venue serves on (default 7447)")
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

    if args.scenario not in (*scenario_names(), "venue"):
        print(f"hallway: unknown scenario {args.scenario!r}; choose from "
              f"{', '.join([*scenario_names(), 'venue'])}", file=sys.stderr)
        return 2
    if args.duration is not None and not 1 <= args.duration <= 7 * 86400:
        print("hallway: --duration must be from 1 s to 7 days", file=sys.stderr)
        return 2
    if args.out is None and not args.import_contacts:
        print("hallway: say where the simulation goes: --out DIR, --import, or both",
              file=sys.stderr)
        return 2
    config = config_from_args(args)
    if args.scenario == "venue":
        if args.out is None or args.import_contacts:
            print("hallway: --scenario venue writes a folder (--out DIR); import its "
                  "contacts.jsonl into each scanner's database", file=sys.stderr)
            return 2
        return _venue(args)
    if args.import_contacts:
        _import(args, config)
        if args.out is None:
            return 0
    radius = args.radius
    if radius is None and scenario(args.scenario).radius_m is None:
        radius = config.proximity.presence_radius_m
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
    start = DEFAULT_START_TS if args.start is None else args.start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sim = Simulation(args.scenario, seed=args.seed, start_ts=start,
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


def _import(args: argparse.Namespace, config: Any) -> None:
    """The scenario's contacts into the config's database (consent open-ended, as the live
    simulator needs: it plays at the current time)."""
    import asyncio

    from hallway.commands.contacts import _check_access
    from hallway.simulator import scenario_contacts
    from hallway.store import SqliteStore

    contacts = scenario_contacts(args.scenario, seed=args.seed)
    database = config.storage.database
    _check_access(Path(database))

    async def work() -> int:
        async with await SqliteStore.open(database) as store:
            count: int = await store.import_contacts(contacts)
            return count

    count = asyncio.run(work())
    print(f"imported {count} contact(s) of scenario {args.scenario} (seed {args.seed}) into "
          f"{database}; ids {contacts[0].id} ... {contacts[-1].id}", file=sys.stderr)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def _config_text(head: str, sections: dict[str, dict[str, Any]]) -> str:
    lines = [head]
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def _venue(args: argparse.Namespace) -> int:
    """Several rooms: the simulation's files and ready configs for one machine."""
    from hallway.client import TargetError, parse_target
    from hallway.simulator.floorplan import FloorPlan, VenueSimulation

    if not 2 <= args.rooms <= 20 or not 1 <= args.contacts <= 500:
        print("hallway: --rooms must be 2-20 and --contacts 1-500", file=sys.stderr)
        return 2
    try:
        broker = parse_target(args.broker)
    except TargetError as exc:
        print(f"hallway: --broker: {exc}", file=sys.stderr)
        return 2
    if broker.host is None or broker.port is None:
        print("hallway: --broker wants HOST:PORT", file=sys.stderr)
        return 2
    started = time.perf_counter()
    out = Path(args.out).resolve()
    start = float(int(time.time())) if args.start is None else args.start
    sim = VenueSimulation(seed=args.seed, start_ts=start, duration_s=args.duration or 1800.0,
                          contacts=args.contacts, plan=FloorPlan.row(args.rooms))
    files = sim.write(out)
    exponent = sim.plan.radio.path_loss_exponent
    tls = out / "tls"
    venue_name = f"demo-{args.seed}"

    def mqtt(user: str) -> dict[str, Any]:
        return {"enabled": True, "host": broker.host, "port": broker.port, "tls": True,
                "ca_file": str(tls / "ca.pem"), "cert_file": str(tls / f"{user}.pem"),
                "key_file": str(tls / f"{user}.key"), "venue": venue_name}

    for name in sim.scanners:
        (out / f"{name}.toml").write_text(_config_text(
            f"# A scanner of the simulated venue: replays {name}'s trace as if live.", {
                "scanner": {"name": name, "source": "replay",
                            "trace": str(files[f"trace:{name}"])},
                "storage": {"database": str(out / f"{name}.db")},
                # Only the venue service serves apps here: a scanner keeps its socket private.
                "server": {"tcp_enabled": False, "unix_socket": str(out / f"{name}.sock"),
                           "unix_socket_mode": "0600",
                           "token_file": str(out / f"{name}.token")},
                "mdns": {"enabled": False},
                "proximity": {"path_loss_exponent": exponent, "presence_radius_m": 16.0},
                "mqtt": mqtt(name),
            }), encoding="utf-8")
    (out / "venue.toml").write_text(_config_text(
        "# hallway venue for the simulated rooms.", {
            "scanner": {"name": "venue"},
            "storage": {"database": str(out / "venue.db")},
            "server": {"tcp_host": "127.0.0.1", "tcp_port": args.venue_port,
                       "unix_socket": str(out / "venue.sock"), "unix_socket_mode": "0600",
                       "token_file": str(out / "venue.token")},
            "mdns": {"enabled": False},
            "proximity": {"path_loss_exponent": exponent},
            "mqtt": {**mqtt("venue"), "homeassistant": True},
            "venue": {"rooms": sim.rooms_config()},
        }), encoding="utf-8")
    print(f"scenario: venue (seed {args.seed}): {args.rooms} rooms in a row, one scanner each")
    print(f"duration_s: {sim.duration_s:g} from {start:.0f}")
    print(f"contacts: {len(sim.contacts)}  ({files['contacts']})")
    for name in sim.scanners:
        print(f"scanner {name}: room {sim.rooms_config()[name]!r}  "
              f"({files[f'trace:{name}']}, {out / f'{name}.toml'})")
    print(f"venue: {out / 'venue.toml'} (MQTT venue {venue_name!r}, broker {args.broker}, "
          f"certificates expected in {tls})")
    print(f"wall_time_s: {time.perf_counter() - started:.2f}")
    return 0
