"""The venue's room choice (pure): arrivals, hysteresis, moves, departures, offline scanners."""

from __future__ import annotations

import math
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from hallway.config import VenueConfig
from hallway.models import DepartReason, EventType, PresenceEvent
from hallway.venue.arbiter import Arbiter

ADA = {"id": "c-1", "name": "Ada", "tags": ["speaker"]}
CONFIG = VenueConfig(rooms={"kiosk-a": "Hall A", "kiosk-b": "Hall B", "kiosk-b2": "Hall B",
                            "kiosk-c": "Foyer"},
                     switch_margin_db=4.0, switch_confirm_s=8.0, depart_grace_s=15.0,
                     offline_grace_s=30.0, return_margin_db=0.0)
# (the return margin is off here, so these tests see the plain rule; it has its own test)


def arbiter(**changes: float) -> Arbiter:
    return Arbiter(CONFIG.model_copy(update=changes), path_loss_exponent=2.0)


def kinds(events: list[PresenceEvent]) -> list[tuple[str, str | None]]:
    return [(e.type.value, e.room) for e in events]


def test_arrives_in_the_best_room_at_once() -> None:
    arb = arbiter()
    assert kinds(arb.seen("kiosk-a", ADA, ts=0, distance_m=6.0, now=0)) == [
        ("arrived", "Hall A")]
    assert arb.room_of("c-1") == "Hall A"
    (info,) = arb.present()
    assert info.room == "Hall A"
    assert info.distance_m == 6.0
    assert arb.contact("c-1") is not None
    assert arb.contact("c-1").tags == ("speaker",)


def test_a_challenger_must_be_clearly_and_persistently_better() -> None:
    arb = arbiter()
    arb.seen("kiosk-a", ADA, ts=0, distance_m=5.0, now=0)
    # Slightly better (3 dB < 4 dB margin) for a long time: stays.
    assert arb.seen("kiosk-b", ADA, ts=1, distance_m=3.6, now=1) == []
    assert arb.tick(60) == []
    # Twice the margin ahead (8 dB) for 3 s (worth 6 of the 8 s), then back under it: stays.
    assert arb.seen("kiosk-b", ADA, ts=61, distance_m=2.0, now=61) == []
    assert arb.tick(64) == []
    assert arb.seen("kiosk-b", ADA, ts=64, distance_m=4.0, now=64) == []
    assert arb.tick(80) == []
    # Twice the margin ahead without interruption: half the confirmation time, then moves once.
    arb.seen("kiosk-b", ADA, ts=81, distance_m=2.0, now=81)
    assert arb.tick(84.9) == []
    moved = arb.tick(85.1)
    assert kinds(moved) == [("moved", "Hall B")]
    assert moved[0].previous_room == "Hall A"
    assert moved[0].type is EventType.MOVED
    assert arb.tick(200) == []


def test_going_back_to_the_room_just_left_needs_the_return_margin() -> None:
    arb = arbiter(switch_margin_db=1.0, switch_confirm_s=1.0, return_margin_db=4.0)
    arb.seen("kiosk-a", ADA, ts=0, distance_m=3.0, now=0)
    arb.seen("kiosk-b", ADA, ts=1, distance_m=2.0, now=1)  # 3.5 dB ahead: a quick first move
    assert kinds(arb.tick(2.0)) == [("moved", "Hall B")]
    # Back in the doorway, Hall A 2.5 dB ahead: over the margin, not over the return margin.
    arb.seen("kiosk-a", ADA, ts=10, distance_m=1.5, now=10)
    assert arb.tick(30) == []
    assert arb.room_of("c-1") == "Hall B"
    # Clearly back in Hall A (12 dB ahead): it goes back.
    arb.seen("kiosk-a", ADA, ts=31, distance_m=0.5, now=31)
    assert kinds(arb.tick(33)) == [("moved", "Hall A")]
    # After the window a small lead is enough again.
    arb.seen("kiosk-a", ADA, ts=200, distance_m=3.0, now=200)
    arb.seen("kiosk-b", ADA, ts=200, distance_m=2.4, now=200)  # 1.9 dB ahead
    assert kinds(arb.tick(203)) == [("moved", "Hall B")]


