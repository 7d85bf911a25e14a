"""The multi-room simulation and the room scores bench/venue.py reports."""

from __future__ import annotations

import json
from pathlib import Path

from hallway.simulator.floorplan import (
    MARKER_ADDRESS,
    FloorPlan,
    RoomTimeline,
    VenueSimulation,
    score_rooms,
)
from hallway.simulator.world import PathBuilder
from hallway.trace import read_trace

START = 1_795_251_600.0


def test_geometry_rooms_walls_and_doorways() -> None:
    plan = FloorPlan.row(3, room_w_m=14.0, room_d_m=12.0, wall_loss_db=6.0)
    assert [r.name for r in plan.rooms] == ["Room 1", "Room 2", "Room 3"]
    assert plan.walls() == [14.0, 28.0]
    assert plan.room_at(3.0, 3.0) is plan.rooms[0]
    assert plan.room_at(-1.0, 3.0) is None
    assert plan.room_at(20.0, 13.0) is None
    room1, room2 = plan.rooms[0], plan.rooms[1]
    assert plan.doorway_rooms(13.6, plan.door_y) == (room1, room2)
    assert plan.doorway_rooms(13.6, 1.0) is None  # by the wall, not by the door
    # A wall costs its loss away from the door, nothing in the opening; none within a room.
    assert plan.wall_loss(10.0, 1.0, room2.scanner_xy) == 6.0
    assert plan.wall_loss(13.9, plan.door_y, room2.scanner_xy) < 1.0
    assert plan.wall_loss(3.0, 3.0, room1.scanner_xy) == 0.0
    # Walking from Room 1 to Room 3 goes through both doors.
    builder = plan.route(PathBuilder(0.0, 3.0, 3.0, speed_mps=1.0), 38.0, 9.0)
    xs = [x for _, x, _ in builder.points]
    assert xs == [3.0, 14.0, 28.0, 38.0]


def test_simulation_is_deterministic_and_writes_traces_with_a_common_start(
    tmp_path: Path,
) -> None:
    first = VenueSimulation(seed=5, start_ts=START, duration_s=300, contacts=4)
    again = VenueSimulation(seed=5, start_ts=START, duration_s=300, contacts=4)
    assert first.truth() == again.truth()
    files = first.write(tmp_path)
    for scanner in first.scanners:
        lines = files[f"trace:{scanner}"].read_text().splitlines()
        records = [item for _, item in read_trace(lines) if not isinstance(item, str)]
        assert len(records) == len(lines)  # every line is a valid SPEC §2 record
        assert records[0].address == MARKER_ADDRESS
        assert records[0].ts == START
        assert all(r.scanner == scanner for r in records)
        times = [r.ts for r in records]
        assert times == sorted(times)
        assert len(records) > 100
    truth = [json.loads(line) for line in files["truth"].read_text().splitlines()]
    assert len(truth) == 4
    assert all(len(row["room"]) == 300 for row in truth)
    assert any(room is not None for row in truth for room in row["room"])
    rooms = json.loads(files["rooms"].read_text())["rooms"]
    assert rooms == {"room-1": "Room 1", "room-2": "Room 2", "room-3": "Room 3"}


def _timeline_from_truth(truth: list[dict[str, object]]) -> RoomTimeline:
    timeline = RoomTimeline()
    for row in truth:
        rooms = row["room"]
        assert isinstance(rooms, list)
        start = float(str(row["start_ts"]))
        last: str | None = None
        for k, room in enumerate(rooms):
            if room != last:
                timeline.record(str(row["id"]), start + k, room)
                last = room
    return timeline


def test_scores_perfect_and_flapping_timelines() -> None:
    sim = VenueSimulation(seed=2, start_ts=START, duration_s=900, contacts=5)
    truth = sim.truth()
    perfect = score_rooms(truth, _timeline_from_truth(truth))
    assert perfect["room_accuracy"] == 1.0
    assert perfect["room_accuracy_strict"] == 1.0
    assert perfect["flaps_per_contact_hour"] == 0.0
    assert perfect["moves_to_a_wrong_room_per_contact_hour"] == 0.0
    assert perfect["room_changes_per_contact_hour"] == perfect[
        "true_room_changes_per_contact_hour"]
    # Add a 10 s excursion to a room the contact is not in, every few minutes: flaps.
    flapping = _timeline_from_truth(truth)
    row = next(r for r in truth if sum(x is not None for x in r["room"]) > 400)
    cid, rooms = str(row["id"]), row["room"]
    for k in range(100, 800, 200):
        room = rooms[k]
        if room is None or rooms[k + 10] != room:
            continue
        other = next(r.name for r in sim.plan.rooms
                     if r.name != room and r.name not in rooms[max(0, k - 30):k + 20])
        flapping.changes[cid].append((START + k, other))
        flapping.changes[cid].append((START + k + 10, room))
        flapping.changes[cid].sort(key=lambda change: change[0])
    scored = score_rooms(truth, flapping)
    assert scored["flaps_per_contact_hour"] > 0
    assert scored["room_accuracy"] < 1.0
