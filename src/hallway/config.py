"""Configuration: one TOML file -> one frozen pydantic model that rejects unknown keys.

``load_config(path)`` raises ``ConfigError`` listing every problem with file, line (where it
can be found), dotted key and reason; the CLI turns that into exit code 78 (EX_CONFIG).
Units are in the names (``_s``, ``_m``, ``_db``, ``_dbm``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hallway.errors import ConfigError, KeyFormatError, Problem
from hallway.keys import eddystone_value, ibeacon_value, normalize_address

ENV_CONFIG = "HALLWAY_CONFIG"
INSTALLED_CONFIG = Path("/etc/hallway/config.toml")
SERVICE_GROUP = "hallway"
GROUP_HINT = (f"The service's config, token and socket are for root and group "
              f"{SERVICE_GROUP!r}: run the command with sudo, or join the group (`sudo usermod "
              f"-aG {SERVICE_GROUP} $USER`, then log in again)")


def find_config_path(explicit: str | None) -> str | None:
    """``explicit``, else ``$HALLWAY_CONFIG``, else the installed config if it exists."""
    if explicit:
        return explicit
    env = os.environ.get(ENV_CONFIG)
    if env:
        return env
    return str(INSTALLED_CONFIG) if INSTALLED_CONFIG.exists() else None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BeaconConfig(_Section):
    """``[scanner.beacon]``: this scanner advertises a reference beacon of its own, an iBeacon
    (``uuid/major/minor``) whose 1 m power byte is ``measured_power_dbm``, through BlueZ's LE
    advertising API; the venue's other scanners calibrate against it (docs/venue.md)."""

    ibeacon: str
    measured_power_dbm: int = Field(default=-59, ge=-120, le=20)

    @field_validator("ibeacon")
    @classmethod
    def _ibeacon(cls, value: str) -> str:
        return _badge_value("ibeacon", value)


class ScannerConfig(_Section):
    """Where advertisements come from."""

    name: str = Field(default="hallway", min_length=1, max_length=63)
    source: Literal["bleak", "simulator", "replay"] = "bleak"
    adapter: str = Field(default="hci0", pattern=r"^hci[0-9]+$")
    mode: Literal["active", "passive"] = "active"
    trace: str | None = None
    scenario: str = "booth"
    seed: int = 1
    # source = "simulator": import the scenario's contacts at start (never a revoked one).
    simulator_contacts: bool = False
    start_timeout_s: float = Field(default=10.0, gt=0, le=120)
    start_retries: int = Field(default=3, ge=1, le=100)
    silence_restart_s: float = Field(default=90.0, gt=0, le=3600)
    backoff_max_s: float = Field(default=60.0, gt=0, le=3600)
    device_prune_s: float = Field(default=120.0, gt=0, le=86400)
    # A device object whose advertisements the screen ruled out (a stranger's) goes after
    # this much silence, and BlueZ holds at most max_devices objects (oldest strangers first).
    stranger_prune_s: float = Field(default=10.0, gt=0, le=86400)
    max_devices: int = Field(default=5000, ge=10, le=1_000_000)
    # Drop bleak's own per-device entries of a stranger's device at its first advertisement
    # (its repeats are then not even parsed until BlueZ's object is pruned and made anew).
    forget_strangers: bool = True
    queue_size: int = Field(default=10000, ge=16, le=1_000_000)
    # The live daemon follows a source's clock (a replayed trace keeps its time) only this
    # close to the wall clock; beyond it the source is flagged and its timestamps clamped.
    max_clock_skew_s: float = Field(default=60.0, gt=0, le=86400)
    # Advertise a reference beacon of our own (BeaconConfig); None: this scanner only listens.
    beacon: BeaconConfig | None = None