def test_just_over_the_margin_needs_the_whole_confirmation_time() -> None:
    arb = arbiter()
    arb.seen("kiosk-a", ADA, ts=0, distance_m=5.0, now=0)
    arb.seen("kiosk-b", ADA, ts=0, distance_m=2.9, now=0)  # 4.7 dB ahead: 1.18 s per second
    assert arb.tick(6.5) == []
    assert kinds(arb.tick(7.0)) == [("moved", "Hall B")]


def test_rooms_with_two_scanners_score_by_their_best() -> None:
    arb = arbiter(switch_confirm_s=0)
    arb.seen("kiosk-b", ADA, ts=0, distance_m=6.0, now=0)
    arb.seen("kiosk-a", ADA, ts=0, distance_m=3.0, now=0)
    arb.tick(1)
    assert arb.room_of("c-1") == "Hall A"
    # Moving between the two scanners of Hall B is not a move; reaching one of them is.
    events = arb.seen("kiosk-b2", ADA, ts=2, distance_m=1.0, now=2) + arb.tick(3)
    assert kinds(events) == [("moved", "Hall B")]
    assert kinds(arb.seen("kiosk-b", ADA, ts=4, distance_m=0.5, now=4) + arb.tick(5)) == []


def test_losing_the_rooms_scanner_moves_to_the_next_best_after_the_confirmation() -> None:
    arb = arbiter()
    arb.seen("kiosk-a", ADA, ts=0, distance_m=2.0, now=0)
    arb.seen("kiosk-c", ADA, ts=0, distance_m=9.0, now=0)
    assert arb.lost("kiosk-a", "c-1", ts=5, now=5, reason=DepartReason.OUT_OF_RANGE) == []
    assert arb.tick(12.9) == []
    assert kinds(arb.tick(13.1)) == [("moved", "Foyer")]


def test_a_room_that_picks_the_contact_up_again_keeps_it() -> None:
    arb = arbiter()
    arb.seen("kiosk-a", ADA, ts=0, distance_m=2.0, now=0)
    arb.seen("kiosk-c", ADA, ts=0, distance_m=9.0, now=0)
    arb.lost("kiosk-a", "c-1", ts=5, now=5, reason=DepartReason.TIMEOUT)  # a paused phone
    assert arb.tick(10) == []
    assert arb.seen("kiosk-a", ADA, ts=11, distance_m=2.5, now=11) == []
    assert arb.tick(60) == []
    assert arb.room_of("c-1") == "Hall A"


def test_departs_after_the_grace_unless_picked_up() -> None:
    arb = arbiter()
    arb.seen("kiosk-a", ADA, ts=0, distance_m=2.0, now=0)
    assert arb.lost("kiosk-a", "c-1", ts=10, now=10, reason=DepartReason.OUT_OF_RANGE) == []
    assert arb.tick(20) == []
    # Picked up by another room within the grace: a move, not a departure and an arrival.
    assert arb.seen("kiosk-b", ADA, ts=21, distance_m=4.0, now=21) == []
    assert kinds(arb.tick(29)) == [("moved", "Hall B")]
    arb.lost("kiosk-b", "c-1", ts=30, now=30, reason=DepartReason.TIMEOUT)
    assert arb.tick(44) == []
    (departed,) = arb.tick(45)
    assert departed.type is EventType.DEPARTED
    assert departed.reason is DepartReason.TIMEOUT
    assert departed.room == "Hall B"
    assert departed.dwell_s == 45
    assert arb.present() == []
    assert arb.contact("c-1") is None


