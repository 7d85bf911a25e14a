#!/usr/bin/env python3
"""Venue room accuracy: ``hallway venue`` against nearest-scanner-wins, in the same run.

A multi-room venue is simulated (``hallway.simulator.floorplan``: rooms in a row, a scanner in
each, walls, doors, people moving between rooms and lingering in doorways), giving one SPEC §2
trace per scanner and the true room of every contact once a second.

Real mode (the default): a Mosquitto broker is started on 127.0.0.1 with the configuration
docs/venue.md recommends; one ``hallway run`` daemon per scanner replays its trace in real time
(the traces are simulated to start a few seconds after launch) and publishes to the broker;
``hallway venue`` arbitrates. Its venue events are read from MQTT. The same MQTT messages (every
scanner's events and presence) also go, in this process, through the venue service's own input
handling with a nearest-scanner-wins arbiter (no margin, no confirmation: the best-scoring room
wins at once), the baseline. So both see exactly the same input.

``--offline`` skips the broker and the daemons: the scanners' pipelines run in this process on
trace time and their messages are built as the MQTT publisher builds them (fast; for tuning).

Scores, per contact, one sample per second, over the seconds a contact is truly in a room:

- room accuracy: the reported room is the true room (a contact reported absent is wrong);
- the same, counting only seconds away from doorways (more than a metre from a door);
- settled: leaving out 15 s after each true room change (nobody can know at once), and in a
  doorway either of its two rooms counts as right;
- room changes per contact-hour (and the true number, for scale); moves to a wrong room: to a
  room the contact was not in from 30 s before to 5 s after;
- flaps per contact-hour: a move A -> B undone (B -> A) within 60 s while the contact was
  never truly in B (from 20 s before the first move to 5 s after the second).

Usage: bench/venue.py [--duration 900] [--contacts 12] [--rooms 3] [--seed 3] [--offline]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from hallway.config import Config  # noqa: E402
from hallway.events import event_json, present_json  # noqa: E402
from hallway.models import EventType, PresenceEvent  # noqa: E402
from hallway.mqtt import (  # noqa: E402
    Topics,
    dumps,
    materially_changed,
    presence_payload,
    public_event,
)
from hallway.pipeline import Pipeline  # noqa: E402
from hallway.simulator.floorplan import FloorPlan, VenueSimulation  # noqa: E402
from hallway.venue.service import VenueService  # noqa: E402

VENUE = "bench"
LEAD_S = 20.0  # the traces start this long after the simulation is made
TRANSITION_S = 15.0
FLAP_S = 60.0
PASSWORDS = {"venue": "venue-bench-password"}


# -- timelines and scores ---------------------------------------------------------------------


@dataclass
class Timeline:
    """The rooms a method reported for each contact: (ts, room or None) in order."""

    changes: dict[str, list[tuple[float, str | None]]] = field(default_factory=dict)

    def record(self, contact_id: str, ts: float, room: str | None) -> None:
        self.changes.setdefault(contact_id, []).append((ts, room))

    def event(self, event: PresenceEvent | dict[str, Any]) -> None:
        if isinstance(event, PresenceEvent):
            kind, cid, ts, room = event.type.value, event.contact_id, event.ts, event.room
        else:
            kind, cid, ts, room = (event["type"], event["contact"]["id"], event["ts"],
                                   event.get("room"))
        if kind in (EventType.ARRIVED.value, EventType.MOVED.value):
            self.record(cid, ts, room)
        elif kind == EventType.DEPARTED.value:
            self.record(cid, ts, None)

    def room_at(self, contact_id: str) -> Iterator[tuple[float, str | None]]:
        yield from self.changes.get(contact_id, [])


def per_second(changes: list[tuple[float, str | None]], start_ts: float,
               seconds: int) -> list[str | None]:
    rooms: list[str | None] = [None] * seconds
    current: str | None = None
    k = 0
    for second in range(seconds):
        t = start_ts + second
        while k < len(changes) and changes[k][0] <= t:
            current = changes[k][1]
            k += 1
        rooms[second] = current
    return rooms


def score(truth: list[dict[str, Any]], timeline: Timeline) -> dict[str, float]:
    right = right_clear = total = total_clear = right_settled = total_settled = absent = 0
    changes = flaps = true_changes = wrong_moves = 0
    for row in truth:
        true_rooms: list[str | None] = row["room"]
        doorway: list[str | None] = row["doorway"]
        start_ts = float(row["start_ts"])
        seconds = len(true_rooms)
        said = per_second(list(timeline.room_at(row["id"])), start_ts, seconds)
        last_change = -10**9
        for k, room in enumerate(true_rooms):
            if k and room != true_rooms[k - 1] and room is not None and true_rooms[k - 1]:
                last_change = k
                true_changes += 1
            if room is None:
                continue
            total += 1
            right += said[k] == room
            absent += said[k] is None
            ok = said[k] == room or (said[k] is not None and said[k] == doorway[k])
            if doorway[k] is None:
                total_clear += 1
                right_clear += said[k] == room
            if k - last_change > TRANSITION_S:
                total_settled += 1
                right_settled += ok

        def truly_in(room: str, t0: float, t1: float, rooms: list[str | None] = true_rooms,
                     start: float = start_ts) -> bool:
            first, last = max(0, int(t0 - start)), min(len(rooms) - 1, int(t1 - start))
            return any(rooms[k] == room for k in range(first, last + 1))

        reported = list(timeline.room_at(row["id"]))
        moves = [(reported[i][0], reported[i - 1][1], reported[i][1])
                 for i in range(1, len(reported))
                 if reported[i - 1][1] and reported[i][1] and reported[i - 1][1] != reported[i][1]]
        changes += len(moves)
        for ts, _, room in moves:
            assert room is not None
            wrong_moves += not truly_in(room, ts - 30.0, ts + 5.0)
        for j in range(1, len(moves)):
            (t1, a, b), (t2, b2, a2) = moves[j - 1], moves[j]
            assert b is not None
            if b2 == b and a2 == a and t2 - t1 <= FLAP_S and not truly_in(b, t1 - 20.0, t2 + 5):
                flaps += 1
    hours = max(total, 1) / 3600.0
    return {
        "contact_hours_in_a_room": total / 3600.0,
        "room_accuracy": right / max(total, 1),
        "room_accuracy_away_from_doorways": right_clear / max(total_clear, 1),
        "room_accuracy_settled": right_settled / max(total_settled, 1),
        "absent_while_in_a_room": absent / max(total, 1),
        "room_changes_per_contact_hour": changes / hours,
        "true_room_changes_per_contact_hour": true_changes / hours,
        "moves_to_a_wrong_room_per_contact_hour": wrong_moves / hours,
        "flaps_per_contact_hour": flaps / hours,
    }


# -- the venue's input, as both arbiters see it -------------------------------------------------


def venue_config(workdir: Path, rooms: dict[str, str], exponent: float, *, port: int = 1883,
                 nearest_wins: bool = False, tuning: dict[str, float] | None = None) -> Config:
    venue: dict[str, Any] = {"rooms": rooms, **(tuning or {})}
    if nearest_wins:
        venue.update(switch_margin_db=0.0, switch_confirm_s=0.0)
    return Config.model_validate({
        "scanner": {"name": "venue"},
        "storage": {"database": str(workdir / "venue.db")},
        "server": {"tcp_host": "127.0.0.1", "tcp_port": 0, "unix_socket": None,
                   "auth": "none"},
        "mdns": {"enabled": False},
        "proximity": {"path_loss_exponent": exponent},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": port, "username": "venue",
                 "password": PASSWORDS["venue"], "venue": VENUE, "reconnect_max_s": 1.0},
        "venue": venue,
        "logging": {"level": "warning"},
    })


class Judge:
    """Feeds MQTT messages through a venue service's input handling; records its decisions."""

    def __init__(self, config: Config, clock: Any) -> None:
        self.service = VenueService(config, clock=clock)
        self.timeline = Timeline()

    def message(self, topic: str, payload: bytes) -> None:
        for event in self.service.handle(topic, payload):
            self.timeline.event(event)

    def tick(self, now: float) -> None:
        for event in self.service.arbiter.tick(now):
            self.timeline.event(event)


