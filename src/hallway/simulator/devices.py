"""Simulated devices: what each kind of phone or badge puts on the air, and the contacts file.

Contacts' devices cover every identity kind: phones running the hallway app (hallway-v1 in
manufacturer data with and without a power byte, as a 128-bit service UUID, and as an Exposure
Notification frame; the address rotates with the identifier every 10 minutes), phones known by
their IRK (a resolvable private address that rotates every 15 minutes), and badges (iBeacon,
Eddystone-UID, a fixed public address). Strangers' devices are the noise a venue is full of:
iPhones and Android phones with unknown keys, other people's EN and hallway-v1 frames, unknown
beacons and laptops.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from hallway.identity.crypto import aem_crypt, derive_aemk, derive_rpik, make_rpa, rpi_for_interval
from hallway.models import Advertisement, Contact, ContactKey, KeyKind

HALLWAY_COMPANY_ID = 0xFFFF
APPLE_COMPANY_ID = 76
MICROSOFT_COMPANY_ID = 6
EN_UUID = "0000fd6f-0000-1000-8000-00805f9b34fb"
EDDYSTONE_UUID = "0000feaa-0000-1000-8000-00805f9b34fb"
FAST_PAIR_UUID = "0000fe2c-0000-1000-8000-00805f9b34fb"
HALLWAY_INTERVAL_S = 600
RPA_ROTATION_S = 900
VENUE_BEACON_UUID = uuid.UUID("6a1f0b3c-2d4e-4f50-8a6b-7c8d9e0f1a2b").bytes
VENUE_NAMESPACE = bytes.fromhex("68616c6c7761792d7631")
SCANNER = "hci0"


class DeviceKind(Enum):
    """What a simulated device is and what it sends."""

    HALLWAY_MFR = "hallway-mfr"  # Android app: manufacturer data with a power byte
    HALLWAY_MFR_BARE = "hallway-mfr-bare"  # the same without the power byte
    HALLWAY_UUID = "hallway-uuid"  # iOS app in the foreground: the RPI as a service UUID
    HALLWAY_EN = "hallway-en"  # the EN frame with encrypted metadata carrying the power
    HALLWAY_CHECKIN = "hallway-checkin"  # iOS app in the background: checks in over GATT only
    IRK_PHONE = "irk-phone"  # a phone known by its IRK: rotating resolvable address
    IBEACON = "ibeacon"
    EDDYSTONE = "eddystone"
    ADDRESS_BADGE = "address-badge"  # fixed public address
    STRANGER_IPHONE = "stranger-iphone"
    STRANGER_ANDROID = "stranger-android"
    STRANGER_EN = "stranger-en"
    STRANGER_HALLWAY = "stranger-hallway"
    STRANGER_IBEACON = "stranger-ibeacon"
    STRANGER_LAPTOP = "stranger-laptop"


PHONES = frozenset(
    {
        DeviceKind.HALLWAY_MFR,
        DeviceKind.HALLWAY_MFR_BARE,
        DeviceKind.HALLWAY_UUID,
        DeviceKind.HALLWAY_EN,
        DeviceKind.HALLWAY_CHECKIN,
        DeviceKind.IRK_PHONE,
        DeviceKind.STRANGER_IPHONE,
        DeviceKind.STRANGER_ANDROID,
        DeviceKind.STRANGER_EN,
        DeviceKind.STRANGER_HALLWAY,
    }
)

KIND_OF: Mapping[DeviceKind, KeyKind] = {
    DeviceKind.HALLWAY_MFR: KeyKind.HALLWAY_V1,
    DeviceKind.HALLWAY_MFR_BARE: KeyKind.HALLWAY_V1,
    DeviceKind.HALLWAY_UUID: KeyKind.HALLWAY_V1,
    DeviceKind.HALLWAY_EN: KeyKind.HALLWAY_V1,
    DeviceKind.HALLWAY_CHECKIN: KeyKind.HALLWAY_V1,
    DeviceKind.IRK_PHONE: KeyKind.IRK,
    DeviceKind.IBEACON: KeyKind.IBEACON,
    DeviceKind.EDDYSTONE: KeyKind.EDDYSTONE_UID,
    DeviceKind.ADDRESS_BADGE: KeyKind.ADDRESS,
}

CONTACT_MIX: tuple[tuple[DeviceKind, float], ...] = (
    (DeviceKind.HALLWAY_MFR, 0.18),
    (DeviceKind.HALLWAY_MFR_BARE, 0.07),
    (DeviceKind.HALLWAY_UUID, 0.15),
    (DeviceKind.HALLWAY_EN, 0.12),
    (DeviceKind.IRK_PHONE, 0.23),
    (DeviceKind.IBEACON, 0.10),
    (DeviceKind.EDDYSTONE, 0.08),
    (DeviceKind.ADDRESS_BADGE, 0.07),
)

# A venue where half the phones are iPhones with the app in the background (check-ins only).
CHECKIN_MIX: tuple[tuple[DeviceKind, float], ...] = (
    (DeviceKind.HALLWAY_CHECKIN, 0.50),
    (DeviceKind.HALLWAY_MFR, 0.20),
    (DeviceKind.HALLWAY_UUID, 0.10),
    (DeviceKind.HALLWAY_EN, 0.05),
    (DeviceKind.IRK_PHONE, 0.15),
)

STRANGER_MIX: tuple[tuple[DeviceKind, float], ...] = (
    (DeviceKind.STRANGER_IPHONE, 0.40),
    (DeviceKind.STRANGER_ANDROID, 0.25),
    (DeviceKind.STRANGER_EN, 0.12),
    (DeviceKind.STRANGER_HALLWAY, 0.08),
    (DeviceKind.STRANGER_IBEACON, 0.07),
    (DeviceKind.STRANGER_LAPTOP, 0.08),
)

# Advertising intervals (s) and how often each is chosen: apps and badges 0.1-1 s.
INTERVALS: tuple[tuple[float, float], ...] = (
    (0.1, 0.04),
    (0.2, 0.08),
    (0.25, 0.10),
    (0.5, 0.25),
    (0.75, 0.18),
    (1.0, 0.35),
)
BADGE_POWERS = (-59, -62, -65, -70)


def choose(rng: random.Random, table: tuple[tuple[DeviceKind, float], ...]) -> DeviceKind:
    """One kind drawn by weight."""
    kinds = [k for k, _ in table]
    weights = [w for _, w in table]
    return rng.choices(kinds, weights)[0]


def _address(raw: bytes) -> str:
    return ":".join(f"{b:02X}" for b in raw)


def _random_address(rng: random.Random, top_bits: int) -> str:
    raw = bytearray(rng.randbytes(6))
    raw[0] = (raw[0] & 0x3F) | (top_bits << 6)
    return _address(bytes(raw))


@dataclass(slots=True)
class Device:
    """One transmitter: its kind, secrets, timing and true radio power."""

    kind: DeviceKind
    seed: str  # seeds everything drawn per rotation epoch (addresses, noise payloads)
    interval_s: float
    nominal_power_dbm: int  # what a frame that carries a 1 m power says
    offset_db: float  # the device's true 1 m power is nominal + offset
    secret: bytes = b""  # hallway-v1 K or IRK
    static_address: str = ""
    beacon_id: bytes = b""  # iBeacon uuid+major+minor, or Eddystone namespace+instance
    rotation_phase_s: float = 0.0
    _rpik: bytes = field(default=b"", repr=False)
    _aemk: bytes = field(default=b"", repr=False)

    @property
    def is_phone(self) -> bool:
        """Phones pause (locked screens, background limits); badges do not."""
        return self.kind in PHONES

    @property
    def true_power_dbm(self) -> float:
        """The RSSI this device really gives at 1 m."""
        return self.nominal_power_dbm + self.offset_db

    def key(self) -> ContactKey | None:
        """The contact key that identifies this device (None for strangers)."""
        kind = KIND_OF.get(self.kind)
        if kind is None:
            return None
        if kind in (KeyKind.HALLWAY_V1, KeyKind.IRK):
            return ContactKey(kind, self.secret.hex())
        if kind is KeyKind.IBEACON:
            ident = self.beacon_id
            major = int.from_bytes(ident[16:18], "big")
            minor = int.from_bytes(ident[18:20], "big")
            return ContactKey(kind, f"{uuid.UUID(bytes=ident[:16])}/{major}/{minor}")
        if kind is KeyKind.EDDYSTONE_UID:
            return ContactKey(kind, f"{self.beacon_id[:10].hex()}/{self.beacon_id[10:].hex()}")
        return ContactKey(kind, self.static_address)

    def keys(self) -> tuple[bytes, bytes]:
        """RPIK and AEMK of a hallway-v1 device (derived once)."""
        if not self._rpik:
            self._rpik = derive_rpik(self.secret)
            self._aemk = derive_aemk(self.secret)
        return self._rpik, self._aemk


# Transmit-power calibration of phone models (dB, relative to a typical model): quantiles of
# the spread measured across 313 models for Exposure Notification (middle half -31..-21,
# 5th-95th percentile -36..-8 around a median of -26), with heavier tails beyond.
MODEL_SPREAD_DB: tuple[tuple[float, float], ...] = (
    (0.0, -22.0), (0.01, -16.0), (0.05, -10.0), (0.25, -5.0), (0.5, 0.0), (0.75, 5.0),
    (0.95, 18.0), (0.99, 24.0), (1.0, 30.0),
)
# Phones advertising at 1-4 Hz (Android's low-power and balanced modes, iOS in the background).
PHONE_INTERVALS: tuple[tuple[float, float], ...] = ((0.25, 0.3), (0.5, 0.2), (1.0, 0.5))
CARRIES_POWER = frozenset({
    DeviceKind.HALLWAY_MFR, DeviceKind.HALLWAY_EN, DeviceKind.IBEACON, DeviceKind.EDDYSTONE,
    DeviceKind.STRANGER_IBEACON,
})


@dataclass(frozen=True, slots=True)
class PhoneSpread:
    """How far real phones are from their kind's default 1 m power, and how they advertise.

    A phone's true 1 m power is the default plus its model's offset (``MODEL_SPREAD_DB``),
    minus what the pocket or body takes (``pocket_db`` uniformly), plus a per-unit error
    (σ ``unit_sigma_db``). A frame that carries a power carries the model's calibrated value
    (the app looks its model up in a calibration table), so its error is the pocket and the
    unit; a frame without one is off by the whole spread. Badges are off by the unit error.
    """

    pocket_db: tuple[float, float] = (0.0, 12.0)
    unit_sigma_db: float = 2.0
    intervals: tuple[tuple[float, float], ...] = PHONE_INTERVALS

    def model_offset(self, rng: random.Random) -> float:
        """One model's offset (dB), drawn from the measured quantiles."""
        u = rng.random()
        table = MODEL_SPREAD_DB
        for (p0, v0), (p1, v1) in itertools.pairwise(table):
            if u <= p1:
                return v0 + (v1 - v0) * (u - p0) / (p1 - p0)
        return table[-1][1]


