"""The simulated venues: where people come from, where they stand, for how long.

The scanner is always at the origin. A planner yields visits in order of their start, without
end (the live demo runs as long as it is left running); a finite simulation takes the visits
that start before its end. A contact is never in two visits at once; strangers come and go as
fresh devices.

- ``booth``: an expo booth on an aisle. Visitors walk up the aisle, stop at the booth (1-3 m)
  for a few minutes, sometimes chat at the neighbouring booth (10-16 m, around the presence
  edge), and walk on; others just pass by along the aisle 2-6 m away. Open floor.
- ``keynote``: a keynote hall (40 m wide, 30 rows), the scanner a kiosk at the front by the
  stage. Sessions of 50 minutes: people come in through the doors over the first minutes, sit
  for the talk (phones locked, so many silent gaps), a few step out and come back, all leave at
  the end. Bodies everywhere: a higher path-loss exponent, more shadowing, many collisions.
- ``corridor``: a corridor with the scanner on the wall. Mostly passers-by (about 20 s inside
  the radius), some stop to chat, a coffee queue around the presence edge.
- ``meetup``: the lounge of a meetup, the scanner on the bar table in the middle: a contact
  walks in about every 8 s, stands at two or three spots (at the table, in a group a few
  metres off, by the wall) for 20-70 s each and leaves. Busy enough that ``hallway demo``,
  whose default venue it is, shows arrivals, zone changes and departures every minute.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hallway.simulator.world import Path, PathBuilder, Radio


@dataclass(frozen=True, slots=True)
class Visit:
    """One stay of one person: ``who`` is a contact index, or None for a fresh stranger."""

    who: int | None
    path: Path


@dataclass(frozen=True, slots=True)
class Scenario:
    """A venue: its radio, its people, and how they move."""

    name: str
    description: str
    duration_s: float  # length of a `hallway simulate` run unless told otherwise
    radio: Radio
    contacts: int
    gap_every_s: float  # a phone pauses on average once per this many seconds present
    gap_range_s: tuple[float, float]
    pace: str  # how busy it is, for people watching it live
    plan: Callable[[random.Random, float, int], Iterator[Visit]]


class _Busy:
    """Which contacts are in a visit until when, to pick free ones."""

    def __init__(self, count: int) -> None:
        self.until = [-math.inf] * count

    def pick(self, rng: random.Random, t: float) -> int | None:
        free = [i for i, until in enumerate(self.until) if until < t]
        return rng.choice(free) if free else None

    def hold(self, who: int, until: float) -> None:
        self.until[who] = until + 30.0


def _speed(rng: random.Random) -> float:
    return rng.uniform(1.0, 1.4)


def _merge_by_start(batches: list[Visit]) -> list[Visit]:
    return sorted(batches, key=lambda v: v.path.start)


# -- booth ------------------------------------------------------------------------------------

_AISLE_END = 60.0


def _booth_plan(rng: random.Random, start: float, contacts: int) -> Iterator[Visit]:
    busy = _Busy(contacts)
    visitor_rate, passer_rate, stranger_rate = 1 / 75, 1 / 50, 1 / 5
    total = visitor_rate + passer_rate + stranger_rate
    # Devices standing at the neighbouring booths all day: laptops, demo phones.
    for _ in range(12):
        x = rng.choice((-1, 1)) * rng.uniform(8.0, 30.0)
        y = rng.uniform(4.0, 9.0)
        yield Visit(None, PathBuilder(start, x, y, speed_mps=1.0).stand(10 * 86400.0).build())
    t = start
    while True:
        t += rng.expovariate(total)
        pick = rng.random() * total
        side = rng.choice((-1.0, 1.0))
        lane = rng.uniform(2.0, 6.0)
        path = PathBuilder(t, side * _AISLE_END, lane, speed_mps=_speed(rng))
        if pick < visitor_rate:
            who = busy.pick(rng, t)
            if who is None:
                continue
            path.walk(side * rng.uniform(2.0, 4.0), lane)
            path.walk(rng.uniform(-1.5, 1.5), rng.uniform(1.0, 2.5))
            path.stand(rng.uniform(60.0, 480.0))
            if rng.random() < 0.3:  # a chat at the neighbouring booth, around the edge
                nx, ny = -side * rng.uniform(8.0, 14.0), rng.uniform(4.0, 7.0)
                path.walk(nx, lane).walk(nx, ny).stand(rng.uniform(60.0, 300.0)).walk(nx, lane)
            path.walk(-side * _AISLE_END, rng.uniform(2.0, 6.0))
            busy.hold(who, path.t)
            yield Visit(who, path.build())
        elif pick < visitor_rate + passer_rate:
            who = busy.pick(rng, t)
            if who is None:
                continue
            path.walk(-side * _AISLE_END, lane)
            busy.hold(who, path.t)
            yield Visit(who, path.build())
        else:
            if rng.random() < 0.15:
                path.walk(side * rng.uniform(0.0, 20.0), lane).stand(rng.uniform(20.0, 120.0))
            path.walk(-side * _AISLE_END, lane)
            yield Visit(None, path.build())


# -- keynote ----------------------------------------------------------------------------------

_SESSION_S = 3000.0
_TALK_S = 40 * 60.0
_HALL_X = 20.0  # seats from -20 to 20 m across
_FIRST_ROW, _ROWS = 2.0, 30  # rows 1 m apart from 2 m to 31 m behind the kiosk
# (door, a point 15 m outside it): two at the back, two at the front sides
_DOORS = (
    ((-_HALL_X - 1.0, 33.0), (-_HALL_X - 1.0, 48.0)),
    ((_HALL_X + 1.0, 33.0), (_HALL_X + 1.0, 48.0)),
    ((-_HALL_X - 1.0, 3.0), (-_HALL_X - 16.0, 3.0)),
    ((_HALL_X + 1.0, 3.0), (_HALL_X + 16.0, 3.0)),
)
_AISLES = (-_HALL_X - 0.5, -7.0, 7.0, _HALL_X + 0.5)


@dataclass(frozen=True, slots=True)
class _Seat:
    x: float
    y: float
    aisle: float
    door: tuple[tuple[float, float], tuple[float, float]]
    speed: float

    def walk_in(self, t: float) -> PathBuilder:
        (door_x, door_y), (out_x, out_y) = self.door
        path = PathBuilder(t, out_x, out_y, speed_mps=self.speed)
        return path.walk(door_x, door_y).walk(self.aisle, door_y).walk(self.aisle, self.y).walk(
            self.x, self.y
        )

    def walk_out(self, path: PathBuilder) -> PathBuilder:
        (door_x, door_y), (out_x, out_y) = self.door
        return path.walk(self.aisle, self.y).walk(self.aisle, door_y).walk(door_x, door_y).walk(
            out_x, out_y
        )


def _keynote_session(
    rng: random.Random, t0: float, contacts: int, attendees: int
) -> list[Visit]:
    visits: list[Visit] = []
    taken: set[tuple[int, int]] = set()
    chosen = rng.sample(range(contacts), min(contacts, int(attendees * 0.4)))
    people: list[int | None] = [*chosen, *([None] * (attendees - len(chosen)))]
    across = int(_HALL_X / 0.6)
    for who in people:
        while True:
            spot = (rng.randrange(-across, across + 1), rng.randrange(0, _ROWS))
            if spot not in taken:
                taken.add(spot)
                break
        x, y = spot[0] * 0.6, _FIRST_ROW + spot[1]
        door = rng.choice(_DOORS[:2]) if rng.random() < 0.7 else rng.choice(_DOORS[2:])
        seat = _Seat(
            x=x, y=y, aisle=min(_AISLES, key=lambda a: abs(a - x)), door=door,
            speed=_speed(rng) * 0.8,
        )
        arrive = t0 + rng.betavariate(2, 5) * 12 * 60.0 - 120.0
        if rng.random() < 0.1:
            leave = t0 + rng.uniform(15 * 60.0, 35 * 60.0)
        else:
            leave = t0 + _TALK_S + rng.uniform(0.0, 4 * 60.0)
        path = seat.walk_in(arrive)
        if who is not None and rng.random() < 0.15 and leave - path.t > 20 * 60.0:
            # Steps out for a few minutes and comes back to the same seat.
            out_at = rng.uniform(path.t + 300.0, leave - 600.0)
            path.stand(out_at - path.t)
            visits.append(Visit(who, seat.walk_out(path).build()))
            path = seat.walk_in(path.t + rng.uniform(120.0, 480.0))
        path.stand(max(leave - path.t, 30.0))
        visits.append(Visit(who, seat.walk_out(path).build()))
    return visits


def _keynote_plan(rng: random.Random, start: float, contacts: int) -> Iterator[Visit]:
    # The scanner is a kiosk at the front of the hall, by the stage (the origin).
    for _ in range(25):  # laptops and gear on the stage and at the desks
        x, y = rng.uniform(-_HALL_X, _HALL_X), rng.uniform(-8.0, 1.0)
        yield Visit(None, PathBuilder(start, x, y, speed_mps=1.0).stand(10 * 86400.0).build())
    session = 0
    while True:
        t0 = start + 150.0 + session * _SESSION_S
        yield from _merge_by_start(_keynote_session(rng, t0, contacts, attendees=360))
        session += 1


# -- corridor ---------------------------------------------------------------------------------

_CORRIDOR_END = 45.0


def _corridor_plan(rng: random.Random, start: float, contacts: int) -> Iterator[Visit]:
    busy = _Busy(contacts)
    contact_rate, stranger_rate = 1 / 25, 1 / 6
    total = contact_rate + stranger_rate
    t = start
    while True:
        t += rng.expovariate(total)
        side = rng.choice((-1.0, 1.0))
        lane = rng.uniform(0.6, 2.6)
        path = PathBuilder(t, side * _CORRIDOR_END, lane, speed_mps=_speed(rng))
        stop = rng.random()
        if stop < 0.12:  # a chat somewhere along the corridor
            path.walk(side * rng.uniform(-25.0, 25.0), lane).stand(rng.uniform(30.0, 300.0))
        elif stop < 0.2:  # the coffee queue, around the presence edge
            path.walk(rng.uniform(-16.0, -11.0), rng.uniform(0.8, 2.4)).stand(
                rng.uniform(60.0, 240.0)
            )
        path.walk(-side * _CORRIDOR_END, rng.uniform(0.6, 2.6))
        if rng.random() < contact_rate / total:
            who = busy.pick(rng, t)
            if who is None:
                continue
            busy.hold(who, path.t)
            yield Visit(who, path.build())
        else:
            yield Visit(None, path.build())


# -- meetup -----------------------------------------------------------------------------------

_LOUNGE_DOOR = 16.0  # the doors, left and right, out of the presence radius
# Where people stand, by zone (distance from the scanner, m): at the bar table, in a group
# nearby, by the wall; each spot is a distance well inside its zone.
_SPOTS = ((0.4, 0.8), (1.8, 3.0), (6.0, 9.0))


def _meetup_plan(rng: random.Random, start: float, contacts: int) -> Iterator[Visit]:
    busy = _Busy(contacts)
    contact_rate, stranger_rate = 1 / 8, 1 / 12
    total = contact_rate + stranger_rate
    for _ in range(6):  # laptops and a speaker on the tables
        angle, r = rng.uniform(0.0, 2 * math.pi), rng.uniform(2.0, 10.0)
        yield Visit(None, PathBuilder(start, r * math.cos(angle), r * math.sin(angle),
                                      speed_mps=1.0).stand(10 * 86400.0).build())
    t = start
    while True:
        t += rng.expovariate(total)
        side = rng.choice((-1.0, 1.0))
        path = PathBuilder(t, side * _LOUNGE_DOOR, rng.uniform(-2.0, 2.0), speed_mps=_speed(rng))
        if rng.random() < contact_rate / total:
            who = busy.pick(rng, t)
            if who is None:
                continue
            zones = rng.sample(range(len(_SPOTS)), rng.choice((2, 2, 3)))
            for zone in zones:
                low, high = _SPOTS[zone]
                angle, r = rng.uniform(0.0, 2 * math.pi), rng.uniform(low, high)
                path.walk(r * math.cos(angle), r * math.sin(angle)).stand(rng.uniform(20.0, 70.0))
            path.walk(rng.choice((-1.0, 1.0)) * _LOUNGE_DOOR, rng.uniform(-2.0, 2.0))
            busy.hold(who, path.t)
            yield Visit(who, path.build())
        else:  # a stranger crossing the room, or stopping for a drink
            if rng.random() < 0.3:
                path.walk(rng.uniform(-8.0, 8.0), rng.uniform(-6.0, 6.0)).stand(
                    rng.uniform(30.0, 180.0)
                )
            path.walk(-side * _LOUNGE_DOOR, rng.uniform(-2.0, 2.0))
            yield Visit(None, path.build())


SCENARIOS: dict[str, Scenario] = {
    "booth": Scenario(
        name="booth",
        description="an expo booth on an aisle: visitors stop for minutes, others pass by",
        duration_s=3600.0,
        radio=Radio(path_loss_exponent=2.0, shadowing_db=6.0, packet_loss=0.15),
        contacts=60,
        gap_every_s=600.0,
        gap_range_s=(20.0, 90.0),
        pace="a contact stops by about every 75 s for 1-8 minutes, another passes about every 50 s",
        plan=_booth_plan,
    ),
    "keynote": Scenario(
        name="keynote",
        description="a keynote hall, kiosk by the stage: everyone seated, phones often silent",
        duration_s=3000.0,
        radio=Radio(path_loss_exponent=2.3, shadowing_db=7.0, packet_loss=0.3),
        contacts=150,
        gap_every_s=180.0,
        gap_range_s=(20.0, 90.0),
        pace="every 50 minutes 360 people (40 % contacts) come in over 12 minutes and sit",
        plan=_keynote_plan,
    ),
    "corridor": Scenario(
        name="corridor",
        description="a corridor of passers-by, a few chats, a coffee queue at the edge",
        duration_s=3600.0,
        radio=Radio(path_loss_exponent=1.8, shadowing_db=5.0, packet_loss=0.15),
        contacts=80,
        gap_every_s=600.0,
        gap_range_s=(20.0, 90.0),
        pace="a contact passes about every 25 s (half a minute in range), a few stop to chat",
        plan=_corridor_plan,
    ),
    "meetup": Scenario(
        name="meetup",
        description="a meetup's lounge, the scanner on the bar table: people mingle and move on",
        duration_s=1800.0,
        radio=Radio(path_loss_exponent=2.0, shadowing_db=4.0, packet_loss=0.1),
        contacts=40,
        gap_every_s=900.0,
        gap_range_s=(10.0, 40.0),
        pace="a contact walks in about every 8 s and stays 1-3 minutes at two or three spots",
        plan=_meetup_plan,
    ),
}