# -- offline: the scanners' pipelines in this process -----------------------------------------


class EmulatedScanner:
    """One scanner's pipeline and the messages its MQTT publisher would send."""

    def __init__(self, name: str, config: Config, sim: VenueSimulation) -> None:
        self.name = name
        self.pipeline = Pipeline(config)
        self.pipeline.load_contacts(sim.contacts, now=sim.start_ts)
        self.topics = Topics.for_scanner(config.mqtt, name)
        self.seq = 0
        self.sent: dict[str, dict[str, Any]] = {}

    def events(self, events: list[PresenceEvent]) -> Iterator[tuple[str, bytes]]:
        for event in events:
            self.seq += 1
            payload = public_event(event_json(event, seq=self.seq, scanner=self.name,
                                              contact=self.pipeline.contact(event.contact_id)))
            assert payload is not None
            yield self.topics.events, dumps(payload)
            cid = event.contact_id
            if event.type is EventType.DEPARTED:
                self.sent.pop(cid, None)
                yield self.topics.present(cid), b""
            else:
                entry = {**payload, "since": payload["ts"]}
                presence = presence_payload(entry, scanner=self.name, ts=event.ts)
                assert presence is not None
                self.sent[cid] = presence
                yield self.topics.present(cid), dumps(presence)

    def refresh(self, now: float) -> Iterator[tuple[str, bytes]]:
        for info in self.pipeline.present():
            entry = present_json(info, self.pipeline.contact(info.contact_id))
            presence = presence_payload(entry, scanner=self.name, ts=now)
            assert presence is not None
            last = self.sent.get(info.contact_id)
            if last is None or materially_changed(last, presence):
                self.sent[info.contact_id] = presence
                yield self.topics.present(info.contact_id), dumps(presence)


