"""Hot-path records shared by the pipeline: immutable, no validation (named tuple or frozen
slotted dataclasses).

The pipeline is ``source -> resolver -> tracker -> hub``; these are the values passed along it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import NamedTuple

_EMPTY_INT_MAP: Mapping[int, bytes] = MappingProxyType({})
_EMPTY_STR_MAP: Mapping[str, bytes] = MappingProxyType({})


class KeyKind(StrEnum):
    """Identity kinds of SPEC §1/§4; the value is the ``kind`` string and the event's ``via``."""

    HALLWAY_V1 = "hallway-v1"
    IRK = "irk"
    IBEACON = "ibeacon"
    EDDYSTONE_UID = "eddystone-uid"
    ADDRESS = "address"


CHECKIN = "checkin"
"""The ``carrier`` of a sighting (and of the events it causes) that came as a GATT check-in
(SPEC §3.1) rather than an advertisement; advertisements carry ``None``."""


class Advertisement(NamedTuple):
    """One received advertisement (SPEC §2 fields; bleak's ``AdvertisementData`` names).

    ``address`` is upper-case ``AA:BB:CC:DD:EE:FF``; ``manufacturer_data`` is keyed by the
    company id with the payload after the id; ``service_data`` by lower-case 128-bit UUID.
    A named tuple, not a dataclass: the pipeline builds one per packet. Change a copy with
    ``adv._replace(...)``.
    """

    ts: float
    address: str
    address_type: str = "public"
    rssi: int = -127
    tx_power: int | None = None
    local_name: str | None = None
    manufacturer_data: Mapping[int, bytes] = _EMPTY_INT_MAP
    service_data: Mapping[str, bytes] = _EMPTY_STR_MAP
    service_uuids: tuple[str, ...] = ()
    scanner: str = ""


@dataclass(frozen=True, slots=True)
class ContactKey:
    """One key of a contact, in canonical text form (see ``hallway.keys``)."""

    kind: KeyKind
    value: str


@dataclass(frozen=True, slots=True)
class Contact:
    """A contact as the core sees it. Times are Unix seconds; ``None`` means not set."""

    id: str
    name: str
    org: str | None = None
    title: str | None = None
    handles: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    granted_at: float | None = None
    expires_at: float | None = None
    revoked_at: float | None = None
    keys: tuple[ContactKey, ...] = ()
    calibration_db: float = 0.0
    display: bool = False  # agreed to be shown by name on public screens (SPEC §1)
    knows: frozenset[str] = frozenset()  # ids of enrolled people this person knows (SPEC §1)
    # Import only: canonical ``email:``/``phone:`` identifiers for network matching, stored
    # as salted hashes and never read back; None leaves the stored ones as they are.
    match: tuple[str, ...] | None = None

    def active(self, now: float) -> bool:
        """True while the contact may be resolved: not revoked and consent not expired."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, slots=True)
class Match:
    """What the resolver found for an advertisement: whose, by which kind, and 1 m power."""

    contact_id: str
    via: KeyKind
    measured_power: int | None = None


@dataclass(frozen=True, slots=True)
class Sighting:
    """A resolved advertisement handed to the tracker."""

    ts: float
    contact_id: str
    via: KeyKind
    rssi: int
    measured_power: int | None
    scanner: str
    carrier: str | None = None  # CHECKIN for a check-in; None for an advertisement


class EventType(StrEnum):
    """SPEC §5 event types."""

    ARRIVED = "arrived"
    ZONE = "zone"
    DEPARTED = "departed"
    MOVED = "moved"  # venue level only: present, and now in another room
    # The contact's consent ended (revoked, or expired): a tombstone carrying only the id,
    # sent whether or not the contact was present (after its ``departed`` when it was).
    REVOKED = "revoked"


class DepartReason(StrEnum):
    """Why a contact departed (SPEC §5)."""

    TIMEOUT = "timeout"
    OUT_OF_RANGE = "out_of_range"
    REVOKED = "revoked"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A tracker decision, before it gets a ``seq`` and contact details (see ``hallway.events``).

    ``ts`` is the decision time on the advertisements' clock. ``zone``/``distance_m``/``rssi``
    are the current estimate (for ``departed``: the last one known).
    """

    type: EventType
    ts: float
    contact_id: str
    zone: str | None = None
    distance_m: float | None = None
    rssi: float | None = None
    via: KeyKind | None = None
    previous_zone: str | None = None
    dwell_s: float | None = None
    reason: DepartReason | None = None
    room: str | None = None  # venue level only (``hallway venue``)
    previous_room: str | None = None
    carrier: str | None = None  # CHECKIN when the latest sighting behind it was a check-in


@dataclass(frozen=True, slots=True)
class PresentInfo:
    """One present contact in a snapshot (SPEC §6 ``present`` entries)."""

    contact_id: str
    zone: str
    distance_m: float
    rssi: float
    since: float
    via: KeyKind
    room: str | None = None  # venue level only
    carrier: str | None = None  # CHECKIN when the latest sighting was a check-in
