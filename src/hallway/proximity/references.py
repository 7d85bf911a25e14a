"""Reference beacons named by badge: what the resolver and the calibrator know them by.

A ``[[proximity.reference]]`` entry names either an imported contact (``contact``) or a badge
by its own key (``address``, ``ibeacon``, ``eddystone_uid``: the contacts file's forms), which
need not be imported. A badge reference is given to the resolver as a contact of its own that
no store holds (``badge_contacts``), with an id of its own (``reference badge KIND:VALUE``), so
its
advertisements resolve like any badge's and reach the tracker, which hands them to the
calibrator and never to presence. A scanner's own advertised beacon (``[scanner.beacon]``) is
such a badge to the scanners that hear it.
"""

from __future__ import annotations

from collections.abc import Iterable

from hallway.config import ReferenceConfig
from hallway.models import Contact, ContactKey, KeyKind

REFERENCE_ID = "reference badge "  # + the badge's key text (KIND:VALUE)

_KINDS = {"address": KeyKind.ADDRESS, "ibeacon": KeyKind.IBEACON,
          "eddystone_uid": KeyKind.EDDYSTONE_UID}


def reference_id(ref: ReferenceConfig) -> str:
    """The id the tracker and the calibrator know this reference by: the contact's id, or the
    badge's own (``REFERENCE_ID`` + its key text)."""
    if ref.contact is not None:
        return ref.contact
    return REFERENCE_ID + ref.key


def badge_key(ref: ReferenceConfig) -> ContactKey | None:
    """The badge reference's key (None for a contact reference)."""
    for field, kind in _KINDS.items():
        value = getattr(ref, field)
        if value is not None:
            return ContactKey(kind, value)
    return None


def badge_contacts(refs: Iterable[ReferenceConfig]) -> list[Contact]:
    """A contact for each badge reference, for the resolver only (never stored, never shown:
    the tracker gives references no presence events)."""
    out = []
    for ref in refs:
        key = badge_key(ref)
        if key is not None:
            out.append(Contact(id=reference_id(ref), name="reference beacon", keys=(key,)))
    return out
