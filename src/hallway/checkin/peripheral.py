"""BluezPeripheral: the scanner as a check-in peripheral, through BlueZ's D-Bus API.

Theory of operation. On its own system-bus connection the peripheral serves three objects and
registers them with BlueZ on the scanner's adapter:

* ``/org/hallway/advertisement0`` (``org.bluez.LEAdvertisement1``): a connectable
  (``peripheral``) advertisement with the check-in service UUID, the scanner's measured power
  at 1 m as ``TxPower`` with ``Includes = ["tx-power"]``, registered with
  ``LEAdvertisingManager1.RegisterAdvertisement``;
* ``/org/hallway/checkin`` (an ObjectManager) with ``service0`` (``GattService1``, primary)
  and ``service0/char0`` (``GattCharacteristic1``, flags ``write`` and
  ``write-without-response``), registered with ``GattManager1.RegisterApplication``.

BlueZ drops both when bluetoothd restarts and the advertisement when the adapter goes away, so
the peripheral follows the ``org.bluez`` name owner, our adapter's ``InterfacesAdded`` and its
``Powered`` and BlueZ's ``Release`` call, and registers both again, with backoff on failure
(``hallway.bluez_export``, shared with the scanner's reference beacon).
Scanning (bleak, on its own connection) and advertising run side by side on one adapter.

Every ``WriteValue`` runs on the event loop and costs a bounded amount: the ``CentralGuard``
(connections and writes per central), ``parse_checkin`` (fixed size), and the sink (one RPI
table lookup and one tracker step). A refusal is a D-Bus error from ``WriteValue``, which BlueZ
answers to the central as an ATT error (``REFUSALS``); each kind is counted in ``stats`` and
none is logged with an address. Centrals that wrote something refused, flood, overflow the
table, idle, or checked in and linger are disconnected (``Device1.Disconnect``), at most
``_DISCONNECTS_IN_FLIGHT`` calls at a time (past that, only their slot is freed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from hallway.bluez_export import (
    ADV_MANAGER_IFACE,
    ADVERTISEMENT_IFACE,
    INTROSPECT_IFACE,
    OM_IFACE,
    PROPS_IFACE,
    BluezExport,
    introspection,
    property_reply,
)
from hallway.checkin.guard import CentralGuard, Verdict
from hallway.config import CheckinConfig
from hallway.parsing.checkin import CHARACTERISTIC_UUID, SERVICE_UUID, CheckinFrame, Refusal
from hallway.parsing.checkin import parse_checkin as _parse

DEVICE_IFACE = "org.bluez.Device1"
GATT_MANAGER_IFACE = "org.bluez.GattManager1"
SERVICE_IFACE = "org.bluez.GattService1"
CHARACTERISTIC_IFACE = "org.bluez.GattCharacteristic1"
ADVERTISEMENT_PATH = "/org/hallway/advertisement0"
APP_PATH = "/org/hallway/checkin"
SERVICE_PATH = APP_PATH + "/service0"
CHARACTERISTIC_PATH = SERVICE_PATH + "/char0"
_SWEEP_S = 0.5
_DISCONNECTS_IN_FLIGHT = 4

REFUSALS: dict[str, tuple[str, str]] = {
    # refusal -> (the D-Bus error WriteValue returns, its text); BlueZ sends the ATT error
    Refusal.LENGTH: ("org.bluez.Error.InvalidValueLength", "a check-in is 21 bytes"),
    Refusal.MAGIC: ("org.bluez.Error.NotSupported", "not a hallway check-in"),
    Refusal.VERSION: ("org.bluez.Error.NotSupported", "unsupported check-in version"),
    Refusal.UNKNOWN_RPI: ("org.bluez.Error.NotAuthorized", "not enrolled here"),
    Verdict.TOO_MANY: ("org.bluez.Error.NotPermitted", "too many centrals"),
    Verdict.RATE_LIMITED: ("org.bluez.Error.InProgress", "too many writes"),
    "bad_request": ("org.bluez.Error.InvalidArguments", "not a plain write"),
}


CheckinSink = Callable[[CheckinFrame], Refusal | None]
"""Takes a well-formed check-in (resolves and tracks it); returns why it is refused, or None."""


def _v(signature: str, value: Any) -> Variant:
    return Variant(signature, value)


class BluezPeripheral(BluezExport):
    """The advertisement and the GATT application, registered and kept registered."""

    name = "checkin"
    tick_s = _SWEEP_S

    def __init__(self, config: CheckinConfig, *, adapter: str, sink: CheckinSink,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(adapter=adapter)
        self._cfg = config
        self._sink = sink
        self._mono = monotonic
        self._guard = CentralGuard(max_centrals=config.max_connections,
                                   writes_per_s=config.writes_per_s,
                                   idle_s=config.idle_disconnect_s)
        self._disconnecting: set[str] = set()
        self._counts.update(dict.fromkeys(
            ("writes", "accepted", "disconnects", "disconnect_errors", "internal_errors",
             *(str(k) for k in REFUSALS)), 0))

    def stats(self) -> dict[str, int | str | None]:
        """Counters (writes, refusals by kind, registrations, disconnects) and the state."""
        return {"state": self._state.value, "last_error": self._last_error,
                "centrals": len(self._guard), **self._counts}

    # -- registration ---------------------------------------------------------------------
    def _registrations(self) -> list[tuple[str, str, str]]:
        return [(ADV_MANAGER_IFACE, "UnregisterAdvertisement", ADVERTISEMENT_PATH),
                (GATT_MANAGER_IFACE, "UnregisterApplication", APP_PATH)]

    async def _register(self, bus: MessageBus) -> None:
        await self._call(bus, GATT_MANAGER_IFACE, "RegisterApplication", "oa{sv}",
                         [APP_PATH, {}])
        await self._call(bus, ADV_MANAGER_IFACE, "RegisterAdvertisement", "oa{sv}",
                         [ADVERTISEMENT_PATH, {}])

    def _tick(self) -> None:
        self._sweep()

    # -- centrals -------------------------------------------------------------------------
    def _sweep(self) -> None:
        for central in self._guard.idle(self._mono()):
            self._disconnect(central)

    def _disconnect(self, central: str) -> None:
        """``Device1.Disconnect`` for ``central`` (bounded calls in flight; errors counted)."""
        self._guard.forget(central, now=self._mono())
        bus = self._bus
        if (bus is None or central in self._disconnecting
                or len(self._disconnecting) >= _DISCONNECTS_IN_FLIGHT
                or not central.startswith(self._adapter_path + "/")):
            return
        self._disconnecting.add(central)
        self._spawn(self._disconnect_call(bus, central), "hallway-checkin-disconnect")

    async def _disconnect_call(self, bus: MessageBus, central: str) -> None:
        try:
            reply = await self._call(bus, DEVICE_IFACE, "Disconnect", "", [], path=central,
                                     check=False)
            ok = reply.message_type is MessageType.METHOD_RETURN
            self._counts["disconnects" if ok else "disconnect_errors"] += 1
        except Exception:  # noqa: BLE001 - a gone bus or BlueZ: counted, never raised
            self._counts["disconnect_errors"] += 1
        finally:
            self._disconnecting.discard(central)

    def write(self, value: bytes, options: dict[str, Variant]) -> tuple[str, str] | None:
        """One ``WriteValue``: None when accepted, else the D-Bus error (name, text)."""
        self._counts["writes"] += 1
        now = self._mono()
        device = options.get("device")
        central = str(device.value) if device is not None else "?"
        verdict, evicted = self._guard.admit(central, now)
        if evicted is not None:
            self._disconnect(evicted)
        if verdict is not Verdict.ADMIT:
            self._counts[verdict] += 1
            if verdict is Verdict.TOO_MANY or self._guard.flooding(central):
                self._disconnect(central)
            return REFUSALS[verdict]
        offset = options.get("offset")
        if offset is not None and offset.value:
            self._counts["bad_request"] += 1
            self._disconnect(central)
            return REFUSALS["bad_request"]
        frame = _parse(value)
        if isinstance(frame, Refusal):
            refusal: Refusal | None = frame
        else:
            refusal = self._sink(frame)
        if refusal is not None:
            self._counts[refusal] += 1
            self._disconnect(central)  # it has had its answer; its slot is for someone else
            return REFUSALS[refusal]
        self._counts["accepted"] += 1
        self._guard.checked_in(central, now)
        return None

    # -- the objects we serve -------------------------------------------------------------
    def _advertisement_props(self) -> dict[str, Variant]:
        props = {
            "Type": Variant("s", "peripheral"),
            "ServiceUUIDs": Variant("as", [SERVICE_UUID]),
            "Includes": Variant("as", ["tx-power"]),
            "TxPower": Variant("n", self._cfg.measured_power_dbm),
        }
        if self._cfg.advertisement_name:
            props["LocalName"] = Variant("s", self._cfg.advertisement_name)
        return props

    def _objects(self) -> dict[str, dict[str, dict[str, Variant]]]:
        return {
            SERVICE_PATH: {SERVICE_IFACE: {
                "UUID": Variant("s", SERVICE_UUID), "Primary": Variant("b", True),
                "Characteristics": Variant("ao", [CHARACTERISTIC_PATH]),
            }},
            CHARACTERISTIC_PATH: {CHARACTERISTIC_IFACE: {
                "UUID": Variant("s", CHARACTERISTIC_UUID), "Service": Variant("o", SERVICE_PATH),
                "Flags": Variant("as", ["write", "write-without-response"]),
            }},
        }

    def _props_of(self, path: str) -> dict[str, dict[str, Variant]] | None:
        if path == ADVERTISEMENT_PATH:
            return {ADVERTISEMENT_IFACE: self._advertisement_props()}
        return self._objects().get(path)

    def _serve(self, msg: Message) -> Message | None:
        path, iface, member = msg.path or "", msg.interface, msg.member
        if iface == CHARACTERISTIC_IFACE and path == CHARACTERISTIC_PATH:
            if member == "WriteValue" and msg.signature == "aya{sv}":
                refused = self.write(bytes(msg.body[0]), msg.body[1])
                if refused is None:
                    return Message.new_method_return(msg)
                return Message.new_error(msg, *refused)
            if member == "ReadValue":
                return Message.new_error(msg, "org.bluez.Error.NotPermitted", "write only")
        if iface == ADVERTISEMENT_IFACE and member == "Release" and path == ADVERTISEMENT_PATH:
            self._counts["released"] += 1
            self._lost()
            return Message.new_method_return(msg)
        if iface == OM_IFACE and member == "GetManagedObjects" and path == APP_PATH:
            return Message.new_method_return(msg, "a{oa{sa{sv}}}", [self._objects()])
        if iface == PROPS_IFACE and member in ("Get", "GetAll"):
            return property_reply(msg, self._props_of(path))
        if iface in (INTROSPECT_IFACE, None) and member == "Introspect":
            return Message.new_method_return(msg, "s", [self._introspect(path)])
        return None

    def _introspect(self, path: str) -> str:
        if path == ADVERTISEMENT_PATH:
            return introspection([ADVERTISEMENT_IFACE, PROPS_IFACE], [])
        if path == APP_PATH:
            return introspection([OM_IFACE], ["service0"])
        if path == SERVICE_PATH:
            return introspection([SERVICE_IFACE, PROPS_IFACE], ["char0"])
        if path == CHARACTERISTIC_PATH:
            return introspection([CHARACTERISTIC_IFACE, PROPS_IFACE], [])
        return introspection([], ["advertisement0", "checkin"] if path == "/org/hallway" else [])
