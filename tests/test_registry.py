"""The venue registry end to end: ``hallway venue contacts`` -> ``hallway venue`` (the
registry) -> a real Mosquitto configured as docs/venue.md says -> a real ``hallway run``
scanner that holds no contacts of its own. Enrollment, revocation within 2 s (present and
absent), nothing left behind on the scanner, keys readable by scanners only, fail closed when
the registry goes silent, and a scanner that was offline catching up before it resolves."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from hallway.config import Config
from hallway.venue.service import VenueService
from tests.daemon_env import (
    ROOT,
    TOKEN,
    Client,
    Daemon,
    beacon_rows,
    free_port,
    start_daemon,
    write_config,
    write_trace,
)
from tests.mqtt_env import PASSWORDS, VENUE, Site, running_site
from tests.test_contact_changes import database_bytes

pytestmark = pytest.mark.system

ADA, BOB, DAVE = "C4:7C:8D:6A:12:34", "C4:7C:8D:6A:56:78", "C4:7C:8D:6A:9A:BC"
CARL = "C4:7C:8D:6A:00:01"  # never on the air


def _contact(cid: str, name: str, address: str) -> dict[str, Any]:
    return {"id": cid, "name": name, "org": f"{name} Works", "handles": {"x": f"{cid}-handle"},
            "keys": [{"kind": "address", "address": address}]}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with running_site(tmp_path / "broker") as running:
        yield running


def _venue_toml(site: Site, tmp: Path) -> Path:
    path = tmp / "venue.toml"
    path.write_text(
        '[scanner]\nname = "venue"\n'
        f'[storage]\ndatabase = "{tmp / "venue.db"}"\n'
        '[server]\ntcp_host = "127.0.0.1"\ntcp_port = 0\nunix_socket = ""\n'
        f'tokens = ["{TOKEN}"]\n[mdns]\nenabled = false\n'
        f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {site.port}\nusername = "venue"\n'
        f'password = "{PASSWORDS["venue"]}"\nvenue = "{VENUE}"\nreconnect_max_s = 0.5\n'
        '[registry]\nenabled = true\nheartbeat_s = 0.5\n'
    )
    return path


def _venue_cli(venue_toml: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "hallway", "venue", "contacts", *args, "--config",
                    str(venue_toml)], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def _import(venue_toml: Path, tmp: Path, contacts: list[dict[str, Any]]) -> None:
    src = tmp / f"import-{time.monotonic_ns()}.jsonl"
    src.write_text("".join(json.dumps(c) + "\n" for c in contacts))
    _venue_cli(venue_toml, "import", str(src))


@contextlib.asynccontextmanager
async def venue(venue_toml: Path, tmp: Path) -> AsyncIterator[VenueService]:
    from hallway.config import load_config

    config: Config = load_config(venue_toml)
    ready = asyncio.Event()
    service = VenueService(config, state_dir=tmp, on_ready=lambda _: ready.set())
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    try:
        async with asyncio.timeout(20):
            await ready.wait()
        yield service
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await running


def _scanner(site: Site, tmp: Path, port: int) -> Path:
    start = time.time() + 0.5
    rows = [*beacon_rows(ADA, start=start, duration_s=240),
            *beacon_rows(BOB, start=start, duration_s=240, every_s=0.3),
            *beacon_rows(DAVE, start=start, duration_s=240, every_s=0.25)]
    trace = tmp / "trace.jsonl"
    write_trace(trace, rows)
    return write_config(tmp, port=port, trace=trace, extra=(
        f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {site.port}\n'
        f'username = "kiosk-a"\npassword = "{PASSWORDS["kiosk-a"]}"\nvenue = "{VENUE}"\n'
        'reconnect_max_s = 0.5\n[registry]\nenabled = true\nstale_after_s = 3.0\n'))


def _status(port: int) -> dict[str, Any]:
    client = Client(port)
    try:
        client.send({"type": "status", "token": TOKEN})
        return client.read()
    finally:
        client.close()


async def _wait(predicate: Any, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls another process
            await asyncio.sleep(0.1)


def _events_until(client: Client, want: set[tuple[str, str]], timeout_s: float,
                  seen: list[dict[str, Any]]) -> None:
    def done() -> bool:
        return want <= {(e["type"], e["contact"]["id"]) for e in seen if "contact" in e}

    if not done():
        for event in client.events(timeout_s):
            seen.append(event)
            if done():
                return


async def _read_all(port: int, user: str, topic_filter: str, wait_s: float) -> list[str]:
    got: list[str] = []
    async with aiomqtt.Client("127.0.0.1", port, username=user, password=PASSWORDS[user],
                              timeout=5) as client:
        await client.subscribe(topic_filter, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                async for message in client.messages:
                    got.append(str(message.topic))
    return got


async def _retained_payload(port: int, topic: str) -> bytes:
    async with aiomqtt.Client("127.0.0.1", port, username="kiosk-b",
                              password=PASSWORDS["kiosk-b"], timeout=5) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(3):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                return message.payload
    raise AssertionError("no retained message")


@pytest.mark.timeout(180)
async def test_registry_enrols_revokes_in_2_s_and_fails_closed(site: Site, tmp_path: Path) -> None:
    venue_toml = _venue_toml(site, tmp_path)
    _import(venue_toml, tmp_path, [_contact("c-ada", "Ada Lovelace", ADA),
                                   _contact("c-bob", "Bob Babbage", BOB),
                                   _contact("c-carl", "Carl Absent", CARL)])
    port = free_port()
    scanner_dir = tmp_path / "kiosk-a"
    scanner_dir.mkdir()
    daemon: Daemon | None = None
    async with venue(venue_toml, tmp_path) as service:
        daemon = start_daemon(scanner_dir, _scanner(site, scanner_dir, port), port=port)
        try:
            await asyncio.to_thread(daemon.wait_for_notification, "READY=1", 20)
            client = Client(port)
            client.subscribe()
            seen: list[dict[str, Any]] = []
            # The scanner's store was empty: Ada and Bob came from the registry.
            await asyncio.to_thread(_events_until, client, {("arrived", "c-ada"),
                                                            ("arrived", "c-bob")}, 20, seen)
            names = {e["contact"]["id"]: e["contact"].get("name") for e in seen}
            assert names.get("c-ada") == "Ada Lovelace", daemon.log()
            assert _status(port)["resolving_held"] is None

            # Only scanners read the registry: a dashboard's reader account sees none of it.
            assert await _read_all(site.port, "reader", f"hallway/{VENUE}/registry/#", 1.0) == []
            everything = await _read_all(site.port, "reader", "#", 1.0)
            assert not any("/registry/" in topic for topic in everything), everything
            assert len(set(await _read_all(site.port, "kiosk-b", f"hallway/{VENUE}/registry/#",
                                           1.0))) == 4  # three contacts and the head

            # Revoked at the venue: gone from the scanner within 2 s, with her id only.
            await asyncio.to_thread(_venue_cli, venue_toml, "revoke", "c-ada")
            started = time.monotonic()  # the 2 s run from the revoke's return
            await asyncio.to_thread(_events_until, client, {("revoked", "c-ada")}, 5, seen)
            elapsed = time.monotonic() - started
            ada = [e for e in seen if e.get("contact", {}).get("id") == "c-ada"]
            assert [(e["type"], e["contact"]) for e in ada[-2:]] == [
                ("departed", {"id": "c-ada"}), ("revoked", {"id": "c-ada"})], ada
            assert elapsed <= 2.0, elapsed
            print(f"revoke -> scanner forgot: {elapsed:.2f} s")
            # Carl was never here: his revocation still reaches the scanner (a tombstone).
            await asyncio.to_thread(_venue_cli, venue_toml, "revoke", "c-carl")
            await asyncio.to_thread(_events_until, client, {("revoked", "c-carl")}, 5, seen)
            # Nothing of Ada's left in the scanner's database (file and WAL): name, handle, key.
            await asyncio.sleep(0.5)
            data = await asyncio.to_thread(database_bytes, scanner_dir / "hallway.db")
            for secret in (b"Ada Lovelace", b"c-ada-handle", b"C4:7C:8D:6A:12:34", b"Carl"):
                assert secret not in data, secret
            # The registry's retained message for Ada is now a tombstone.
            tomb = await _retained_payload(site.port, f"hallway/{VENUE}/registry/contacts/c-ada")
            assert json.loads(tomb) == {"version": json.loads(tomb)["version"], "id": "c-ada",
                                        "revoked": True}

            client.close()
            assert service.registry is not None
            assert service.status()["registry"]["tombstones"] == 2
        except BaseException:
            if daemon is not None:
                daemon.stop()
            raise
    assert daemon is not None
    try:
        # The registry goes silent: the scanner keeps scanning but stops resolving.
        await asyncio.sleep(4.5)  # stale_after_s = 3, plus a tick
        status = _status(port)
        assert status["resolving_held"] is not None, status
        assert "registry" in status["resolving_held"]
        await asyncio.sleep(1.0)
        later = _status(port)
        assert later["advertisements"] > status["advertisements"]  # still scanning
        assert later["matched"] == status["matched"]  # but resolving no one
        # The registry is back: resolving resumes (Bob's badge is matched again).
        async with venue(venue_toml, tmp_path):
            await _wait(lambda: _status(port)["resolving_held"] is None, 10)
            await asyncio.sleep(1.0)
            assert _status(port)["matched"] > later["matched"]
    finally:
        daemon.stop()


@pytest.mark.timeout(180)
async def test_an_offline_scanner_applies_revocations_before_it_resolves(
    site: Site, tmp_path: Path
) -> None:
    venue_toml = _venue_toml(site, tmp_path)
    _import(venue_toml, tmp_path, [_contact("c-ada", "Ada Lovelace", ADA),
                                   _contact("c-bob", "Bob Babbage", BOB)])
    port = free_port()
    scanner_dir = tmp_path / "kiosk-a"
    scanner_dir.mkdir()
    config = _scanner(site, scanner_dir, port)
    async with venue(venue_toml, tmp_path):
        daemon = start_daemon(scanner_dir, config, port=port)
        try:
            await asyncio.to_thread(daemon.wait_for_notification, "READY=1", 20)
            client = Client(port)
            client.subscribe()
            seen: list[dict[str, Any]] = []
            await asyncio.to_thread(_events_until, client, {("arrived", "c-bob")}, 20, seen)
            client.close()
        finally:
            assert daemon.stop() == 0
        # While the scanner is off: Bob is revoked, Dave enrolls.
        await asyncio.to_thread(_venue_cli, venue_toml, "revoke", "c-bob")
        _import(venue_toml, tmp_path, [_contact("c-dave", "Dave Newcomer", DAVE)])
        await asyncio.sleep(0.5)
        daemon = start_daemon(scanner_dir, config, port=port)
        try:
            await asyncio.to_thread(daemon.wait_for_notification, "READY=1", 20)
            client = Client(port)
            client.subscribe()
            after: list[dict[str, Any]] = []
            await asyncio.to_thread(_events_until, client, {("arrived", "c-dave"),
                                                            ("arrived", "c-ada")}, 20, after)
            for event in client.events(3):
                after.append(event)
            client.close()
            # Bob (still in its store when it started) was never resolved again.
            bob = [e["type"] for e in after if e.get("contact", {}).get("id") == "c-bob"]
            assert "arrived" not in bob, after
            assert ("arrived", "c-dave") in {(e["type"], e["contact"]["id"]) for e in after
                                             if "contact" in e}
        finally:
            daemon.stop()
