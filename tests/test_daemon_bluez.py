"""The whole daemon over bleak's real BlueZ backend, against a fake BlueZ on a private bus.

A contact's badge walks up (arrived, far), comes close (zone), and walks away (departed); then
BlueZ is killed mid-scan and brought back, and events continue with no gap in ``seq``.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.bluez_env import bluez_env, needs_dbus
from tests.daemon_env import (
    Client,
    beacon_rows,
    free_port,
    import_contacts,
    start_daemon,
    write_config,
    write_trace,
)

pytestmark = [needs_dbus, pytest.mark.system]

ADA = "C4:7C:8D:6A:12:34"
BOB = "C4:7C:8D:6A:56:78"
STRANGER = "D1:22:33:44:55:66"
CONTACTS = [
    {"id": "c-ada", "name": "Ada Lovelace", "keys": [{"kind": "address", "address": ADA}]},
    {"id": "c-bob", "name": "Bob Babbage", "keys": [{"kind": "address", "address": BOB}]},
]


def _walk(tmp: Path) -> Path:
    """Ada: far for 6 s, right at the kiosk for 8 s, then fading out; a stranger throughout."""
    rows = beacon_rows(ADA, start=0.0, duration_s=6, rssi=-76)
    rows += beacon_rows(ADA, start=6.0, duration_s=8, rssi=-50)
    rows += beacon_rows(ADA, start=14.0, duration_s=4, rssi=-88)
    rows += beacon_rows(ADA, start=18.0, duration_s=6, rssi=-100)
    rows += beacon_rows(STRANGER, start=0.0, duration_s=24, rssi=-60, every_s=0.5)
    path = tmp / "walk.jsonl"
    write_trace(path, rows)
    return path


async def _events(client: Client, timeout_s: float, until: Any) -> list[dict[str, Any]]:
    def collect() -> list[dict[str, Any]]:
        got = []
        for event in client.events(timeout_s):
            got.append(event)
            if until(got):
                break
        return got

    return await asyncio.to_thread(collect)


async def test_events_through_bleak_and_recovery_after_bluez_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_contacts(tmp_path, CONTACTS)
    port = free_port()
    config = write_config(tmp_path, port=port, source="bleak",
                          extra="")
    text = config.read_text().replace(
        '[scanner]\n', '[scanner]\nsilence_restart_s = 5.0\nbackoff_max_s = 2.0\n'
    )
    config.write_text(text)
    async with bluez_env(monkeypatch) as env:
        daemon = start_daemon(tmp_path, config, port=port, watchdog_usec=2_000_000)
        try:
            await asyncio.to_thread(daemon.wait_for_notification, "READY=1", 30)
            client = Client(port)
            assert client.subscribe()["type"] == "subscribed"
            await env.fake.command("play", path=str(_walk(tmp_path)), rate=None)
            events = await _events(
                client, 45, lambda got: any(e["type"] == "departed" for e in got)
            )
            kinds = [(e["type"], e["contact"]["id"]) for e in events]
            assert kinds[0] == ("arrived", "c-ada"), kinds
            assert ("zone", "c-ada") in kinds, kinds
            assert kinds[-1] == ("departed", "c-ada"), kinds
            zone = next(e for e in events if e["type"] == "zone")
            assert zone["zone"] == "immediate"
            assert events[-1]["reason"] == "out_of_range"
            assert all(e["via"] == "address" for e in events)
            assert all(e["scanner"] == "test-kiosk" for e in events)
            last_seq = events[-1]["seq"]

            # BlueZ dies mid-scan (SIGKILL, like a crashed bluetoothd) and comes back.
            await env.fake.command("steady", devices=3, rate=50, duration_s=60)
            await env.fake.stop(kill=True)
            await asyncio.sleep(1.0)
            restarted = time.monotonic()
            await env.new_fake()
            bob = beacon_rows(BOB, start=0.0, duration_s=20, rssi=-58)
            bob_trace = tmp_path / "bob.jsonl"
            write_trace(bob_trace, bob)
            await env.fake.command("play", path=str(bob_trace), rate=None)
            after = await _events(client, 30, lambda got: any(e["type"] == "arrived"
                                                                for e in got))
            assert after, daemon.log()
            recovered_s = time.monotonic() - restarted
            assert after[0]["type"] == "arrived"
            assert after[0]["contact"]["id"] == "c-bob"
            assert after[0]["seq"] == last_seq + 1
            # Within the watchdog time (silence_restart_s) plus the arrival confirmation.
            assert recovered_s < 5.0 + 5.0, recovered_s
            status_log = daemon.log()
            assert "bluez" in status_log.lower()
            client.close()
            assert ADA not in status_log
            assert STRANGER not in status_log
        finally:
            daemon.stop()


async def test_watchdog_stops_while_the_pipeline_is_wedged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    config = write_config(tmp_path, port=port, source="bleak")
    async with bluez_env(monkeypatch) as env:
        daemon = start_daemon(tmp_path, config, port=port, watchdog_usec=1_000_000,
                              env_extra={"HALLWAY_DEBUG_WEDGE": "1"})
        try:
            await asyncio.to_thread(daemon.wait_for_notification, "READY=1", 30)
            await env.fake.command("steady", devices=5, rate=200, duration_s=60)
            await asyncio.to_thread(daemon.wait_for_notification, "WATCHDOG=1", 5)
            # A frozen bluetoothd is a radio fault, not a wedged daemon: pings go on.
            await env.fake.command("freeze")
            got = await asyncio.to_thread(daemon.notifications, 3.0)
            got += await asyncio.to_thread(daemon.notifications, 1.0)
            assert any("WATCHDOG=1" in m for m in got), got
            await env.fake.command("thaw")
            await asyncio.to_thread(daemon.wait_for_notification, "WATCHDOG=1", 5)
            # The pipeline stops draining the radio's hand-off: pings stop within the grace.
            daemon.proc.send_signal(signal.SIGUSR2)
            deadline = time.monotonic() + 20
            silent_for = 0.0
            while time.monotonic() < deadline and silent_for < 3.0:
                got = await asyncio.to_thread(daemon.notifications, 0.5)
                silent_for = 0.0 if any("WATCHDOG=1" in m for m in got) else silent_for + 0.5
            assert silent_for >= 3.0, "WATCHDOG=1 kept coming while the pipeline was wedged"
            assert daemon.proc.poll() is None
        finally:
            daemon.stop(signal.SIGTERM)
