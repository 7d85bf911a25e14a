"""``hallway doctor``'s checks: each says what it looked at, what it found and how to fix it.

The checks only look; they never change anything (the database is opened read-only, sockets are
bound and closed at once, BlueZ is asked read-only questions). They are independent where they
can be: a failing D-Bus connection skips the BlueZ checks behind it, nothing else.

File permissions are judged for the account the daemon runs as: the service user (``hallway``)
when doctor runs as root and that user exists, else the caller (``--user`` overrides).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import grp
import ipaddress
import json
import os
import pwd
import shutil
import socket
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from zeroconf import InterfaceChoice
from zeroconf.asyncio import AsyncZeroconf

from hallway import mqtt_check  # a cycle: it uses doctor.Check; names used at call time
from hallway.commands._common import state_dir
from hallway.config import INSTALLED_CONFIG, Config, find_config_path, load_config
from hallway.errors import ConfigError
from hallway.files import loose_bits
from hallway.identity.irk import available_backends
from hallway.sources.adapter_reset import ResetUnavailable, reset_method
from hallway.store import SCHEMA_VERSION

SERVICE_USER = "hallway"
BLUETOOTH_GROUP = "bluetooth"
RFKILL_ROOT = Path("/sys/class/rfkill")
BLUEZ = "org.bluez"
ADAPTER_IFACE = "org.bluez.Adapter1"
MONITOR_MANAGER_IFACE = "org.bluez.AdvertisementMonitorManager1"
ADV_MANAGER_IFACE = "org.bluez.LEAdvertisingManager1"
GATT_MANAGER_IFACE = "org.bluez.GattManager1"
# A wall clock before this (2025-01-01 UTC) is certainly wrong: hallway did not exist yet.
CLOCK_FLOOR_TS = 1735689600.0
CLOCK_CEILING_TS = 4102444800.0  # 2100-01-01
_TIME_ERROR = 5  # adjtimex(2): the kernel's clock is not synchronised


class Status(StrEnum):
    """A check's outcome; only FAIL makes doctor exit non-zero."""

    OK = "ok"
    WARN = "warn"  # works, but something deserves a look
    FAIL = "fail"
    SKIP = "skip"  # not applicable, or a check it depends on failed


@dataclass(frozen=True, slots=True)
class Check:
    """One check's result."""

    name: str
    title: str
    status: Status
    detail: str
    fix: str | None = None


@dataclass(frozen=True, slots=True)
class Account:
    """Whose file permissions are judged: a uid with its groups."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def current(cls) -> Account:
        """The calling process's account."""
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(name, uid, frozenset({os.getegid(), *os.getgroups()}))

    @classmethod
    def named(cls, name: str) -> Account:
        """A user from the account database; KeyError if there is none."""
        entry = pwd.getpwnam(name)
        gids = {entry.pw_gid}
        gids.update(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)
        return cls(name, entry.pw_uid, frozenset(gids))

    def may(self, path: Path, want: int) -> bool:
        """Whether this account has the ``want`` bits (R_OK/W_OK/X_OK) on ``path`` by its mode."""
        if self.uid == 0:
            return True
        try:
            info = path.stat()
        except OSError:
            return False
        if info.st_uid == self.uid:
            shift = 6
        elif info.st_gid in self.gids:
            shift = 3
        else:
            shift = 0
        return (info.st_mode >> shift) & want == want

    def can_reach(self, path: Path) -> bool:
        """Whether every folder above ``path`` can be entered by this account."""
        return all(self.may(parent, os.X_OK) for parent in path.parents)


@dataclass
class DoctorOptions:
    """What to check and how; the defaults look at this machine."""

    config_path: str | None = None
    db_override: str | None = None
    user: str | None = None
    role: str | None = None  # "scanner" or "venue"; None: venue when the config has rooms
    timeout_s: float = 5.0
    rfkill_root: Path = RFKILL_ROOT
    sysfs_root: Path = Path("/sys")  # where the recovery ladder's reset finds the adapter
    dev_root: Path = Path("/dev")
    now: Callable[[], float] = time.time
    clock_synchronised: Callable[[], bool | None] = field(
        default=lambda: kernel_clock_synced())  # noqa: PLW0108 - defined further down


@dataclass
class Report:
    """Every check's result, in order."""

    config_path: str | None
    account: str
    checks: list[Check]
    role: str = "scanner"

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return all(c.status is not Status.FAIL for c in self.checks)

    def as_json(self) -> dict[str, Any]:
        """The machine-readable form printed by ``hallway doctor --json``."""
        return {
            "ok": self.ok,
            "config": self.config_path,
            "role": self.role,
            "account": self.account,
            "checks": [{**asdict(c), "status": c.status.value} for c in self.checks],
        }


