"""``hallway checkin`` (the reference central, bleak's real client backend) against the daemon's
real peripheral, both on a fake BlueZ whose second adapter stands for the phone's radio."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.bluez_env import bluez_env, needs_dbus
from tests.daemon_env import ROOT, Client, free_port, import_contacts, start_daemon, write_config

pytestmark = [needs_dbus, pytest.mark.system]

KEY = "75c734c6dd1a782de7a965da5eb93125"
CONTACTS = [{"id": "c-ada", "name": "Ada Lovelace", "keys": [{"kind": "hallway-v1", "key": KEY}]}]


async def _central(*args: str, timeout_s: float = 60.0) -> tuple[int, list[dict[str, Any]], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hallway", "checkin", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    async with asyncio.timeout(timeout_s):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, [json.loads(line) for line in out.splitlines()], err.decode()


async def test_reference_central_checks_in_with_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_contacts(tmp_path, CONTACTS)
    port = free_port()
    config = write_config(tmp_path, port=port, source="bleak",
                          extra="[checkin]\nenabled = true\nmeasured_power_dbm = -59\n")
    async with bluez_env(monkeypatch, phone_adapter="hci1") as env:
        daemon = start_daemon(tmp_path, config, port=port)
        try:
            await asyncio.to_thread(daemon.wait_for_notification, "READY=1", 30)
            client = Client(port)
            assert client.subscribe()["type"] == "subscribed"
            await env.fake.command("phone_rssi", rssi=-65)
            started = time.monotonic()
            code, rounds, err = await _central("--key", KEY, "--adapter", "hci1",
                                               "--count", "2", "--interval", "2")
            assert code == 0, (rounds, err)
            assert [r["result"] for r in rounds] == ["ok", "ok"], err
            assert rounds[0]["heard_rssi"] == -65
            assert rounds[0]["scanner"] == "00:1A:7D:DA:71:13"
            events = await asyncio.to_thread(lambda: list(client.events(2.0)))
            assert [e["type"] for e in events] == ["arrived"], events
            assert events[0]["contact"]["id"] == "c-ada"
            assert events[0]["carrier"] == "checkin"
            assert 1.5 < events[0]["distance_m"] < 2.5
            assert time.monotonic() - started < 30
            stats = await env.fake.command("stats")
            assert stats["central"]["phone_write_ok"] == 2
            assert stats["central"]["phone_connects"] == 2

            # A key nobody enrolled: the daemon refuses the write (an ATT error), exit 1.
            code, rounds, _err = await _central("--key", "00" * 16, "--adapter", "hci1",
                                                "--count", "1")
            assert code == 1
            assert rounds[0]["result"] == "att_error_0x08"  # insufficient authorization
            client.close()
        finally:
            daemon.stop()


def test_bad_arguments_are_refused_before_any_radio_work() -> None:
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for args, message in ((["--key", "abc"], "--key"), (["--key", KEY, "--interval", "31"],
                                                          "--interval")):
        result = subprocess.run([sys.executable, "-m", "hallway", "checkin", *args],
                                capture_output=True, text=True, env=env, check=False)
        assert result.returncode == 2
        assert message in result.stderr
