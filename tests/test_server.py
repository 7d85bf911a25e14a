"""SPEC §6 on real sockets (TCP on 127.0.0.1 and a Unix socket) with a real SQLite event log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hallway.config import ServerConfig
from hallway.errors import ConfigError
from hallway.hub import Hub
from hallway.models import Contact, DepartReason, EventType, KeyKind, PresenceEvent
from hallway.server import EventServer, _PeerPace, _TurnGate, load_tokens
from hallway.session import AUTH_BURST
from hallway.store import SqliteStore

TOKEN = "s3cret-token-for-tests-0123456789"
CONTACTS = {
    "c-1": Contact(id="c-1", name="Ada Lovelace", org="Analytical Engines", tags=("speaker",)),
    "c-2": Contact(id="c-2", name="Grace Hopper", tags=("staff",)),
}


def arrived(contact: str, ts: float | None = None) -> PresenceEvent:
    return PresenceEvent(EventType.ARRIVED, time.time() if ts is None else ts, contact,
                         zone="near", distance_m=2.1, rssi=-66.5, via=KeyKind.HALLWAY_V1)


def departed(contact: str, ts: float | None = None) -> PresenceEvent:
    return PresenceEvent(EventType.DEPARTED, time.time() if ts is None else ts, contact,
                         zone="far", distance_m=9.0, rssi=-80.0, via=KeyKind.HALLWAY_V1,
                         dwell_s=12.0, reason=DepartReason.TIMEOUT)


class Client:
    """A line-oriented protocol client on a non-blocking socket we read only when told to."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.eof = False

    @classmethod
    async def tcp(cls, port: int, *, rcvbuf: int | None = None) -> Client:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(sock)

    @classmethod
    async def unix(cls, path: str) -> Client:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, path)
        return cls(sock)

    async def send_raw(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def send(self, obj: dict[str, Any]) -> None:
        await self.send_raw((json.dumps(obj) + "\n").encode())

    async def raw_line(self, wait_s: float = 3.0) -> bytes | None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(wait_s):
            while b"\n" not in self.buffer:
                if self.eof:
                    return None
                try:
                    chunk = await loop.sock_recv(self.sock, 65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    self.eof = True
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    async def line(self, wait_s: float = 3.0) -> dict[str, Any] | None:
        raw = await self.raw_line(wait_s)
        return None if raw is None else json.loads(raw)

    async def rest(self, wait_s: float = 3.0) -> list[dict[str, Any]]:
        """Every line until the server closes."""
        out = []
        while (msg := await self.line(wait_s)) is not None:
            out.append(msg)
        return out

    async def event(self, wait_s: float = 3.0) -> dict[str, Any]:
        """The next line that is not a ping."""
        while True:
            msg = await self.line(wait_s)
            assert msg is not None, "connection closed"
            if msg["type"] != "ping":
                return msg

    async def subscribe(self, token: str = TOKEN, **fields: Any) -> dict[str, Any]:
        hello = await self.line()
        assert hello is not None
        assert hello["type"] == "hello"
        await self.send({"type": "subscribe", "token": token, **fields})
        reply = await self.line()
        assert reply is not None
        assert reply["type"] == "subscribed", reply
        return reply

    def close(self) -> None:
        self.sock.close()


class Rig:
    """Store + hub + server, restartable on the same database."""

    def __init__(self, db: Path, sock_path: str, **server: Any) -> None:
        self.db = db
        self.sock_path = sock_path
        options: dict[str, Any] = {
            "tcp_port": 0, "unix_socket": sock_path, "tokens": (TOKEN,), "queue_size": 64,
            "auth_timeout_s": 5.0, "ping_interval_s": 15.0, "max_line_bytes": 4096,
        }
        options.update(server)
        self.config = ServerConfig(**options)
        self.tokens: list[str] = list(self.config.tokens)
        self.clients: list[Client] = []

    async def start(self) -> None:
        self.store = await SqliteStore.open(self.db)
        self.hub = Hub(self.store, scanner="kiosk-a", contact_lookup=CONTACTS.get,
                       retention_s=86400.0, retention_count=100_000)
        await self.hub.start()
        self.server = EventServer(self.config, self.hub, scanner="kiosk-a", version="9.9",
                                  tokens=self.tokens)
        await self.server.start()
        port = self.server.tcp_port
        assert port is not None
        self.port = port

    async def publish(self, events: list[PresenceEvent]) -> None:
        """Publish and wait until the events are logged and fanned out."""
        self.hub.publish(events)
        for _ in range(1500):
            if not self.hub.stats()["pending"]:
                return
            await asyncio.sleep(0.002)
        raise AssertionError("events were not delivered")

    async def stop(self) -> None:
        await self.hub.close()
        await self.server.close()
        await self.store.close()

    async def tcp(self, **kw: Any) -> Client:
        client = await Client.tcp(self.port, **kw)
        self.clients.append(client)
        return client

    async def unix(self) -> Client:
        client = await Client.unix(self.sock_path)
        self.clients.append(client)
        return client


@pytest.fixture
def short_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="hw-")  # Unix socket paths must stay under 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def rig_factory(tmp_path: Path, short_dir: str) -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(**server: Any) -> Rig:
        rig = Rig(tmp_path / "events.db", os.path.join(short_dir, "h.sock"), **server)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        for client in rig.clients:
            client.close()


@pytest.fixture
async def rig(rig_factory: Any) -> AsyncIterator[Rig]:
    r: Rig = rig_factory()
    await r.start()
    yield r
    await r.stop()


# -- handshake and auth ---------------------------------------------------------------------


async def test_hello_subscribe_and_live_events_on_tcp_and_unix(rig: Rig) -> None:
    await rig.publish([arrived("c-1", 100.0)])
    tcp, unix = await rig.tcp(), await rig.unix()
    for client in (tcp, unix):
        hello = await client.line()
        assert hello == {"type": "hello", "protocol": 1, "server": "hallway/9.9",
                         "scanner": "kiosk-a", "auth": "token"}
        await client.send({"type": "subscribe", "token": TOKEN})
        subscribed = await client.line()
        assert subscribed is not None
        assert subscribed["type"] == "subscribed"
        assert subscribed["seq"] == 1
        assert [p["contact"]["name"] for p in subscribed["present"]] == ["Ada Lovelace"]
        assert set(subscribed["present"][0]) == {"contact", "zone", "distance_m", "rssi",
                                                 "since", "via"}
    rig.hub.publish([arrived("c-2", 101.0)])
    for client in (tcp, unix):
        event = await client.event()
        assert event["type"] == "arrived"
        assert event["seq"] == 2
        assert event["contact"]["name"] == "Grace Hopper"
        assert event["via"] == "hallway-v1"
    mode = stat.S_IMODE(os.stat(rig.sock_path).st_mode)
    assert mode == 0o660
    assert rig.server.stats()["subscribers"] == 2


@pytest.mark.parametrize(
    "request_",
    [
        {"type": "subscribe", "token": "wrong-token-of-some-length"},
        {"type": "subscribe"},
        {"type": "subscribe", "token": 12345},
        {"type": "subscribe", "token": TOKEN[:-1]},
        {"type": "status", "token": "nope"},
    ],
    ids=["wrong", "missing", "not-a-string", "prefix", "status"],
)
async def test_wrong_token_gets_unauthorized_and_nothing_else(
    rig: Rig, request_: dict[str, Any]
) -> None:
    rig.hub.publish([arrived("c-1")])
    client = await rig.tcp()
    hello = await client.line()
    assert hello is not None
    assert hello["type"] == "hello"
    await client.send(request_)
    rest = await client.rest()
    assert [m["type"] for m in rest] == ["error"]
    assert rest[0]["code"] == "unauthorized"
    assert "Ada" not in json.dumps(rest)
    assert "c-1" not in json.dumps(rest)


@pytest.mark.parametrize(
    "raw",
    [
        b"hello there\n",
        b"[1, 2, 3]\n",
        b'{"token": "x"}\n',
        b'{"type": "subscribe", "token": "\xff\xfe"}\n',
        b"[" * 3000 + b"\n",
        b'{"type": "launch"}\n',
    ],
    ids=["text", "array", "no-type", "bad-utf8", "deep-nesting", "unknown-type"],
)
async def test_garbage_gets_bad_request_and_close(rig: Rig, raw: bytes) -> None:
    client = await rig.tcp()
    await client.line()
    await client.send_raw(raw)
    rest = await client.rest()
    assert [(m["type"], m["code"]) for m in rest] == [("error", "bad_request")]


async def test_invalid_subscribe_fields_get_bad_request(rig: Rig) -> None:
    for fields in ({"since_seq": "7"}, {"since_seq": -1}, {"contacts": "c-1"},
                   {"tags": [1]}, {"since_seq": True}):
        client = await rig.tcp()
        await client.line()
        await client.send({"type": "subscribe", "token": TOKEN, **fields})
        assert [m.get("code") for m in await client.rest()] == ["bad_request"], fields


async def test_oversized_line_gets_too_large_and_close(rig: Rig) -> None:
    for payload in (b"x" * 10_000 + b"\n", b"{" + b" " * 10_000):  # with and without newline
        client = await rig.tcp()
        await client.line()
        with contextlib.suppress(ConnectionError):
            await client.send_raw(payload)
        rest = await client.rest()
        assert [(m["type"], m["code"]) for m in rest] == [("error", "too_large")]
    assert rig.server.stats()["too_large"] == 2


async def test_huge_line_gets_too_large_not_a_reset(rig: Rig) -> None:
    client = await rig.tcp()
    await client.line()
    await client.send_raw(b"a" * 800_000)  # all of it, before reading anything
    rest = await client.rest()
    assert [(m["type"], m["code"]) for m in rest] == [("error", "too_large")]


async def test_unauthenticated_connection_times_out_and_hears_only_pings(rig_factory: Any) -> None:
    rig: Rig = rig_factory(auth_timeout_s=0.7, ping_interval_s=0.2)
    await rig.start()
    try:
        rig.hub.publish([arrived("c-1")])
        client = await rig.tcp()
        await client.send_raw(b'{"type": "subscr')  # a partial line never completed
        started = time.monotonic()
        messages = await client.rest()
        elapsed = time.monotonic() - started
        types = [m["type"] for m in messages]
        assert types[0] == "hello"
        assert types[-1] == "error"
        assert messages[-1]["code"] == "unauthorized"
        pings = messages[1:-1]
        assert len(pings) >= 2
        assert all(set(p) == {"type", "seq", "ts"} for p in pings)
        assert 0.5 < elapsed < 2.5
    finally:
        await rig.stop()


async def test_idle_subscriber_hears_pings_even_with_empty_filter(rig_factory: Any) -> None:
    rig: Rig = rig_factory(ping_interval_s=0.3)
    await rig.start()
    try:
        client = await rig.tcp()
        await client.subscribe(contacts=[])
        await rig.publish([arrived("c-1")])
        ping = await client.line(wait_s=2.0)
        assert ping is not None
        assert ping["type"] == "ping"
        assert ping["seq"] == 1
    finally:
        await rig.stop()


async def test_status_request(rig: Rig) -> None:
    await rig.publish([arrived("c-1")])
    client = await rig.tcp()
    await client.line()
    await client.send({"type": "status", "token": TOKEN})
    status = await client.line()
    assert status is not None
    assert status["type"] == "status"
    assert status["scanner"] == "kiosk-a"
    assert status["hub"]["published"] == 1
    # The same connection may then subscribe; after that, status needs no token.
    await client.send({"type": "subscribe", "token": TOKEN})
    assert (await client.event())["type"] == "subscribed"
    await client.send({"type": "status"})
    assert (await client.event())["type"] == "status"


async def test_wrong_tokens_are_rate_limited_per_peer_and_a_valid_token_still_gets_in(
    rig: Rig,
) -> None:
    for _ in range(AUTH_BURST):
        client = await rig.tcp()
        await client.line()
        await client.send({"type": "subscribe", "token": "guess-guess-guess-guess"})
        assert [m["code"] for m in await client.rest()] == ["unauthorized"]
    # Over budget: the next wrong token is told when to retry ...
    client = await rig.tcp()
    await client.line()
    await client.send({"type": "subscribe", "token": "guess-guess-guess-guess"})
    (refused,) = await client.rest()
    assert refused["code"] == "rate_limited"
    assert 0 < refused["retry_after_s"] <= 2.0
    assert rig.server.stats()["refused_peer"] >= 1
    # ... while a valid token from the same address is served, and a success resets nothing.
    good = await rig.tcp()
    await good.subscribe()
    client = await rig.tcp()
    await client.line()
    await client.send({"type": "subscribe", "token": "guess-guess-guess-guess"})
    assert [m["code"] for m in await client.rest()] == ["rate_limited"]
    # The Unix socket is another peer, with its own budget.
    other = await rig.unix()
    await other.subscribe()


async def test_auth_none_only_locally(rig_factory: Any) -> None:
    with pytest.raises(ValidationError):
        ServerConfig(auth="none", tcp_host="0.0.0.0")
    hub = Hub.__new__(Hub)  # never started: the constructor check comes first
    with pytest.raises(ConfigError):
        EventServer(ServerConfig(tcp_host="0.0.0.0"), hub, scanner="x", version="1", tokens=[])
    rig: Rig = rig_factory(auth="none", tokens=())
    rig.tokens = []
    await rig.start()
    try:
        client = await rig.tcp()
        hello = await client.line()
        assert hello is not None
        assert hello["auth"] == "none"
        await client.send({"type": "subscribe"})
        assert (await client.event())["type"] == "subscribed"
    finally:
        await rig.stop()


async def test_connection_limit_evicts_oldest_unauthenticated(rig_factory: Any) -> None:
    rig: Rig = rig_factory(max_connections=3, max_connections_per_token=3)
    await rig.start()
    try:
        first, second, third = [await rig.tcp() for _ in range(3)]
        for client in (first, second, third):
            assert (await client.line() or {}).get("type") == "hello"
        fourth = await rig.tcp()
        assert (await fourth.line() or {}).get("type") == "hello"
        assert [m["code"] for m in await first.rest()] == ["unauthorized"]
        for client in (second, third, fourth):
            await client.send({"type": "subscribe", "token": TOKEN})
            assert (await client.event())["type"] == "subscribed"
        fifth = await rig.tcp()
        assert [m["code"] for m in await fifth.rest()] == ["busy"]
        assert rig.server.stats()["evicted"] == 1
    finally:
        await rig.stop()


async def test_eviction_takes_from_the_address_holding_the_most_oldest_first(
    rig_factory: Any,
) -> None:
    """At the limit the oldest waiting connection of the address holding the most waiting is
    evicted (on a tie, the oldest of the tied addresses'); one that authenticated no longer
    counts for its address. TCP clients here are one address, Unix clients another."""
    rig: Rig = rig_factory(max_connections=4, max_connections_per_token=4)
    await rig.start()
    try:

        async def opened(client: Any) -> Any:
            assert (await client.line() or {}).get("type") == "hello"
            return client

        a = await opened(await rig.tcp())
        b, c, d = [await opened(await rig.unix()) for _ in range(3)]
        e = await opened(await rig.tcp())  # Unix holds 3 waiting: its oldest goes
        assert [m["code"] for m in await b.rest()] == ["unauthorized"]
        f = await opened(await rig.unix())  # 2 and 2: the older of the two oldest goes
        assert [m["code"] for m in await a.rest()] == ["unauthorized"]
        await c.send({"type": "subscribe", "token": TOKEN})  # Unix: 3 open, 2 waiting
        assert (await c.event())["type"] == "subscribed"
        g = await opened(await rig.tcp())  # TCP holds 1 waiting, Unix 2: Unix's oldest goes
        assert [m["code"] for m in await d.rest()] == ["unauthorized"]
        for client in (e, f, g):
            await client.send({"type": "subscribe", "token": TOKEN})
            assert (await client.event())["type"] == "subscribed"
        assert rig.server.stats()["evicted"] == 3
        busy = await rig.tcp()  # every connection authenticated: nobody to evict
        assert [m["code"] for m in await busy.rest()] == ["busy"]
    finally:
        await rig.stop()


def test_handshake_pace_per_address_burst_then_rate() -> None:
    pace = _PeerPace(20.0, burst=3)
    # A burst at once; then each next pass booked 1/20 s after the one before.
    assert [pace.take("a", 100.0, 110.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    waits = [pace.take("a", 100.0, 110.0) for _ in range(3)]
    assert waits == pytest.approx([0.05, 0.10, 0.15])
    # Another address has its own burst.
    assert pace.take("b", 100.0, 110.0) == 0.0
    # A pass that would come after the deadline is not booked (nor does it push the others).
    assert pace.take("a", 100.0, 100.1) is None
    assert pace.take("a", 100.0, 110.0) == pytest.approx(0.20)
    # Time refills the bucket, up to the burst.
    assert pace.take("a", 200.0, 210.0) == 0.0
    assert [pace.take("a", 200.0, 210.0) for _ in range(2)] == [0.0, 0.0]
    assert pace.take("a", 200.0, 210.0) == pytest.approx(0.05)


async def test_turn_gate_lets_a_few_through_per_loop_turn() -> None:
    gate = _TurnGate(2)
    loop = asyncio.get_running_loop()
    turn = 0
    passed: list[tuple[int, int]] = []

    def tick() -> None:
        nonlocal turn
        turn += 1
        if turn < 20:
            loop.call_soon(tick)

    async def one(n: int) -> None:
        await gate.wait()
        passed.append((n, turn))

    loop.call_soon(tick)
    await asyncio.gather(*(one(n) for n in range(7)))
    assert [n for n, _ in passed] == list(range(7))  # first come, first served
    per_turn = Counter(t for _, t in passed)
    assert max(per_turn.values()) <= 2
    assert len(per_turn) >= 4


# -- delivery, backpressure and resume ------------------------------------------------------


async def test_half_closed_client_keeps_receiving(rig: Rig) -> None:
    client = await rig.tcp()
    await client.subscribe()
    client.sock.shutdown(socket.SHUT_WR)
    rig.hub.publish([arrived("c-1")])
    assert (await client.event())["seq"] == 1


async def test_close_is_quick_and_clean_after_clients_hung_up(
    rig_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rig: Rig = rig_factory()
    await rig.start()
    quiet, gone = await rig.tcp(), await rig.tcp()
    await quiet.subscribe()
    await gone.subscribe()
    quiet.sock.shutdown(socket.SHUT_WR)
    gone.close()
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await rig.stop()
    assert time.monotonic() - started < 1.0
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


async def test_slow_client_is_cut_off_while_another_keeps_up(rig_factory: Any) -> None:
    rig: Rig = rig_factory(queue_size=256)
    await rig.start()
    try:
        await _slow_and_fast(rig)
    finally:
        await rig.stop()


async def _slow_and_fast(rig: Rig) -> None:
    total, per_batch = 2000, 20
    slow = await rig.tcp(rcvbuf=4096)
    await slow.subscribe()
    fast = await rig.tcp()
    await fast.subscribe()
    latencies: list[float] = []
    seqs: list[int] = []

    async def read_fast() -> None:
        while len(seqs) < total:
            event = await fast.event(wait_s=5.0)
            seqs.append(event["seq"])
            latencies.append(time.time() - event["ts"])

    reader = asyncio.create_task(read_fast(), name="fast-reader")
    for batch in range(total // per_batch):
        rig.hub.publish([arrived(f"x-{batch}-{i}") for i in range(per_batch)])
        await asyncio.sleep(0.01)
    await asyncio.wait_for(reader, timeout=20)
    assert seqs == list(range(1, total + 1))
    latencies.sort()
    print(f"\nfast subscriber: {total} events, median latency {latencies[total // 2] * 1e3:.1f} ms,"
          f" max {latencies[-1] * 1e3:.1f} ms")
    assert latencies[-1] < 2.0
    # The slow client now reads: a contiguous run of events, then `lagged`, then the end.
    got = await slow.rest(wait_s=5.0)
    assert got[-1] == {"type": "error", "code": "lagged", "message": got[-1]["message"]}
    events = got[:-1]
    assert events
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert len(events) < total
    assert rig.server.stats()["lagged"] == 1
    # It resumes without loss.
    again = await rig.tcp()
    subscribed = await again.subscribe(since_seq=events[-1]["seq"])
    assert subscribed["seq"] == total
    replayed = [(await again.event())["seq"] for _ in range(total - len(events))]
    assert replayed == list(range(len(events) + 1, total + 1))


async def test_a_slow_reader_within_its_queue_gets_every_byte_in_order(
        rig_factory: Any) -> None:
    """The fan-out writes to the socket itself while it can: what the kernel does not take
    must continue through the transport and the queue with nothing lost, doubled or
    reordered, on TCP and on the Unix socket."""
    rig: Rig = rig_factory(queue_size=100_000)
    await rig.start()
    try:
        slow_tcp = await rig.tcp(rcvbuf=4096)
        slow_unix = await rig.unix()
        for client in (slow_tcp, slow_unix):
            await client.subscribe()
        # About 400 kB: far more than the kernel buffers take, less than MAX_UNSENT_BYTES.
        total, per_batch = 500, 25
        padding = "p" * 700
        for batch in range(total // per_batch):
            rig.hub.publish([arrived(f"x-{batch}-{i}-{padding}") for i in range(per_batch)])
            await asyncio.sleep(0)
        for client in (slow_tcp, slow_unix):
            got = []
            while len(got) < total:
                msg = await client.line(wait_s=10.0)
                if msg is None:
                    break
                if msg["type"] != "ping":
                    got.append(msg)
            assert [e.get("seq") for e in got] == list(range(1, total + 1)), got[-1]
        assert rig.server.stats()["lagged"] == 0
    finally:
        await rig.stop()


async def test_reconnect_with_since_seq_delivers_exactly_the_missed_events(rig: Rig) -> None:
    client = await rig.tcp()
    await client.subscribe()
    rig.hub.publish([arrived("c-1"), arrived("c-2")])
    seen = [(await client.event())["seq"] for _ in range(2)]
    client.close()
    await rig.publish([departed("c-1"), departed("c-2"), arrived("c-1")])
    watcher = await rig.tcp()
    await watcher.subscribe()
    back = await rig.tcp()
    await back.subscribe(since_seq=seen[-1])
    assert [(await back.event())["seq"] for _ in range(3)] == [3, 4, 5]
    rig.hub.publish([departed("c-1")])
    assert (await back.event())["seq"] == 6
    assert (await watcher.event())["seq"] == 6
    # With a filter, the replay holds only matching events.
    filtered = await rig.tcp()
    await filtered.subscribe(since_seq=0, contacts=["c-2"])
    assert [(await filtered.event())["seq"] for _ in range(2)] == [2, 4]
    # Asking for events from the future: resync.
    future = await rig.tcp()
    await future.subscribe(since_seq=1000)
    resync = await future.event()
    assert resync["type"] == "resync"
    assert resync["seq"] == 6
    assert [p["contact"]["id"] for p in resync["present"]] == []


async def test_resume_after_outside_pruning_gets_resync(rig: Rig) -> None:
    await rig.publish([arrived("c-1"), departed("c-1"), arrived("c-2"), arrived("c-1")])
    await rig.store.prune_events(before_ts=-1.0, keep_count=2)
    client = await rig.tcp()
    subscribed = await client.subscribe(since_seq=1)
    resync = await client.event()
    assert resync["type"] == "resync"
    assert resync["seq"] == subscribed["seq"] == 4
    assert [p["contact"]["id"] for p in resync["present"]] == ["c-2", "c-1"]
    await rig.publish([departed("c-2")])
    assert (await client.event())["seq"] == 5


async def test_restart_keeps_seq_increasing_and_resume_working(rig_factory: Any) -> None:
    rig: Rig = rig_factory()
    await rig.start()
    client = await rig.tcp()
    await client.subscribe()
    rig.hub.publish([arrived("c-1"), arrived("c-2")])
    last = [(await client.event())["seq"] for _ in range(2)][-1]
    rig.hub.publish([departed("c-2")])  # published, never read by the client
    await rig.stop()
    assert [m["seq"] for m in await client.rest() if "seq" in m and m["type"] != "ping"][-1] == 3

    rig2: Rig = rig_factory()
    await rig2.start()
    try:
        await rig2.publish([arrived("c-2")])
        back = await rig2.tcp()
        subscribed = await back.subscribe(since_seq=last)
        assert subscribed["seq"] == 4
        replay = [await back.event() for _ in range(2)]
        assert [(e["seq"], e["type"]) for e in replay] == [(3, "departed"), (4, "arrived")]
        rig2.hub.publish([departed("c-1")])
        assert (await back.event())["seq"] == 5
    finally:
        await rig2.stop()


async def test_shutdown_delivers_queued_events_then_closes(rig_factory: Any) -> None:
    rig: Rig = rig_factory()
    await rig.start()
    client = await rig.tcp()
    await client.subscribe()
    rig.hub.publish([departed("c-1"), departed("c-2")])
    await rig.stop()
    assert [m["seq"] for m in await client.rest()] == [1, 2]
    assert not Path(rig.sock_path).exists()  # noqa: ASYNC240 - a test's quick check


# -- tokens ---------------------------------------------------------------------------------


def test_load_tokens_generates_one_into_the_state_dir(tmp_path: Path) -> None:
    config = ServerConfig()
    tokens = load_tokens(config, state_dir=tmp_path)
    assert len(tokens) == 1
    assert len(tokens[0]) >= 32
    path = tmp_path / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert load_tokens(config, state_dir=tmp_path) == tokens  # stable across starts
    with pytest.raises(ConfigError):
        load_tokens(config, state_dir=tmp_path / "nowhere", create=False)
    assert load_tokens(ServerConfig(auth="none"), state_dir=tmp_path) == []


def test_load_tokens_from_config_and_file(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text("# apps\n\nfile-token-aaaaaaaaaaaa\n  other-token-bbbbbbbbbb  \n")
    config = ServerConfig(tokens=(TOKEN,), token_file=str(file))
    assert load_tokens(config, state_dir=None) == [TOKEN, "file-token-aaaaaaaaaaaa",
                                                   "other-token-bbbbbbbbbb"]
    file.write_text("short\n")
    with pytest.raises(ConfigError, match=r"16 characters"):
        load_tokens(config, state_dir=None)


# -- hallway tail -----------------------------------------------------------------------------


async def _tail(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hallway", "tail", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def _tail_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(10):
        return (await proc.stdout.readline()).decode()


async def test_tail_prints_readable_lines_and_resumes_across_a_restart(
    rig_factory: Any,
) -> None:
    rig: Rig = rig_factory()
    await rig.start()
    port = rig.port
    proc = await _tail("--connect", f"127.0.0.1:{port}", "--token", TOKEN, "--count", "3")
    try:
        assert "subscribed at seq 0; 0 present" in await _tail_line(proc)
        await rig.publish([arrived("c-1")])
        line = await _tail_line(proc)
        assert "arrived" in line
        assert "Ada Lovelace (Analytical Engines) [speaker]" in line
        assert "near 2.1 m" in line
        assert line.rstrip().endswith("#1")
        await rig.stop()
        # The daemon comes back on the same port with two events tail has not seen.
        rig2: Rig = rig_factory(tcp_port=port)
        await rig2.start()
        try:
            await rig2.publish([departed("c-1"), arrived("c-2")])
            async with asyncio.timeout(10):
                out, err = await proc.communicate()
            assert proc.returncode == 0, err
            rest = out.decode().splitlines()
            # tail resumes after #1 (hallway.client): the two events it missed, each once, in
            # order, with no second snapshot in between.
            events = [line for line in rest if line.rstrip()[-2:] in ("#2", "#3")]
            assert len(events) == 2, rest
            assert "departed" in events[0]
            assert "(timeout)" in events[0]
            assert events[0].endswith("#2")
            assert "arrived   Grace Hopper" in events[1]
            assert events[1].endswith("#3")
            assert b"retrying in" in err
            assert b"resumed" in err
        finally:
            await rig2.stop()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def test_tail_exits_when_refused(rig: Rig) -> None:
    proc = await _tail("--unix", rig.sock_path, "--token", "not-the-right-token-at-all")
    async with asyncio.timeout(10):
        out, err = await proc.communicate()
    assert proc.returncode == 1
    assert b"unauthorized" in err
    assert out == b""


async def test_one_token_cannot_take_every_connection(rig_factory: Any) -> None:
    rig: Rig = rig_factory(max_connections=8, max_connections_per_token=2)
    rig.tokens = [TOKEN, "another-token-0123456789"]
    await rig.start()
    try:
        first, second, third = [await rig.tcp() for _ in range(3)]
        await first.subscribe()
        await second.subscribe()
        assert (await third.line() or {})["type"] == "hello"
        await third.send({"type": "subscribe", "token": TOKEN})
        assert [m["code"] for m in await third.rest()] == ["busy"]
        # Another token still gets in; a closed connection frees its slot.
        other = await rig.tcp()
        await other.subscribe("another-token-0123456789")
        first.close()  # seen as gone at the next line sent to it
        for _ in range(100):
            await rig.publish([arrived("c-1"), departed("c-1")])
            await asyncio.sleep(0.02)
            if rig.server.stats()["subscribers"] == 2:
                break
        assert rig.server.stats()["subscribers"] == 2
        again = await rig.tcp()
        await again.subscribe()
    finally:
        await rig.stop()


async def test_unix_socket_is_bound_in_a_private_folder_then_moved(rig_factory: Any) -> None:
    rig: Rig = rig_factory(unix_socket_mode="0600")
    await rig.start()
    try:
        folder = Path(rig.sock_path).parent
        assert sorted(p.name for p in folder.iterdir()) == ["h.sock"]  # no leftover folder
        assert stat.S_IMODE(os.lstat(rig.sock_path).st_mode) == 0o600
        client = await rig.unix()
        await client.subscribe()
    finally:
        await rig.stop()


async def test_a_resume_further_back_than_max_replay_events_gets_resync(
    rig_factory: Any,
) -> None:
    rig: Rig = rig_factory(max_replay_events=5)
    await rig.start()
    try:
        await rig.publish([arrived("c-1"), departed("c-1")] * 5)  # seq 1..10
        near = await rig.tcp()
        await near.subscribe(since_seq=5)
        replayed = [await near.event() for _ in range(5)]
        assert [e["seq"] for e in replayed] == [6, 7, 8, 9, 10]
        far = await rig.tcp()
        await far.subscribe(since_seq=4)
        resync = await far.event()
        assert resync["type"] == "resync"
        assert resync["since_seq"] == 4
        assert rig.hub.stats()["resyncs"] == 1
    finally:
        await rig.stop()
