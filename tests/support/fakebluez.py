"""A fake BlueZ (``org.bluez``) on a private D-Bus, for tests, benchmarks and ``hallway doctor``.

bleak's BlueZ backend talks only D-Bus, so serving BlueZ's objects on a private
``dbus-daemon`` lets bleak's real code run end to end without a radio:

* ``PrivateBus`` starts ``dbus-daemon`` with a system-bus style config on a socket in a
  folder and stops it by PID. Point ``DBUS_SYSTEM_BUS_ADDRESS`` at ``PrivateBus.address``.
* ``FakeBlueZ`` serves ``org.bluez`` from the calling event loop: the ObjectManager at ``/``,
  an adapter (``org.bluez.Adapter1``) and one ``org.bluez.Device1`` object per address heard,
  announced with ``InterfacesAdded`` and updated with ``PropertiesChanged`` per advertisement.
  It behaves as bluetoothd does where hallway depends on it: discovery sessions per client
  (dropped when the client leaves the bus), nothing reported unless someone is discovering,
  per-device merging of manufacturer and service data, and, unless a client's discovery
  filter asks for ``DuplicateData``, a repeat reported only when something changed (RSSI by
  8 dB or more).
* With ``phone_adapter`` (e.g. ``hci1``) a second adapter stands for a phone's radio: while a
  client discovers on it, it hears every advertisement registered on the first adapter (at
  ``phone_rssi``), and a client may ``Connect`` to that device, find the registered GATT
  application's services and characteristics under it, and ``WriteValue`` to them: the fake
  hands each write to the application as BlueZ would hand a central's write, with a central
  device (the phone adapter's address) connected on the first adapter. So a real bleak client
  (``hallway checkin``) talks to the daemon's real peripheral through it.
* ``Air`` links several ``FakeBlueZ`` (one per scanner, each on its own bus, as each scanner is
  its own machine): every advertisement registered on one through
  ``LEAdvertisingManager1.RegisterAdvertisement`` is heard by the others, a few times a
  second, at the level their positions, the beacon's stated power, the receiver's offset and
  some noise give; so scanner daemons advertising reference beacons hear each other.
* ``FakeBlueZProcess`` runs ``python tests/support/fakebluez.py`` as a child process (so it
  can be killed like bluetoothd) and drives it over a Unix socket, one JSON object per line.

Control commands (``{"cmd": NAME, ...}``, each answered with one JSON line): ``stats``; ``adv``
(``ads``: SPEC §2 objects, optional ``paired``); ``play`` (``path`` of a SPEC §2 trace, ``rate``
per second or null for the trace's own timing, ``speed``, ``repeat``); ``steady`` (``devices``,
``rate``, ``duration_s``, ``rotate_s``, ``seed``); ``garbage`` (``count``, ``rate``, ``seed``)
(these three take ``"stamp": true``, see ``FakeBlueZ.play``); ``flood`` (``count``, ``rate``,
``kind`` "random" or "rpa", ``seed``: BLE spam, a new address every advertisement, see
``flood_stream``); ``stop_jobs``; ``central`` (a simulated central connects and writes to a
registered GATT application: ``address``, ``values`` (hex), ``type`` ``request``|``command``,
``rate``, ``reconnect``; answers the tally of replies); ``hostile`` (``centrals`` attackers
writing ``rate`` bad check-ins a second in all for ``duration_s``: wrong length, version,
unknown identifiers; answers the tally); ``remove_adapter``; ``add_adapter``; ``delay``
(``method``, ``seconds``: carry out and answer that method late, like a slow bluetoothd);
``power`` (``on``); ``freeze`` (hold calls unanswered and report nothing, like a stalled
bluetoothd); ``thaw`` (answer the held calls in order); ``quit``. ``play``, ``steady`` and
``garbage`` run in the background unless ``"wait": true``. Emitters are paced: a round trip to
the bus every few dozen messages keeps dbus-fast's send buffer from filling (which would drop
the connection).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from dbus_fast import BusType, Message, MessageType, RequestNameReply, Variant
from dbus_fast.aio import MessageBus

from hallway.models import Advertisement
from hallway.trace import advertisement_from_obj, read_trace

BLUEZ = "org.bluez"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
OM_IFACE = "org.freedesktop.DBus.ObjectManager"
INTROSPECT_IFACE = "org.freedesktop.DBus.Introspectable"
_DBUS = "org.freedesktop.DBus"
_RSSI_THRESHOLD_DB = 8  # bluetoothd reports an RSSI change only past this, unless duplicates
STAMP_COMPANY = 0xFFFE  # manufacturer data key of the send-time stamp (see FakeBlueZ.play)
_FLUSH_EVERY = 64  # messages between round trips to the bus (backpressure)
ADV_MANAGER_IFACE = "org.bluez.LEAdvertisingManager1"
GATT_MANAGER_IFACE = "org.bluez.GattManager1"
ADVERTISEMENT_IFACE = "org.bluez.LEAdvertisement1"
CHARACTERISTIC_IFACE = "org.bluez.GattCharacteristic1"
CHECKIN_CHARACTERISTIC = "48570001-5c7a-4e0b-9b8e-3f1d2a6c9e01"
CHECKIN_SERVICE = "48570000-5c7a-4e0b-9b8e-3f1d2a6c9e01"
GATT_SERVICE_IFACE = "org.bluez.GattService1"
_ADV_INSTANCES = 5  # advertising sets the fake controller offers
_KNOWN_FILTERS = {"UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable",
                  "Pattern"}


# --------------------------------------------------------------------------- private bus ----

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


class PrivateBus:
    """A ``dbus-daemon`` of our own, system-bus style, on ``<directory>/system_bus_socket``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.socket_path = self.directory / "system_bus_socket"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The D-Bus address (stable across restarts), for ``DBUS_SYSTEM_BUS_ADDRESS``."""
        return f"unix:path={self.socket_path}"

    @property
    def pid(self) -> int | None:
        """The daemon's PID while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self, *, timeout_s: float = 10.0) -> str:
        """Start the daemon and wait until it listens; return its address."""
        if self._proc is not None:
            raise RuntimeError("dbus-daemon already started")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "bus.conf"
        config.write_text(_BUS_CONFIG.format(socket=escape(str(self.socket_path))),
                          encoding="utf-8")
        with (self.directory / "dbus-daemon.log").open("ab") as errors:
            proc = subprocess.Popen(
                ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address"],
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=errors,
            )
        self._proc = proc
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        line = proc.stdout.readline() if ready else b""
        if not line.startswith(b"unix:"):
            self.stop()
            raise RuntimeError("dbus-daemon did not start")
        return self.address

    def stop(self, *, timeout_s: float = 5.0) -> None:
        """Stop the daemon (SIGTERM by PID, SIGKILL if it lingers); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        if proc.stdout is not None:
            proc.stdout.close()

    def restart(self) -> str:
        """Stop and start again at the same address."""
        self.stop()
        return self.start()

    def __enter__(self) -> PrivateBus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------- the fake BlueZ ----

def device_path(adapter: str, address: str) -> str:
    """BlueZ's object path of a device: ``/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF``."""
    return f"/org/bluez/{adapter}/dev_{address.upper().replace(':', '_')}"


@dataclass(slots=True)
class _Device:
    """What bluetoothd remembers of one address."""

    address: str
    address_type: str
    rssi: int
    tx_power: int | None
    name: str | None
    uuids: list[str]
    manufacturer_data: dict[int, bytes]
    service_data: dict[str, bytes]
    paired: bool = False
    connected: bool = False  # a central connected to us (see FakeBlueZ.central_write)

    def props(self, adapter_path: str) -> dict[str, Variant]:
        alias = self.name if self.name else self.address.replace(":", "-")
        props = {
            "Address": Variant("s", self.address),
            "AddressType": Variant("s", self.address_type),
            "Alias": Variant("s", alias),
            "Adapter": Variant("o", adapter_path),
            "Paired": Variant("b", self.paired),
            "Bonded": Variant("b", self.paired),
            "Trusted": Variant("b", self.paired),
            "Blocked": Variant("b", False),
            "LegacyPairing": Variant("b", False),
            "Connected": Variant("b", self.connected),
            "ServicesResolved": Variant("b", False),
            "RSSI": Variant("n", self.rssi),
            "UUIDs": Variant("as", list(self.uuids)),
        }
        if self.name is not None:
            props["Name"] = Variant("s", self.name)
        if self.tx_power is not None:
            props["TxPower"] = Variant("n", self.tx_power)
        if self.manufacturer_data:
            props["ManufacturerData"] = _mfr_variant(self.manufacturer_data)
        if self.service_data:
            props["ServiceData"] = _svc_variant(self.service_data)
        return props

    def update(self, adv: Advertisement, *, duplicates: bool) -> dict[str, Variant]:
        """Merge one advertisement; return the properties bluetoothd would signal."""
        changed: dict[str, Variant] = {}
        if duplicates or abs(adv.rssi - self.rssi) >= _RSSI_THRESHOLD_DB:
            self.rssi = adv.rssi
            changed["RSSI"] = Variant("n", adv.rssi)
        if adv.tx_power is not None and (duplicates or adv.tx_power != self.tx_power):
            self.tx_power = adv.tx_power
            changed["TxPower"] = Variant("n", adv.tx_power)
        if adv.local_name is not None and adv.local_name != self.name:
            self.name = adv.local_name
            changed["Name"] = Variant("s", adv.local_name)
            changed["Alias"] = Variant("s", adv.local_name)
        new_uuids = [u for u in adv.service_uuids if u not in self.uuids]
        if new_uuids:
            self.uuids.extend(new_uuids)
            changed["UUIDs"] = Variant("as", list(self.uuids))
        if adv.manufacturer_data and (duplicates or any(
                self.manufacturer_data.get(k) != v for k, v in adv.manufacturer_data.items())):
            self.manufacturer_data.update(adv.manufacturer_data)
            changed["ManufacturerData"] = _mfr_variant(self.manufacturer_data)
        if adv.service_data and (duplicates or any(
                self.service_data.get(k) != v for k, v in adv.service_data.items())):
            self.service_data.update(adv.service_data)
            changed["ServiceData"] = _svc_variant(self.service_data)
        return changed


