"""BluezExport: objects we serve to BlueZ on our own system-bus connection, kept registered.

Both of the scanner's peripheral roles work this way: the check-in peripheral
(``hallway.checkin.peripheral``: a connectable advertisement and a GATT application) and the
reference beacon (``hallway.sources.beacon``: a broadcast advertisement). Each serves D-Bus
objects under ``/org/hallway`` and registers them with one of BlueZ's managers on the
scanner's adapter. This class owns what the two share; a subclass says what it registers
(``_register``), what to unregister when it stops (``_registrations``) and how it answers
BlueZ's method calls (``_serve``).

BlueZ forgets registrations when bluetoothd restarts (the ``org.bluez`` name changes owner),
when the adapter goes and comes back (``InterfacesAdded`` on its path), when it is powered on
again (``PropertiesChanged`` ``Powered``), and tells us when it drops an advertisement
(``Release``, which the subclass's ``_serve`` reports through ``_lost``). Any of these, or our
bus connection closing, marks us unregistered and wakes the supervisor (``run``), which
registers again, with exponential backoff (1 s doubling to 30 s) while it fails. A failure is
kept as one line fit for ``status`` (``last_error``), logged at warning the first time it is
seen and at debug while it repeats; nothing raises out of ``run``.
"""

from __future__ import annotations

import asyncio
import contextlib
from enum import StrEnum
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from hallway.logs import get_logger

log = get_logger(__name__)

BLUEZ = "org.bluez"
ADAPTER_IFACE = "org.bluez.Adapter1"
ADV_MANAGER_IFACE = "org.bluez.LEAdvertisingManager1"
ADVERTISEMENT_IFACE = "org.bluez.LEAdvertisement1"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
OM_IFACE = "org.freedesktop.DBus.ObjectManager"
INTROSPECT_IFACE = "org.freedesktop.DBus.Introspectable"
DBUS = "org.freedesktop.DBus"
CALL_TIMEOUT_S = 5.0
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0


class ExportState(StrEnum):
    """Where the registration supervisor is."""

    STOPPED = "stopped"
    REGISTERING = "registering"
    REGISTERED = "registered"
    BACKOFF = "backoff"


class RegisterError(Exception):
    """Registration failed; the message is fit for the status line."""


def introspection(interfaces: list[str], children: list[str]) -> str:
    """The ``Introspect`` XML of a node with these interfaces and child nodes."""
    nodes = "".join(f'<node name="{c}"/>' for c in children)
    ifaces = "".join(f'<interface name="{i}"/>' for i in interfaces)
    return f"<node>{ifaces}{nodes}</node>"


def property_reply(msg: Message, props: dict[str, dict[str, Variant]] | None) -> Message:
    """The answer to ``Properties.Get``/``GetAll`` on an object with ``props`` (by interface;
    None: no such object)."""
    values = None if props is None else props.get(msg.body[0])
    if values is None:
        return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs",
                                 "no such interface")
    if msg.member == "GetAll":
        return Message.new_method_return(msg, "a{sv}", [values])
    value = values.get(msg.body[1])
    if value is None:
        return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs",
                                 "no such property")
    return Message.new_method_return(msg, "v", [value])


