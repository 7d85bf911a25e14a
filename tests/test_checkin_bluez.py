"""Check-ins over GATT, end to end: the daemon registers its advertisement and GATT application
with a fake BlueZ on a private bus, and the fake's simulated centrals write to it through
D-Bus as BlueZ hands a phone's (or an attacker's) ATT writes to an application.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hallway.identity.crypto import derive_rpik, interval_number, rpi_for_interval
from hallway.parsing.checkin import CHARACTERISTIC_UUID, SERVICE_UUID, encode_checkin
from tests.bluez_env import BlueZEnv, bluez_env, needs_dbus
from tests.daemon_env import (
    TOKEN,
    Client,
    Daemon,
    beacon_rows,
    free_port,
    import_contacts,
    start_daemon,
    write_config,
    write_trace,
)

pytestmark = [needs_dbus, pytest.mark.system]

IPHONE_KEY = bytes.fromhex("75c734c6dd1a782de7a965da5eb93125")
ANDROID_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
BADGE = "C4:7C:8D:6A:12:34"
CONTACTS = [
    {"id": "c-iphone", "name": "Ada Lovelace",
     "keys": [{"kind": "hallway-v1", "key": IPHONE_KEY.hex()}]},
    {"id": "c-android", "name": "Grace Hopper",
     "keys": [{"kind": "hallway-v1", "key": ANDROID_KEY.hex()}]},
    {"id": "c-badge", "name": "Bob Babbage", "keys": [{"kind": "address", "address": BADGE}]},
]
PHONE = "6A:11:22:33:44:55"  # the iPhone's random address as a central
POWER = -59  # [checkin] measured_power_dbm


def _rpi(key: bytes, ts: float | None = None) -> bytes:
    return rpi_for_interval(derive_rpik(key), interval_number(time.time() if ts is None else ts))


def _checkin(key: bytes, heard_rssi: int) -> str:
    return encode_checkin(_rpi(key), heard_rssi=heard_rssi, tx_power=-60).hex()


def _config(tmp: Path, port: int, *, hold_s: float = 6.0, extra: str = "") -> Path:
    config = write_config(tmp, port=port, source="bleak", extra=(
        f"[checkin]\nenabled = true\nmeasured_power_dbm = {POWER}\nhold_s = {hold_s}\n"
        "idle_disconnect_s = 3.0\n" + extra))
    text = config.read_text().replace(
        "[scanner]\n", "[scanner]\nsilence_restart_s = 5.0\nbackoff_max_s = 2.0\n")
    config.write_text(text)
    return config


@contextlib.asynccontextmanager
async def _rig(tmp: Path, monkeypatch: pytest.MonkeyPatch
               ) -> AsyncIterator[tuple[BlueZEnv, Daemon, Client, dict[str, Any]]]:
    """The contacts imported, a fake BlueZ, the daemon with check-ins on it (registered with
    BlueZ), and a subscribed client; the fake's stats at registration."""
    import_contacts(tmp, CONTACTS)
    port = free_port()
    config = _config(tmp, port)
    async with bluez_env(monkeypatch) as env:
        daemon = start_daemon(tmp, config, port=port, watchdog_usec=2_000_000)
        try:
            await asyncio.to_thread(daemon.wait_for_notification, "READY=1", 30)
            stats = await _registered(env)
            client = Client(port)
            assert client.subscribe()["type"] == "subscribed"
            try:
                yield env, daemon, client, stats
            finally:
                client.close()
        finally:
            daemon.stop()


async def _events(client: Client, timeout_s: float, until: Any) -> list[dict[str, Any]]:
    def collect() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        for event in client.events(timeout_s):
            got.append(event)
            if until(got):
                break
        return got

    return await asyncio.to_thread(collect)


async def _registered(env: Any, timeout_s: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        stats = await env.fake.command("stats")
        if stats["advertisements"] and stats["applications"]:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"not registered: {stats}")
        await asyncio.sleep(0.1)


def _status(tmp: Path) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(tmp / "hallway.sock"))
        reader = sock.makefile("rb")
        reader.readline()  # hello
        sock.sendall((json.dumps({"type": "status", "token": TOKEN}) + "\n").encode())
        result: dict[str, Any] = json.loads(reader.readline())
        return result


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_iphone_arrives_changes_zone_and_departs_through_checkins_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _rig(tmp_path, monkeypatch) as (env, daemon, client, stats):
        advert = stats["advertisements"][0]
        assert advert["Type"] == "peripheral"
        assert advert["ServiceUUIDs"] == [SERVICE_UUID]
        assert advert["Includes"] == ["tx-power"]
        assert advert["TxPower"] == POWER
        flags = stats["applications"][0]["characteristics"][CHARACTERISTIC_UUID]
        assert set(flags) == {"write", "write-without-response"}

        async def check_in(heard: int, kind: str = "request") -> None:
            answer = await env.fake.command("central", address=PHONE, type=kind,
                                            values=[_checkin(IPHONE_KEY, heard)])
            assert answer["tally"] == {"ok": 1}, answer

        # Near (about 2 m): one check-in is enough to arrive.
        started = time.monotonic()
        await check_in(-65)
        arrived = await _events(client, 10, lambda got: len(got) >= 1)
        assert arrived, "no arrival"
        assert arrived[0]["type"] == "arrived", arrived
        assert time.monotonic() - started < 3.0
        event = arrived[0]
        assert event["contact"]["id"] == "c-iphone"
        assert event["via"] == "hallway-v1"
        assert event["carrier"] == "checkin"
        assert event["zone"] == "near"
        assert 1.0 < event["distance_m"] < 4.0
        # Comes close, checking in every 2 s (write without response too): zone changes,
        # and never departs between check-ins (the hold is 6 s).
        got: list[dict[str, Any]] = []
        for number in range(6):
            await check_in(-52, "command" if number % 2 else "request")
            got += await _events(client, 2.0, lambda _got: False)
        assert [e["type"] for e in got] == ["zone"], got
        assert got[0]["zone"] == "immediate"
        assert got[0]["carrier"] == "checkin"
        # Stops checking in (left with the phone in a pocket): departs once the next
        # check-in is overdue, not before.
        stopped = time.monotonic()
        left = await _events(client, 15, lambda got: any(e["type"] == "departed"
                                                          for e in got))
        took = time.monotonic() - stopped
        assert [e["type"] for e in left] == ["departed"], left
        assert left[0]["carrier"] == "checkin"
        assert 3.0 < took < 9.0, took
        status = _status(tmp_path)
        assert status["checkin"]["accepted"] == 7
        assert status["checkin"]["state"] == "registered"
        log = daemon.log()
        assert PHONE not in log
        assert PHONE.replace(":", "_") not in log


