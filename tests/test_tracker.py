"""The proximity tracker on hand-made sighting streams: arrivals, zones, pauses, departures."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from hallway.config import ProximityConfig
from hallway.models import DepartReason, EventType, KeyKind, PresenceEvent, Sighting
from hallway.proximity.distance import distance_m, rssi_at
from hallway.proximity.filter import LevelFilter
from hallway.proximity.tracker import State, Tracker
from hallway.proximity.zones import Zone, ZoneMap

T0 = 1_790_000_000.0
POWER = -59


def rssi_for(distance: float, exponent: float = 2.0) -> float:
    return rssi_at(distance, measured_power_dbm=POWER, exponent=exponent)


class Run:
    """Drives a tracker the way the pipeline does: sightings in time order, a tick a second."""

    def __init__(self, config: ProximityConfig | None = None) -> None:
        self.tracker = Tracker(config or ProximityConfig())
        self.now = T0
        self.next_tick = T0 + 1.0
        self.events: list[PresenceEvent] = []

    def advance(self, until: float) -> None:
        while self.next_tick <= until:
            self.events += self.tracker.tick(self.next_tick)
            self.next_tick += 1.0
        self.now = until

    def sight(
        self, rssi: float, *, contact: str = "c-1", via: KeyKind = KeyKind.HALLWAY_V1,
        power: int | None = POWER, calibration_db: float = 0.0,
    ) -> list[PresenceEvent]:
        new = self.tracker.observe(
            Sighting(self.now, contact, via, round(rssi), power, "hci0"),
            calibration_db=calibration_db,
        )
        self.events += new
        return new

    def stream(
        self, seconds: float, rssi: Callable[[float], float], *, interval: float = 0.5,
        contact: str = "c-1", rng: random.Random | None = None, noise_db: float = 0.0,
        power: int | None = POWER, via: KeyKind = KeyKind.HALLWAY_V1,
        floor_dbm: float | None = None,
    ) -> None:
        """Sightings every ``interval`` s for ``seconds``; ``rssi(t)`` with t from 0; packets
        below ``floor_dbm`` are lost."""
        start = self.now
        t = 0.0
        while t < seconds:
            self.advance(start + t)
            value = rssi(t) + (rng.gauss(0.0, noise_db) if rng else 0.0)
            if floor_dbm is None or value >= floor_dbm:
                self.sight(value, contact=contact, power=power, via=via)
            t += interval
        self.advance(start + seconds)

    def of(self, kind: EventType, contact: str = "c-1") -> list[PresenceEvent]:
        return [e for e in self.events if e.type is kind and e.contact_id == contact]


def test_a_steady_device_near_arrives_after_the_confirmation_time() -> None:
    run = Run()
    run.stream(1.5, lambda t: rssi_for(2.0))
    assert run.of(EventType.ARRIVED) == []
    run.stream(3.0, lambda t: rssi_for(2.0))
    [arrived] = run.of(EventType.ARRIVED)
    assert arrived.ts - T0 >= ProximityConfig().arrive_confirm_s
    assert arrived.zone == "near"
    assert arrived.distance_m == pytest.approx(2.0, rel=0.05)
    assert arrived.rssi == pytest.approx(rssi_for(2.0), abs=1.0)
    assert arrived.via is KeyKind.HALLWAY_V1
    [info] = run.tracker.present()
    assert info.contact_id == "c-1"
    assert info.since == arrived.ts
    assert info.zone == "near"


def test_a_device_beyond_the_radius_never_arrives() -> None:
    run = Run()
    run.stream(300, lambda t: rssi_for(20.0), rng=random.Random(1), noise_db=4.0)
    assert run.events == []
    assert run.tracker.present() == []


def test_zone_follows_the_distance_with_events_carrying_the_previous_zone() -> None:
    run = Run()
    run.stream(20, lambda t: rssi_for(0.5))
    run.stream(30, lambda t: rssi_for(2.5))
    run.stream(30, lambda t: rssi_for(8.0))
    zones = [(e.previous_zone, e.zone) for e in run.of(EventType.ZONE)]
    assert run.of(EventType.ARRIVED)[0].zone == "immediate"
    assert zones == [("immediate", "near"), ("near", "far")]


def test_walking_away_departs_out_of_range_soon_after_crossing_the_radius() -> None:
    run = Run()
    run.stream(120, lambda t: rssi_for(3.0), rng=random.Random(2), noise_db=4.0)
    assert len(run.of(EventType.ARRIVED)) == 1
    # Walks away at 1.2 m/s: crosses the 12 m radius after 7.5 s.
    run.stream(60, lambda t: rssi_for(3.0 + 1.2 * t), rng=random.Random(3), noise_db=4.0)
    [departed] = run.of(EventType.DEPARTED)
    assert departed.reason is DepartReason.OUT_OF_RANGE
    crossed = T0 + 120 + 7.5
    assert 0 < departed.ts - crossed < 20
    assert departed.dwell_s == pytest.approx(departed.ts - run.of(EventType.ARRIVED)[0].ts)


def test_a_locked_phone_that_was_steady_and_near_is_held_through_a_long_pause() -> None:
    run = Run()
    run.stream(120, lambda t: rssi_for(4.0), rng=random.Random(4), noise_db=5.0)
    run.advance(run.now + 90)  # a locked iPhone says nothing for 90 s
    assert run.of(EventType.DEPARTED) == []
    assert run.tracker.state("c-1") is State.SILENT
    assert [p.contact_id for p in run.tracker.present()] == ["c-1"]
    run.stream(30, lambda t: rssi_for(4.0), rng=random.Random(5), noise_db=5.0)
    assert run.tracker.state("c-1") is State.PRESENT
    assert len(run.of(EventType.ARRIVED)) == 1
    assert run.of(EventType.DEPARTED) == []


def test_a_phone_silent_past_the_hold_departs_with_timeout() -> None:
    config = ProximityConfig()
    run = Run(config)
    run.stream(120, lambda t: rssi_for(4.0))
    last = run.tracker.last_heard("c-1")
    assert last is not None
    run.advance(run.now + config.quiet_hold_s + 5)
    [departed] = run.of(EventType.DEPARTED)
    assert departed.reason is DepartReason.TIMEOUT
    assert departed.ts == pytest.approx(last + config.quiet_hold_s, abs=1.0)
    assert run.tracker.present() == []


def test_a_signal_that_fades_out_departs_quickly_not_after_the_hold() -> None:
    config = ProximityConfig()
    run = Run(config)
    run.stream(120, lambda t: rssi_for(3.0))
    # Walks off towards the edge and stops being heard on the way (a door closes behind).
    run.stream(7, lambda t: rssi_for(3.0 + 1.2 * t))
    run.advance(run.now + 120)
    [departed] = run.of(EventType.DEPARTED)
    assert departed.reason is DepartReason.OUT_OF_RANGE
    assert departed.ts - run.tracker.last_heard("c-1") <= config.fade_timeout_s + 1.5  # type: ignore[operator]


def test_outliers_do_not_move_a_steady_device() -> None:
    rng = random.Random(6)
    run = Run()

    def with_drops(t: float) -> float:
        return rssi_for(2.0) - (25.0 if rng.random() < 0.1 else 0.0)

    run.stream(600, with_drops, interval=0.3)
    assert len(run.of(EventType.ARRIVED)) == 1
    assert run.of(EventType.DEPARTED) == []
    assert run.of(EventType.ZONE) == []


def test_a_still_phone_near_a_zone_edge_does_not_flap() -> None:
    """±6 dB of noise at 3.8 m (just inside `near`) for ten minutes: a handful of zone
    changes at most, where a raw reading would flip several times a minute."""
    run = Run()
    rng = random.Random(7)
    run.stream(600, lambda t: rssi_for(3.8), rng=rng, noise_db=6.0)
    assert len(run.of(EventType.ARRIVED)) == 1
    assert run.of(EventType.DEPARTED) == []
    assert len(run.of(EventType.ZONE)) <= 2


def test_a_still_phone_at_the_presence_edge_does_not_flap() -> None:
    run = Run()
    run.stream(900, lambda t: rssi_for(11.0), rng=random.Random(8), noise_db=6.0)
    arrivals = len(run.of(EventType.ARRIVED))
    assert arrivals <= 2
    assert len(run.of(EventType.DEPARTED)) <= arrivals


def test_the_advertising_interval_is_learned_per_contact() -> None:
    run = Run()
    run.stream(30, lambda t: rssi_for(3.0), interval=0.2, contact="fast")
    run.stream(60, lambda t: rssi_for(3.0), interval=2.0, contact="slow")
    assert run.tracker.interval_s("fast") == pytest.approx(0.2, rel=0.05)
    assert run.tracker.interval_s("slow") == pytest.approx(2.0, rel=0.05)
    assert run.tracker.interval_s("never") is None


def test_a_slow_advertiser_is_not_called_quiet_between_its_packets() -> None:
    run = Run()
    run.stream(200, lambda t: rssi_for(3.0), interval=3.0)
    assert run.tracker.state("c-1") is State.PRESENT or run.tracker.state("c-1") is State.SILENT
    run.stream(10, lambda t: rssi_for(3.0), interval=3.0)
    assert run.of(EventType.DEPARTED) == []


def test_measured_power_and_calibration_set_the_distance() -> None:
    run = Run()
    run.stream(5, lambda t: -70.0, power=-70, contact="loud")  # -70 at 1 m: 1 m away
    run.stream(5, lambda t: -70.0, power=None, contact="default")  # default -59: 3.5 m
    run.now += 1
    run.sight(-70.0, contact="calibrated", power=-59, calibration_db=-11.0)
    for _ in range(10):
        run.now += 0.5
        run.sight(-70.0, contact="calibrated", power=-59, calibration_db=-11.0)
    run.advance(run.now + 1)
    distances = {p.contact_id: p.distance_m for p in run.tracker.present()}
    assert distances["loud"] == pytest.approx(1.0, rel=0.05)
    assert distances["default"] == pytest.approx(distance_m(-70, measured_power_dbm=-59,
                                                            exponent=2.0), rel=0.05)
    assert distances["calibrated"] == pytest.approx(1.0, rel=0.05)


def test_per_kind_default_power_is_used_when_the_frame_has_none() -> None:
    config = ProximityConfig(measured_power_dbm={"irk": -65})
    tracker = Tracker(config)
    for n in range(10):
        tracker.observe(Sighting(T0 + n * 0.5, "p", KeyKind.IRK, -65, None, "hci0"))
        tracker.observe(Sighting(T0 + n * 0.5, "b", KeyKind.IBEACON, -65, None, "hci0"))
    distances = {p.contact_id: p.distance_m for p in tracker.present()}
    assert distances["p"] == pytest.approx(1.0, rel=0.05)
    assert distances["b"] == pytest.approx(2.0, rel=0.05)  # -59 default: 6 dB = 2x at n=2


def test_remove_departs_a_present_contact_with_the_given_reason_and_forgets_it() -> None:
    run = Run()
    run.stream(10, lambda t: rssi_for(2.0))
    [departed] = run.tracker.remove("c-1", now=run.now, reason=DepartReason.REVOKED)
    assert departed.type is EventType.DEPARTED
    assert departed.reason is DepartReason.REVOKED
    assert departed.ts == run.now
    assert run.tracker.present() == []
    assert run.tracker.interval_s("c-1") is None
    assert run.tracker.remove("c-1", now=run.now, reason=DepartReason.REVOKED) == []
    assert run.tracker.remove("nobody", now=run.now, reason=DepartReason.REVOKED) == []


def test_shutdown_departs_everyone_present_and_only_them() -> None:
    run = Run()
    run.stream(30, lambda t: rssi_for(2.0), contact="a")  # then paused, but held
    run.stream(10, lambda t: rssi_for(2.0), contact="b")
    run.stream(10, lambda t: rssi_for(40.0), contact="far")
    events = run.tracker.shutdown(run.now)
    assert sorted(e.contact_id for e in events) == ["a", "b"]
    assert all(e.reason is DepartReason.SHUTDOWN for e in events)
    assert run.tracker.present() == []
    assert run.tracker.tick(run.now + 1000) == []


def test_present_count_counts_the_present_list_without_building_it() -> None:
    run = Run()
    run.stream(30, lambda t: rssi_for(2.0), contact="a")
    run.stream(10, lambda t: rssi_for(2.0), contact="b")
    run.stream(10, lambda t: rssi_for(40.0), contact="far")  # heard, never present
    assert [p.contact_id for p in run.tracker.present()] == ["a", "b"]
    assert run.tracker.present_count() == 2
    run.tracker.remove("a", now=run.now, reason=DepartReason.REVOKED)
    assert run.tracker.present_count() == len(run.tracker.present()) == 1


def test_a_departed_contact_can_arrive_again() -> None:
    run = Run()
    run.stream(30, lambda t: rssi_for(2.0))
    run.stream(30, lambda t: rssi_for(60.0))
    run.advance(run.now + 60)
    run.stream(30, lambda t: rssi_for(2.0))
    kinds = [e.type for e in run.events if e.type is not EventType.ZONE]
    assert kinds == [EventType.ARRIVED, EventType.DEPARTED, EventType.ARRIVED]


def test_level_filter_is_a_convex_combination_of_its_samples() -> None:
    rng = random.Random(9)
    level_filter = LevelFilter(fast_time_constant_s=2.0, slow_time_constant_s=60.0,
                               motion_db=3.0, evidence_db_s=12.0)
    for n in range(2000):
        value = rng.choice((-61.0, -60.0, -59.0))
        estimate = level_filter.update(T0 + n * rng.uniform(0.0, 3.0), value)
        assert -61.0 <= estimate <= -59.0
        assert -61.0 <= level_filter.fast <= -59.0


def test_level_filter_notices_a_move_and_restarts_its_long_average() -> None:
    level_filter = LevelFilter(fast_time_constant_s=2.0, slow_time_constant_s=60.0,
                               motion_db=3.0, evidence_db_s=12.0)
    for n in range(600):
        level_filter.update(T0 + n, -60.0)
    assert level_filter.moves == 0
    for n in range(600, 640):
        level_filter.update(T0 + n, -80.0)
    assert level_filter.moves >= 1
    assert level_filter.estimate == pytest.approx(-80.0, abs=1.0)


def test_zone_map_hysteresis() -> None:
    zones = ZoneMap(immediate_m=1.0, near_m=4.0, hysteresis_factor=1.2)
    assert zones.zone_of(0.5) is Zone.IMMEDIATE
    assert zones.zone_of(4.0) is Zone.FAR
    assert zones.next_zone(Zone.NEAR, 4.5) is Zone.NEAR  # inside 4 m x 1.2
    assert zones.next_zone(Zone.NEAR, 4.9) is Zone.FAR
    assert zones.next_zone(Zone.FAR, 3.5) is Zone.FAR  # not below 4 / 1.2
    assert zones.next_zone(Zone.FAR, 3.2) is Zone.NEAR
    assert zones.next_zone(Zone.FAR, 0.5) is Zone.IMMEDIATE
    with pytest.raises(ValueError, match="hysteresis"):
        ZoneMap(immediate_m=1.0, near_m=4.0, hysteresis_factor=0.5)


def test_distance_model_round_trip() -> None:
    for distance in (0.5, 1.0, 3.3, 12.0, 40.0):
        rssi = rssi_at(distance, measured_power_dbm=-59, exponent=2.3)
        assert distance_m(rssi, measured_power_dbm=-59, exponent=2.3) == pytest.approx(distance)
    assert math.isclose(rssi_at(1.0, measured_power_dbm=-59, exponent=2.0), -59.0)


def test_a_badge_that_goes_silent_near_is_not_held_it_left() -> None:
    config = ProximityConfig()
    run = Run(config)
    run.stream(120, lambda t: rssi_for(4.0), via=KeyKind.IBEACON)
    last = run.tracker.last_heard("c-1")
    assert last is not None
    run.advance(run.now + 60)
    [departed] = run.of(EventType.DEPARTED)
    assert departed.reason is DepartReason.OUT_OF_RANGE
    assert departed.ts <= last + config.fade_timeout_s + 1.0


def test_a_far_badge_heard_only_in_its_strongest_packets_does_not_arrive() -> None:
    config = ProximityConfig(path_loss_exponent=2.3)
    far = rssi_at(30.0, measured_power_dbm=-70, exponent=2.3)  # ~ -104 dBm: under the floor
    heard: list[float] = []
    run = Run(config)
    rng = random.Random(11)
    run.stream(300, lambda t: rssi_at(3.0, measured_power_dbm=-59, exponent=2.3),
               contact="near", interval=0.25)  # teaches the venue's base reception
    start = run.now
    t = 0.0
    while t < 600:
        run.advance(start + t)
        value = far + rng.gauss(0.0, 7.0)
        if value >= config.reception_floor_dbm:
            heard.append(value)
            run.sight(value, contact="far", power=-70)
        t += 0.5
    assert len(heard) < 0.3 * 1200
    assert run.of(EventType.ARRIVED, "far") == []
    # The same readings at the full packet rate would have looked near enough to arrive.
    full = Run(config)
    for value in heard * 3:
        full.advance(full.now + 0.5)
        full.sight(value, contact="far", power=-70)
    assert len(full.of(EventType.ARRIVED, "far")) == 1


def test_a_recalibrated_contact_reads_right_at_its_next_sighting() -> None:
    tracker = Tracker(ProximityConfig())
    for n in range(120):  # a minute steady at -65: 2 m with the default -59 at 1 m
        tracker.observe(Sighting(T0 + n * 0.5, "p", KeyKind.ADDRESS, -65, None, "hci0"))
    [before] = tracker.present()
    assert before.distance_m == pytest.approx(2.0, rel=0.05)
    # Measured at 1 m, this phone is 6 dB quieter than most: calibration_db -6.
    tracker.observe(Sighting(T0 + 60.5, "p", KeyKind.ADDRESS, -65, None, "hci0"),
                    calibration_db=-6.0)
    [after] = tracker.present()
    assert after.distance_m == pytest.approx(1.0, rel=0.05)
    assert after.rssi == pytest.approx(before.rssi, abs=0.5)  # the RSSI itself did not change


def test_back_after_a_silence_it_is_judged_by_its_new_levels_not_departed_then() -> None:
    """A badge comes and goes: 12 s close (-52 then -68 dBm), 6 s heard far beyond the radius
    (-100 dBm), 8 s quiet, and again. The levels from before a silence no longer decide, so it
    is never departed while heard close (it used to be, 2 s after coming back, and arrived
    again 2 s later)."""
    run = Run(ProximityConfig(arrive_confirm_s=1.0, depart_confirm_s=2.0))
    rng = random.Random(46)
    close: list[tuple[float, float]] = []
    for _ in range(4):
        start = run.now
        for level in (-52, -68):
            run.stream(6, lambda t, level=level: level, interval=1.0, rng=rng, noise_db=1.5,
                       power=None, via=KeyKind.ADDRESS)
        close.append((start, run.now))
        run.stream(6, lambda t: -100, interval=1.0, rng=rng, noise_db=1.5, power=None,
                   via=KeyKind.ADDRESS)
        run.advance(run.now + 8.0)
    departed = [e.ts for e in run.of(EventType.DEPARTED)]
    assert not [ts for ts in departed if any(a <= ts <= b for a, b in close)], (departed, close)
    assert len(run.of(EventType.ARRIVED)) == 1 + len(departed)
