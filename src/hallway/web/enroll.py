"""The enrollment page's form -> a contact, through the same validation as ``contacts import``.

The form is turned into a SPEC §1 object and handed to ``contact_from_obj`` (the importer's
own check), so the page accepts exactly what the CLI accepts. A phone gets a fresh hallway-v1
key whose enrollment URI and QR code are returned once; a badge gets the key it carries.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import segno

from hallway.contacts_io import contact_from_obj, derive_id, enroll_uri, iso
from hallway.models import Contact, KeyKind

CARRIERS = ("phone", "ibeacon", "eddystone-uid", "address", "none")
MAX_LIST = 200


class FormError(ValueError):
    """The form cannot become a contact; the message says which field and why."""


def _text(form: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    value = form.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise FormError(f"{name}: required")
        return None
    if not isinstance(value, str):
        raise FormError(f"{name}: must be text")
    return value.strip()


def _list(form: Mapping[str, Any], name: str) -> list[str]:
    value = form.get(name) or []
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or len(value) > MAX_LIST:
        raise FormError(f"{name}: must be a list of at most {MAX_LIST} items")
    items = []
    for item in value:
        if not isinstance(item, str):
            raise FormError(f"{name}: must be a list of text")
        if item.strip() and item.strip() not in items:
            items.append(item.strip())
    return items


def _badge_key(form: Mapping[str, Any], carrier: str) -> dict[str, Any]:
    if carrier == "ibeacon":
        uuid = _text(form, "uuid", required=True)
        try:
            major = int(str(form.get("major", "")).strip())
            minor = int(str(form.get("minor", "")).strip())
        except ValueError:
            raise FormError("major and minor: whole numbers from 0 to 65535") from None
        return {"kind": "ibeacon", "uuid": uuid, "major": major, "minor": minor}
    if carrier == "eddystone-uid":
        return {"kind": "eddystone-uid", "namespace": _text(form, "namespace", required=True),
                "instance": _text(form, "instance", required=True)}
    return {"kind": "address", "address": _text(form, "address", required=True)}


def contact_from_form(form: Mapping[str, Any], *, now: float) -> tuple[Contact, str | None]:
    """The contact a form describes, and for a phone its enrollment URI (shown once)."""
    name = _text(form, "name", required=True)
    assert name is not None
    contact_id = _text(form, "id") or derive_id(name)
    if not contact_id:
        raise FormError("id: cannot be derived from that name; give one")
    carrier = str(form.get("carrier") or "phone")
    if carrier not in CARRIERS:
        raise FormError(f"carrier: one of {', '.join(CARRIERS)}")
    keys: list[dict[str, Any]] = []
    phone_key: str | None = None
    if carrier == "phone":
        phone_key = secrets.token_bytes(16).hex()
        keys.append({"kind": KeyKind.HALLWAY_V1.value, "key": phone_key})
    elif carrier != "none":
        keys.append(_badge_key(form, carrier))
    obj: dict[str, Any] = {"id": contact_id, "name": name, "tags": _list(form, "tags"),
                           "consent": {"granted_at": iso(float(int(now)))}, "keys": keys,
                           "display": bool(form.get("display")),
                           "knows": [k for k in _list(form, "knows") if k != contact_id]}
    for field in ("org", "title"):
        value = _text(form, field)
        if value is not None:
            obj[field] = value
    try:
        contact = contact_from_obj(obj)
    except ValueError as exc:
        raise FormError(str(exc)) from None
    return contact, None if phone_key is None else enroll_uri(contact.id, phone_key)


def qr_data_uri(uri: str) -> str:
    """The QR code of an enrollment URI as an SVG data URI (rendered here, no script)."""
    result: str = segno.make(uri, error="m").svg_data_uri(scale=8, border=4)
    return result


def contact_summary(contact: Contact) -> dict[str, Any]:
    """A contact as the enrollment page lists it: no key material, only the key kinds."""
    data: dict[str, Any] = {
        "id": contact.id, "name": contact.name, "org": contact.org, "tags": list(contact.tags),
        "keys": sorted({key.kind.value for key in contact.keys}),
        "display": contact.display,
        "knows": sorted(contact.knows),
    }
    return data