def _mfr_variant(data: dict[int, bytes]) -> Variant:
    return Variant("a{qv}", {k: Variant("ay", v) for k, v in data.items()})


def _svc_variant(data: dict[str, bytes]) -> Variant:
    return Variant("a{sv}", {k: Variant("ay", v) for k, v in data.items()})


class _DBusFault(Exception):
    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name
        self.text = text


class FakeBlueZ:
    """``org.bluez`` served from this event loop; see the module docstring for what it mimics."""

    def __init__(self, *, adapter: str = "hci0", adapter_address: str = "00:1A:7D:DA:71:13",
                 with_adapter: bool = True, powered: bool = True, advertising: bool = True,
                 phone_adapter: str | None = None) -> None:
        self.adapter = adapter
        self._phone = _PhoneAdapter(self, phone_adapter) if phone_adapter else None
        self._advertising = advertising  # False: a controller without the peripheral role
        self.adapter_path = f"/org/bluez/{adapter}"
        self._adapter_address = adapter_address
        self._has_adapter = with_adapter
        self._powered = powered
        self._bus: MessageBus | None = None
        self._owns_name = False
        self._devices: dict[str, _Device] = {}
        self._sessions: set[str] = set()
        self._filters: dict[str, dict[str, Any]] = {}
        self._frozen = False
        self._wedge: str | None = None  # see wedge()
        self._wedge_clears = "power"
        self._rfkill_blocked = False
        self._held: list[Message] = []
        self._delays: dict[str, float] = {}
        self._counts = dict.fromkeys(
            ("reported", "signals", "missed", "suppressed", "removed", "removed_paired",
             "start_discovery", "stop_discovery", "set_filter"), 0)
        self._since_flush = 0
        self._methods: dict[tuple[str | None, str | None], Callable[[Message], Message]] = {
            (OM_IFACE, "GetManagedObjects"): self._get_managed_objects,
            (PROPS_IFACE, "Get"): self._props_get,
            (PROPS_IFACE, "GetAll"): self._props_get_all,
            (PROPS_IFACE, "Set"): self._props_set,
            (ADAPTER_IFACE, "SetDiscoveryFilter"): self._set_discovery_filter,
            (ADAPTER_IFACE, "StartDiscovery"): self._start_discovery,
            (ADAPTER_IFACE, "StopDiscovery"): self._stop_discovery,
            (ADAPTER_IFACE, "RemoveDevice"): self._remove_device,
            (ADAPTER_IFACE, "GetDiscoveryFilters"): self._get_discovery_filters,
            (DEVICE_IFACE, "Disconnect"): self._device_disconnect,
            (ADV_MANAGER_IFACE, "UnregisterAdvertisement"): self._unregister_advertisement,
            (GATT_MANAGER_IFACE, "UnregisterApplication"): self._unregister_application,
        }
        # Methods answered after calls of our own to the caller (BlueZ reads the objects).
        self._async_methods: dict[tuple[str | None, str | None],
                                  Callable[[Message], Awaitable[Message]]] = {
            (ADV_MANAGER_IFACE, "RegisterAdvertisement"): self._register_advertisement,
            (GATT_MANAGER_IFACE, "RegisterApplication"): self._register_application,
        }
        self._adverts: dict[tuple[str, str], dict[str, Any]] = {}  # (owner, path) -> props
        self._apps: dict[tuple[str, str], dict[str, tuple[str, list[str]]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._central_counts: dict[str, int] = {}

    # -- lifecycle ----------------------------------------------------------------------
    async def connect(self, bus_address: str | None = None) -> None:
        """Join the bus, take the name ``org.bluez`` and announce the adapter."""
        if bus_address is None:
            bus = MessageBus(bus_type=BusType.SYSTEM)
        else:
            bus = MessageBus(bus_address=bus_address)
        await bus.connect()
        _roomy_send_buffer(bus)
        bus.add_message_handler(self._on_message)
        reply = await bus.call(Message(
            destination=_DBUS, path="/org/freedesktop/DBus", interface=_DBUS, member="AddMatch",
            signature="s", body=["type='signal',sender='org.freedesktop.DBus',"
                                 "interface='org.freedesktop.DBus',member='NameOwnerChanged'"]))
        _check(reply)
        self._bus = bus
        # Queued behind a running BlueZ, this one takes over (NameAcquired) when that one goes.
        if await bus.request_name(BLUEZ) is RequestNameReply.PRIMARY_OWNER:
            self._name_acquired()
        await self.flush()

    def _name_acquired(self) -> None:
        if self._owns_name:
            return
        self._owns_name = True
        if self._has_adapter:
            self._send_interfaces_added(self.adapter_path, self._adapter_interfaces())
        if self._phone is not None:
            self._send_interfaces_added(self._phone.path, self._phone.adapter_interfaces())

    async def close(self) -> None:
        """Leave the bus (the name goes away, as when bluetoothd exits)."""
        bus, self._bus = self._bus, None
        if bus is not None and bus.connected:
            bus.disconnect()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    async def wait_disconnected(self) -> None:
        """Return when the bus connection is gone."""
        if self._bus is not None:
            with contextlib.suppress(Exception):
                await self._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    # -- control ------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counts and state, for tests and benchmarks."""
        return {
            **self._counts,
            "devices": len(self._devices),
            "paired_devices": sum(1 for d in self._devices.values() if d.paired),
            "discovering": self._discovering(),
            "sessions": len(self._sessions),
            "duplicates": self._duplicates(),
            "filters": [_jsonable(f) for f in self._filters.values()],
            "adapter": self._has_adapter,
            "powered": self._powered,
            "frozen": self._frozen,
            "owns_name": self._owns_name,
            "advertisements": [_jsonable({k: v.value for k, v in props.items()})
                               for props in self._adverts.values()],
            "applications": [{"characteristics": {u: f for u, (_p, f) in chars.items()}}
                             for chars in self._apps.values()],
            "central": dict(self._central_counts),
            "wedge": self._wedge,
            "adapter_name": self.adapter,
            "rfkill_blocked": self._rfkill_blocked,
        }

    def freeze(self) -> None:
        """Hold method calls unanswered and report nothing (a stalled bluetoothd)."""
        self._frozen = True

    def delay(self, method: str, seconds: float) -> None:
        """Carry out and answer calls of ``method`` only after ``seconds`` (0: at once again)."""
        self._delays[method] = seconds

    def thaw(self) -> None:
        """Answer the calls held while frozen, in order, and report again."""
        self._frozen = False
        held, self._held = self._held, []
        for msg in held:
            self._send(self._answer(msg))

    def remove_adapter(self) -> None:
        """Unplug the adapter: its devices and itself disappear, discovery sessions end."""
        if not self._has_adapter:
            return
        for path in list(self._devices):
            self._drop_device(path)
        for owner, path in list(self._adverts):  # bluetoothd releases them with the adapter
            del self._adverts[(owner, path)]
            self._send(Message(destination=owner, path=path, interface=ADVERTISEMENT_IFACE,
                               member="Release"))
        self._apps.clear()
        self._has_adapter = False
        self._sessions.clear()
        self._filters.clear()
        self._send(Message.new_signal(self.adapter_path, OM_IFACE, "InterfacesRemoved", "oas",
                                      [self.adapter_path, [ADAPTER_IFACE, PROPS_IFACE]]))

    def add_adapter(self) -> None:
        """Plug the adapter (back) in, powered and not discovering."""
        if self._has_adapter:
            return
        self._has_adapter = True
        self._powered = True
        self._send_interfaces_added(self.adapter_path, self._adapter_interfaces())

    def set_powered(self, on: bool) -> None:
        """Power the adapter on or off; powering off ends every discovery session."""
        if not self._has_adapter or on == self._powered:
            return
        if on and self._rfkill_blocked:
            return  # a soft-blocked radio stays off until unblocked
        was_discovering = self._discovering()
        self._powered = on
        if not on and self._wedge_clears == "power":
            self._wedge = None  # powering the controller off is what clears this wedge
        changed: dict[str, Variant] = {"Powered": Variant("b", on)}
        if not on:
            self._sessions.clear()
            if was_discovering:
                changed["Discovering"] = Variant("b", False)
        self._send_props_changed(self.adapter_path, ADAPTER_IFACE, changed)

    # -- failure modes of real controllers (for the recovery ladder) --------------------
    def wedge(self, mode: str | None, *, clears: str = "power") -> None:
        """Make the adapter misbehave until ``clears`` happens ("power": it is powered off;
        "reset": an rfkill block, see ``rfkill_event``). ``mode`` "silent": discovery starts
        fine but nothing is ever reported (a stuck controller); "start-fails": StartDiscovery
        fails with ``org.bluez.Error.Failed``; None: clear."""
        if mode not in (None, "silent", "start-fails") or clears not in ("power", "reset"):
            raise ValueError(f"unknown wedge {mode!r} / clears {clears!r}")
        self._wedge = mode
        self._wedge_clears = clears

    def rename_adapter(self, name: str) -> None:
        """The adapter disappears and returns under another name (hci0 -> hci1), as after a
        USB reset or a replug: its devices and discovery sessions are gone."""
        self.remove_adapter()
        self.adapter = name
        self.adapter_path = f"/org/bluez/{name}"
        self.add_adapter()

    def rfkill_event(self, soft_blocked: bool) -> None:
        """The kernel's rfkill soft block (True) or unblock (False) of our controller: blocked,
        it powers off and stays off, and any wedge is cleared (the controller was reset)."""
        if soft_blocked:
            self._wedge = None
            self.set_powered(False)
            self._rfkill_blocked = True
        elif self._rfkill_blocked:
            self._rfkill_blocked = False
            self.set_powered(True)

    def report(self, adv: Advertisement, *, paired: bool = False) -> bool:
        """Receive one advertisement over the air; False when nobody is discovering."""
        if (self._frozen or self._bus is None or not self._discovering()
                or self._wedge == "silent"):
            self._counts["missed"] += 1
            return False
        path = device_path(self.adapter, adv.address)
        device = self._devices.get(path)
        self._counts["reported"] += 1
        if device is None:
            device = _Device(
                address=adv.address.upper(), address_type=adv.address_type, rssi=adv.rssi,
                tx_power=adv.tx_power, name=adv.local_name, uuids=list(adv.service_uuids),
                manufacturer_data=dict(adv.manufacturer_data),
                service_data=dict(adv.service_data), paired=paired)
            self._devices[path] = device
            self._send_interfaces_added(path, {DEVICE_IFACE: device.props(self.adapter_path),
                                               PROPS_IFACE: {}, INTROSPECT_IFACE: {}})
            return True
        changed = device.update(adv, duplicates=self._duplicates())
        if changed:
            self._send_props_changed(path, DEVICE_IFACE, changed)
        else:
            self._counts["suppressed"] += 1
        return True

    async def flush(self) -> None:
        """Wait until the bus has taken everything sent so far (a round trip)."""
        self._since_flush = 0
        if self._bus is None or not self._bus.connected:
            return
        await self._bus.call(Message(destination=_DBUS, path="/org/freedesktop/DBus",
                                     interface=_DBUS, member="GetId"))

    async def play(self, ads: Iterable[Advertisement], *, rate: float | None = None,
                   speed: float = 1.0, paired: bool = False, stamp: bool = False) -> int:
        """Report ``ads`` paced at ``rate`` per second (None: their own ``ts`` / ``speed``).

        With ``stamp``, each carries the moment it was sent (``time.time()``, a little-endian
        double) as manufacturer data under company ``STAMP_COMPANY``, for latency figures.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        ts0: float | None = None
        count = 0
        for count, item in enumerate(ads, start=1):
            adv = item
            if rate is not None:
                due = start + (count - 1) / rate
            else:
                if ts0 is None:
                    ts0 = adv.ts
                due = start + (adv.ts - ts0) / speed
            if due - loop.time() > 0.002:
                await self.flush()
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            if stamp:
                adv = adv._replace(manufacturer_data={
                    **adv.manufacturer_data, STAMP_COMPANY: struct.pack("<d", time.time())})
            self.report(adv, paired=paired)
            if self._since_flush >= _FLUSH_EVERY:
                await self.flush()
        await self.flush()
        return count

    # -- D-Bus plumbing -----------------------------------------------------------------
    def _discovering(self) -> bool:
        return self._has_adapter and self._powered and bool(self._sessions)

    def _duplicates(self) -> bool:
        return any(bool(f.get("DuplicateData", True)) for s, f in self._filters.items()
                   if s in self._sessions)

    def _send(self, msg: Message) -> None:
        if self._bus is None or not self._bus.connected:
            return
        self._bus.send(msg)
        self._counts["signals"] += 1
        self._since_flush += 1

    def _send_interfaces_added(self, path: str, interfaces: dict[str, dict[str, Variant]]
                               ) -> None:
        self._send(Message.new_signal("/", OM_IFACE, "InterfacesAdded", "oa{sa{sv}}",
                                      [path, interfaces]))

    def _send_props_changed(self, path: str, interface: str, changed: dict[str, Variant]
                            ) -> None:
        self._send(Message.new_signal(path, PROPS_IFACE, "PropertiesChanged", "sa{sv}as",
                                      [interface, changed, []]))

    def _adapter_props(self) -> dict[str, Variant]:
        return {
            "Address": Variant("s", self._adapter_address),
            "AddressType": Variant("s", "public"),
            "Name": Variant("s", "hallway-fake"),
            "Alias": Variant("s", "hallway-fake"),
            "Class": Variant("u", 0),
            "Powered": Variant("b", self._powered),
            "PowerState": Variant("s", "on" if self._powered else "off"),
            "Discoverable": Variant("b", False),
            "Pairable": Variant("b", False),
            "PairableTimeout": Variant("u", 0),
            "DiscoverableTimeout": Variant("u", 180),
            "Discovering": Variant("b", self._discovering()),
            "UUIDs": Variant("as", []),
            "Modalias": Variant("s", "usb:v1D6Bp0246d0548"),
            "Roles": Variant("as", ["central", "peripheral"]),
            "ExperimentalFeatures": Variant("as", []),
        }

    def _adapter_interfaces(self) -> dict[str, dict[str, Variant]]:
        interfaces = {ADAPTER_IFACE: self._adapter_props(), PROPS_IFACE: {},
                      INTROSPECT_IFACE: {}}
        if self._advertising:
            interfaces.update({ADV_MANAGER_IFACE: self._adv_manager_props(),
                               GATT_MANAGER_IFACE: {}})
        return interfaces

    def _drop_device(self, path: str) -> None:
        device = self._devices.pop(path)
        self._counts["removed"] += 1
        if device.paired:
            self._counts["removed_paired"] += 1
        self._send(Message.new_signal(path, OM_IFACE, "InterfacesRemoved", "oas",
                                      [path, [DEVICE_IFACE, PROPS_IFACE, INTROSPECT_IFACE]]))

    def _on_message(self, msg: Message) -> Message | bool | None:
        if msg.message_type is MessageType.SIGNAL:
            if msg.sender != _DBUS:
                return None
            if msg.member == "NameOwnerChanged":
                name, _old, new = msg.body
                if name.startswith(":") and not new:
                    self._client_gone(name)
                    self._registrations_gone(name)
                    if self._phone is not None:
                        self._phone.client_gone(name)
            elif msg.member == "NameAcquired" and msg.body[0] == BLUEZ:
                self._name_acquired()
            return None
        if msg.message_type is not MessageType.METHOD_CALL:
            return None
        phone = self._phone
        if phone is not None and (msg.path or "").startswith(phone.path) and not self._frozen:
            answer = phone.handle(msg)
            if answer is not None:
                return answer
        if (msg.interface, msg.member) in self._async_methods and self._advertising:
            if self._frozen:
                self._held.append(msg)
                return True
            task = asyncio.get_running_loop().create_task(self._answer_later(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True
        if (msg.interface, msg.member) not in self._methods:
            return None
        if self._frozen:
            self._held.append(msg)  # answered on thaw(), as a stalled bluetoothd would
            return True
        delay = self._delays.get(msg.member or "")
        if delay:
            asyncio.get_running_loop().call_later(delay, lambda: self._send(self._answer(msg)))
            return True
        return self._answer(msg)

    def _answer(self, msg: Message) -> Message:
        try:
            return self._methods[(msg.interface, msg.member)](msg)
        except _DBusFault as fault:
            return Message.new_error(msg, fault.name, fault.text)

    def _client_gone(self, sender: str) -> None:
        was = self._discovering()
        self._sessions.discard(sender)
        self._filters.pop(sender, None)
        if was and not self._discovering():
            self._send_props_changed(self.adapter_path, ADAPTER_IFACE,
                                     {"Discovering": Variant("b", False)})

    def _object(self, path: str | None) -> dict[str, dict[str, Variant]]:
        if self._has_adapter and path == self.adapter_path:
            if not self._advertising:
                return {ADAPTER_IFACE: self._adapter_props()}
            return {ADAPTER_IFACE: self._adapter_props(),
                    ADV_MANAGER_IFACE: self._adv_manager_props()}
        device = self._devices.get(path or "")
        if device is not None:
            return {DEVICE_IFACE: device.props(self.adapter_path)}
        raise _DBusFault("org.freedesktop.DBus.Error.UnknownObject", f"no object at {path}")

    def _need_adapter(self, msg: Message) -> None:
        if not self._has_adapter or msg.path != self.adapter_path:
            raise _DBusFault("org.freedesktop.DBus.Error.UnknownObject",
                             f"no adapter at {msg.path}")

    def _get_managed_objects(self, msg: Message) -> Message:
        objects: dict[str, dict[str, dict[str, Variant]]] = {}
        if msg.path == "/":
            if self._has_adapter:
                objects[self.adapter_path] = self._adapter_interfaces()
            for path, device in self._devices.items():
                objects[path] = {DEVICE_IFACE: device.props(self.adapter_path), PROPS_IFACE: {},
                                 INTROSPECT_IFACE: {}}
            if self._phone is not None:
                objects.update(self._phone.objects())
        return Message.new_method_return(msg, "a{oa{sa{sv}}}", [objects])

    def _props_get(self, msg: Message) -> Message:
        interface, name = msg.body
        props = self._object(msg.path).get(interface)
        if props is None or name not in props:
            raise _DBusFault("org.freedesktop.DBus.Error.InvalidArgs", "no such property")
        return Message.new_method_return(msg, "v", [props[name]])

    def _props_get_all(self, msg: Message) -> Message:
        props = self._object(msg.path).get(msg.body[0], {})
        return Message.new_method_return(msg, "a{sv}", [props])

    def _props_set(self, msg: Message) -> Message:
        interface, name, value = msg.body
        self._object(msg.path)
        if msg.path != self.adapter_path or interface != ADAPTER_IFACE or name != "Powered":
            raise _DBusFault("org.freedesktop.DBus.Error.PropertyReadOnly", "read-only")
        self.set_powered(bool(value.value))
        return Message.new_method_return(msg)

    def _set_discovery_filter(self, msg: Message) -> Message:
        self._need_adapter(msg)
        self._counts["set_filter"] += 1
        raw: dict[str, Variant] = msg.body[0]
        unknown = set(raw) - _KNOWN_FILTERS
        if unknown:
            raise _DBusFault("org.bluez.Error.InvalidArguments", "Invalid arguments in method call")
        values = {k: v.value for k, v in raw.items()}
        if values.get("Transport", "auto") not in ("auto", "le", "bredr"):
            raise _DBusFault("org.bluez.Error.InvalidArguments", "Invalid arguments in method call")
        sender = msg.sender or ""
        if values:
            self._filters[sender] = values
        else:
            self._filters.pop(sender, None)
        return Message.new_method_return(msg)

    def _start_discovery(self, msg: Message) -> Message:
        self._need_adapter(msg)
        self._counts["start_discovery"] += 1
        if not self._powered:
            raise _DBusFault("org.bluez.Error.NotReady", "Resource Not Ready")
        if self._wedge == "start-fails":
            raise _DBusFault("org.bluez.Error.Failed", "Input/output error")
        sender = msg.sender or ""
        if sender in self._sessions:
            raise _DBusFault("org.bluez.Error.InProgress", "Operation already in progress")
        was = self._discovering()
        self._sessions.add(sender)
        if not was:
            self._send_props_changed(self.adapter_path, ADAPTER_IFACE,
                                     {"Discovering": Variant("b", True)})
        return Message.new_method_return(msg)

    def _stop_discovery(self, msg: Message) -> Message:
        self._need_adapter(msg)
        self._counts["stop_discovery"] += 1
        if not self._powered:
            raise _DBusFault("org.bluez.Error.NotReady", "Resource Not Ready")
        sender = msg.sender or ""
        if sender not in self._sessions:
            raise _DBusFault("org.bluez.Error.Failed", "No discovery started")
        self._client_gone(sender)
        return Message.new_method_return(msg)

    def _remove_device(self, msg: Message) -> Message:
        self._need_adapter(msg)
        path = msg.body[0]
        if path not in self._devices:
            raise _DBusFault("org.bluez.Error.DoesNotExist", "Does Not Exist")
        self._drop_device(path)
        return Message.new_method_return(msg)

    def _get_discovery_filters(self, msg: Message) -> Message:
        self._need_adapter(msg)
        return Message.new_method_return(msg, "as", [sorted(_KNOWN_FILTERS)])


    # -- the peripheral role: advertisements, GATT applications, simulated centrals ---------
    def _adv_manager_props(self) -> dict[str, Variant]:
        return {
            "ActiveInstances": Variant("y", len(self._adverts)),
            "SupportedInstances": Variant("y", max(0, _ADV_INSTANCES - len(self._adverts))),
            "SupportedIncludes": Variant("as", ["tx-power", "appearance", "local-name"]),
        }

    async def _answer_later(self, msg: Message) -> None:
        try:
            reply = await self._async_methods[(msg.interface, msg.member)](msg)
        except _DBusFault as fault:
            reply = Message.new_error(msg, fault.name, fault.text)
        except Exception as exc:
            reply = Message.new_error(msg, "org.bluez.Error.Failed", str(exc))
        self._send(reply)

    async def _call_client(self, message: Message) -> Message:
        assert self._bus is not None
        async with asyncio.timeout(5.0):
            reply: Message = await self._bus.call(message)
        return reply

    async def _register_advertisement(self, msg: Message) -> Message:
        self._need_adapter(msg)
        owner, path = msg.sender or "", msg.body[0]
        if (owner, path) in self._adverts:
            raise _DBusFault("org.bluez.Error.AlreadyExists", "Already Exists")
        if len(self._adverts) >= _ADV_INSTANCES:
            raise _DBusFault("org.bluez.Error.NotPermitted", "Maximum advertisements reached")
        reply = await self._call_client(Message(
            destination=owner, path=path, interface=PROPS_IFACE, member="GetAll",
            signature="s", body=[ADVERTISEMENT_IFACE]))
        if reply.message_type is MessageType.ERROR:
            raise _DBusFault("org.bluez.Error.Failed", "Failed to parse advertisement")
        props: dict[str, Variant] = reply.body[0]
        kind = props.get("Type")
        if kind is None or kind.value not in ("broadcast", "peripheral"):
            raise _DBusFault("org.bluez.Error.InvalidArguments", "Invalid arguments")
        self._adverts[(owner, path)] = props
        self._counts["advertisements_registered"] = (
            self._counts.get("advertisements_registered", 0) + 1)
        return Message.new_method_return(msg)

    def _unregister_advertisement(self, msg: Message) -> Message:
        self._need_adapter(msg)
        if self._adverts.pop((msg.sender or "", msg.body[0]), None) is None:
            raise _DBusFault("org.bluez.Error.DoesNotExist", "Does Not Exist")
        return Message.new_method_return(msg)

    async def _register_application(self, msg: Message) -> Message:
        self._need_adapter(msg)
        owner, root = msg.sender or "", msg.body[0]
        if (owner, root) in self._apps:
            raise _DBusFault("org.bluez.Error.AlreadyExists", "Already Exists")
        reply = await self._call_client(Message(
            destination=owner, path=root, interface=OM_IFACE, member="GetManagedObjects"))
        if reply.message_type is MessageType.ERROR:
            raise _DBusFault("org.bluez.Error.Failed", "Failed to read the application")
        chars: dict[str, tuple[str, list[str]]] = {}
        services = set()
        for path, interfaces in reply.body[0].items():
            if "org.bluez.GattService1" in interfaces:
                services.add(path)
            props = interfaces.get("org.bluez.GattCharacteristic1")
            if props is not None:
                chars[str(props["UUID"].value).lower()] = (path, list(props["Flags"].value))
        if not services or any(p.rsplit("/", 1)[0] not in services for p, _f in chars.values()):
            raise _DBusFault("org.bluez.Error.Failed", "Failed to create entry in database")
        self._apps[(owner, root)] = chars
        self._counts["applications_registered"] = (
            self._counts.get("applications_registered", 0) + 1)
        return Message.new_method_return(msg)

    def _unregister_application(self, msg: Message) -> Message:
        self._need_adapter(msg)
        if self._apps.pop((msg.sender or "", msg.body[0]), None) is None:
            raise _DBusFault("org.bluez.Error.DoesNotExist", "Does Not Exist")
        return Message.new_method_return(msg)

    def _registrations_gone(self, owner: str) -> None:
        for key in [k for k in self._adverts if k[0] == owner]:
            del self._adverts[key]
        for key in [k for k in self._apps if k[0] == owner]:
            del self._apps[key]

    def _device_disconnect(self, msg: Message) -> Message:
        device = self._devices.get(msg.path or "")
        if device is None:
            raise _DBusFault("org.freedesktop.DBus.Error.UnknownObject", "no such device")
        if not device.connected:
            raise _DBusFault("org.bluez.Error.NotConnected", "Not Connected")
        self._set_connected(msg.path or "", device, False)
        self._tally("disconnected_by_peripheral")
        if self._phone is not None:
            self._phone.link_lost(device.address)
        return Message.new_method_return(msg)

    def _set_connected(self, path: str, device: _Device, on: bool) -> None:
        device.connected = on
        self._send_props_changed(path, DEVICE_IFACE, {"Connected": Variant("b", on)})

    def _tally(self, key: str, count: int = 1) -> None:
        self._central_counts[key] = self._central_counts.get(key, 0) + count

    def _connect_central(self, address: str) -> str:
        """A central at ``address`` connects to us: its device object, Connected."""
        path = device_path(self.adapter, address)
        device = self._devices.get(path)
        if device is None:
            device = _Device(address=address.upper(), address_type="random", rssi=-60,
                             tx_power=None, name=None, uuids=[], manufacturer_data={},
                             service_data={}, connected=True)
            self._devices[path] = device
            self._send_interfaces_added(path, {DEVICE_IFACE: device.props(self.adapter_path),
                                               PROPS_IFACE: {}, INTROSPECT_IFACE: {}})
        elif not device.connected:
            self._set_connected(path, device, True)
        self._tally("connections")
        return path

    async def central_write(self, address: str, values: Sequence[bytes], *,
                            uuid: str = CHECKIN_CHARACTERISTIC, write_type: str = "request",
                            rate: float | None = None, reconnect: bool = False
                            ) -> dict[str, int]:
        """A central connects and writes ``values`` to the characteristic ``uuid`` of a
        registered application, as BlueZ hands a write to that application; returns the
        replies tallied by error name (``ok`` for success). A central disconnected by the
        peripheral stops (``not_connected``) unless ``reconnect``."""
        tally: dict[str, int] = {}
        target = next(((owner, chars[uuid]) for (owner, _root), chars in self._apps.items()
                       if uuid in chars), None)
        if target is None or not self._has_adapter:
            tally["no_service"] = len(values)
            self._merge(tally)
            return tally
        owner, (char_path, _flags) = target
        path = self._connect_central(address)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for number, value in enumerate(values):
            if rate is not None:
                delay = start + number / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            device = self._devices.get(path)
            if device is None or not device.connected:
                if not reconnect:
                    tally["not_connected"] = tally.get("not_connected", 0) + len(values) - number
                    break
                path = self._connect_central(address)
            options = {"device": Variant("o", path), "mtu": Variant("q", 185),
                       "link": Variant("s", "LE"), "type": Variant("s", write_type)}
            try:
                reply = await self._call_client(Message(
                    destination=owner, path=char_path, interface=CHARACTERISTIC_IFACE,
                    member="WriteValue", signature="aya{sv}", body=[value, options]))
                key = "ok" if reply.message_type is MessageType.METHOD_RETURN else str(
                    reply.error_name)
            except (TimeoutError, OSError, RuntimeError):
                key = "no_reply"
            tally[key] = tally.get(key, 0) + 1
        device = self._devices.get(path)
        if device is not None and device.connected:
            self._set_connected(path, device, False)
        self._merge(tally)
        return tally

    async def forward_write(self, central_address: str, uuid: str, value: bytes,
                            write_type: str) -> Message | str:
        """A write from a connected central to the characteristic ``uuid`` of a registered
        application: the application's reply, or why it could not be delivered."""
        target = next(((owner, chars[uuid]) for (owner, _root), chars in self._apps.items()
                       if uuid in chars), None)
        if target is None:
            return "org.bluez.Error.Failed"
        owner, (char_path, _flags) = target
        path = device_path(self.adapter, central_address)
        device = self._devices.get(path)
        if device is None or not device.connected:
            return "org.bluez.Error.NotConnected"
        options = {"device": Variant("o", path), "mtu": Variant("q", 185),
                   "link": Variant("s", "LE"), "type": Variant("s", write_type)}
        try:
            return await self._call_client(Message(
                destination=owner, path=char_path, interface=CHARACTERISTIC_IFACE,
                member="WriteValue", signature="aya{sv}", body=[value, options]))
        except (TimeoutError, OSError, RuntimeError):
            return "org.bluez.Error.Failed"

    def registered_advertisements(self) -> list[dict[str, Any]]:
        """The properties of every registered advertisement (plain values)."""
        return [{k: v.value for k, v in props.items()} for props in self._adverts.values()]

    def application_uuids(self) -> dict[str, list[str]]:
        """Registered GATT services: service UUID -> characteristic UUIDs (one service each)."""
        return {CHECKIN_SERVICE: [u for chars in self._apps.values() for u in chars]}

    def _merge(self, tally: dict[str, int]) -> None:
        for key, count in tally.items():
            self._tally(f"write_{key}", count)

    async def hostile(self, *, centrals: int, rate: float, duration_s: float, seed: int = 1
                      ) -> dict[str, int]:
        """``centrals`` attackers writing ``rate`` bad check-ins a second in all (each a third
        wrong length, wrong version, or a well-formed unknown identifier), reconnecting when
        disconnected; the replies tallied."""
        rng = random.Random(seed)
        per = max(1, int(rate * duration_s / centrals))

        def bad() -> bytes:
            pick = rng.randrange(3)
            if pick == 0:
                return rng.randbytes(rng.choice((0, 1, 20, 22, 64, 200)))
            if pick == 1:
                return b"HW" + bytes([rng.choice((0, 1, 3, 255))]) + rng.randbytes(18)
            return b"HW\x02" + rng.randbytes(16) + bytes([0xC0, 0xC5])

        jobs = [self.central_write(_random_address(rng), [bad() for _ in range(per)],
                                   rate=rate / centrals, reconnect=True,
                                   write_type=rng.choice(("request", "command")))
                for _ in range(centrals)]
        total: dict[str, int] = {}
        for tally in await asyncio.gather(*jobs):
            for key, count in tally.items():
                total[key] = total.get(key, 0) + count
        return total

# BlueZ as a GATT server: the ATT error for an application's D-Bus error (src/gatt-database.c).
_SERVER_ATT_CODES = {
    "org.bluez.Error.Failed": 0x80, "org.bluez.Error.InProgress": 0xFE,
    "org.bluez.Error.NotPermitted": 0x03, "org.bluez.Error.InvalidValueLength": 0x0D,
    "org.bluez.Error.InvalidOffset": 0x07, "org.bluez.Error.NotAuthorized": 0x08,
    "org.bluez.Error.NotSupported": 0x06,
}
# BlueZ as a GATT client: the D-Bus error a write's caller gets for an ATT error code.
_CLIENT_ATT_ERRORS = {
    0x03: ("org.bluez.Error.NotPermitted", "Write not permitted"),
    0x06: ("org.bluez.Error.NotSupported", "Not Supported"),
    0x07: ("org.bluez.Error.InvalidArguments", "Invalid offset"),
    0x08: ("org.bluez.Error.NotAuthorized", "Not Authorized"),
    0x0D: ("org.bluez.Error.InvalidArguments", "Invalid Length"),
}


class _PhoneAdapter:
    """A second adapter standing for a phone's radio (see the module docstring)."""

    def __init__(self, fake: FakeBlueZ, name: str) -> None:
        self.fake = fake
        self.name = name
        self.path = f"/org/bluez/{name}"
        self.address = "6A:" + ":".join(f"{b:02X}" for b in name.encode()[-5:].rjust(5, b"\0"))
        self.rssi = -60
        self._sessions: set[str] = set()
        self._devices: dict[str, dict[str, Variant]] = {}  # heard peripherals' Device1 props
        self._gatt: dict[str, dict[str, dict[str, Variant]]] = {}  # path -> interfaces
        self._hearing: asyncio.Task[None] | None = None

    def adapter_interfaces(self) -> dict[str, dict[str, Variant]]:
        props = {
            "Address": Variant("s", self.address), "AddressType": Variant("s", "random"),
            "Name": Variant("s", "phone"), "Alias": Variant("s", "phone"),
            "Powered": Variant("b", True), "Discovering": Variant("b", bool(self._sessions)),
            "Roles": Variant("as", ["central"]), "UUIDs": Variant("as", []),
        }
        return {ADAPTER_IFACE: props, PROPS_IFACE: {}, INTROSPECT_IFACE: {}}

    def objects(self) -> dict[str, dict[str, dict[str, Variant]]]:
        out: dict[str, dict[str, dict[str, Variant]]] = {self.path: self.adapter_interfaces()}
        for path, props in self._devices.items():
            out[path] = {DEVICE_IFACE: props, PROPS_IFACE: {}, INTROSPECT_IFACE: {}}
        out.update(self._gatt)
        return out

    def client_gone(self, sender: str) -> None:
        self._sessions.discard(sender)

    def link_lost(self, central_address: str) -> None:
        """The peripheral disconnected the phone: every link of ours is down."""
        if central_address.upper() == self.address:
            for path in list(self._devices):
                self._disconnect(path)

    def handle(self, msg: Message) -> Message | bool | None:
        """Answer a call on the phone adapter or below it (None: not ours after all)."""
        path, iface, member = msg.path or "", msg.interface, msg.member
        try:
            if iface == PROPS_IFACE and member in ("Get", "GetAll"):
                interfaces = self.objects().get(path)
                if interfaces is None:
                    raise _DBusFault("org.freedesktop.DBus.Error.UnknownObject", "no object")
                values = interfaces.get(msg.body[0], {})
                if member == "GetAll":
                    return Message.new_method_return(msg, "a{sv}", [values])
                if msg.body[1] not in values:
                    raise _DBusFault("org.freedesktop.DBus.Error.InvalidArgs", "no property")
                return Message.new_method_return(msg, "v", [values[msg.body[1]]])
            if iface == ADAPTER_IFACE and path == self.path:
                return self._adapter_call(msg)
            if iface == DEVICE_IFACE and path in self._devices:
                return self._device_call(msg)
            if iface == CHARACTERISTIC_IFACE and path in self._gatt and member == "WriteValue":
                task = asyncio.get_running_loop().create_task(self._write(msg))
                self.fake._tasks.add(task)
                task.add_done_callback(self.fake._tasks.discard)
                return True
            if iface == CHARACTERISTIC_IFACE and path in self._gatt:
                raise _DBusFault("org.bluez.Error.NotPermitted", "Read not permitted")
        except _DBusFault as fault:
            return Message.new_error(msg, fault.name, fault.text)
        return None

    def _adapter_call(self, msg: Message) -> Message:
        member, sender = msg.member, msg.sender or ""
        if member in ("SetDiscoveryFilter", "RemoveDevice"):
            return Message.new_method_return(msg)
        if member == "GetDiscoveryFilters":
            return Message.new_method_return(msg, "as", [sorted(_KNOWN_FILTERS)])
        if member == "StartDiscovery":
            if sender in self._sessions:
                raise _DBusFault("org.bluez.Error.InProgress", "Operation already in progress")
            self._sessions.add(sender)
            self.fake._send_props_changed(self.path, ADAPTER_IFACE,
                                          {"Discovering": Variant("b", True)})
            if self._hearing is None or self._hearing.done():
                self._hearing = asyncio.get_running_loop().create_task(self._hear())
            return Message.new_method_return(msg)
        if member == "StopDiscovery":
            if sender not in self._sessions:
                raise _DBusFault("org.bluez.Error.Failed", "No discovery started")
            self._sessions.discard(sender)
            if not self._sessions:
                self.fake._send_props_changed(self.path, ADAPTER_IFACE,
                                              {"Discovering": Variant("b", False)})
            return Message.new_method_return(msg)
        raise _DBusFault("org.bluez.Error.NotSupported", "Not Supported")

    async def _hear(self) -> None:
        """While someone discovers here, hear the first adapter's advertisements (5 a second)."""
        fake = self.fake
        while self._sessions and fake._bus is not None:
            address = fake._adapter_address
            path = device_path(self.name, address)
            for advert in fake.registered_advertisements()[:1]:
                if advert.get("Type") != "peripheral" or not fake._has_adapter:
                    continue
                if path not in self._devices:
                    props = {
                        "Address": Variant("s", address), "AddressType": Variant("s", "public"),
                        "Alias": Variant("s", advert.get("LocalName") or address.replace(
                            ":", "-")),
                        "Adapter": Variant("o", self.path), "Paired": Variant("b", False),
                        "Bonded": Variant("b", False), "Trusted": Variant("b", False),
                        "Blocked": Variant("b", False), "LegacyPairing": Variant("b", False),
                        "Connected": Variant("b", False),
                        "ServicesResolved": Variant("b", False),
                        "RSSI": Variant("n", self.rssi),
                        "UUIDs": Variant("as", list(advert.get("ServiceUUIDs", []))),
                    }
                    if "TxPower" in advert:
                        props["TxPower"] = Variant("n", advert["TxPower"])
                    self._devices[path] = props
                    fake._send_interfaces_added(path, {DEVICE_IFACE: props, PROPS_IFACE: {},
                                                       INTROSPECT_IFACE: {}})
                else:
                    self._devices[path]["RSSI"] = Variant("n", self.rssi)
                    fake._send_props_changed(path, DEVICE_IFACE,
                                             {"RSSI": Variant("n", self.rssi)})
            await asyncio.sleep(0.2)

    def _device_call(self, msg: Message) -> Message:
        path, member = msg.path or "", msg.member
        props = self._devices[path]
        fake = self.fake
        if member == "Connect":
            if props["Connected"].value:
                raise _DBusFault("org.bluez.Error.AlreadyConnected", "Already Connected")
            uuids = fake.application_uuids()
            if not fake.registered_advertisements() or not any(uuids.values()):
                raise _DBusFault("org.bluez.Error.Failed", "le-connection-abort-by-local")
            fake._connect_central(self.address)
            props["Connected"] = Variant("b", True)
            fake._send_props_changed(path, DEVICE_IFACE, {"Connected": Variant("b", True)})
            handle = 0x000A
            for service_uuid, chars in uuids.items():
                service_path = f"{path}/service{handle:04x}"
                service = {GATT_SERVICE_IFACE: {
                    "UUID": Variant("s", service_uuid), "Primary": Variant("b", True),
                    "Device": Variant("o", path), "Includes": Variant("ao", []),
                    "Handle": Variant("q", handle)}, PROPS_IFACE: {}}
                self._gatt[service_path] = service
                fake._send_interfaces_added(service_path, service)
                for char_uuid in chars:
                    handle += 1
                    char_path = f"{service_path}/char{handle:04x}"
                    char = {CHARACTERISTIC_IFACE: {
                        "UUID": Variant("s", char_uuid), "Service": Variant("o", service_path),
                        "Flags": Variant("as", ["write", "write-without-response"]),
                        "MTU": Variant("q", 185), "Handle": Variant("q", handle),
                        "Value": Variant("ay", b"")}, PROPS_IFACE: {}}
                    self._gatt[char_path] = char
                    fake._send_interfaces_added(char_path, char)
                handle += 2
            props["ServicesResolved"] = Variant("b", True)
            fake._send_props_changed(path, DEVICE_IFACE,
                                     {"ServicesResolved": Variant("b", True)})
            fake._tally("phone_connects")
            return Message.new_method_return(msg)
        if member == "Disconnect":
            self._disconnect(path)
            return Message.new_method_return(msg)
        raise _DBusFault("org.bluez.Error.NotSupported", "Not Supported")

    def _disconnect(self, path: str) -> None:
        props = self._devices.get(path)
        if props is None or not props["Connected"].value:
            return
        fake = self.fake
        for gatt_path in sorted((p for p in self._gatt if p.startswith(path + "/")),
                                reverse=True):
            interfaces = self._gatt.pop(gatt_path)
            fake._send(Message.new_signal(gatt_path, OM_IFACE, "InterfacesRemoved", "oas",
                                          [gatt_path, list(interfaces)]))
        props["Connected"] = Variant("b", False)
        props["ServicesResolved"] = Variant("b", False)
        fake._send_props_changed(path, DEVICE_IFACE, {"ServicesResolved": Variant("b", False),
                                                      "Connected": Variant("b", False)})
        central = fake._devices.get(device_path(fake.adapter, self.address))
        if central is not None and central.connected:
            fake._set_connected(device_path(fake.adapter, self.address), central, False)

    async def _write(self, msg: Message) -> None:
        char = self._gatt[msg.path or ""][CHARACTERISTIC_IFACE]
        options: dict[str, Variant] = msg.body[1]
        kind = options.get("type")
        reply = await self.fake.forward_write(
            self.address, str(char["UUID"].value), bytes(msg.body[0]),
            "request" if kind is None else str(kind.value))
        if isinstance(reply, str):
            self.fake._send(Message.new_error(msg, reply, "write failed"))
        elif reply.message_type is MessageType.ERROR:
            # Over the air this is an ATT error: the peripheral's BlueZ makes the code from the
            # application's D-Bus error, the phone's BlueZ makes a D-Bus error from the code.
            code = _SERVER_ATT_CODES.get(str(reply.error_name), 0x0E)
            name, text = _CLIENT_ATT_ERRORS.get(
                code, ("org.bluez.Error.Failed", f"Operation failed with ATT error: 0x{code:02x}"))
            self.fake._send(Message.new_error(msg, name, text))
            self.fake._tally(f"phone_write_att_0x{code:02x}")
        else:
            self.fake._send(Message.new_method_return(msg))
            self.fake._tally("phone_write_ok")


_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SEND_BUFFER = 8 << 20


class _PatientSocket:
    """A socket whose sends answer 0 bytes instead of raising when they would block, so
    dbus-fast's writer waits for the socket to drain rather than dropping the connection."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: Any) -> int:
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0

    def sendmsg(self, *args: Any) -> int:
        try:
            return self._sock.sendmsg(*args)
        except BlockingIOError:
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _roomy_send_buffer(bus: MessageBus) -> None:
    """Keep the fake's connection through a flood: a large send buffer (root may exceed
    wmem_max), and a writer that waits when the socket is full.

    dbus-fast drops its connection when a send would block; under a flood the signals, the
    replies to RemoveDevice and InterfacesRemoved come faster than a loaded dbus-daemon (or a
    slow client behind it) takes them, and the paced emitters cannot see all of those.
    """
    raw = getattr(bus, "_sock", None)
    if not isinstance(raw, socket.socket):
        return
    sock: socket.socket = raw
    for option in (_SO_SNDBUFFORCE, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, _SEND_BUFFER)
            break
    writer = getattr(bus, "_writer", None)
    if writer is not None and getattr(writer, "sock", None) is sock:
        writer.sock = _PatientSocket(sock)


def _check(reply: Message) -> None:
    if reply.message_type is MessageType.ERROR:
        raise RuntimeError(f"D-Bus error {reply.error_name}: {reply.body}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


# ------------------------------------------------------------------------- the air ----

@dataclass
class _Radio:
    fake: FakeBlueZ
    position: tuple[float, float]
    rx_offset_db: float
    tx_error_db: float


class Air:
    """Fake BlueZ radios in one room, hearing each other's advertisements.

    Each scanner of a venue is its own machine with its own bluetoothd, so each ``FakeBlueZ``
    here is on its own bus; ``Air`` links them. ``rate_hz`` times a second, every advertisement
    registered on one of them through ``LEAdvertisingManager1.RegisterAdvertisement`` (read
    from the registering client's ``LEAdvertisement1`` object: manufacturer and service data,
    service UUIDs, local name) is reported by every other one (``FakeBlueZ.report``: only
    while someone discovers there, as bluetoothd does), from the advertiser's adapter address,
    at ``p + tx_error_db(tx) + rx_offset_db(rx) - 10·exponent·log10(d) + noise``. ``p`` is the
    1 m power the frame states (an iBeacon's power byte, else ``TxPower - 41``, else -59),
    ``d`` the distance between the radios' positions, the noise Gaussian (``sigma_db``).
    A radio's ``rx_offset_db`` is its receiver's gain error, which a venue wants to find.
    """

    def __init__(self, *, exponent: float = 2.0, rate_hz: float = 5.0, sigma_db: float = 2.0,
                 seed: int = 1) -> None:
        self.exponent = exponent
        self.rate_hz = rate_hz
        self.sigma_db = sigma_db
        self._rng = random.Random(seed)
        self._radios: list[_Radio] = []
        self.heard = 0  # advertisements reported to a discovering radio

    def add(self, fake: FakeBlueZ, position: tuple[float, float], *, rx_offset_db: float = 0.0,
            tx_error_db: float = 0.0) -> None:
        """Put ``fake`` in the room at ``position`` (metres)."""
        self._radios.append(_Radio(fake, position, rx_offset_db, tx_error_db))

    def rssi(self, tx: _Radio, rx: _Radio, stated_1m_dbm: float) -> int:
        """One reading at ``rx`` of an advertisement from ``tx``."""
        distance = max(0.1, math.dist(tx.position, rx.position))
        level = (stated_1m_dbm + tx.tx_error_db + rx.rx_offset_db
                 - 10.0 * self.exponent * math.log10(distance) + self._rng.gauss(0, self.sigma_db))
        return max(-127, min(20, round(level)))

    async def run(self) -> None:
        """Deliver until cancelled."""
        while True:
            now = time.time()
            for tx in self._radios:
                if not tx.fake._has_adapter or not tx.fake._powered:
                    continue
                for props in tx.fake.registered_advertisements():
                    adv, stated = _advertisement_of(props, tx.fake._adapter_address, now)
                    for rx in self._radios:
                        if rx is not tx and rx.fake.report(
                                adv._replace(rssi=self.rssi(tx, rx, stated),
                                             scanner=rx.fake.adapter)):
                            self.heard += 1
            for radio in self._radios:
                await radio.fake.flush()
            await asyncio.sleep(1.0 / self.rate_hz)


def _plain(value: Any) -> Any:
    return _plain(value.value) if isinstance(value, Variant) else value


def _advertisement_of(props: dict[str, Any], address: str, ts: float
                      ) -> tuple[Advertisement, float]:
    """A registered advertisement as heard over the air, and the 1 m power it states."""
    mfr = {int(k): bytes(_plain(v)) for k, v in (props.get("ManufacturerData") or {}).items()}
    svc = {str(k).lower(): bytes(_plain(v))
           for k, v in (props.get("ServiceData") or {}).items()}
    stated = -59.0
    beacon = mfr.get(0x004C)
    if beacon is not None and len(beacon) == 23 and beacon[:2] == b"\x02\x15":
        stated = float(struct.unpack("b", beacon[22:23])[0])
    elif "TxPower" in props:
        stated = float(props["TxPower"]) - 41.0
    adv = Advertisement(ts=ts, address=address.upper(), address_type="public",
                        local_name=props.get("LocalName"), manufacturer_data=mfr,
                        service_data=svc,
                        service_uuids=tuple(str(u).lower() for u in props.get("ServiceUUIDs", ())))
    return adv, stated


# ------------------------------------------------------------------ synthetic emitters ----

def steady_stream(devices: int, *, seed: int = 1, rotate_s: float | None = None,
                  start_ts: float | None = None, rate: float = 100.0
                  ) -> Iterator[Advertisement]:
    """Endless advertisements from ``devices`` phones in turn (hallway-v1 frames, jittered RSSI).

    With ``rotate_s`` each phone takes a new random address that often, like a real phone.
    """
    rng = random.Random(seed)
    ts = time.time() if start_ts is None else start_ts
    step = 1.0 / rate
    payloads = [b"HW\x01" + rng.randbytes(16) + b"\xc5" for _ in range(devices)]
    base_rssi = [rng.randint(-85, -45) for _ in range(devices)]
    addresses = [_random_address(rng) for _ in range(devices)]
    born = [ts] * devices
    i = 0
    while True:
        k = i % devices
        if rotate_s is not None and ts - born[k] >= rotate_s:
            addresses[k] = _random_address(rng)
            born[k] = ts
        yield Advertisement(ts=ts, address=addresses[k], address_type="random",
                            rssi=base_rssi[k] + rng.randint(-3, 3),
                            manufacturer_data={0xFFFF: payloads[k]})
        ts += step
        i += 1


def garbage_stream(*, seed: int = 1, start_ts: float | None = None, rate: float = 100.0
                   ) -> Iterator[Advertisement]:
    """Endless well-typed nonsense: a new address each time, random fields of random sizes."""
    rng = random.Random(seed)
    ts = time.time() if start_ts is None else start_ts
    step = 1.0 / rate
    while True:
        mfr = {rng.randrange(0x10000): rng.randbytes(rng.randrange(0, 64))
               for _ in range(rng.randrange(0, 4))}
        svc = {_random_uuid(rng): rng.randbytes(rng.randrange(0, 64))
               for _ in range(rng.randrange(0, 3))}
        name = None
        if rng.random() < 0.3:
            name = "".join(chr(rng.choice((rng.randrange(0x20, 0x7F), rng.randrange(0xA0, 0xD7FF))))
                           for _ in range(rng.randrange(0, 40)))
        yield Advertisement(
            ts=ts, address=_random_address(rng), address_type=rng.choice(("random", "public")),
            rssi=rng.randint(-128, 20), tx_power=rng.choice((None, rng.randint(-128, 127))),
            local_name=name, manufacturer_data=mfr, service_data=svc,
            service_uuids=tuple(_random_uuid(rng) for _ in range(rng.randrange(0, 5))))
        ts += step


def flood_stream(*, kind: str = "random", seed: int = 1, start_ts: float | None = None,
                 rate: float = 100.0) -> Iterator[Advertisement]:
    """Endless BLE spam: every advertisement from a new random address, as spam devices send.

    ``kind`` "random": non-resolvable private addresses (top bits 00) carrying an Apple
    proximity-pairing style frame (company 76, ``07 19 ...``, not an iBeacon); "rpa":
    resolvable private addresses (top bits 01) that resolve with no one's IRK, so every one
    costs a resolver a full IRK trial. RSSI is spread over -95..-35 dBm.
    """
    if kind not in ("random", "rpa"):
        raise ValueError(f"unknown flood kind {kind!r}")
    rng = random.Random(seed)
    ts = time.time() if start_ts is None else start_ts
    step = 1.0 / rate
    top = 0x40 if kind == "rpa" else 0x00
    while True:
        raw = bytearray(rng.randbytes(6))
        raw[0] = (raw[0] & 0x3F) | top
        address = ":".join(f"{b:02X}" for b in raw)
        mfr = {76: b"\x07\x19" + rng.randbytes(25)} if kind == "random" else {}
        yield Advertisement(ts=ts, address=address, address_type="random",
                            rssi=rng.randint(-95, -35), manufacturer_data=mfr)
        ts += step


def _random_address(rng: random.Random) -> str:
    octets = rng.randbytes(6)
    return ":".join(f"{b:02X}" for b in octets)


def _random_uuid(rng: random.Random) -> str:
    h = rng.randbytes(16).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# ------------------------------------------------------------------------ the process ----

class _Controller:
    """Runs control commands against a FakeBlueZ."""

    def __init__(self, fake: FakeBlueZ) -> None:
        self.fake = fake
        self.jobs: set[asyncio.Task[Any]] = set()
        self.job_errors = 0
        self.bad_lines = 0
        self.quit = asyncio.Event()

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        fake = self.fake
        if cmd == "stats":
            return {"ok": True, **fake.stats(), "jobs": len(self.jobs),
                    "job_errors": self.job_errors, "bad_lines": self.bad_lines}
        if cmd == "adv":
            ads = [advertisement_from_obj(obj) for obj in request.get("ads", [])]
            reported = sum(fake.report(adv, paired=bool(request.get("paired"))) for adv in ads)
            await fake.flush()
            return {"ok": True, "reported": reported}
        if cmd in ("play", "steady", "garbage", "flood"):
            # A trace is read before the answer (in a thread: the bus stays served), so the
            # answer marks when playing starts: a 30-minute trace takes seconds to read.
            ads = await asyncio.to_thread(self._read_trace, Path(request["path"])) \
                if cmd == "play" else None
            job = self._job(cmd, request, ads)
            if request.get("wait"):
                return {"ok": True, "sent": await job}
            task = asyncio.create_task(job, name=f"fakebluez-{cmd}")
            self.jobs.add(task)
            task.add_done_callback(self._job_done)
            return {"ok": True}
        if cmd in ("central", "hostile"):
            writes = self._central_job(cmd, request)
            if request.get("wait", True):
                return {"ok": True, "tally": await writes}
            background = asyncio.create_task(writes, name=f"fakebluez-{cmd}")
            self.jobs.add(background)
            background.add_done_callback(self._job_done)
            return {"ok": True}
        if cmd == "stop_jobs":
            for task in list(self.jobs):
                task.cancel()
            await asyncio.gather(*self.jobs, return_exceptions=True)
            return {"ok": True}
        if cmd == "phone_rssi":
            if fake._phone is None:
                return {"ok": False, "error": "no phone adapter (start with --phone-adapter)"}
            fake._phone.rssi = int(request["rssi"])
            return {"ok": True}
        simple: dict[str, Callable[[], None]] = {
            "remove_adapter": fake.remove_adapter, "add_adapter": fake.add_adapter,
            "freeze": fake.freeze, "thaw": fake.thaw, "quit": self.quit.set,
            "power": lambda: fake.set_powered(bool(request.get("on", True))),
            "delay": lambda: fake.delay(str(request["method"]), float(request["seconds"])),
            "wedge": lambda: fake.wedge(request.get("mode"),
                                        clears=str(request.get("clears", "power"))),
            "rename_adapter": lambda: fake.rename_adapter(str(request["name"])),
        }
        action = simple.get(str(cmd))
        if action is None:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        action()
        await fake.flush()
        return {"ok": True}

    async def _central_job(self, cmd: str, request: dict[str, Any]) -> dict[str, int]:
        if cmd == "central":
            return await self.fake.central_write(
                str(request["address"]), [bytes.fromhex(v) for v in request["values"]],
                uuid=str(request.get("uuid", CHECKIN_CHARACTERISTIC)),
                write_type=str(request.get("type", "request")), rate=request.get("rate"),
                reconnect=bool(request.get("reconnect")))
        return await self.fake.hostile(
            centrals=int(request.get("centrals", 10)), rate=float(request.get("rate", 100)),
            duration_s=float(request.get("duration_s", 1.0)), seed=int(request.get("seed", 1)))

    def _job_done(self, task: asyncio.Task[Any]) -> None:
        self.jobs.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.job_errors += 1
            print(f"fakebluez: job failed: {task.exception()!r}", file=sys.stderr)

    async def _job(self, cmd: str, request: dict[str, Any],
                   ads: list[Advertisement] | None) -> int:
        rate = request.get("rate")
        seed = int(request.get("seed", 1))
        if ads is not None:
            repeat = int(request.get("repeat", 1))
            return await self.fake.play(
                (adv for _ in range(repeat) for adv in ads), rate=rate,
                speed=float(request.get("speed", 1.0)), paired=bool(request.get("paired")),
                stamp=bool(request.get("stamp")))
        rate = float(rate or 100.0)
        if cmd == "steady":
            count = int(rate * float(request.get("duration_s", 1.0)))
            stream = steady_stream(int(request.get("devices", 1)), seed=seed, rate=rate,
                                   rotate_s=request.get("rotate_s"))
        elif cmd == "flood":
            count = int(request.get("count", 100))
            stream = flood_stream(kind=str(request.get("kind", "random")), seed=seed, rate=rate)
        else:
            count = int(request.get("count", 100))
            stream = garbage_stream(seed=seed, rate=rate)
        return await self.fake.play(_take(stream, count), rate=rate,
                                    stamp=bool(request.get("stamp")))

    def _read_trace(self, path: Path) -> list[Advertisement]:
        ads: list[Advertisement] = []
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            for _number, item in read_trace(handle):
                if isinstance(item, str):
                    self.bad_lines += 1
                else:
                    ads.append(item)
        return ads

    async def serve_client(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise TypeError("a command is a JSON object")
                    response = await self.handle(request)
                except Exception as exc:
                    response = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                writer.write(json.dumps(response).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _take(stream: Iterator[Advertisement], count: int) -> Iterator[Advertisement]:
    for _ in range(count):
        yield next(stream)


_RFKILL_EVENT = struct.Struct("<IBBBB")  # idx, type, op, soft, hard (linux/rfkill.h)
_RFKILL_OP_CHANGE = 2
_RFKILL_OP_CHANGE_ALL = 3


def _listen_rfkill(path: Path, fake: FakeBlueZ) -> None:
    """Stand in for ``/dev/rfkill``: a FIFO at ``path`` whose rfkill change events (as the
    kernel takes them) soft-block and unblock the fake adapter (``FakeBlueZ.rfkill_event``)."""
    _unlink(path)
    os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # RDWR: no EOF when a writer closes
    pending = bytearray()

    def readable() -> None:
        with contextlib.suppress(BlockingIOError):
            pending.extend(os.read(fd, 4096))
        while len(pending) >= _RFKILL_EVENT.size:
            _idx, _type, op, soft, _hard = _RFKILL_EVENT.unpack_from(pending)
            del pending[: _RFKILL_EVENT.size]
            if op in (_RFKILL_OP_CHANGE, _RFKILL_OP_CHANGE_ALL):
                fake.rfkill_event(bool(soft))

    asyncio.get_running_loop().add_reader(fd, readable)


async def _serve(args: argparse.Namespace) -> int:
    fake = FakeBlueZ(adapter=args.adapter, with_adapter=not args.no_adapter,
                     powered=not args.powered_off, advertising=not args.no_advertising,
                     phone_adapter=args.phone_adapter)
    await fake.connect(args.bus)
    controller = _Controller(fake)
    control = Path(args.control)
    _unlink(control)
    server = await asyncio.start_unix_server(controller.serve_client, path=str(control))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, controller.quit.set)
    if args.rfkill:
        _listen_rfkill(Path(args.rfkill), fake)
    print(f"READY {os.getpid()}", flush=True)
    gone = asyncio.create_task(fake.wait_disconnected())
    quit_ = asyncio.create_task(controller.quit.wait())
    await asyncio.wait({gone, quit_}, return_when=asyncio.FIRST_COMPLETED)
    bus_lost = gone.done()
    for task in (gone, quit_, *controller.jobs):
        task.cancel()
    server.close()
    await server.wait_closed()
    await fake.close()
    _unlink(control)
    return 1 if bus_lost else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python tests/support/fakebluez.py --bus ADDRESS --control SOCKET``."""
    parser = argparse.ArgumentParser(prog="fakebluez.py",
                                     description="A fake BlueZ on a D-Bus (for tests).")
    parser.add_argument("--bus", default=os.environ.get("DBUS_SYSTEM_BUS_ADDRESS"),
                        help="D-Bus address (default: $DBUS_SYSTEM_BUS_ADDRESS)")
    parser.add_argument("--control", required=True, help="Unix socket for control commands")
    parser.add_argument("--adapter", default="hci0")
    parser.add_argument("--no-adapter", action="store_true", help="start without an adapter")
    parser.add_argument("--powered-off", action="store_true")
    parser.add_argument("--phone-adapter", metavar="hciN",
                        help="a second adapter standing for a phone (hears our advertisements)")
    parser.add_argument("--no-advertising", action="store_true",
                        help="an adapter without LEAdvertisingManager1 and GattManager1")
    parser.add_argument("--rfkill", help="make a FIFO here that takes rfkill events "
                        "(a stand-in for /dev/rfkill)")
    args = parser.parse_args(argv)
    if not args.bus:
        parser.error("--bus or DBUS_SYSTEM_BUS_ADDRESS is required")
    return asyncio.run(_serve(args))


class FakeBlueZProcess:
    """``python tests/support/fakebluez.py`` as a child process, driven over its socket."""

    def __init__(self, bus_address: str, control_path: str | Path, *, adapter: str = "hci0",
                 with_adapter: bool = True, powered: bool = True, advertising: bool = True,
                 phone_adapter: str | None = None, rfkill: str | Path | None = None) -> None:
        self.bus_address = bus_address
        self.control_path = Path(control_path)
        self._argv = [sys.executable, str(Path(__file__).resolve()), "--bus", bus_address,
                      "--control", str(self.control_path), "--adapter", adapter]
        if not with_adapter:
            self._argv.append("--no-adapter")
        if not powered:
            self._argv.append("--powered-off")
        if not advertising:
            self._argv.append("--no-advertising")
        if phone_adapter:
            self._argv += ["--phone-adapter", phone_adapter]
        if rfkill is not None:
            self._argv += ["--rfkill", str(rfkill)]
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        """The child's PID while it runs."""
        return self._proc.pid if self._proc is not None else None

    async def start(self, *, timeout_s: float = 15.0) -> None:
        """Start the child and wait until it owns ``org.bluez`` and listens for commands."""
        proc = await asyncio.create_subprocess_exec(
            *self._argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
        self._proc = proc
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                line = await proc.stdout.readline()
        except TimeoutError:
            line = b""
        if not line.startswith(b"READY"):
            await self.stop(kill=True)
            raise RuntimeError("fake BlueZ did not start")

    async def command(self, cmd: str, *, timeout_s: float = 60.0, **args: Any) -> dict[str, Any]:
        """Send one control command and return its answer."""
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(str(self.control_path))
            try:
                writer.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"fake BlueZ refused {cmd}: {answer.get('error')}")
        return answer

    async def wait_exit(self, *, timeout_s: float = 5.0) -> int:
        """Wait for the child to exit by itself (it does when it loses the bus); its status."""
        assert self._proc is not None
        async with asyncio.timeout(timeout_s):
            return await self._proc.wait()

    async def stop(self, *, kill: bool = False, timeout_s: float = 5.0) -> int | None:
        """End the child by its PID (SIGKILL with ``kill``, like a crash); return its status."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout_s):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if proc.stdout is not None:
            with contextlib.suppress(Exception):
                await proc.stdout.read()
        return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
