"""A simulated venue: people walking, dwelling, leaving and returning, and what a scanner hears.

``live_stream`` is the endless, time-ordered advertisement stream the daemon's simulated source
plays in real time; ``Simulation`` is a finite run that ``hallway simulate`` writes out as a
contacts file, a SPEC §2 trace and the ground truth (per contact: presence intervals within the
presence radius, and the true distance once a second). Everything is deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from hallway.identity.crypto import rpi_for_interval
from hallway.models import Advertisement, Contact
from hallway.parsing.checkin import encode_checkin
from hallway.simulator.devices import (
    CONTACT_MIX,
    STRANGER_MIX,
    Device,
    DeviceKind,
    PhoneSpread,
    Transmitter,
    choose,
    make_contact,
    make_device,
)
from hallway.simulator.scenarios import SCENARIOS, Scenario, Visit
from hallway.simulator.world import (
    Air,
    Fading,
    Path,
    PathBuilder,
    Shadowing,
    received,
    survives,
)

__all__ = [
    "Simulation",
    "live_stream",
    "scenario",
    "scenario_contacts",
    "scenario_names",
    "seed_fraction",
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
        kind = choose(rng, spec.contact_mix or CONTACT_MIX)
        devices.append(make_device(rng, kind, f"{seed}:{spec.name}:dev:{index}", spec.phones))
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
    return _with_network(contacts, random.Random(f"{seed}:{spec.name}:network"))


DISPLAY_SHARE = 0.85
"""Of the simulated people, the share who agreed to be shown on public screens."""


def _with_network(contacts: list[Contact], rng: random.Random) -> list[Contact]:
    """Most people may be shown (``display``), and each knows a few of the others (``knows``),
    drawn from their own random stream so the devices' streams stay as they were."""
    ids = [contact.id for contact in contacts]
    result = []
    for contact in contacts:
        others = [i for i in ids if i != contact.id]
        knows = frozenset(rng.sample(others, min(len(others), rng.randint(1, 4))))
        result.append(replace(contact, display=rng.random() < DISPLAY_SHARE, knows=knows))
    return result


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
    spec: Scenario, device: Device, path: Path, rng: random.Random, air: Air | None = None
) -> Iterator[Advertisement]:
    """The advertisements heard from one device during one visit, in time order."""
    if not spec.receiver.ideal:
        yield from _emit_real(spec, device, path, rng, air or Air())
        return
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


def _emit_real(
    spec: Scenario, device: Device, path: Path, rng: random.Random, air: Air
) -> Iterator[Advertisement]:
    """``_emit`` through a real receiver (``Receiver``): listening windows, Wi-Fi bursts,
    collisions with capture, the receiver's gain offset and multipath fading."""
    radio = spec.radio
    receiver = spec.receiver
    phase = receiver.scan_period_s * (seed_fraction(spec.name))
    transmitter = Transmitter(device)
    shadow = Shadowing(radio, rng)
    fading = Fading(receiver.rician_k, rng) if receiver.fading else None
    gaps = _gaps(spec, rng, path) if device.is_phone else []
    gap_index = 0
    interval = device.interval_s
    power = device.true_power_dbm + receiver.rx_offset_db
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
        disturbance = shadow.sample(t)
        if fading is not None:
            x, y = path.position(t)
            disturbance += fading.sample(t, x, y)
        if receiver.listening(t, phase):
            rssi = received(
                rng,
                power_1m_dbm=power,
                distance_m=path.distance(t),
                exponent=exponent,
                disturbance_db=disturbance,
                packet_loss=loss,
            )
            if rssi is not None and survives(rng, rssi, receiver, air):
                yield transmitter.advertisement(t, rssi)
        t += interval + uniform(0.0, ADV_DELAY_MAX_S)


def seed_fraction(text: str) -> float:
    """A fixed fraction in [0, 1) from a name (the phase of a scenario's scan windows)."""
    return (sum(text.encode()) * 0.618034) % 1.0


