"""SPEC §5 event objects: tracker decisions plus ``seq``, scanner and public contact fields."""

from __future__ import annotations

from typing import Any

from hallway.models import Contact, EventType, PresenceEvent, PresentInfo
from hallway.network.links import profile_links


def contact_public(contact: Contact | None, contact_id: str) -> dict[str, Any]:
    """The contact fields an event carries: never keys, consent, calibration or match hashes."""
    if contact is None:
        return {"id": contact_id}
    data: dict[str, Any] = {"id": contact.id, "name": contact.name}
    if contact.org is not None:
        data["org"] = contact.org
    if contact.title is not None:
        data["title"] = contact.title
    if contact.handles:
        data["handles"] = dict(contact.handles)
        # The same handles as profile links where the service has one (https: or mailto:
        # only), so an app can offer "reach out" without knowing every service's URL form.
        links = profile_links(contact.handles)
        if links:
            data["links"] = links
    if contact.tags:
        data["tags"] = list(contact.tags)
    # SPEC §1 display/knows, left out at their defaults like the fields above; a subscriber's
    # scope may remove them (the scope decides, not this function).
    if contact.display:
        data["display"] = True
    if contact.knows:
        data["knows"] = sorted(contact.knows)
    return data


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def event_json(
    event: PresenceEvent, *, seq: int, scanner: str, contact: Contact | None
) -> dict[str, Any]:
    """The SPEC §5 object for one event. A revoked contact's departure carries only its id;
    a ``revoked`` tombstone carries nothing but the contact's id, whatever ``contact`` is."""
    if event.type is EventType.REVOKED:
        return {"type": event.type.value, "seq": seq, "ts": round(event.ts, 3),
                "scanner": scanner, "contact": {"id": event.contact_id}}
    data: dict[str, Any] = {
        "type": event.type.value,
        "seq": seq,
        "ts": round(event.ts, 3),
        "scanner": scanner,
        "contact": contact_public(contact, event.contact_id),
        "zone": event.zone,
        "distance_m": _round(event.distance_m, 2),
        "rssi": _round(event.rssi, 1),
        "via": None if event.via is None else event.via.value,
    }
    if event.type is EventType.ZONE:
        data["previous_zone"] = event.previous_zone
    if event.type is EventType.DEPARTED:
        data["dwell_s"] = _round(event.dwell_s, 1)
        data["reason"] = None if event.reason is None else event.reason.value
    if event.room is not None:
        data["room"] = event.room
    if event.type is EventType.MOVED:
        data["previous_room"] = event.previous_room
    if event.carrier is not None:
        data["carrier"] = event.carrier
    return data


def present_json(info: PresentInfo, contact: Contact | None) -> dict[str, Any]:
    """One entry of the ``present`` list in ``subscribed``/``resync`` (SPEC §6)."""
    data = {
        "contact": contact_public(contact, info.contact_id),
        "zone": info.zone,
        "distance_m": round(info.distance_m, 2),
        "rssi": round(info.rssi, 1),
        "since": round(info.since, 3),
        "via": info.via.value,
    }
    if info.room is not None:
        data["room"] = info.room
    if info.carrier is not None:
        data["carrier"] = info.carrier
    return data
