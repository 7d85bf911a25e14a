"""SPEC §2 trace files: one advertisement per JSON line. Pure: text in, records out.

``parse_trace_line`` returns an ``Advertisement`` or raises ``TraceLineError`` with a short
reason; ``read_trace`` turns a stream of lines into ``(line_number, Advertisement | reason)``
so a malformed line is counted and skipped, never fatal. ``advertisement_json`` is the inverse
(used by the recorder and the simulator).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

from hallway.models import Advertisement

_ADDR_CHARS = frozenset("0123456789ABCDEFabcdef:")


class TraceLineError(ValueError):
    """A trace line is not a valid advertisement; the message is the reason."""


def _hex(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise TraceLineError(f"{what} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise TraceLineError(f"{what} is not valid hex") from None


def advertisement_from_obj(obj: Any) -> Advertisement:
    """Validate one decoded trace object."""
    if not isinstance(obj, dict):
        raise TraceLineError("line is not a JSON object")
    ts = obj.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise TraceLineError("ts must be a finite number")
    address = obj.get("address")
    if (
        not isinstance(address, str)
        or len(address) != 17
        or not _ADDR_CHARS.issuperset(address)
        or address[2::3] != ":::::"
    ):
        raise TraceLineError("address must look like AA:BB:CC:DD:EE:FF")
    address_type = obj.get("address_type", "public")
    if address_type not in ("public", "random"):
        raise TraceLineError("address_type must be 'public' or 'random'")
    rssi = obj.get("rssi", -127)
    if isinstance(rssi, bool) or not isinstance(rssi, int | float) or not -128 <= rssi <= 20:
        raise TraceLineError("rssi must be a number from -128 to 20")
    tx_power = obj.get("tx_power")
    if tx_power is not None and (
        isinstance(tx_power, bool) or not isinstance(tx_power, int) or not -128 <= tx_power <= 127
    ):
        raise TraceLineError("tx_power must be null or an integer from -128 to 127")
    local_name = obj.get("local_name")
    if local_name is not None and not isinstance(local_name, str):
        raise TraceLineError("local_name must be null or a string")
    mfr_raw = obj.get("manufacturer_data") or {}
    if not isinstance(mfr_raw, dict):
        raise TraceLineError("manufacturer_data must be an object")
    manufacturer_data: dict[int, bytes] = {}
    for key, value in mfr_raw.items():
        if not key.isdigit() or not 0 <= int(key) <= 0xFFFF:
            raise TraceLineError("manufacturer_data keys must be decimal company ids 0-65535")
        manufacturer_data[int(key)] = _hex(value, "manufacturer_data value")
    svc_raw = obj.get("service_data") or {}
    if not isinstance(svc_raw, dict):
        raise TraceLineError("service_data must be an object")
    service_data = {str(k).lower(): _hex(v, "service_data value") for k, v in svc_raw.items()}
    uuids = obj.get("service_uuids") or []
    if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
        raise TraceLineError("service_uuids must be a list of strings")
    scanner = obj.get("scanner") or ""
    if not isinstance(scanner, str):
        raise TraceLineError("scanner must be a string")
    return Advertisement(
        ts=float(ts),
        address=address.upper(),
        address_type=address_type,
        rssi=int(rssi),
        tx_power=tx_power,
        local_name=local_name,
        manufacturer_data=manufacturer_data,
        service_data=service_data,
        service_uuids=tuple(u.lower() for u in uuids),
        scanner=scanner,
    )


def parse_trace_line(line: str | bytes) -> Advertisement:
    """One trace line to an Advertisement, or TraceLineError."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        raise TraceLineError("not valid JSON") from None
    return advertisement_from_obj(obj)


def read_trace(lines: Iterable[str | bytes]) -> Iterator[tuple[int, Advertisement | str]]:
    """``(line_number, advertisement or reason)`` for each non-blank line, numbered from 1."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, parse_trace_line(line)
        except TraceLineError as exc:
            yield number, str(exc)


def advertisement_json(adv: Advertisement) -> dict[str, Any]:
    """The SPEC §2 object of an advertisement."""
    return {
        "ts": adv.ts,
        "address": adv.address,
        "address_type": adv.address_type,
        "rssi": adv.rssi,
        "tx_power": adv.tx_power,
        "local_name": adv.local_name,
        "manufacturer_data": {str(k): v.hex() for k, v in adv.manufacturer_data.items()},
        "service_data": {k: v.hex() for k, v in adv.service_data.items()},
        "service_uuids": list(adv.service_uuids),
        "scanner": adv.scanner,
    }
