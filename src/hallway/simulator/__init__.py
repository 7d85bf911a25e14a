"""A simulated venue: people walking, dwelling, leaving and returning, and what a scanner hears.

``live_stream`` is the endless, time-ordered advertisement stream the daemon's simulated source
plays in real time; ``Simulation`` is a finite run that ``hallway simulate`` writes out as a
contacts file, a SPEC §2 trace and the ground truth (per contact: presence intervals within the
presence radius, and the true distance once a second). Everything is deterministic for a seed.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Iterable, Iterator
from typing import Any

from hallway.models import Advertisement, Contact
from hallway.simulator.devices import (
    CONTACT_MIX,
    STRANGER_MIX,
    Device,
    Transmitter,
    choose,
    make_contact,
    make_device,
)
from hallway.simulator.scenarios import SCENARIOS, Scenario, Visit
from hallway.simulator.world import Path, Shadowing, received

__all__ = [
    "Simulation",
    "live_stream",
    "scenario",
    "scenario_contacts",
    "scenario_names",
]

CONSENT_BEFORE_S = 86400.0
CONSENT_AFTER_S = 30 * 86400.0
ADV_DELAY_MAX_S = 0.010  # the random 0-10 ms the Core spec adds to every advertising event
TRUTH_STEP_S = 0.1


def scenario_names() -> list[str]:
    """The names of the simulated venues."""
    return sorted(SCENARIOS)


def scenario(name: str) -> Scenario:
    """A scenario by name; KeyError naming the choices if unknown."""
    try:
        return SCENARIOS[name]
    except KeyError:
        choices = ", ".join(scenario_names())
        raise KeyError(f"unknown scenario {name!r} (one of {choices})") from None


def _contact_devices(spec: Scenario, seed: int) -> list[Device]:
    devices = []
    for index in range(spec.contacts):
        rng = random.Random(f"{seed}:{spec.name}:contact:{index}")
        kind = choose(rng, CONTACT_MIX)
        devices.append(make_device(rng, kind, f"{seed}:{spec.name}:dev:{index}"))
    return devices


def scenario_contacts(
    name: str, *, seed: int, start_ts: float | None = None
) -> list[Contact]:
    """The contacts whose devices the scenario's stream contains (consent from a day before
    ``start_ts`` to 30 days after, or open-ended without it)."""
    spec = scenario(name)
    granted = None if start_ts is None else start_ts - CONSENT_BEFORE_S
    expires = None if start_ts is None else start_ts + CONSENT_AFTER_S
    contacts = []
    for index, device in enumerate(_contact_devices(spec, seed)):
        rng = random.Random(f"{seed}:{spec.name}:person:{index}")
        contacts.append(make_contact(rng, index, device, granted_at=granted, expires_at=expires,
                                     prefix=f"{spec.name}-{seed}"))
    return contacts


def _gaps(spec: Scenario, rng: random.Random, path: Path) -> list[tuple[float, float]]:
    """Silent pauses of a phone during a visit, in order and not overlapping."""
    gaps = []
    low, high = spec.gap_range_s
    t = path.start + rng.expovariate(1.0 / spec.gap_every_s)
    while t < path.end:
        length = rng.uniform(low, high)
        gaps.append((t, t + length))
        t += length + rng.expovariate(1.0 / spec.gap_every_s)
    return gaps


def _emit(
    spec: Scenario, device: Device, path: Path, rng: random.Random
) -> Iterator[Advertisement]:
    """The advertisements heard from one device during one visit, in time order."""
    radio = spec.radio
    transmitter = Transmitter(device)
    shadow = Shadowing(radio, rng)
    gaps = _gaps(spec, rng, path) if device.is_phone else []
    gap_index = 0
    interval = device.interval_s
    power = device.true_power_dbm
    exponent = radio.path_loss_exponent
    loss = radio.packet_loss
    uniform = rng.uniform
    t = path.start + uniform(0.0, interval)
    end = path.end
    while t <= end:
        while gap_index < len(gaps) and gaps[gap_index][1] <= t:
            gap_index += 1
        if gap_index < len(gaps) and gaps[gap_index][0] <= t:
            t = gaps[gap_index][1]
            continue
        rssi = received(
            rng,
            power_1m_dbm=power,
            distance_m=path.distance(t),
            exponent=exponent,
            disturbance_db=shadow.sample(t),
            packet_loss=loss,
        )
        if rssi is not None:
            yield transmitter.advertisement(t, rssi)
        t += interval + uniform(0.0, ADV_DELAY_MAX_S)


def _merge(
    spec: Scenario, seed: int, visits: Iterable[Visit], devices: list[Device], until: float | None
) -> Iterator[Advertisement]:
    """All visits' advertisements merged in time order (until ``until`` if given)."""
    heap: list[tuple[float, int, Advertisement, Iterator[Advertisement]]] = []
    counter = itertools.count()
    pending = iter(enumerate(visits))
    upcoming = next(pending, None)
    while True:
        head = heap[0][0] if heap else float("inf")
        while upcoming is not None and upcoming[1].path.start <= head:
            number, visit = upcoming
            rng = random.Random(f"{seed}:{spec.name}:visit:{number}")
            if visit.who is None:
                kind = choose(rng, STRANGER_MIX)
                device = make_device(rng, kind, f"{seed}:{spec.name}:s{number}")
            else:
                device = devices[visit.who]
            stream = _emit(spec, device, visit.path, rng)
            first = next(stream, None)
            if first is not None:
                heapq.heappush(heap, (first.ts, next(counter), first, stream))
            upcoming = next(pending, None)
            head = heap[0][0] if heap else float("inf")
        if not heap:
            return
        ts, _, adv, stream = heap[0]
        if until is not None and ts >= until:
            return
        following = next(stream, None)
        if following is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (following.ts, next(counter), following, stream))
        yield adv