def make_device(
    rng: random.Random, kind: DeviceKind, seed: str, spread: PhoneSpread | None = None
) -> Device:
    """A new device of ``kind`` with its secrets and radio traits drawn from ``rng``
    (``spread``: real phones' wide spread of powers and 1-4 Hz intervals; None: ±3 dB)."""
    table = INTERVALS if spread is None or kind not in PHONES else spread.intervals
    intervals = [i for i, _ in table]
    interval = rng.choices(intervals, [w for _, w in table])[0]
    nominal = -59
    offset = rng.uniform(-3.0, 3.0)
    device = Device(kind=kind, seed=seed, interval_s=interval, nominal_power_dbm=nominal,
                    offset_db=offset)
    if kind in (DeviceKind.HALLWAY_MFR, DeviceKind.HALLWAY_MFR_BARE, DeviceKind.HALLWAY_UUID,
                DeviceKind.HALLWAY_EN, DeviceKind.STRANGER_HALLWAY, DeviceKind.IRK_PHONE,
                DeviceKind.STRANGER_IPHONE, DeviceKind.HALLWAY_CHECKIN):
        device.secret = rng.randbytes(16)
    if kind in (DeviceKind.IRK_PHONE, DeviceKind.STRANGER_IPHONE, DeviceKind.STRANGER_ANDROID):
        device.rotation_phase_s = rng.uniform(0, RPA_ROTATION_S)
    if kind in (DeviceKind.IBEACON, DeviceKind.STRANGER_IBEACON):
        device.nominal_power_dbm = rng.choice(BADGE_POWERS)
        device.static_address = _random_address(rng, 0b11)
        beacon_uuid = VENUE_BEACON_UUID if kind is DeviceKind.IBEACON else rng.randbytes(16)
        device.beacon_id = beacon_uuid + rng.randbytes(4)
    elif kind is DeviceKind.EDDYSTONE:
        device.nominal_power_dbm = rng.choice(BADGE_POWERS)
        device.static_address = _random_address(rng, 0b11)
        device.beacon_id = VENUE_NAMESPACE + rng.randbytes(6)
    elif kind in (DeviceKind.ADDRESS_BADGE, DeviceKind.STRANGER_LAPTOP):
        raw = bytearray(rng.randbytes(6))
        raw[0] &= 0xFC  # a unicast, globally administered (public) address
        device.static_address = _address(bytes(raw))
        if kind is DeviceKind.ADDRESS_BADGE:
            # A fixed-address badge says nothing about its power; its true one varies more.
            device.offset_db = rng.uniform(-4.0, 4.0)
    if spread is not None:
        _spread_power(rng, device, spread)
    return device


