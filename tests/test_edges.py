"""The edges the daemon and the venue share (``hallway.edges``), in process, against a real
SQLite file, real sockets and a real systemd notify socket: one event-log pruner on the
advertisements' clock, the venue's write give-up, background checkpoints and a watchdog fed
only while the event log is written."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from hallway.config import Config
from hallway.errors import StoreError
from hallway.hub import Hub
from hallway.models import EventType, PresenceEvent
from hallway.mqtt import dumps
from hallway.notify import SystemdNotifier
from hallway.service import Service
from hallway.sources.replay import ReplaySource
from hallway.store import SqliteStore
from hallway.venue.service import VenueService

TOKEN = "edges-test-token-0123456789"
TRACE_T0 = 1_600_000_000.0  # a trace recorded in 2020: long "expired" on the wall clock
BADGE = "C4:7C:8D:6A:12:34"
FAIL_WRITES = ("CREATE TRIGGER fail_writes BEFORE INSERT ON events "
               "BEGIN SELECT RAISE(FAIL, 'the disk is on fire'); END")


def arrival(contact: str, ts: float) -> PresenceEvent:
    return PresenceEvent(EventType.ARRIVED, ts, contact, zone="near", distance_m=2.0)


async def logged(store: SqliteStore) -> list[float]:
    return [json.loads(e.payload)["ts"] for e in await store.events_after(0)]


async def wait_until(check: Callable[[], Any], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():  # noqa: ASYNC110 - polling a database and a counter
            await asyncio.sleep(0.05)


# -- one pruner, one clock -------------------------------------------------------------------


async def test_the_hub_prunes_on_its_clock_also_while_idle(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "log.db")
    clock: list[float | None] = [None]
    hub = Hub(store, scanner="k", contact_lookup=lambda _: None, retention_s=100.0,
              retention_count=10_000, prune_interval_s=0.05, clock=lambda: clock[0])
    await hub.start()
    try:
        hub.publish([arrival("c-1", TRACE_T0), arrival("c-2", TRACE_T0 + 10)])
        await asyncio.sleep(0.3)  # several prune rounds: the clock is unknown, events are new
        assert await logged(store) == [TRACE_T0, TRACE_T0 + 10]
        clock[0] = TRACE_T0 + 105.0  # the stream moves on; c-1's arrival is now too old
        async def one_left() -> bool:
            return await logged(store) == [TRACE_T0 + 10]
        await wait_until(one_left, 2.0)  # no new event was needed to prune it
        assert hub.subscribe(since_seq=0).resync
        assert hub.subscribe(since_seq=1).needs_replay
    finally:
        await hub.close()
        await store.close()


async def test_a_replay_to_a_subscriber_holds_the_pruner(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "log.db")
    clock = [TRACE_T0]
    hub = Hub(store, scanner="k", contact_lookup=lambda _: None, retention_s=100.0,
              retention_count=10_000, prune_interval_s=0.05, clock=lambda: clock[0])
    await hub.start()
    try:
        hub.publish([arrival(f"c-{i}", TRACE_T0 + i) for i in range(5)])
        await wait_until(lambda: _count(store, 5))
        resuming = hub.subscribe(since_seq=0)
        assert resuming.needs_replay
        clock[0] = TRACE_T0 + 1000.0  # everything is past retention now ...
        await asyncio.sleep(0.3)
        assert len(await logged(store)) == 5  # ... but a replay is in progress
        resuming.replay_done()
        await wait_until(lambda: _count(store, 0), 2.0)
    finally:
        await hub.close()
        await store.close()


async def _count(store: SqliteStore, expected: int) -> bool:
    return len(await store.events_after(0)) == expected


def _daemon_config(tmp_path: Path, trace: Path, **storage: Any) -> Config:
    return Config.model_validate({
        "scanner": {"name": "edges", "source": "replay", "trace": str(trace)},
        "storage": {"database": str(tmp_path / "hallway.db"), **storage},
        "server": {"tcp_host": "127.0.0.1", "tcp_port": 0, "unix_socket": None,
                   "tokens": [TOKEN]},
        "mdns": {"enabled": False},
    })


async def test_the_daemon_keeps_a_replayed_traces_events_for_their_retention(
    tmp_path: Path,
) -> None:
    """Events of a trace from 2020 are fresh on the trace's clock: the daemon must not prune
    them by the wall clock (it used to, at start and every 10 minutes)."""
    db = tmp_path / "hallway.db"
    async with await SqliteStore.open(db) as store:
        await store.import_contacts([_badge_contact()])
        # A first run of the same trace left these (ten minutes earlier on its clock).
        await store.append_events([
            (1, TRACE_T0 - 600.0, "arrived", "c-ada", json.dumps({"ts": TRACE_T0 - 600.0})),
            (2, TRACE_T0 - 590.0, "departed", "c-ada", json.dumps({"ts": TRACE_T0 - 590.0})),
        ])
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(
        json.dumps({"ts": TRACE_T0 + i * 0.2, "address": BADGE, "address_type": "public",
                    "rssi": -55}) + "\n" for i in range(40)
    ))
    config = _daemon_config(tmp_path, trace, event_retention_s=3600.0)
    stop = asyncio.Event()
    service = Service(config, source=ReplaySource(trace), state_dir=tmp_path,
                      notifier=SystemdNotifier(None))
    running = asyncio.create_task(service.run(stop))
    try:
        async def arrived_again() -> bool:
            try:
                return service.hub.last_seq >= 3
            except RuntimeError:  # not started yet
                return False
        await wait_until(arrived_again, 20.0)
    finally:
        stop.set()
        assert await running == 0
    async with await SqliteStore.open(db) as store:
        kept = await logged(store)
    assert kept[:2] == [TRACE_T0 - 600.0, TRACE_T0 - 590.0]
    assert any(ts >= TRACE_T0 for ts in kept[2:])


def _badge_contact() -> Any:
    from hallway.models import Contact, ContactKey, KeyKind

    return Contact(id="c-ada", name="Ada Lovelace",
                   keys=(ContactKey(KeyKind.ADDRESS, BADGE),))


# -- the venue has the daemon's edges -------------------------------------------------------

VENUE_TOPIC = "hallway/expo/scanners/kiosk-a/events"


def _venue_config(tmp_path: Path, **storage: Any) -> Config:
    with socket.socket() as probe:  # a port nobody listens on: the broker is down
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    return Config.model_validate({
        "scanner": {"name": "venue"},
        "storage": {"database": str(tmp_path / "venue.db"), **storage},
        "server": {"tcp_host": "127.0.0.1", "tcp_port": 0, "unix_socket": None,
                   "tokens": [TOKEN]},
        "mdns": {"enabled": False},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": dead_port, "venue": "expo",
                 "reconnect_max_s": 0.5},
        "venue": {"rooms": {"kiosk-a": "Hall A"}},
    })


def _scanner_event(seq: int, ts: float) -> bytes:
    return dumps({"type": "arrived", "seq": seq, "ts": ts, "scanner": "kiosk-a",
                  "contact": {"id": f"c-{seq}", "name": f"Person {seq}"}, "zone": "near",
                  "distance_m": 2.0, "rssi": -60.0, "via": "hallway-v1"})


class NotifySocket:
    """A systemd notify socket: what the service sent."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.path = path

    def notifier(self, watchdog_usec: int = 400_000) -> SystemdNotifier:
        return SystemdNotifier(str(self.path), watchdog_usec=watchdog_usec)

    def drain(self) -> list[str]:
        got = []
        while True:
            try:
                got.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return got

    async def watchdogs_within(self, seconds: float) -> int:
        self.drain()
        await asyncio.sleep(seconds)
        return sum("WATCHDOG=1" in m for m in self.drain())