class IdentityConfig(_Section):
    """How advertisements are linked to contacts."""

    hallway_company_id: int = Field(default=0xFFFF, ge=0, le=0xFFFF)
    token_skew_back: int = Field(default=2, ge=0, le=6)
    token_skew_ahead: int = Field(default=1, ge=0, le=6)
    irk_cache_size: int = Field(default=100_000, ge=16, le=10_000_000)
    irk_cache_ttl_s: float = Field(default=1800.0, gt=0, le=86400)
    # AES trials a second for new resolvable private addresses (each costs one per IRK); the
    # strongest waiting addresses get the next second's budget first. 0: no limit. Unset: by
    # the IRK backend in use (5,000,000 with AES-NI, 1,000,000 portable C, 250,000 Python).
    irk_trials_per_s: int | None = Field(default=None, ge=0, le=1_000_000_000)
    # How new addresses are tried against the IRKs: "auto" is the C extension hallway._irkscan
    # (AES-NI where the CPU has it, else portable C) when it was built, else pure Python;
    # "python" always uses the cryptography package (OpenSSL's AES) and a Python loop.
    irk_backend: Literal["auto", "python"] = "auto"


_KINDS = ("hallway-v1", "irk", "ibeacon", "eddystone-uid", "address")


class ReferenceConfig(_Section):
    """A reference beacon at a known distance from the scanner (``[[proximity.reference]]``):
    either the contact whose sightings it makes (``contact``), or a badge named by its own key,
    as a contacts file's CSV columns write it (``address``, ``ibeacon`` = ``uuid/major/minor``,
    ``eddystone_uid`` = ``namespace/instance``), which need not be imported at all. A scanner's
    own advertised beacon (``[scanner.beacon]``) is such a badge to the other scanners."""

    contact: str | None = Field(default=None, min_length=1, max_length=200)
    address: str | None = None
    ibeacon: str | None = None
    eddystone_uid: str | None = None
    distance_m: float = Field(gt=0, le=100)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else _badge_value("address", value)

    @field_validator("ibeacon")
    @classmethod
    def _ibeacon(cls, value: str | None) -> str | None:
        return None if value is None else _badge_value("ibeacon", value)

    @field_validator("eddystone_uid")
    @classmethod
    def _eddystone(cls, value: str | None) -> str | None:
        return None if value is None else _badge_value("eddystone-uid", value)

    @model_validator(mode="after")
    def _one_identity(self) -> ReferenceConfig:
        named = [k for k in ("contact", "address", "ibeacon", "eddystone_uid")
                 if getattr(self, k) is not None]
        if len(named) != 1:
            raise ValueError("a reference names exactly one of contact, address, ibeacon or "
                             f"eddystone_uid (this one names {', '.join(named) or 'none'})")
        return self

    @property
    def key(self) -> str:
        """What identifies it: ``contact:ID`` or ``KIND:VALUE`` (canonical key text)."""
        if self.contact is not None:
            return f"contact:{self.contact}"
        if self.address is not None:
            return f"address:{self.address}"
        if self.ibeacon is not None:
            return f"ibeacon:{self.ibeacon}"
        return f"eddystone-uid:{self.eddystone_uid}"


def _badge_value(kind: str, value: str) -> str:
    """A badge key's canonical text (``hallway.keys``), or ValueError with the reason."""
    try:
        if kind == "address":
            return normalize_address(value)
        parts = value.strip().split("/")
        if kind == "ibeacon":
            if len(parts) != 3 or not all(p.strip().isdigit() for p in parts[1:]):
                raise KeyFormatError("ibeacon must be written uuid/major/minor (major and minor "
                                     "whole numbers)")
            return ibeacon_value(parts[0].strip(), int(parts[1]), int(parts[2]))
        if len(parts) != 2:
            raise KeyFormatError("eddystone_uid must be written namespace/instance (20 and 12 "
                                 "hex digits)")
        return eddystone_value(parts[0], parts[1])
    except KeyFormatError as exc:
        raise ValueError(str(exc)) from None


