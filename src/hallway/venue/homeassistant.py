"""Home Assistant MQTT discovery for the venue's contacts (``mqtt.homeassistant = true``).

Per contact (all, or those tagged ``mqtt.homeassistant_tag``), three entities of one device,
following Home Assistant's discovery convention ``<prefix>/<component>/<object id>/config``
(retained):

- ``device_tracker`` ``hallway_<id>``: state is the room's name, ``not_home`` after leaving;
- ``sensor`` ``hallway_<id>_room``: the room (``away`` after leaving);
- ``sensor`` ``hallway_<id>_zone``: immediate, near or far (``away`` after leaving).

They read one retained JSON state topic, ``<topic_prefix>/<venue>/ha/<id>/state``, and are
available while the venue service's status topic says ``online``. Discovery is (re)sent with
each arrival; a revoked contact's entities (and its state) are removed with empty retained
messages, on its departure and again on its ``revoked`` tombstone (sent also when absent).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from hallway import __version__
from hallway.config import MqttConfig
from hallway.mqtt import OFFLINE, ONLINE, OutMessage, dumps, venue_base

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def object_slug(contact_id: str) -> str:
    """A Home Assistant object id part for a contact id (``[A-Za-z0-9_-]``, collision-free)."""
    slug = _UNSAFE.sub("_", contact_id)
    if slug != contact_id:
        slug += "_" + hashlib.sha256(contact_id.encode()).hexdigest()[:8]
    return slug


class HomeAssistantDiscovery:
    """Turns venue events into discovery, state and removal messages (the publisher's
    ``extra`` hook)."""

    def __init__(self, config: MqttConfig, *, status_topic: str) -> None:
        self._config = config
        self._status = status_topic
        self._base = venue_base(config)
        self._prefix = config.homeassistant_prefix
        self._venue_slug = object_slug(config.venue)

    def state_topic(self, contact_id: str) -> str:
        """The retained JSON state the entities read."""
        return f"{self._base}/ha/{object_slug(contact_id)}/state"

    def config_topics(self, contact_id: str) -> list[str]:
        """The discovery topics of a contact's three entities."""
        slug = object_slug(contact_id)
        return [
            f"{self._prefix}/device_tracker/hallway_{slug}/config",
            f"{self._prefix}/sensor/hallway_{slug}_room/config",
            f"{self._prefix}/sensor/hallway_{slug}_zone/config",
        ]

    def wanted(self, contact: Mapping[str, Any]) -> bool:
        """True if this contact gets entities (``homeassistant_tag``, when set, must match)."""
        tag = self._config.homeassistant_tag
        tags = contact.get("tags")
        return tag is None or (isinstance(tags, list) and tag in tags)

    def messages(self, event: Mapping[str, Any]) -> list[OutMessage]:
        """What to publish after one venue event."""
        contact = event.get("contact")
        if not isinstance(contact, Mapping) or not isinstance(contact.get("id"), str):
            return []
        cid = contact["id"]
        kind = event.get("type")
        if kind == "revoked" or (kind == "departed" and event.get("reason") == "revoked"):
            return [OutMessage(topic, b"", retain=True)
                    for topic in [*self.config_topics(cid), self.state_topic(cid)]]
        if not self.wanted(contact):
            return []
        out: list[OutMessage] = []
        if kind == "arrived":
            out.extend(self._discovery(cid, contact))
        if kind == "departed":
            state: dict[str, Any] = {"location": "not_home", "room": None, "zone": None,
                                     "distance_m": None}
        elif kind in ("arrived", "moved", "zone"):
            room = event.get("room")
            state = {"location": room if isinstance(room, str) else "home", "room": room,
                     "zone": event.get("zone"), "distance_m": event.get("distance_m")}
        else:
            return out
        out.append(OutMessage(self.state_topic(cid), dumps(state), retain=True))
        return out

    def _discovery(self, cid: str, contact: Mapping[str, Any]) -> list[OutMessage]:
        slug = object_slug(cid)
        ident = f"hallway_{self._venue_slug}_{slug}"
        name = contact.get("name") if isinstance(contact.get("name"), str) else cid
        common: dict[str, Any] = {
            "state_topic": self.state_topic(cid),
            "json_attributes_topic": self.state_topic(cid),
            "availability_topic": self._status,
            "payload_available": ONLINE.decode(),
            "payload_not_available": OFFLINE.decode(),
            "device": {
                "identifiers": [ident],
                "name": name,
                "manufacturer": "hallway",
                "model": f"opted-in contact at {self._config.venue}",
            },
            "origin": {"name": "hallway", "sw_version": __version__},
        }
        tracker = {
            **common,
            "name": None,
            "unique_id": f"{ident}_tracker",
            "object_id": f"hallway_{slug}",
            "value_template": "{{ value_json.location }}",
            "payload_home": "home",
            "payload_not_home": "not_home",
            "source_type": "bluetooth_le",
        }
        room = {
            **common,
            "name": "Room",
            "unique_id": f"{ident}_room",
            "object_id": f"hallway_{slug}_room",
            "value_template": "{{ value_json.room if value_json.room else 'away' }}",
            "icon": "mdi:door",
        }
        zone = {
            **common,
            "name": "Zone",
            "unique_id": f"{ident}_zone",
            "object_id": f"hallway_{slug}_zone",
            "value_template": "{{ value_json.zone if value_json.zone else 'away' }}",
            "icon": "mdi:signal-distance-variant",
        }
        topics = self.config_topics(cid)
        return [OutMessage(topic, dumps(payload), retain=True)
                for topic, payload in zip(topics, (tracker, room, zone), strict=True)]