_TITLES = {
    "database": "database reachable and migrated",
    "unix_socket": "Unix socket path usable",
    "tcp_socket": "TCP listener",
    "tls": "TCP socket encrypted off loopback",
    "mdns": "mDNS able to bind",
    "secret_files": "secret files private",
}


@dataclass(frozen=True, slots=True)
class Commands:
    """How the fix lines spell commands so that they work as printed on this machine: the
    ``hallway`` found on PATH (else the one running now, by its full path), run as the service
    user where the service's files are concerned, with ``--config`` unless the config is the
    one every command finds by itself, and the systemd unit of the role."""

    hallway: str
    as_service: str  # "sudo -u hallway " or ""
    config_arg: str  # " --config FILE" or ""
    unit: str

    @classmethod
    def for_run(cls, config_path: str | None, account: Account, role: str) -> Commands:
        here = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
        found = shutil.which("hallway")
        if found is not None:
            program = "hallway"
        elif here is not None and here.name == "hallway" and here.exists():
            program = str(here.resolve())
        else:
            program = f"{sys.executable} -m hallway"
        me = Account.current()
        as_service = "" if account.uid == me.uid else f"sudo -u {account.name} "
        implicit = find_config_path(None)
        config_arg = "" if config_path is None or config_path == implicit else (
            f" --config {config_path}")
        return cls(program, as_service, config_arg,
                   "hallway-venue" if role == "venue" else "hallway")

    def service(self, args: str) -> str:
        """``hallway ARGS`` as the service user, with the config."""
        head, _, rest = args.partition(" <")
        redirect = f" <{rest}" if rest else ""
        return f"{self.as_service}{self.hallway} {head}{self.config_arg}{redirect}"

    def systemctl(self, verb: str) -> str:
        """``sudo systemctl VERB UNIT``."""
        return f"sudo systemctl {verb} {self.unit}"


def choose_account(user: str | None) -> Account:
    """``--user``, else the service user when run as root, else the caller."""
    if user:
        return Account.named(user)
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            return Account.named(SERVICE_USER)
    return Account.current()


async def diagnose(options: DoctorOptions) -> Report:
    """Run every check; never raises for what it finds."""
    path = find_config_path(options.config_path)
    try:
        account = choose_account(options.user)
    except KeyError:
        account = Account.current()
        user_problem: str | None = f"no user named {options.user!r}; judged as {account.name}"
    else:
        user_problem = None
    checks: list[Check] = []
    config_check, config = _check_config(path)
    checks.append(config_check)
    role = options.role or ("venue" if config is not None and config.venue.rooms else "scanner")
    commands = Commands.for_run(path, account, role)
    if config is not None and options.db_override:
        storage = config.storage.model_copy(update={"database": options.db_override})
        config = config.model_copy(update={"storage": storage})
    if user_problem:
        checks.append(Check("account", "account judged", Status.WARN, user_problem,
                            "pass an existing user with --user"))
    def skipped(name: str) -> Check:
        return Check(name, _TITLES[name], Status.SKIP, "needs a valid config")

    checks.append(skipped("database") if config is None else _check_database(
        config, account, commands, contacts_matter=role != "venue"))
    checks.append(skipped("secret_files") if config is None else _check_secret_files(config))
    if role == "venue":
        checks.append(Check("bluetooth", "Bluetooth", Status.SKIP,
                            "the venue service uses no radio: its scanners do (run doctor on "
                            "each scanner)"))
    else:
        checks.extend(await _radio_checks(config or Config(), account, options))
    if config is None:
        checks.extend(skipped(name) for name in ("unix_socket", "tcp_socket", "tls", "mdns"))
    else:
        checks.append(await _check_unix_socket(config, account))
        checks.append(await _check_tcp(config, options.timeout_s))
        checks.append(_check_tls(config, commands))
        checks.append(await _check_mdns(config, options.timeout_s))
        checks.extend(await mqtt_check.mqtt_checks(config, options.timeout_s))
    if role != "venue":  # the recovery ladder's reset: a scanner's adapter
        checks.append(_check_reset(config or Config(), options))
        checks.append(check_irk_scan(config or Config()))
    checks.append(_check_clock(options))
    return Report(path, account.name, checks, role)


