"""``hallway venue`` end to end in one process: scanner publishers -> real Mosquitto -> venue
service -> venue events on MQTT, on the SPEC §6 socket (and ``hallway tail`` by mDNS), and Home
Assistant discovery."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from hallway.config import Config
from hallway.mqtt import MqttPublisher
from hallway.store import SqliteStore
from hallway.venue.homeassistant import object_slug
from hallway.venue.service import VenueService
from tests.mqtt_env import (
    PASSWORDS,
    VENUE,
    Collector,
    Log,
    Site,
    collecting,
    retained,
    running_site,
    scanner_config,
)

pytestmark = pytest.mark.system

TOKEN = "venue-test-token-0123456789abcdef"
ROOMS = {"kiosk-a": "Hall A", "kiosk-b": "Hall B", "kiosk-c": "Foyer"}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with running_site(tmp_path / "broker") as running:
        yield running


class Scanner:
    """A scanner daemon's MQTT side: its event log and its publisher."""

    def __init__(self, name: str, store: SqliteStore, publisher: MqttPublisher) -> None:
        self.name = name
        self.store = store
        self.publisher = publisher
        self.log = Log(store, scanner=name)
        self.task: asyncio.Task[None] | None = None

    async def write(self, *events: Any) -> None:
        await self.log.write(list(events))
        self.publisher.notify()


@contextlib.asynccontextmanager
async def scanners(site: Site, tmp_path: Path) -> AsyncIterator[dict[str, Scanner]]:
    made: dict[str, Scanner] = {}
    for name in ROOMS:
        store = await SqliteStore.open(tmp_path / f"{name}.db")
        await store.save_mqtt_progress(0)
        publisher = MqttPublisher(scanner_config(site, name), scanner=name, store=store)
        made[name] = Scanner(name, store, publisher)
        made[name].task = asyncio.create_task(publisher.run())
    try:
        yield made
    finally:
        for scanner in made.values():
            assert scanner.task is not None
            scanner.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scanner.task
            await scanner.store.close()


def venue_config(site: Site, tmp_path: Path, instance: str) -> Config:
    return Config.model_validate({
        "scanner": {"name": "venue"},
        "storage": {"database": str(tmp_path / "venue.db")},
        "server": {"tcp_host": "127.0.0.1", "tcp_port": 0, "unix_socket": None,
                   "tokens": [TOKEN]},
        "mdns": {"enabled": True, "interfaces": ["127.0.0.1"], "instance_name": instance,
                 "venue": "Expo 2026"},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": site.port, "username": "venue",
                 "password": PASSWORDS["venue"], "venue": VENUE, "reconnect_max_s": 0.5,
                 "present_interval_s": 0.2, "homeassistant": True},
        "venue": {"rooms": ROOMS, "switch_margin_db": 4.0, "switch_confirm_s": 1.0,
                  "depart_grace_s": 1.5},
    })


class SocketClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> SocketClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def next(self, wait_s: float = 15.0) -> dict[str, Any]:
        while True:
            async with asyncio.timeout(wait_s):
                message = json.loads(await self.reader.readline())
            if message.get("type") != "ping":
                return dict(message)

    async def subscribe(self) -> dict[str, Any]:
        self.writer.write((json.dumps({"type": "subscribe", "token": TOKEN}) + "\n").encode())
        await self.writer.drain()
        return await self.next()

    def close(self) -> None:
        self.writer.close()


