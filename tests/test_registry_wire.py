"""The registry's wire format: what a scanner accepts and what it refuses."""

from __future__ import annotations

import json

import pytest

from hallway.config import MqttConfig
from hallway.models import Contact, ContactKey, KeyKind
from hallway.registry.wire import (
    RegistryTopics,
    contact_payload,
    decode_head,
    decode_update,
    head_payload,
    tombstone_payload,
)

KEY = "75c734c6dd1a782de7a965da5eb93125"
ADA = Contact("c/1", "Ada", keys=(ContactKey(KeyKind.HALLWAY_V1, KEY),))


def test_topics_escape_ids_and_round_trip() -> None:
    topics = RegistryTopics.of(MqttConfig(venue="expo"))
    assert topics.head == "hallway/expo/registry/head"
    assert topics.contact("c/1") == "hallway/expo/registry/contacts/c%2F1"
    assert topics.contact_id(topics.contact("c/1")) == "c/1"
    assert topics.contact_id("hallway/expo/registry/head") is None
    assert topics.contact_id("hallway/expo/registry/contacts/a/b") is None


def test_contacts_and_tombstones_round_trip() -> None:
    update = decode_update("c/1", contact_payload(7, ADA))
    assert (update.version, update.contact) == (7, ADA)
    tomb = tombstone_payload(8, "c/1")
    assert json.loads(tomb) == {"version": 8, "id": "c/1", "revoked": True}
    assert decode_update("c/1", tomb).contact is None
    assert decode_head(head_payload(9, 1.5, 3)) == (9, 1.5, 3)


@pytest.mark.parametrize("payload", [
    b"not json", b"[]", b'{"contact": {}}', b'{"version": -1, "id": "c/1", "revoked": true}',
    b'{"version": 1, "id": "c/2", "revoked": true}',  # another id than its topic
    b'{"version": 1, "contact": {"id": "c/1"}}',  # no name
    b'{"version": 1, "contact": {"id": "c/1", "name": "A", "keys": [{"kind": "irk"}]}}',
    b'{"version": true, "id": "c/1", "revoked": true}',
])
def test_malformed_updates_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode_update("c/1", payload)


@pytest.mark.parametrize("payload", [b"{}", b'{"version": 1}', b'{"version": 1, "ts": 1}',
                                     b'{"version": 1, "ts": "x", "contacts": 1}'])
def test_malformed_heads_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode_head(payload)