def _check_tls(config: Config, commands: Commands) -> Check:
    """Plain TCP beyond loopback sends tokens and contact data in clear."""
    server, title = config.server, _TITLES["tls"]
    if not server.tcp_enabled:
        return Check("tls", title, Status.SKIP, "server.tcp_enabled is false")
    if server.tls:
        where = "configured certificate" if server.tls_cert else "self-signed certificate"
        return Check("tls", title, Status.OK, f"TLS on {server.tcp_host}:{server.tcp_port} "
                     f"({where}; `{commands.service('tls show')}` prints its fingerprint)")
    if not server.plain_off_loopback:
        return Check("tls", title, Status.OK, f"plain TCP on loopback ({server.tcp_host})")
    return Check("tls", title, Status.WARN,
                 f"tcp_host = {server.tcp_host!r} serves the network without TLS: tokens and "
                 "contact data cross it in clear",
                 "set server.tls = true (and server.require_tls_off_loopback = true), then "
                 f"give apps the URI from `{commands.service('tls show')}`")


def _check_reset(config: Config, options: DoctorOptions) -> Check:
    """Whether the scanner's recovery ladder can reset the adapter (its third step)."""
    title = "adapter reset possible (recovery)"
    adapter = config.scanner.adapter
    try:
        how = reset_method(adapter, sysfs=options.sysfs_root, dev=options.dev_root)
    except ResetUnavailable as exc:
        status = Status.WARN if config.scanner.source == "bleak" else Status.OK
        return Check("reset", title, status,
                     f"no: {exc}; a wedged adapter that a power-cycle does not clear makes "
                     "hallway give up and leave it to the watchdog",
                     "see docs/install.md, 'Recovering a wedged adapter'")
    return Check("reset", title, Status.OK, f"yes: {how}")


# -- config and database -----------------------------------------------------------------------


def _check_config(path: str | None) -> tuple[Check, Config | None]:
    title = "config valid"
    try:
        config = load_config(path)
    except ConfigError as exc:
        problems = "; ".join(str(p) for p in exc.problems)
        return Check("config", title, Status.FAIL, problems,
                     f"edit {path} (every key is described in config.example.toml); "
                     f"`hallway check-config {path}` lists each problem"), None
    if path is None:
        return Check("config", title, Status.WARN,
                     f"no config file given and no {INSTALLED_CONFIG}: built-in defaults checked",
                     f"pass --config FILE, or install one at {INSTALLED_CONFIG}"), config
    return Check("config", title, Status.OK, f"{path} is valid"), config


def _check_secret_files(config: Config) -> Check:
    """The database and its WAL/SHM (every key and IRK) must be 0600; a token file may be
    readable by the service's group (0640), never by others."""
    title = _TITLES["secret_files"]
    database = config.storage.database
    wanted: list[tuple[str, int]] = [(database + suffix, 0o077)
                                     for suffix in ("", "-wal", "-shm")]
    server = config.server
    tokens = [server.token_file] if server.token_file else []
    if not server.tokens and not server.token_file:
        tokens.append(str(state_dir(config) / "token"))
    wanted += [(path, 0o007) for path in tokens]
    loose = []
    looked = 0
    for path, forbidden in wanted:
        bits = loose_bits(path)
        if bits is None:
            continue
        looked += 1
        if bits & forbidden:
            mode = (bits | 0o600) & 0o777
            loose.append((path, mode, 0o600 if forbidden == 0o077 else 0o640))
    if loose:
        detail = "; ".join(f"{path} is {mode:04o}" for path, mode, _ in loose)
        fix = "; ".join(f"sudo chmod {want:04o} {path}" for path, _, want in loose)
        world = any(mode & 0o004 for _, mode, _ in loose)
        return Check("secret_files", title, Status.FAIL if world else Status.WARN,
                     f"{detail} (keys, IRKs or tokens readable by others)", fix)
    if not looked:
        return Check("secret_files", title, Status.SKIP, "none exist yet")
    return Check("secret_files", title, Status.OK,
                 f"{looked} file(s) readable by their owner only (a token file by its group)")


