"""The one owner of hallway's JSON text: events, protocol lines, MQTT payloads.

Everything hallway writes as JSON for a reader (a socket subscriber, ``hallway replay --out``,
the event log, an MQTT broker) goes through ``encode``: compact separators, UTF-8 kept as is
(no ``\\u`` escapes), keys in the order given. So an event has one byte form wherever it is
read: the line a subscriber receives, the row in the log and the line ``hallway replay``
writes are the same bytes.

Reading goes through ``decode``, which accepts text or UTF-8 bytes and raises ``DecodeError``
(a ValueError) for anything that is not one JSON object, including input nested deep enough
to exhaust the parser's recursion. The helpers below read the few event fields the daemon
needs back from a logged event (its contact's id and tags, its ``ts``) and redact a contact.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
from typing import Any

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_encode = _ENCODER.encode
_decode = json.JSONDecoder().decode


class DecodeError(ValueError):
    """The input is not one JSON object (the message says why, without echoing the input)."""


def encode(obj: Any) -> str:
    """Compact JSON text: ``,`` and ``:`` without spaces, non-ASCII kept."""
    return _encode(obj)


def encode_bytes(obj: Any) -> bytes:
    """``encode`` as UTF-8 (an MQTT payload)."""
    return _encode(obj).encode()


def encode_line(obj: Any) -> bytes:
    """One protocol line: ``encode``, a newline, UTF-8."""
    return (_encode(obj) + "\n").encode()


def line_of(text: str) -> bytes:
    """The protocol line of already encoded text (an event as logged)."""
    return (text + "\n").encode()


def decode(data: str | bytes) -> dict[str, Any]:
    """One JSON object from text or UTF-8 bytes; DecodeError otherwise."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("not valid UTF-8") from None
    try:
        value = _decode(data.strip())
    except (ValueError, RecursionError):
        raise DecodeError("not valid JSON") from None
    if not isinstance(value, dict):
        raise DecodeError("not a JSON object")
    return value


def filter_keys(event: str | bytes) -> tuple[str, frozenset[str] | None]:
    """The contact id and tags of an encoded event (tags None for an id-only contact)."""
    contact = decode(event).get("contact")
    if not isinstance(contact, dict):
        return "", None
    contact_id = str(contact.get("id", ""))
    if "name" not in contact:
        return contact_id, None
    tags = contact.get("tags")
    if not isinstance(tags, list):
        return contact_id, frozenset()
    return contact_id, frozenset(tag for tag in tags if isinstance(tag, str))


def event_ts(event: str | bytes) -> float:
    """The ``ts`` of an encoded event; DecodeError if it has none."""
    ts = decode(event).get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise DecodeError('no numeric "ts"')
    return float(ts)


def redact_contact(event: str | bytes, contact_id: str) -> str:
    """The encoded event with its contact reduced to ``{"id": contact_id}``, re-encoded."""
    data = decode(event)
    data["contact"] = {"id": contact_id}
    return _encode(data)
