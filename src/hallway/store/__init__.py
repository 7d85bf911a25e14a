"""The SQLite store, split by concern.

- ``database``: the connection, migrations, write serialisation and checkpoints;
- ``migrations``: the schema (append new migrations there);
- ``contacts``: contacts, keys, consent, revocations;
- ``events``: the retained event log;
- ``mqtt_cursor``: the MQTT publisher's progress.

``SqliteStore`` is one connection with all three tables' methods, which is what the daemon, the
CLI and the tests open: ``store = await SqliteStore.open(path)``.
"""

from __future__ import annotations

from hallway.store.contacts import ContactStore
from hallway.store.database import Database
from hallway.store.events import EventLog, LoggedEvent
from hallway.store.migrations import MIGRATIONS, SCHEMA_VERSION
from hallway.store.mqtt_cursor import MqttCursor

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ContactStore",
    "Database",
    "EventLog",
    "LoggedEvent",
    "MqttCursor",
    "SqliteStore",
]


class SqliteStore(ContactStore, EventLog, MqttCursor):
    """A hallway database with its contacts, event log and MQTT cursor, on one connection
    (their writes share its lock). Use ``await SqliteStore.open(path)``."""
