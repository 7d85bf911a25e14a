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
``Powered`` and BlueZ's ``Release`` call, and registers both again, with backoff on failure.
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

import asyncio
import contextlib
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from hallway.checkin.guard import CentralGuard, Verdict
from hallway.config import CheckinConfig
from hallway.logs import get_logger
from hallway.parsing.checkin import CHARACTERISTIC_UUID, SERVICE_UUID, CheckinFrame, Refusal
from hallway.parsing.checkin import parse_checkin as _parse

log = get_logger(__name__)

BLUEZ = "org.bluez"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
ADV_MANAGER_IFACE = "org.bluez.LEAdvertisingManager1"
GATT_MANAGER_IFACE = "org.bluez.GattManager1"
ADVERTISEMENT_IFACE = "org.bluez.LEAdvertisement1"
SERVICE_IFACE = "org.bluez.GattService1"
CHARACTERISTIC_IFACE = "org.bluez.GattCharacteristic1"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
OM_IFACE = "org.freedesktop.DBus.ObjectManager"
INTROSPECT_IFACE = "org.freedesktop.DBus.Introspectable"
_DBUS = "org.freedesktop.DBus"
ADVERTISEMENT_PATH = "/org/hallway/advertisement0"
APP_PATH = "/org/hallway/checkin"
SERVICE_PATH = APP_PATH + "/service0"
CHARACTERISTIC_PATH = SERVICE_PATH + "/char0"
_CALL_TIMEOUT_S = 5.0
_BACKOFF_FIRST_S = 1.0
_BACKOFF_MAX_S = 30.0
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


class PeripheralState(StrEnum):
    """Where the registration supervisor is."""

    STOPPED = "stopped"
    REGISTERING = "registering"
    REGISTERED = "registered"
    BACKOFF = "backoff"


CheckinSink = Callable[[CheckinFrame], Refusal | None]
"""Takes a well-formed check-in (resolves and tracks it); returns why it is refused, or None."""


def _v(signature: str, value: Any) -> Variant:
    return Variant(signature, value)


def _introspection(interfaces: list[str], children: list[str]) -> str:
    nodes = "".join(f'<node name="{c}"/>' for c in children)
    ifaces = "".join(f'<interface name="{i}"/>' for i in interfaces)
    return f"<node>{ifaces}{nodes}</node>"


