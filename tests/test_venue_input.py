"""The venue service's handling of scanner messages (no broker needed) and Home Assistant
discovery messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hallway.config import Config, MqttConfig
from hallway.models import EventType
from hallway.mqtt import dumps
from hallway.venue.homeassistant import HomeAssistantDiscovery, object_slug
from hallway.venue.service import VenueService

BASE = "hallway/expo/scanners"
ADA = {"id": "c-1", "name": "Ada", "tags": ["speaker"], "keys": ["must-not-pass"]}


def service(tmp_path: Path, clock: list[float]) -> VenueService:
    config = Config.model_validate({
        "storage": {"database": str(tmp_path / "venue.db")},
        "mqtt": {"enabled": True, "venue": "expo"},
        "venue": {"rooms": {"kiosk-a": "Hall A", "kiosk-b": "Hall B"}, "depart_grace_s": 5.0},
    })
    return VenueService(config, clock=lambda: clock[0])


def event(kind: str, seq: int, ts: float, **fields: Any) -> bytes:
    return dumps({"type": kind, "seq": seq, "ts": ts, "scanner": "kiosk-a", "contact": ADA,
                  "zone": "near", "distance_m": 2.0, "rssi": -60.0, "via": "hallway-v1",
                  **fields})


def test_duplicates_and_redeliveries_are_dropped(tmp_path: Path) -> None:
    clock = [1000.0]
    venue = service(tmp_path, clock)
    arrived = venue.handle(f"{BASE}/kiosk-a/events", event("arrived", 7, 1000.0))
    assert [(e.type, e.room) for e in arrived] == [(EventType.ARRIVED, "Hall A")]
    contact = venue.arbiter.contact("c-1")
    assert contact is not None
    assert contact.keys == ()  # only public fields are taken from a message
    # The same event again (at-least-once delivery), and an older one: nothing happens.
    assert venue.handle(f"{BASE}/kiosk-a/events", event("arrived", 7, 1000.0)) == []
    assert venue.handle(f"{BASE}/kiosk-a/events", event("departed", 6, 999.0,
                                                      reason="timeout")) == []
    assert venue.status()["duplicates"] == 2
    # A scanner whose database was replaced starts over at seq 1, with newer times: accepted.
    clock[0] = 1010.0
    assert venue.handle(f"{BASE}/kiosk-a/events", event("departed", 1, 1010.0,
                                                      reason="out_of_range")) == []
    assert venue.status()["events_in"] == 2
    clock[0] = 1016.0
    (gone,) = venue.arbiter.tick(venue.now())
    assert gone.type is EventType.DEPARTED


def test_presence_messages_status_and_garbage(tmp_path: Path) -> None:
    clock = [2000.0]
    venue = service(tmp_path, clock)
    present = {"scanner": "kiosk-b", "ts": 2000.0, "contact": ADA, "zone": "far",
               "distance_m": 6.0, "rssi": -75.0, "since": 1990.0, "via": "irk"}
    (arrived,) = venue.handle(f"{BASE}/kiosk-b/present/c-1", dumps(present))
    assert arrived.room == "Hall B"
    # A presence message for another id than its topic, bad JSON, unknown topics: counted.
    assert venue.handle(f"{BASE}/kiosk-b/present/c-2", dumps(present)) == []
    assert venue.handle(f"{BASE}/kiosk-b/present/c-1", b"{not json") == []
    assert venue.handle(f"{BASE}/kiosk-b/unknown", b"x") == []
    assert venue.handle("elsewhere/topic", b"x") == []
    assert venue.status()["malformed"] == 4
    assert venue.handle(f"{BASE}/kiosk-b/status", b"online") == []
    assert venue.status()["scanners_online"] == ["kiosk-b"]
    assert venue.handle(f"{BASE}/kiosk-b/status", b"offline") == []
    assert venue.status()["scanners_offline"] == ["kiosk-b"]
    # An empty retained message clears the reading; after the grace, the contact departs.
    assert venue.handle(f"{BASE}/kiosk-b/present/c-1", b"") == []
    clock[0] = 2006.0
    assert [e.type for e in venue.arbiter.tick(venue.now())] == [EventType.DEPARTED]


def test_venue_clock_follows_the_scanners_clock(tmp_path: Path) -> None:
    clock = [5000.0]
    venue = service(tmp_path, clock)
    # A scanner replaying a trace whose clock runs 300 s ahead of ours.
    (arrived,) = venue.handle(f"{BASE}/kiosk-a/events", event("arrived", 1, 5300.0))
    assert arrived.ts == 5300.0
    clock[0] = 5001.0
    assert venue.now() == 5301.0


def test_home_assistant_discovery_state_and_removal() -> None:
    ha = HomeAssistantDiscovery(MqttConfig(venue="expo"), status_topic="hallway/expo/status")
    contact = {"id": "c/1 x", "name": "Ada Lovelace", "tags": ["speaker"]}
    slug = object_slug("c/1 x")
    assert slug.startswith("c_1_x_")
    arrived = ha.messages({"type": "arrived", "contact": contact, "room": "Hall A",
                           "zone": "near", "distance_m": 2.0})
    topics = [m.topic for m in arrived]
    assert topics == [*ha.config_topics("c/1 x"), ha.state_topic("c/1 x")]
    assert all(m.retain for m in arrived)
    tracker = json.loads(arrived[0].payload)
    assert topics[0] == f"homeassistant/device_tracker/hallway_{slug}/config"
    assert tracker["unique_id"] == f"hallway_expo_{slug}_tracker"
    assert tracker["device"]["identifiers"] == [f"hallway_expo_{slug}"]
    assert tracker["state_topic"] == f"hallway/expo/ha/{slug}/state"
    assert json.loads(arrived[-1].payload)["location"] == "Hall A"
    left = ha.messages({"type": "departed", "contact": contact, "reason": "out_of_range"})
    assert [json.loads(m.payload)["location"] for m in left] == ["not_home"]
    revoked = ha.messages({"type": "departed", "contact": {"id": "c/1 x"}, "reason": "revoked"})
    assert {m.payload for m in revoked} == {b""}
    assert len(revoked) == 4
    # Only tagged contacts when a tag is configured.
    tagged = HomeAssistantDiscovery(MqttConfig(venue="expo", homeassistant_tag="vip"),
                                    status_topic="s")
    assert tagged.messages({"type": "arrived", "contact": contact, "room": "Hall A"}) == []


def test_a_clean_stop_keeps_people_for_the_offline_grace(tmp_path: Path) -> None:
    # A scanner stopping cleanly departs everyone (reason "shutdown"), clears its retained
    # presence and says "offline": for the venue that is the scanner going offline, so its
    # people stay for venue.offline_grace_s (30 s), not depart_grace_s (5 s here).
    clock = [5000.0]
    venue = service(tmp_path, clock)
    venue.handle(f"{BASE}/kiosk-a/status", b"online")
    (arrived,) = venue.handle(f"{BASE}/kiosk-a/events", event("arrived", 1, 5000.0))
    assert arrived.room == "Hall A"
    clock[0] = 5010.0
    assert venue.handle(f"{BASE}/kiosk-a/events",
                        event("departed", 2, 5010.0, reason="shutdown")) == []
    assert venue.handle(f"{BASE}/kiosk-a/present/c-1", b"") == []
    assert venue.handle(f"{BASE}/kiosk-a/status", b"offline") == []
    for now in (5016.0, 5030.0, 5039.0):  # past depart_grace_s, within offline_grace_s
        clock[0] = now
        assert venue.arbiter.tick(venue.now()) == [], now
        assert venue.arbiter.room_of("c-1") == "Hall A"
    # Past the offline grace the scanner stops counting; the contact departs after the
    # depart grace on top, like with a lost scanner.
    clock[0] = 5041.0
    assert venue.arbiter.tick(venue.now()) == []
    clock[0] = 5047.0
    (gone,) = venue.arbiter.tick(venue.now())
    assert (gone.type, gone.room) == (EventType.DEPARTED, "Hall A")


def test_a_scanner_back_from_a_clean_stop_lets_go_of_who_it_no_longer_holds(
        tmp_path: Path) -> None:
    clock = [6000.0]
    venue = service(tmp_path, clock)
    venue.handle(f"{BASE}/kiosk-a/status", b"online")
    venue.handle(f"{BASE}/kiosk-a/events", event("arrived", 1, 6000.0))
    clock[0] = 6005.0
    venue.handle(f"{BASE}/kiosk-a/events", event("departed", 2, 6005.0, reason="shutdown"))
    venue.handle(f"{BASE}/kiosk-a/present/c-1", b"")
    venue.handle(f"{BASE}/kiosk-a/status", b"offline")
    clock[0] = 6010.0
    # Back within the grace, without Ada: she is let go of now and departs after the grace.
    assert venue.handle(f"{BASE}/kiosk-a/status", b"online") == []
    clock[0] = 6016.0
    (gone,) = venue.arbiter.tick(venue.now())
    assert gone.type is EventType.DEPARTED
