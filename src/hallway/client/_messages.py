"""Typed forms of what a daemon sends: events, the present set, resync, pings, status.

Every object keeps the JSON it came from in ``raw``, so a key this version does not know is
never lost. Parsing is lenient where the protocol allows growth (unknown keys, unknown event
types) and strict where the client depends on a value (an event's ``seq``, a contact's ``id``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from hallway.client._errors import ProtocolError

#: Message types that are not events (an event is anything else carrying ``seq`` and
#: ``contact``).
CONTROL_TYPES = frozenset({
    "hello", "subscribed", "resync", "ping", "error", "status", "present",
})


_NONE: Mapping[str, str] = MappingProxyType({})


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
        # Written for speed (one contact per event): no helper calls on the common path.
        if data.__class__ is not dict or data.get("id").__class__ is not str:
            raise ProtocolError("a contact without an id")
        get = data.get
        name = get("name")
        org = get("org")
        title = get("title")
        handles = get("handles")
        tags = get("tags")
        knows = get("knows")
        display = get("display")
        return cls(
            data["id"],
            name if name.__class__ is str else None,
            org if org.__class__ is str else None,
            title if title.__class__ is str else None,
            {str(k): str(v) for k, v in handles.items()} if handles.__class__ is dict else _NONE,
            tuple(map(str, tags)) if tags.__class__ is list else (),
            display if display.__class__ is bool else None,
            tuple(map(str, knows)) if knows.__class__ is list else None,
            data,
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
    get = data.get
    kind = get("type")
    seq = get("seq")
    if kind.__class__ is not str or seq.__class__ is not int:
        raise ProtocolError("an event without a type and an integer seq")
    ts = get("ts")
    scanner = get("scanner")
    zone = get("zone")
    distance = get("distance_m")
    rssi = get("rssi")
    via = get("via")
    carrier = get("carrier")
    room = get("room")
    common = (
        kind, seq,
        ts if ts.__class__ is float else _num(ts),
        scanner if scanner.__class__ is str else None,
        Contact.from_json(get("contact")),
        zone if zone.__class__ is str else None,
        distance if distance.__class__ is float else _num(distance),
        rssi if rssi.__class__ is float else _num(rssi),
        via if via.__class__ is str else None,
        carrier if carrier.__class__ is str else None,
        room if room.__class__ is str else None,
        data,
    )
    cls = _KINDS.get(kind, Event)
    if cls is Arrived or cls is Event:
        return cls(*common)
    if cls is ZoneChanged:
        return ZoneChanged(*common, _str(get("previous_zone")))
    if cls is Departed:
        return Departed(*common, _num(get("dwell_s")), _str(get("reason")))
    return Moved(*common, _str(get("previous_room")))


def is_event(data: dict[str, Any]) -> bool:
    """True for an event object (not a control message)."""
    return data.get("type") not in CONTROL_TYPES and "seq" in data and "contact" in data
