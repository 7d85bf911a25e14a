"""Per-scanner receive offsets in the venue service: the scanners' retained calibration
messages (what each hears of the others' beacons) are solved together, reported in status and
applied to the scanners' levels before rooms are compared. No broker: the messages go through
``VenueService.handle`` as the MQTT reader hands them over."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest

from hallway.config import Config
from hallway.mqtt import MqttPublisher, Topics, calibration_payload, dumps
from hallway.proximity.scanners import reference_digest
from hallway.store import SqliteStore
from hallway.venue.service import VenueService
from tests.mqtt_env import Collector, collecting, publishing, retained, running_site, scanner_config

BASE = "hallway/expo/scanners"
UUID = "48570000-5c7a-4e0b-9b8e-3f1d2a6c9eaa"
ADA = {"id": "c-1", "name": "Ada"}
# Three scanners 5 m apart; kiosk-b's receiver reads 8 dB low; its tracker uses 0.
POS = {"kiosk-a": (0.0, 0.0), "kiosk-b": (5.0, 0.0), "kiosk-c": (2.5, 4.33)}
RX = {"kiosk-a": 0.0, "kiosk-b": -8.0, "kiosk-c": 0.0}
MINOR = {"kiosk-a": 1, "kiosk-b": 2, "kiosk-c": 3}


def service(tmp_path: Path, clock: list[float]) -> VenueService:
    config = Config.model_validate({
        "storage": {"database": str(tmp_path / "venue.db")},
        "mqtt": {"enabled": True, "venue": "expo"},
        "venue": {"rooms": {"kiosk-a": "Hall A", "kiosk-b": "Hall B", "kiosk-c": "Hall C"},
                  "switch_confirm_s": 0.0},
    })
    return VenueService(config, clock=lambda: clock[0])


def message(scanner: str, *, moved: float = 0.0, state: str = "ok") -> bytes:
    """The scanner's calibration message, as ``calibration_payload`` builds it from its
    tracker's calibration status."""
    refs: list[dict[str, Any]] = []
    for peer, where in POS.items():
        if peer == scanner:
            continue
        d = math.dist(POS[scanner], where)
        level = RX[scanner] - 20 * math.log10(d) + (moved if peer == "kiosk-c" else 0.0)
        refs.append({"badge": f"ibeacon:{UUID}/7/{MINOR[peer]}", "distance_m": d,
                     "state": state if peer == "kiosk-c" else "ok",
                     "level_db": round(level, 1)})
    refs.append({"contact": "badge-desk", "distance_m": 1.0, "state": "ok", "level_db": -1.0})
    status = {"receive_offset_db": 0.0, "references": refs}
    payload = calibration_payload(status, f"{UUID}/7/{MINOR[scanner]}")
    # No contact id and no badge key leaves: references go by digest.
    assert [set(r) for r in payload["references"]] == [
        {"ref", "distance_m", "level_db", "state"}] * 2
    assert UUID not in json.dumps(payload["references"])
    return dumps(payload)


def seen(venue: VenueService, scanner: str, distance: float, ts: float) -> list[Any]:
    present = {"scanner": scanner, "ts": ts, "contact": ADA, "zone": "far",
               "distance_m": distance, "rssi": -70.0, "since": ts, "via": "irk"}
    return venue.handle(f"{BASE}/{scanner}/present/c-1", dumps(present))


def test_the_offset_scanner_is_found_and_its_readings_corrected(tmp_path: Path) -> None:
    clock = [1000.0]
    venue = service(tmp_path, clock)
    # Before any calibration: Ada is 3 m from kiosk-b, 4 m from kiosk-a; kiosk-b reads 8 dB
    # low, so it says 7.5 m and Hall A wins.
    (arrived,) = seen(venue, "kiosk-a", 4.0, 1000.0)
    assert arrived.room == "Hall A"
    assert seen(venue, "kiosk-b", 3.0 * 10 ** (8 / 20), 1000.0) == []
    assert venue.status()["scanner_offsets"]["scanners"] == {}
    for scanner in POS:
        assert venue.handle(f"{BASE}/{scanner}/calibration", message(scanner)) == []
    offsets = venue.status()["scanner_offsets"]
    got = offsets["scanners"]
    assert abs(got["kiosk-b"]["receive_offset_db"] + 8.0) < 1.5, got
    assert abs(got["kiosk-a"]["receive_offset_db"]) < 1.5, got
    assert got["kiosk-b"]["confidence"] >= 0.5
    assert got["kiosk-b"]["correction_db"] > 6.5
    assert offsets["left_out"] == {}
    # Corrected, kiosk-b's reading is the nearer one: Ada moves to Hall B.
    clock[0] = 1001.0
    moved = seen(venue, "kiosk-b", 3.0 * 10 ** (8 / 20), 1001.0)
    assert [e.room for e in moved] == ["Hall B"]