async def test_venue_rooms_on_mqtt_socket_tail_and_home_assistant(
    site: Site, tmp_path: Path
) -> None:
    instance = f"hw venue {os.getpid()}-{secrets.token_hex(3)}"
    config = venue_config(site, tmp_path, instance)
    ready = asyncio.Event()
    service = VenueService(config, state_dir=tmp_path, on_ready=lambda _: ready.set())
    stop = asyncio.Event()
    mqtt_out = Collector(site.port, (f"hallway/{VENUE}/events", f"hallway/{VENUE}/ha/#",
                                     "homeassistant/#"),
                         client_id="test-venue-out", clean=True)
    async with scanners(site, tmp_path) as kiosks, collecting(mqtt_out):
        running = asyncio.create_task(service.run(stop))
        try:
            async with asyncio.timeout(20):
                await ready.wait()
            assert service.tcp_port is not None
            client = await SocketClient.connect(service.tcp_port)
            hello = await client.next()
            assert hello["scanner"] == "venue"
            assert (await client.subscribe())["type"] == "subscribed"

            a, b = kiosks["kiosk-a"], kiosks["kiosk-b"]
            await a.write(a.log.arrived("c-1", 2.0))
            arrived = await client.next()
            assert (arrived["type"], arrived["room"]) == ("arrived", "Hall A")
            assert arrived["contact"]["name"] == "Ada Lovelace"
            assert arrived["scanner"] == "venue"

            # Kiosk B hears her too, far away: nothing changes.
            await b.write(b.log.arrived("c-1", 9.0))
            # She walks to B: close to B, far from A, for longer than the confirmation time.
            await b.write(b.log.zone("c-1", "immediate", 0.8))
            await a.write(a.log.zone("c-1", "far", 7.0))
            moved = await client.next()
            while moved["type"] == "zone":  # her zone in Hall A changed on the way out
                assert (moved["room"], moved["zone"]) == ("Hall A", "far")
                moved = await client.next()
            assert (moved["type"], moved["room"], moved["previous_room"]) == (
                "moved", "Hall B", "Hall A")
            assert moved["zone"] == "immediate"

            # She leaves the venue: both scanners let go; the grace passes; she departs.
            await a.write(a.log.departed("c-1"))
            await b.write(b.log.departed("c-1"))
            departed = await client.next()
            assert (departed["type"], departed["room"]) == ("departed", "Hall B")
            assert departed["reason"] == "out_of_range"
            client.close()

            # The same events, in order, on the venue's MQTT topic.
            await mqtt_out.until(lambda: len(mqtt_out.on("/events")) >= 4, 10)
            on_mqtt = [json.loads(m.payload) for m in mqtt_out.on("/events")]
            on_mqtt = [e for e in on_mqtt if e["type"] != "zone"]
            assert [(e["type"], e.get("room")) for e in on_mqtt] == [
                ("arrived", "Hall A"), ("moved", "Hall B"), ("departed", "Hall B")]
            assert [e["seq"] for e in on_mqtt] == [arrived["seq"], moved["seq"],
                                                   departed["seq"]]

            # hallway tail, pointed at the venue (a token goes only to a host the user names),
            # replays the same events from the log.
            tail = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hallway", "tail", "--connect",
                f"127.0.0.1:{service.tcp_port}", "--json",
                "--since", "0", "--count", "4", stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env={**os.environ, "HALLWAY_TOKEN": TOKEN},
            )
            async with asyncio.timeout(30):
                out, err = await tail.communicate()
            assert tail.returncode == 0, err.decode()
            tailed = [json.loads(line) for line in out.decode().splitlines()
                      if json.loads(line).get("type") in ("arrived", "moved", "departed")]
            assert [e["seq"] for e in tailed] == [arrived["seq"], moved["seq"], departed["seq"]]

            # Home Assistant: one device with three entities, and the state after leaving.
            slug = object_slug("c-1")
            await mqtt_out.until(
                lambda: any(m.topic.endswith(f"hallway_{slug}/config") for m in mqtt_out.messages),
                10)
            configs = {m.topic: json.loads(m.payload) for m in mqtt_out.messages
                       if m.topic.endswith("/config") and m.payload}
            tracker = configs[f"homeassistant/device_tracker/hallway_{slug}/config"]
            assert tracker["source_type"] == "bluetooth_le"
            assert tracker["availability_topic"] == f"hallway/{VENUE}/status"
            assert tracker["device"]["name"] == "Ada Lovelace"
            assert f"homeassistant/sensor/hallway_{slug}_room/config" in configs
            assert f"homeassistant/sensor/hallway_{slug}_zone/config" in configs
            states = [json.loads(m.payload) for m in mqtt_out.messages
                      if m.topic == tracker["state_topic"]]
            locations = [s["location"] for s in states]
            assert [x for i, x in enumerate(locations) if i == 0 or x != locations[i - 1]] == [
                "Hall A", "Hall B", "not_home"]

            status = service.status()
            assert status["scanners_online"] == ["kiosk-a", "kiosk-b", "kiosk-c"]
            assert status["duplicates"] >= 0
            assert status["mqtt_dropped"] == 0
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await running
    # After a clean stop the venue says offline, and holds no retained presence.
    held = await retained(site.port, f"hallway/{VENUE}/present/+", f"hallway/{VENUE}/status")
    assert not any(held.values())


async def test_scanner_offline_moves_its_contacts_after_the_grace(
    site: Site, tmp_path: Path
) -> None:
    config = venue_config(site, tmp_path, "unused")
    config = config.model_copy(update={
        "mdns": config.mdns.model_copy(update={"enabled": False}),
        "venue": config.venue.model_copy(update={"offline_grace_s": 1.0}),
    })
    ready = asyncio.Event()
    service = VenueService(config, state_dir=tmp_path, on_ready=lambda _: ready.set())
    stop = asyncio.Event()
    mqtt_out = Collector(site.port, (f"hallway/{VENUE}/events",), client_id="test-venue-out-2",
                         clean=True)
    async with scanners(site, tmp_path) as kiosks, collecting(mqtt_out):
        running = asyncio.create_task(service.run(stop))
        try:
            async with asyncio.timeout(20):
                await ready.wait()
            a, c = kiosks["kiosk-a"], kiosks["kiosk-c"]
            await a.write(a.log.arrived("c-2", 1.5))
            await mqtt_out.until(lambda: len(mqtt_out.on("/events")) >= 1, 10)
            await c.write(c.log.arrived("c-2", 8.0))
            await asyncio.sleep(1.5)
            # Kiosk A goes away (a clean stop says "offline"; a crash would leave the will).
            assert a.task is not None
            a.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await a.task
            await mqtt_out.until(lambda: len(mqtt_out.on("/events")) >= 2, 10)
            events = [json.loads(m.payload) for m in mqtt_out.on("/events")]
            assert [(e["type"], e.get("room")) for e in events] == [
                ("arrived", "Hall A"), ("moved", "Foyer")]
            assert service.status()["scanners_offline"] == ["kiosk-a"]
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await running
