"""SPEC §2 trace files: one advertisement per JSON line. Pure: text in, records out.

``parse_trace_line`` returns an ``Advertisement`` or raises ``TraceLineError`` with a short
reason; ``read_trace`` turns a stream of lines into ``(line_number, Advertisement | reason)``
so a malformed line is counted and skipped, never fatal. ``advertisement_json`` is the inverse
(used by the recorder and the simulator).
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from hallway.models import Advertisement

_ADDR_CHARS = frozenset("0123456789ABCDEFabcdef:")
_NO_UUIDS: tuple[str, ...] = ()
TS_MAX = float(2**32)
"""``ts`` must be from 0 to before this (2106): RPI interval numbers are 32-bit (SPEC §3)."""


def _json_loader() -> tuple[Callable[[str | bytes], Any], tuple[type[Exception], ...]]:
    """orjson's ``loads`` where installed (about 3x faster on trace lines), else the stdlib's."""
    try:
        module = importlib.import_module("orjson")
    except ImportError:
        return json.loads, (ValueError, RecursionError)
    loads: Callable[[str | bytes], Any] = module.loads
    return loads, (ValueError, RecursionError, TypeError)


_loads, _LOAD_ERRORS = _json_loader()


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
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not _plausible_ts(ts):
        raise TraceLineError("ts must be Unix seconds from 0 to 2^32")
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
        if not key.isascii() or not key.isdigit() or len(key) > 5 or int(key) > 0xFFFF:
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


def _plausible_ts(ts: float) -> bool:
    try:
        return 0.0 <= float(ts) < TS_MAX
    except OverflowError:  # an integer too large for a float
        return False


def _advertisement_fast(obj: Any) -> Advertisement | None:
    """The common well-formed line, checked with cheap exact-type tests; None means "let
    ``advertisement_from_obj`` decide" (it accepts everything this accepts, and more)."""
    if type(obj) is not dict:
        return None
    ts = obj.get("ts")
    address = obj.get("address")
    rssi = obj.get("rssi", -127)
    if (
        type(ts) is not float
        or not 0.0 <= ts < TS_MAX  # also NaN
        or type(address) is not str
        or len(address) != 17
        or address[2::3] != ":::::"
        or not _ADDR_CHARS.issuperset(address)
        or type(rssi) is not int
        or not -128 <= rssi <= 20
        or obj.get("tx_power") is not None
    ):
        return None
    address_type = obj.get("address_type", "public")
    if address_type not in ("random", "public"):  # a tuple: the value may be unhashable
        return None
    local_name = obj.get("local_name")
    if local_name is not None and type(local_name) is not str:
        return None
    scanner = obj.get("scanner") or ""
    if type(scanner) is not str:
        return None
    manufacturer_data: dict[int, bytes] = {}
    service_data: dict[str, bytes] = {}
    try:
        mfr_raw = obj.get("manufacturer_data")
        if mfr_raw:
            for key, value in mfr_raw.items():
                if not key.isascii() or not key.isdigit() or type(value) is not str:
                    return None
                company = int(key)
                if company > 0xFFFF:
                    return None
                manufacturer_data[company] = bytes.fromhex(value)
        svc_raw = obj.get("service_data")
        if svc_raw:
            for key, value in svc_raw.items():
                if type(value) is not str:
                    return None
                service_data[key.lower()] = bytes.fromhex(value)
    except (AttributeError, ValueError):
        return None
    uuids = obj.get("service_uuids")
    service_uuids = _NO_UUIDS
    if uuids:
        if type(uuids) is not list:
            return None
        for uuid in uuids:
            if type(uuid) is not str:
                return None
        service_uuids = tuple([uuid.lower() for uuid in uuids])
    return Advertisement(
        ts,
        address.upper(),
        address_type,
        rssi,
        None,
        local_name,
        manufacturer_data,
        service_data,
        service_uuids,
        scanner,
    )