def test_a_moved_scanner_is_named_and_garbage_counted(tmp_path: Path) -> None:
    clock = [1000.0]
    venue = service(tmp_path, clock)
    # kiosk-a hears kiosk-c 20 dB below what it did: its calibrator found the reference moved.
    state = "moved: left out until it reads as before"
    venue.handle(f"{BASE}/kiosk-a/calibration", message("kiosk-a", moved=-20.0, state=state))
    venue.handle(f"{BASE}/kiosk-b/calibration", message("kiosk-b"))
    venue.handle(f"{BASE}/kiosk-c/calibration", message("kiosk-c"))
    offsets = venue.status()["scanner_offsets"]
    assert offsets["left_out"] == {"kiosk-a hears kiosk-c": f"the receiver says: {state}"}
    assert abs(offsets["scanners"]["kiosk-b"]["receive_offset_db"] + 8.0) < 2.0
    assert venue.handle(f"{BASE}/kiosk-a/calibration", b"{nope") == []
    assert venue.status()["malformed"] == 1
    assert venue.arbiter.corrections["kiosk-b"] > 5.0
    # A scanner that clears its message (empty retained): its beacon and readings are gone,
    # and so is its correction (nobody's pairs reach it).
    venue.handle(f"{BASE}/kiosk-b/calibration", b"")
    assert "kiosk-b" not in venue.status()["scanner_offsets"]["scanners"]
    assert venue.arbiter.corrections.get("kiosk-b", 0.0) == 0.0


@pytest.mark.system
async def test_a_scanner_publishes_its_calibration_retained_and_the_venue_may_read_it(
        tmp_path: Path) -> None:
    """Through the docs' broker and access list: the scanner's retained calibration message,
    republished when it changes (and only then), readable by the venue user."""
    figures = {"receive_offset_db": -1.5, "references": [
        {"badge": f"ibeacon:{UUID}/7/2", "distance_m": 5.0, "state": "ok", "level_db": -15.2}]}
    with running_site(tmp_path) as site:
        store = await SqliteStore.open(tmp_path / "scanner.db")
        try:
            config = scanner_config(site)
            topics = Topics.for_scanner(config, "kiosk-a")
            publisher = MqttPublisher(
                config, scanner="kiosk-a", store=store,
                calibration=lambda: calibration_payload(figures, f"{UUID}/7/1"))
            collector = Collector(site.port, (topics.calibration,), clean=True)
            async with collecting(collector), publishing(publisher):
                await collector.until(lambda: len(collector.messages) >= 1, 10)
                await asyncio.sleep(1.0)  # five refresh intervals: unchanged, not sent again
                assert len(collector.messages) == 1
                figures["receive_offset_db"] = -2.0
                await collector.until(lambda: len(collector.messages) >= 2, 10)
            first, second = (json.loads(m.payload) for m in collector.messages)
            assert first == {"beacon": f"{UUID}/7/1", "receive_offset_db": -1.5,
                             "references": [{"ref": reference_digest(f"ibeacon:{UUID}/7/2"),
                                             "distance_m": 5.0, "state": "ok",
                                             "level_db": -15.2}]}
            assert second["receive_offset_db"] == -2.0
            held = await retained(site.port, topics.calibration, topics.status)
            assert json.loads(held[topics.calibration]) == second
        finally:
            await store.close()


def test_the_venues_positions_give_the_distances_and_a_wrong_one_is_said(
        tmp_path: Path) -> None:
    config = Config.model_validate({
        "storage": {"database": str(tmp_path / "venue.db")},
        "mqtt": {"enabled": True, "venue": "expo"},
        "venue": {"positions": {name: list(where) for name, where in POS.items()}},
    })
    venue = VenueService(config, clock=lambda: 1000.0)
    # kiosk-a's config says kiosk-b is 9 m away; the floor plan says 5 m (as the air did).
    wrong = json.loads(message("kiosk-a"))
    for ref in wrong["references"]:
        if ref["ref"] == reference_digest(f"ibeacon:{UUID}/7/2"):
            ref["distance_m"] = 9.0
    venue.handle(f"{BASE}/kiosk-a/calibration", dumps(wrong))
    venue.handle(f"{BASE}/kiosk-b/calibration", message("kiosk-b"))
    venue.handle(f"{BASE}/kiosk-c/calibration", message("kiosk-c"))
    offsets = venue.status()["scanner_offsets"]
    assert list(offsets["distance_mismatch"]) == ["kiosk-a hears kiosk-b"]
    assert "9 m" in offsets["distance_mismatch"]["kiosk-a hears kiosk-b"]
    got = {n: o["receive_offset_db"] for n, o in offsets["scanners"].items()}
    assert abs(got["kiosk-b"] + 8.0) < 1.5, got  # the positions' 5 m was used
    assert abs(got["kiosk-a"]) < 1.5, got
