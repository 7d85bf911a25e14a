"""BleakSource: advertisements from the Bluetooth adapter through BlueZ and bleak, supervised.

Theory of operation. bleak's BlueZ backend reports what bluetoothd signals on D-Bus and does
not notice bluetoothd dying, restarting or losing its adapter: the callback just stops. So the
source keeps its own D-Bus connection (``_BusWatch``) that follows who owns ``org.bluez``,
whether our adapter exists and is powered, and whether the bus itself is still there, and a
supervisor loop that moves through ``SourceState``:

    STARTING --started--> SCANNING --fault or silence--> STARTING (the scanner is rebuilt)
    STARTING --start_retries failures--> BACKOFF --delay (cut short when BlueZ or the
    adapter comes back)--> STARTING

Starts run under a lock, each bounded by ``start_timeout_s``; backoff doubles from 1 s up to
``backoff_max_s``. ``stop()`` on a scanner whose BlueZ died raises, which is expected and only
counted. Scanning is active by default with BlueZ's ``DuplicateData`` filter on, so a device
that keeps advertising keeps being reported (presence needs the steady stream). Every callback
the hand-off's ``screen`` lets through (all of them without one; a stranger's is only counted)
becomes an ``Advertisement`` stamped with ``time.time()`` (bleak gives no time) and goes into
the bounded ``Handoff`` without awaiting. bluetoothd keeps a device object for every address
it has heard; with rotating addresses that grows until it stalls, so device objects are
removed (``Adapter1.RemoveDevice``, which also drops bleak's own per-device entries): those
whose advertisements the screen ruled out (strangers') and those of resolvable private
addresses (which rotate; a phone present keeps refreshing its own) after ``stranger_prune_s``
of silence,
the others after ``device_prune_s``, and past ``max_devices`` objects the longest silent
strangers first; never those that are paired, bonded, trusted or connected. No stranger's
address is ever logged.

``mode = "passive"`` registers an advertisement monitor for the frames hallway resolves
(BlueZ >= 5.56 with ``--experimental``); without that support the source stays in BACKOFF
with bleak's explanation as ``last_error``. ``healthy()`` turns false when BlueZ holds a
discovery session of ours that only a restart of the process can clear (see below).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from bleak import BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.bluezdbus.manager import get_global_bluez_manager
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from hallway.config import ScannerConfig
from hallway.logs import FailureStreak, get_logger
from hallway.models import Advertisement
from hallway.sources.adapter_reset import ResetUnavailable, reset_adapter
from hallway.sources.base import Handoff, Screen, SourceState

log = get_logger(__name__)

_BLUEZ = "org.bluez"
_DBUS = "org.freedesktop.DBus"
_ADAPTER_IFACE = "org.bluez.Adapter1"
_DEVICE_IFACE = "org.bluez.Device1"
_STOP_TIMEOUT_S = 5.0
_CALL_TIMEOUT_S = 5.0
_BACKOFF_FIRST_S = 1.0
_PRUNE_PASS_S = 5.0  # and the time one pass may take (a stalled BlueZ must not hold the watch)
_PRUNE_PARALLEL = 64  # RemoveDevice calls in flight at once
_PROTECTING = ("Paired", "Bonded", "Trusted", "Connected")
_FAULTS = {  # bus events that end a running scan, and how the log names them
    "bluez-gone": "BlueZ (org.bluez) left the bus",
    "bluez-replaced": "BlueZ (org.bluez) restarted",
    "adapter-removed": "the adapter was removed",
    "powered-off": "the adapter was powered off",
    "bus-lost": "the connection to the system bus was lost",
}
# bluetoothd keeps a discovery session per D-Bus client. A StartDiscovery that timed out on our
# side but was carried out later leaves one that bleak cannot stop, and every later start then
# fails with InProgress until our bus connection closes: only a process restart clears it.
_IN_PROGRESS = "org.bluez.Error.InProgress"
_STALE_SESSION_AFTER = 3  # consecutive InProgress start failures before we say so
_STALE_SESSION_HINT = ("BlueZ holds a stale discovery session of this process; "
                       "restarting hallway clears it")
_RECOVERIES = frozenset({"bluez-appeared", "adapter-added", "powered-on"})
_NO_DATA: Mapping[str, bytes] = MappingProxyType({})
_RUNGS = ("none", "rebuild", "power-cycle", "reset", "gave up")
_RPA_FIRST = frozenset("4567")  # first hex digit of a resolvable private address
_ADDRESS_RE = re.compile(r"(?:[0-9A-Fa-f]{2}[:_-]){5}[0-9A-Fa-f]{2}")


def _not_running(_adv: Advertisement) -> None:
    raise RuntimeError("BleakSource.run is not running")


def _describe(exc: BaseException) -> str:
    """An exception as one line without any Bluetooth address in it."""
    text = str(exc).strip() or type(exc).__name__
    return _ADDRESS_RE.sub("<address>", text.splitlines()[0])[:300]


def _passive_patterns(company_id: int) -> list[OrPattern]:
    """Advertisement monitor patterns for passive scanning: the frames hallway can resolve.

    Phones identified only by their resolvable address carry no fixed pattern and are missed.
    """
    mfr = AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA
    svc16 = AdvertisementDataType.SERVICE_DATA_UUID16
    return [
        OrPattern(0, mfr, company_id.to_bytes(2, "little")),  # hallway-v1
        OrPattern(0, mfr, b"\x4c\x00\x02\x15"),  # iBeacon
        OrPattern(0, svc16, b"\x6f\xfd"),  # Exposure Notification frame
        OrPattern(0, svc16, b"\xaa\xfe"),  # Eddystone
    ]


def _bus_driver(member: str, arg: str) -> Message:
    return Message(destination=_DBUS, path="/org/freedesktop/DBus", interface=_DBUS,
                   member=member, signature="s", body=[arg])


class _StartError(Exception):
    """A start precondition failed; the message is fit for the status line. ``external``:
    the cause is outside the adapter (no bus, no BlueZ, no adapter, powered off by someone),
    so the recovery ladder does not climb for it."""

    def __init__(self, message: str, *, external: bool = False) -> None:
        super().__init__(message)
        self.external = external


class _BusWatch:
    """Our own system-bus connection: BlueZ's owner, our adapter, RemoveDevice."""

    def __init__(self, adapter_path: str, notify: Callable[[str], None]) -> None:
        self._adapter_path = adapter_path
        self._notify = notify
        self._bus: MessageBus | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.owner: str | None = None

    @property
    def connected(self) -> bool:
        """True while the connection is up."""
        return self._bus is not None and self._bus.connected

    async def ensure_connected(self) -> None:
        """Connect (again) if needed, subscribe to the signals, learn BlueZ's owner."""
        if self.connected:
            return
        self.close()
        bus = MessageBus(bus_type=BusType.SYSTEM)
        try:
            await bus.connect()
            bus.add_message_handler(self._on_message)
            path = self._adapter_path
            for rule in (
                f"type='signal',sender='{_DBUS}',interface='{_DBUS}',member='NameOwnerChanged',"
                f"arg0='{_BLUEZ}'",
                "type='signal',interface='org.freedesktop.DBus.ObjectManager',"
                f"member='InterfacesAdded',arg0path='{path}'",
                "type='signal',interface='org.freedesktop.DBus.ObjectManager',"
                f"member='InterfacesRemoved',arg0path='{path}'",
                "type='signal',interface='org.freedesktop.DBus.Properties',"
                f"member='PropertiesChanged',path='{path}',arg0='{_ADAPTER_IFACE}'",
            ):
                await self._call(bus, _bus_driver("AddMatch", rule))
            reply = await self._call(bus, _bus_driver("GetNameOwner", _BLUEZ), check=False)
        except BaseException:
            bus.disconnect()
            raise
        self.owner = reply.body[0] if reply.message_type is MessageType.METHOD_RETURN else None
        self._bus = bus
        self._watcher = asyncio.create_task(self._watch_disconnect(bus),
                                            name="hallway-bluez-bus-watch")

    async def adapter_state(self) -> tuple[bool, bool, str | None]:
        """``(present, powered, controller address)`` of our adapter, asked of BlueZ."""
        assert self._bus is not None
        reply = await self._call(self._bus, Message(
            destination=_BLUEZ, path=self._adapter_path,
            interface="org.freedesktop.DBus.Properties", member="GetAll", signature="s",
            body=[_ADAPTER_IFACE]), check=False)
        if reply.message_type is not MessageType.METHOD_RETURN:
            return False, False, None
        props = reply.body[0]
        powered = props.get("Powered")
        address = props.get("Address")
        return (True, bool(powered.value) if powered is not None else False,
                str(address.value) if address is not None else None)

    async def set_powered(self, on: bool) -> None:
        """``Adapter1.Powered = on``; raises ``_StartError`` if BlueZ refuses."""
        assert self._bus is not None
        await self._call(self._bus, Message(
            destination=_BLUEZ, path=self._adapter_path,
            interface="org.freedesktop.DBus.Properties", member="Set", signature="ssv",
            body=[_ADAPTER_IFACE, "Powered", Variant("b", on)]))

    async def find_adapter(self, address: str) -> str | None:
        """The object path of the adapter whose controller address is ``address``, if any."""
        assert self._bus is not None
        reply = await self._call(self._bus, Message(
            destination=_BLUEZ, path="/", interface="org.freedesktop.DBus.ObjectManager",
            member="GetManagedObjects"))
        for path, interfaces in reply.body[0].items():
            props = interfaces.get(_ADAPTER_IFACE)
            if props is not None and "Address" in props and props["Address"].value == address:
                return str(path)
        return None

    async def unprotected_devices(self) -> list[str]:
        """Object paths of our adapter's devices that are not paired, bonded or connected."""
        assert self._bus is not None
        reply = await self._call(self._bus, Message(
            destination=_BLUEZ, path="/", interface="org.freedesktop.DBus.ObjectManager",
            member="GetManagedObjects"))
        prefix = self._adapter_path + "/"
        paths = []
        for path, interfaces in reply.body[0].items():
            props = interfaces.get(_DEVICE_IFACE)
            if props is None or not path.startswith(prefix):
                continue
            if not any(props[k].value for k in _PROTECTING if k in props):
                paths.append(path)
        return paths

    async def remove_device(self, path: str) -> bool:
        """``Adapter1.RemoveDevice``; True if removed or already gone."""
        assert self._bus is not None
        reply = await self._call(self._bus, Message(
            destination=_BLUEZ, path=self._adapter_path, interface=_ADAPTER_IFACE,
            member="RemoveDevice", signature="o", body=[path]), check=False)
        return (reply.message_type is MessageType.METHOD_RETURN
                or reply.error_name == "org.bluez.Error.DoesNotExist")

    def close(self) -> None:
        """Drop the connection (idempotent)."""
        bus, self._bus = self._bus, None
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
        if bus is not None:
            bus.disconnect()

    @staticmethod
    async def _call(bus: MessageBus, message: Message, *, check: bool = True) -> Message:
        async with asyncio.timeout(_CALL_TIMEOUT_S):
            reply: Message = await bus.call(message)
        if check and reply.message_type is MessageType.ERROR:
            raise _StartError(f"{message.member} failed: {reply.error_name}")
        return reply

    async def _watch_disconnect(self, bus: MessageBus) -> None:
        with contextlib.suppress(Exception):
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        if self._bus is bus:
            self._notify("bus-lost")

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is not MessageType.SIGNAL:
            return
        member = msg.member
        if member == "NameOwnerChanged" and msg.sender == _DBUS:
            name, old, new = msg.body
            if name != _BLUEZ:
                return
            self.owner = new or None
            self._notify("bluez-gone" if not new else "bluez-appeared" if not old
                         else "bluez-replaced")
        elif msg.sender != self.owner or self.owner is None:
            return  # only BlueZ itself speaks for the adapter
        elif member == "InterfacesAdded" and msg.body[0] == self._adapter_path:
            if _ADAPTER_IFACE in msg.body[1]:
                self._notify("adapter-added")
        elif member == "InterfacesRemoved" and msg.body[0] == self._adapter_path:
            if _ADAPTER_IFACE in msg.body[1]:
                self._notify("adapter-removed")
        elif member == "PropertiesChanged" and msg.path == self._adapter_path:
            powered = msg.body[1].get("Powered")
            if powered is not None:
                self._notify("powered-on" if powered.value else "powered-off")


