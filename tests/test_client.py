"""``hallway.client`` against real daemons: restarts, cut lines, lagged, resync; TLS pinning and
the token rule against scripted servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import hallway.client as hc
from hallway.config import ServerConfig
from hallway.hub import Hub
from hallway.models import Contact, DepartReason, EventType, KeyKind, PresenceEvent
from hallway.server import EventServer
from hallway.store import SqliteStore
from tests.client_env import (
    CONTACTS,
    CuttingProxy,
    FakeConnection,
    FakeHallway,
    cycling_trace,
    event_line,
    logged_seqs,
    self_signed,
    server_tls_context,
)
from tests.daemon_env import TOKEN, free_port, import_contacts, start_daemon, write_config


class Collector:
    """Runs a subscription in a task and keeps everything it yields and every state change."""

    def __init__(self, sub: hc.Subscription, *, slow_s: float = 0.0, slow_for: int = 0) -> None:
        self.sub = sub
        self.messages: list[hc.Message] = []
        self.states: list[hc.StateChange] = []
        self.error: BaseException | None = None
        self._slow_s = slow_s
        self._slow_for = slow_for
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for message in self.sub:
                self.messages.append(message)
                if self._slow_for > 0 and isinstance(message, hc.Event):
                    self._slow_for -= 1
                    await asyncio.sleep(self._slow_s)
        except Exception as exc:
            self.error = exc

    @property
    def events(self) -> list[hc.Event]:
        return [m for m in self.messages if isinstance(m, hc.Event)]

    @property
    def seqs(self) -> list[int]:
        return [e.seq for e in self.events]

    async def wait_for(self, check: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if self.error is not None:
                raise AssertionError(f"subscription failed: {self.error!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; got {self.seqs}, "
                                     f"states {[s.state.value for s in self.states]}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        await self.sub.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def _collect(where: Any, **kw: Any) -> Collector:
    states: list[hc.StateChange] = []
    collector = Collector(hc.connect(where, on_state=states.append, retry_max_s=1.0, **kw))
    collector.states = states
    return collector


def _assert_exactly_once(collector: Collector, db: Path) -> None:
    """The caller saw every logged event after its start exactly once, in order."""
    first = collector.messages[0]
    assert isinstance(first, hc.Subscribed)
    seqs = collector.seqs
    assert seqs == sorted(set(seqs)), "duplicates or out of order"
    logged = [s for s in logged_seqs(db) if first.seq < s <= seqs[-1]]
    assert seqs == logged


# -- a real daemon (hallway run) ---------------------------------------------------------------


@pytest.fixture
def venue(tmp_path: Path) -> tuple[Path, int]:
    import_contacts(tmp_path, CONTACTS)
    port = free_port()
    trace = cycling_trace(tmp_path / "trace.jsonl", duration_s=240)
    return write_config(tmp_path, port=port, trace=trace), port


async def test_kill_and_restart_under_a_subscriber_exactly_once(
        tmp_path: Path, venue: tuple[Path, int]) -> None:
    config, port = venue
    daemon = start_daemon(tmp_path, config, port=port)
    collector = None
    try:
        await asyncio.to_thread(daemon.wait_for_notification, "READY=1", 20)
        collector = _collect(f"127.0.0.1:{port}", token=TOKEN)
        await collector.wait_for(lambda: len(collector.seqs) >= 4, 30, "4 events")
        daemon.stop(signal.SIGKILL)
        await collector.wait_for(
            lambda: any(s.state is hc.State.BACKING_OFF for s in collector.states), 10,
            "backing off")
        seen_before = len(collector.seqs)
        daemon = start_daemon(tmp_path, config, port=port)
        await asyncio.to_thread(daemon.wait_for_notification, "READY=1", 20)
        await collector.wait_for(lambda: len(collector.seqs) >= seen_before + 4, 30,
                                 "events after the restart")
        # An orderly restart too.
        assert daemon.stop() == 0
        seen_before = len(collector.seqs)
        daemon = start_daemon(tmp_path, config, port=port)
        await asyncio.to_thread(daemon.wait_for_notification, "READY=1", 20)
        await collector.wait_for(lambda: len(collector.seqs) >= seen_before + 4, 30,
                                 "events after the second restart")
        assert collector.sub.state is hc.State.CONNECTED
        assert collector.sub.reconnects >= 2
    finally:
        if collector is not None:
            await collector.stop()
        daemon.stop()
    assert collector.error is None
    _assert_exactly_once(collector, tmp_path / "hallway.db")
    kinds = {type(e) for e in collector.events}
    assert hc.Arrived in kinds
    assert hc.Departed in kinds
    assert any(isinstance(e, hc.Departed) and e.reason == "shutdown" for e in collector.events)
    states = [s.state for s in collector.states]
    assert states[:2] == [hc.State.CONNECTING, hc.State.CONNECTED]
    assert hc.State.RESUMING in states
    assert hc.State.BACKING_OFF in states
    assert states[-1] is hc.State.CLOSED


async def test_connection_cut_mid_line_exactly_once(
        tmp_path: Path, venue: tuple[Path, int]) -> None:
    config, port = venue
    daemon = start_daemon(tmp_path, config, port=port)
    proxy = CuttingProxy(upstream=port, cuts=3, after_events=2)
    collector = None
    try:
        await asyncio.to_thread(daemon.wait_for_notification, "READY=1", 20)
        await proxy.start()
        collector = _collect(f"127.0.0.1:{proxy.port}", token=TOKEN)
        await collector.wait_for(lambda: proxy.cut_done == 3 and len(collector.seqs) >= 10, 60,
                                 "three cuts and ten events")
    finally:
        if collector is not None:
            await collector.stop()
        await proxy.close()
        daemon.stop()
    assert collector.error is None
    assert proxy.connections >= 4
    assert collector.sub.reconnects >= 3
    _assert_exactly_once(collector, tmp_path / "hallway.db")


# -- an in-process daemon core (store, hub, server), for volume ------------------------------


def _event(n: int) -> PresenceEvent:
    kind = EventType.ARRIVED if n % 2 == 0 else EventType.DEPARTED
    return PresenceEvent(kind, time.time(), f"c-{n % 50}", zone="near", distance_m=2.0,
                         rssi=-60.0, via=KeyKind.ADDRESS,
                         dwell_s=1.0 if kind is EventType.DEPARTED else None,
                         reason=DepartReason.TIMEOUT if kind is EventType.DEPARTED else None)


class Core:
    """SqliteStore + Hub + EventServer on a real database and real sockets."""

    def __init__(self, db: Path, sock: str, *, retention_count: int = 100_000,
                 queue_size: int = 64) -> None:
        self.db = db
        self.sock = sock
        self.retention_count = retention_count
        self.config = ServerConfig(tcp_port=0, unix_socket=sock, tokens=(TOKEN,),
                                   queue_size=queue_size, ping_interval_s=15.0)
        self.published = 0

    async def start(self) -> None:
        contacts = {f"c-{i}": Contact(id=f"c-{i}", name=f"Person {i}") for i in range(50)}
        self.store = await SqliteStore.open(self.db)
        self.hub = Hub(self.store, scanner="core", contact_lookup=contacts.get,
                       retention_s=86400.0, retention_count=self.retention_count)
        await self.hub.start()
        self.server = EventServer(self.config, self.hub, scanner="core", version="test",
                                  tokens=[TOKEN])
        await self.server.start()
        port = self.server.tcp_port
        assert port is not None
        self.port = port

    async def publish(self, count: int, *, batch: int = 50, pause_s: float = 0.005) -> None:
        for start in range(0, count, batch):
            self.hub.publish([_event(self.published + i) for i in range(min(batch, count - start))])
            self.published += min(batch, count - start)
            await asyncio.sleep(pause_s)
        for _ in range(3000):
            if not self.hub.stats()["pending"]:
                return
            await asyncio.sleep(0.002)

    async def stop(self) -> None:
        await self.hub.close()
        await self.server.close()
        await self.store.close()


@pytest.fixture
def short_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="hwc-")  # Unix socket paths must stay short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def core(tmp_path: Path, short_dir: str) -> AsyncIterator[Core]:
    c = Core(tmp_path / "core.db", os.path.join(short_dir, "h.sock"), queue_size=8)
    await c.start()
    yield c
    await c.stop()


async def test_a_slow_consumer_is_lagged_and_resumes_exactly_once(core: Core) -> None:
    states: list[hc.StateChange] = []
    sub = hc.connect(core.sock, token=TOKEN, on_state=states.append, buffer_bytes=16 << 10)
    collector = Collector(sub, slow_s=0.002, slow_for=1500)
    collector.states = states
    try:
        await collector.wait_for(lambda: bool(collector.messages), 10, "subscribed")
        await core.publish(4000)
        await collector.wait_for(lambda: len(collector.seqs) >= 4000, 120, "every event")
    finally:
        await collector.stop()
    assert collector.error is None
    assert core.server.stats()["lagged"] >= 1
    assert collector.seqs == list(range(1, 4001))
    assert any(s.state is hc.State.RESUMING and s.reason and "lagged" in s.reason
               for s in states)


async def test_resume_after_the_retention_horizon_gets_resync(tmp_path: Path,
                                                              short_dir: str) -> None:
    core = Core(tmp_path / "core.db", os.path.join(short_dir, "h.sock"), retention_count=100)
    await core.start()
    proxy = CuttingProxy(upstream=core.port)
    await proxy.start()
    states: list[hc.StateChange] = []
    collector = Collector(hc.connect(f"127.0.0.1:{proxy.port}", token=TOKEN,
                                     on_state=states.append, retry_max_s=0.5))
    try:
        await collector.wait_for(lambda: bool(collector.messages), 10, "subscribed")
        await core.publish(30)
        await collector.wait_for(lambda: len(collector.seqs) >= 30, 10, "the first events")
        proxy.paused = True
        proxy.drop_all()
        await collector.wait_for(lambda: any(s.state is hc.State.BACKING_OFF for s in states),
                                 10, "backing off")
        await core.publish(600)  # far beyond the 100 retained; the hub prunes the rest
        proxy.paused = False
        await collector.wait_for(lambda: any(isinstance(m, hc.Resync)
                                             for m in collector.messages), 20, "resync")
        await core.publish(20)
        await collector.wait_for(lambda: collector.seqs[-1] == 650, 10, "the live events")
    finally:
        await collector.stop()
        await proxy.close()
        await core.stop()
    assert collector.error is None
    resync = next(m for m in collector.messages if isinstance(m, hc.Resync))
    assert resync.since_seq == 30
    assert resync.seq >= 630
    assert all(isinstance(p, hc.Present) for p in resync.present)
    index = collector.messages.index(resync)
    before = [m.seq for m in collector.messages[:index] if isinstance(m, hc.Event)]
    after = [m.seq for m in collector.messages[index:] if isinstance(m, hc.Event)]
    assert before == list(range(1, 31))
    assert after == list(range(resync.seq + 1, 651))


# -- TLS pinning and the token rule, against scripted servers ----------------------------------


async def _consume(sub: hc.Subscription) -> None:
    async with sub:
        async for _ in sub:
            pass


async def _hallway_script(conn: FakeConnection) -> None:
    await conn.send({"type": "hello", "protocol": 1, "server": "hallway/fake", "scanner": "fake",
                     "auth": "token"})
    request = await conn.read()
    if not request or request.get("token") != TOKEN:
        await conn.send({"type": "error", "code": "unauthorized", "message": "bad token"})
        return
    await conn.send({"type": "subscribed", "seq": 0, "present": []})
    for seq in (1, 2, 3):
        await conn.send(event_line(seq, {"id": "c-1", "name": "Ada"}))


async def test_tls_with_the_pinned_fingerprint_subscribes(tmp_path: Path) -> None:
    cert, key, fingerprint = self_signed(tmp_path)
    fake = FakeHallway(_hallway_script, tls=server_tls_context(cert, key))
    await fake.start()
    try:
        uri = f"hallway://127.0.0.1:{fake.port}?token={TOKEN}&fp=sha256:{fingerprint}"
        async with hc.connect(uri) as sub:
            got = []
            async for message in sub:
                got.append(message)
                if isinstance(message, hc.Event) and message.seq == 3:
                    break
    finally:
        await fake.close()
    assert isinstance(got[0], hc.Subscribed)
    assert [m.seq for m in got[1:] if isinstance(m, hc.Event)] == [1, 2, 3]
    assert TOKEN.encode() in fake.received


async def test_a_certificate_that_does_not_match_gets_nothing(tmp_path: Path) -> None:
    cert, key, _ = self_signed(tmp_path, "impostor")
    _, _, pinned = self_signed(tmp_path, "real")
    fake = FakeHallway(_hallway_script, tls=server_tls_context(cert, key))
    await fake.start()
    try:
        uri = f"hallway://127.0.0.1:{fake.port}?token={TOKEN}&fp=sha256:{pinned}"
        with pytest.raises(hc.FingerprintMismatch, match="does not match the pinned"):
            await _consume(hc.connect(uri))
        with pytest.raises(hc.FingerprintMismatch):
            await hc.status(uri)
        with pytest.raises(hc.FingerprintMismatch):
            await hc.present(uri)
    finally:
        await fake.close()
    assert fake.connections == 3
    assert fake.received == b""


async def test_a_plain_server_given_a_fingerprint_gets_nothing(tmp_path: Path) -> None:
    _, _, pinned = self_signed(tmp_path)
    fake = FakeHallway(_hallway_script)
    await fake.start()
    try:
        with pytest.raises(hc.Unreachable):
            await _consume(hc.connect(f"127.0.0.1:{fake.port}", token=TOKEN, fingerprint=pinned,
                                      give_up_after_s=1.0, retry_max_s=0.2))
    finally:
        await fake.close()
    assert fake.connections >= 1
    assert TOKEN.encode() not in fake.received


async def test_a_discovered_candidate_never_gets_a_token_without_a_fingerprint() -> None:
    candidate = hc.Candidate(name="kiosk", host="127.0.0.1", port=1)
    with pytest.raises(hc.TokenWithheld):
        hc.connect(candidate, token=TOKEN)
    with pytest.raises(hc.TokenWithheld):
        hc.connect(candidate.target(), token=TOKEN)
    with pytest.raises(hc.TokenWithheld):
        await hc.status(candidate.target(), token=TOKEN)


async def test_rate_limited_is_waited_out() -> None:
    attempts: list[float] = []

    async def script(conn: FakeConnection) -> None:
        attempts.append(time.monotonic())
        if len(attempts) <= 2:
            await conn.send({"type": "error", "code": "rate_limited", "message": "slow down",
                             "retry_after_s": 0.6})
            return
        await _hallway_script(conn)

    fake = FakeHallway(script)
    await fake.start()
    states: list[hc.StateChange] = []
    try:
        async with hc.connect(f"127.0.0.1:{fake.port}", token=TOKEN,
                              on_state=states.append) as sub:
            async for message in sub:
                if isinstance(message, hc.Event):
                    break
    finally:
        await fake.close()
    assert len(attempts) == 3
    assert attempts[1] - attempts[0] >= 0.55
    assert attempts[2] - attempts[1] >= 0.55
    backoffs = [s for s in states if s.state is hc.State.BACKING_OFF]
    assert len(backoffs) == 2
    assert all(s.retry_in_s is not None and s.retry_in_s >= 0.6 for s in backoffs)
    assert all("rate limited" in (s.reason or "") for s in backoffs)


async def test_unauthorized_ends_the_subscription() -> None:
    fake = FakeHallway(_hallway_script)
    await fake.start()
    try:
        with pytest.raises(hc.Refused) as caught:
            await _consume(hc.connect(f"127.0.0.1:{fake.port}", token="wrong-token-000000"))
    finally:
        await fake.close()
    assert caught.value.code == "unauthorized"
    assert fake.connections == 1


def test_targets_and_uris() -> None:
    fp = "ab" * 32
    target = hc.parse_target(f"hallway://[::1]:7000?token=a%26b&fp=sha256:{fp.upper()}")
    got = (target.host, target.port, target.token, target.fingerprint)
    assert got == ("::1", 7000, "a&b", fp)
    assert target.tls
    assert target.named
    assert hc.parse_target(target.uri()) == target
    assert "a&b" not in repr(target)
    plain = hc.parse_target("hallway://kiosk.local?token=t")
    assert (plain.port, plain.fingerprint, plain.tls) == (7447, None, False)
    assert hc.parse_target("/run/hallway/hallway.sock").path == "/run/hallway/hallway.sock"
    assert hc.parse_target("10.0.0.5:7447").host == "10.0.0.5"
    assert hc.parse_fingerprint(":".join(["AB"] * 32)) == fp
    for bad in ("hallway://h:1?fp=sha1:00", "hallway://h:1?fp=sha256:xyz", "http://h:1",
                "hallway://:1", "nohost", "h:99999", "hallway://h:1?token=a&token=b"):
        with pytest.raises(hc.TargetError):
            hc.parse_target(bad)


def test_event_parsing_is_typed_and_lenient_where_the_protocol_grows() -> None:
    from hallway.client._messages import parse_event

    contact = {"id": "c-1", "name": "Ada", "tags": ["speaker"], "handles": {"x": "ada"},
               "display": True, "knows": ["c-2"], "future": 1}
    left = parse_event({"type": "departed", "seq": 7, "ts": 12, "contact": contact,
                        "zone": "far", "distance_m": 9, "rssi": -80.5, "via": "irk",
                        "dwell_s": 30.5, "reason": "timeout", "carrier": "checkin"})
    assert isinstance(left, hc.Departed)
    assert (left.seq, left.ts, left.distance_m, left.dwell_s, left.reason) == (
        7, 12.0, 9.0, 30.5, "timeout")
    assert isinstance(left.ts, float)
    assert left.carrier == "checkin"
    assert left.contact.tags == ("speaker",)
    assert left.contact.display is True
    assert left.contact.knows == ("c-2",)
    assert left.contact.raw["future"] == 1
    moved = parse_event({"type": "zone", "seq": 8, "contact": {"id": "c-1"},
                         "previous_zone": "far", "zone": "near"})
    assert isinstance(moved, hc.ZoneChanged)
    assert moved.previous_zone == "far"
    assert moved.contact.name is None
    assert moved.contact.knows is None
    novel = parse_event({"type": "waved", "seq": 9, "contact": {"id": "c-1"}, "ts": "x"})
    assert type(novel) is hc.Event
    assert novel.ts is None
    for bad in ({"type": "arrived", "seq": True, "contact": {"id": "c"}},
                {"type": "arrived", "seq": "1", "contact": {"id": "c"}},
                {"type": "arrived", "seq": 1, "contact": {"name": "no id"}},
                {"type": "arrived", "seq": 1}):
        with pytest.raises(hc.ProtocolError):
            parse_event(bad)


def test_every_public_name_is_documented() -> None:
    import inspect

    missing = []
    for name in hc.__all__:
        value = getattr(hc, name)
        if isinstance(value, str | int):
            continue
        if not inspect.getdoc(value):
            missing.append(name)
        if inspect.isclass(value):
            for attr, member in vars(value).items():
                if attr.startswith("_") or (not callable(member) and not isinstance(
                        member, property | classmethod)):
                    continue
                if not inspect.getdoc(getattr(value, attr)):
                    missing.append(f"{name}.{attr}")
    assert missing == []
