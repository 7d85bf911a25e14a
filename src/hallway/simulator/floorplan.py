"""A venue of several rooms, one scanner in each: one trace per scanner and the room truth.

Floor plan: ``rooms`` rectangular rooms (``room_w_m`` x ``room_d_m``) in a row along x, each
with its scanner in the middle. Neighbouring rooms share a wall with a door in its middle; the
venue's entrances are doors in the two end walls. A wall between a phone and a scanner costs
``wall_loss_db``, fading to nothing within a metre and a half of the wall's door (the signal
goes through the opening).

People: each contact comes in through an entrance, walks (through doors) to a spot in some
room and stays there for minutes, shifting position now and then; then moves to another room,
or lingers in a doorway between two rooms (the case where a room tracker must not flap), or
leaves and may come back later. Phones pause now and then (locked screens), silently for every
scanner at once. A few strangers wander the same way with devices nobody has keys for.

Every packet a device sends is heard (or lost) by every scanner independently: its own
distance, walls, slow shadowing of that link, per-packet noise and loss. The truth is the room
each contact is in, once a second (None when outside the venue). Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Any

from hallway.contacts_io import contact_to_line
from hallway.models import Advertisement, Contact, EventType, PresenceEvent
from hallway.simulator.devices import (
    CONTACT_MIX,
    STRANGER_MIX,
    Device,
    Transmitter,
    choose,
    make_contact,
    make_device,
)
from hallway.simulator.world import (
    SCANNER_HEIGHT_M,
    Path,
    PathBuilder,
    Radio,
    Shadowing,
    received,
)
from hallway.trace import advertisement_json

ADV_DELAY_MAX_S = 0.010
DOOR_HALF_WIDTH_M = 0.8
DOOR_CLEAR_M = 1.5
DOORWAY_M = 1.0
MARKER_ADDRESS = "02:00:00:00:00:00"
TRANSITION_S = 15.0
FLAP_S = 60.0


@dataclass(frozen=True, slots=True)
class Room:
    """A room: its name, its scanner's name and position, and its x extent."""

    name: str
    scanner: str
    x0: float
    x1: float
    scanner_xy: tuple[float, float]


@dataclass(frozen=True, slots=True)
class FloorPlan:
    """Rooms in a row along x, ``depth_m`` deep, doors in the middle of each wall."""

    rooms: tuple[Room, ...]
    depth_m: float
    wall_loss_db: float
    radio: Radio

    @classmethod
    def row(
        cls,
        count: int = 3,
        *,
        room_w_m: float = 14.0,
        room_d_m: float = 12.0,
        wall_loss_db: float = 6.0,
        radio: Radio | None = None,
    ) -> FloorPlan:
        """``count`` rooms in a row, scanners ``room-1``... in the middle of rooms ``Room 1``..."""
        rooms = tuple(
            Room(
                name=f"Room {i + 1}",
                scanner=f"room-{i + 1}",
                x0=i * room_w_m,
                x1=(i + 1) * room_w_m,
                scanner_xy=((i + 0.5) * room_w_m, room_d_m / 2),
            )
            for i in range(count)
        )
        return cls(rooms, room_d_m, wall_loss_db,
                   radio or Radio(path_loss_exponent=2.2, shadowing_db=4.0, packet_loss=0.1))

    @property
    def door_y(self) -> float:
        """Every door is in the middle of its wall."""
        return self.depth_m / 2

    def walls(self) -> list[float]:
        """The x of every wall between two rooms."""
        return [room.x0 for room in self.rooms[1:]]

    def room_at(self, x: float, y: float) -> Room | None:
        """The room containing the point (None outside the venue)."""
        if not 0.0 <= y <= self.depth_m:
            return None
        for room in self.rooms:
            if room.x0 <= x < room.x1:
                return room
        return None

    def doorway_rooms(self, x: float, y: float) -> tuple[Room, Room] | None:
        """The two rooms of the doorway the point stands in (within a metre of a door)."""
        if abs(y - self.door_y) > DOOR_HALF_WIDTH_M + 0.2:
            return None
        for index, wall in enumerate(self.walls()):
            if abs(x - wall) <= DOORWAY_M:
                return self.rooms[index], self.rooms[index + 1]
        return None

    def wall_loss(self, x: float, y: float, scanner_xy: tuple[float, float]) -> float:
        """dB lost in walls between a point and a scanner."""
        sx = scanner_xy[0]
        low, high = min(x, sx), max(x, sx)
        loss = 0.0
        for wall in self.walls():
            if low < wall < high:
                near_door = math.hypot(x - wall, y - self.door_y)
                loss += self.wall_loss_db * min(1.0, near_door / DOOR_CLEAR_M)
        return loss

    def route(self, builder: PathBuilder, x: float, y: float) -> PathBuilder:
        """Walk to ``(x, y)`` through the doors of the walls in between."""
        here_x, _ = builder.here
        walls = [w for w in self.walls() if min(here_x, x) < w < max(here_x, x)]
        walls.sort(reverse=x < here_x)
        for wall in walls:
            builder.walk(wall, self.door_y)
        return builder.walk(x, y)


