"""BeaconAdvertiser: the scanner advertises a reference beacon of its own through BlueZ.

In a venue, scanners at known places hear each other. With ``[scanner.beacon]`` a scanner
advertises an iBeacon (the configured ``uuid/major/minor``, with ``measured_power_dbm`` as its
1 m power byte) through BlueZ's LE advertising API: on its own system-bus connection it serves
``/org/hallway/beacon0`` (``org.bluez.LEAdvertisement1``, type ``broadcast``: not connectable)
and registers it with ``org.bluez.LEAdvertisingManager1.RegisterAdvertisement`` on the
scanner's adapter. The other scanners name it as a badge reference (``[[proximity.reference]]``
with ``ibeacon`` and the distance between the two scanners) and fit their receive offsets
against it (``hallway.proximity.calibration``; ``hallway.proximity.scanners`` for the venue's
pairwise solution).

BlueZ drops an advertisement when bluetoothd restarts or the adapter goes, and says so with
``Release``: the advertiser follows the ``org.bluez`` name owner, our adapter's
``InterfacesAdded`` and ``Release``, and registers again, with backoff on failure. It never
raises out of ``run``: a scanner without the peripheral role (no ``LEAdvertisingManager1``)
still scans, and ``status`` says why its beacon is off (``scanner_beacon``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from hallway.config import BeaconConfig
from hallway.logs import get_logger

log = get_logger(__name__)

BLUEZ = "org.bluez"
ADAPTER_IFACE = "org.bluez.Adapter1"
ADV_MANAGER_IFACE = "org.bluez.LEAdvertisingManager1"
ADVERTISEMENT_IFACE = "org.bluez.LEAdvertisement1"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
OM_IFACE = "org.freedesktop.DBus.ObjectManager"
INTROSPECT_IFACE = "org.freedesktop.DBus.Introspectable"
_DBUS = "org.freedesktop.DBus"
BEACON_PATH = "/org/hallway/beacon0"
APPLE_COMPANY_ID = 0x004C
_CALL_TIMEOUT_S = 5.0
_BACKOFF_FIRST_S = 1.0
_BACKOFF_MAX_S = 30.0
_CHECK_S = 5.0


def ibeacon_payload(ibeacon: str, measured_power_dbm: int) -> bytes:
    """The iBeacon manufacturer data (after Apple's company id) for ``uuid/major/minor``."""
    uuid_text, major, minor = ibeacon.split("/")
    return (b"\x02\x15" + uuid.UUID(uuid_text).bytes + int(major).to_bytes(2, "big")
            + int(minor).to_bytes(2, "big") + (measured_power_dbm & 0xFF).to_bytes(1, "big"))


class BeaconAdvertiser:
    """The scanner's reference beacon, registered with BlueZ and kept registered."""

    def __init__(self, config: BeaconConfig, *, adapter: str) -> None:
        self._cfg = config
        self._adapter_path = f"/org/bluez/{adapter}"
        self._bus: MessageBus | None = None
        self._owner: str | None = None
        self._registered_with: str | None = None
        self._wake = asyncio.Event()
        self._state = "stopped"
        self._last_error: str | None = None
        self._counts = {"registrations": 0, "register_failures": 0, "released": 0}

    def stats(self) -> dict[str, Any]:
        """State (``registered``, ``registering``, ``backoff``, ``stopped``), what it
        advertises, the last error and counters."""
        return {"state": self._state, "ibeacon": self._cfg.ibeacon,
                "measured_power_dbm": self._cfg.measured_power_dbm,
                "last_error": self._last_error, **self._counts}

    def advertisement_props(self) -> dict[str, Variant]:
        """The ``LEAdvertisement1`` properties BlueZ reads at registration."""
        payload = ibeacon_payload(self._cfg.ibeacon, self._cfg.measured_power_dbm)
        return {
            "Type": Variant("s", "broadcast"),
            "ManufacturerData": Variant("a{qv}", {APPLE_COMPANY_ID: Variant("ay", payload)}),
        }

    async def run(self) -> None:
        """Advertise until cancelled; BlueZ faults are retried with backoff, never raised."""
        failures = 0
        try:
            while True:
                self._wake.clear()
                if await self._ensure_registered():
                    failures = 0
                    delay = _CHECK_S
                else:
                    failures += 1
                    delay = min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2 ** (failures - 1))
                    self._state = "backoff"
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        finally:
            self._state = "stopped"
            await self._close()

    async def _ensure_registered(self) -> bool:
        owner = None
        try:
            async with asyncio.timeout(3 * _CALL_TIMEOUT_S):
                await self._connect()
                owner = self._owner
                if owner is None:
                    raise _BeaconError("BlueZ (org.bluez) is not on the system bus")
                if self._registered_with == owner:
                    return True
                self._state = "registering"
                bus = self._bus
                assert bus is not None
                await self._call(bus, "UnregisterAdvertisement", "o", [BEACON_PATH],
                                 check=False)
                await self._call(bus, "RegisterAdvertisement", "oa{sv}", [BEACON_PATH, {}])
        except TimeoutError:
            error = "registration timed out"
        except _BeaconError as exc:
            error = str(exc)
        except OSError as exc:
            error = f"cannot reach the system bus: {exc.strerror or exc}"
        except Exception as exc:  # noqa: BLE001 - any D-Bus fault means "retry", never "crash"
            text = str(exc).strip()
            error = (f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text
                     else type(exc).__name__)
        else:
            self._registered_with = owner
            self._state = "registered"
            self._counts["registrations"] += 1
            self._last_error = None
            log.info("beacon_registered", adapter=self._adapter_path.rsplit("/", 1)[1],
                     registrations=self._counts["registrations"])
            return True
        self._counts["register_failures"] += 1
        first = self._last_error != error
        self._last_error = error
        (log.warning if first else log.debug)("beacon_register_failed", error=error)
        return False

    async def _connect(self) -> None:
        if self._bus is not None and self._bus.connected:
            return
        self._registered_with = None
        bus = MessageBus(bus_type=BusType.SYSTEM)
        try:
            await bus.connect()
            bus.add_message_handler(self._on_message)
            for rule in (
                f"type='signal',sender='{_DBUS}',interface='{_DBUS}',member='NameOwnerChanged',"
                f"arg0='{BLUEZ}'",
                f"type='signal',interface='{OM_IFACE}',member='InterfacesAdded',"
                f"arg0path='{self._adapter_path}'",
            ):
                reply = await self._bus_call(bus, Message(
                    destination=_DBUS, path="/org/freedesktop/DBus", interface=_DBUS,
                    member="AddMatch", signature="s", body=[rule]))
            reply = await self._bus_call(bus, Message(
                destination=_DBUS, path="/org/freedesktop/DBus", interface=_DBUS,
                member="GetNameOwner", signature="s", body=[BLUEZ]))
        except BaseException:
            bus.disconnect()
            raise
        self._owner = reply.body[0] if reply.message_type is MessageType.METHOD_RETURN else None
        self._bus = bus

    async def _call(self, bus: MessageBus, member: str, signature: str, body: list[Any], *,
                    check: bool = True) -> Message:
        reply = await self._bus_call(bus, Message(
            destination=BLUEZ, path=self._adapter_path, interface=ADV_MANAGER_IFACE,
            member=member, signature=signature, body=body))
        if check and reply.message_type is MessageType.ERROR:
            text = (reply.body[0] if reply.body else "") or ""
            raise _BeaconError(f"{member} failed: {reply.error_name} {text}".strip())
        return reply

    @staticmethod
    async def _bus_call(bus: MessageBus, message: Message) -> Message:
        async with asyncio.timeout(_CALL_TIMEOUT_S):
            reply: Message = await bus.call(message)
        return reply

    def _on_message(self, msg: Message) -> Message | bool | None:
        if msg.message_type is MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged" and msg.sender == _DBUS and \
                    msg.body[0] == BLUEZ:
                self._owner = msg.body[2] or None
                self._registered_with = None
                self._wake.set()
            elif (msg.member == "InterfacesAdded" and msg.sender == self._owner
                  and msg.body[0] == self._adapter_path and ADAPTER_IFACE in msg.body[1]):
                self._registered_with = None  # the adapter came back: register on it again
                self._wake.set()
            return None
        if msg.message_type is not MessageType.METHOD_CALL or msg.path != BEACON_PATH:
            return None
        iface, member = msg.interface, msg.member
        if iface == ADVERTISEMENT_IFACE and member == "Release":
            self._counts["released"] += 1
            self._registered_with = None
            self._wake.set()
            return Message.new_method_return(msg)
        if iface == PROPS_IFACE and member == "GetAll":
            if msg.body[0] != ADVERTISEMENT_IFACE:
                return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs",
                                         "no such interface")
            return Message.new_method_return(msg, "a{sv}", [self.advertisement_props()])
        if iface == PROPS_IFACE and member == "Get":
            value = self.advertisement_props().get(msg.body[1])
            if msg.body[0] != ADVERTISEMENT_IFACE or value is None:
                return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs",
                                         "no such property")
            return Message.new_method_return(msg, "v", [value])
        if iface in (INTROSPECT_IFACE, None) and member == "Introspect":
            xml = (f'<node><interface name="{ADVERTISEMENT_IFACE}"/>'
                   f'<interface name="{PROPS_IFACE}"/></node>')
            return Message.new_method_return(msg, "s", [xml])
        return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod",
                                 "unknown method")

    async def _close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None and bus.connected:
            if self._registered_with is not None and self._registered_with == self._owner:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await bus.call(Message(
                            destination=BLUEZ, path=self._adapter_path,
                            interface=ADV_MANAGER_IFACE, member="UnregisterAdvertisement",
                            signature="o", body=[BEACON_PATH]))
            bus.disconnect()
        self._registered_with = None


class _BeaconError(Exception):
    """Registration failed; the message is fit for the status line."""
