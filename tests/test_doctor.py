"""``hallway doctor`` on this machine (no Bluetooth): precise failures with fixes, passes where
things work. BlueZ checks run against a fake ``org.bluez`` on a private ``dbus-daemon``."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from hallway.cli import main as cli_main
from hallway.doctor import Check, DoctorOptions, Report, Status, diagnose
from hallway.store import MIGRATIONS, SCHEMA_VERSION
from tests.support.fakebluez import FakeBlueZProcess, PrivateBus

needs_dbus = pytest.mark.skipif(shutil.which("dbus-daemon") is None,
                                reason="dbus-daemon is not installed")
BLUEZ_CHECKS = ("dbus", "bluez", "adapter", "powered", "permission", "passive_scan",
                "advertising")
CONTACT = ('{"id": "c-0001", "name": "Ada Lovelace", "keys": [{"kind": "ibeacon", '
           '"uuid": "426c7565-4368-6172-6d42-6561636f6e73", "major": 3838, "minor": 4949}]}\n')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_config(folder: Path, *, scanner: str = "", extra: str = "", port: int | None = None
                 ) -> Path:
    """A config whose files live in ``folder``; mDNS on loopback only."""
    path = folder / "config.toml"
    path.write_text(
        f"[scanner]\n{scanner}\n"
        f'[storage]\ndatabase = "hallway.db"\n'
        f'[server]\nunix_socket = "hallway.sock"\ntcp_port = {port or free_port()}\n'
        f'[mdns]\ninterfaces = ["127.0.0.1"]\n{extra}')
    return path


def make_database(folder: Path, *, contacts: bool = True) -> Path:
    """A migrated database, by the CLI (in a thread: tests may already run an event loop)."""
    db = folder / "hallway.db"
    source = folder / "contacts.jsonl"
    source.write_text(CONTACT if contacts else "")
    argv = ["contacts", "import", str(source), "--db", str(db)]
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(cli_main, argv).result() == 0
    return db


def checks(report: Report) -> dict[str, Check]:
    return {c.name: c for c in report.checks}


def options(config: Path, **kwargs: Any) -> DoctorOptions:
    kwargs.setdefault("rfkill_root", config.parent / "no-rfkill")
    kwargs.setdefault("timeout_s", 3.0)
    return DoctorOptions(config_path=str(config), **kwargs)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path (Unix socket paths are limited to 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="hd-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def bus(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateBus]:
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed")
    private = PrivateBus(short_dir / "bus")
    private.start()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", private.address)
    yield private
    private.stop()


async def start_fake(bus_address: str, folder: Path, **kwargs: Any) -> FakeBlueZProcess:
    fake = FakeBlueZProcess(bus_address, folder / "fake.ctl", **kwargs)
    await fake.start()
    return fake


@pytest.fixture
async def fake_bluez(bus: PrivateBus, short_dir: Path) -> AsyncIterator[FakeBlueZProcess]:
    fake = await start_fake(bus.address, short_dir)
    yield fake
    await fake.stop()


# -- the command line --------------------------------------------------------------------------


def run_doctor(config: Path, *args: str, bus_address: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus_address}
    return subprocess.run([sys.executable, "-m", "hallway", "doctor", "--config", str(config),
                           "--timeout", "3", *args],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def test_cli_without_a_bus_names_the_failure_and_its_fix(tmp_path: Path, short_dir: Path
                                                        ) -> None:
    config = write_config(tmp_path)
    make_database(tmp_path)
    result = run_doctor(config, "--json", bus_address=f"unix:path={short_dir}/no-bus")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["dbus"]["status"] == "fail"
    assert "No such file or directory" in by_name["dbus"]["detail"]
    assert "systemctl start dbus" in by_name["dbus"]["fix"]
    for name in BLUEZ_CHECKS[1:]:
        assert by_name[name]["status"] == "skip"
        assert by_name[name]["detail"] == "needs the D-Bus system bus"
    for name in ("config", "database", "unix_socket", "tcp_socket", "mdns"):
        assert by_name[name]["status"] == "ok", by_name[name]
    assert by_name["clock"]["status"] in ("ok", "warn")
    failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
    assert failed == ["dbus"]

    human = run_doctor(config, bus_address=f"unix:path={short_dir}/no-bus")
    assert human.returncode == 1
    lines = human.stdout.splitlines()
    row = next(i for i, line in enumerate(lines) if "D-Bus system bus reachable" in line)
    assert lines[row].split()[0] == "FAIL"
    assert "fix: start D-Bus" in lines[row + 1]
    assert lines[-1] == "1 check(s) failed: dbus"


@needs_dbus
async def test_cli_passes_everything_with_the_fake_bluez(
        tmp_path: Path, bus: PrivateBus, fake_bluez: FakeBlueZProcess) -> None:
    config = write_config(tmp_path)
    make_database(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hallway", "doctor", "--config", str(config), "--json",
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS":
                                              bus.address})
    out, _ = await proc.communicate()
    report = json.loads(out)
    by_name = {c["name"]: c for c in report["checks"]}
    for name in BLUEZ_CHECKS:
        assert by_name[name]["status"] == "ok", by_name[name]
    assert "00:1A:7D:DA:71:13" in by_name["adapter"]["detail"]
    assert "not needed: scanner.mode = active" in by_name["passive_scan"]["detail"]
    assert [c["name"] for c in report["checks"] if c["status"] == "fail"] == []
    assert proc.returncode == 0
    assert report["ok"] is True


# -- BlueZ -----------------------------------------------------------------------------------


async def test_bus_without_bluez(tmp_path: Path, bus: PrivateBus) -> None:
    config = write_config(tmp_path)
    found = checks(await diagnose(options(config)))
    assert found["dbus"].status is Status.OK
    assert found["bluez"].status is Status.FAIL
    assert "bluetoothd is not running" in found["bluez"].detail
    assert "systemctl enable --now bluetooth" in (found["bluez"].fix or "")
    assert found["adapter"].status is Status.SKIP


async def test_wrong_adapter_names_the_ones_bluez_has(
        tmp_path: Path, fake_bluez: FakeBlueZProcess) -> None:
    config = write_config(tmp_path, scanner='adapter = "hci1"')
    found = checks(await diagnose(options(config)))
    assert found["adapter"].status is Status.FAIL
    assert found["adapter"].detail == "no adapter hci1; BlueZ has: hci0"
    assert found["adapter"].fix == 'set scanner.adapter = "hci0" in the config'
    assert found["powered"].status is Status.SKIP


async def test_no_adapter_at_all(tmp_path: Path, bus: PrivateBus, short_dir: Path) -> None:
    fake = await start_fake(bus.address, short_dir, with_adapter=False)
    try:
        found = checks(await diagnose(options(write_config(tmp_path))))
    finally:
        await fake.stop()
    assert found["bluez"].status is Status.OK
    assert found["adapter"].status is Status.FAIL
    assert found["adapter"].detail == "BlueZ has no adapter at all"
    assert "bluetoothctl list" in (found["adapter"].fix or "")


async def test_powered_off_adapter(tmp_path: Path, bus: PrivateBus, short_dir: Path) -> None:
    fake = await start_fake(bus.address, short_dir, powered=False)
    try:
        found = checks(await diagnose(options(write_config(tmp_path))))
    finally:
        await fake.stop()
    assert found["adapter"].status is Status.OK
    assert found["powered"].status is Status.FAIL
    assert found["powered"].detail == "hci0 is powered off"
    assert "bluetoothctl power on" in (found["powered"].fix or "")
    assert found["permission"].status is Status.OK


async def test_passive_mode_needs_an_advertisement_monitor(
        tmp_path: Path, fake_bluez: FakeBlueZProcess) -> None:
    config = write_config(tmp_path, scanner='mode = "passive"')
    found = checks(await diagnose(options(config)))
    assert found["passive_scan"].status is Status.FAIL
    assert "no org.bluez.AdvertisementMonitorManager1" in found["passive_scan"].detail
    assert "Experimental = true" in (found["passive_scan"].fix or "")


async def test_checkin_needs_advertising(
        tmp_path: Path, bus: PrivateBus, short_dir: Path) -> None:
    config = write_config(tmp_path, extra="[checkin]\nenabled = true\n")
    fake = await start_fake(bus.address, short_dir)
    try:
        found = checks(await diagnose(options(config)))
    finally:
        await fake.stop()
    assert found["advertising"].status is Status.OK
    assert "LEAdvertisingManager1 with 5 free instance(s)" in found["advertising"].detail
    fake = await start_fake(bus.address, short_dir, advertising=False)
    try:
        found = checks(await diagnose(options(config)))
        unused = checks(await diagnose(options(write_config(tmp_path))))
    finally:
        await fake.stop()
    assert found["advertising"].status is Status.FAIL
    assert "no org.bluez.LEAdvertisingManager1" in found["advertising"].detail
    assert "peripheral" in (found["advertising"].fix or "")
    assert unused["advertising"].status is Status.OK
    assert "not needed: checkin.enabled = false" in unused["advertising"].detail


_DENYING_BUS = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <deny send_destination="org.bluez"/>
  </policy>
  <policy group="{group}">
    <allow send_destination="org.bluez"/>
  </policy>
</busconfig>
"""


