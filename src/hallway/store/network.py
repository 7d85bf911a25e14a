"""The store's network tables (network's migrations): who knows whom, match identifiers, salt.

``knows(contact_id, known_id)`` holds the ids a person knows; rows whose ``known_id`` is not
(or no longer) enrolled are kept (a later import may enroll them) but never read back, and
revoking a contact deletes every row naming it.

``match_ids(ident, contact_id, hashed)`` is what a network import may find a contact by:
their LinkedIn/X handles in canonical form (``hashed`` 0; derived from ``handles`` on every
write of the contact), and the salted hashes of the emails and phone numbers they gave for
matching (``hashed`` 1, ``ident`` = ``h:`` + hex; the addresses themselves are never
stored). ``network_salt`` holds the database's random salt, made once by the migration.
``meta.match_ids_version`` says which normalisation rules the handle rows were derived
with; ``ensure_match_ids`` derives them again when it is older than this code's (also for
the contacts stored before ``match_ids`` existed).

``NetworkTables`` is mixed into ``SqliteStore``; its methods use the store's connection and
its one-writer-at-a-time transactions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from hallway.errors import ContactNotFound
from hallway.network.hashing import hashed_kind, stored_ident
from hallway.network.normalise import handle_ids

if TYPE_CHECKING:
    import aiosqlite

    from hallway.models import Contact

MIGRATION = """
    ALTER TABLE contacts ADD COLUMN display INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE knows (
        contact_id TEXT NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
        known_id TEXT NOT NULL,
        PRIMARY KEY (contact_id, known_id)
    ) WITHOUT ROWID;
    CREATE INDEX knows_known ON knows(known_id);
    CREATE TABLE match_hashes (
        hash BLOB NOT NULL,
        contact_id TEXT NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
        PRIMARY KEY (hash, contact_id)
    ) WITHOUT ROWID;
    CREATE INDEX match_hashes_contact ON match_hashes(contact_id);
    CREATE TABLE network_salt (id INTEGER PRIMARY KEY CHECK (id = 1), salt BLOB NOT NULL);
    INSERT INTO network_salt VALUES (1, randomblob(32));
"""
"""Contacts' display and knows, match hashes and their salt (as first shipped)."""

MATCH_IDS_MIGRATION = """
    CREATE TABLE match_ids (
        ident TEXT NOT NULL,
        contact_id TEXT NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
        hashed INTEGER NOT NULL,
        PRIMARY KEY (ident, contact_id)
    ) WITHOUT ROWID;
    CREATE INDEX match_ids_contact ON match_ids(contact_id, hashed);
    INSERT INTO match_ids (ident, contact_id, hashed)
        SELECT 'h:' || lower(hex(hash)), contact_id, 1 FROM match_hashes;
    DROP TABLE match_hashes;
    INSERT INTO meta SELECT 'match_ids_version',
        CASE WHEN EXISTS (SELECT 1 FROM contacts WHERE handles != '{}') THEN 0 ELSE {version} END;
"""
"""Match identifiers: handles in canonical form beside the salted hashes (the hashes move
over as ``h:`` + hex), so an import looks up only its own identifiers."""
MATCH_IDS_VERSION = 1
"""Bump when ``hallway.network.normalise`` changes what a handle's identifier is."""
MATCH_IDS_MIGRATION = MATCH_IDS_MIGRATION.replace("{version}", str(MATCH_IDS_VERSION))

_INSERT_KNOWN = (
    "INSERT OR IGNORE INTO knows (contact_id, known_id) SELECT ?, ? "
    "WHERE NOT EXISTS (SELECT 1 FROM revocations WHERE contact_id = ?2)"
)
_INSERT_ID = "INSERT OR IGNORE INTO match_ids (ident, contact_id, hashed) VALUES (?, ?, ?)"
_ENROLLED_KNOWS = (
    "SELECT k.contact_id, k.known_id FROM knows k JOIN contacts c ON c.id = k.known_id"
)