def _spread_power(rng: random.Random, device: Device, spread: PhoneSpread) -> None:
    """Re-draw a device's power from a wide spread (see ``PhoneSpread``)."""
    unit = rng.gauss(0.0, spread.unit_sigma_db)
    if not device.is_phone:
        device.offset_db = unit
        return
    model = spread.model_offset(rng)
    pocket = rng.uniform(*spread.pocket_db)
    if device.kind in CARRIES_POWER:
        # The app writes its model's calibrated power; the pocket and the unit stay unknown.
        device.nominal_power_dbm = max(-100, min(0, round(-59 + model)))
        device.offset_db = -59 + model - device.nominal_power_dbm - pocket + unit
    else:
        device.offset_db = model - pocket + unit


class Transmitter:
    """Builds the advertisements of one device, rotating identifiers on its own clock."""

    __slots__ = ("_data", "_device", "_epoch")

    def __init__(self, device: Device) -> None:
        self._device = device
        self._epoch: int | None = None
        self._data: tuple[str, str, dict[int, bytes], dict[str, bytes], tuple[str, ...]] = (
            "", "public", {}, {}, ()
        )

    def advertisement(self, ts: float, rssi: int) -> Advertisement:
        """The advertisement this device sends at ``ts``, as heard with ``rssi``."""
        device = self._device
        kind = device.kind
        if kind in (DeviceKind.IRK_PHONE, DeviceKind.STRANGER_IPHONE, DeviceKind.STRANGER_ANDROID):
            epoch = int((ts + device.rotation_phase_s) // RPA_ROTATION_S)
        elif device.static_address:
            epoch = 0
        else:
            epoch = int(ts // HALLWAY_INTERVAL_S)
        if epoch != self._epoch:
            self._epoch = epoch
            self._data = self._frames(epoch)
        address, address_type, mfr, svc, uuids = self._data
        return Advertisement(
            ts=ts,
            address=address,
            address_type=address_type,
            rssi=rssi,
            manufacturer_data=mfr,
            service_data=svc,
            service_uuids=uuids,
            scanner=SCANNER,
        )

    def _frames(
        self, epoch: int
    ) -> tuple[str, str, dict[int, bytes], dict[str, bytes], tuple[str, ...]]:
        device = self._device
        kind = device.kind
        rng = random.Random(f"{device.seed}:epoch:{epoch}")
        power = device.nominal_power_dbm & 0xFF
        if kind in (DeviceKind.HALLWAY_MFR, DeviceKind.HALLWAY_MFR_BARE, DeviceKind.HALLWAY_UUID,
                    DeviceKind.HALLWAY_EN, DeviceKind.STRANGER_HALLWAY):
            rpik, aemk = device.keys()
            rpi = rpi_for_interval(rpik, epoch)
            address = _random_address(rng, 0b00)
            if kind is DeviceKind.HALLWAY_UUID:
                return address, "random", {}, {}, (str(uuid.UUID(bytes=rpi)),)
            if kind is DeviceKind.HALLWAY_EN:
                metadata = bytes([0x40, (device.nominal_power_dbm + 41) & 0xFF, 0, 0])
                frame = rpi + aem_crypt(aemk, rpi, metadata)
                return address, "random", {}, {EN_UUID: frame}, (EN_UUID,)
            tail = b"" if kind is DeviceKind.HALLWAY_MFR_BARE else bytes([power])
            return address, "random", {HALLWAY_COMPANY_ID: b"HW\x01" + rpi + tail}, {}, ()
        if kind in (DeviceKind.IRK_PHONE, DeviceKind.STRANGER_IPHONE):
            prand = bytearray(rng.randbytes(3))
            prand[0] = (prand[0] & 0x3F) | 0x40
            address = make_rpa(device.secret, bytes(prand))
            nearby = bytes([0x10, 0x05, rng.randrange(256)]) + rng.randbytes(4)
            return address, "random", {APPLE_COMPANY_ID: nearby}, {}, ()
        if kind is DeviceKind.HALLWAY_CHECKIN:
            # What a background iPhone puts on the air is Apple's, from a non-resolvable
            # address: nothing hallway can read (its check-ins come over GATT, see _checkins).
            address = _random_address(rng, 0b00)
            nearby = bytes([0x10, 0x05, rng.randrange(256)]) + rng.randbytes(4)
            return address, "random", {APPLE_COMPANY_ID: nearby}, {}, ()
        if kind is DeviceKind.STRANGER_ANDROID:
            address = _random_address(rng, 0b00)
            if rng.random() < 0.5:
                return address, "random", {}, {FAST_PAIR_UUID: rng.randbytes(10)}, (FAST_PAIR_UUID,)
            return address, "random", {}, {}, ()
        if kind is DeviceKind.STRANGER_EN:
            address = _random_address(rng, 0b00)
            return address, "random", {}, {EN_UUID: rng.randbytes(20)}, (EN_UUID,)
        if kind in (DeviceKind.IBEACON, DeviceKind.STRANGER_IBEACON):
            payload = b"\x02\x15" + device.beacon_id + bytes([power])
            return device.static_address, "random", {APPLE_COMPANY_ID: payload}, {}, ()
        if kind is DeviceKind.EDDYSTONE:
            power_0m = (device.nominal_power_dbm + 41) & 0xFF
            frame = bytes([0x00, power_0m]) + device.beacon_id + b"\0\0"
            return device.static_address, "random", {}, {EDDYSTONE_UUID: frame}, (EDDYSTONE_UUID,)
        if kind is DeviceKind.STRANGER_LAPTOP:
            payload = bytes([0x01, 0x09, 0x20, 0x02]) + rng.randbytes(8)
            return device.static_address, "public", {MICROSOFT_COMPANY_ID: payload}, {}, ()
        return device.static_address, "public", {}, {}, ()


# -- contacts ----------------------------------------------------------------------------------

_FIRST = (
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John", "Margaret", "Ken",
    "Radia", "Dennis", "Hedy", "Claude", "Katherine", "Tim", "Sophie", "Linus", "Anita", "Guido",
    "Shafi", "Leslie", "Mary", "Niklaus", "Karen", "Bjarne", "Adele", "Vint", "Jean", "Robin",
)
_LAST = (
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Backus", "Hamilton",
    "Thompson", "Perlman", "Ritchie", "Lamarr", "Shannon", "Johnson", "Berners-Lee", "Wilson",
    "Torvalds", "Borg", "van Rossum", "Goldwasser", "Lamport", "Jackson", "Wirth", "Jones",
    "Stroustrup", "Goldberg", "Cerf", "Bartik", "Milner",
)
_ORGS = (
    "Analytical Engines", "Harbour Labs", "Northwind Radio", "Quiet Systems", "Lattice & Co",
    "Open Mesh", "Blue Finch", "Kestrel Data", None,
)
_TITLES = ("CTO", "Engineer", "Researcher", "Designer", "Founder", "Product Lead", None)
_TAGS = ("speaker", "sponsor", "press", "organizer", "attendee")


def make_contact(
    rng: random.Random, index: int, device: Device, *, granted_at: float | None,
    expires_at: float | None, prefix: str = "c",
) -> Contact:
    """Contact ``<prefix>-NNNN`` holding ``device``'s key, with made-up public details.

    The simulator's prefixes name the scenario and the seed (``booth-7``), so contacts of
    different runs never share an id: importing two runs into one store keeps them apart."""
    first = _FIRST[index % len(_FIRST)]
    last = _LAST[(index * 7 + index // len(_FIRST)) % len(_LAST)]
    handle = f"{first}-{last}".lower().replace(" ", "")
    key = device.key()
    tags = rng.sample(_TAGS, rng.choice((0, 1, 1, 2)))
    return Contact(
        id=f"{prefix}-{index + 1:04d}",
        name=f"{first} {last}",
        org=rng.choice(_ORGS),
        title=rng.choice(_TITLES),
        handles={"linkedin": f"{handle}-{index + 1}"},
        tags=tuple(tags),
        granted_at=granted_at,
        expires_at=expires_at,
        keys=() if key is None else (key,),
    )