def test_offline_scanner_counts_for_its_grace_then_not() -> None:
    arb = arbiter()
    arb.seen("kiosk-a", ADA, ts=0, distance_m=2.0, now=0)
    arb.seen("kiosk-c", ADA, ts=0, distance_m=8.0, now=0)
    assert arb.scanner_status("kiosk-a", online=False, now=10) == []
    assert arb.tick(39) == []
    assert arb.tick(40) == []  # from now on kiosk-a does not count: Foyer's claim begins
    assert kinds(arb.tick(48)) == [("moved", "Foyer")]
    assert arb.offline_scanners == ["kiosk-a"]
    # Back online, its reading counts again: 12 dB ahead, so 8 s / 3 of confirmation.
    assert arb.scanner_status("kiosk-a", online=True, now=50) == []
    assert arb.tick(52) == []
    assert kinds(arb.tick(53)) == [("moved", "Hall A")]


def test_stale_and_reordered_readings_change_nothing() -> None:
    arb = arbiter()
    arb.seen("kiosk-a", ADA, ts=10, distance_m=2.0, now=10)
    assert arb.seen("kiosk-a", ADA, ts=5, distance_m=20.0, now=11) == []  # older than latest
    arb.lost("kiosk-a", "c-1", ts=20, now=20, reason=DepartReason.OUT_OF_RANGE)
    assert arb.seen("kiosk-a", ADA, ts=19, distance_m=2.0, now=21) == []  # before departure
    assert arb.lost("kiosk-a", "c-1", ts=15, now=22) == []  # older departure, nothing held
    assert arb.counts["stale_readings"] == 2
    assert kinds(arb.tick(35)) == [("departed", "Hall A")]


def test_zone_changes_within_the_room_and_shutdown() -> None:
    arb = arbiter()
    arb.seen("kiosk-a", ADA, ts=0, distance_m=2.0, zone="near", now=0)
    (zone,) = arb.seen("kiosk-a", ADA, ts=1, distance_m=0.5, zone="immediate", now=1)
    assert zone.type is EventType.ZONE
    assert zone.previous_zone == "near"
    assert zone.zone == "immediate"
    assert zone.room == "Hall A"
    (bye,) = arb.shutdown(5)
    assert bye.reason is DepartReason.SHUTDOWN
    assert bye.dwell_s == 5


def test_forget_departs_revoked_at_once() -> None:
    arb = arbiter()
    arb.seen("kiosk-a", ADA, ts=0, distance_m=2.0, now=0)
    (gone,) = arb.forget("c-1", now=3)
    assert gone.reason is DepartReason.REVOKED
    assert arb.contact("c-1") is None


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["kiosk-a", "kiosk-b", "kiosk-c"]),
                          st.floats(0.3, 30.0), st.booleans(), st.floats(0.0, 5.0)),
                max_size=60))
def test_arrivals_and_departures_alternate_and_rooms_are_consistent(
    steps: list[tuple[str, float, bool, float]],
) -> None:
    arb = arbiter(switch_confirm_s=3.0, depart_grace_s=4.0)
    now = 0.0
    room: str | None = None
    events: list[PresenceEvent] = []
    for scanner, distance, present, dt in steps:
        now += dt
        if present:
            events += arb.seen(scanner, ADA, ts=now, distance_m=distance, now=now)
        else:
            events += arb.lost(scanner, "c-1", ts=now, now=now)
        events += arb.tick(now)
    events += arb.tick(now + 100)
    for event in events:
        if event.type is EventType.ARRIVED:
            assert room is None
            room = event.room
        elif event.type is EventType.MOVED:
            assert room is not None
            assert event.previous_room == room
            assert event.room != room
            room = event.room
        elif event.type is EventType.DEPARTED:
            assert room is not None
            assert event.room == room
            room = None
        else:
            assert event.room == room is not None
    assert room == arb.room_of("c-1")
    assert all(not math.isnan(e.ts) for e in events)


def test_arbiter_is_pure() -> None:
    code = ("import sys, hallway.venue.arbiter\n"
            "bad = [m for m in ('asyncio', 'aiomqtt', 'aiosqlite', 'zeroconf', 'structlog')"
            " if m in sys.modules]\nprint(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
