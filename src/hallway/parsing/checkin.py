"""The check-in write (GATT, for phones that cannot advertise in the background). Pure.

A scanner that takes check-ins advertises, connectable, the service ``SERVICE_UUID`` with one
writable characteristic ``CHARACTERISTIC_UUID``. A phone writes 21 bytes:

    48 57 02 || RPI (16) || heard_rssi (int8) || tx_power (int8)

``heard_rssi`` is the scanner's advertisement as the phone hears it and ``tx_power`` the
phone's own measured power at 1 m; ``0x7F`` in either means unknown. ``parse_checkin`` returns
a ``CheckinFrame`` or a ``Refusal`` naming the rule the bytes broke; it never raises, and it
costs the same for any input (a length test and a few byte compares: no key is tried).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

SERVICE_UUID = "48570000-5c7a-4e0b-9b8e-3f1d2a6c9e01"
CHARACTERISTIC_UUID = "48570001-5c7a-4e0b-9b8e-3f1d2a6c9e01"
MAGIC = b"HW"
VERSION = 0x02
FRAME_LENGTH = 21
UNKNOWN = 0x7F
"""The int8 that means "not known" in ``heard_rssi`` and ``tx_power``."""


class Refusal(StrEnum):
    """Why a write was refused; the value names the ``status`` counter."""

    LENGTH = "bad_length"  # not 21 bytes
    MAGIC = "bad_magic"  # does not start with "HW"
    VERSION = "bad_version"  # "HW" but a version other than 2
    UNKNOWN_RPI = "unknown_rpi"  # well formed, but no enrolled contact's identifier


@dataclass(frozen=True, slots=True)
class CheckinFrame:
    """A well-formed check-in; ``None`` where the phone sent ``0x7F`` (unknown)."""

    rpi: bytes
    heard_rssi: int | None
    tx_power: int | None


def _int8(value: int) -> int:
    return value - 256 if value > 127 else value


def parse_checkin(data: bytes) -> CheckinFrame | Refusal:
    """The write's fields, or why it is refused (see the module docstring)."""
    if len(data) != FRAME_LENGTH:
        return Refusal.LENGTH
    if data[:2] != MAGIC:
        return Refusal.MAGIC
    if data[2] != VERSION:
        return Refusal.VERSION
    heard = _int8(data[19])
    power = _int8(data[20])
    return CheckinFrame(
        rpi=bytes(data[3:19]),
        heard_rssi=None if heard == UNKNOWN else heard,
        tx_power=None if power == UNKNOWN else power,
    )


def encode_checkin(rpi: bytes, *, heard_rssi: int | None, tx_power: int | None) -> bytes:
    """The 21 bytes a phone writes (``None`` is sent as ``0x7F``); ValueError on bad input."""
    if len(rpi) != 16:
        raise ValueError("an RPI is 16 bytes")
    fields = []
    for name, value in (("heard_rssi", heard_rssi), ("tx_power", tx_power)):
        if value is None:
            fields.append(UNKNOWN)
        elif -128 <= value <= 126:
            fields.append(value & 0xFF)
        else:
            raise ValueError(f"{name} must be an int8 other than 127 (the unknown marker)")
    return MAGIC + bytes([VERSION]) + rpi + bytes(fields)