def _check_database(config: Config, account: Account, commands: Commands, *,
                    contacts_matter: bool = True) -> Check:
    title = _TITLES["database"]
    path = Path(config.storage.database)
    if not path.exists():
        folder = path.parent
        if not folder.is_dir():
            where = f"and its folder {folder} does not exist"
        elif account.may(folder, os.W_OK | os.X_OK) and account.can_reach(folder):
            where = "the service creates it at first start"
        else:
            where = f"and {folder} is not writable by {account.name}"
        return Check("database", title, Status.FAIL, f"{path} does not exist ({where})",
                     f"start the service once (`{commands.systemctl('start')}`), which "
                     f"creates it; the folder must belong to {account.name}")
    if not (account.can_reach(path) and account.may(path, os.R_OK | os.W_OK)):
        return Check("database", title, Status.FAIL,
                     f"{path} is not readable and writable by {account.name}",
                     f"sudo chown {account.name}: {path} {path.parent} (or let systemd's "
                     "StateDirectory= own the folder)")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                                timeout=5.0)) as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            quick = str(db.execute("PRAGMA quick_check").fetchone()[0])
            contacts = None
            if version >= 1:
                contacts = int(db.execute("SELECT count(*) FROM contacts").fetchone()[0])
    except sqlite3.Error as exc:
        return Check("database", title, Status.FAIL, f"{path}: cannot read it as SQLite: {exc}",
                     "restore it from a backup, or move it away and re-import the contacts")
    if quick != "ok":
        return Check("database", title, Status.FAIL, f"{path}: damaged ({quick})",
                     "stop hallway, restore a backup or re-import the contacts")
    if version > SCHEMA_VERSION:
        return Check("database", title, Status.FAIL,
                     f"{path}: schema version {version} is newer than this hallway's "
                     f"({SCHEMA_VERSION})", "upgrade hallway (docs/install.md, Upgrade)")
    if version < SCHEMA_VERSION:
        return Check("database", title, Status.FAIL,
                     f"{path}: schema version {version}, this hallway needs {SCHEMA_VERSION}",
                     f"restart the service (`{commands.systemctl('restart')}`): opening "
                     "it migrates it")
    detail = f"{path}: schema {version}, {contacts} contact(s)"
    if not contacts_matter:
        return Check("database", title, Status.OK, f"{path}: schema {version} (event log)")
    if not contacts:
        return Check("database", title, Status.WARN, detail + ": nobody can be recognised",
                     "import opted-in contacts: "
                     f"`{commands.service('contacts import - < contacts.jsonl')}`")
    return Check("database", title, Status.OK, detail)


# -- D-Bus and BlueZ ---------------------------------------------------------------------------


