"""The contact change log and what a revocation leaves behind, on a ``SqliteStore``.

The log is one table, ``contact_changes`` (migration in ``hallway.store``): one row per contact
id ever written, moved to a fresh, higher id by triggers on every write to the contact, its
consent, its keys or its revocation. So whoever applied every change up to id ``N`` (the
daemon keeps ``N`` in ``meta.contacts_applied_change``) learns what to re-read with one indexed
query, whatever process wrote it (the CLI, an import, the venue registry), and the work is
proportional to the change, not to the number of contacts.

``forget_events`` is the other half of a revocation: the contact's logged events are deleted,
except its departure (reason ``revoked``) and its ``revoked`` tombstone, which are reduced to
the id, so a resume with ``since_seq`` hears that it left and nothing else about it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from hallway.errors import StoreError
from hallway.logs import get_logger
from hallway.models import Contact, ContactKey, KeyKind
from hallway.store import SqliteStore
from hallway.store.contacts import contact_from_row

log = get_logger(__name__)

PAGE = 64
"""Contacts read and applied in one step: a few ms of work on the event loop (128 took about
8 ms of loop-thread CPU at 100k contacts on the 2-core bench machine, too close to 10 ms)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One contact to re-read: its current state, or None (revoked, or gone)."""

    change_id: int
    contact_id: str
    contact: Contact | None
    revoked: bool


async def latest_change(store: SqliteStore) -> int:
    """The highest change id so far (0 when nothing was ever written)."""
    async with store.connection.execute("SELECT coalesce(max(id), 0) FROM contact_changes") as c:
        row = await c.fetchone()
    return int(row[0]) if row is not None else 0


async def applied_change(store: SqliteStore) -> int:
    """The change id the daemon last applied (saved with ``save_applied_change``)."""
    async with store.connection.execute(
        "SELECT value FROM meta WHERE key = 'contacts_applied_change'"
    ) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def save_applied_change(
    store: SqliteStore, change_id: int, *, key: str = "contacts_applied_change"
) -> None:
    """Remember that every change up to ``change_id`` is applied (``key``: whose cursor;
    ``registry_published_change`` is the venue registry publisher's)."""

    def work(db: sqlite3.Connection) -> None:
        db.execute("UPDATE meta SET value = ? WHERE key = ?", (change_id, key))

    await store.transaction_in_thread(work)


async def published_change(store: SqliteStore) -> int:
    """The change id the venue registry has published up to."""
    async with store.connection.execute(
        "SELECT value FROM meta WHERE key = 'registry_published_change'"
    ) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def published_count(store: SqliteStore, change_id: int) -> int:
    """How many contact ids (tombstones included) have their newest change at or below
    ``change_id``: the registry topics a snapshot up to that version holds at least."""
    async with store.connection.execute(
        "SELECT count(*) FROM contact_changes WHERE id <= ?", (change_id,)
    ) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def registry_versions(store: SqliteStore) -> dict[str, int]:
    """A scanner's registry version of every contact id it has applied (tombstones too)."""
    async with store.connection.execute(
        "SELECT contact_id, version FROM registry_versions"
    ) as cursor:
        return {str(cid): int(version) for cid, version in await cursor.fetchall()}


async def apply_registry(
    store: SqliteStore, contacts: Sequence[Contact], revoked: Sequence[str], *, now: float,
    versions: Sequence[tuple[str, int]] = (),
) -> None:
    """A scanner's copy of registry changes, in one transaction: ``contacts`` stored as they
    are (re-admitted if they were revoked; a key another contact held moves to them), the
    ``revoked`` ids forgotten as ``SqliteStore.revoke`` does (row, keys, consent, logged
    events; a tombstone kept), whether or not they were stored here, and the registry
    ``versions`` of them all remembered (a restart skips what it already has)."""

    def work(db: sqlite3.Connection) -> None:
        # One trip to the database thread (``transaction_in_thread``): the event log's
        # writes wait only while SQLite works, not for a loop turn per statement.
        if revoked:
            ids = [(cid,) for cid in revoked]
            db.executemany("DELETE FROM events WHERE contact_id = ?", ids)
            db.executemany("DELETE FROM contacts WHERE id = ?", ids)
            db.executemany(
                "INSERT OR REPLACE INTO revocations (contact_id, revoked_at) VALUES (?, ?)",
                [(cid, now) for cid in revoked])
        if contacts:
            ids = [(c.id,) for c in contacts]
            db.executemany("DELETE FROM revocations WHERE contact_id = ?", ids)
            db.executemany("DELETE FROM keys WHERE contact_id = ?", ids)
            db.executemany(
                "DELETE FROM keys WHERE kind = ? AND value = ?",
                [(key.kind.value, key.value) for c in contacts for key in c.keys])
            db.executemany(
                "INSERT INTO contacts (id, name, org, title, handles, tags, calibration_db) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "name = excluded.name, org = excluded.org, title = excluded.title, "
                "handles = excluded.handles, tags = excluded.tags, "
                "calibration_db = excluded.calibration_db",
                [(c.id, c.name, c.org, c.title,
                  json.dumps(dict(c.handles), ensure_ascii=False, sort_keys=True),
                  json.dumps(list(c.tags), ensure_ascii=False), c.calibration_db)
                 for c in contacts])
            db.executemany(
                "INSERT INTO consent (contact_id, granted_at, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT(contact_id) DO UPDATE SET granted_at = excluded.granted_at, "
                "expires_at = excluded.expires_at",
                [(c.id, c.granted_at, c.expires_at) for c in contacts])
            db.executemany(
                "INSERT INTO keys (contact_id, kind, value) VALUES (?, ?, ?)",
                [(c.id, key.kind.value, key.value) for c in contacts for key in c.keys])
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'contacts_generation'")
        db.executemany(
            "INSERT INTO registry_versions (contact_id, version) VALUES (?, ?) "
            "ON CONFLICT(contact_id) DO UPDATE SET version = excluded.version", versions)

    await store.transaction_in_thread(work)
    if revoked:
        await store.scrub()


async def changes_after(store: SqliteStore, after: int, *, limit: int = PAGE) -> list[Change]:
    """The next ``limit`` changed contacts after change ``after``, in change order."""
    db = store.connection
    async with db.execute(
        "SELECT id, contact_id FROM contact_changes WHERE id > ? ORDER BY id LIMIT ?",
        (after, limit),
    ) as cursor:
        rows = [(int(i), str(c)) async for i, c in cursor]
    if not rows:
        return []
    ids = [contact_id for _, contact_id in rows]
    contacts = await contacts_by_id(store, ids)
    marks = ",".join("?" * len(ids))
    async with db.execute(
        f"SELECT contact_id FROM revocations WHERE contact_id IN ({marks})", ids  # noqa: S608
    ) as cursor:
        revoked = {str(row[0]) async for row in cursor}
    return [Change(change_id, cid, contacts.get(cid), cid in revoked) for change_id, cid in rows]


async def revoked_after(store: SqliteStore, after: int) -> list[str]:
    """Ids revoked by changes after ``after`` (tombstones a daemon that was down still owes)."""
    async with store.connection.execute(
        "SELECT c.contact_id FROM contact_changes c JOIN revocations r "
        "ON r.contact_id = c.contact_id WHERE c.id > ? ORDER BY c.id",
        (after,),
    ) as cursor:
        return [str(row[0]) async for row in cursor]


async def contacts_page(store: SqliteStore, after_id: str, *, limit: int = PAGE) -> list[Contact]:
    """The next ``limit`` stored contacts by id after ``after_id`` ("" for the first page):
    one query, keys gathered by SQLite, one trip to the database thread."""
    async with store.connection.execute(
        "SELECT c.id, c.name, c.org, c.title, c.handles, c.tags, c.calibration_db, "
        "s.granted_at, s.expires_at, (SELECT json_group_array(json_array(k.kind, k.value)) "
        "FROM (SELECT kind, value FROM keys WHERE contact_id = c.id ORDER BY id) k), "
        "c.display, (SELECT json_group_array(k.known_id) FROM knows k "
        "JOIN contacts e ON e.id = k.known_id WHERE k.contact_id = c.id) "
        "FROM contacts c LEFT JOIN consent s ON s.contact_id = c.id "
        "WHERE c.id > ? ORDER BY c.id LIMIT ?",
        (after_id, limit),
    ) as cursor:
        rows = await cursor.fetchall()
    return [_page_contact(row) for row in rows]


_KINDS = {kind.value: kind for kind in KeyKind}
_NO_HANDLES: Mapping[str, str] = MappingProxyType({})
_NO_KNOWS: frozenset[str] = frozenset()  # one shared empty set (each new one is 216 bytes)


def _page_contact(row: Any) -> Contact:
    """A ``contacts_page`` row as a Contact (the common empty fields without a JSON parse)."""
    (contact_id, name, org, title, handles, tags, calibration, granted, expires, keys, display,
     knows) = row
    return Contact(
        id=contact_id, name=name, org=org, title=title,
        handles=_NO_HANDLES if handles == "{}" else json.loads(handles),
        tags=() if tags == "[]" else tuple(json.loads(tags)),
        calibration_db=float(calibration), granted_at=granted, expires_at=expires,
        keys=tuple([ContactKey(_KINDS[kind], value) for kind, value in json.loads(keys)]),
        display=bool(display),
        knows=_NO_KNOWS if knows == "[]" else frozenset(json.loads(knows)),
    )


async def contacts_by_id(store: SqliteStore, ids: Sequence[str]) -> dict[str, Contact]:
    """The stored contacts among ``ids`` (at most a page of them), with their keys."""
    if not ids:
        return {}
    db = store.connection
    marks = ",".join("?" * len(ids))
    keys: dict[str, list[ContactKey]] = {}
    async with db.execute(
        f"SELECT contact_id, kind, value FROM keys WHERE contact_id IN ({marks}) "  # noqa: S608
        "ORDER BY contact_id, id",
        list(ids),
    ) as cursor:
        async for contact_id, kind, value in cursor:
            keys.setdefault(contact_id, []).append(ContactKey(KeyKind(kind), value))
    found: dict[str, Contact] = {}
    async with db.execute(
        "SELECT c.id, c.name, c.org, c.title, c.handles, c.tags, c.calibration_db, "  # noqa: S608
        "s.granted_at, s.expires_at, c.display, (SELECT json_group_array(k.known_id) "
        "FROM knows k JOIN contacts e ON e.id = k.known_id WHERE k.contact_id = c.id) "
        f"FROM contacts c LEFT JOIN consent s ON s.contact_id = c.id WHERE c.id IN ({marks})",
        list(ids),
    ) as cursor:
        async for row in cursor:
            *fields, knows = tuple(row)
            found[row[0]] = contact_from_row(tuple(fields), tuple(keys.get(row[0], ())),
                                             frozenset(json.loads(knows)))
    return found


async def forget_events(store: SqliteStore, contact_id: str) -> int:
    """Delete a revoked (or expired) contact's logged events but its departure for that
    reason and its tombstone, which keep only the id; empty the WAL. The rows changed."""

    async def work() -> int:
        db = store.connection
        deleted = await db.execute(
            "DELETE FROM events WHERE contact_id = ? AND NOT (type = 'revoked' OR "
            "(type = 'departed' AND json_extract(payload, '$.reason') = 'revoked'))",
            (contact_id,),
        )
        redacted = await db.execute(
            "UPDATE events SET payload = json_set(payload, '$.contact', "
            "json_object('id', contact_id)) WHERE contact_id = ? AND "
            "json_extract(payload, '$.contact') != json_object('id', contact_id)",
            (contact_id,),
        )
        return int(deleted.rowcount) + int(redacted.rowcount)

    changed: int = await store.transaction(work)
    if changed:
        await store.scrub()
    return changed


FORGET_RETRY_MAX_S = 5.0
"""Longest wait between two tries of ``forget_until_done``."""


async def forget_until_done(store: SqliteStore, contact_id: str) -> int:
    """``forget_events`` until it succeeds: a revoked contact's events must go, and a write
    refused for a while (another process holding the database past its busy timeout, a full
    disk) is no reason to stop the daemon or to keep them. Retries with a growing wait; says
    so in the log (without the id) while it fails. The rows changed."""
    delay, failures = 0.05, 0
    while True:
        try:
            changed = await forget_events(store, contact_id)
        except StoreError as exc:
            failures += 1
            log.warning("forget_events_retrying", error=str(exc), attempts=failures)
            await asyncio.sleep(delay)
            delay = min(delay * 2, FORGET_RETRY_MAX_S)
            continue
        if failures:
            log.info("forget_events_done", attempts=failures + 1)
        return changed
