"""Hypothesis drives the tracker with arbitrary sightings, silences, revocations and shutdowns.

Invariants checked after every step: per contact, events alternate arrived -> (zone)* ->
departed (never two arrivals in a row, zone changes only while present); event times never go
backwards; ``present()`` agrees with the events; and after a tick no contact is present whose
last sighting is older than the longest silence the tracker allows. A separate property: a
steady device whose readings stay within the zone hysteresis band never changes zone.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from hallway.config import ProximityConfig
from hallway.models import CHECKIN, DepartReason, EventType, KeyKind, PresenceEvent, Sighting
from hallway.proximity.distance import rssi_at
from hallway.proximity.tracker import PRESENT_STATES, Tracker

T0 = 1_790_000_000.0
CONTACTS = st.sampled_from(["a", "b", "c"])


class TrackerMachine(RuleBasedStateMachine):
    """A tracker and a model of what its events say."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ProximityConfig()
        self.tracker = Tracker(self.config)
        self.now = T0
        self.present: dict[str, bool] = {}
        self.last_heard: dict[str, float] = {}
        self.distance: dict[str, float] = {}
        self.last_event_ts = -math.inf

    def record(self, events: list[PresenceEvent]) -> None:
        for event in events:
            assert event.ts >= self.last_event_ts
            self.last_event_ts = event.ts
            here = self.present.get(event.contact_id, False)
            if event.type is EventType.ARRIVED:
                assert not here, "two arrivals in a row"
                self.present[event.contact_id] = True
            elif event.type is EventType.ZONE:
                assert here, "zone change of an absent contact"
                assert event.previous_zone != event.zone
            else:
                assert here, "departure of an absent contact"
                assert event.reason is not None
                assert event.dwell_s is not None
                assert event.dwell_s >= 0
                self.present[event.contact_id] = False

    @rule(contact=CONTACTS, distance=st.floats(0.2, 80.0))
    def walk(self, contact: str, distance: float) -> None:
        """The contact is now at ``distance`` (sightings follow it)."""
        self.distance[contact] = distance

    def _sight(self, contact: str, noise: int, power: int | None, via: KeyKind) -> None:
        model = rssi_at(self.distance.get(contact, 5.0),
                        measured_power_dbm=power if power is not None else -59,
                        exponent=self.config.path_loss_exponent)
        rssi = max(-126, min(20, round(model) + noise))
        self.record(self.tracker.observe(Sighting(self.now, contact, via, rssi, power, "hci0")))
        self.last_heard[contact] = self.now

    @rule(
        contact=CONTACTS,
        dt=st.floats(0.0, 6.0),
        noise=st.integers(-12, 12),
        power=st.one_of(st.none(), st.integers(-80, -40)),
        via=st.sampled_from(list(KeyKind)),
    )
    def sight(
        self, contact: str, dt: float, noise: int, power: int | None, via: KeyKind
    ) -> None:
        self.now += dt
        self._sight(contact, noise, power, via)

    @rule(
        contact=CONTACTS,
        count=st.integers(5, 80),
        interval=st.floats(0.1, 2.0),
        noise=st.lists(st.integers(-4, 4), min_size=1, max_size=8),
    )
    def burst(self, contact: str, count: int, interval: float, noise: list[int]) -> None:
        """A run of sightings from where the contact is, as a still phone sends them."""
        for n in range(count):
            self.now += interval
            self._sight(contact, noise[n % len(noise)], None, KeyKind.HALLWAY_V1)
            if n % 4 == 3:
                self.record(self.tracker.tick(self.now))

    @rule(contact=CONTACTS, dt=st.floats(0.0, 40.0), noise=st.integers(-8, 8))
    def check_in(self, contact: str, dt: float, noise: int) -> None:
        """A GATT check-in: the phone's level of the scanner against the scanner's power."""
        self.now += dt
        model = rssi_at(self.distance.get(contact, 5.0), measured_power_dbm=-59,
                        exponent=self.config.path_loss_exponent)
        rssi = max(-126, min(20, round(model) + noise))
        self.record(self.tracker.observe(Sighting(self.now, contact, KeyKind.HALLWAY_V1, rssi,
                                                  -59, "hci0", CHECKIN)))
        self.last_heard[contact] = self.now

    @rule(dt=st.floats(0.0, 400.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.record(self.tracker.tick(self.now))
        longest = self.tracker.longest_silence_s
        for info in self.tracker.present():
            assert self.now - self.last_heard[info.contact_id] <= longest

    @rule(contact=CONTACTS)
    def revoke(self, contact: str) -> None:
        events = self.tracker.remove(contact, now=self.now, reason=DepartReason.REVOKED)
        assert len(events) == int(self.present.get(contact, False))
        assert all(e.reason is DepartReason.REVOKED for e in events)
        self.record(events)

    @rule()
    def shutdown(self) -> None:
        events = self.tracker.shutdown(self.now)
        assert all(e.reason is DepartReason.SHUTDOWN for e in events)
        self.record(events)
        assert not any(self.present.values())

    @invariant()
    def present_matches_the_events(self) -> None:
        reported = {info.contact_id for info in self.tracker.present()}
        assert reported == {c for c, here in self.present.items() if here}
        for contact in ("a", "b", "c"):
            assert (self.tracker.state(contact) in PRESENT_STATES) == self.present.get(
                contact, False
            )


TestTrackerMachine = TrackerMachine.TestCase
TestTrackerMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


@settings(max_examples=200, deadline=None)
@given(
    distance=st.floats(0.3, 11.0),
    steps=st.lists(
        st.tuples(st.floats(0.05, 3.0), st.integers(-1, 1)), min_size=1, max_size=400
    ),
)
def test_a_steady_device_never_changes_zone_from_noise_within_the_band(
    distance: float, steps: list[tuple[float, int]]
) -> None:
    """Readings within ±1 dB of a level (a 2 dB band; the zone hysteresis is 3 dB)."""
    config = ProximityConfig()
    assert config.zone_hysteresis_db >= 2.0
    tracker = Tracker(config)
    centre = round(rssi_at(distance, measured_power_dbm=-59, exponent=config.path_loss_exponent))
    now = T0
    zones = []
    for dt, offset in steps:
        now += dt
        events = tracker.observe(Sighting(now, "x", KeyKind.IBEACON, centre + offset, -59, "hci0"))
        zones += [e for e in events if e.type is EventType.ZONE]
    assert zones == []


@settings(max_examples=150, deadline=None)
@given(
    distance=st.floats(0.3, 8.0),
    checkins=st.lists(st.tuples(st.floats(1.0, 30.0), st.integers(-3, 3)), min_size=2,
                      max_size=60),
)
def test_a_phone_checking_in_every_30_s_or_sooner_never_departs_between_checkins(
    distance: float, checkins: list[tuple[float, int]]
) -> None:
    """A still phone well inside the radius, checking in at any gaps of up to 30 s (ticked
    every second): arrives and never departs until it stops."""
    config = ProximityConfig()
    tracker = Tracker(config)
    level = round(rssi_at(distance, measured_power_dbm=-59, exponent=config.path_loss_exponent))
    now = T0
    events: list[PresenceEvent] = []
    for gap, noise in checkins:
        for second in range(1, int(gap) + 1):
            events += tracker.tick(now + second)
        now += gap
        events += tracker.observe(Sighting(now, "a", KeyKind.HALLWAY_V1, level + noise, -59,
                                           "hci0", CHECKIN))
    kinds = [e.type for e in events if e.type is not EventType.ZONE]
    assert kinds == [EventType.ARRIVED]
    # Then it stops: gone within the hold (65 s at most), with reason timeout.
    for second in range(1, 70):
        events += tracker.tick(now + second)
    assert events[-1].type is EventType.DEPARTED
    assert events[-1].reason is DepartReason.TIMEOUT
    assert events[-1].ts - now <= 65.0
