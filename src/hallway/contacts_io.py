"""Contacts files: SPEC §1 JSON Lines and a CSV form, parsed whole-file-or-nothing.

``parse_contacts`` validates every line and returns the contacts with their line numbers, or
raises ``ImportRejected`` naming each bad line and its reason. Duplicate ids and a key claimed
by two contacts are bad lines. Reasons never quote key material.

CSV header (first line; ``id`` and ``name`` required, the rest optional, any order)::

    id,name,org,title,tags,handles,granted_at,expires_at,hallway_v1,irk,ibeacon,eddystone_uid,address,
    display,knows,emails,phones

``tags``, ``knows``, ``emails``, ``phones`` and every key column hold ``;``-separated values;
``display`` is ``true``/``false`` (also ``yes``/``no``, ``1``/``0``; empty is false); ``handles`` is
``service=handle;...``; ``ibeacon`` is ``uuid/major/minor``; ``eddystone_uid`` is
``namespace/instance``; times are ISO 8601 (``2026-11-23T00:00:00Z``).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hallway.errors import ImportRejected, KeyFormatError, Problem
from hallway.keys import key_from_json, key_to_json
from hallway.models import Contact, ContactKey
from hallway.network import normalise

CSV_COLUMNS = (
    "id", "name", "org", "title", "tags", "handles", "granted_at", "expires_at",
    "hallway_v1", "irk", "ibeacon", "eddystone_uid", "address",
    "display", "knows", "emails", "phones",
)


class _Match(BaseModel):
    """Emails and phone numbers a network import may match this person by (stored hashed)."""

    model_config = ConfigDict(extra="forbid")
    emails: list[str] = Field(default_factory=list, max_length=32)
    phones: list[str] = Field(default_factory=list, max_length=32)


class _Consent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    granted_at: datetime | None = None
    expires_at: datetime | None = None


class _ContactLine(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)
    id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=256)
    org: str | None = Field(default=None, max_length=256)
    title: str | None = Field(default=None, max_length=256)
    handles: dict[str, str] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    consent: _Consent | None = None
    calibration_db: float = Field(default=0.0, ge=-30, le=30)
    keys: list[dict[str, Any]] = Field(default_factory=list)
    display: bool = False
    knows: list[str] = Field(default_factory=list)
    match: _Match | None = None


def _match_ids(match: _Match) -> tuple[str, ...]:
    """Canonical identifiers of a ``match`` object; ValueError naming the bad entry (never
    quoting it: it is personal data)."""
    ids: list[str] = []
    for index, value in enumerate(match.emails):
        ident = normalise.email(value)
        if ident is None:
            raise ValueError(f"match.emails[{index}]: not an email address")
        ids.append(ident)
    for index, value in enumerate(match.phones):
        ident = normalise.phone(value)
        if ident is None:
            raise ValueError(f"match.phones[{index}]: not an international phone number "
                             "(write it with + and the country code)")
        ids.append(ident)
    return tuple(dict.fromkeys(ids))


def _timestamp(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def iso(ts: float) -> str:
    """Unix seconds to ISO 8601 UTC with a ``Z`` (whole seconds when there is no fraction)."""
    moment = datetime.fromtimestamp(ts, UTC)
    text = moment.isoformat(timespec="seconds" if moment.microsecond == 0 else "milliseconds")
    return text.replace("+00:00", "Z")


def _validation_reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        # Never echo the input: it may be key material.
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def contact_from_obj(obj: Any) -> Contact:
    """One decoded SPEC §1 object to a Contact; ValueError with a reason otherwise."""
    if not isinstance(obj, dict):
        raise ValueError("line is not a JSON object")
    try:
        line = _ContactLine.model_validate(obj)
    except ValidationError as exc:
        raise ValueError(_validation_reason(exc)) from None
    keys = []
    for index, raw in enumerate(line.keys):
        try:
            keys.append(key_from_json(raw))
        except KeyFormatError as exc:
            raise ValueError(f"keys[{index}]: {exc}") from None
    if len(set(keys)) != len(keys):
        raise ValueError("the same key is listed twice")
    for index, known in enumerate(line.knows):
        if not 1 <= len(known) <= 64:
            raise ValueError(f"knows[{index}]: a contact id is 1-64 characters")
    consent = line.consent or _Consent()
    return Contact(
        id=line.id,
        name=line.name,
        org=line.org,
        title=line.title,
        handles=dict(line.handles),
        tags=tuple(line.tags),
        granted_at=_timestamp(consent.granted_at),
        expires_at=_timestamp(consent.expires_at),
        calibration_db=line.calibration_db,
        keys=tuple(keys),
        display=line.display,
        knows=frozenset(line.knows) - {line.id},
        match=None if line.match is None else _match_ids(line.match),
    )


def _split(cell: str | None) -> list[str]:
    return [part.strip() for part in (cell or "").split(";") if part.strip()]


_FLAGS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False, "": False}


def _csv_contact(row: dict[str, str | None]) -> Contact:
    obj: dict[str, Any] = {"id": row.get("id") or "", "name": row.get("name") or ""}
    for field in ("org", "title"):
        if row.get(field):
            obj[field] = row[field]
    obj["tags"] = _split(row.get("tags"))
    handles = {}
    for pair in _split(row.get("handles")):
        service, sep, handle = pair.partition("=")
        if not sep or not service.strip():
            raise ValueError("handles must be service=handle pairs separated by ';'")
        handles[service.strip()] = handle.strip()
    obj["handles"] = handles
    if row.get("display"):
        flag = (row["display"] or "").strip().lower()
        if flag not in _FLAGS:
            raise ValueError("display must be true or false")
        obj["display"] = _FLAGS[flag]
    obj["knows"] = _split(row.get("knows"))
    if row.get("emails") or row.get("phones"):
        obj["match"] = {"emails": _split(row.get("emails")), "phones": _split(row.get("phones"))}
    consent = {k: row[k] for k in ("granted_at", "expires_at") if row.get(k)}
    if consent:
        obj["consent"] = consent
    keys: list[dict[str, Any]] = []
    for value in _split(row.get("hallway_v1")):
        keys.append({"kind": "hallway-v1", "key": value})
    for value in _split(row.get("irk")):
        keys.append({"kind": "irk", "irk": value})
    for value in _split(row.get("ibeacon")):
        parts = value.split("/")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise ValueError("ibeacon must be uuid/major/minor")
        keys.append({"kind": "ibeacon", "uuid": parts[0], "major": int(parts[1]),
                     "minor": int(parts[2])})
    for value in _split(row.get("eddystone_uid")):
        namespace, sep, instance = value.partition("/")
        if not sep:
            raise ValueError("eddystone_uid must be namespace/instance")
        keys.append({"kind": "eddystone-uid", "namespace": namespace, "instance": instance})
    for value in _split(row.get("address")):
        keys.append({"kind": "address", "address": value})
    obj["keys"] = keys
    return contact_from_obj(obj)


def _records(text: str, fmt: str, file: str) -> Iterable[tuple[int, Contact | str]]:
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        try:
            yield from _csv_records(reader, file)
        except csv.Error as exc:  # the reason names the fault, never a cell's content
            raise ImportRejected([Problem(file, "", f"not valid CSV: {exc}",
                                          max(reader.line_num, 1))]) from None
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            yield number, "not valid JSON"
            continue
        try:
            yield number, contact_from_obj(obj)
        except ValueError as exc:
            yield number, str(exc)


def _csv_records(reader: csv.DictReader[str], file: str) -> Iterable[tuple[int, Contact | str]]:
    header = reader.fieldnames or []
    unknown = [name for name in header if name not in CSV_COLUMNS]
    missing = [name for name in ("id", "name") if name not in header]
    if unknown or missing:
        reason = []
        if unknown:
            reason.append(f"unknown column(s): {', '.join(unknown)}")
        if missing:
            reason.append(f"missing column(s): {', '.join(missing)}")
        raise ImportRejected([Problem(file, "header", "; ".join(reason), 1)])
    for row in reader:
        number = reader.line_num
        if None in row:
            yield number, "more cells than header columns"
            continue
        try:
            yield number, _csv_contact(row)
        except ValueError as exc:
            yield number, str(exc)


def parse_contacts(
    text: str, *, fmt: str = "jsonl", file: str = "<contacts>"
) -> tuple[list[Contact], list[int]]:
    """Every contact of a file and its line number, or ImportRejected listing each bad line."""
    contacts: list[Contact] = []
    numbers: list[int] = []
    problems: list[Problem] = []
    seen_ids: dict[str, int] = {}
    seen_keys: dict[ContactKey, int] = {}
    for number, item in _records(text, fmt, file):
        if isinstance(item, str):
            problems.append(Problem(file, "", item, number))
            continue
        if item.id in seen_ids:
            problems.append(Problem(file, "id", f"duplicate id {item.id!r} (first on line "
                                    f"{seen_ids[item.id]})", number))
            continue
        clash = next((seen_keys[k] for k in item.keys if k in seen_keys), None)
        if clash is not None:
            problems.append(Problem(file, "keys", f"a key of this contact is also claimed on "
                                    f"line {clash}", number))
            continue
        seen_ids[item.id] = number
        for key in item.keys:
            seen_keys[key] = number
        contacts.append(item)
        numbers.append(number)
    if problems:
        raise ImportRejected(problems)
    return contacts, numbers


def contact_to_obj(contact: Contact) -> dict[str, Any]:
    """The SPEC §1 object of a contact (the export form, empty fields left out)."""
    obj: dict[str, Any] = {"id": contact.id, "name": contact.name}
    if contact.org is not None:
        obj["org"] = contact.org
    if contact.title is not None:
        obj["title"] = contact.title
    if contact.handles:
        obj["handles"] = dict(contact.handles)
    if contact.tags:
        obj["tags"] = list(contact.tags)
    consent = {}
    if contact.granted_at is not None:
        consent["granted_at"] = iso(contact.granted_at)
    if contact.expires_at is not None:
        consent["expires_at"] = iso(contact.expires_at)
    if consent:
        obj["consent"] = consent
    if contact.calibration_db:
        obj["calibration_db"] = contact.calibration_db
    if contact.display:
        obj["display"] = True
    if contact.knows:
        obj["knows"] = sorted(contact.knows)
    obj["keys"] = [key_to_json(key) for key in contact.keys]
    return obj


def contact_to_line(contact: Contact) -> str:
    """One JSON line (no newline) of the export."""
    return json.dumps(contact_to_obj(contact), ensure_ascii=False, separators=(", ", ": "))


_ID_CHARS = re.compile(r"[^a-z0-9]+")


def derive_id(name: str) -> str:
    """A contact id made from a name (lower case, runs of other characters as '-'); may be
    empty."""
    return _ID_CHARS.sub("-", name.lower()).strip("-")[:64]


def enroll_uri(contact_id: str, key_hex: str) -> str:
    """The SPEC §3 enrollment URI for a contact's hallway-v1 key."""
    k = base64.urlsafe_b64encode(bytes.fromhex(key_hex)).rstrip(b"=").decode()
    return f"hallway://enroll?v=1&id={quote(contact_id, safe='')}&k={k}"


def export_lines(contacts: Sequence[Contact]) -> list[str]:
    """The export of a list of contacts, one line each."""
    return [contact_to_line(contact) for contact in contacts]