class NetworkTables:
    """Reads and writes of the network tables (mixed into ``SqliteStore``)."""

    _db: aiosqlite.Connection

    if TYPE_CHECKING:
        async def _write(self, work: Callable[[], Any]) -> Any: ...
        async def _bump_generation(self) -> None: ...
        async def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    # -- inside other writes -------------------------------------------------------------------

    async def _write_network_rows(self, contacts: Sequence[Contact]) -> None:
        """Replace each contact's ``knows``, handle identifiers and (where given) match
        hashes, in the caller's transaction. Revoked ids are not written into ``knows``."""
        db = self._db
        ids = [(c.id,) for c in contacts]
        await db.executemany("DELETE FROM knows WHERE contact_id = ?", ids)
        await db.executemany(
            _INSERT_KNOWN, [(c.id, known) for c in contacts for known in sorted(c.knows)]
        )
        await db.executemany("DELETE FROM match_ids WHERE contact_id = ? AND hashed = 0", ids)
        await db.executemany(
            _INSERT_ID,
            [(ident, c.id, 0) for c in contacts for ident in handle_ids(dict(c.handles))],
        )
        matched = [c for c in contacts if c.match is not None]
        if not matched:
            return
        salt = await self._salt()
        await db.executemany(
            "DELETE FROM match_ids WHERE contact_id = ? AND hashed = 1", [(c.id,) for c in matched]
        )
        await db.executemany(
            _INSERT_ID,
            [(stored_ident(salt, ident), c.id, 1) for c in matched for ident in (c.match or ())
             if hashed_kind(ident)],
        )

    async def _forget_known(self, contact_id: str) -> None:
        """Remove a (revoked) contact from everyone's ``knows``, in the caller's transaction."""
        await self._db.execute("DELETE FROM knows WHERE known_id = ?", (contact_id,))

    async def _salt(self) -> bytes:
        return bytes(await self._scalar("SELECT salt FROM network_salt WHERE id = 1"))

    async def _knows_map(self, contact_id: str | None = None) -> dict[str, frozenset[str]]:
        """Enrolled known ids per contact (of one contact when ``contact_id`` is given)."""
        found: dict[str, set[str]] = {}
        sql, params = _ENROLLED_KNOWS, ()  # type: tuple[str, tuple[str, ...]]
        if contact_id is not None:
            sql, params = sql + " WHERE k.contact_id = ?", (contact_id,)
        async with self._db.execute(sql, params) as cursor:
            async for owner, known in cursor:
                found.setdefault(str(owner), set()).add(str(known))
        return {owner: frozenset(ids) for owner, ids in found.items()}

    # -- network import --------------------------------------------------------------------------

    async def network_salt(self) -> bytes:
        """This database's salt for match hashes (random, made once)."""
        return await self._salt()

    async def ensure_match_ids(self) -> bool:
        """Derive every contact's handle identifiers again if they were derived by older rules
        (or not at all: contacts stored before ``match_ids`` existed). True if it did."""
        version = await self._scalar("SELECT value FROM meta WHERE key = 'match_ids_version'")
        if version is not None and int(version) >= MATCH_IDS_VERSION:
            return False

        async def work() -> None:
            await self._db.execute("DELETE FROM match_ids WHERE hashed = 0")
            async with self._db.execute(
                "SELECT id, handles FROM contacts WHERE handles != '{}'"
            ) as cursor:
                rows = await cursor.fetchall()
            await self._db.executemany(
                _INSERT_ID,
                [(ident, str(cid), 0) for cid, handles in rows
                 for ident in handle_ids(json.loads(handles))],
            )
            await self._db.execute(
                "INSERT INTO meta VALUES ('match_ids_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (MATCH_IDS_VERSION,))

        await self._write(work)
        return True

    async def match_rows(self, idents: Collection[str]) -> list[tuple[str, str]]:
        """``(stored identifier, contact id)`` for those of ``idents`` (as ``stored_ident``
        gives them) that some enrolled contact has; one query whatever their number."""
        if not idents:
            return []
        async with self._db.execute(
            "SELECT ident, contact_id FROM match_ids "
            "WHERE ident IN (SELECT value FROM json_each(?))",
            (json.dumps(list(idents)),),
        ) as cursor:
            return [(str(ident), str(cid)) for ident, cid in await cursor.fetchall()]

    async def match_count(self, contact_id: str) -> int:
        """How many email/phone hashes a contact may be matched by."""
        return int(await self._scalar(
            "SELECT count(*) FROM match_ids WHERE contact_id = ? AND hashed = 1", (contact_id,)))

    async def known_by(self, contact_id: str) -> frozenset[str]:
        """The enrolled contacts whose ``knows`` lists ``contact_id`` (for ``--mutual-only``)."""
        async with self._db.execute(
            "SELECT k.contact_id FROM knows k WHERE k.known_id = ?", (contact_id,)
        ) as cursor:
            return frozenset(str(row[0]) for row in await cursor.fetchall())

    async def add_knows(
        self, contact_id: str, known: Iterable[str], *, replace: bool = False
    ) -> int:
        """Add ``known`` to a contact's ``knows`` (or replace it); the enrolled count after."""
        ids = sorted(set(known) - {contact_id})

        async def work() -> int:
            if not await self._scalar("SELECT 1 FROM contacts WHERE id = ?", (contact_id,)):
                raise ContactNotFound(contact_id)
            if replace:
                await self._db.execute("DELETE FROM knows WHERE contact_id = ?", (contact_id,))
            await self._db.executemany(_INSERT_KNOWN, [(contact_id, known) for known in ids])
            await self._bump_generation()
            return int(await self._scalar(
                "SELECT count(*) FROM knows k JOIN contacts c ON c.id = k.known_id "
                "WHERE k.contact_id = ?", (contact_id,)))

        result: int = await self._write(work)
        return result

    async def clear_knows(self, contact_id: str) -> int:
        """Empty a contact's ``knows``; how many rows were removed."""

        async def work() -> int:
            if not await self._scalar("SELECT 1 FROM contacts WHERE id = ?", (contact_id,)):
                raise ContactNotFound(contact_id)
            cursor = await self._db.execute(
                "DELETE FROM knows WHERE contact_id = ?", (contact_id,)
            )
            await self._bump_generation()
            return int(cursor.rowcount)

        result: int = await self._write(work)
        return result