@dataclass(frozen=True, slots=True)
class Stay:
    """One visit of one person to the venue: ``who`` a contact index, or None for a stranger."""

    who: int | None
    path: Path
    device: Device


def _spot(rng: random.Random, plan: FloorPlan, room: Room) -> tuple[float, float]:
    margin = 1.0
    return (rng.uniform(room.x0 + margin, room.x1 - margin),
            rng.uniform(margin, plan.depth_m - margin))


def _doorway(rng: random.Random, plan: FloorPlan, wall: float) -> tuple[float, float]:
    """A place to linger in a doorway: just on one side of the wall, by the door."""
    side = rng.choice((-1.0, 1.0))
    return wall + side * rng.uniform(0.2, 0.7), plan.door_y + rng.uniform(-0.6, 0.6)


def _visit(rng: random.Random, plan: FloorPlan, start: float, *, leave_by: float,
           mean_dwell_s: float) -> Path:
    """Enter, move between rooms (sometimes lingering in a doorway), leave."""
    left = rng.random() < 0.5
    entrance_x = -0.5 if left else plan.rooms[-1].x1 + 0.5
    builder = PathBuilder(start, entrance_x, plan.door_y, speed_mps=rng.uniform(1.0, 1.4))
    room = rng.choice(plan.rooms)
    plan.route(builder, *_spot(rng, plan, room))
    while builder.t < leave_by:
        stay_until = builder.t + rng.expovariate(1.0 / mean_dwell_s) + 30.0
        while builder.t < stay_until:  # shift around the room now and then
            builder.stand(min(stay_until - builder.t, rng.uniform(40.0, 120.0)))
            if builder.t < stay_until and rng.random() < 0.5:
                plan.route(builder, *_spot(rng, plan, room))
        choice = rng.random()
        walls = plan.walls()
        if choice < 0.25 and walls:
            wall = rng.choice(walls)
            plan.route(builder, *_doorway(rng, plan, wall))
            builder.stand(rng.uniform(60.0, 180.0))
            room = plan.room_at(*builder.here) or room
        elif choice < 0.85:
            others = [r for r in plan.rooms if r is not room]
            room = rng.choice(others) if others else room
            plan.route(builder, *_spot(rng, plan, room))
        else:
            break
    plan.route(builder, entrance_x, plan.door_y)
    return builder.walk(entrance_x + (-3.0 if left else 3.0), plan.door_y).build()


def _gaps(rng: random.Random, path: Path, *, every_s: float,
          range_s: tuple[float, float]) -> list[tuple[float, float]]:
    gaps = []
    t = path.start + rng.expovariate(1.0 / every_s)
    while t < path.end:
        length = rng.uniform(*range_s)
        gaps.append((t, t + length))
        t += length + rng.expovariate(1.0 / every_s)
    return gaps