@needs_dbus
async def test_bus_policy_refusal_is_a_permission_failure(
        tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy like BlueZ's before 5.51: only a group may call org.bluez; we are not in it."""
    sock = short_dir / "deny.sock"
    conf = short_dir / "deny.conf"
    mine = {os.getegid(), *os.getgroups()}
    other = next(g.gr_name for g in grp.getgrall() if g.gr_gid not in mine)
    conf.write_text(_DENYING_BUS.format(socket=sock, group=other))
    daemon = await asyncio.create_subprocess_exec(
        "dbus-daemon", f"--config-file={conf}", "--nofork", "--print-address",
        stdout=asyncio.subprocess.PIPE)
    try:
        assert daemon.stdout is not None
        assert (await daemon.stdout.readline()).startswith(b"unix:")
        address = f"unix:path={sock}"
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        fake = await start_fake(address, short_dir)
        try:
            found = checks(await diagnose(options(write_config(tmp_path))))
        finally:
            await fake.stop()
    finally:
        daemon.send_signal(signal.SIGTERM)
        await daemon.wait()
    assert found["bluez"].status is Status.OK
    assert found["permission"].status is Status.FAIL
    assert "AccessDenied" in found["permission"].detail
    assert "usermod -aG bluetooth" in (found["permission"].fix or "")
    assert found["adapter"].status is Status.SKIP


async def test_simulator_source_turns_radio_failures_into_warnings(
        tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={short_dir}/no-bus")
    config = write_config(tmp_path, scanner='source = "simulator"')
    make_database(tmp_path)
    report = await diagnose(options(config))
    found = checks(report)
    assert found["dbus"].status is Status.WARN
    assert "not needed while scanner.source = 'simulator'" in found["dbus"].detail
    assert report.ok


# -- rfkill ----------------------------------------------------------------------------------


def rfkill_tree(root: Path, *switches: tuple[str, str, int, int]) -> Path:
    """A /sys/class/rfkill-shaped folder: (type, name, soft, hard) per switch."""
    for index, (kind, name, soft, hard) in enumerate(switches):
        entry = root / f"rfkill{index}"
        entry.mkdir(parents=True)
        for field, value in (("type", kind), ("name", name), ("soft", soft), ("hard", hard)):
            (entry / field).write_text(f"{value}\n")
    return root


@pytest.mark.parametrize(("switches", "status", "text"), [
    ([("bluetooth", "hci0", 1, 0)], Status.FAIL, "soft-blocked: hci0"),
    ([("bluetooth", "hci0", 0, 1)], Status.FAIL, "hard-blocked: hci0"),
    ([("bluetooth", "hci0", 0, 0), ("wlan", "phy0", 1, 0)], Status.OK, "not blocked: hci0"),
    ([("bluetooth", "hci1", 1, 0), ("bluetooth", "hci0", 0, 0)], Status.OK, "not blocked: hci0"),
    ([("wlan", "phy0", 1, 1)], Status.OK, "no Bluetooth rfkill switch"),
])
async def test_rfkill(tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch, *,
                      switches: list[tuple[str, str, int, int]], status: Status, text: str
                      ) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={short_dir}/no-bus")
    root = rfkill_tree(tmp_path / "rfkill", *switches)
    found = checks(await diagnose(options(write_config(tmp_path), rfkill_root=root)))
    assert found["rfkill"].status is status
    assert found["rfkill"].detail == text
    if "soft" in text:
        assert found["rfkill"].fix == "sudo rfkill unblock bluetooth"


# -- config, database, sockets, clock -------------------------------------------------------


async def test_invalid_config_lists_problems_and_skips_what_needs_it(
        tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={short_dir}/no-bus")
    config = tmp_path / "config.toml"
    config.write_text('[scanner]\nmode = "loud"\n[server]\ntcp_prot = 1\n')
    report = await diagnose(options(config))
    found = checks(report)
    assert found["config"].status is Status.FAIL
    assert f"{config}:2: scanner.mode:" in found["config"].detail
    assert f"{config}:4: server.tcp_prot: unknown key" in found["config"].detail
    assert f"hallway check-config {config}" in (found["config"].fix or "")
    for name in ("database", "unix_socket", "tcp_socket", "mdns"):
        assert found[name].status is Status.SKIP
    assert not report.ok


def write_schema(db: Path, version: int) -> None:
    with sqlite3.connect(db) as conn:
        for script in MIGRATIONS[:min(version, len(MIGRATIONS))]:
            conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {version}")


@pytest.mark.parametrize(("prepare", "status", "text", "fix"), [
    ("missing", Status.FAIL, "does not exist (the service creates it at first start)",
     "systemctl start hallway"),
    ("old", Status.FAIL, f"schema version 1, this hallway needs {SCHEMA_VERSION}",
     "opening it migrates it"),
    ("newer", Status.FAIL, f"schema version 99 is newer than this hallway's ({SCHEMA_VERSION})",
     "upgrade hallway"),
    ("garbage", Status.FAIL, "cannot read it as SQLite", "backup"),
    ("empty", Status.WARN, "0 contact(s): nobody can be recognised", "contacts import"),
    ("good", Status.OK, f"schema {SCHEMA_VERSION}, 1 contact(s)", None),
])
async def test_database(tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch, *,
                        prepare: str, status: Status, text: str, fix: str | None) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={short_dir}/no-bus")
    config = write_config(tmp_path)
    db = tmp_path / "hallway.db"
    if prepare == "old":
        write_schema(db, 1)
    elif prepare == "newer":
        write_schema(db, 99)
    elif prepare == "garbage":
        db.write_bytes(os.urandom(8192))
    elif prepare == "empty":
        make_database(tmp_path, contacts=False)
    elif prepare == "good":
        make_database(tmp_path)
    before = db.read_bytes() if db.exists() else None
    found = checks(await diagnose(options(config)))
    assert found["database"].status is status, found["database"]
    assert text in found["database"].detail
    if fix is not None:
        assert fix in (found["database"].fix or "")
    assert (db.read_bytes() if db.exists() else None) == before  # doctor only looks


async def test_permissions_are_judged_for_the_service_account(
        tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to judge another account's access")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={short_dir}/no-bus")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    config = write_config(private)
    make_database(private)
    found = checks(await diagnose(options(config, user="nobody")))
    assert found["database"].status is Status.FAIL
    assert "is not readable and writable by nobody" in found["database"].detail
    assert found["unix_socket"].status is Status.FAIL
    assert "nobody cannot create" in found["unix_socket"].detail
    assert checks(await diagnose(options(config)))["database"].status is Status.OK


async def test_tcp_port_taken(tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch
                              ) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={short_dir}/no-bus")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def hallway_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"type": "hello", "protocol": 1, "server": "hallway/9.9", '
                     b'"scanner": "x", "auth": "token"}\n')
        await writer.drain()
        writer.close()

    for handler, status, text in ((silent, Status.FAIL, "is taken by another program"),
                                  (hallway_like, Status.OK, "hallway/9.9 is listening")):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            found = checks(await diagnose(options(write_config(tmp_path, port=port))))
        finally:
            server.close()
            await server.wait_closed()
        assert found["tcp_socket"].status is status
        assert text in found["tcp_socket"].detail
        if status is Status.FAIL:
            assert f"sport = :{port}" in (found["tcp_socket"].fix or "")


async def test_unix_socket_and_mdns_failures(tmp_path: Path, short_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={short_dir}/no-bus")
    config = write_config(tmp_path)
    text = config.read_text().replace('unix_socket = "hallway.sock"',
                                      'unix_socket = "missing/hallway.sock"')
    text = text.replace('interfaces = ["127.0.0.1"]', 'interfaces = ["192.0.2.1"]')
    config.write_text(text)
    found = checks(await diagnose(options(config)))
    assert found["unix_socket"].status is Status.FAIL
    assert found["unix_socket"].detail == f"folder {tmp_path / 'missing'} does not exist"
    assert found["mdns"].status is Status.FAIL
    assert found["mdns"].detail.startswith("cannot join mDNS on 192.0.2.1: not an address of this")
    assert "mdns.interfaces" in (found["mdns"].fix or "")


@pytest.mark.parametrize(("now", "synced", "status", "text"), [
    (0.0, True, Status.FAIL, "the clock says 1970-01-01 00:00:00 UTC"),
    (1_795_000_000.0, False, Status.WARN, "not synchronised"),
    (1_795_000_000.0, True, Status.OK, "(synchronised)"),
    (1_795_000_000.0, None, Status.OK, "(sync state unknown)"),
])
async def test_clock(tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch, *,
                     now: float, synced: bool | None, status: Status, text: str) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={short_dir}/no-bus")
    found = checks(await diagnose(options(write_config(tmp_path), now=lambda: now,
                                          clock_synchronised=lambda: synced)))
    assert found["clock"].status is status
    assert text in found["clock"].detail
    if status is not Status.OK:
        assert "timedatectl set-ntp true" in (found["clock"].fix or "")


# -- the recovery ladder's reset -----------------------------------------------------------------


async def test_reset_check_names_the_method_or_why_there_is_none(
        tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={short_dir}/no-bus")
    config = write_config(tmp_path)
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    found = checks(await diagnose(options(config, sysfs_root=sysfs, dev_root=dev)))
    assert found["reset"].status is Status.WARN
    assert "not a kernel device" in found["reset"].detail
    assert "docs/install.md" in str(found["reset"].fix)
    (sysfs / "class/bluetooth/hci0/rfkill2").mkdir(parents=True)
    (sysfs / "class/bluetooth/hci0/rfkill2/index").write_text("2\n")
    dev.mkdir()
    (dev / "rfkill").write_bytes(b"")
    found = checks(await diagnose(options(config, sysfs_root=sysfs, dev_root=dev)))
    assert found["reset"].status is Status.OK
    assert found["reset"].detail == f"yes: rfkill 2 via {dev / 'rfkill'}"
