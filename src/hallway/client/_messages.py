"""Typed forms of what a daemon sends: events, the present set, resync, pings, status.

Every object keeps the JSON it came from in ``raw``, so a key this version does not know is
never lost. Parsing is lenient where the protocol allows growth (unknown keys, unknown event
types) and strict where the client depends on a value (an event's ``seq``, a contact's ``id``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hallway.client._errors import ProtocolError

#: Message types that are not events (an event is anything else carrying ``seq`` and
#: ``contact``).
CONTROL_TYPES = frozenset({
    "hello", "subscribed", "resync", "ping", "error", "status", "present",
})


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Contact:
    """The public fields of a contact, as an event or the present set carries them.

    ``display`` and ``knows`` are present only where the token's scope allows them (None
    otherwise). A revoked contact's departure carries only ``id``.
    """

    id: str
    name: str | None
    org: str | None
    title: str | None
    handles: Mapping[str, str]
    tags: tuple[str, ...]
    display: bool | None
    knows: tuple[str, ...] | None
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, data: Any) -> Contact:
        """Parse a contact object; ProtocolError without a string ``id``."""
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ProtocolError("a contact without an id")
        handles = data.get("handles")
        tags = data.get("tags")
        knows = data.get("knows")
        display = data.get("display")
        return cls(
            id=data["id"], name=_str(data.get("name")), org=_str(data.get("org")),
            title=_str(data.get("title")),
            handles={str(k): str(v) for k, v in handles.items()}
            if isinstance(handles, dict) else {},
            tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (),
            display=display if isinstance(display, bool) else None,
            knows=tuple(str(k) for k in knows) if isinstance(knows, list) else None,
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Present:
    """One contact in the present set: where it is and since when."""

    contact: Contact
    zone: str | None
    distance_m: float | None
    rssi: float | None
    since: float | None
    via: str | None
    room: str | None
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, data: Any) -> Present:
        """Parse one entry of a ``present`` list."""
        if not isinstance(data, dict):
            raise ProtocolError("a present entry that is not an object")
        return cls(
            contact=Contact.from_json(data.get("contact")), zone=_str(data.get("zone")),
            distance_m=_num(data.get("distance_m")), rssi=_num(data.get("rssi")),
            since=_num(data.get("since")), via=_str(data.get("via")),
            room=_str(data.get("room")), raw=data,
        )


def present_list(value: Any) -> tuple[Present, ...]:
    """A ``present`` list; ProtocolError if it is not a list of entries."""
    if not isinstance(value, list):
        raise ProtocolError("present is not a list")
    return tuple(Present.from_json(entry) for entry in value)


@dataclass(frozen=True, slots=True)
class Event:
    """A presence event (SPEC §5). Subclasses name the known types; a type this version does
    not know arrives as a plain ``Event``."""

    type: str
    seq: int
    ts: float | None
    scanner: str | None
    contact: Contact
    zone: str | None
    distance_m: float | None
    rssi: float | None
    via: str | None
    carrier: str | None
    room: str | None
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Arrived(Event):
    """The contact is now present."""


@dataclass(frozen=True, slots=True)
class ZoneChanged(Event):
    """The contact is still present and its zone changed from ``previous_zone``."""

    previous_zone: str | None


@dataclass(frozen=True, slots=True)
class Departed(Event):
    """The contact is no longer present, after ``dwell_s``, for ``reason`` (``timeout``,
    ``out_of_range``, ``revoked`` or ``shutdown``)."""

    dwell_s: float | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class Moved(Event):
    """The contact moved to ``room`` from ``previous_room`` (a venue's floor plan)."""

    previous_room: str | None


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The first answer to a subscription: the latest ``seq`` and who is present as of it.

    Yielded once, when the subscription is first established; a resumed connection is
    invisible to the caller (its events simply continue)."""

    seq: int
    present: tuple[Present, ...]
    scanner: str | None
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Resync:
    """The daemon no longer holds every event after ``since_seq``: some were missed for good.
    ``present`` is who is present as of ``seq``; the events that follow come after it."""

    seq: int
    since_seq: int | None
    present: tuple[Present, ...]
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Ping:
    """A keep-alive (only yielded with ``pings=True``): ``seq`` is the daemon's latest."""

    seq: int | None
    ts: float | None
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Status:
    """A daemon's operational figures (``status`` request); every figure is in ``raw``."""

    server: str | None
    scanner: str | None
    uptime_s: float | None
    last_seq: int | None
    present: int | None
    subscribers: int | None
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any], hello: Mapping[str, Any]) -> Status:
        """Parse a status reply (``hello`` supplies the server's name)."""
        version = data.get("version")
        server = f"hallway/{version}" if isinstance(version, str) else _str(hello.get("server"))

        def count(key: str) -> int | None:
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        return cls(server=server, scanner=_str(data.get("scanner", hello.get("scanner"))),
                   uptime_s=_num(data.get("uptime_s")), last_seq=count("last_seq"),
                   present=count("present"), subscribers=count("subscribers"), raw=data)


Message = Event | Subscribed | Resync | Ping

_KINDS: dict[str, type[Event]] = {"arrived": Arrived, "zone": ZoneChanged,
                                  "departed": Departed, "moved": Moved}


def parse_event(data: dict[str, Any]) -> Event:
    """A SPEC §5 event object as an Event; ProtocolError without ``seq`` or a contact."""
    kind = data.get("type")
    seq = data.get("seq")
    if not isinstance(kind, str) or not isinstance(seq, int) or isinstance(seq, bool):
        raise ProtocolError("an event without a type and an integer seq")
    common: dict[str, Any] = {
        "type": kind, "seq": seq, "ts": _num(data.get("ts")), "scanner": _str(data.get("scanner")),
        "contact": Contact.from_json(data.get("contact")), "zone": _str(data.get("zone")),
        "distance_m": _num(data.get("distance_m")), "rssi": _num(data.get("rssi")),
        "via": _str(data.get("via")), "carrier": _str(data.get("carrier")),
        "room": _str(data.get("room")), "raw": data,
    }
    cls = _KINDS.get(kind, Event)
    if cls is ZoneChanged:
        return ZoneChanged(**common, previous_zone=_str(data.get("previous_zone")))
    if cls is Departed:
        return Departed(**common, dwell_s=_num(data.get("dwell_s")),
                        reason=_str(data.get("reason")))
    if cls is Moved:
        return Moved(**common, previous_room=_str(data.get("previous_room")))
    return cls(**common)


def is_event(data: dict[str, Any]) -> bool:
    """True for an event object (not a control message)."""
    return data.get("type") not in CONTROL_TYPES and "seq" in data and "contact" in data
