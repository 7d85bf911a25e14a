"""mDNS (SPEC §7): a separate process discovers the service with python-zeroconf, reads the TXT
record and subscribes; name clashes; goodbyes; address changes between network namespaces;
avahi-browse as an independent client; ``hallway tail`` finding a daemon by mDNS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hallway.announce import ZeroconfAnnouncer
from hallway.config import MdnsConfig, ServerConfig
from hallway.hub import Hub
from hallway.models import Contact, EventType, KeyKind, PresenceEvent
from hallway.server import EventServer
from hallway.store import SqliteStore
from tests.netns_helper import NetnsPair, PrivateAvahi, avahi_unavailable, netns_unavailable

HELPER = str(Path(__file__).with_name("netns_helper.py"))
TOKEN = "mdns-test-token-0123456789abcdef"
CONTACTS = {"c-1": Contact(id="c-1", name="Ada Lovelace", tags=("speaker",))}


def unique_name(prefix: str = "hw test") -> str:
    """Other tests on this machine may announce on loopback too: never reuse a name."""
    return f"{prefix} {os.getpid()}-{secrets.token_hex(3)}"


def arrival(contact: str = "c-1") -> PresenceEvent:
    return PresenceEvent(EventType.ARRIVED, time.time(), contact, zone="near", distance_m=2.0,
                         rssi=-60.0, via=KeyKind.HALLWAY_V1)


class Proc:
    """A child process speaking JSON lines on stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *argv: str) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def next(self, wait_s: float = 15.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(wait_s):
            line = await self.proc.stdout.readline()
        if not line:
            err = await self.stderr()
            raise AssertionError(f"process ended (rc={self.proc.returncode}): {err[-2000:]}")
        return dict(json.loads(line))

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.proc.wait()
        return (await self.proc.stderr.read()).decode(errors="replace")

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        # Collect the pipes so no transport is left for the garbage collector.
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                await stream.read()


class Daemon:
    """Store + hub + TCP server + announcer in this process, on loopback."""

    def __init__(self, tmp: Path, name: str, *, port: int = 0) -> None:
        self.tmp, self.name, self.port_wanted = tmp, name, port

    async def __aenter__(self) -> Daemon:
        self.store = await SqliteStore.open(self.tmp / f"{secrets.token_hex(4)}.db")
        self.hub = Hub(self.store, scanner="kiosk-a", contact_lookup=CONTACTS.get,
                       retention_s=3600.0, retention_count=1000)
        await self.hub.start()
        config = ServerConfig(tcp_port=self.port_wanted, unix_socket=None, tokens=(TOKEN,))
        self.server = EventServer(config, self.hub, scanner="kiosk-a", version="t",
                                  tokens=[TOKEN])
        await self.server.start()
        assert self.server.tcp_port is not None
        self.port = self.server.tcp_port
        self.announcer = ZeroconfAnnouncer(
            MdnsConfig(instance_name=self.name, interfaces=("127.0.0.1",), venue="Hall 3"),
            scanner="kiosk-a", port=self.port, auth="token", host="127.0.0.1",
        )
        started = time.monotonic()
        await self.announcer.start()
        self.register_s = time.monotonic() - started
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.announcer.close()
        await self.hub.close()
        await self.server.close()
        await self.store.close()


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with Daemon(tmp_path, unique_name()) as d:
        yield d


async def browse(name: str, iface: str, *extra: str, ns_cmd: list[str] | None = None) -> Proc:
    argv = [sys.executable, HELPER, "browse", "--iface", iface, "--name", name, *extra]
    return await Proc.start(*(ns_cmd or []), *argv)


async def test_separate_process_discovers_reads_txt_and_subscribes(daemon: Daemon) -> None:
    started = time.monotonic()
    client = await browse(daemon.name, "127.0.0.1", "--token", TOKEN, "--events", "1", "--watch")
    try:
        found = await client.next()
        assert found["stage"] == "found"
        assert found["txt"] == {"txtvers": "1", "protovers": "1", "scanner": "kiosk-a",
                                "auth": "token", "tls": "0", "venue": "Hall 3"}
        assert found["addresses"] == ["127.0.0.1"]
        assert found["port"] == daemon.port
        subscribed = await client.next()
        assert subscribed["hello"]["scanner"] == "kiosk-a"
        assert subscribed["reply"]["type"] == "subscribed"
        daemon.hub.publish([arrival()])
        event = await client.next()
        assert event["event"]["contact"]["name"] == "Ada Lovelace"
        found_s = time.monotonic() - started
        closing = time.monotonic()
        await daemon.announcer.close()
        assert (await client.next())["stage"] == "removed"  # the goodbye reached the browser
        print(f"\nregistered in {daemon.register_s:.2f} s; browser found it and received an "
              f"event {found_s:.2f} s after it started; goodbye seen after "
              f"{time.monotonic() - closing:.2f} s")
    finally:
        await client.stop()


async def test_name_clash_renames_and_keeps_the_new_name(tmp_path: Path) -> None:
    name = unique_name("clash")
    async with Daemon(tmp_path, name) as first, Daemon(tmp_path, name) as second:
        assert first.announcer.name == name
        assert second.announcer.name == f"{name}-2"
        await first.announcer.close()
        await second.announcer.start()  # idempotent: no second registration
        assert second.announcer.name == f"{name}-2"
        client = await browse(f"{name}-2", "127.0.0.1")
        try:
            found = await client.next()
            assert found["port"] == second.port
        finally:
            await client.stop()


async def test_tail_finds_the_daemon_by_mdns_but_withholds_the_token(daemon: Daemon) -> None:
    # Found by mDNS over plain TCP, the daemon cannot prove who it is: tail names it and how to
    # follow it, and sends no token (tests/test_tail_cli.py: TLS with a pinned fingerprint).
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hallway", "tail", "--mdns-interface", "127.0.0.1",
         "--name", daemon.name, "--token", TOKEN, "--browse", "10"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1
    assert f"{daemon.name} (found by mDNS) wants a token" in result.stderr
    stats = daemon.server.stats()
    assert stats["accepted"] >= 1
    assert stats["subscribed"] == 0
    assert stats["unauthorized"] == 0


async def test_tail_reports_when_nothing_is_found() -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hallway", "tail", "--mdns-interface", "127.0.0.1",
         "--name", unique_name("absent"), "--browse", "0.5", "--token", TOKEN],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 1
    assert "no hallway daemon" in result.stderr


