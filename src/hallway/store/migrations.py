"""The schema: forward-only migrations, numbered by ``PRAGMA user_version``.

Migration N (1-based) is ``MIGRATIONS[N - 1]``; a database at version V gets the migrations
after V, each in its own transaction. Append new migrations at the end, with a comment naming
their purpose; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3

from hallway.store.network import MATCH_IDS_MIGRATION as NETWORK_MATCH_IDS_MIGRATION
from hallway.store.network import MIGRATION as NETWORK_MIGRATION

MIGRATIONS: tuple[str, ...] = (
    # 1: contacts, keys, consent, revocations, event log, meta
    """
    CREATE TABLE contacts (
        id TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
        name TEXT NOT NULL,
        org TEXT,
        title TEXT,
        handles TEXT NOT NULL DEFAULT '{}',
        tags TEXT NOT NULL DEFAULT '[]',
        calibration_db REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE consent (
        contact_id TEXT PRIMARY KEY REFERENCES contacts(id) ON DELETE CASCADE,
        granted_at REAL,
        expires_at REAL
    );
    CREATE TABLE keys (
        id INTEGER PRIMARY KEY,
        contact_id TEXT NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        value TEXT NOT NULL,
        UNIQUE (kind, value)
    );
    CREATE INDEX keys_contact ON keys(contact_id);
    CREATE TABLE revocations (
        contact_id TEXT PRIMARY KEY,
        revoked_at REAL NOT NULL
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        type TEXT NOT NULL,
        contact_id TEXT,
        payload TEXT NOT NULL
    );
    CREATE INDEX events_contact ON events(contact_id);
    CREATE INDEX events_ts ON events(ts);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta VALUES ('contacts_generation', 0), ('last_seq', 0);
    """,
    # 2: the MQTT publisher's progress: the last event it published, and the contacts whose
    # retained presence it holds at the broker (to clear them after a crash)
    """
    INSERT INTO meta VALUES ('mqtt_published_seq', -1);
    CREATE TABLE mqtt_present (contact_id TEXT PRIMARY KEY);
    """,
    # 3: meta.last_seq follows the event log by itself, so a batch of events is logged by one
    # INSERT statement (one trip to the database thread, atomic on its own)
    """
    CREATE TRIGGER events_last_seq AFTER INSERT ON events BEGIN
        UPDATE meta SET value = NEW.seq WHERE key = 'last_seq' AND value < NEW.seq;
    END;
    """,
    # 4: contacts' display and knows, match hashes and their salt (hallway.store.network)
    NETWORK_MIGRATION,
    # 5 (network's second): match identifiers, the handles' canonical forms beside the salted
    # email/phone hashes, so a network import looks up only its own identifiers
    NETWORK_MATCH_IDS_MIGRATION,
    # 6: scoped subscriber tokens, kept hashed; read and written by hallway.access
    """
    CREATE TABLE tokens (
        name TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 64),
        digest BLOB NOT NULL UNIQUE CHECK (length(digest) = 32),
        scope TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def statements(script: str) -> list[str]:
    """The SQL statements of a migration script (a trigger's body keeps its semicolons)."""
    statements: list[str] = []
    pending = ""
    for part in script.split(";"):
        pending += part + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \n;"):
        statements.append(pending.strip())
    return statements