class BleakSource:
    """Supervised BLE scanning through bleak's BlueZ backend (see the module docstring)."""

    def __init__(self, config: ScannerConfig, *, company_id: int = 0xFFFF,
                 wall_clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 sysfs: Path = Path("/sys"), dev: Path = Path("/dev")) -> None:
        self.name = f"bleak:{config.adapter}"
        self._cfg = config
        self._adapter = config.adapter  # the name BlueZ gives it now (it may change)
        self._adapter_address: str | None = None  # the controller's, learned at the first start
        self._sysfs = sysfs
        self._dev = dev
        # The recovery ladder (see _climb): the next rung, what the last step did, and why
        # a reset is not possible here (None: not tried yet, or it worked).
        self._rung = 0
        self._last_step: str | None = None
        self._cleared_by: str | None = None
        self._wedged_since: float | None = None
        self._last_recovery_s: float | None = None
        self._reset_unavailable: str | None = None
        self._gave_up = False
        self._external_failure = False
        self._powering_on = False  # we powered the adapter off: power it on before starting
        self._company_id = company_id
        self._wall = wall_clock
        self._mono = monotonic
        self._adapter_path = f"/org/bluez/{config.adapter}"
        self._state = SourceState.STOPPED
        self._status = "stopped"
        self._last_error: str | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._fault: str | None = None
        self._watch = _BusWatch(self._adapter_path, self._on_bus_event)
        self._scanner: BleakScanner | None = None
        self._put: Callable[[Advertisement], None] = _not_running
        self._screen: Screen | None = None
        self._screened = 0  # advertisements the screen ruled out (strangers'): counted only
        self._on_screened: Callable[[float], None] | None = None  # ... and their times, if wanted
        self._running = False
        self._progress = monotonic()
        self._last_heard = monotonic()
        self._scan_started = monotonic()
        self._failed_cycles = 0
        self._faults = FailureStreak(log)  # radio faults since the last advertisement
        self._start_failures = FailureStreak(log)  # failed starts since the last success
        self._in_progress_streak = 0
        self._stale_session = False
        self._heard = 0
        # device object path -> last heard (monotonic), in order of last hearing for
        # strangers (their dict is re-inserted on each hearing, so its head is the oldest)
        self._seen: dict[str, float] = {}
        self._strangers: dict[str, float] = {}
        # bleak's own per-device dicts (its BlueZ manager's properties, the scanner's seen
        # devices), where a stranger's entry is dropped at once (scanner.forget_strangers)
        self._bleak_props: dict[str, object] | None = None
        self._bleak_seen: dict[str, object] | None = None
        self._seeded = False
        self._next_prune = 0.0
        self._max_devices = config.max_devices
        self._prune_interval = max(0.25, min(config.device_prune_s / 2,
                                             config.stranger_prune_s / 4, 30.0))
        self._stall_s = config.start_timeout_s + _STOP_TIMEOUT_S + 2 * _CALL_TIMEOUT_S + 5.0
        self._counts = dict.fromkeys(
            ("malformed", "rebuilds", "start_failures", "stop_errors", "pruned",
             "prune_errors", "bluez_restarts", "power_cycles", "resets", "gave_up",
             "adapter_renamed"), 0)

    # -- AdvertisementSource ------------------------------------------------------------
    @property
    def state(self) -> SourceState:
        """The supervisor's current state."""
        return self._state

    @property
    def last_error(self) -> str | None:
        """The latest start failure or scan fault, without addresses."""
        return self._last_error

    def healthy(self, now: float) -> bool:
        """Running, not FAILED, and the supervisor made progress within its own time bounds.

        ``now`` is ``time.monotonic()``. A silent room is legitimately idle: silence rebuilds
        the scanner, and a scanner that started fine and still hears nothing is healthy. Not
        healthy once BlueZ holds a discovery session of ours that only a restart can clear.
        """
        if (not self._running or self._state is SourceState.FAILED or self._stale_session
                or self._gave_up):
            return False
        return now - self._progress <= self._stall_s

    def stats(self) -> dict[str, int | float | str]:
        """Counters, the number of tracked BlueZ devices, silence so far and the status line."""
        return {
            "state": self._state.value,
            "status": self._status,
            **self._counts,
            "heard": self._heard,
            "screened": self._screened,
            "tracked_devices": len(self._seen) + len(self._strangers),
            "tracked_strangers": len(self._strangers),
            "forgetting_strangers": int(self._bleak_props is not None),
            "adapter": self._adapter,
            "recovery_rung": _RUNGS[min(self._rung, len(_RUNGS) - 1)],
            "cleared_by": self._cleared_by or "",
            "last_recovery_s": -1.0 if self._last_recovery_s is None else self._last_recovery_s,
            "reset": self._reset_unavailable or "not needed yet",
            "silence_s": round(self._mono() - self._last_heard, 3),
        }

    async def run(self, handoff: Handoff) -> None:
        """Scan into ``handoff`` until cancelled, rebuilding the scanner whenever it is lost."""
        if self._running:
            raise RuntimeError("BleakSource.run is already running")
        self._running = True
        self._put = handoff.put_nowait
        self._screen = handoff.screen
        self._on_screened = handoff.heard
        try:
            if sys.platform != "linux":
                self._last_error = "the bleak source needs Linux and BlueZ"
                self._set_state(SourceState.FAILED, f"failed: {self._last_error}")
                await asyncio.Event().wait()
            while True:
                if await self._start_cycle():
                    reason = await self._scan()
                    self._counts["rebuilds"] += 1
                    await self._release_dead_bus()
                    await self._stop_scanner()
                    self._note_fault(reason)
                    if reason.startswith("nothing heard"):
                        await self._climb(silence=True)
                    continue
                self._failed_cycles += 1
                if not self._external_failure:
                    self._rung = max(self._rung, 1)  # the cycle was the rebuild
                    if await self._climb(silence=False):
                        continue
                delay = min(self._cfg.backoff_max_s,
                            _BACKOFF_FIRST_S * 2 ** (self._failed_cycles - 1))
                first = self._failed_cycles == 1
                status = f"retrying in {delay:g} s: {self._last_error}"
                if self._gave_up:
                    status = (f"gave up on {self._adapter} after a rebuild, a power-cycle and "
                              f"a reset ({self._reset_unavailable or 'done'}); the watchdog "
                              f"decides; still retrying in {delay:g} s: {self._last_error}")
                if self._stale_session:
                    status += f" ({_STALE_SESSION_HINT})"
                self._set_state(SourceState.BACKOFF, status, quiet=not first)
                await self._pause(delay)
        finally:
            self._running = False
            await self._stop_scanner()
            self._watch.close()
            self._set_state(SourceState.STOPPED, "stopped")

    # -- supervisor ---------------------------------------------------------------------
    def _set_state(self, state: SourceState, status: str, *, quiet: bool = False) -> None:
        changed = state is not self._state or status != self._status
        self._state = state
        self._status = status
        if not changed:
            return
        if state in (SourceState.BACKOFF, SourceState.FAILED):
            emit = log.debug if quiet else log.warning
        else:
            emit = log.debug if quiet else log.info
        emit("scanner_state", source=self.name, state=state.value, status=status)

    def _note_fault(self, reason: str) -> None:
        self._last_error = reason
        self._faults.failed("scanner_lost_rebuilding", source=self.name, reason=reason,
                            rebuilds=self._counts["rebuilds"])

    def _on_bus_event(self, kind: str) -> None:
        if kind in ("bluez-replaced", "bluez-appeared"):
            self._counts["bluez_restarts"] += 1
        if self._state is SourceState.SCANNING and kind in _FAULTS:
            if self._fault is None:
                self._fault = _FAULTS[kind]
            self._wake.set()
        elif kind in _RECOVERIES:
            self._wake.set()

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds in slices; BlueZ or the adapter coming back ends it early.

        ``_wake`` is cleared before each start attempt, not here, so a recovery signalled
        while an attempt was failing still cuts this pause short.
        """
        deadline = self._mono() + delay
        while (left := deadline - self._mono()) > 0:
            self._progress = self._mono()
            if not self._watch.connected:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(min(left, _CALL_TIMEOUT_S)):
                        await self._watch.ensure_connected()
                if self._watch.connected and self._watch.owner is not None:
                    return
            # Without a bus no signal can wake us: look again for it sooner.
            slice_s = 1.0 if self._watch.connected else 0.25
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, slice_s)):
                    await self._wake.wait()
                    return

    async def _start_cycle(self) -> bool:
        """Up to ``start_retries`` bounded attempts; True once scanning."""
        retries = self._cfg.start_retries
        for attempt in range(1, retries + 1):
            self._progress = self._mono()
            self._set_state(SourceState.STARTING,
                            f"starting on {self._adapter} (attempt {attempt}/{retries})",
                            quiet=self._failed_cycles > 0 or self._faults.count > 1)
            self._wake.clear()
            self._external_failure = False
            try:
                async with self._lock, asyncio.timeout(self._cfg.start_timeout_s):
                    await self._start_once()
            except TimeoutError:
                error = f"start timed out after {self._cfg.start_timeout_s:g} s"
            except _StartError as exc:
                error = str(exc)
                self._external_failure = exc.external
            except Exception as exc:  # noqa: BLE001 - any radio fault means "retry", never "crash"
                error = _describe(exc)
            else:
                self._start_failures.ended()
                self._in_progress_streak = 0
                self._stale_session = False
                self._set_state(SourceState.SCANNING, f"scanning on {self._adapter}",
                                quiet=self._faults.count > 1)
                return True
            self._progress = self._mono()
            if self._wedged_since is None:
                self._wedged_since = self._mono()
            self._counts["start_failures"] += 1
            self._in_progress_streak = (self._in_progress_streak + 1
                                        if _IN_PROGRESS in error else 0)
            if self._in_progress_streak >= _STALE_SESSION_AFTER and not self._stale_session:
                self._stale_session = True
                log.error("scanner_cannot_start", source=self.name, reason=_STALE_SESSION_HINT)
            self._last_error = error
            self._start_failures.failed("scanner_start_failed", source=self.name,
                                        attempt=attempt, error=error)
            await self._stop_scanner()
            if attempt < retries:
                await self._pause(min(0.5 * attempt, self._cfg.backoff_max_s))
        return False

    async def _start_once(self) -> None:
        try:
            await self._watch.ensure_connected()
        except OSError as exc:
            raise _StartError(f"cannot reach the system bus: {exc.strerror or exc}",
                              external=True) from None
        if self._watch.owner is None:
            raise _StartError("BlueZ (org.bluez) is not on the system bus", external=True)
        present, powered, address = await self._watch.adapter_state()
        if not present and self._adapter_address is not None:
            present, powered, address = await self._follow_adapter()
        if not present:
            raise _StartError(f"adapter {self._adapter} not found", external=True)
        if not powered and self._powering_on:
            # Our power-cycle was cut short between off and on (a stalled BlueZ answering
            # late): finish it, or the adapter would stay off for good.
            await self._watch.set_powered(True)
            present, powered, address = await self._watch.adapter_state()
        if not powered:
            raise _StartError(f"adapter {self._adapter} is powered off", external=True)
        self._powering_on = False
        if address:
            self._adapter_address = address
        self._seeded = False  # a (re)started bluetoothd may hold devices we never heard
        bluez: BlueZScannerArgs = {"adapter": self._adapter}
        if self._cfg.mode == "passive":
            bluez["or_patterns"] = list(_passive_patterns(self._company_id))
        else:
            bluez["filters"] = {"DuplicateData": True}
        self._fault = None
        scanner = BleakScanner(self._on_detect, scanning_mode=self._cfg.mode, bluez=bluez)
        self._scanner = scanner
        try:
            await scanner.start()
        except Exception as exc:
            if self._cfg.mode == "passive" and "requires BlueZ" in str(exc):
                # BlueZ lacks advertisement monitors: configuration, not a wedged adapter.
                raise _StartError(_describe(exc), external=True) from None
            raise
        now = self._mono()
        self._scan_started = now
        self._last_heard = now
        self._next_prune = now + self._prune_interval
        self._bleak_props = self._bleak_seen = None
        if self._cfg.forget_strangers:
            # bleak keeps every device's properties and last advertisement until BlueZ
            # removes its object; a stranger's are dropped at its first advertisement (its
            # repeats then go unparsed: bleak ignores changes of objects it does not know).
            # Private attributes: if a bleak release renames them, this stays off.
            manager = await get_global_bluez_manager()
            props = getattr(manager, "_properties", None)
            seen = getattr(getattr(scanner, "_backend", None), "seen_devices", None)
            if isinstance(props, dict) and isinstance(seen, dict):
                self._bleak_props, self._bleak_seen = props, seen

    async def _scan(self) -> str:
        """Watch a running scan; return why it must be rebuilt."""
        silence = self._cfg.silence_restart_s
        tick = min(1.0, silence / 4)
        while True:
            now = self._mono()
            self._progress = now
            if self._fault is not None:
                return self._fault
            if now - self._last_heard > silence:
                return f"nothing heard for {silence:g} s"
            if now >= self._next_prune:
                await self._prune(now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._wake.wait()

    async def _release_dead_bus(self) -> None:
        """Let bleak's manager drop its bus if it died, before the old scanner is stopped.

        Its reconnect (which may fail) closes a dead connection as a deliberate disconnect,
        so the doomed StopDiscovery in ``stop()`` fails quietly instead of leaving dbus-fast
        a failed send future nobody retrieves (logged as an error when it is collected). With
        a live bus this returns at once.
        """
        await asyncio.sleep(0)  # let bleak's reader see an EOF that arrived with ours
        with contextlib.suppress(Exception):
            async with asyncio.timeout(min(_CALL_TIMEOUT_S, self._cfg.start_timeout_s)):
                await get_global_bluez_manager()

    async def _stop_scanner(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is None:
            return
        try:
            async with self._lock, asyncio.timeout(min(_STOP_TIMEOUT_S, self._cfg.start_timeout_s)):
                await scanner.stop()
        except Exception as exc:  # noqa: BLE001 - a dead BlueZ or bus makes stop() fail: expected
            self._counts["stop_errors"] += 1
            log.debug("scanner_stop_failed", source=self.name, error=_describe(exc))

    # -- the callback (hot path) ----------------------------------------------------------
    def _on_detect(self, device: BLEDevice, data: AdvertisementData) -> None:
        # Runs once per advertisement on bleak's D-Bus reader: screen, record, stamp, hand off.
        now = self._mono()
        self._last_heard = now
        self._heard += 1
        if self._failed_cycles or self._faults.count or self._wedged_since is not None:
            self._recovered()
        try:
            path, props = data.platform_data
            get = props.get
            protected = bool(get("Connected") or get("Paired") or get("Bonded")
                             or get("Trusted"))
            address = device.address
            address_type = get("AddressType", "public")
            manufacturer_data = data.manufacturer_data
            service_data = data.service_data
            uuids = data.service_uuids
            screen = self._screen
            if screen is not None and not screen(
                address, address_type, manufacturer_data, service_data, uuids
            ):
                self._screened += 1
                heard = self._on_screened
                if heard is not None:
                    heard(self._wall())
                if self._bleak_props is not None and self._bleak_seen is not None:
                    self._bleak_props.pop(path, None)
                    self._bleak_seen.pop(path, None)
                if not protected:
                    # A stranger's device object: kept only for stranger_prune_s of silence.
                    strangers = self._strangers
                    strangers.pop(path, None)
                    strangers[path] = now
                    if (len(strangers) + len(self._seen) > self._max_devices
                            and self._next_prune > now):
                        # A flood of new addresses: bleak and BlueZ hold every device
                        # object, so memory stays bounded only by pruning at once.
                        self._next_prune = now
                        self._wake.set()
                return
            if protected:
                self._seen.pop(path, None)
            elif address_type == "random" and address[:1] in _RPA_FIRST:
                # A resolvable private address rotates every 15 minutes or so and a phone
                # present keeps refreshing it: its object is pruned on the strangers'
                # schedule (a flood of new RPAs must not wait device_prune_s), but bleak
                # keeps it (it may be a contact's, resolved by IRK).
                strangers = self._strangers
                strangers.pop(path, None)
                strangers[path] = now
                if (len(strangers) + len(self._seen) > self._max_devices
                        and self._next_prune > now):
                    self._next_prune = now
                    self._wake.set()
            else:
                self._strangers.pop(path, None)
                seen = self._seen
                seen[path] = now
                if len(seen) + len(self._strangers) > self._max_devices \
                        and self._next_prune > now:
                    self._next_prune = now
                    self._wake.set()
            adv = Advertisement(  # positional, in field order: keywords cost twice as much
                self._wall(),
                address.upper(),
                address_type,
                data.rssi,
                data.tx_power,
                data.local_name,
                manufacturer_data,
                {k.lower(): v for k, v in service_data.items()} if service_data else _NO_DATA,
                tuple([u.lower() for u in uuids]) if uuids else (),
                self._cfg.adapter,
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            self._counts["malformed"] += 1
            return
        self._put(adv)

    def _recovered(self) -> None:
        now = self._mono()
        took = now - self._scan_started
        fields: dict[str, object] = {"first_after_start_s": round(took, 3)}
        if self._rung:
            self._cleared_by = self._last_step or "rebuild"
            fields["cleared_by"] = self._cleared_by
            if self._wedged_since is not None:
                self._last_recovery_s = round(now - self._wedged_since, 3)
                fields["since_fault_s"] = self._last_recovery_s
        log.info("scanner_hearing_again", source=self.name, **fields)
        self._failed_cycles = 0
        self._faults.ended()
        self._rung = 0
        self._last_step = None
        self._wedged_since = None
        self._gave_up = False

    # -- the recovery ladder ----------------------------------------------------------------
    async def _climb(self, *, silence: bool) -> bool:
        """One rung up the ladder after a rebuild did not bring advertisements back.

        Rungs: rebuild the scanner (what every start cycle does), power-cycle the adapter
        (``Adapter1.Powered`` off and on), reset it below BlueZ (rfkill, else USB; see
        ``adapter_reset``), give up: ``healthy()`` turns false so the service stops feeding
        the systemd watchdog, which decides (restart, or not), while the source keeps
        retrying. Silence alone never gives up (a silent room is legitimately idle): past the
        reset it only rebuilds. Anything heard (``_recovered``) resets the ladder. True when
        a step was taken (start again at once), False to back off.
        """
        if self._wedged_since is None:
            self._wedged_since = self._mono() - (self._cfg.silence_restart_s if silence else 0)
        rung = self._rung
        self._rung = rung + 1
        if rung == 0:
            self._last_step = "rebuild"
            return True
        if rung == 1:
            return await self._power_cycle()
        if rung == 2:
            return await self._reset()
        if silence:
            self._rung = 3  # rebuild only from here on
            self._last_step = "rebuild"
            return True
        self._last_step = "retry after giving up"
        if not self._gave_up:
            self._gave_up = True
            self._counts["gave_up"] += 1
            log.error("scanner_gave_up", source=self.name, adapter=self._adapter,
                      reason=self._last_error, reset=self._reset_unavailable or "done",
                      hint="the adapter stays wedged after a rebuild, a power-cycle and a "
                           "reset; the service watchdog decides (restart), or replug it")
        return False

    async def _power_cycle(self) -> bool:
        self._last_step = "power-cycle"
        self._counts["power_cycles"] += 1
        self._set_state(SourceState.STARTING, f"power-cycling {self._adapter} (recovery)")
        log.warning("adapter_power_cycling", source=self.name, adapter=self._adapter,
                    reason=self._last_error)
        try:
            async with asyncio.timeout(self._cfg.start_timeout_s + 0.5):
                await self._watch.ensure_connected()
                self._powering_on = True
                await self._watch.set_powered(False)
                await asyncio.sleep(0.5)
                await self._watch.set_powered(True)
        except Exception as exc:  # noqa: BLE001 - a failed step is reported; the ladder goes on
            self._last_error = f"power-cycle failed: {_describe(exc)}"
            log.warning("adapter_power_cycle_failed", source=self.name, error=self._last_error)
        return True

    async def _reset(self) -> bool:
        self._last_step = "reset"
        self._set_state(SourceState.STARTING, f"resetting {self._adapter} (recovery)")
        try:
            done = await reset_adapter(self._adapter, sysfs=self._sysfs, dev=self._dev)
        except ResetUnavailable as exc:
            self._last_step = "rebuild after a reset that was not possible"
            self._reset_unavailable = f"reset not possible: {exc}"
            log.warning("adapter_reset_not_possible", source=self.name, adapter=self._adapter,
                        reason=str(exc))
            if self._state_silence():
                return True  # silence: rebuild again
            return await self._climb(silence=False)  # starts keep failing: give up now
        self._reset_unavailable = None
        self._counts["resets"] += 1
        log.warning("adapter_reset", source=self.name, adapter=self._adapter, how=done)
        # The controller comes back (maybe under another name): wait for BlueZ to show it.
        deadline = self._mono() + self._cfg.start_timeout_s + 5.0
        while self._mono() < deadline:
            with contextlib.suppress(Exception):
                present, powered, _ = await self._watch.adapter_state()
                if not present and self._adapter_address is not None:
                    present, powered, _ = await self._follow_adapter()
                if present and powered:
                    break
                if present and not powered:
                    await self._watch.set_powered(True)
            await asyncio.sleep(0.2)
        return True

    def _state_silence(self) -> bool:
        return self._last_error is not None and self._last_error.startswith("nothing heard")

    async def _follow_adapter(self) -> tuple[bool, bool, str | None]:
        """Our controller under another name (hci0 -> hci1 after a reset or replug)?"""
        assert self._adapter_address is not None
        path = await self._watch.find_adapter(self._adapter_address)
        if path is None:
            return False, False, None
        old, self._adapter = self._adapter, path.rsplit("/", 1)[-1]
        self._adapter_path = path
        self._watch.close()
        self._watch = _BusWatch(path, self._on_bus_event)
        await self._watch.ensure_connected()
        self._counts["adapter_renamed"] += 1
        log.warning("adapter_renamed", source=self.name, was=old, now=self._adapter)
        return await self._watch.adapter_state()

    # -- pruning --------------------------------------------------------------------------
    async def _prune(self, now: float) -> None:
        """Remove BlueZ device objects: strangers' after ``stranger_prune_s`` of silence,
        others' after ``device_prune_s``, and the oldest strangers' (then others') past
        ``max_devices``."""
        self._next_prune = now + self._prune_interval
        before = self._counts["pruned"]
        try:
            async with asyncio.timeout(_PRUNE_PASS_S):
                await self._prune_pass(now)
        except Exception as exc:  # noqa: BLE001 - pruning is housekeeping; the scan goes on
            self._counts["prune_errors"] += 1
            log.debug("device_pruning_failed", source=self.name, error=_describe(exc))
        if removed := self._counts["pruned"] - before:
            log.debug("bluez_devices_pruned", source=self.name, removed=removed,
                      tracked=len(self._seen) + len(self._strangers))

    def _prune_list(self, now: float) -> list[str]:
        """The device objects due for removal now, strangers first."""
        stranger_cutoff = now - min(self._cfg.stranger_prune_s, self._cfg.device_prune_s)
        stale: list[str] = []
        for path, heard in self._strangers.items():  # oldest first
            if heard >= stranger_cutoff:
                break
            stale.append(path)
        cutoff = now - self._cfg.device_prune_s
        stale_known = [p for p, heard in self._seen.items() if heard < cutoff]
        total = len(self._strangers) + len(self._seen)
        excess = total - len(stale) - len(stale_known) - self._max_devices
        if excess > 0:
            excess += self._max_devices // 10  # room, so a flood does not prune on every tick
            extra = list(itertools.islice(self._strangers, len(stale), len(stale) + excess))
            stale.extend(extra)
            excess -= len(extra)
            if excess > 0:
                fresh = sorted((h, p) for p, h in self._seen.items() if h >= cutoff)
                stale_known.extend(p for _h, p in fresh[:excess])
        return stale + stale_known

    async def _prune_pass(self, now: float) -> None:
        if not self._seeded:
            for path in await self._watch.unprotected_devices():
                if path not in self._strangers:
                    self._seen.setdefault(path, now)
            self._seeded = True
        batch = self._prune_list(now)
        if not batch:
            return
        # A sliding window of RemoveDevice calls in flight (BlueZ answers each in turn; the
        # system bus allows a connection 128 pending replies).
        window = asyncio.Semaphore(_PRUNE_PARALLEL)

        async def remove(path: str) -> None:
            try:
                removed = await self._watch.remove_device(path)
            except Exception:  # noqa: BLE001 - counted; the next pass tries again
                removed = False
            finally:
                window.release()
            self._seen.pop(path, None)  # only now: a pass cut short retries the rest later
            self._strangers.pop(path, None)
            self._counts["pruned" if removed else "prune_errors"] += 1

        tasks = []
        try:
            for path in batch:
                await window.acquire()
                tasks.append(asyncio.create_task(remove(path)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