def parse_trace_line(line: str | bytes) -> Advertisement:
    """One trace line to an Advertisement, or TraceLineError."""
    try:
        obj = _loads(line)
    except _LOAD_ERRORS:
        raise TraceLineError("not valid JSON") from None
    return _advertisement_fast(obj) or advertisement_from_obj(obj)


_TS_PREFIX = b'{"ts": '
_RSSI_KEY = b'"rssi": '
_JSON_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_JSON_INT = re.compile(rb"-?(?:0|[1-9][0-9]*)")


_new_tuple = tuple.__new__  # Advertisement's own __new__ without its Python-level frame

_Payload = tuple[str, str, str | None, dict[int, bytes], dict[str, bytes], tuple[str, ...], str]


class TraceParser:
    """``parse_trace_line`` with a memory of payloads: for the thousands of repeats of each
    device's advertisement only ``ts`` and ``rssi`` are parsed.

    A line in the layout the recorder and the simulator write (``{"ts": N, ...,
    "rssi": N, ...}``, the two numbers matched as JSON numbers) is split around those two
    numbers; the rest of the bytes is looked up among the rests of lines already parsed in
    full. Only a rest whose full parse agreed with the split is remembered, so a line parses
    here exactly as with ``parse_trace_line``. The
    memory is bounded (it is emptied when full). Advertisements made from one remembered rest
    share its (not to be modified) dicts.
    """

    __slots__ = ("_cache", "_max_entries", "hits")

    def __init__(self, *, max_entries: int = 65536) -> None:
        self._cache: dict[bytes, _Payload] = {}
        self._max_entries = max_entries
        self.hits = 0

    def parse(self, line: str | bytes) -> Advertisement:
        """One trace line to an Advertisement, or TraceLineError."""
        if type(line) is bytes:
            raw = line
        else:
            try:
                raw = str(line).encode()
            except UnicodeEncodeError:
                return parse_trace_line(line)
        # The split: '{"ts": N' + before + '"rssi": N' + after, where before and after start
        # with ", " (bytes.find does it in C; the two numbers are checked as JSON numbers).
        if not raw.startswith(_TS_PREFIX):
            return parse_trace_line(raw)
        ts_end = raw.find(b", ", 7)
        key = raw.find(_RSSI_KEY, ts_end)
        rssi_end = raw.find(b", ", key + 8)
        if ts_end < 0 or key < 0 or rssi_end < 0:
            return parse_trace_line(raw)
        ts_text = raw[7:ts_end]
        rssi_text = raw[key + 8 : rssi_end]
        rest = raw[ts_end:key] + raw[rssi_end:]
        numbers = (
            len(rssi_text) <= 4  # int() of thousands of digits raises
            and _JSON_INT.fullmatch(rssi_text) is not None
            and _JSON_NUMBER.fullmatch(ts_text) is not None
        )
        known = self._cache.get(rest)
        if known is not None and numbers:
            ts = float(ts_text)
            rssi = int(rssi_text)
            if 0.0 <= ts < TS_MAX and -128 <= rssi <= 20:  # as the full parse checks
                self.hits += 1
                address, address_type, local_name, mfr, svc, uuids, scanner = known
                return _new_tuple(
                    Advertisement,
                    (ts, address, address_type, rssi, None, local_name, mfr, svc, uuids, scanner),
                )
        adv = parse_trace_line(raw)
        if (
            known is None
            and numbers
            and adv.tx_power is None
            and b'"ts"' not in rest
            and b'"rssi"' not in rest
            and float(ts_text) == adv.ts
            and int(rssi_text) == adv.rssi
        ):
            if len(self._cache) >= self._max_entries:
                self._cache.clear()
            self._cache[rest] = (
                adv.address,
                adv.address_type,
                adv.local_name,
                dict(adv.manufacturer_data),
                dict(adv.service_data),
                adv.service_uuids,
                adv.scanner,
            )
        return adv


def read_trace(lines: Iterable[str | bytes]) -> Iterator[tuple[int, Advertisement | str]]:
    """``(line_number, advertisement or reason)`` for each non-blank line, numbered from 1."""
    parse = TraceParser().parse
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, parse(line)
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
