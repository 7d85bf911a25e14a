"""Contacts: their keys, consent and calibration, revocations, and the change counter.

``meta.contacts_generation`` grows with every contact write: the daemon polls it to pick up
CLI changes within a second. Revoking a contact deletes it, its keys and its logged events, and
keeps only a tombstone (its id and when).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from hallway import codec
from hallway.errors import ContactNotFound, ImportRejected, Problem, StoreError
from hallway.models import Contact, ContactKey, KeyKind
from hallway.store.database import Database
from hallway.store.network import NetworkTables


class ContactStore(NetworkTables, Database):
    """The contacts part of a hallway database."""

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
            "INSERT INTO contacts (id, name, org, title, handles, tags, calibration_db, display) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET name = excluded.name, "
            "org = excluded.org, title = excluded.title, handles = excluded.handles, "
            "tags = excluded.tags, calibration_db = excluded.calibration_db, "
            "display = excluded.display",
            [
                (
                    c.id,
                    c.name,
                    c.org,
                    c.title,
                    json.dumps(dict(c.handles), ensure_ascii=False, sort_keys=True),
                    json.dumps(list(c.tags), ensure_ascii=False),
                    c.calibration_db,
                    int(c.display),
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
        await self._write_network_rows(contacts)

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
            await self._forget_known(contact_id)
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
        knows = await self._knows_map()
        contacts = []
        async with self._db.execute(
            "SELECT c.id, c.name, c.org, c.title, c.handles, c.tags, c.calibration_db, "
            "s.granted_at, s.expires_at, c.display FROM contacts c LEFT JOIN consent s "
            "ON s.contact_id = c.id ORDER BY c.id"
        ) as cursor:
            async for row in cursor:
                contacts.append(_contact_from_row(tuple(row), tuple(keys.get(row[0], ())),
                                                  knows.get(row[0], frozenset())))
        return contacts

    async def get_contact(self, contact_id: str) -> Contact:
        """One contact with its keys, or ContactNotFound."""
        async with self._db.execute(
            "SELECT c.id, c.name, c.org, c.title, c.handles, c.tags, c.calibration_db, "
            "s.granted_at, s.expires_at, c.display FROM contacts c LEFT JOIN consent s "
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
        knows = (await self._knows_map(contact_id)).get(contact_id, frozenset())
        return _contact_from_row(tuple(row), keys, knows)


def _contact_from_row(
    row: tuple[Any, ...], keys: tuple[ContactKey, ...], knows: frozenset[str]
) -> Contact:
    contact_id, name, org, title, handles, tags, calibration, granted, expires, display = row
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
        display=bool(display),
        knows=knows,
    )


def _redacted(payload: str, seq: int, contact_id: str) -> str:
    """A logged event with its contact reduced to the id (an unreadable row to seq and id)."""
    try:
        return codec.redact_contact(payload, contact_id)
    except codec.DecodeError:
        return codec.encode({"seq": seq, "contact": {"id": contact_id}})