class ProximityConfig(_Section):
    """Distance, zones and presence (see ``hallway.proximity.tracker`` for how they interact)."""

    immediate_m: float = Field(default=1.0, gt=0, le=100)
    near_m: float = Field(default=4.0, gt=0, le=100)
    presence_radius_m: float = Field(default=12.0, gt=0, le=200)
    path_loss_exponent: float = Field(default=2.0, ge=1.0, le=6.0)
    # The receiver's own gain error (dB; a site survey's, `hallway calibrate --venue`): what
    # the tracker uses while no reference beacon says otherwise.
    receive_offset_db: float = Field(default=0.0, ge=-20, le=10)
    default_measured_power_dbm: int = Field(default=-59, ge=-120, le=20)
    measured_power_dbm: dict[str, int] = Field(default_factory=dict)
    rssi_time_constant_s: float = Field(default=2.0, gt=0, le=120)
    settle_time_constant_s: float = Field(default=60.0, gt=0, le=3600)
    motion_threshold_db: float = Field(default=4.5, ge=0, le=40)
    motion_evidence_db_s: float = Field(default=25.0, gt=0, le=1000)
    quick_margin_db: float = Field(default=6.0, ge=0, le=60)
    outlier_clip_db: float = Field(default=6.0, gt=0, le=60)
    presence_hysteresis_db: float = Field(default=0.5, ge=0, le=20)
    arrive_confirm_s: float = Field(default=2.0, ge=0, le=600)
    depart_confirm_s: float = Field(default=2.0, ge=0, le=600)
    arrive_confirm_sightings: int = Field(default=2, ge=1, le=100)
    depart_confirm_sightings: int = Field(default=3, ge=1, le=100)
    zone_hysteresis_db: float = Field(default=3.0, ge=0, le=20)
    zone_confirm_s: float = Field(default=2.0, ge=0, le=600)
    initial_interval_s: float = Field(default=1.0, gt=0, le=60)
    quiet_after_intervals: float = Field(default=5.0, ge=1, le=1000)
    quiet_min_s: float = Field(default=4.0, gt=0, le=3600)
    fade_timeout_s: float = Field(default=20.0, gt=0, le=3600)
    quiet_hold_s: float = Field(default=180.0, gt=0, le=3600)
    hold_radius_m: float | None = Field(default=None, gt=0, le=200)
    steady_s: float = Field(default=15.0, ge=0, le=600)
    pausing_kinds: tuple[str, ...] = ("hallway-v1", "irk")
    reception_floor_dbm: float = Field(default=-97.0, ge=-130, le=0)
    shadowing_db: float = Field(default=6.0, gt=0, le=30)
    reference: tuple[ReferenceConfig, ...] = ()

    @field_validator("reference")
    @classmethod
    def _distinct_references(
        cls, value: tuple[ReferenceConfig, ...]
    ) -> tuple[ReferenceConfig, ...]:
        seen = set()
        for ref in value:
            if ref.key in seen:
                raise ValueError(f"reference {ref.key} is listed twice")
            seen.add(ref.key)
        return value

    @field_validator("pausing_kinds")
    @classmethod
    def _known_pausing(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for kind in value:
            if kind not in _KINDS:
                raise ValueError(f"unknown identity kind {kind!r} (one of {', '.join(_KINDS)})")
        return value

    @field_validator("measured_power_dbm")
    @classmethod
    def _known_kinds(cls, value: dict[str, int]) -> dict[str, int]:
        kinds = _KINDS
        for kind, power in value.items():
            if kind not in kinds:
                raise ValueError(f"unknown identity kind {kind!r} (one of {', '.join(kinds)})")
            if not -120 <= power <= 20:
                raise ValueError(f"measured power for {kind} must be from -120 to 20 dBm")
        return value

    @model_validator(mode="after")
    def _edges_ordered(self) -> ProximityConfig:
        if not self.immediate_m < self.near_m < self.presence_radius_m:
            raise ValueError("zone edges must satisfy immediate_m < near_m < presence_radius_m")
        if self.quiet_min_s > self.fade_timeout_s:
            raise ValueError("quiet_min_s must not exceed fade_timeout_s")
        if self.fade_timeout_s > self.quiet_hold_s:
            raise ValueError("fade_timeout_s must not exceed quiet_hold_s")
        return self


class StorageConfig(_Section):
    """The SQLite database of contacts and the retained event log."""

    database: str = "hallway.db"
    event_retention_s: float = Field(default=7 * 86400.0, gt=0)
    event_retention_count: int = Field(default=100_000, ge=100)
    reload_interval_s: float = Field(default=1.0, gt=0, le=60)
    write_failure_exit_s: float = Field(default=30.0, gt=0, le=3600)


class ServerConfig(_Section):
    """The local event sockets (SPEC §6)."""

    tcp_enabled: bool = True
    tcp_host: str = "127.0.0.1"
    tcp_port: int = Field(default=7447, ge=0, le=65535)
    unix_socket: str | None = "hallway.sock"
    unix_socket_mode: str = Field(default="0660", pattern=r"^0?[0-7]{3}$")
    tokens: tuple[str, ...] = ()
    token_file: str | None = None
    max_connections: int = Field(default=256, ge=1, le=100_000)
    max_line_bytes: int = Field(default=65536, ge=256, le=16 * 1024 * 1024)
    auth_timeout_s: float = Field(default=10.0, gt=0, le=600)
    ping_interval_s: float = Field(default=15.0, gt=0, le=600)
    queue_size: int = Field(default=1024, ge=8, le=1_000_000)
    auth: Literal["token", "none"] = "token"
    max_connections_per_token: int | None = Field(default=None, ge=1, le=100_000)
    """Connections one token may hold (default: three quarters of max_connections)."""
    max_replay_events: int = Field(default=10_000, ge=0, le=10_000_000)
    """A resume further back than this many events gets resync instead of a replay."""
    tls: bool = False
    """Serve TLS 1.2+ on the TCP socket (a self-signed certificate is made if none is set)."""
    tls_cert: str | None = None
    tls_key: str | None = None
    require_tls_off_loopback: bool = False
    """Refuse to start with a non-loopback tcp_host and TLS off (else only a warning)."""

    @field_validator("tokens")
    @classmethod
    def _tokens_long_enough(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for token in value:
            if len(token) < 16:
                raise ValueError("each token must be at least 16 characters")
        return value

    @model_validator(mode="after")
    def _tls_settings(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if (self.require_tls_off_loopback and self.tcp_enabled and not self.tls
                and not is_loopback_host(self.tcp_host)):
            raise ValueError("require_tls_off_loopback is set and tcp_host is not a loopback "
                             "address: set tls = true (or a loopback tcp_host)")
        return self

    @property
    def plain_off_loopback(self) -> bool:
        """True when the TCP socket serves a network without TLS (worth a warning)."""
        return self.tcp_enabled and not self.tls and not is_loopback_host(self.tcp_host)

    @model_validator(mode="after")
    def _no_auth_only_locally(self) -> ServerConfig:
        if self.auth == "none" and self.tcp_enabled and not is_loopback_host(self.tcp_host):
            raise ValueError(
                'auth = "none" is only allowed on the Unix socket or a loopback tcp_host'
            )
        return self


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class MdnsConfig(_Section):
    """DNS-SD announcement (SPEC §7)."""

    enabled: bool = True
    instance_name: str | None = None
    interfaces: tuple[str, ...] = ()
    venue: str | None = None


class LoggingConfig(_Section):
    """Structured logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class MqttConfig(_Section):
    """Optional MQTT publishing for venue-scale deployments."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    topic_prefix: str = "hallway"
    venue: str = "venue"
    qos: int = Field(default=1, ge=0, le=2)
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600)
    present_interval_s: float = Field(default=1.0, gt=0, le=600)
    backlog_max_events: int = Field(default=100_000, ge=100, le=10_000_000)
    homeassistant: bool = False
    homeassistant_prefix: str = "homeassistant"
    homeassistant_tag: str | None = None
    # A password over plain TCP to a broker that is not on this machine crosses the network in
    # clear: refused unless this is set (then the daemon warns at every start).
    allow_plaintext_password: bool = False

    @field_validator("topic_prefix", "homeassistant_prefix", "venue")
    @classmethod
    def _topic_safe(cls, value: str, info: ValidationInfo) -> str:
        levels = value.split("/")
        if any(not level for level in levels):
            raise ValueError("must not be empty, nor start or end with '/', nor contain '//'")
        if any(ch in value for ch in "+#\x00"):
            raise ValueError("must not contain the MQTT wildcards '+' or '#'")
        if info.field_name == "venue" and len(levels) > 1:
            raise ValueError("is one topic level and must not contain '/'")
        return value

    @model_validator(mode="after")
    def _auth_consistent(self) -> MqttConfig:
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not")
        if not self.tls and (self.ca_file or self.cert_file or self.key_file):
            raise ValueError("ca_file, cert_file and key_file need tls = true")
        if self.key_file and not self.cert_file:
            raise ValueError("key_file is set but cert_file is not")
        if self.plaintext_password_off_host and not self.allow_plaintext_password:
            raise ValueError(
                f"password over plain TCP to {self.host}, which is not this machine: the "
                "password would cross the network in clear; set tls = true (or, knowingly, "
                "allow_plaintext_password = true)"
            )
        return self

    @property
    def plaintext_password_off_host(self) -> bool:
        """A password would go in clear to another machine (no TLS, broker not loopback)."""
        return self.enabled and self.password is not None and not self.tls and not _loopback(
            self.host)


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class RegistryConfig(_Section):
    """A scanner's contacts from the venue registry (``hallway venue`` over MQTT)."""

    enabled: bool = False
    # Without a word from the registry for this long, stop resolving (consent unconfirmed).
    stale_after_s: float = Field(default=600.0, gt=0, le=86_400)
    # How often the registry says it is alive (``hallway venue``'s side).
    heartbeat_s: float = Field(default=30.0, gt=0, le=3600)


class VenueConfig(_Section):
    """The venue service (``hallway venue``): which room each contact is in, across scanners."""

    rooms: dict[str, str] = Field(default_factory=dict)
    switch_margin_db: float = Field(default=1.0, ge=0, le=40)
    switch_confirm_s: float = Field(default=1.0, ge=0, le=600)
    return_margin_db: float = Field(default=4.0, ge=0, le=40)
    return_window_s: float = Field(default=60.0, ge=0, le=3600)
    depart_grace_s: float = Field(default=15.0, ge=0, le=600)
    offline_grace_s: float = Field(default=30.0, ge=0, le=3600)
    # Where each scanner stands (metres, [x, y] on the floor plan): the distance between two
    # scanners that hear each other's reference beacons, for their receive offsets.
    positions: dict[str, tuple[float, float]] = Field(default_factory=dict)

    @field_validator("positions")
    @classmethod
    def _finite_positions(cls, value: dict[str, tuple[float, float]]
                          ) -> dict[str, tuple[float, float]]:
        for name, (x, y) in value.items():
            if not (abs(x) <= 100_000 and abs(y) <= 100_000):
                raise ValueError(f"position of {name!r} must be finite metres")
        return value


class CheckinConfig(_Section):
    """``[checkin]``: the scanner also takes GATT check-ins from phones (SPEC §3.1)."""

    enabled: bool = False
    measured_power_dbm: int = Field(default=-59, ge=-120, le=20)
    """The scanner's own advertisement at 1 m as a phone hears it; advertised as TxPower."""
    hold_s: float = Field(default=65.0, ge=5, le=3600)
    """How long one check-in keeps its contact heard at most (two 30 s periods and slack)."""
    max_connections: int = Field(default=8, ge=1, le=64)
    """Centrals allowed to write at once; writes from any others are refused."""
    writes_per_s: float = Field(default=2.0, gt=0, le=100)
    """Writes one central may make per second (a burst of ``max(2, 2 * rate)``)."""
    idle_disconnect_s: float = Field(default=10.0, gt=0, le=600)
    """A connected central that wrote nothing valid for this long is disconnected."""
    advertisement_name: str | None = Field(default=None, max_length=20)
    """A local name to advertise with the service (none by default: less on the air)."""


class WebConfig(_Section):
    """The web pages (kiosk, dashboard, enrollment) on their own HTTP(S) port."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=7448, ge=0, le=65535)
    session_s: float = Field(default=7 * 86400.0, gt=0, le=366 * 86400.0)
    chart_hours: float = Field(default=3.0, gt=0, le=48)
    title: str = Field(default="Who is here", min_length=1, max_length=80)
    max_streams: int = Field(default=64, ge=1, le=10_000)
    apps_dir: str | None = None
    """A folder whose files are served at ``/apps/NAME`` (same origin as the pages: an app
    there signs in with a token and reads the streams); None: nothing is served there."""


class Config(_Section):
    """The whole configuration."""

    scanner: ScannerConfig = ScannerConfig()
    identity: IdentityConfig = IdentityConfig()
    proximity: ProximityConfig = ProximityConfig()
    storage: StorageConfig = StorageConfig()
    server: ServerConfig = ServerConfig()
    mdns: MdnsConfig = MdnsConfig()
    logging: LoggingConfig = LoggingConfig()
    mqtt: MqttConfig = MqttConfig()
    venue: VenueConfig = VenueConfig()
    checkin: CheckinConfig = CheckinConfig()
    web: WebConfig = WebConfig()
    registry: RegistryConfig = RegistryConfig()

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data with secrets replaced by ``***``."""
        data = self.model_dump(mode="json")
        data["server"]["tokens"] = ["***" for _ in data["server"]["tokens"]]
        if data["mqtt"]["password"] is not None:
            data["mqtt"]["password"] = "***"  # noqa: S105 - a mask, not a password
        return data


_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-]+)\s*\]\s*(#.*)?$")
_ASSIGN = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")
_ARRAY_HEADER = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.\-]+)\s*\]\]\s*(#.*)?$")


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line number, for simple TOML (headers, ``[[arrays]]`` of tables
    as ``name.INDEX``, and ``key = value``)."""
    lines: dict[str, int] = {}
    section = ""
    counts: dict[str, int] = {}  # array of tables ([[name]]) -> entries so far
    for number, line in enumerate(text.splitlines(), start=1):
        array = _ARRAY_HEADER.match(line)
        if array:
            index = counts.get(array.group(1), 0)
            counts[array.group(1)] = index + 1
            section = f"{array.group(1)}.{index}"
            lines.setdefault(section, number)
            continue
        header = _HEADER.match(line)
        if header:
            section = header.group(1)
            lines.setdefault(section, number)
            continue
        assign = _ASSIGN.match(line)
        if assign:
            dotted = f"{section}.{assign.group(1)}" if section else assign.group(1)
            lines.setdefault(dotted, number)
    return lines


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative file paths in the config are taken relative to the config file's folder."""

    def fix(value: str | None) -> str | None:
        if not value:
            return None
        if value.startswith("/"):
            return value
        return str(base / value)

    storage = config.storage.model_copy(update={"database": fix(config.storage.database)})
    server = config.server.model_copy(
        update={
            "unix_socket": fix(config.server.unix_socket),
            "token_file": fix(config.server.token_file),
        }
    )
    scanner = config.scanner.model_copy(update={"trace": fix(config.scanner.trace)})
    mqtt = config.mqtt.model_copy(
        update={key: fix(getattr(config.mqtt, key)) for key in ("ca_file", "cert_file", "key_file")}
    )
    web = config.web.model_copy(update={"apps_dir": fix(config.web.apps_dir)})
    return config.model_copy(
        update={"storage": storage, "server": server, "scanner": scanner, "mqtt": mqtt,
                "web": web}
    )


def parse_config(text: str, *, file: str = "<config>", base: Path | None = None) -> Config:
    """Validate TOML text; raise ConfigError with every problem found."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = int(match.group(1)) if match else None
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ConfigError([Problem(file, "", f"TOML syntax error: {reason}", line)]) from None
    except RecursionError:
        raise ConfigError([Problem(file, "", "cannot parse: nested too deeply")]) from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file (exit 78)
        raise ConfigError([Problem(file, "", f"cannot parse: {type(exc).__name__}")]) from None
    try:
        config = Config.model_validate(data)
    except RecursionError:
        raise ConfigError([Problem(file, "", "cannot parse: nested too deeply")]) from None
    except ValidationError as exc:
        lines = _key_lines(text)
        problems = []
        for error in exc.errors():
            dotted = ".".join(str(part) for part in error["loc"])
            reason = error["msg"]
            if error["type"] == "extra_forbidden":
                reason = "unknown key"
            line = lines.get(dotted)
            if line is None and "." in dotted:
                line = lines.get(dotted.rsplit(".", 1)[0])
            problems.append(Problem(file, dotted, reason, line))
        raise ConfigError(problems) from None
    return _resolve_paths(config, base) if base is not None else config


def load_config(path: str | Path | None) -> Config:
    """Load and validate a config file; ``None`` means the built-in defaults.

    A path that does not exist or cannot be read is an error, never a silent default.
    """
    if path is None:
        return Config()
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(str(file), "", "file not found")]) from None
    except PermissionError:
        raise ConfigError([Problem(str(file), "", f"cannot read: permission denied. {GROUP_HINT}")]
                          ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([Problem(str(file), "", f"cannot read: {reason}")]) from None
    return parse_config(text, file=str(file), base=file.resolve().parent)
