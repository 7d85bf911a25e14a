"""The reference central: what a phone app does to check in (SPEC §3.1), with bleak on Linux.

One round: scan for the check-in service (a scanner advertising ``SERVICE_UUID``), listen to
it for up to ``listen_s`` after it is first heard and take the median RSSI as ``heard_rssi``,
connect, write ``48 57 02 || RPI || heard_rssi || tx_power`` to ``CHARACTERISTIC_UUID`` (with
response, so a refusal comes back as an ATT error), disconnect. Rounds repeat every
``interval_s`` (at most 30 s, as the format asks) for ``count`` rounds or until cancelled.
The RPI is computed for the moment of each write from the enrollment key, exactly as the
advertising carriers compute theirs.

A port to iOS: scan with ``CBCentralManager.scanForPeripherals(withServices: [service])``
(allowed in the background for a named service), ``connect``, ``discoverServices``,
``writeValue(_:for:type: .withResponse)`` with the same 21 bytes, ``cancelPeripheralConnection``;
on Android, ``BluetoothLeScanner`` with a ``ScanFilter`` on the service UUID and
``BluetoothGatt.writeCharacteristic``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from bleak import BleakClient, BleakScanner
from bleak.args.bluez import BlueZScannerArgs
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakDBusError, BleakError, BleakGATTProtocolError

from hallway.identity.crypto import derive_rpik, interval_number, rpi_for_interval
from hallway.parsing.checkin import CHARACTERISTIC_UUID, SERVICE_UUID, encode_checkin

MAX_INTERVAL_S = 30.0
_ATT_CODE = re.compile(r"ATT error: 0x([0-9a-fA-F]{2})")


@dataclass(frozen=True, slots=True)
class RoundResult:
    """One check-in attempt: whom we wrote to, what we sent, and what came back."""

    ts: float
    scanner: str | None  # the scanner's Bluetooth address (a fixed adapter, not a person)
    heard_rssi: int | None
    result: str  # "ok", "not_found", "att_error_0xNN" (the scanner refused), or another error


def checkin_bytes(key: bytes, ts: float, *, heard_rssi: int | None,
                  tx_power: int | None) -> bytes:
    """The 21 bytes to write at ``ts`` for the enrollment key ``key``."""
    rpi = rpi_for_interval(derive_rpik(key), interval_number(ts))
    return encode_checkin(rpi, heard_rssi=heard_rssi, tx_power=tx_power)


async def _find_scanner(adapter: str | None, *, timeout_s: float, listen_s: float
                        ) -> tuple[BLEDevice, int] | None:
    """The first scanner heard advertising the service, and the median RSSI heard from it."""
    heard: dict[str, tuple[BLEDevice, list[int]]] = {}
    first = asyncio.Event()

    def on_detect(device: BLEDevice, data: AdvertisementData) -> None:
        if SERVICE_UUID not in (u.lower() for u in data.service_uuids):
            return
        entry = heard.setdefault(device.address, (device, []))
        if data.rssi > -127:
            entry[1].append(data.rssi)
        first.set()

    bluez: BlueZScannerArgs = {"adapter": adapter} if adapter else {}
    scanner = BleakScanner(on_detect, service_uuids=[SERVICE_UUID], bluez=bluez)
    await scanner.start()
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await first.wait()
                await asyncio.sleep(listen_s)
    finally:
        await scanner.stop()
    best = max(heard.values(), key=lambda e: statistics.median(e[1]) if e[1] else -999,
               default=None)
    if best is None:
        return None
    device, levels = best
    return device, round(statistics.median(levels)) if levels else -127


async def check_in_once(key: bytes, *, adapter: str | None = None, tx_power: int | None = None,
                        scan_timeout_s: float = 10.0, listen_s: float = 1.0,
                        clock: Callable[[], float] = time.time) -> RoundResult:
    """One round (see the module docstring); never raises for radio or protocol failures."""
    found = await _find_scanner(adapter, timeout_s=scan_timeout_s, listen_s=listen_s)
    if found is None:
        return RoundResult(clock(), None, None, "not_found")
    device, rssi = found
    heard = rssi if rssi > -127 else None
    try:
        async with BleakClient(device, timeout=scan_timeout_s) as client:
            ts = clock()
            data = checkin_bytes(key, ts, heard_rssi=heard, tx_power=tx_power)
            await client.write_gatt_char(CHARACTERISTIC_UUID, data, response=True)
    except BleakGATTProtocolError as exc:  # the scanner refused the write (an ATT error)
        return RoundResult(clock(), device.address, heard, f"att_error_0x{int(exc.code):02x}")
    except BleakDBusError as exc:
        code = _ATT_CODE.search(exc.dbus_error_details or "")
        result = f"att_error_0x{code.group(1).lower()}" if code else exc.dbus_error
        return RoundResult(clock(), device.address, heard, result)
    except (BleakError, TimeoutError, OSError) as exc:
        return RoundResult(clock(), device.address, heard, f"failed: {type(exc).__name__}")
    return RoundResult(ts, device.address, heard, "ok")


async def run_central(key: bytes, *, adapter: str | None, interval_s: float, count: int | None,
                      tx_power: int | None, report: Callable[[RoundResult], None],
                      scan_timeout_s: float = 10.0) -> int:
    """Check in every ``interval_s`` for ``count`` rounds (None: until cancelled); 0 when
    every round was accepted, 1 otherwise."""
    interval_s = min(interval_s, MAX_INTERVAL_S)
    failed = False
    done = 0
    loop = asyncio.get_running_loop()
    while count is None or done < count:
        started = loop.time()
        result = await check_in_once(key, adapter=adapter, tx_power=tx_power,
                                     scan_timeout_s=scan_timeout_s)
        report(result)
        failed = failed or result.result != "ok"
        done += 1
        if count is not None and done >= count:
            break
        await asyncio.sleep(max(0.0, started + interval_s - loop.time()))
    return 1 if failed else 0
