"""The store's network tables (migration 4): who knows whom, match hashes, the venue salt.

``knows(contact_id, known_id)`` holds the ids a person knows; rows whose ``known_id`` is not
(or no longer) enrolled are kept (a later import may enroll them) but never read back, and
revoking a contact deletes every row naming it. ``match_hashes(hash, contact_id)`` holds the
salted hashes of the emails and phone numbers a contact may be matched by
(``hallway.network.hashing``); the addresses themselves are never stored. ``network_salt``
holds the database's random salt, made once by the migration.

``NetworkTables`` is mixed into ``SqliteStore``; its methods use the store's connection and
its one-writer-at-a-time transactions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from hallway.errors import ContactNotFound
from hallway.network.hashing import hash_id, hashed_kind

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

_INSERT_KNOWN = (
    "INSERT OR IGNORE INTO knows (contact_id, known_id) SELECT ?, ? "
    "WHERE NOT EXISTS (SELECT 1 FROM revocations WHERE contact_id = ?2)"
)
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
        """Replace each contact's ``knows`` and (where given) match hashes, in the caller's
        transaction. Ids revoked before are not written into anyone's ``knows``."""
        db = self._db
        await db.executemany("DELETE FROM knows WHERE contact_id = ?", [(c.id,) for c in contacts])
        await db.executemany(
            _INSERT_KNOWN, [(c.id, known) for c in contacts for known in sorted(c.knows)]
        )
        matched = [c for c in contacts if c.match is not None]
        if not matched:
            return
        salt = await self._salt()
        await db.executemany(
            "DELETE FROM match_hashes WHERE contact_id = ?", [(c.id,) for c in matched]
        )
        await db.executemany(
            "INSERT OR IGNORE INTO match_hashes (hash, contact_id) VALUES (?, ?)",
            [(hash_id(salt, ident), c.id) for c in matched for ident in (c.match or ())
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

    async def match_handles(self) -> list[tuple[str, str]]:
        """``(contact id, handles JSON)`` of every enrolled contact that has handles."""
        async with self._db.execute(
            "SELECT id, handles FROM contacts WHERE handles != '{}'"
        ) as cursor:
            return [(str(cid), str(handles)) for cid, handles in await cursor.fetchall()]

    async def match_hashes(self) -> list[tuple[bytes, str]]:
        """``(hash, contact id)`` of every stored match hash."""
        async with self._db.execute("SELECT hash, contact_id FROM match_hashes") as cursor:
            return [(bytes(h), str(cid)) for h, cid in await cursor.fetchall()]

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