class _Bus:
    """A short-lived system-bus connection for read-only questions."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.bus: Any = None

    async def connect(self) -> None:
        async with asyncio.timeout(self.timeout_s):
            self.bus = await MessageBus(bus_type=BusType.SYSTEM).connect()

    async def call(self, destination: str, path: str, interface: str, member: str, *,
                   signature: str = "", body: list[Any] | None = None) -> Any:
        """The reply message (may be an error reply)."""
        async with asyncio.timeout(self.timeout_s):
            return await self.bus.call(Message(destination=destination, path=path,
                                               interface=interface, member=member,
                                               signature=signature, body=body or []))

    def close(self) -> None:
        if self.bus is not None:
            self.bus.disconnect()
            self.bus = None


def _is_error(reply: Any) -> bool:
    return bool(reply.message_type is MessageType.ERROR)


def _error_text(reply: Any) -> str:
    text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
    return f"{reply.error_name}: {text}" if text else str(reply.error_name)


def _system_bus_address() -> str:
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or "unix:path=/run/dbus/system_bus_socket"


async def _radio_checks(config: Config, account: Account, options: DoctorOptions) -> list[Check]:
    """D-Bus, org.bluez, adapter, power, rfkill, permission, passive scanning."""
    checks = await _bluez_checks(config, account, options)
    checks.insert(4, _check_rfkill(config.scanner.adapter, options.rfkill_root))
    if config.scanner.source != "bleak":
        note = f" (not needed while scanner.source = {config.scanner.source!r})"
        checks = [Check(c.name, c.title, Status.WARN, c.detail + note, c.fix)
                  if c.status is Status.FAIL else c for c in checks]
    return checks


async def _bluez_checks(config: Config, account: Account, options: DoctorOptions
                        ) -> list[Check]:
    adapter = config.scanner.adapter
    adapter_path = f"/org/bluez/{adapter}"
    names = [("dbus", "D-Bus system bus reachable"), ("bluez", "org.bluez present"),
             ("adapter", f"adapter {adapter} present"), ("powered", f"adapter {adapter} powered"),
             ("permission", "permission to use the adapter"),
             ("passive_scan", "passive scanning available"),
             ("advertising", "advertising available (check-in)")]
    results: dict[str, Check] = {}

    def done(name: str, status: Status, detail: str, fix: str | None = None) -> None:
        results[name] = Check(name, dict(names)[name], status, detail, fix)

    def finish(reason: str) -> list[Check]:
        return [results.get(n) or Check(n, t, Status.SKIP, reason) for n, t in names]

    bus = _Bus(options.timeout_s)
    address = _system_bus_address()
    try:
        try:
            await bus.connect()
        except Exception as exc:  # noqa: BLE001 - any failure here means "no bus", explained
            reason = "timed out" if isinstance(exc, TimeoutError) else (
                getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
            done("dbus", Status.FAIL, f"cannot connect to {address}: {reason}",
                 "start D-Bus (`sudo apt install dbus && sudo systemctl start dbus`); under "
                 "a test bus, set DBUS_SYSTEM_BUS_ADDRESS")
            return finish("needs the D-Bus system bus")
        done("dbus", Status.OK, f"connected to {address}")
        reply = await bus.call("org.freedesktop.DBus", "/org/freedesktop/DBus",
                               "org.freedesktop.DBus", "NameHasOwner", signature="s",
                               body=[BLUEZ])
        if _is_error(reply) or not reply.body[0]:
            done("bluez", Status.FAIL, "nobody owns org.bluez: bluetoothd is not running",
                 "sudo apt install bluez && sudo systemctl enable --now bluetooth")
            return finish("needs org.bluez")
        reply = await bus.call(BLUEZ, "/", "org.freedesktop.DBus.ObjectManager",
                               "GetManagedObjects")
        if _is_error(reply):
            if "AccessDenied" in str(reply.error_name):
                done("bluez", Status.OK, "org.bluez is running")
                done("permission", Status.FAIL,
                     f"D-Bus refused {account.name}: {_error_text(reply)}",
                     f"add the user to group {BLUETOOTH_GROUP}: `sudo usermod -aG "
                     f"{BLUETOOTH_GROUP} {account.name}` (the unit sets "
                     f"SupplementaryGroups={BLUETOOTH_GROUP})")
                return finish("needs access to org.bluez")
            done("bluez", Status.FAIL, f"org.bluez does not answer: {_error_text(reply)}",
                 "sudo systemctl restart bluetooth; see `journalctl -u bluetooth`")
            return finish("needs org.bluez")
        objects: dict[str, dict[str, dict[str, Any]]] = reply.body[0]
        done("bluez", Status.OK, "org.bluez is running")
        adapters = sorted(p.rsplit("/", 1)[-1] for p, ifaces in objects.items()
                          if ADAPTER_IFACE in ifaces)
        if adapter_path not in objects or ADAPTER_IFACE not in objects[adapter_path]:
            if adapters:
                done("adapter", Status.FAIL,
                     f"no adapter {adapter}; BlueZ has: {', '.join(adapters)}",
                     f'set scanner.adapter = "{adapters[0]}" in the config')
            else:
                done("adapter", Status.FAIL, "BlueZ has no adapter at all",
                     "plug in a Bluetooth LE adapter (or enable the built-in one: on a "
                     "Raspberry Pi remove dtoverlay=disable-bt from /boot/firmware/config.txt); "
                     "`bluetoothctl list` shows what BlueZ sees")
            return finish(f"needs adapter {adapter}")
        interfaces = objects[adapter_path]
        props = interfaces[ADAPTER_IFACE]
        address_ = _value(props.get("Address"))
        done("adapter", Status.OK, f"{adapter}" + (f" ({address_})" if address_ else ""))
        if _value(props.get("Powered")):
            done("powered", Status.OK, f"{adapter} is powered on")
        else:
            done("powered", Status.FAIL, f"{adapter} is powered off",
                 "`bluetoothctl power on` (and AutoEnable=true under [Policy] in "
                 "/etc/bluetooth/main.conf so it stays on after a reboot); if it will not "
                 "power on, check rfkill")
        done(*await _check_permission(bus, adapter_path, account))
        done(*_passive(config, interfaces))
        done(*_advertising(config, interfaces))
        return finish("")
    except TimeoutError:
        pending = next(n for n, _ in names if n not in results)
        done(pending, Status.FAIL, f"no answer within {options.timeout_s:g} s",
             "bluetoothd may be wedged: `sudo systemctl restart bluetooth`")
        return finish("an earlier D-Bus call timed out")
    finally:
        bus.close()


def _value(variant: Any) -> Any:
    return getattr(variant, "value", variant)


async def _check_permission(bus: _Bus, adapter_path: str, account: Account
                            ) -> tuple[str, Status, str, str | None]:
    reply = await bus.call(BLUEZ, adapter_path, ADAPTER_IFACE, "GetDiscoveryFilters")
    me = Account.current()
    if _is_error(reply) and "AccessDenied" in str(reply.error_name):
        return ("permission", Status.FAIL, f"BlueZ refused {me.name}: {_error_text(reply)}",
                f"`sudo usermod -aG {BLUETOOTH_GROUP} {me.name}` (then log in again)")
    detail = f"{me.name} may use the adapter"
    if account.uid != me.uid:
        try:
            bt_gid = grp.getgrnam(BLUETOOTH_GROUP).gr_gid
        except KeyError:
            bt_gid = None
        if bt_gid is None or bt_gid not in account.gids:
            return ("permission", Status.WARN,
                    f"{detail}, but {account.name} is not in group {BLUETOOTH_GROUP} (BlueZ "
                    "policies older than 5.51, and stricter ones, refuse it)",
                    f"sudo usermod -aG {BLUETOOTH_GROUP} {account.name}, or install "
                    "systemd/hallway.sysusers.conf and run systemd-sysusers")
        detail += f"; {account.name} is in group {BLUETOOTH_GROUP}"
    return ("permission", Status.OK, detail, None)


def _passive(config: Config, interfaces: dict[str, dict[str, Any]]
             ) -> tuple[str, Status, str, str | None]:
    manager = interfaces.get(MONITOR_MANAGER_IFACE)
    types = list(_value(manager.get("SupportedMonitorTypes", [])) or []) if manager else []
    available = manager is not None and "or_patterns" in types
    fix = ("BlueZ 5.56 or newer with experimental features: set Experimental = true under "
           "[General] in /etc/bluetooth/main.conf (or run bluetoothd --experimental), then "
           "`sudo systemctl restart bluetooth`")
    if available:
        return ("passive_scan", Status.OK,
                f"AdvertisementMonitor with or_patterns (scanner.mode = {config.scanner.mode})",
                None)
    why = ("no org.bluez.AdvertisementMonitorManager1" if manager is None
           else "AdvertisementMonitorManager1 without or_patterns")
    if config.scanner.mode == "passive":
        return ("passive_scan", Status.FAIL, f"scanner.mode = passive but {why}",
                fix + '; or set scanner.mode = "active"')
    return ("passive_scan", Status.OK,
            f"not available ({why}); not needed: scanner.mode = active", None)


def _advertising(config: Config, interfaces: dict[str, dict[str, Any]]
                 ) -> tuple[str, Status, str, str | None]:
    """``[checkin]`` needs LEAdvertisingManager1 with a free instance and GattManager1."""
    manager = interfaces.get(ADV_MANAGER_IFACE)
    free = int(_value(manager.get("SupportedInstances", 0)) or 0) if manager else 0
    if manager is None:
        why = "no org.bluez.LEAdvertisingManager1 on the adapter"
    elif GATT_MANAGER_IFACE not in interfaces:
        why = "no org.bluez.GattManager1 on the adapter"
    elif free <= 0:
        why = "LEAdvertisingManager1 has no free advertising instance (SupportedInstances = 0)"
    else:
        return ("advertising", Status.OK, f"LEAdvertisingManager1 with {free} free "
                f"instance(s), GattManager1 (checkin.enabled = "
                f"{str(config.checkin.enabled).lower()})", None)
    if not config.checkin.enabled:
        return ("advertising", Status.OK, f"not available ({why}); not needed: "
                "checkin.enabled = false", None)
    return ("advertising", Status.FAIL, f"checkin.enabled = true but {why}",
            "an adapter with the LE peripheral role (Adapter1.Roles lists \"peripheral\"); "
            "stop other programs that advertise on it (`bluetoothctl advertise off`), or "
            "set checkin.enabled = false")


def _check_rfkill(adapter: str, root: Path) -> Check:
    title = "radio not blocked (rfkill)"
    if not root.is_dir():
        return Check("rfkill", title, Status.OK, f"no rfkill on this machine ({root} absent)")
    switches = []
    for entry in sorted(root.iterdir()):
        try:
            kind = (entry / "type").read_text().strip()
            if kind != "bluetooth":
                continue
            name = (entry / "name").read_text().strip()
            soft = (entry / "soft").read_text().strip() == "1"
            hard = (entry / "hard").read_text().strip() == "1"
        except OSError:
            continue
        switches.append((name, soft, hard))
    if not switches:
        return Check("rfkill", title, Status.OK, "no Bluetooth rfkill switch")
    mine = [s for s in switches if s[0] == adapter] or switches
    hard_blocked = [s[0] for s in mine if s[2]]
    soft_blocked = [s[0] for s in mine if s[1]]
    if hard_blocked:
        return Check("rfkill", title, Status.FAIL, f"hard-blocked: {', '.join(hard_blocked)}",
                     "a hardware switch or a firmware/BIOS setting blocks the radio: turn it "
                     "on there")
    if soft_blocked:
        return Check("rfkill", title, Status.FAIL, f"soft-blocked: {', '.join(soft_blocked)}",
                     "sudo rfkill unblock bluetooth")
    return Check("rfkill", title, Status.OK,
                 f"not blocked: {', '.join(s[0] for s in mine)}")


# -- sockets and mDNS ----------------------------------------------------------------------------


async def _hello_at(connect: Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
                    timeout_s: float) -> dict[str, Any] | None:
    """The hello line of whatever listens there, or None if nothing (hallway) answers."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await connect
            try:
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return None
    try:
        hello = json.loads(line)
    except ValueError:
        return None
    return hello if isinstance(hello, dict) and hello.get("type") == "hello" else None


