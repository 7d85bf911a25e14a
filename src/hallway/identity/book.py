"""The loaded contacts, compact: what resolving and tracking need at hand, the rest packed.

A scanner holds every enrolled contact for as long as it runs (100,000 at a large venue), but
reads one contact's details only when an event about it is built. Holding each as a ``Contact``
(its handles dict, tags tuple, keys tuple of ``ContactKey``, knows set, each field its own
object) cost about 630 bytes a contact, 63 MB at 100k. The book keeps instead, per contact:

- one ``bytes`` record under its id: a 16-byte fingerprint of its keys (so an update that
  leaves the keys alone skips the key tables) and its public fields (name, org, title, handles,
  tags, display, knows) as compact JSON, decoded again by ``get`` when an event needs them;
- its consent expiry and calibration in two side dicts, only when they are set (most contacts
  have neither).

About 200 bytes a contact. The keys themselves are not kept here: the key tables hold what
resolving needs (``hallway.identity.tokens``, ``hallway.identity.irk``). ``get`` gives back a
``Contact`` without keys, consent grant time or match hashes: what events, filters and pages
read. A removed contact leaves nothing here: its record and side entries are deleted, and the
few recently rebuilt ``Contact`` objects kept for repeated look-ups are dropped with it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from hallway.models import Contact

_FINGERPRINT = 16
_NO_HANDLES: Mapping[str, str] = MappingProxyType({})
_NO_KNOWS: frozenset[str] = frozenset()
_CACHE = 256
"""Rebuilt contacts kept for repeated look-ups (the present ones, mostly)."""
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def keys_fingerprint(contact: Contact) -> bytes:
    """16 bytes that change whenever the contact's keys change (kinds, values, order)."""
    digest = hashlib.blake2b(digest_size=_FINGERPRINT)
    for key in contact.keys:
        digest.update(key.kind.value.encode())
        digest.update(b"\x00")
        digest.update(key.value.encode())
        digest.update(b"\x01")
    return digest.digest()


class ContactBook:
    """Active contacts by id, compact; see the module docstring. Not thread-safe."""

    __slots__ = ("_cache", "_calibration", "_expires", "_records")

    def __init__(self) -> None:
        self._records: dict[str, bytes] = {}
        self._expires: dict[str, float] = {}
        self._calibration: dict[str, float] = {}
        self._cache: dict[str, Contact] = {}

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, contact_id: object) -> bool:
        return contact_id in self._records

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def put(self, contact: Contact) -> bool:
        """Hold ``contact`` (replacing one with its id); True if it is new or its keys changed."""
        contact_id = contact.id
        fingerprint = keys_fingerprint(contact)
        old = self._records.get(contact_id)
        handles = dict(contact.handles) if contact.handles else 0
        knows = sorted(contact.knows) if contact.knows else 0
        public = _encode([contact.name, contact.org, contact.title, handles,
                          list(contact.tags), 1 if contact.display else 0, knows])
        self._records[contact_id] = fingerprint + public.encode()
        if contact.expires_at is not None:
            self._expires[contact_id] = contact.expires_at
        else:
            self._expires.pop(contact_id, None)
        if contact.calibration_db:
            self._calibration[contact_id] = contact.calibration_db
        else:
            self._calibration.pop(contact_id, None)
        self._cache.pop(contact_id, None)
        return old is None or old[:_FINGERPRINT] != fingerprint

    def pop(self, contact_id: str) -> bool:
        """Forget a contact; True if it was held."""
        self._expires.pop(contact_id, None)
        self._calibration.pop(contact_id, None)
        self._cache.pop(contact_id, None)
        return self._records.pop(contact_id, None) is not None

    def clear(self) -> None:
        """Forget every contact."""
        self._records.clear()
        self._expires.clear()
        self._calibration.clear()
        self._cache.clear()

    def active(self, contact_id: str, now: float) -> bool:
        """True if the contact is held and its consent has not expired at ``now``."""
        if contact_id not in self._records:
            return False
        expires = self._expires.get(contact_id)
        return expires is None or now < expires

    def expires_at(self, contact_id: str) -> float | None:
        """The contact's consent expiry, if it has one."""
        return self._expires.get(contact_id)

    def calibration_db(self, contact_id: str) -> float:
        """The contact's calibration offset (0.0 when unset or not held)."""
        return self._calibration.get(contact_id, 0.0)

    def get(self, contact_id: str) -> Contact | None:
        """The contact's public fields, consent expiry and calibration as a ``Contact``
        (without keys, grant time or match hashes); None if not held."""
        cached = self._cache.get(contact_id)
        if cached is not None:
            return cached
        record = self._records.get(contact_id)
        if record is None:
            return None
        name, org, title, handles, tags, display, knows = json.loads(record[_FINGERPRINT:])
        contact = Contact(
            id=contact_id, name=name, org=org, title=title,
            handles=MappingProxyType(handles) if handles else _NO_HANDLES,
            tags=tuple(tags), expires_at=self._expires.get(contact_id),
            calibration_db=self._calibration.get(contact_id, 0.0), display=bool(display),
            knows=frozenset(knows) if knows else _NO_KNOWS,
        )
        cache = self._cache
        if len(cache) >= _CACHE:
            del cache[next(iter(cache))]
        cache[contact_id] = contact
        return contact
