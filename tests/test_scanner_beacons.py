"""Scanners that calibrate each other: three ``hallway run`` daemons, each on its own fake
BlueZ (one bus each, as each scanner is its own machine), linked by ``Air``. Each advertises
its reference beacon through ``LEAdvertisingManager1`` ([scanner.beacon]); the others hear it
through bleak and fit their receive offsets against it ([[proximity.reference]] by iBeacon, at
the known distance between the scanners). One receiver reads 8 dB low: its fit finds it, the
others' stay near 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from hallway.config import Config, load_config
from hallway.proximity.scanners import PairReading, solve
from hallway.sources.beacon import ibeacon_payload
from hallway.venue.service import VenueService
from tests.bluez_env import needs_dbus
from tests.daemon_env import TOKEN, Daemon, free_port, start_daemon
from tests.mqtt_env import PASSWORDS, VENUE, Site, retained, running_site
from tests.support.fakebluez import Air, FakeBlueZ, PrivateBus

pytestmark = [needs_dbus, pytest.mark.system]

BEACON_UUID = "48570000-5c7a-4e0b-9b8e-3f1d2a6c9eaa"
# Three scanners: A and B 3 m apart, C 8 m from A (8.5 m from B). B's receiver reads 8 dB low.
# A and B hear references at two distances (they fit the exponent too); C's are at about the
# same distance (it fits its offset only).
SCANNERS = {"a": (0.0, 0.0), "b": (3.0, 0.0), "c": (0.0, 8.0)}
RX_OFFSET = {"a": 0.0, "b": -8.0, "c": 0.0}
MINOR = {"a": 1, "b": 2, "c": 3}


def _config(tmp: Path, name: str, port: int, broker_port: int) -> Path:
    refs = "".join(
        f'[[proximity.reference]]\nibeacon = "{BEACON_UUID}/7/{MINOR[peer]}"\n'
        f"distance_m = {math.dist(SCANNERS[name], SCANNERS[peer]):g}\n"
        for peer in SCANNERS if peer != name)
    path = tmp / name / "hallway.toml"
    path.parent.mkdir()
    path.write_text(
        f'[scanner]\nname = "kiosk-{name}"\nsource = "bleak"\n'
        f'[scanner.beacon]\nibeacon = "{BEACON_UUID}/7/{MINOR[name]}"\n'
        "measured_power_dbm = -59\n"
        f'[storage]\ndatabase = "{tmp / name / "hallway.db"}"\n'
        f'[server]\ntcp_port = {port}\nunix_socket = "{tmp / name / "hallway.sock"}"\n'
        f'tokens = ["{TOKEN}"]\n[mdns]\nenabled = false\n'
        '[logging]\nlevel = "info"\nformat = "json"\n'
        f'[mqtt]\nenabled = true\nport = {broker_port}\nusername = "kiosk-{name}"\n'
        f'password = "{PASSWORDS["kiosk-" + name]}"\nvenue = "{VENUE}"\n'
        "present_interval_s = 1.0\nreconnect_max_s = 1.0\n"
        "[proximity]\npath_loss_exponent = 2.0\n" + refs)
    load_config(path)  # the config as written is valid
    return path


def _status(tmp: Path, name: str) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(tmp / name / "hallway.sock"))
        reader = sock.makefile("rb")
        reader.readline()  # hello
        sock.sendall((json.dumps({"type": "status", "token": TOKEN}) + "\n").encode())
        result: dict[str, Any] = json.loads(reader.readline())
        return result


def _calibration(status: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = status["status"]["proximity"]["calibration"] \
        if "status" in status else status["proximity"]["calibration"]
    return found


def test_the_fake_air_hears_an_ibeacon_frame_as_stated() -> None:
    """The payload the advertiser registers is a valid iBeacon (read by hallway's parser)."""
    from hallway.parsing.frames import parse_ibeacon

    frame = parse_ibeacon(ibeacon_payload(f"{BEACON_UUID}/7/2", -59))
    assert frame is not None
    assert getattr(frame, "measured_power", None) == -59


@pytest.mark.timeout(420)
async def test_three_scanners_find_the_one_offset_receiver(tmp_path: Path) -> None:
    with running_site(tmp_path / "broker") as site:
        await _three_scanners(tmp_path, site)


async def _three_scanners(tmp_path: Path, site: Site) -> None:
    short = Path(tempfile.mkdtemp(prefix="hw-air-"))  # Unix socket paths are short
    buses: dict[str, PrivateBus] = {}
    fakes: dict[str, FakeBlueZ] = {}
    daemons: dict[str, Daemon] = {}
    air = Air(exponent=2.0, rate_hz=4.0, sigma_db=2.0, seed=7)
    air_task: asyncio.Task[None] | None = None
    try:
        for name, position in SCANNERS.items():
            bus = buses[name] = PrivateBus(short / name)
            bus.start()
            fake = fakes[name] = FakeBlueZ(adapter_address=f"00:1A:7D:DA:71:1{MINOR[name]}")
            await fake.connect(bus.address)
            air.add(fake, position, rx_offset_db=RX_OFFSET[name])
        air_task = asyncio.create_task(air.run())
        for name in SCANNERS:
            port = free_port()
            config = _config(tmp_path, name, port, site.port)
            daemons[name] = start_daemon(tmp_path / name, config, port=port,
                                         watchdog_usec=5_000_000,
                                         env_extra={"DBUS_SYSTEM_BUS_ADDRESS":
                                                    buses[name].address})
        for daemon in daemons.values():
            await asyncio.to_thread(daemon.wait_for_notification, "READY=1", 60)
        # Every scanner's beacon is registered with its BlueZ through the advertising API.
        deadline = time.monotonic() + 30
        while not all(f.registered_advertisements() for f in fakes.values()):
            assert time.monotonic() < deadline, {n: d.log()[-2000:] for n, d in daemons.items()}
            await asyncio.sleep(0.2)
        for name, fake in fakes.items():
            (props,) = fake.registered_advertisements()
            assert props["Type"] == "broadcast"
            status = await asyncio.to_thread(_status, tmp_path, name)
            beacon = (status.get("status") or status)["scanner_beacon"]
            assert beacon["state"] == "registered", beacon
        # Two closed minutes of minute medians, then a refit (every 10 s): at most ~3.5 min.
        deadline = time.monotonic() + 240
        fits: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            await asyncio.sleep(5)
            fits = {n: _calibration(await asyncio.to_thread(_status, tmp_path, n))
                    for n in SCANNERS}
            if fits["a"]["state"] == fits["b"]["state"] == "fitted" \
                    and fits["c"]["state"] == "offset only":
                break
        assert [fits[n]["state"] for n in "abc"] == ["fitted", "fitted", "offset only"], fits
        assert air.heard > 0
        for name, fit in fits.items():
            states = [r["state"] for r in fit["references"]]
            assert states == ["ok", "ok"], (name, fit)
            assert all(r["badge"].startswith("ibeacon:") for r in fit["references"])
        # B's receiver is found 8 dB low (the raw fit; what is used is blended by confidence),
        # A's and C's near 0; and the relative offset B - A is what the air made it.
        assert abs(fits["b"]["fitted_offset_db"] + 8.0) < 2.5, fits["b"]
        assert abs(fits["a"]["fitted_offset_db"]) < 2.5, fits["a"]
        assert abs(fits["c"]["fitted_offset_db"]) < 2.5, fits["c"]
        # What each tracker uses is the fit blended with the default 0 by its confidence
        # (B's two references at 3 and 8.5 m pin the offset at 1 m down only so far).
        assert fits["b"]["receive_offset_db"] < -2.5, fits["b"]
        assert abs(fits["a"]["receive_offset_db"]) < 1.5, fits["a"]
        assert abs(fits["c"]["receive_offset_db"]) < 1.5, fits["c"]
        # The venue's pairwise solution from the same figures: every scanner's level of every
        # other's beacon, at the known distances, receive and transmit errors told apart.
        by_beacon = {f"ibeacon:{BEACON_UUID}/7/{MINOR[n]}": n for n in SCANNERS}
        readings = [
            PairReading(receiver, by_beacon[ref["badge"]], ref["distance_m"], ref["level_db"])
            for receiver, fit in fits.items() for ref in fit["references"]]
        solution = solve(readings, exponent=2.0)
        offsets = {n: o.offset_db for n, o in solution.offsets.items()}
        assert abs(offsets["b"] + 8.0) < 2.0, offsets
        assert abs(offsets["a"]) < 2.0, offsets
        assert abs(offsets["c"]) < 2.0, offsets
        assert not solution.left_out
        assert min(o.confidence for o in solution.offsets.values()) > 0.7
        # The same through the broker: each scanner's retained calibration message (no badge
        # key in it), handled by the venue service as its MQTT reader hands messages over.
        base = f"hallway/{VENUE}/scanners"
        deadline = time.monotonic() + 30
        while True:
            held = await retained(site.port, f"{base}/+/calibration", f"{base}/kiosk-a/status")
            messages = {t.split("/")[-2]: json.loads(p) for t, p in held.items()}
            if len(messages) == 3 and all(len(m["references"]) == 2
                                          for m in messages.values()):
                break
            assert time.monotonic() < deadline, messages
            await asyncio.sleep(1.0)
        assert BEACON_UUID not in json.dumps([m["references"] for m in messages.values()])
        venue = VenueService(Config.model_validate({
            "storage": {"database": str(tmp_path / "venue.db")},
            "mqtt": {"enabled": True, "venue": VENUE}}))
        for topic, payload in held.items():
            assert venue.handle(topic, payload) == []
        found = venue.status()["scanner_offsets"]["scanners"]
        assert abs(found["kiosk-b"]["receive_offset_db"] + 8.0) < 2.0, found
        assert abs(found["kiosk-a"]["receive_offset_db"]) < 2.0, found
        # What b's tracker lacks: the venue's fit against the offset b's tracker uses (its own
        # fit blended with 0 by a confidence that grows as minutes pass, so not a fixed figure).
        b = found["kiosk-b"]
        assert b["scanner_uses_db"] is not None, found
        assert b["correction_db"] == pytest.approx(
            b["scanner_uses_db"] - b["receive_offset_db"], abs=0.02), found
        assert b["correction_db"] > 0.0, found  # its own blend is short of the fit
    finally:
        # Stopped from threads: the fakes on this loop must answer their goodbyes.
        await asyncio.gather(*(asyncio.to_thread(d.stop) for d in daemons.values()))
        if air_task is not None:
            air_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await air_task
        for fake in fakes.values():
            await fake.close()
        for bus in buses.values():
            bus.stop()
        shutil.rmtree(short, ignore_errors=True)


async def _until(predicate: Any, what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
async def test_the_beacon_is_registered_again_and_a_broken_one_is_said(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No peripheral role: status says why the beacon is off, the scanner goes on. The adapter
    unplugged and back (BlueZ's Release), then bluetoothd restarted: registered again."""
    from hallway.config import BeaconConfig
    from hallway.sources.beacon import BeaconAdvertiser

    short = Path(tempfile.mkdtemp(prefix="hw-bcn-"))
    bus = PrivateBus(short)
    bus.start()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
    fake = FakeBlueZ(advertising=False)
    advertiser = BeaconAdvertiser(BeaconConfig(ibeacon=f"{BEACON_UUID}/7/1"), adapter="hci0")
    task: asyncio.Task[None] | None = None
    try:
        await fake.connect(bus.address)
        task = asyncio.create_task(advertiser.run())
        await _until(lambda: advertiser.stats()["register_failures"] > 0, "no failure")
        stats = advertiser.stats()
        assert stats["state"] in ("backoff", "registering"), stats
        assert "RegisterAdvertisement failed" in str(stats["last_error"]), stats
        # A BlueZ with the peripheral role takes over the name (bluetoothd restarted).
        await fake.close()
        fake = FakeBlueZ()
        await fake.connect(bus.address)
        await _until(lambda: len(fake.registered_advertisements()) == 1, "not registered")
        (props,) = fake.registered_advertisements()
        assert props["Type"] == "broadcast"
        payload = bytes(props["ManufacturerData"][0x004C].value)
        assert payload == ibeacon_payload(f"{BEACON_UUID}/7/1", -59)
        assert advertiser.stats()["state"] == "registered"
        assert advertiser.stats()["last_error"] is None
        # The adapter unplugged (BlueZ releases the advertisement) and plugged back in.
        fake.remove_adapter()
        await _until(lambda: advertiser.stats()["released"] == 1, "no Release")
        fake.add_adapter()
        await _until(lambda: len(fake.registered_advertisements()) == 1, "not again")
        assert advertiser.stats()["registrations"] >= 2
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # A clean stop unregisters (the fake answers on this loop).
        assert fake.registered_advertisements() == []
        await fake.close()
        bus.stop()
        shutil.rmtree(short, ignore_errors=True)