async def _check_unix_socket(config: Config, account: Account) -> Check:
    title = _TITLES["unix_socket"]
    if not config.server.unix_socket:
        return Check("unix_socket", title, Status.SKIP, "server.unix_socket is disabled")
    path = Path(config.server.unix_socket)
    mode = int(config.server.unix_socket_mode, 8)
    access = (f"mode {mode:04o}: " + ("any local user may subscribe" if mode & 0o006 else
              "group members may subscribe" if mode & 0o060 else "only the service user"))
    if len(os.fsencode(path)) >= 108:
        return Check("unix_socket", title, Status.FAIL,
                     f"{path} is longer than a Unix socket path may be (107 bytes)",
                     'use a shorter path, e.g. server.unix_socket = "/run/hallway/hallway.sock"')
    if await asyncio.to_thread(path.is_socket):
        hello = await _hello_at(asyncio.open_unix_connection(str(path)), 2.0)
        if hello is not None:
            return Check("unix_socket", title, Status.OK,
                         f"{path}: {hello.get('server', 'hallway')} is listening ({access})")
        if not os.access(path, os.W_OK):
            me = Account.current().name
            return Check("unix_socket", title, Status.WARN,
                         f"{path} exists but {me} may not connect to it ({access})",
                         "run doctor as root, or as a member of the socket's group")
    folder = path.parent
    if not folder.is_dir():
        if folder.parent == Path("/run"):
            return Check("unix_socket", title, Status.WARN,
                         f"{folder} does not exist yet: the unit's RuntimeDirectory= creates it "
                         f"at start ({access})",
                         f"without systemd: sudo install -d -o {account.name} -m 0750 {folder}")
        return Check("unix_socket", title, Status.FAIL, f"folder {folder} does not exist",
                     f"create it for {account.name} (`sudo install -d -o {account.name} "
                     f"{folder}`) or "
                     'use server.unix_socket = "/run/hallway/hallway.sock"')
    if not (account.can_reach(folder) and account.may(folder, os.W_OK | os.X_OK)):
        return Check("unix_socket", title, Status.FAIL,
                     f"{account.name} cannot create {path} ({folder} is not writable for it)",
                     f"sudo chown {account.name} {folder}, or use the unit's runtime "
                     'directory: server.unix_socket = "/run/hallway/hallway.sock"')
    return Check("unix_socket", title, Status.OK, f"{path} can be created ({access})")