class BluezExport:
    """Serve objects to BlueZ and keep them registered on one adapter (see the module)."""

    #: the prefix of our log events: ``<name>_registered``, ``<name>_register_failed``
    name = "bluez_export"
    #: how long the supervisor sleeps between checks while registered (``_tick`` after each)
    tick_s = 5.0

    def __init__(self, *, adapter: str) -> None:
        self._adapter_path = f"/org/bluez/{adapter}"
        self._bus: MessageBus | None = None
        self._owner: str | None = None
        self._registered_with: str | None = None  # the BlueZ owner that holds our objects
        self._wake = asyncio.Event()
        self._state = ExportState.STOPPED
        self._last_error: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._counts: dict[str, int] = {"registrations": 0, "register_failures": 0,
                                        "released": 0}

    # -- for subclasses -------------------------------------------------------------------
    async def _register(self, bus: MessageBus) -> None:
        """Register our objects with BlueZ (raise ``RegisterError`` on a refusal)."""
        raise NotImplementedError

    def _registrations(self) -> list[tuple[str, str, str]]:
        """(manager interface, unregister method, object path) of each registration."""
        raise NotImplementedError

    def _serve(self, msg: Message) -> Message | None:
        """Answer a method call on one of our paths (None: not ours)."""
        raise NotImplementedError

    def _tick(self) -> None:
        """Periodic work while registered (every ``tick_s`` at most)."""

    def _spawn(self, coro: Any, name: str) -> None:
        """Run ``coro`` as a task that ``run`` cancels when it stops."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lost(self) -> None:
        """Our registration is gone (BlueZ restarted, dropped it, or the adapter came back):
        register again."""
        self._registered_with = None
        self._wake.set()

    async def _unregister(self, bus: MessageBus) -> None:
        """Drop any registration this connection still holds (errors ignored)."""
        for iface, member, path in self._registrations():
            await self._call(bus, iface, member, "o", [path], check=False)

    async def _call(self, bus: MessageBus, iface: str, member: str, signature: str,
                    body: list[Any], *, path: str | None = None, check: bool = True) -> Message:
        """Call ``member`` on BlueZ (our adapter unless ``path``) with a timeout; with
        ``check``, an error reply raises ``RegisterError``."""
        reply = await _bus_call(bus, Message(
            destination=BLUEZ, path=path or self._adapter_path, interface=iface,
            member=member, signature=signature, body=body))
        if check and reply.message_type is MessageType.ERROR:
            text = (reply.body[0] if reply.body else "") or ""
            raise RegisterError(f"{member} failed: {reply.error_name} {text}".strip())
        return reply

    # -- status ---------------------------------------------------------------------------
    @property
    def state(self) -> ExportState:
        """The registration supervisor's state."""
        return self._state

    # -- the supervisor -------------------------------------------------------------------
    async def run(self) -> None:
        """Serve and keep registered until cancelled; BlueZ faults never raise out of here."""
        failures = 0
        try:
            while True:
                self._wake.clear()
                if await self._ensure_registered():
                    failures = 0
                    delay = self.tick_s
                else:
                    failures += 1
                    delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (failures - 1))
                    self._state = ExportState.BACKOFF
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                if self._state is ExportState.REGISTERED:
                    self._tick()
        finally:
            self._state = ExportState.STOPPED
            await self._close()

    async def _ensure_registered(self) -> bool:
        """Connect and register as needed; True when registered with BlueZ now."""
        owner = None
        try:
            async with asyncio.timeout(3 * CALL_TIMEOUT_S):
                await self._connect()
                owner = self._owner
                if owner is None:
                    raise RegisterError("BlueZ (org.bluez) is not on the system bus")
                if self._registered_with == owner:
                    return True
                self._state = ExportState.REGISTERING
                assert self._bus is not None
                await self._unregister(self._bus)  # a leftover from this connection
                await self._register(self._bus)
        except TimeoutError:
            error = "registration timed out"
        except RegisterError as exc:
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
            self._state = ExportState.REGISTERED
            self._counts["registrations"] += 1
            self._last_error = None
            log.info(f"{self.name}_registered", adapter=self._adapter_path.rsplit("/", 1)[1],
                     registrations=self._counts["registrations"])
            return True
        self._counts["register_failures"] += 1
        first = self._last_error != error
        self._last_error = error
        (log.warning if first else log.debug)(f"{self.name}_register_failed", error=error)
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
                f"type='signal',sender='{DBUS}',interface='{DBUS}',member='NameOwnerChanged',"
                f"arg0='{BLUEZ}'",
                f"type='signal',interface='{OM_IFACE}',member='InterfacesAdded',"
                f"arg0path='{self._adapter_path}'",
                f"type='signal',interface='{PROPS_IFACE}',member='PropertiesChanged',"
                f"path='{self._adapter_path}',arg0='{ADAPTER_IFACE}'",
            ):
                await _bus_call(bus, Message(destination=DBUS, path="/org/freedesktop/DBus",
                                             interface=DBUS, member="AddMatch",
                                             signature="s", body=[rule]))
            reply = await _bus_call(bus, Message(
                destination=DBUS, path="/org/freedesktop/DBus", interface=DBUS,
                member="GetNameOwner", signature="s", body=[BLUEZ]))
        except BaseException:
            bus.disconnect()
            raise
        self._owner = reply.body[0] if reply.message_type is MessageType.METHOD_RETURN else None
        self._bus = bus
        self._spawn(self._watch_disconnect(bus), f"hallway-{self.name}-bus-watch")

    async def _watch_disconnect(self, bus: MessageBus) -> None:
        with contextlib.suppress(Exception):
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        if self._bus is bus:
            self._bus = None
            self._lost()

    async def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        bus, self._bus = self._bus, None
        if bus is not None and bus.connected:
            if self._registered_with is not None and self._registered_with == self._owner:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await self._unregister(bus)
            bus.disconnect()
        self._registered_with = None

    # -- messages -------------------------------------------------------------------------
    def _on_message(self, msg: Message) -> Message | bool | None:
        if msg.message_type is MessageType.SIGNAL:
            self._on_signal(msg)
            return None
        if msg.message_type is not MessageType.METHOD_CALL or not msg.path \
                or not msg.path.startswith("/org/hallway"):
            return None
        try:
            return self._serve(msg) or Message.new_error(
                msg, "org.freedesktop.DBus.Error.UnknownMethod", "unknown method")
        except Exception:  # noqa: BLE001 - a bug guard: a malformed call must not reach the loop
            self._counts["internal_errors"] = self._counts.get("internal_errors", 0) + 1
            return Message.new_error(msg, "org.bluez.Error.Failed", "internal error")

    def _on_signal(self, msg: Message) -> None:
        member = msg.member
        if member == "NameOwnerChanged" and msg.sender == DBUS:
            name, _old, new = msg.body
            if name == BLUEZ:
                self._owner = new or None
                self._lost()
        elif msg.sender != self._owner or self._owner is None:
            return
        elif member == "InterfacesAdded" and msg.body[0] == self._adapter_path:
            if ADAPTER_IFACE in msg.body[1]:
                self._lost()  # the adapter came back: register on it again
        elif member == "PropertiesChanged" and msg.path == self._adapter_path:
            powered = msg.body[1].get("Powered")
            if powered is not None and powered.value:
                self._lost()


async def _bus_call(bus: MessageBus, message: Message) -> Message:
    async with asyncio.timeout(CALL_TIMEOUT_S):
        reply: Message = await bus.call(message)
    return reply
