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
``Release``: the advertiser registers again, with backoff on failure
(``hallway.bluez_export``, shared with the check-in peripheral). It never raises out of
``run``: a scanner without the peripheral role (no ``LEAdvertisingManager1``) still scans,
and ``status`` says why its beacon is off (``scanner_beacon``).
"""

from __future__ import annotations

import uuid
from typing import Any

from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus

from hallway.bluez_export import (
    ADV_MANAGER_IFACE,
    ADVERTISEMENT_IFACE,
    INTROSPECT_IFACE,
    PROPS_IFACE,
    BluezExport,
    introspection,
    property_reply,
)
from hallway.config import BeaconConfig

BEACON_PATH = "/org/hallway/beacon0"
APPLE_COMPANY_ID = 0x004C


def ibeacon_payload(ibeacon: str, measured_power_dbm: int) -> bytes:
    """The iBeacon manufacturer data (after Apple's company id) for ``uuid/major/minor``."""
    uuid_text, major, minor = ibeacon.split("/")
    return (b"\x02\x15" + uuid.UUID(uuid_text).bytes + int(major).to_bytes(2, "big")
            + int(minor).to_bytes(2, "big") + (measured_power_dbm & 0xFF).to_bytes(1, "big"))


class BeaconAdvertiser(BluezExport):
    """The scanner's reference beacon, registered with BlueZ and kept registered."""

    name = "beacon"

    def __init__(self, config: BeaconConfig, *, adapter: str) -> None:
        super().__init__(adapter=adapter)
        self._cfg = config

    def stats(self) -> dict[str, Any]:
        """State (``registered``, ``registering``, ``backoff``, ``stopped``), what it
        advertises, the last error and counters."""
        return {"state": self._state.value, "ibeacon": self._cfg.ibeacon,
                "measured_power_dbm": self._cfg.measured_power_dbm,
                "last_error": self._last_error, **self._counts}

    def advertisement_props(self) -> dict[str, Variant]:
        """The ``LEAdvertisement1`` properties BlueZ reads at registration."""
        payload = ibeacon_payload(self._cfg.ibeacon, self._cfg.measured_power_dbm)
        return {
            "Type": Variant("s", "broadcast"),
            "ManufacturerData": Variant("a{qv}", {APPLE_COMPANY_ID: Variant("ay", payload)}),
        }

    def _registrations(self) -> list[tuple[str, str, str]]:
        return [(ADV_MANAGER_IFACE, "UnregisterAdvertisement", BEACON_PATH)]

    async def _register(self, bus: MessageBus) -> None:
        await self._call(bus, ADV_MANAGER_IFACE, "RegisterAdvertisement", "oa{sv}",
                         [BEACON_PATH, {}])

    def _serve(self, msg: Message) -> Message | None:
        iface, member = msg.interface, msg.member
        if msg.path != BEACON_PATH:
            return None
        if iface == ADVERTISEMENT_IFACE and member == "Release":
            self._counts["released"] += 1
            self._lost()
            return Message.new_method_return(msg)
        if iface == PROPS_IFACE and member in ("Get", "GetAll"):
            return property_reply(msg, {ADVERTISEMENT_IFACE: self.advertisement_props()})
        if iface in (INTROSPECT_IFACE, None) and member == "Introspect":
            return Message.new_method_return(
                msg, "s", [introspection([ADVERTISEMENT_IFACE, PROPS_IFACE], [])])
        return None