async def _check_tcp(config: Config, timeout_s: float) -> Check:
    title = _TITLES["tcp_socket"]
    server = config.server
    if not server.tcp_enabled:
        return Check("tcp_socket", title, Status.SKIP, "server.tcp_enabled = false")
    if server.tcp_port == 0:
        return Check("tcp_socket", title, Status.OK, "port 0: a free port is chosen at start")
    where = f"{server.tcp_host}:{server.tcp_port}"
    try:
        infos = socket.getaddrinfo(server.tcp_host, server.tcp_port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return Check("tcp_socket", title, Status.FAIL, f"{server.tcp_host}: {exc.strerror}",
                     "set server.tcp_host to an address of this machine, 127.0.0.1 or 0.0.0.0")
    family, kind, proto, _, address = infos[0]
    probe = socket.socket(family, kind, proto)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
    except OSError as exc:
        code = exc.errno
    else:
        code = 0
    finally:
        probe.close()
    if code == 0:
        return Check("tcp_socket", title, Status.OK, f"{where} is free to listen on")
    if code == errno.EADDRINUSE:
        host = "127.0.0.1" if server.tcp_host in ("0.0.0.0", "::", "") else server.tcp_host
        hello = await _hello_at(asyncio.open_connection(host, server.tcp_port), timeout_s)
        if hello is not None:
            return Check("tcp_socket", title, Status.OK,
                         f"{where}: {hello.get('server', 'hallway')} is listening")
        return Check("tcp_socket", title, Status.FAIL,
                     f"{where} is taken by another program",
                     f"find it with `ss -ltnp 'sport = :{server.tcp_port}'`, or choose another "
                     "server.tcp_port")
    if code == errno.EADDRNOTAVAIL:
        return Check("tcp_socket", title, Status.FAIL,
                     f"{server.tcp_host} is not an address of this machine",
                     "set server.tcp_host to one of `ip -brief address`, or 0.0.0.0")
    if code == errno.EACCES:
        return Check("tcp_socket", title, Status.FAIL,
                     f"{where}: ports below 1024 need privileges the unit does not grant",
                     "use server.tcp_port = 7447 (or any port from 1024 up)")
    return Check("tcp_socket", title, Status.FAIL, f"{where}: {os.strerror(code or 0)}",
                 "check server.tcp_host and server.tcp_port")


async def _check_mdns(config: Config, timeout_s: float) -> Check:
    title = _TITLES["mdns"]
    if not config.mdns.enabled:
        return Check("mdns", title, Status.SKIP, "mdns.enabled = false")
    if not config.server.tcp_enabled:
        return Check("mdns", title, Status.SKIP, "no TCP listener to announce")
    interfaces: Any = list(config.mdns.interfaces) or InterfaceChoice.All
    where = ", ".join(config.mdns.interfaces) or "all interfaces"
    fix = ("check mdns.interfaces (addresses of this machine, from `ip -brief address`) and "
           "that the unit allows AF_INET/AF_INET6/AF_NETLINK; or set mdns.enabled = false and "
           "give clients the address by hand")
    for address in config.mdns.interfaces:
        problem = _not_local(address)
        if problem:
            return Check("mdns", title, Status.FAIL,
                         f"cannot join mDNS on {address}: {problem}", fix)
    try:
        async with asyncio.timeout(timeout_s):
            zc = AsyncZeroconf(interfaces=interfaces)
            await zc.async_close()
    except (OSError, TimeoutError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return Check("mdns", title, Status.FAIL, f"cannot join mDNS on {where}: {reason}", fix)
    return Check("mdns", title, Status.OK, f"UDP 5353 joined on {where}")


def _not_local(address: str) -> str | None:
    """Why ``address`` cannot be bound here (not this machine's), or None."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    except ValueError:
        return "not an IP address"
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError as exc:
            return f"not an address of this machine ({exc.strerror})"
    return None


# -- clock ---------------------------------------------------------------------------------------


def kernel_clock_synced() -> bool | None:
    """True/False from adjtimex(2) (read-only query), None where it cannot be asked."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        buffer = ctypes.create_string_buffer(512)  # struct timex, modes = 0: only read
        state = int(libc.adjtimex(buffer))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


def check_irk_scan(config: Config, offered: tuple[str, ...] | None = None) -> Check:
    """Which IRK scan the daemon will run (``offered``: this build's, fastest first)."""
    title = "IRK resolution backend"
    offered = available_backends() if offered is None else offered
    if config.identity.irk_backend == "python":
        return Check("irk_scan", title, Status.OK,
                     'python (identity.irk_backend = "python"): cryptography\'s AES from a '
                     "Python loop, about 40 times slower per key than AES-NI")
    if offered[0] == "aes-ni":
        return Check("irk_scan", title, Status.OK,
                     "aes-ni: the C extension hallway._irkscan with the CPU's AES instructions")
    if offered[0] == "portable":
        return Check("irk_scan", title, Status.OK,
                     "portable: the C extension hallway._irkscan with its own table AES (this "
                     "CPU has no AES-NI), about 6 times slower per key than AES-NI")
    return Check("irk_scan", title, Status.WARN,
                 "python: the C extension hallway._irkscan is not built, so each new resolvable "
                 "address costs about 40 times the CPU per IRK (the trial budget is lower)",
                 "install a C compiler and the Python headers (`sudo apt-get install gcc "
                 "python3-dev`), then install hallway again (`scripts/setup` in a checkout)")


def _check_clock(options: DoctorOptions) -> Check:
    title = "clock plausible"
    now = options.now()
    shown = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    fix = ("enable time sync: `sudo timedatectl set-ntp true` (systemd-timesyncd); a Raspberry "
           "Pi has no clock battery, so it needs the network (or an RTC) at boot")
    if not CLOCK_FLOOR_TS <= now < CLOCK_CEILING_TS:
        return Check("clock", title, Status.FAIL,
                     f"the clock says {shown}: hallway-v1 identifiers rotate every 10 minutes "
                     "and are accepted only within about 20 minutes of the phone's clock",
                     fix)
    synced = options.clock_synchronised()
    if synced is False:
        return Check("clock", title, Status.WARN,
                     f"{shown}, but the kernel reports the clock as not synchronised; rotating "
                     "identifiers fail when it drifts by more than ~10 minutes", fix)
    note = "synchronised" if synced else "sync state unknown"
    return Check("clock", title, Status.OK, f"{shown} ({note})")