@asynccontextmanager
async def running_venue(
    tmp_path: Path, notify: NotifySocket | None = None, **storage: Any
) -> AsyncIterator[tuple[VenueService, asyncio.Task[int]]]:
    ready = asyncio.Event()
    venue = VenueService(_venue_config(tmp_path, **storage), state_dir=tmp_path,
                         notifier=notify.notifier() if notify else SystemdNotifier(None),
                         on_ready=lambda _: ready.set())
    stop = asyncio.Event()
    task = asyncio.create_task(venue.run(stop))
    try:
        async with asyncio.timeout(15):
            await ready.wait()
        yield venue, task
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_venue_gives_up_after_write_failure_exit_s(tmp_path: Path) -> None:
    async with running_venue(tmp_path, write_failure_exit_s=1.0) as (venue, task):
        with sqlite3.connect(tmp_path / "venue.db") as db:
            db.execute(FAIL_WRITES)
        now = time.time()
        venue.receive(VENUE_TOPIC, _scanner_event(1, now))
        started = time.monotonic()
        reason = r"could not be written for \d+ s: .*the disk is on fire"
        with pytest.raises(StoreError, match=reason):
            async with asyncio.timeout(10):
                await task
        assert 1.0 <= time.monotonic() - started < 5.0


async def test_the_venue_checkpoints_its_log_in_the_background(tmp_path: Path) -> None:
    """Events reach the database file itself (not only the WAL) within about a second, as in
    the daemon: read the file with the WAL ignored."""
    async with running_venue(tmp_path) as (venue, _):
        now = time.time()
        for seq in range(1, 4):
            venue.receive(VENUE_TOPIC, _scanner_event(seq, now + seq))
        uri = f"file:{tmp_path / 'venue.db'}?immutable=1"

        async def in_the_file() -> bool:
            with sqlite3.connect(uri, uri=True) as db:
                try:
                    return int(db.execute("SELECT count(*) FROM events").fetchone()[0]) >= 1
                except sqlite3.OperationalError:  # not even the schema is in the file yet
                    return False
        await wait_until(in_the_file, 5.0)


async def test_the_venue_watchdog_stops_while_its_log_cannot_be_written(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    async with running_venue(tmp_path, notify, write_failure_exit_s=60.0) as (venue, task):
        assert await notify.watchdogs_within(1.0) >= 2  # healthy, the broker down or not
        with sqlite3.connect(tmp_path / "venue.db") as db:
            db.execute(FAIL_WRITES)
        now = time.time()
        venue.receive(VENUE_TOPIC, _scanner_event(1, now))
        await asyncio.sleep(0.5)
        assert await notify.watchdogs_within(1.2) == 0
        with sqlite3.connect(tmp_path / "venue.db") as db:
            db.execute("DROP TRIGGER fail_writes")
        await asyncio.sleep(2.5)  # the retry backoff reaches the store again
        assert await notify.watchdogs_within(1.0) >= 2
        assert not task.done()
    notify.sock.close()
