"""The venue registry's MQTT topics and payloads (the one place that writes and reads them).

Under ``<topic_prefix>/<venue>/registry/``:

- ``contacts/<contact id>`` (retained, QoS 1): one contact's current state, the SPEC §1 object
  with its keys, ``{"version": N, "contact": {...}}``; or, once revoked, a tombstone
  ``{"version": N, "id": "<contact id>", "revoked": true}`` (the id and nothing else). The
  retained set is the registry's snapshot; each new message is one change, applied atomically.
- ``head`` (retained, QoS 1): ``{"version": N, "ts": <unix seconds>, "contacts": C}``, the
  newest version published and how many contact topics (tombstones included) it covers at
  least, written after the changes it covers and again every ``registry.heartbeat_s``: a
  scanner that has read ``head`` after subscribing to the contacts has the whole snapshot (it
  checks that it got at least ``C`` contact messages: a broker that dropped some is caught),
  and one that has not heard it for ``registry.stale_after_s`` stops resolving.

``version`` is the registry store's change id (``hallway.registry.changes``): it only grows.
The contact id in the topic is escaped as every hallway topic level is (``topic_level``).
Keys travel here and nowhere else; the broker's access list lets only the venue service write
and only scanners read below ``registry/`` (docs/venue.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hallway.config import MqttConfig
from hallway.contacts_io import contact_from_obj, contact_to_obj
from hallway.models import Contact
from hallway.mqtt import topic_level, unescape_level, venue_base


@dataclass(frozen=True, slots=True)
class RegistryTopics:
    """The registry's topic names for one venue."""

    base: str

    @classmethod
    def of(cls, config: MqttConfig) -> RegistryTopics:
        """``<topic_prefix>/<venue>/registry``."""
        return cls(f"{venue_base(config)}/registry")

    @property
    def head(self) -> str:
        """The retained head (newest version, heartbeat)."""
        return f"{self.base}/head"

    @property
    def contacts(self) -> str:
        """The filter of every contact topic."""
        return f"{self.base}/contacts/+"

    def contact(self, contact_id: str) -> str:
        """One contact's retained state."""
        return f"{self.base}/contacts/{topic_level(contact_id)}"

    def contact_id(self, topic: str) -> str | None:
        """The contact id of a contact topic (None for any other topic)."""
        prefix = f"{self.base}/contacts/"
        if not topic.startswith(prefix) or "/" in topic[len(prefix):]:
            return None
        return unescape_level(topic[len(prefix):])


@dataclass(frozen=True, slots=True)
class Update:
    """One decoded contact message: the contact, or a tombstone (``contact`` None)."""

    version: int
    contact_id: str
    contact: Contact | None


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def contact_payload(version: int, contact: Contact) -> bytes:
    """The retained message of an enrolled contact."""
    return _dumps({"version": version, "contact": contact_to_obj(contact)})


def tombstone_payload(version: int, contact_id: str) -> bytes:
    """The retained message of a revoked contact: its id only."""
    return _dumps({"version": version, "id": contact_id, "revoked": True})


def head_payload(version: int, ts: float, contacts: int) -> bytes:
    """The retained head."""
    return _dumps({"version": version, "ts": round(ts, 3), "contacts": contacts})


def _version(data: Any) -> int:
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ValueError("no version")
    return version


def peek_version(payload: bytes) -> tuple[int, Any]:
    """``(version, decoded JSON)`` of a contact message, before its (costlier) validation
    by ``decode_update``; ValueError if it has none."""
    data = json.loads(payload)
    return _version(data), data


def decode_update(contact_id: str, payload: bytes | Any) -> Update:
    """A contact message (the payload, or ``peek_version``'s JSON) -> the update; ValueError
    with the reason if it is not a valid one for this id."""
    data = json.loads(payload) if isinstance(payload, bytes | bytearray) else payload
    version = _version(data)
    if data.get("revoked") is True:
        if data.get("id") != contact_id:
            raise ValueError("tombstone id does not match its topic")
        return Update(version, contact_id, None)
    contact = contact_from_obj(data.get("contact"))
    if contact.id != contact_id:
        raise ValueError("contact id does not match its topic")
    return Update(version, contact_id, contact)


def decode_head(payload: bytes) -> tuple[int, float, int]:
    """``(version, ts, contacts)`` of a head message (ValueError if it is not one)."""
    data = json.loads(payload)
    version = _version(data)
    ts, contacts = data.get("ts"), data.get("contacts")
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        raise ValueError("no ts")
    if not isinstance(contacts, int) or isinstance(contacts, bool) or contacts < 0:
        raise ValueError("no contacts count")
    return version, float(ts), contacts