LIVE_WARMUP_S = 300.0


def live_stream(name: str, *, seed: int, start_ts: float) -> Iterator[Advertisement]:
    """The endless, time-ordered advertisements of a scenario, from ``start_ts`` on.

    The venue is already in progress at ``start_ts`` (it was planned from ``LIVE_WARMUP_S``
    before), so a live demo shows people present within seconds, not after the first walk-in.
    """
    spec = scenario(name)
    planned_from = start_ts - LIVE_WARMUP_S
    plan = spec.plan(random.Random(f"{seed}:{spec.name}:plan"), planned_from, spec.contacts)
    stream = _merge(spec, seed, plan, _contact_devices(spec, seed), None)
    return itertools.dropwhile(lambda adv: adv.ts < start_ts, stream)


class Simulation:
    """A finite run of a scenario: contacts, the trace, and the truth to score against."""

    def __init__(
        self,
        name: str,
        *,
        seed: int,
        start_ts: float,
        duration_s: float | None = None,
        radius_m: float = 12.0,
    ) -> None:
        self.spec = scenario(name)
        self.seed = seed
        self.start_ts = start_ts
        self.duration_s = self.spec.duration_s if duration_s is None else duration_s
        self.end_ts = start_ts + self.duration_s
        self.radius_m = radius_m
        self.contacts = scenario_contacts(name, seed=seed, start_ts=start_ts)
        self._devices = _contact_devices(self.spec, seed)
        plan = self.spec.plan(random.Random(f"{seed}:{self.spec.name}:plan"), start_ts,
                              self.spec.contacts)
        self.visits = list(itertools.takewhile(lambda v: v.path.start < self.end_ts, plan))

    def advertisements(self) -> Iterator[Advertisement]:
        """The trace: every advertisement heard before the end, in time order."""
        return _merge(self.spec, self.seed, self.visits, self._devices, self.end_ts)

    def truth(self) -> list[dict[str, Any]]:
        """Per contact: presence intervals within the radius and the distance once a second."""
        by_contact: dict[int, list[Path]] = {}
        for visit in self.visits:
            if visit.who is not None:
                by_contact.setdefault(visit.who, []).append(visit.path)
        seconds = int(self.duration_s)
        out = []
        for index, contact in enumerate(self.contacts):
            paths = sorted(by_contact.get(index, []), key=lambda p: p.start)
            distances: list[float | None] = [None] * seconds
            intervals: list[list[float]] = []
            for path in paths:
                first = max(0, int(path.start - self.start_ts) + 1)
                last = min(seconds - 1, int(path.end - self.start_ts))
                for k in range(first, last + 1):
                    distances[k] = round(path.distance(self.start_ts + k), 2)
                intervals.extend(self._inside(path))
            out.append(
                {
                    "id": contact.id,
                    "device": self._devices[index].kind.value,
                    # What a venue measuring this device at 1 m would set as its calibration_db.
                    "offset_db": round(self._devices[index].offset_db, 2),
                    "radius_m": self.radius_m,
                    "start_ts": self.start_ts,
                    "present": intervals,
                    "distance_m": distances,
                }
            )
        return out

    def _inside(self, path: Path) -> list[list[float]]:
        """The intervals of a visit (clipped to the run) spent within the presence radius."""
        begin = max(path.start, self.start_ts)
        end = min(path.end, self.end_ts)
        intervals: list[list[float]] = []
        entered: float | None = None

        def at(t: float, inside: bool) -> None:
            nonlocal entered
            if inside and entered is None:
                entered = t
            elif not inside and entered is not None:
                intervals.append([round(entered, 2), round(t, 2)])
                entered = None

        points = path.points
        for (t0, x0, y0), (t1, x1, y1) in itertools.pairwise(points):
            lo, hi = max(t0, begin), min(t1, end)
            if hi <= lo:
                continue
            if x0 == x1 and y0 == y1:  # standing still: one look is enough
                at(lo, path.distance(lo) <= self.radius_m)
                continue
            steps = int((hi - lo) / TRUTH_STEP_S) + 1
            for step in range(steps + 1):
                t = min(lo + step * TRUTH_STEP_S, hi)
                at(t, path.distance(t) <= self.radius_m)
        at(end, False)
        return intervals

    def venue_config(self) -> str:
        """A config snippet with the venue's path-loss exponent, as a site survey finds it."""
        return (
            "# The simulated venue's radio, as a site survey would measure it.\n"
            "[proximity]\n"
            f"presence_radius_m = {self.radius_m}\n"
            f"path_loss_exponent = {self.spec.radio.path_loss_exponent}\n"
        )
