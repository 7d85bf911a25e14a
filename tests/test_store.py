"""SqliteStore on real files: schema, WAL, generation, event log, revocation."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hallway.errors import ContactNotFound, StoreError
from hallway.models import Contact, ContactKey, KeyKind
from hallway.store import SCHEMA_VERSION, SqliteStore


def person(i: int) -> Contact:
    return Contact(id=f"c-{i}", name=f"P{i}", tags=("t",),
                   keys=(ContactKey(KeyKind.HALLWAY_V1, f"{i:032x}"),))


async def test_new_store_is_wal_and_migrated(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    async with await SqliteStore.open(db) as store:
        assert await store.schema_version() == SCHEMA_VERSION
        assert await store.integrity_check() == "ok"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    async with await SqliteStore.open(db):
        pass
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore.open(db)


async def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        await SqliteStore.open(tmp_path / "nowhere" / "h.db")


async def test_generation_grows_with_contact_writes(tmp_path: Path) -> None:
    async with await SqliteStore.open(tmp_path / "h.db") as store:
        g0 = await store.generation()
        await store.import_contacts([person(1), person(2)])
        g1 = await store.generation()
        await store.revoke("c-1", now=10.0)
        g2 = await store.generation()
        assert g0 < g1 < g2
        assert [c.id for c in await store.list_contacts()] == ["c-2"]
        assert await store.revoked_ids() == {"c-1"}
        with pytest.raises(ContactNotFound):
            await store.get_contact("c-1")


async def test_event_log_seq_survives_pruning_and_reopen(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    async with await SqliteStore.open(db) as store:
        await store.append_events(
            [(seq, float(seq), "arrived", "c-1", f'{{"seq": {seq}}}') for seq in range(1, 11)]
        )
        assert await store.prune_events(before_ts=0.0, keep_count=3) == 7
        assert await store.first_retained_seq() == 8
        assert [e.seq for e in await store.events_after(8)] == [9, 10]
        assert await store.prune_events(before_ts=100.0, keep_count=100) == 3
    async with await SqliteStore.open(db) as store:
        assert await store.last_seq() == 10
        assert await store.first_retained_seq() is None


async def test_failed_write_changes_nothing(tmp_path: Path) -> None:
    async with await SqliteStore.open(tmp_path / "h.db") as store:
        await store.add_contact(person(1))
        clash = Contact(id="c-9", name="Clash", keys=person(1).keys)
        with pytest.raises(StoreError, match="already held"):
            await store.add_contact(clash)
        assert [c.id for c in await store.list_contacts()] == ["c-1"]
