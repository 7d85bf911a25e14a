"""Beacon frames from SPEC §2 advertisement fields. Pure functions; bytes in, records out.

Every parser returns a frame record when the payload is one of its frames, ``None`` when the
payload is simply something else (another vendor's data under the same id, a future version),
and a :class:`Malformed` when it claims to be one of its frames but is truncated or the wrong
size. Nothing here raises on any input bytes.

Recognised frames:

- hallway-v1 manufacturer data (SPEC §3 carrier 1): ``48 57 01 || RPI(16) [|| power int8]``
  under the configured company id.
- hallway-v1 as a 128-bit service UUID (carrier 2): any UUID outside the Bluetooth base range.
- Exposure Notification service data under 0xFD6F (carrier 3): ``RPI(16) || AEM(4)``.
- iBeacon: Apple (76) manufacturer data ``02 15 || UUID(16) || major || minor || power``.
- Eddystone under 0xFEAA: UID (``00``) is parsed; URL, TLM, EID are recognised and not matched.
"""

from __future__ import annotations

from dataclasses import dataclass

APPLE_COMPANY_ID = 76
EN_SERVICE_UUID = "0000fd6f-0000-1000-8000-00805f9b34fb"
EDDYSTONE_SERVICE_UUID = "0000feaa-0000-1000-8000-00805f9b34fb"
BLUETOOTH_BASE_SUFFIX = "-0000-1000-8000-00805f9b34fb"
HALLWAY_MAGIC = b"HW"
HALLWAY_V1_PREFIX = b"HW\x01"
IBEACON_PREFIX = b"\x02\x15"
EDDYSTONE_UID = 0x00
EDDYSTONE_URL = 0x10
EDDYSTONE_TLM = 0x20
EDDYSTONE_EID = 0x30
FREE_SPACE_LOSS_1M_DB = 41
"""Path loss from 0 m to 1 m at 2.4 GHz, as Eddystone's calibration convention uses."""


@dataclass(frozen=True, slots=True)
class Malformed:
    """A payload that claims a frame type but cannot be one; ``reason`` says why."""

    reason: str


@dataclass(frozen=True, slots=True)
class HallwayFrame:
    """A hallway-v1 RPI from manufacturer data or a service UUID; power at 1 m if sent."""

    rpi: bytes
    measured_power: int | None


@dataclass(frozen=True, slots=True)
class EnFrame:
    """An Exposure Notification frame: the RPI and its still encrypted metadata."""

    rpi: bytes
    aem: bytes


@dataclass(frozen=True, slots=True)
class IBeaconFrame:
    """An iBeacon advertisement; ``uuid`` is the 16 raw bytes, power is at 1 m."""

    uuid: bytes
    major: int
    minor: int
    measured_power: int

    @property
    def beacon_id(self) -> bytes:
        """``uuid || major || minor`` (20 bytes), the identity an iBeacon key matches."""
        return ibeacon_id(self.uuid, self.major, self.minor)


def ibeacon_id(uuid: bytes, major: int, minor: int) -> bytes:
    """The 20-byte identity of an iBeacon: UUID, then major and minor big-endian."""
    return uuid + major.to_bytes(2, "big") + minor.to_bytes(2, "big")


@dataclass(frozen=True, slots=True)
class EddystoneUidFrame:
    """An Eddystone-UID frame; ``tx_power_0m`` is the calibrated power at 0 m."""

    namespace: bytes
    instance: bytes
    tx_power_0m: int

    @property
    def measured_power(self) -> int:
        """The power at 1 m: the 0 m figure minus 41 dB."""
        return self.tx_power_0m - FREE_SPACE_LOSS_1M_DB


@dataclass(frozen=True, slots=True)
class EddystoneOtherFrame:
    """An Eddystone URL, TLM or EID frame: recognised, carries no identity we match."""

    frame_type: int


def int8(value: int) -> int:
    """A byte read as a signed 8-bit integer."""
    return value - 256 if value > 127 else value


def parse_hallway_mfr(payload: bytes) -> HallwayFrame | Malformed | None:
    """hallway-v1 manufacturer data (after the company id), or None if it is not ours."""
    if payload[:3] != HALLWAY_V1_PREFIX:
        return None
    size = len(payload)
    if size == 19:
        return HallwayFrame(payload[3:19], None)
    if size == 20:
        return HallwayFrame(payload[3:19], int8(payload[19]))
    return Malformed(f"hallway-v1 payload is {size} bytes, expected 19 or 20")


def parse_en_service_data(payload: bytes) -> EnFrame | Malformed:
    """Exposure Notification service data (under 0xFD6F): ``RPI(16) || AEM(4)``."""
    if len(payload) != 20:
        return Malformed(f"EN service data is {len(payload)} bytes, expected 20")
    return EnFrame(payload[:16], payload[16:])


def uuid_rpi(text: str) -> bytes | Malformed | None:
    """The 16 bytes of a 128-bit service UUID that may carry an RPI; None for base UUIDs."""
    if len(text) != 36 or text[8] != "-" or text[13] != "-" or text[18] != "-" or text[23] != "-":
        return Malformed("service UUID is not in 8-4-4-4-12 form")
    if text.endswith(BLUETOOTH_BASE_SUFFIX):
        return None
    try:
        raw = bytes.fromhex(text.replace("-", ""))
    except ValueError:
        return Malformed("service UUID is not hex")
    if len(raw) != 16:
        return Malformed("service UUID is not hex")
    return raw


def parse_ibeacon(payload: bytes) -> IBeaconFrame | Malformed | None:
    """An iBeacon from Apple manufacturer data; None for Apple's other (continuity) frames."""
    if payload[:2] != IBEACON_PREFIX:
        return None
    if len(payload) != 23:
        return Malformed(f"iBeacon payload is {len(payload)} bytes, expected 23")
    return IBeaconFrame(
        uuid=payload[2:18],
        major=int.from_bytes(payload[18:20], "big"),
        minor=int.from_bytes(payload[20:22], "big"),
        measured_power=int8(payload[22]),
    )


def parse_eddystone(
    payload: bytes,
) -> EddystoneUidFrame | EddystoneOtherFrame | Malformed | None:
    """An Eddystone frame from 0xFEAA service data; None for frame types we do not know."""
    if not payload:
        return Malformed("Eddystone service data is empty")
    frame_type = payload[0]
    if frame_type == EDDYSTONE_UID:
        # 18 bytes as the spec's table lists, 20 with the two reserved trailing bytes
        if len(payload) not in (18, 20):
            return Malformed(f"Eddystone-UID frame is {len(payload)} bytes, expected 18 or 20")
        return EddystoneUidFrame(payload[2:12], payload[12:18], int8(payload[1]))
    if frame_type in (EDDYSTONE_URL, EDDYSTONE_TLM, EDDYSTONE_EID):
        return EddystoneOtherFrame(frame_type)
    return None


def address_bytes(address: str) -> bytes | None:
    """The 6 octets of ``AA:BB:CC:DD:EE:FF`` (most significant first), or None if not that form."""
    if len(address) != 17 or address[2::3] != ":::::":
        return None
    try:
        raw = bytes.fromhex(address.replace(":", ""))
    except ValueError:
        return None
    return raw if len(raw) == 6 else None


def random_address_subtype(address: str) -> str | None:
    """For a random address: ``resolvable``, ``static``, ``non-resolvable``; None if unreadable."""
    raw = address_bytes(address)
    if raw is None:
        return None
    top = raw[0] >> 6
    if top == 0b01:
        return "resolvable"
    if top == 0b11:
        return "static"
    if top == 0b00:
        return "non-resolvable"
    return None