def _merge(
    spec: Scenario, seed: int, visits: Iterable[Visit], devices: list[Device], until: float | None
) -> Iterator[Advertisement]:
    """All visits' advertisements merged in time order (until ``until`` if given)."""
    air = Air()  # how many devices are on the air: the crowd that packets collide with
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
                device = make_device(rng, kind, f"{seed}:{spec.name}:s{number}", spec.phones)
            else:
                device = devices[visit.who]
            stream = _emit(spec, device, visit.path, rng, air)
            first = next(stream, None)
            if first is not None:
                heapq.heappush(heap, (first.ts, next(counter), first, stream))
            upcoming = next(pending, None)
            head = heap[0][0] if heap else float("inf")
        if not heap:
            return
        air.transmitting = len(heap)
        ts, _, adv, stream = heap[0]
        if until is not None and ts >= until:
            return
        following = next(stream, None)
        if following is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (following.ts, next(counter), following, stream))
        yield adv


SCANNER_POWER_DBM = -59.0  # the scanner's advertisement at 1 m, as a typical phone hears it
SCANNER_ADV_INTERVAL_S = 0.2
CHECKIN_PERIOD_S = (8.0, 12.0)  # a background app checks in about every 10 s while it hears us
CHECKIN_RETRY_S = 5.0  # ... and looks again this soon when it did not hear us
CHECKIN_LISTEN = 5  # scanner advertisements it listens to before writing (median of them)
CHECKIN_CONNECT_FAILS = 0.05  # connections that fail (the next period tries again)