# -- between network namespaces -------------------------------------------------------------


@pytest.mark.system
async def test_discovery_between_namespaces_follows_address_changes(tmp_path: Path) -> None:
    reason = netns_unavailable()
    if reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    name = unique_name("ns")
    with NetnsPair() as pair:
        python = [sys.executable, HELPER]

        async def serve(ns: str, iface: str, db: str) -> Proc:
            return await Proc.start(*pair.cmd(ns, [
                *python, "serve", "--token", TOKEN, "--name", name, "--interface", iface,
                "--db", str(tmp_path / db),
            ]))

        first = await serve(pair.a, pair.if_a, "a.db")
        second: Proc | None = None
        client: Proc | None = None
        try:
            ready = await first.next()
            assert ready["stage"] == "ready"
            assert ready["addresses"] == [pair.ip_a]
            # The other host announces the same name: it must take another, and keep it.
            second = await serve(pair.b, pair.if_b, "b.db")
            assert (await second.next())["name"] == f"{name}-2"
            started = time.monotonic()
            client = await browse(name, pair.ip_b, "--token", TOKEN, "--events", "1", "--watch",
                                  ns_cmd=pair.cmd(pair.b, []))
            found = await client.next()
            assert found["addresses"] == [pair.ip_a]
            assert found["port"] == ready["port"]
            assert found["txt"]["scanner"] == "kiosk-ns"
            assert (await client.next())["reply"]["type"] == "subscribed"
            await first.send("publish c-7")
            event = (await client.next())["event"]
            assert event["contact"] == {"id": "c-7"}
            print(f"\nacross namespaces: discovered, subscribed and got an event in "
                  f"{time.monotonic() - started:.2f} s")
            # New addresses on both hosts: the records follow, the names stay.
            extra_a, extra_b = f"{pair.net}.3", f"{pair.net}.4"
            pair.add_address(pair.a, pair.if_a, f"{extra_a}/24")
            pair.add_address(pair.b, pair.if_b, f"{extra_b}/24")
            changed = time.monotonic()
            updated = await client.next()
            while updated["stage"] == "updated" and extra_a not in updated["addresses"]:
                updated = await client.next()
            assert sorted(updated["addresses"]) == sorted([pair.ip_a, extra_a])
            print(f"address change seen by the browser after {time.monotonic() - changed:.2f} s")
            for _ in range(50):
                await second.send("name")
                renamed = await second.next()
                if renamed["updates"]:
                    break
                await asyncio.sleep(0.2)
            assert renamed["name"] == f"{name}-2"
            assert extra_b in renamed["addresses"]
            await first.send("quit")
            assert (await first.next())["stage"] == "closed"
            assert (await client.next())["stage"] == "removed"
        finally:
            for proc in (client, second, first):
                if proc is not None:
                    await proc.stop()


@pytest.mark.system
async def test_avahi_browse_sees_the_service(tmp_path: Path) -> None:
    reason = avahi_unavailable()
    if reason:
        pytest.skip(f"avahi test unavailable: {reason}")
    name = unique_name("Kiosk (Hall 3)")
    with NetnsPair() as pair:
        serve = await Proc.start(*pair.cmd(pair.a, [
            sys.executable, HELPER, "serve", "--token", TOKEN, "--name", name,
            "--interface", pair.if_a, "--db", str(tmp_path / "av.db"),
        ]))
        try:
            ready = await serve.next()
            with PrivateAvahi(pair, pair.b, pair.if_b) as avahi:
                records: list[dict[str, Any]] = []
                deadline = time.monotonic() + 15
                while not records and time.monotonic() < deadline:
                    found = await asyncio.to_thread(avahi.browse)
                    records = [r for r in found if r["name"] == name]
            assert records, "avahi-browse did not resolve the service"
            record = records[0]
            assert record["address"] == pair.ip_a
            assert record["port"] == ready["port"]
            assert record["txt"] == {"txtvers": "1", "protovers": "1", "scanner": "kiosk-ns",
                                     "auth": "token", "tls": "0", "venue": "Hall 3"}
        finally:
            await serve.send("quit")
            await serve.stop()
