"""Shared by the MQTT and venue tests: a real Mosquitto configured as docs/venue.md says,
a subscriber that keeps everything, and SPEC §5 events written into a store's log."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from hallway.config import MqttConfig
from hallway.events import event_json
from hallway.models import Contact, ContactKey, DepartReason, EventType, KeyKind, PresenceEvent
from hallway.mqtt import MqttPublisher
from hallway.store import SqliteStore
from tests.support.mosquitto import (
    MosquittoBroker,
    TlsFiles,
    add_passwords,
    docs_broker_config,
    free_port,
    make_tls,
)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "venue.md"
PASSWORDS = {
    "kiosk-a": "kiosk-a-password-1",
    "kiosk-b": "kiosk-b-password-2",
    "venue": "venue-password-3",
    "reader": "reader-password-4",
    "kiosk-c": "kiosk-c-password-5",
}
VENUE = "expo"
KEY_HEX = "75c734c6dd1a782de7a965da5eb93125"
IRK_HEX = "ec0234a357c8ad05341010a60a397d9b"

CONTACTS = {
    f"c-{i}": Contact(
        id=f"c-{i}", name=f"Person {i}", org="Org", tags=("speaker",),
        keys=(ContactKey(KeyKind.HALLWAY_V1, f"{i:032x}"),),
    )
    for i in range(1, 6)
}
CONTACTS["c-1"] = Contact(
    id="c-1", name="Ada Lovelace", handles={"linkedin": "ada"},
    keys=(ContactKey(KeyKind.HALLWAY_V1, KEY_HEX), ContactKey(KeyKind.IRK, IRK_HEX)),
)


# -- the broker ------------------------------------------------------------------------------


@dataclass
class Site:
    broker: MosquittoBroker
    port: int
    tls_port: int
    tls: TlsFiles


@contextlib.contextmanager
def running_site(tmp_path: Path) -> Iterator[Site]:
    """The docs' broker config in ``tmp_path``, started; stopped on exit."""
    tls = make_tls(tmp_path / "tls", clients=["kiosk-c"])
    port, tls_port = free_port(), free_port()
    config = docs_broker_config(DOCS.read_text(), tmp_path, port=port, tls_port=tls_port,
                                tls=tls)
    add_passwords(tmp_path / "passwd", PASSWORDS)
    broker = MosquittoBroker(tmp_path, config, ports=(port, tls_port))
    broker.start()
    try:
        yield Site(broker, port, tls_port, tls)
    finally:
        broker.stop()


def scanner_config(site: Site, user: str = "kiosk-a", **extra: Any) -> MqttConfig:
    values: dict[str, Any] = {
        "enabled": True, "host": "127.0.0.1", "port": site.port, "username": user,
        "password": PASSWORDS[user], "venue": VENUE, "reconnect_max_s": 0.5,
        "present_interval_s": 0.2, **extra,
    }
    return MqttConfig(**values)


# -- a subscriber that keeps everything -------------------------------------------------------


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class Collector:
    """A venue-style subscriber: persistent session, QoS 1, reconnects until stopped."""

    port: int
    topics: tuple[str, ...]
    user: str = "venue"
    client_id: str = "test-collector"
    clean: bool = False
    messages: list[Received] = field(default_factory=list)
    connects: int = 0
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, username=self.user, password=PASSWORDS[self.user],
                    identifier=self.client_id, clean_session=self.clean, timeout=5,
                ) as client:
                    self.connects += 1
                    for topic in self.topics:
                        await client.subscribe(topic, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        payload = message.payload
                        assert isinstance(payload, bytes)
                        self.messages.append(Received(str(message.topic), payload,
                                                      message.retain))
                        self._new.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    def on(self, suffix: str) -> list[Received]:
        return [m for m in self.messages if m.topic.endswith(suffix)]

    def event_seqs(self) -> list[int]:
        return [json.loads(m.payload)["seq"] for m in self.on("/events")]

    async def until(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._new.clear()
                await self._new.wait()


@contextlib.asynccontextmanager
async def collecting(collector: Collector) -> AsyncIterator[Collector]:
    task = asyncio.create_task(collector.run())
    try:
        async with asyncio.timeout(10):
            await collector.subscribed.wait()
        yield collector
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def publishing(publisher: MqttPublisher) -> AsyncIterator[MqttPublisher]:
    task = asyncio.create_task(publisher.run())
    try:
        yield publisher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def retained(port: int, topic_filter: str, status_topic: str) -> dict[str, bytes]:
    """The retained messages under ``topic_filter`` (read until ``status_topic``'s arrives)."""
    found: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", port, username="venue",
                              password=PASSWORDS["venue"], timeout=5) as client:
        await client.subscribe(topic_filter, qos=1)
        # Mosquitto queues a subscription's retained messages with its SUBACK, so once the
        # second subscription's retained status arrives, the first one's have all come.
        await client.subscribe(status_topic, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                if str(message.topic) == status_topic:
                    break
                found[str(message.topic)] = message.payload
    return found


async def retained_status(port: int, topic: str) -> bytes | None:
    """The retained message on one topic, or None (it would come right after the SUBACK)."""
    async with aiomqtt.Client("127.0.0.1", port, username="venue",
                              password=PASSWORDS["venue"], timeout=5) as client:
        await client.subscribe(topic, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    return message.payload
    return None


# -- events in the store, as the hub writes them ---------------------------------------------


class Log:
    """Writes SPEC §5 events into a store's log with consecutive ``seq``."""

    def __init__(self, store: SqliteStore, scanner: str = "kiosk-a") -> None:
        self.store = store
        self.scanner = scanner
        self.ts = 1_763_700_000.0

    async def write(self, events: list[PresenceEvent],
                    tamper: Callable[[dict[str, Any]], None] | None = None) -> list[int]:
        seq = await self.store.last_seq()
        rows = []
        for event in events:
            seq += 1
            payload = event_json(event, seq=seq, scanner=self.scanner,
                                 contact=CONTACTS.get(event.contact_id))
            if tamper is not None:
                tamper(payload)
            rows.append((seq, event.ts, event.type.value, event.contact_id, json.dumps(payload)))
        await self.store.append_events(rows)
        return [row[0] for row in rows]

    def arrived(self, cid: str, distance_m: float = 2.0) -> PresenceEvent:
        self.ts += 1
        return PresenceEvent(EventType.ARRIVED, self.ts, cid, zone="near",
                             distance_m=distance_m, rssi=-65.0, via=KeyKind.HALLWAY_V1)

    def zone(self, cid: str, zone: str, distance_m: float) -> PresenceEvent:
        self.ts += 1
        return PresenceEvent(EventType.ZONE, self.ts, cid, zone=zone, distance_m=distance_m,
                             rssi=-70.0, via=KeyKind.HALLWAY_V1, previous_zone="near")

    def departed(self, cid: str) -> PresenceEvent:
        self.ts += 1
        return PresenceEvent(EventType.DEPARTED, self.ts, cid, zone="far", distance_m=9.0,
                             rssi=-80.0, via=KeyKind.HALLWAY_V1, dwell_s=10.0,
                             reason=DepartReason.OUT_OF_RANGE)