class VenueSimulation:
    """A finite multi-room run: contacts, one trace per scanner, and the room truth."""

    def __init__(
        self,
        *,
        seed: int,
        start_ts: float,
        duration_s: float,
        contacts: int = 12,
        strangers: int = 4,
        plan: FloorPlan | None = None,
        mean_dwell_s: float = 240.0,
        gap_every_s: float = 240.0,
        gap_range_s: tuple[float, float] = (10.0, 40.0),
        paths: Sequence[Path] | None = None,
    ) -> None:
        """``paths``, when given, script the run: contact ``i`` follows ``paths[i]`` once, and
        ``contacts`` is their number."""
        self.seed = seed
        self.start_ts = start_ts
        self.duration_s = duration_s
        self.end_ts = start_ts + duration_s
        self.plan = plan or FloorPlan.row()
        self._gap_every_s = gap_every_s
        self._gap_range_s = gap_range_s
        rng = random.Random(f"{seed}:floorplan")
        if paths is not None:
            contacts = len(paths)
        self._devices: list[Device] = []
        self.contacts: list[Contact] = []
        for index in range(contacts):
            dev_rng = random.Random(f"{seed}:floorplan:contact:{index}")
            device = make_device(dev_rng, choose(dev_rng, CONTACT_MIX), f"{seed}:fp:dev:{index}")
            self._devices.append(device)
            self.contacts.append(make_contact(
                dev_rng, index, device, granted_at=start_ts - 86400.0,
                expires_at=start_ts + 30 * 86400.0))
        self.stays: list[Stay] = [
            Stay(index, path, self._devices[index]) for index, path in enumerate(paths or ())
        ]
        for index in range(contacts if paths is None else 0):
            t = start_ts + rng.uniform(0.0, min(60.0, duration_s / 10))
            while t < self.end_ts - 30.0:
                path = _visit(rng, self.plan, t, leave_by=min(self.end_ts, t + rng.uniform(
                    0.5, 1.5) * duration_s), mean_dwell_s=mean_dwell_s)
                self.stays.append(Stay(index, path, self._devices[index]))
                t = path.end + rng.uniform(60.0, 600.0)
        for index in range(strangers):
            t = start_ts + rng.uniform(0.0, duration_s / 2)
            device = make_device(rng, choose(rng, STRANGER_MIX), f"{seed}:fp:stranger:{index}")
            path = _visit(rng, self.plan, t, leave_by=t + duration_s / 3,
                          mean_dwell_s=mean_dwell_s)
            self.stays.append(Stay(None, path, device))

    @property
    def scanners(self) -> list[str]:
        """The scanners' names, one per room."""
        return [room.scanner for room in self.plan.rooms]

    def rooms_config(self) -> dict[str, str]:
        """``venue.rooms``: scanner name -> room name."""
        return {room.scanner: room.name for room in self.plan.rooms}

    def _packets(self, number: int, stay: Stay) -> Iterator[tuple[float, Advertisement | None,
                                                                   list[int | None]]]:
        """Each packet of one stay: when, what, and the RSSI per scanner (None: not heard)."""
        device = stay.device
        rng = random.Random(f"{self.seed}:floorplan:stay:{number}")
        plan = self.plan
        radio = plan.radio
        shadows = [Shadowing(radio, rng) for _ in plan.rooms]
        transmitter = Transmitter(device)
        gaps = (_gaps(rng, stay.path, every_s=self._gap_every_s, range_s=self._gap_range_s)
                if device.is_phone else [])
        gap = 0
        t = stay.path.start + rng.uniform(0.0, device.interval_s)
        end = min(stay.path.end, self.end_ts)
        while t <= end:
            while gap < len(gaps) and gaps[gap][1] <= t:
                gap += 1
            if gap < len(gaps) and gaps[gap][0] <= t:
                t = gaps[gap][1]
                continue
            if t >= self.start_ts:
                x, y = stay.path.position(t)
                heard: list[int | None] = []
                for room, shadow in zip(plan.rooms, shadows, strict=True):
                    sx, sy = room.scanner_xy
                    distance = math.sqrt((x - sx) ** 2 + (y - sy) ** 2 + SCANNER_HEIGHT_M ** 2)
                    heard.append(received(
                        rng, power_1m_dbm=device.true_power_dbm, distance_m=distance,
                        exponent=radio.path_loss_exponent,
                        disturbance_db=shadow.sample(t) - plan.wall_loss(x, y, room.scanner_xy),
                        packet_loss=radio.packet_loss,
                    ))
                if any(r is not None for r in heard):
                    yield t, transmitter.advertisement(t, -127), heard
            t += device.interval_s + rng.uniform(0.0, ADV_DELAY_MAX_S)

    def traces(self) -> dict[str, list[Advertisement]]:
        """Per scanner, every advertisement it heard, in time order.

        Each trace opens with the same marker at ``start_ts`` (a packet from an anonymous
        fixed-address device), so replays that start together stay in step: a replay is paced
        from its first record.
        """
        marker = Advertisement(ts=self.start_ts, address=MARKER_ADDRESS, address_type="public",
                               rssi=-95)
        out: dict[str, list[Advertisement]] = {
            name: [marker._replace(scanner=name)] for name in self.scanners}
        names = self.scanners
        for number, stay in enumerate(self.stays):
            for _, adv, heard in self._packets(number, stay):
                assert adv is not None
                for name, rssi in zip(names, heard, strict=True):
                    if rssi is not None:
                        out[name].append(adv._replace(rssi=rssi, scanner=name))
        for ads in out.values():
            ads.sort(key=lambda a: a.ts)
        return out

    def truth(self) -> list[dict[str, object]]:
        """Per contact, once a second from ``start_ts``: ``room``, the room it is in (None:
        outside), and ``doorway``, the other room of the doorway it stands in (else None)."""
        seconds = int(self.duration_s)
        rows = []
        for index, contact in enumerate(self.contacts):
            rooms: list[str | None] = [None] * seconds
            doorway: list[str | None] = [None] * seconds
            for stay in self.stays:
                if stay.who != index:
                    continue
                first = max(0, math.ceil(stay.path.start - self.start_ts))
                last = min(seconds - 1, int(stay.path.end - self.start_ts))
                for k in range(first, last + 1):
                    x, y = stay.path.position(self.start_ts + k)
                    room = self.plan.room_at(x, y)
                    rooms[k] = None if room is None else room.name
                    pair = self.plan.doorway_rooms(x, y) if room is not None else None
                    if pair is not None:
                        doorway[k] = pair[1].name if pair[0] is room else pair[0].name
            rows.append({"id": contact.id, "start_ts": self.start_ts, "room": rooms,
                         "doorway": doorway})
        return rows

    def write(self, out: FilePath) -> dict[str, FilePath]:
        """Write contacts.jsonl, trace-<scanner>.jsonl per scanner, truth.jsonl, rooms.json."""
        out.mkdir(parents=True, exist_ok=True)
        files = {"contacts": out / "contacts.jsonl", "truth": out / "truth.jsonl",
                 "rooms": out / "rooms.json"}
        files["contacts"].write_text(
            "".join(contact_to_line(c) + "\n" for c in self.contacts), encoding="utf-8")
        for scanner, ads in self.traces().items():
            path = files[f"trace:{scanner}"] = out / f"trace-{scanner}.jsonl"
            with path.open("w", encoding="utf-8") as handle:
                for adv in ads:
                    handle.write(json.dumps(advertisement_json(adv), separators=(",", ":")))
                    handle.write("\n")
        files["truth"].write_text(
            "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in self.truth()),
            encoding="utf-8")
        files["rooms"].write_text(json.dumps({
            "rooms": self.rooms_config(),
            "path_loss_exponent": self.plan.radio.path_loss_exponent,
            "start_ts": self.start_ts, "duration_s": self.duration_s,
        }, indent=1), encoding="utf-8")
        return files


