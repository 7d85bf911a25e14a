"""Canonical text forms of contact keys, and parsing of every accepted input form (SPEC §1).

Canonical forms (what the store holds and ``export`` writes):

- ``hallway-v1``: 32 lower-case hex digits (the 16-byte enrollment key K)
- ``irk``: 32 lower-case hex digits, most significant byte first
- ``ibeacon``: ``<uuid>/<major>/<minor>`` with a lower-case dashed UUID
- ``eddystone-uid``: ``<namespace 20 hex>/<instance 12 hex>``, lower-case
- ``address``: ``AA:BB:CC:DD:EE:FF``, upper-case

Error messages name the problem, never the key material.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Mapping
from typing import Any

from hallway.errors import KeyFormatError
from hallway.models import ContactKey, KeyKind

_HEX = re.compile(r"[0-9a-fA-F]*")
_ADDRESS = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")


def _hex_bytes(text: str, length: int, what: str) -> bytes:
    if len(text) != 2 * length:
        raise KeyFormatError(f"{what} must be {2 * length} hex digits, got {len(text)} characters")
    if not _HEX.fullmatch(text):
        raise KeyFormatError(f"{what} must be hex digits only")
    return bytes.fromhex(text)


def parse_irk(text: str, *, order: str = "msb") -> bytes:
    """An IRK from any accepted form, returned most significant byte first.

    Accepts 32 hex digits (optionally ``irk:`` or ``0x`` prefixed) in ``order`` ``msb`` (the
    Core spec's notation) or ``lsb`` (BlueZ's ``info`` files), and base64 of the 16 bytes least
    significant first (the macOS Keychain export).
    """
    if order not in ("msb", "lsb"):
        raise KeyFormatError("irk order must be 'msb' or 'lsb'")
    raw = text.strip()
    lowered = raw.lower()
    for prefix in ("irk:", "0x"):
        if lowered.startswith(prefix):
            raw = raw[len(prefix) :]
            lowered = lowered[len(prefix) :]
            break
    if len(raw) == 32 and _HEX.fullmatch(raw):
        value = bytes.fromhex(raw)
        return value[::-1] if order == "lsb" else value
    if len(raw) == 24 and raw.endswith("=="):
        try:
            decoded = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise KeyFormatError("irk is neither 32 hex digits nor valid base64") from None
        if len(decoded) != 16:
            raise KeyFormatError("irk base64 must decode to 16 bytes")
        return decoded[::-1]
    raise KeyFormatError(
        f"irk must be 32 hex digits or 24 characters of base64, got {len(raw)} characters"
    )


def parse_hallway_key(text: str) -> bytes:
    """The 16-byte hallway-v1 enrollment key from 32 hex digits or base64url (the QR form)."""
    raw = text.strip()
    if len(raw) == 32 and _HEX.fullmatch(raw):
        return bytes.fromhex(raw)
    try:
        decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        raise KeyFormatError("hallway-v1 key must be 32 hex digits or base64url") from None
    if len(decoded) != 16:
        raise KeyFormatError(f"hallway-v1 key must be 16 bytes, got {len(decoded)}")
    return decoded


def normalize_address(text: str) -> str:
    """``AA:BB:CC:DD:EE:FF`` upper-case, or KeyFormatError."""
    raw = text.strip()
    if not _ADDRESS.fullmatch(raw):
        raise KeyFormatError("address must look like AA:BB:CC:DD:EE:FF")
    return raw.upper()


def ibeacon_value(uuid_text: str, major: int, minor: int) -> str:
    """Canonical iBeacon key text."""
    try:
        parsed = uuid.UUID(uuid_text)
    except (ValueError, AttributeError, TypeError):
        raise KeyFormatError("ibeacon uuid is not a UUID") from None
    for name, number in (("major", major), ("minor", minor)):
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= 0xFFFF:
            raise KeyFormatError(f"ibeacon {name} must be an integer 0-65535")
    return f"{parsed}/{major}/{minor}"


def eddystone_value(namespace: str, instance: str) -> str:
    """Canonical Eddystone-UID key text."""
    ns = _hex_bytes(namespace.strip(), 10, "eddystone namespace")
    inst = _hex_bytes(instance.strip(), 6, "eddystone instance")
    return f"{ns.hex()}/{inst.hex()}"


def key_from_json(obj: Mapping[str, Any]) -> ContactKey:
    """One SPEC §1 key object to a canonical ContactKey, or KeyFormatError."""
    kind_text = obj.get("kind")
    try:
        kind = KeyKind(str(kind_text))
    except ValueError:
        raise KeyFormatError(f"unknown key kind {kind_text!r}") from None

    def text(field: str) -> str:
        value = obj.get(field)
        if not isinstance(value, str):
            raise KeyFormatError(f"{kind} key needs a string '{field}'")
        return value

    allowed = {
        KeyKind.HALLWAY_V1: {"kind", "key"},
        KeyKind.IRK: {"kind", "irk", "order"},
        KeyKind.IBEACON: {"kind", "uuid", "major", "minor"},
        KeyKind.EDDYSTONE_UID: {"kind", "namespace", "instance"},
        KeyKind.ADDRESS: {"kind", "address"},
    }[kind]
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise KeyFormatError(f"{kind} key has unknown field(s): {', '.join(unknown)}")

    if kind is KeyKind.HALLWAY_V1:
        value = parse_hallway_key(text("key")).hex()
    elif kind is KeyKind.IRK:
        order = obj.get("order", "msb")
        if not isinstance(order, str):
            raise KeyFormatError("irk order must be 'msb' or 'lsb'")
        value = parse_irk(text("irk"), order=order).hex()
    elif kind is KeyKind.IBEACON:
        value = ibeacon_value(text("uuid"), obj.get("major"), obj.get("minor"))  # type: ignore[arg-type]
    elif kind is KeyKind.EDDYSTONE_UID:
        value = eddystone_value(text("namespace"), text("instance"))
    else:
        value = normalize_address(text("address"))
    return ContactKey(kind, value)


def key_to_json(key: ContactKey) -> dict[str, Any]:
    """The SPEC §1 JSON object of a canonical key (the export form)."""
    kind = key.kind
    if kind is KeyKind.HALLWAY_V1:
        return {"kind": kind.value, "key": key.value}
    if kind is KeyKind.IRK:
        return {"kind": kind.value, "irk": key.value}
    if kind is KeyKind.IBEACON:
        uuid_text, major, minor = key.value.split("/")
        return {"kind": kind.value, "uuid": uuid_text, "major": int(major), "minor": int(minor)}
    if kind is KeyKind.EDDYSTONE_UID:
        namespace, instance = key.value.split("/")
        return {"kind": kind.value, "namespace": namespace, "instance": instance}
    return {"kind": kind.value, "address": key.value}


def mask(value: str) -> str:
    """A key's text with all but its kind-neutral shape hidden (for ``show`` without reveal)."""
    return "•" * 8 + f" ({len(value)} chars)"