async def test_android_doing_both_is_one_contact_and_bluez_restart_reregisters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _rig(tmp_path, monkeypatch) as (env, _daemon, client, _stats):
        # The Android phone advertises (manufacturer data, hallway-v1) and checks in.
        now = time.time()
        payload = (b"HW\x01" + _rpi(ANDROID_KEY, now) + bytes([POWER & 0xFF])).hex()
        rows = [{"ts": now + i * 0.2, "address": "5A:12:34:AB:CD:EF",
                 "address_type": "random", "rssi": -66,
                 "manufacturer_data": {"65535": payload}} for i in range(60)]
        trace = tmp_path / "android.jsonl"
        write_trace(trace, rows)
        await env.fake.command("play", path=str(trace), rate=None)
        for _ in range(4):
            answer = await env.fake.command(
                "central", address="5A:12:34:AB:CD:EF",
                values=[_checkin(ANDROID_KEY, -64)])
            assert answer["tally"] == {"ok": 1}, answer
            await asyncio.sleep(2.0)
        events = await _events(client, 3, lambda _got: False)
        arrivals = [e for e in events if e["type"] == "arrived"]
        assert len(arrivals) == 1, events
        assert arrivals[0]["contact"]["id"] == "c-android"
        assert not [e for e in events if e["type"] == "departed"], events
        assert len({e["contact"]["id"] for e in events}) == 1

        # BlueZ dies (SIGKILL) and comes back: both registrations are made again.
        await env.fake.stop(kill=True)
        await asyncio.sleep(1.0)
        restarted = time.monotonic()
        await env.new_fake()
        await _registered(env)
        assert time.monotonic() - restarted < 10.0
        answer = await env.fake.command("central", address=PHONE,
                                        values=[_checkin(IPHONE_KEY, -60)])
        assert answer["tally"] == {"ok": 1}, answer
        after = await _events(client, 10, lambda got: any(
            e["type"] == "arrived" and e["contact"]["id"] == "c-iphone" for e in got))
        assert any(e["contact"]["id"] == "c-iphone" for e in after), after
        # The adapter is unplugged (BlueZ releases the advertisement) and comes back.
        await env.fake.command("remove_adapter")
        gone = await env.fake.command("stats")
        assert not gone["advertisements"]
        assert not gone["applications"]
        await env.fake.command("add_adapter")
        await _registered(env)
        status = _status(tmp_path)
        assert status["checkin"]["registrations"] >= 3
        assert status["checkin"]["released"] >= 1


async def test_hostile_writes_leave_arrival_on_time_and_memory_flat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _rig(tmp_path, monkeypatch) as (env, daemon, client, _stats):
        rss_before = _rss_kib(daemon.proc.pid)
        # 1,000 bad writes a second from 40 centrals for 12 s.
        flood = asyncio.create_task(env.fake.command(
            "hostile", centrals=40, rate=1000, duration_s=12, timeout_s=120))
        await asyncio.sleep(3.0)
        rss_mid = _rss_kib(daemon.proc.pid)
        # A badge walks up during the flood: it must arrive as fast as without one.
        rows = beacon_rows(BADGE, start=0.0, duration_s=8, rssi=-55)
        trace = tmp_path / "badge.jsonl"
        write_trace(trace, rows)
        sent = time.monotonic()
        await env.fake.command("play", path=str(trace), rate=None, wait=False)
        arrived = await _events(client, 10, lambda got: any(
            e["type"] == "arrived" for e in got))
        took = time.monotonic() - sent
        assert arrived, "no arrival"
        assert arrived[0]["contact"]["id"] == "c-badge", arrived
        # The tracker's arrive confirmation is 2 s; the flood may add little to it.
        assert took < 3.5, took
        tally = (await flood)["tally"]
        writes = sum(tally.values())
        assert writes >= 8000, tally
        assert "ok" not in tally, tally
        rss_after = _rss_kib(daemon.proc.pid)
        # Memory stays flat once the flood is going (the table is capped).
        assert rss_after - rss_mid < 8 * 1024, (rss_before, rss_mid, rss_after)
        status = _status(tmp_path)
        counts = status["checkin"]
        refused = sum(counts[k] for k in ("bad_length", "bad_magic", "bad_version",
                                           "unknown_rpi", "rate_limited",
                                           "too_many_centrals"))
        assert refused == counts["writes"] - counts["accepted"]
        assert counts["writes"] >= writes - tally.get("not_connected", 0) - 10
        assert counts["accepted"] == 0
        assert counts["disconnects"] > 0
        assert status["source_state"] == "scanning"
        assert status["loop_lag_ms"] < 250
        log = daemon.log()
        assert "/org/bluez/hci0/dev_" not in log
        assert daemon.proc.poll() is None