def _checkins(spec: Scenario, device: Device, path: Path, rng: random.Random,
              period_s: tuple[float, float]) -> Iterator[tuple[float, bytes]]:
    """The check-ins a background phone makes during one visit: ``(ts, the 21 bytes)``.

    The phone hears the scanner's advertisements over the same radio as the scanner hears
    phones (its antenna's offset counts both ways), listens to a few and writes their median.
    """
    radio = spec.radio
    shadow = Shadowing(radio, rng)
    rpik = device.keys()[0]
    power = SCANNER_POWER_DBM + device.offset_db
    t = path.start + rng.uniform(0.0, period_s[1])
    while t <= path.end:
        heard = []
        for k in range(CHECKIN_LISTEN):
            at = t + k * SCANNER_ADV_INTERVAL_S
            rssi = received(rng, power_1m_dbm=power, distance_m=path.distance(at),
                            exponent=radio.path_loss_exponent,
                            disturbance_db=shadow.sample(at), packet_loss=radio.packet_loss)
            if rssi is not None:
                heard.append(rssi)
        if not heard:
            t += CHECKIN_RETRY_S
            continue
        t += CHECKIN_LISTEN * SCANNER_ADV_INTERVAL_S
        if rng.random() >= CHECKIN_CONNECT_FAILS and t <= path.end:
            level = sorted(heard)[len(heard) // 2]
            rpi = rpi_for_interval(rpik, int(t // 600))
            yield t, encode_checkin(rpi, heard_rssi=max(-128, min(126, level)),
                                    tx_power=device.nominal_power_dbm)
        t += rng.uniform(*period_s)


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
        radius_m: float | None = None,
        references: Sequence[float] = (),
        true_exponent: float | None = None,
    ) -> None:
        """``radius_m``: the presence radius of the truth (None: the scenario's own, else 12).
        ``references``: distances (m) of reference beacons standing by the scanner all the
        time (contacts ``ref-1``...; in ``venue_config`` as ``[[proximity.reference]]``).
        ``true_exponent``: the venue's real path-loss exponent, where it differs from the one
        its config says (``venue_config`` keeps the scenario's)."""
        self.spec = scenario(name)
        self.configured_exponent = self.spec.radio.path_loss_exponent
        if true_exponent is not None:
            self.spec = dataclasses.replace(
                self.spec,
                radio=dataclasses.replace(self.spec.radio, path_loss_exponent=true_exponent),
            )
        self.seed = seed
        self.start_ts = start_ts
        self.duration_s = self.spec.duration_s if duration_s is None else duration_s
        self.end_ts = start_ts + self.duration_s
        if radius_m is None:
            radius_m = self.spec.radius_m if self.spec.radius_m is not None else 12.0
        self.radius_m = radius_m
        self.contacts = scenario_contacts(name, seed=seed, start_ts=start_ts)
        self._devices = _contact_devices(self.spec, seed)
        plan = self.spec.plan(random.Random(f"{seed}:{self.spec.name}:plan"), start_ts,
                              self.spec.contacts)
        self.visits = list(itertools.takewhile(lambda v: v.path.start < self.end_ts, plan))
        self.references = tuple(references)
        if self.references:
            self._add_references(seed, start_ts)

    def _add_references(self, seed: int, start_ts: float) -> None:
        """iBeacon badges at the reference distances, around the scanner, all the run."""
        standing: list[Visit] = []
        for number, distance in enumerate(self.references):
            rng = random.Random(f"{seed}:{self.spec.name}:reference:{number}")
            device = make_device(rng, DeviceKind.IBEACON, f"{seed}:ref:{number}", PhoneSpread())
            device.interval_s = 0.5
            index = len(self._devices)
            self._devices.append(device)
            contact = make_contact(rng, index, device, granted_at=self.contacts[0].granted_at,
                                   expires_at=self.contacts[0].expires_at)
            self.contacts.append(dataclasses.replace(contact, id=f"ref-{number + 1}",
                                                     name=f"Reference beacon {number + 1}"))
            angle = 2.0 * math.pi * number / max(len(self.references), 1) + 0.4
            x, y = distance * math.cos(angle), distance * math.sin(angle)
            path = PathBuilder(start_ts - 1.0, x, y, speed_mps=1.0)
            standing.append(Visit(index, path.stand(self.duration_s + 10.0).build()))
        self.visits = standing + self.visits

    def advertisements(self) -> Iterator[Advertisement]:
        """The trace: every advertisement heard before the end, in time order."""
        return _merge(self.spec, self.seed, self.visits, self._devices, self.end_ts)

    def checkins(self, *, period_s: tuple[float, float] = CHECKIN_PERIOD_S
                 ) -> list[tuple[float, int, bytes]]:
        """The GATT check-ins of the background phones (``HALLWAY_CHECKIN``) before the end:
        ``(ts, contact index, the 21 bytes written)``, in time order; each phone checks in
        every ``period_s`` (a uniform draw) while it hears the scanner. Not in the trace: a
        check-in is a write to the scanner, not an advertisement."""
        out: list[tuple[float, int, bytes]] = []
        for number, visit in enumerate(self.visits):
            if visit.who is None:
                continue
            device = self._devices[visit.who]
            if device.kind is not DeviceKind.HALLWAY_CHECKIN:
                continue
            rng = random.Random(f"{self.seed}:{self.spec.name}:checkin:{number}")
            out.extend((ts, visit.who, data) for ts, data in _checkins(
                self.spec, device, visit.path, rng, period_s) if ts < self.end_ts)
        out.sort(key=lambda item: item[0])
        return out

    def truth(self) -> list[dict[str, Any]]:
        """Per contact: presence intervals within the radius and the distance once a second."""
        by_contact: dict[int, list[Path]] = {}
        for visit in self.visits:
            if visit.who is not None:
                by_contact.setdefault(visit.who, []).append(visit.path)
        seconds = int(self.duration_s)
        out = []
        for index, contact in enumerate(self.contacts[: self.spec.contacts]):
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
                    # What a venue measuring this device at 1 m would set as its calibration_db
                    # (the receiver's own gain error included: the venue measures through it).
                    "offset_db": round(
                        self._devices[index].offset_db + self.spec.receiver.rx_offset_db, 2
                    ),
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
        zones = ""
        if self.spec.zones_m is not None and self.radius_m == self.spec.radius_m:
            immediate, near = self.spec.zones_m
            zones = f"immediate_m = {immediate}\nnear_m = {near}\n"
        elif self.radius_m <= 4.0:
            zones = f"immediate_m = {self.radius_m / 5:g}\nnear_m = {self.radius_m / 2:g}\n"
        references = "".join(
            f"\n[[proximity.reference]]\ncontact = \"ref-{number + 1}\"\n"
            f"distance_m = {distance}\n"
            for number, distance in enumerate(self.references)
        )
        return (
            "# The simulated venue's radio, as a site survey would measure it.\n"
            "[proximity]\n"
            f"presence_radius_m = {self.radius_m}\n"
            f"path_loss_exponent = {self.configured_exponent}\n"
            f"{zones}{references}"
        )