class BluezPeripheral:
    """The advertisement and the GATT application, registered and kept registered."""

    def __init__(self, config: CheckinConfig, *, adapter: str, sink: CheckinSink,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._cfg = config
        self._adapter_path = f"/org/bluez/{adapter}"
        self._sink = sink
        self._mono = monotonic
        self._guard = CentralGuard(max_centrals=config.max_connections,
                                   writes_per_s=config.writes_per_s,
                                   idle_s=config.idle_disconnect_s)
        self._bus: MessageBus | None = None
        self._owner: str | None = None
        self._state = PeripheralState.STOPPED
        self._last_error: str | None = None
        self._wake = asyncio.Event()
        self._registered_with: str | None = None  # the BlueZ owner that holds our objects
        self._disconnecting: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._counts: dict[str, int] = dict.fromkeys(
            ("writes", "accepted", "registrations", "register_failures", "released",
             "disconnects", "disconnect_errors", "internal_errors",
             *(str(k) for k in REFUSALS)), 0)

    # -- status ---------------------------------------------------------------------------
    @property
    def state(self) -> PeripheralState:
        """The registration supervisor's state."""
        return self._state

    def stats(self) -> dict[str, int | str | None]:
        """Counters (writes, refusals by kind, registrations, disconnects) and the state."""
        return {"state": self._state.value, "last_error": self._last_error,
                "centrals": len(self._guard), **self._counts}

    # -- the supervisor -------------------------------------------------------------------
    async def run(self) -> None:
        """Serve and keep registered until cancelled; BlueZ faults never raise out of here."""
        failures = 0
        try:
            while True:
                self._wake.clear()
                if await self._ensure_registered():
                    failures = 0
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_SWEEP_S):
                            await self._wake.wait()
                    self._sweep()
                    continue
                failures += 1
                delay = min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2 ** (failures - 1))
                self._state = PeripheralState.BACKOFF
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        finally:
            self._state = PeripheralState.STOPPED
            await self._close()

    async def _ensure_registered(self) -> bool:
        """Connect, export and register as needed; True when registered with BlueZ now."""
        owner = None
        try:
            async with asyncio.timeout(3 * _CALL_TIMEOUT_S):
                await self._connect()
                owner = self._owner
                if owner is None:
                    raise _RegisterError("BlueZ (org.bluez) is not on the system bus")
                if self._registered_with == owner:
                    return True
                self._state = PeripheralState.REGISTERING
                await self._register()
        except TimeoutError:
            error = "registration timed out"
        except _RegisterError as exc:
            error = str(exc)
        except OSError as exc:
            error = f"cannot reach the system bus: {exc.strerror or exc}"
        except Exception as exc:  # noqa: BLE001 - any D-Bus fault means "retry", never "crash"
            text = str(exc).strip()
            error = (f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text
                     else type(exc).__name__)
        else:
            # With the owner asked before: if BlueZ restarted meanwhile, the next pass sees
            # the new owner and registers again.
            self._registered_with = owner
            self._state = PeripheralState.REGISTERED
            self._counts["registrations"] += 1
            self._last_error = None
            log.info("checkin_registered", adapter=self._adapter_path.rsplit("/", 1)[1],
                     registrations=self._counts["registrations"])
            return True
        self._counts["register_failures"] += 1
        first = self._last_error != error
        self._last_error = error
        (log.warning if first else log.debug)("checkin_register_failed", error=error)
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
                f"type='signal',interface='{PROPS_IFACE}',member='PropertiesChanged',"
                f"path='{self._adapter_path}',arg0='{ADAPTER_IFACE}'",
            ):
                await self._call(bus, Message(destination=_DBUS, path="/org/freedesktop/DBus",
                                              interface=_DBUS, member="AddMatch", signature="s",
                                              body=[rule]))
            reply = await self._call(bus, Message(
                destination=_DBUS, path="/org/freedesktop/DBus", interface=_DBUS,
                member="GetNameOwner", signature="s", body=[BLUEZ]), check=False)
        except BaseException:
            bus.disconnect()
            raise
        self._owner = reply.body[0] if reply.message_type is MessageType.METHOD_RETURN else None
        self._bus = bus
        bus_task = asyncio.create_task(self._watch_disconnect(bus),
                                       name="hallway-checkin-bus-watch")
        self._tasks.add(bus_task)
        bus_task.add_done_callback(self._tasks.discard)

    async def _register(self) -> None:
        bus = self._bus
        assert bus is not None
        adapter = self._adapter_path
        # A leftover registration from this connection (BlueZ kept it): drop it first.
        for iface, member, path in (
            (ADV_MANAGER_IFACE, "UnregisterAdvertisement", ADVERTISEMENT_PATH),
            (GATT_MANAGER_IFACE, "UnregisterApplication", APP_PATH),
        ):
            await self._call(bus, Message(destination=BLUEZ, path=adapter, interface=iface,
                                          member=member, signature="o", body=[path]),
                             check=False)
        await self._call(bus, Message(
            destination=BLUEZ, path=adapter, interface=GATT_MANAGER_IFACE,
            member="RegisterApplication", signature="oa{sv}", body=[APP_PATH, {}]))
        await self._call(bus, Message(
            destination=BLUEZ, path=adapter, interface=ADV_MANAGER_IFACE,
            member="RegisterAdvertisement", signature="oa{sv}", body=[ADVERTISEMENT_PATH, {}]))

    def _on_bus_event(self) -> None:
        self._registered_with = None
        self._wake.set()

    async def _watch_disconnect(self, bus: MessageBus) -> None:
        with contextlib.suppress(Exception):
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        if self._bus is bus:
            self._bus = None
            self._on_bus_event()

    async def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        bus, self._bus = self._bus, None
        if bus is not None and bus.connected:
            if self._registered_with is not None and self._registered_with == self._owner:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        for iface, member, path in (
                            (ADV_MANAGER_IFACE, "UnregisterAdvertisement", ADVERTISEMENT_PATH),
                            (GATT_MANAGER_IFACE, "UnregisterApplication", APP_PATH),
                        ):
                            await bus.call(Message(
                                destination=BLUEZ, path=self._adapter_path, interface=iface,
                                member=member, signature="o", body=[path]))
            bus.disconnect()
        self._registered_with = None

    @staticmethod
    async def _call(bus: MessageBus, message: Message, *, check: bool = True) -> Message:
        async with asyncio.timeout(_CALL_TIMEOUT_S):
            reply: Message = await bus.call(message)
        if check and reply.message_type is MessageType.ERROR:
            raise _RegisterError(f"{message.member} failed: {reply.error_name}")
        return reply

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
        task = asyncio.create_task(self._disconnect_call(bus, central),
                                   name="hallway-checkin-disconnect")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _disconnect_call(self, bus: MessageBus, central: str) -> None:
        try:
            reply = await self._call(bus, Message(
                destination=BLUEZ, path=central, interface=DEVICE_IFACE, member="Disconnect"),
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
            "Type": _v("s", "peripheral"),
            "ServiceUUIDs": _v("as", [SERVICE_UUID]),
            "Includes": _v("as", ["tx-power"]),
            "TxPower": _v("n", self._cfg.measured_power_dbm),
        }
        if self._cfg.advertisement_name:
            props["LocalName"] = _v("s", self._cfg.advertisement_name)
        return props

    def _objects(self) -> dict[str, dict[str, dict[str, Variant]]]:
        return {
            SERVICE_PATH: {SERVICE_IFACE: {
                "UUID": _v("s", SERVICE_UUID), "Primary": _v("b", True),
                "Characteristics": _v("ao", [CHARACTERISTIC_PATH]),
            }},
            CHARACTERISTIC_PATH: {CHARACTERISTIC_IFACE: {
                "UUID": _v("s", CHARACTERISTIC_UUID), "Service": _v("o", SERVICE_PATH),
                "Flags": _v("as", ["write", "write-without-response"]),
            }},
        }

    def _props_of(self, path: str) -> dict[str, dict[str, Variant]] | None:
        if path == ADVERTISEMENT_PATH:
            return {ADVERTISEMENT_IFACE: self._advertisement_props()}
        return self._objects().get(path)

    def _on_message(self, msg: Message) -> Message | bool | None:
        try:
            return self._dispatch(msg)
        except Exception:  # noqa: BLE001 - a bug guard: a malformed call must not reach the loop
            self._counts["internal_errors"] += 1
            if msg.message_type is MessageType.METHOD_CALL:
                return Message.new_error(msg, "org.bluez.Error.Failed", "internal error")
            return None

    def _dispatch(self, msg: Message) -> Message | bool | None:
        if msg.message_type is MessageType.SIGNAL:
            self._on_signal(msg)
            return None
        if msg.message_type is not MessageType.METHOD_CALL or not msg.path:
            return None
        path, iface, member = msg.path, msg.interface, msg.member
        if not path.startswith("/org/hallway"):
            return None
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
            self._on_bus_event()
            return Message.new_method_return(msg)
        if iface == OM_IFACE and member == "GetManagedObjects" and path == APP_PATH:
            return Message.new_method_return(msg, "a{oa{sa{sv}}}", [self._objects()])
        if iface == PROPS_IFACE and member in ("Get", "GetAll"):
            props = self._props_of(path)
            values = None if props is None else props.get(msg.body[0])
            if values is None:
                return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs",
                                         "no such interface")
            if member == "GetAll":
                return Message.new_method_return(msg, "a{sv}", [values])
            value = values.get(msg.body[1])
            if value is None:
                return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs",
                                         "no such property")
            return Message.new_method_return(msg, "v", [value])
        if iface in (INTROSPECT_IFACE, None) and member == "Introspect":
            return Message.new_method_return(msg, "s", [self._introspect(path)])
        return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod",
                                 "unknown method")

    def _introspect(self, path: str) -> str:
        if path == ADVERTISEMENT_PATH:
            return _introspection([ADVERTISEMENT_IFACE, PROPS_IFACE], [])
        if path == APP_PATH:
            return _introspection([OM_IFACE], ["service0"])
        if path == SERVICE_PATH:
            return _introspection([SERVICE_IFACE, PROPS_IFACE], ["char0"])
        if path == CHARACTERISTIC_PATH:
            return _introspection([CHARACTERISTIC_IFACE, PROPS_IFACE], [])
        return _introspection([], ["advertisement0", "checkin"] if path == "/org/hallway" else [])

    def _on_signal(self, msg: Message) -> None:
        member = msg.member
        if member == "NameOwnerChanged" and msg.sender == _DBUS:
            name, _old, new = msg.body
            if name == BLUEZ:
                self._owner = new or None
                self._on_bus_event()
        elif msg.sender != self._owner or self._owner is None:
            return
        elif member == "InterfacesAdded" and msg.body[0] == self._adapter_path:
            if ADAPTER_IFACE in msg.body[1]:
                self._on_bus_event()
        elif member == "PropertiesChanged" and msg.path == self._adapter_path:
            powered = msg.body[1].get("Powered")
            if powered is not None and powered.value:
                self._on_bus_event()


class _RegisterError(Exception):
    """Registration failed; the message is fit for the status line."""