def run_offline(sim: VenueSimulation, scanner_config: Config, workdir: Path,
                tuning: dict[str, float] | None = None) -> tuple[Timeline, Timeline]:
    now = [sim.start_ts]
    rooms = sim.rooms_config()
    exponent = sim.plan.radio.path_loss_exponent
    ours = Judge(venue_config(workdir, rooms, exponent, tuning=tuning), lambda: now[0])
    base = Judge(venue_config(workdir, rooms, exponent, nearest_wins=True), lambda: now[0])
    scanners = {name: EmulatedScanner(name, scanner_config, sim) for name in sim.scanners}
    traces = sim.traces()
    stream = heapq.merge(*traces.values(), key=lambda adv: adv.ts)
    next_tick = sim.start_ts + 1.0

    def deliver(messages: Iterator[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            ours.message(topic, payload)
            base.message(topic, payload)

    def tick_until(t: float) -> None:
        nonlocal next_tick
        while next_tick <= t:
            now[0] = next_tick
            for scanner in scanners.values():
                deliver(scanner.events(scanner.pipeline.tick(next_tick)))
                deliver(scanner.refresh(next_tick))
            ours.tick(next_tick)
            base.tick(next_tick)
            next_tick += 1.0

    for adv in stream:
        tick_until(adv.ts)
        now[0] = adv.ts
        scanner = scanners[adv.scanner]
        deliver(scanner.events(scanner.pipeline.feed(adv)))
    tick_until(sim.end_ts)
    return ours.timeline, base.timeline


# -- real: Mosquitto, hallway run per scanner, hallway venue ----------------------------------


def scanner_config_text(name: str, trace: Path, db: Path, port: int, password: str,
                        exponent: float, radius_m: float) -> str:
    return f"""
[scanner]
name = "{name}"
source = "replay"
trace = "{trace}"

[storage]
database = "{db}"

[server]
tcp_host = "127.0.0.1"
tcp_port = 0
unix_socket = ""
auth = "none"

[mdns]
enabled = false

[proximity]
path_loss_exponent = {exponent}
presence_radius_m = {radius_m}

[logging]
level = "warning"

[mqtt]
enabled = true
host = "127.0.0.1"
port = {port}
username = "{name}"
password = "{password}"
venue = "{VENUE}"
reconnect_max_s = 1.0
"""


async def run_real(sim: VenueSimulation, workdir: Path, radius_m: float
                   ) -> tuple[Timeline, Timeline, dict[str, Any]]:
    import aiomqtt

    from hallway.testing.mosquitto import (
        MosquittoBroker,
        add_passwords,
        docs_broker_config,
        free_port,
        make_tls,
    )

    hallway = [sys.executable, "-m", "hallway"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    broker_dir = workdir / "broker"
    broker_dir.mkdir()
    port, tls_port = free_port(), free_port()
    tls = make_tls(broker_dir / "tls")
    conf = docs_broker_config((ROOT / "docs" / "venue.md").read_text(), broker_dir, port=port,
                              tls_port=tls_port, tls=tls)
    passwords = {**PASSWORDS, **{name: f"{name}-bench-password" for name in sim.scanners}}
    add_passwords(broker_dir / "passwd", passwords)
    broker = MosquittoBroker(broker_dir, conf, ports=(port, tls_port))
    broker.start()
    files = sim.write(workdir / "sim")
    exponent = sim.plan.radio.path_loss_exponent
    procs: list[subprocess.Popen[bytes]] = []
    rooms = sim.rooms_config()
    now = [time.time()]
    base = Judge(venue_config(workdir, rooms, exponent, nearest_wins=True), lambda: now[0])
    ours = Timeline()
    info: dict[str, Any] = {}
    try:
        for name in sim.scanners:
            db = workdir / f"{name}.db"
            subprocess.run([*hallway, "contacts", "import", "--db", str(db),
                            str(files["contacts"])], check=True, env=env, capture_output=True)
            config = workdir / f"{name}.toml"
            config.write_text(scanner_config_text(name, files[f"trace:{name}"], db, port,
                                                  passwords[name], exponent, radius_m))
            procs.append(subprocess.Popen([*hallway, "run", "--config", str(config)], env=env,
                                          stdout=subprocess.DEVNULL))
        venue_toml = workdir / "venue.toml"
        venue_toml.write_text(_venue_toml(workdir, rooms, exponent, port))
        procs.append(subprocess.Popen([*hallway, "venue", "--config", str(venue_toml)], env=env,
                                      stdout=subprocess.DEVNULL))
        base_topic = f"hallway/{VENUE}"
        messages = 0
        async with aiomqtt.Client("127.0.0.1", port, username="venue",
                                  password=PASSWORDS["venue"], identifier="bench-observer",
                                  max_queued_incoming_messages=0) as client:
            for topic in (f"{base_topic}/events", f"{base_topic}/scanners/+/status",
                          f"{base_topic}/scanners/+/present/+", f"{base_topic}/scanners/+/events"):
                await client.subscribe(topic, qos=1)
            deadline = sim.end_ts + 10.0
            next_tick = time.time() + 1.0

            async def read() -> None:
                nonlocal messages, next_tick
                async for message in client.messages:
                    now[0] = time.time()
                    payload = message.payload if isinstance(message.payload, bytes) else b""
                    topic = str(message.topic)
                    messages += 1
                    if topic == f"{base_topic}/events":
                        event = json.loads(payload)
                        ours.event(event)
                    else:
                        base.message(topic, payload)
                    if now[0] >= next_tick:
                        base.tick(now[0])
                        next_tick = now[0] + 1.0

            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - time.time()):
                    await read()
        info["mqtt_messages_observed"] = messages
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop()
    return ours, base.timeline, info


def _venue_toml(workdir: Path, rooms: dict[str, str], exponent: float, port: int) -> str:
    room_lines = ", ".join(f'"{k}" = "{v}"' for k, v in rooms.items())
    return f"""
[scanner]
name = "venue"

[storage]
database = "{workdir / 'venue.db'}"

[server]
tcp_host = "127.0.0.1"
tcp_port = 0
unix_socket = ""
auth = "none"

[mdns]
enabled = false

[proximity]
path_loss_exponent = {exponent}

[logging]
level = "warning"

[mqtt]
enabled = true
host = "127.0.0.1"
port = {port}
username = "venue"
password = "{PASSWORDS['venue']}"
venue = "{VENUE}"
reconnect_max_s = 1.0

[venue]
rooms = {{ {room_lines} }}
"""


# -- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=900.0)
    parser.add_argument("--contacts", type=int, default=12)
    parser.add_argument("--rooms", type=int, default=3)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--radius", type=float, default=16.0,
                        help="scanners' presence radius (m): they must hear the next room too")
    parser.add_argument("--offline", action="store_true")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hallway-venue-"))
    workdir.mkdir(parents=True, exist_ok=True)
    start_ts = (1795251600.0 if args.offline else time.time() + LEAD_S)
    sim = VenueSimulation(seed=args.seed, start_ts=start_ts, duration_s=args.duration,
                          contacts=args.contacts, plan=FloorPlan.row(args.rooms))
    exponent = sim.plan.radio.path_loss_exponent
    started = time.perf_counter()
    info: dict[str, Any] = {}
    if args.offline:
        scanner_config = Config.model_validate({
            "proximity": {"path_loss_exponent": exponent, "presence_radius_m": args.radius},
            "mqtt": {"venue": VENUE}})
        ours, base = run_offline(sim, scanner_config, workdir)
    else:
        ours, base, info = asyncio.run(run_real(sim, workdir, args.radius))
    truth = sim.truth()
    results = {"hallway venue": score(truth, ours), "nearest-scanner-wins": score(truth, base)}
    mode = "offline (in-process pipelines)" if args.offline else (
        "real (Mosquitto + hallway run x%d + hallway venue)" % len(sim.scanners))
    print(f"venue bench: {mode}; {len(sim.scanners)} rooms, {len(sim.contacts)} contacts, "
          f"{args.duration:.0f} s, seed {args.seed}, wall {time.perf_counter() - started:.0f} s")
    for key, value in info.items():
        print(f"  {key}: {value}")
    names = list(results)
    print(f"{'':38}" + "".join(f"{n:>22}" for n in names))
    for metric in results[names[0]]:
        print(f"{metric:38}" + "".join(f"{results[n][metric]:>22.3f}" for n in names))
    ours_s, base_s = results["hallway venue"], results["nearest-scanner-wins"]
    ratio = ours_s["flaps_per_contact_hour"] / max(base_s["flaps_per_contact_hour"], 1e-9)
    print(f"room accuracy {ours_s['room_accuracy']:.1%} (goal >= 90 %): "
          f"{'PASS' if ours_s['room_accuracy'] >= 0.9 else 'FAIL'}")
    print(f"flaps {ours_s['flaps_per_contact_hour']:.2f} vs {base_s['flaps_per_contact_hour']:.2f}"
          f" per contact-hour = {ratio:.2f} of nearest-scanner-wins (goal <= 0.20): "
          f"{'PASS' if ratio <= 0.2 else 'FAIL'}")
    print(f"workdir: {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
