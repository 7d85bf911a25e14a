"""The SQLite store: contacts, their keys and consent, revocations, and the retained event log.

WAL journal, foreign keys on, schema versioned by ``PRAGMA user_version`` with forward-only
migrations. Every write is one transaction, so a crash (or SIGKILL) mid-import leaves the store
as it was before. ``meta.contacts_generation`` grows with every contact write: the daemon polls
it to pick up CLI changes within a second. ``meta.last_seq`` is the high-water mark of event
sequence numbers, so ``seq`` never repeats even after the log is pruned or rows are deleted;
a trigger keeps it, so a batch of events is one INSERT. The daemon moves WAL checkpoints to a
second connection (``checkpoint_in_background``) so its event log writes never wait for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiosqlite

from hallway import codec
from hallway.errors import ContactNotFound, ImportRejected, Problem, StoreError
from hallway.files import create_private
from hallway.models import Contact, ContactKey, KeyKind

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
    # 5 (sec): scoped subscriber tokens, kept hashed; read and written by hallway.access
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
_ROWS_PER_INSERT = 1000
"""Events written by one multi-row INSERT (5 parameters each, well under SQLite's limit)."""
_EVENT_COLUMNS = "INSERT INTO events (seq, ts, type, contact_id, payload) VALUES "


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One row of the event log: its sequence number and its SPEC §5 JSON text."""

    seq: int
    payload: str


def _connect_error(path: str, exc: BaseException) -> StoreError:
    reason = str(exc)
    if path != ":memory:":
        file = Path(path)
        if not os.access(file.parent, os.W_OK) or (file.exists() and not os.access(file, os.W_OK)):
            reason += " (the database or its folder is read-only)"
    return StoreError(f"{path}: {reason}")


class SqliteStore:
    """Async access to one hallway database file. Use ``await SqliteStore.open(path)``."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self._db = db
        self.path = path
        # One connection is shared by the hub, the MQTT publisher and the pruner: their
        # transactions must not interleave on it.
        self._write_lock = asyncio.Lock()
        self._checkpointer: aiosqlite.Connection | None = None
        self._unchecked = False  # written since the last background checkpoint

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path, *, create: bool = True) -> SqliteStore:
        """Open (creating and migrating as needed) the database at ``path``."""
        text = str(path)
        _check_path(text, create=create)
        if create and text != ":memory:" and not text.startswith("file:"):
            # Keys and IRKs live here: 0600 whatever the umask (SQLite gives its -wal and
            # -shm files the database file's mode).
            with contextlib.suppress(OSError):  # connect reports what is wrong with the path
                create_private(text)
        try:
            db = await aiosqlite.connect(text, isolation_level=None)
        except sqlite3.Error as exc:
            raise _connect_error(text, exc) from None
        store = cls(db, text)
        try:
            await store._setup()
        except sqlite3.Error as exc:
            await db.close()
            raise _connect_error(text, exc) from None
        except BaseException:
            await db.close()
            raise
        return store

    async def _setup(self) -> None:
        await self._db.execute("PRAGMA busy_timeout = 10000")
        mode = await self._scalar("PRAGMA journal_mode = WAL")
        if self.path != ":memory:" and str(mode).lower() != "wal":
            raise StoreError(f"{self.path}: cannot switch to WAL journal (got {mode})")
        await self._db.execute("PRAGMA synchronous = NORMAL")
        # Deleted content (a revoked contact) is overwritten, not left in free space.
        await self._db.execute("PRAGMA secure_delete = ON")
        await self._db.execute("PRAGMA foreign_keys = ON")
        version = int(await self._scalar("PRAGMA user_version"))
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this hallway "
                f"({SCHEMA_VERSION}); upgrade hallway"
            )
        for number in range(version, SCHEMA_VERSION):
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(MIGRATIONS[number]):
                    await self._db.execute(statement)
                await self._db.execute(f"PRAGMA user_version = {number + 1}")
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            with contextlib.suppress(ValueError, sqlite3.Error):
                await checkpointer.close()
        with contextlib.suppress(ValueError):
            await self._db.close()

    async def checkpoint_in_background(self) -> None:
        """Take WAL checkpoints (and the fsyncs they do) off this connection's writes.

        From now on a commit here never copies the WAL into the database file itself;
        ``checkpoint`` does that on a second connection, and must be called periodically.
        """
        if self._checkpointer is not None or self.path == ":memory:":
            return
        try:
            checkpointer = await aiosqlite.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise _connect_error(self.path, exc) from None
        try:
            await checkpointer.execute("PRAGMA busy_timeout = 10000")
            await self._db.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            await checkpointer.close()
            raise _connect_error(self.path, exc) from None
        self._checkpointer = checkpointer

    async def checkpoint(self) -> None:
        """Copy what the WAL holds into the database file without making writers wait
        (a passive checkpoint on the second connection); best effort."""
        checkpointer = self._checkpointer
        if checkpointer is not None and self._unchecked:
            self._unchecked = False
            with contextlib.suppress(sqlite3.Error, ValueError):
                await checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        async with self._db.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return None if row is None else row[0]

    async def schema_version(self) -> int:
        """The database's ``user_version``."""
        return int(await self._scalar("PRAGMA user_version"))

    async def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` answer (``ok`` when sound)."""
        return str(await self._scalar("PRAGMA integrity_check"))

    async def _write(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` (a coroutine factory) inside one IMMEDIATE transaction.

        Writers take turns. Cancelling the caller does not cancel the write: it commits or
        rolls back on its own, so no transaction is ever left open on the shared connection.
        """
        task = asyncio.ensure_future(self._write_serialised(work))
        task.add_done_callback(_consume_outcome)
        return await asyncio.shield(task)

    async def _write_statement(self, sql: str, params: Sequence[Any]) -> int:
        """Run one statement as its own transaction (SQLite makes a statement atomic) in a
        single trip to the database thread; the row count.

        Takes its turn like ``_write``. Once the statement is handed to the database thread
        it runs to its end even if the caller is cancelled, and nothing queued after it can
        run first, so no other writer's transaction is ever mixed with it.
        """
        async with self._write_lock:
            self._unchecked = True
            try:
                cursor = await self._db.execute(sql, params)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: write failed, nothing was changed: {exc}") from None
            return int(cursor.rowcount)

    async def _write_serialised(self, work: Callable[[], Any]) -> Any:
        async with self._write_lock:
            self._unchecked = True
            return await self._write_locked(work)

    async def _write_locked(self, work: Callable[[], Any]) -> Any:
        try:
            await self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot start a write: {exc}") from None
        try:
            result = await work()
            await self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            await self._rollback()
            raise StoreError(f"{self.path}: write failed, nothing was changed: {exc}") from None
        except BaseException:
            await self._rollback()
            raise
        return result

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            await self._db.execute("ROLLBACK")

    # -- contacts ----------------------------------------------------------------------------

    async def generation(self) -> int:
        """A number that grows with every change to contacts, keys, consent or revocations."""
        return int(await self._scalar("SELECT value FROM meta WHERE key = 'contacts_generation'"))

    async def _bump_generation(self) -> None:
        await self._db.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'contacts_generation'"
        )

    async def _key_owner(self, key: ContactKey) -> str | None:  # one key, for single writes
        owner = await self._scalar(
            "SELECT contact_id FROM keys WHERE kind = ? AND value = ?", (key.kind.value, key.value)
        )
        return None if owner is None else str(owner)

    async def _upsert_many(self, contacts: Sequence[Contact]) -> None:
        """Insert or replace contacts, their consent and all their keys (inside a transaction)."""
        db = self._db
        await db.executemany("DELETE FROM keys WHERE contact_id = ?", [(c.id,) for c in contacts])
        await db.executemany(
            "INSERT INTO contacts (id, name, org, title, handles, tags, calibration_db) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET name = excluded.name, "
            "org = excluded.org, title = excluded.title, handles = excluded.handles, "
            "tags = excluded.tags, calibration_db = excluded.calibration_db",
            [
                (
                    c.id,
                    c.name,
                    c.org,
                    c.title,
                    json.dumps(dict(c.handles), ensure_ascii=False, sort_keys=True),
                    json.dumps(list(c.tags), ensure_ascii=False),
                    c.calibration_db,
                )
                for c in contacts
            ],
        )
        await db.executemany(
            "INSERT INTO consent (contact_id, granted_at, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT(contact_id) DO UPDATE SET granted_at = excluded.granted_at, "
            "expires_at = excluded.expires_at",
            [(c.id, c.granted_at, c.expires_at) for c in contacts],
        )
        await db.executemany(
            "INSERT INTO keys (contact_id, kind, value) VALUES (?, ?, ?)",
            [(c.id, key.kind.value, key.value) for c in contacts for key in c.keys],
        )

    async def _key_owners(self) -> dict[tuple[str, str], str]:
        async with self._db.execute("SELECT kind, value, contact_id FROM keys") as cursor:
            return {(kind, value): owner async for kind, value, owner in cursor}

    async def import_contacts(
        self,
        contacts: Sequence[Contact],
        *,
        file: str = "<import>",
        lines: Sequence[int] | None = None,
        readmit: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Store all of ``contacts`` (insert or replace by id) in one transaction, or none.

        Raises ImportRejected naming each line (``lines[i]`` is the file line of
        ``contacts[i]``) whose key another stored contact holds, or whose id was revoked
        (unless ``readmit``). Duplicates inside the batch are the parser's to report.
        """
        numbers = list(lines) if lines is not None else list(range(1, len(contacts) + 1))

        async def work() -> int:
            problems: list[Problem] = []
            revoked = await self.revoked_ids()
            owners = await self._key_owners()
            incoming = {contact.id for contact in contacts}
            for number, contact in zip(numbers, contacts, strict=True):
                if contact.id in revoked and not readmit:
                    problems.append(
                        Problem(file, "id", f"contact {contact.id!r} was revoked; "
                                "import with --readmit to enroll them again", number)
                    )
                for key in contact.keys:
                    owner = owners.get((key.kind.value, key.value))
                    if owner is not None and owner != contact.id and owner not in incoming:
                        problems.append(
                            Problem(file, "keys", f"a {key.kind.value} key of this contact is "
                                    f"already held by contact {owner!r}", number)
                        )
            if problems:
                raise ImportRejected(problems)
            # Drop every incoming contact's old keys first, so keys may move between contacts
            # of the same file without tripping the UNIQUE constraint halfway.
            await self._db.executemany(
                "DELETE FROM keys WHERE contact_id = ?", [(c.id,) for c in contacts]
            )
            chunk = 1000
            for begin in range(0, len(contacts), chunk):
                part = contacts[begin : begin + chunk]
                await self._upsert_many(part)
                if readmit:
                    await self._db.executemany(
                        "DELETE FROM revocations WHERE contact_id = ?", [(c.id,) for c in part]
                    )
                if progress is not None:
                    progress(begin + len(part), len(contacts))
            await self._bump_generation()
            return len(contacts)

        result: int = await self._write(work)
        return result

    async def add_contact(self, contact: Contact) -> None:
        """Store one new contact; StoreError if the id exists or a key is held by another."""

        async def work() -> None:
            if await self._scalar("SELECT 1 FROM contacts WHERE id = ?", (contact.id,)):
                raise StoreError(f"contact {contact.id!r} already exists")
            if await self._scalar("SELECT 1 FROM revocations WHERE contact_id = ?", (contact.id,)):
                raise StoreError(f"contact id {contact.id!r} was revoked; choose another id")
            for key in contact.keys:
                owner = await self._key_owner(key)
                if owner is not None:
                    raise StoreError(f"a {key.kind.value} key is already held by contact {owner!r}")
            await self._upsert_many([contact])
            await self._bump_generation()

        await self._write(work)

    async def replace_keys(self, contact_id: str, keys: Iterable[ContactKey]) -> None:
        """Replace all keys of a contact (e.g. re-enrollment with a fresh hallway-v1 key)."""
        new_keys = list(keys)

        async def work() -> None:
            if not await self._scalar("SELECT 1 FROM contacts WHERE id = ?", (contact_id,)):
                raise ContactNotFound(contact_id)
            await self._db.execute("DELETE FROM keys WHERE contact_id = ?", (contact_id,))
            for key in new_keys:
                owner = await self._key_owner(key)
                if owner is not None:
                    raise StoreError(f"a {key.kind.value} key is already held by contact {owner!r}")
            await self._db.executemany(
                "INSERT INTO keys (contact_id, kind, value) VALUES (?, ?, ?)",
                [(contact_id, key.kind.value, key.value) for key in new_keys],
            )
            await self._bump_generation()

        await self._write(work)

    async def revoke(self, contact_id: str, *, now: float) -> None:
        """Forget a contact at once: its row, keys, consent and logged events; keep a tombstone.

        After this the contact cannot be resolved, listed or exported, and its id cannot be
        re-imported without ``readmit``.
        """

        async def work() -> None:
            if not await self._scalar("SELECT 1 FROM contacts WHERE id = ?", (contact_id,)):
                raise ContactNotFound(contact_id)
            await self._db.execute("DELETE FROM events WHERE contact_id = ?", (contact_id,))
            await self._db.execute("DELETE FROM contacts WHERE id = ?", (contact_id,))
            await self._db.execute(
                "INSERT OR REPLACE INTO revocations (contact_id, revoked_at) VALUES (?, ?)",
                (contact_id, now),
            )
            await self._bump_generation()

        await self._write(work)
        await self._scrub()

    async def redact_contact_events(self, contact_id: str) -> int:
        """Reduce a revoked contact's logged events to its id (rows logged after the revoke)."""

        async def work() -> int:
            cursor = await self._db.execute(
                "SELECT seq, payload FROM events WHERE contact_id = ?", (contact_id,)
            )
            rows = list(await cursor.fetchall())
            await self._db.executemany(
                "UPDATE events SET payload = ? WHERE seq = ?",
                [(_redacted(payload, seq, contact_id), seq) for seq, payload in rows],
            )
            return len(rows)

        result: int = await self._write(work)
        if result:
            await self._scrub()
        return result

    async def _scrub(self) -> None:
        """Checkpoint and empty the WAL, where old copies of rewritten pages (a revoked
        contact's data) would otherwise stay readable. Best effort: busy readers may defer it."""
        async with self._write_lock:
            with contextlib.suppress(sqlite3.Error):
                await self._scalar("PRAGMA wal_checkpoint(TRUNCATE)")

    async def revoked_ids(self) -> set[str]:
        """Ids of revoked contacts (tombstones only; no other data is kept)."""
        async with self._db.execute("SELECT contact_id FROM revocations") as cursor:
            return {str(row[0]) async for row in cursor}

    async def list_contacts(self) -> list[Contact]:
        """Every stored contact with its keys, ordered by id."""
        keys: dict[str, list[ContactKey]] = {}
        async with self._db.execute(
            "SELECT contact_id, kind, value FROM keys ORDER BY contact_id, id"
        ) as cursor:
            async for contact_id, kind, value in cursor:
                keys.setdefault(contact_id, []).append(ContactKey(KeyKind(kind), value))
        contacts = []
        async with self._db.execute(
            "SELECT c.id, c.name, c.org, c.title, c.handles, c.tags, c.calibration_db, "
            "s.granted_at, s.expires_at FROM contacts c LEFT JOIN consent s "
            "ON s.contact_id = c.id ORDER BY c.id"
        ) as cursor:
            async for row in cursor:
                contacts.append(_contact_from_row(tuple(row), tuple(keys.get(row[0], ()))))
        return contacts

    async def get_contact(self, contact_id: str) -> Contact:
        """One contact with its keys, or ContactNotFound."""
        async with self._db.execute(
            "SELECT c.id, c.name, c.org, c.title, c.handles, c.tags, c.calibration_db, "
            "s.granted_at, s.expires_at FROM contacts c LEFT JOIN consent s "
            "ON s.contact_id = c.id WHERE c.id = ?",
            (contact_id,),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise ContactNotFound(contact_id)
        async with self._db.execute(
            "SELECT kind, value FROM keys WHERE contact_id = ? ORDER BY id", (contact_id,)
        ) as cursor:
            keys = tuple([ContactKey(KeyKind(kind), value) async for kind, value in cursor])
        return _contact_from_row(tuple(row), keys)

    async def count_contacts(self) -> int:
        """How many contacts are stored."""
        return int(await self._scalar("SELECT count(*) FROM contacts"))

    # -- event log ---------------------------------------------------------------------------

    async def last_seq(self) -> int:
        """The highest ``seq`` ever assigned (0 for a new store)."""
        return int(await self._scalar("SELECT value FROM meta WHERE key = 'last_seq'"))

    async def append_events(self, rows: Sequence[tuple[int, float, str, str | None, str]]) -> None:
        """Log a batch of events ``(seq, ts, type, contact_id, payload_json)`` in one transaction.

        Rows whose contact was revoked meanwhile are still logged with an id-only payload
        by the caller; here every row is written as given. ``seq`` must exceed ``last_seq``,
        which follows (migration 3's trigger).
        """
        if not rows:
            return
        if len(rows) <= _ROWS_PER_INSERT:
            await self._write_statement(_insert_events_sql(len(rows)),
                                        [value for row in rows for value in row])
            return

        async def work() -> None:
            for begin in range(0, len(rows), _ROWS_PER_INSERT):
                part = rows[begin : begin + _ROWS_PER_INSERT]
                await self._db.execute(_insert_events_sql(len(part)),
                                       [value for row in part for value in row])

        await self._write(work)

    async def events_after(self, seq: int, *, limit: int = 10_000) -> list[LoggedEvent]:
        """Logged events with ``seq`` above the given one, oldest first."""
        async with self._db.execute(
            "SELECT seq, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ) as cursor:
            return [LoggedEvent(int(s), str(p)) async for s, p in cursor]

    async def present_in_log(self) -> list[tuple[str, str, float | None]]:
        """Contacts whose newest logged event is not a departure (present when the last run
        ended, e.g. by a crash): ``(contact_id, newest payload, ts of their last arrival)``."""
        async with self._db.execute(
            "SELECT e.contact_id, e.payload, (SELECT max(a.ts) FROM events a "
            "WHERE a.contact_id = e.contact_id AND a.type = 'arrived') "
            "FROM events e JOIN (SELECT contact_id, max(seq) AS seq FROM events "
            "WHERE contact_id IS NOT NULL GROUP BY contact_id) newest ON e.seq = newest.seq "
            "WHERE e.type != 'departed' ORDER BY e.seq"
        ) as cursor:
            return [(str(c), str(p), None if t is None else float(t)) async for c, p, t in cursor]

    async def first_retained_seq(self) -> int | None:
        """The lowest ``seq`` still in the log, or None when it is empty."""
        value = await self._scalar("SELECT min(seq) FROM events")
        return None if value is None else int(value)

    async def prune_events(self, *, before_ts: float, keep_count: int) -> int:
        """Delete events older than ``before_ts`` and beyond the newest ``keep_count``."""

        async def work() -> int:
            cursor = await self._db.execute(
                "DELETE FROM events WHERE ts < ? OR seq <= "
                "(SELECT coalesce(max(seq), 0) - ? FROM events)",
                (before_ts, keep_count),
            )
            return int(cursor.rowcount)

        result: int = await self._write(work)
        return result


    # -- MQTT publisher progress ---------------------------------------------------------------

    async def mqtt_progress(self) -> tuple[int, set[str]]:
        """The last event ``seq`` published to MQTT (-1: never started) and the ids with
        retained presence at the broker."""
        seq = int(await self._scalar("SELECT value FROM meta WHERE key = 'mqtt_published_seq'"))
        async with self._db.execute("SELECT contact_id FROM mqtt_present") as cursor:
            present = {str(row[0]) async for row in cursor}
        return seq, present

    async def save_mqtt_progress(
        self, seq: int, *, added: Iterable[str] = (), removed: Iterable[str] = ()
    ) -> None:
        """Record in one transaction: published up to ``seq``; presence added/removed."""
        add = [(cid,) for cid in added]
        remove = [(cid,) for cid in removed]

        async def work() -> None:
            await self._db.execute(
                "UPDATE meta SET value = ? WHERE key = 'mqtt_published_seq'", (seq,)
            )
            await self._db.executemany("DELETE FROM mqtt_present WHERE contact_id = ?", remove)
            await self._db.executemany(
                "INSERT OR IGNORE INTO mqtt_present (contact_id) VALUES (?)", add
            )

        await self._write(work)


def _consume_outcome(task: asyncio.Future[Any]) -> None:
    """Mark a shielded write's outcome as seen (its caller may have been cancelled)."""
    if not task.cancelled():
        task.exception()


def _check_path(text: str, *, create: bool) -> None:
    if text == ":memory:":
        return
    if not create and not Path(text).exists():
        raise StoreError(f"{text}: database does not exist")
    parent = Path(text).parent
    if not parent.is_dir():
        raise StoreError(f"{text}: folder {parent} does not exist")


def _statements(script: str) -> list[str]:
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


@functools.lru_cache(maxsize=64)
def _insert_events_sql(count: int) -> str:
    """``INSERT INTO events ... VALUES (?, ?, ?, ?, ?), ...`` for ``count`` rows."""
    return _EVENT_COLUMNS + ", ".join(["(?, ?, ?, ?, ?)"] * count)


def _contact_from_row(row: tuple[Any, ...], keys: tuple[ContactKey, ...]) -> Contact:
    contact_id, name, org, title, handles, tags, calibration, granted, expires = row
    return Contact(
        id=contact_id,
        name=name,
        org=org,
        title=title,
        handles=json.loads(handles),
        tags=tuple(json.loads(tags)),
        calibration_db=float(calibration),
        granted_at=granted,
        expires_at=expires,
        keys=keys,
    )


def _redacted(payload: str, seq: int, contact_id: str) -> str:
    """A logged event with its contact reduced to the id (an unreadable row to seq and id)."""
    try:
        return codec.redact_contact(payload, contact_id)
    except codec.DecodeError:
        return codec.encode({"seq": seq, "contact": {"id": contact_id}})
