"""The hardened unit takes check-ins with no new capabilities: a real systemd (systemd-nspawn
over this machine's /usr, as in test_nspawn.py) runs the shipped ``hallway.service`` with the
bleak source and ``[checkin] enabled``, and the fake BlueZ as root on the container's real
system bus, under a D-Bus policy shaped like the one BlueZ installs (root owns ``org.bluez``
and may call applications' GATT and advertisement objects; group ``bluetooth`` may call
``org.bluez``). The daemon registers its advertisement and GATT application through the
sandbox (``CapabilityBoundingSet=`` empty, ``RestrictAddressFamilies``, the system-call
filter, ``ProtectSystem=strict``) and a simulated phone's check-in reaches it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hallway.identity.crypto import derive_rpik, interval_number, rpi_for_interval
from hallway.parsing.checkin import encode_checkin
from tests.support.fakebluez import FakeBlueZProcess
from tests.test_nspawn import (
    SYSUSERS,
    UNIT,
    Container,
    code_paths,
    preflight,
    sandbox_properties,
    status_from_host,
    wait_for,
)

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(180)]

KEY = bytes.fromhex("75c734c6dd1a782de7a965da5eb93125")
CONTACTS = json.dumps({"id": "c-ada", "name": "Ada Lovelace",
                       "keys": [{"kind": "hallway-v1", "key": KEY.hex()}]}) + "\n"
CONFIG = """\
[scanner]
name = "nspawn-checkin"
source = "bleak"

[storage]
database = "/var/lib/hallway/hallway.db"

[server]
tcp_host = "127.0.0.1"
tcp_port = 7447
unix_socket = "/run/hallway/hallway.sock"

[mdns]
enabled = false

[checkin]
enabled = true

[logging]
format = "json"
"""
# Shaped like BlueZ's own bluetooth.conf (root's callbacks into applications; the group).
POLICY = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root">
    <allow own="org.bluez"/>
    <allow send_destination="org.bluez"/>
    <allow send_interface="org.bluez.GattCharacteristic1"/>
    <allow send_interface="org.bluez.LEAdvertisement1"/>
    <allow send_interface="org.freedesktop.DBus.ObjectManager"/>
    <allow send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <policy group="bluetooth">
    <allow send_destination="org.bluez"/>
  </policy>
  <policy context="default">
    <deny send_destination="org.bluez"/>
  </policy>
</busconfig>
"""
FAKE_UNIT = """\
[Unit]
Description=fake BlueZ for the check-in test
After=dbus.service
Requires=dbus.socket

[Service]
ExecStart=/opt/hallway/bin/python {fakebluez} \\
    --bus unix:path=/run/dbus/system_bus_socket --control /run/fakebluez/control
RuntimeDirectory=fakebluez
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    return path


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Container]:
    reason = preflight()
    if reason:
        pytest.skip(reason)
    tmp_path.chmod(0o755)
    etc = tmp_path / "etc-hallway"
    etc.mkdir(mode=0o755)
    etc.chmod(0o755)
    _write(etc / "config.toml", CONFIG)
    _write(etc / "contacts.jsonl", CONTACTS)
    dropin = tmp_path / "dropin"
    dropin.mkdir(mode=0o755)
    lines = ["[Service]",
             "ExecStartPre=/opt/hallway/bin/hallway contacts import /etc/hallway/contacts.jsonl "
             "--config /etc/hallway/config.toml", *sandbox_properties()]
    _write(dropin / "test.conf", "\n".join(lines) + "\n")
    preset = _write(tmp_path / "test.preset",
                    "disable hallway.service\ndisable fakebluez.service\n")
    policy = _write(tmp_path / "org.bluez.conf", POLICY)
    # The container sees the host's /usr and what is bound in: the test doubles' folder too.
    support = Path(__file__).resolve().with_name("support")
    fake_unit = _write(tmp_path / "fakebluez.service",
                       FAKE_UNIT.format(fakebluez="/opt/hallway-test-support/fakebluez.py"))
    argv = ["systemd-nspawn", "-D", "/", "--volatile=yes", "--register=no", "--keep-unit",
            "--private-network", "--console=pipe", "-b",
            f"--bind-ro={UNIT}:/etc/systemd/system/hallway.service",
            f"--bind-ro={dropin}:/etc/systemd/system/hallway.service.d",
            f"--bind-ro={fake_unit}:/etc/systemd/system/fakebluez.service",
            f"--bind-ro={SYSUSERS}:/etc/sysusers.d/hallway.conf",
            f"--bind-ro={preset}:/etc/systemd/system-preset/00-hallway-test.preset",
            f"--bind-ro={policy}:/etc/dbus-1/system.d/org.bluez.conf",
            f"--bind-ro={etc}:/etc/hallway",
            f"--bind-ro={sys.prefix}:/opt/hallway",
            f"--bind-ro={support}:/opt/hallway-test-support"]
    argv += [f"--bind-ro={p}" for p in code_paths()]
    container = Container(argv, tmp_path / "nspawn.log")
    try:
        container.boot()
        yield container
    finally:
        container.stop()


def test_the_hardened_unit_registers_and_takes_a_checkin(box: Container) -> None:
    box.run("systemctl", "start", "dbus.socket", "dbus.service", check=False)
    box.run("systemctl", "start", "fakebluez.service")
    control = box.path("/run/fakebluez/control")
    wait_for("the fake BlueZ's control socket", control.exists, timeout_s=30)
    fake = FakeBlueZProcess("unused", control)

    def command(cmd: str, **args: Any) -> dict[str, Any]:
        return asyncio.run(fake.command(cmd, **args))

    box.run("systemctl", "start", "hallway.service")

    def registered() -> dict[str, Any] | None:
        stats = command("stats")
        return stats if stats["advertisements"] and stats["applications"] else None

    stats = wait_for("hallway to register with BlueZ", registered, timeout_s=60, step_s=0.5)
    assert stats["advertisements"][0]["Type"] == "peripheral"
    rpi = rpi_for_interval(derive_rpik(KEY), interval_number(time.time()))
    value = encode_checkin(rpi, heard_rssi=-62, tx_power=-59).hex()
    answer = command("central", address="6A:11:22:33:44:55", values=[value])
    assert answer["tally"] == {"ok": 1}, (answer, box.journal("hallway.service")[-3000:])
    status = status_from_host(box)
    assert status["checkin"]["state"] == "registered"
    assert status["checkin"]["accepted"] == 1
    assert status["present"] == 1
    props = box.show("hallway.service", "CapabilityBoundingSet", "User")
    assert props["CapabilityBoundingSet"] == ""
    assert props["User"] == "hallway"