# -- scoring a venue's room decisions against the truth -------------------------------------

@dataclass
class RoomTimeline:
    """The rooms a method reported for each contact: (ts, room or None) in order."""

    changes: dict[str, list[tuple[float, str | None]]] = field(default_factory=dict)

    def record(self, contact_id: str, ts: float, room: str | None) -> None:
        """The contact is in ``room`` (None: absent) from ``ts`` on."""
        self.changes.setdefault(contact_id, []).append((ts, room))

    def event(self, event: PresenceEvent | Mapping[str, Any]) -> None:
        """Record a venue event (a PresenceEvent or its SPEC §5 JSON object)."""
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
        """The contact's reported changes, in order."""
        yield from self.changes.get(contact_id, [])


def per_second(changes: list[tuple[float, str | None]], start_ts: float,
               seconds: int) -> list[str | None]:
    """The reported room at each whole second from ``start_ts``."""
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


def score_rooms(truth: list[dict[str, Any]], timeline: RoomTimeline) -> dict[str, float]:
    """Room scores of a timeline against ``VenueSimulation.truth()`` (see bench/venue.py)."""
    right = strict = right_clear = total = total_clear = right_settled = total_settled = 0
    absent = 0
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
            ok = said[k] == room or (said[k] is not None and said[k] == doorway[k])
            right += ok
            strict += said[k] == room
            absent += said[k] is None
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
        "room_accuracy_strict": strict / max(total, 1),
        "room_accuracy_away_from_doorways": right_clear / max(total_clear, 1),
        "room_accuracy_settled": right_settled / max(total_settled, 1),
        "absent_while_in_a_room": absent / max(total, 1),
        "room_changes_per_contact_hour": changes / hours,
        "true_room_changes_per_contact_hour": true_changes / hours,
        "moves_to_a_wrong_room_per_contact_hour": wrong_moves / hours,
        "flaps_per_contact_hour": flaps / hours,
    }



def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hallway.simulator.floorplan --out DIR``: write a multi-room simulation."""
    parser = argparse.ArgumentParser(prog="python -m hallway.simulator.floorplan",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", required=True, type=FilePath)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start", type=float, default=1795251600.0)
    parser.add_argument("--duration", type=float, default=1800.0)
    parser.add_argument("--rooms", type=int, default=3)
    parser.add_argument("--contacts", type=int, default=12)
    args = parser.parse_args(argv)
    sim = VenueSimulation(seed=args.seed, start_ts=args.start, duration_s=args.duration,
                          contacts=args.contacts, plan=FloorPlan.row(args.rooms))
    for name, path in sim.write(args.out).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
