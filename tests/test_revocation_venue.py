"""A revocation reaches the venue and leaves nothing behind there: scanners' tombstones ->
real Mosquitto -> ``hallway venue`` -> id-only events on its socket and MQTT, its log purged
(no replay with ``since_seq``), and every retained topic about the contact cleared, also for a
contact who was not present when revoked."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sqlite3
from pathlib import Path

import pytest

from hallway.models import DepartReason, EventType, PresenceEvent
from hallway.venue.service import VenueService
from tests.mqtt_env import VENUE, Collector, collecting, retained
from tests.test_contact_changes import database_bytes
from tests.test_venue import TOKEN, SocketClient, scanners, site, venue_config

__all__ = ["site"]  # the broker fixture, shared with test_venue
pytestmark = pytest.mark.system


def _id_only(payload: dict) -> None:  # type: ignore[type-arg]
    payload["contact"] = {"id": payload["contact"]["id"]}


async def test_revocation_at_the_venue_present_and_absent(site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    instance = f"hw venue {os.getpid()}-{secrets.token_hex(3)}"
    config = venue_config(site, tmp_path, instance)
    ready = asyncio.Event()
    service = VenueService(config, state_dir=tmp_path, on_ready=lambda _: ready.set())
    stop = asyncio.Event()
    out = Collector(site.port, (f"hallway/{VENUE}/events",), client_id="test-rev-out",
                    clean=True)
    async with scanners(site, tmp_path) as kiosks, collecting(out):
        running = asyncio.create_task(service.run(stop))
        try:
            async with asyncio.timeout(20):
                await ready.wait()
            assert service.tcp_port is not None
            client = await SocketClient.connect(service.tcp_port)
            await client.next()
            await client.subscribe()
            a, b = kiosks["kiosk-a"], kiosks["kiosk-b"]
            # Ada (c-1) arrives and stays; Person 2 comes and goes (Home Assistant knows both).
            await a.write(a.log.arrived("c-1", 2.0))
            await b.write(b.log.arrived("c-2", 2.0))
            seen = {(await client.next())["contact"]["name"] for _ in range(2)}
            assert seen == {"Ada Lovelace", "Person 2"}
            await b.write(b.log.departed("c-2"))
            assert (await client.next())["type"] == "departed"

            # Both revoked: each scanner that knew them sends what a daemon sends.
            a.log.ts += 1
            await a.log.write([
                PresenceEvent(EventType.DEPARTED, a.log.ts, "c-1", zone="near",
                              distance_m=2.0, dwell_s=5.0, reason=DepartReason.REVOKED),
                PresenceEvent(EventType.REVOKED, a.log.ts, "c-1"),
                PresenceEvent(EventType.REVOKED, a.log.ts, "c-2"),
            ], tamper=_id_only)
            a.publisher.notify()
            await b.write(PresenceEvent(EventType.REVOKED, b.log.ts + 1, "c-1"),
                          PresenceEvent(EventType.REVOKED, b.log.ts + 1, "c-2"))
            got = [await client.next() for _ in range(3)]
            assert [(e["type"], e["contact"]) for e in got] == [
                ("departed", {"id": "c-1"}), ("revoked", {"id": "c-1"}),
                ("revoked", {"id": "c-2"})]
            assert got[0]["reason"] == "revoked"
            # One tombstone per contact, however many scanners sent theirs.
            with pytest.raises(TimeoutError):
                await client.next(wait_s=1.0)
            client.close()

            # On the venue's MQTT topic: the same, id only.
            await out.until(lambda: len(out.on("/events")) >= 6, 10)
            on_mqtt = [json.loads(m.payload) for m in out.on("/events")][-3:]
            assert [(e["type"], e["contact"]) for e in on_mqtt] == [
                (e["type"], e["contact"]) for e in got]

            # The venue's log: no replay of their arrivals (a resume from 0 hears only that
            # they left); no name anywhere in the database file or its WAL.
            async with asyncio.timeout(10):
                while service.status()["revoked"] < 2:  # noqa: ASYNC110 - a counter, no event
                    await asyncio.sleep(0.05)
            replay = await SocketClient.connect(service.tcp_port)
            await replay.next()
            replay.writer.write((json.dumps({"type": "subscribe", "token": TOKEN,
                                             "since_seq": 0}) + "\n").encode())
            await replay.writer.drain()
            replayed = []
            while True:
                try:
                    replayed.append(await replay.next(wait_s=1.0))
                except TimeoutError:
                    break
            replay.close()
            assert not any("name" in json.dumps(e) for e in replayed), replayed
            with sqlite3.connect(tmp_path / "venue.db") as db:
                rows = db.execute("SELECT type, contact_id, payload FROM events WHERE "
                                  "contact_id IN ('c-1', 'c-2') ORDER BY seq").fetchall()
            assert [(kind, cid) for kind, cid, _ in rows] == [
                ("departed", "c-1"), ("revoked", "c-1"), ("revoked", "c-2")], rows
            assert all(json.loads(p)["contact"] == {"id": cid} for _, cid, p in rows)
            data = database_bytes(tmp_path / "venue.db")
            assert b"Ada Lovelace" not in data
            assert b"Person 2" not in data
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await running
    # Nothing retained about either of them: presence, Home Assistant state and discovery.
    for topic_filter in (f"hallway/{VENUE}/present/+", f"hallway/{VENUE}/ha/#",
                         "homeassistant/#", f"hallway/{VENUE}/scanners/+/present/+"):
        held = await retained(site.port, topic_filter, f"hallway/{VENUE}/status")
        assert not any(held.values()), (topic_filter, held)

