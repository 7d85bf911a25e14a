"""The contact change log: every write that touches a contact moves it to the end of the log
(whoever wrote it), so a reader applies exactly what changed; and a revocation's purge of the
event log keeps only the id-only departure and tombstone."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from hallway.errors import StoreError
from hallway.models import Contact, ContactKey, KeyKind
from hallway.registry.changes import (
    applied_change,
    changes_after,
    forget_events,
    forget_until_done,
    latest_change,
    revoked_after,
    save_applied_change,
)
from hallway.store import SqliteStore

IRK = "ec0234a357c8ad05341010a60a397d9b"


def database_bytes(path: Path) -> bytes:
    """A database file and its WAL, as bytes (what someone who copies them would have)."""
    wal = Path(f"{path}-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def contact(i: int, **extra: object) -> Contact:
    return Contact(id=f"c-{i}", name=f"Person {i}",
                   keys=(ContactKey(KeyKind.HALLWAY_V1, f"{i:032x}"),), **extra)  # type: ignore[arg-type]


async def test_each_write_moves_only_its_contact_to_the_end(tmp_path: Path) -> None:
    async with await SqliteStore.open(tmp_path / "h.db") as store:
        assert await latest_change(store) == 0
        await store.import_contacts([contact(i) for i in range(1, 501)])
        start = await latest_change(store)
        assert [c.contact_id for c in await changes_after(store, 0, limit=1000)] == [
            f"c-{i}" for i in range(1, 501)]  # one row per contact, however many writes
        # One new key, one new contact, one revocation: three changes, nothing else.
        await store.replace_keys("c-7", [ContactKey(KeyKind.IRK, IRK)])
        await store.add_contact(contact(900))
        await store.revoke("c-3", now=1.0)
        changes = await changes_after(store, start)
        assert [(c.contact_id, c.revoked) for c in changes] == [
            ("c-7", False), ("c-900", False), ("c-3", True)]
        assert changes[0].contact is not None
        assert changes[0].contact.keys == (ContactKey(KeyKind.IRK, IRK),)
        assert changes[2].contact is None
        assert await revoked_after(store, start) == ["c-3"]
        assert await revoked_after(store, changes[-1].change_id) == []
        # Paging: a page at a time, in change order.
        first = await changes_after(store, start, limit=2)
        assert [c.contact_id for c in first] == ["c-7", "c-900"]
        assert [c.contact_id for c in await changes_after(store, first[-1].change_id)] == ["c-3"]
        assert await applied_change(store) == 0
        await save_applied_change(store, changes[-1].change_id)
        assert await applied_change(store) == changes[-1].change_id


async def test_a_store_written_before_the_log_existed_lists_every_contact(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    async with await SqliteStore.open(path) as store:
        await store.import_contacts([contact(1), contact(2)])
        await store.revoke("c-2", now=1.0)
    with sqlite3.connect(path) as db:  # back to the schema before the change log
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' "
                                  "AND name LIKE 'contact_changes_%'").fetchall():
            db.execute(f"DROP TRIGGER {name}")
        db.execute("DROP TABLE contact_changes")
        db.execute("DROP TABLE registry_versions")
        db.execute("DELETE FROM meta WHERE key IN ('contacts_applied_change', "
                   "'registry_published_change')")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        db.execute(f"PRAGMA user_version = {version - 1}")
    async with await SqliteStore.open(path) as store:
        assert {c.contact_id for c in await changes_after(store, 0)} == {"c-1", "c-2"}
        assert await revoked_after(store, 0) == ["c-2"]
        # What a daemon applied before the upgrade is not owed again (no tombstone burst).
        assert await revoked_after(store, await applied_change(store)) == []


async def test_forget_events_keeps_only_the_id_only_departure_and_tombstone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.db"
    async with await SqliteStore.open(path) as store:
        def row(seq: int, kind: str, cid: str, **extra: object) -> tuple[int, float, str, str, str]:
            payload = {"type": kind, "seq": seq, "contact": {"id": cid, "name": "Ada Lovelace"},
                       **extra}
            return (seq, float(seq), kind, cid, json.dumps(payload))

        await store.append_events([
            row(1, "arrived", "c-1", zone="near"), row(2, "zone", "c-1"),
            row(3, "arrived", "c-2"), row(4, "departed", "c-1", reason="revoked"),
            row(5, "revoked", "c-1"), row(6, "departed", "c-1", reason="timeout"),
        ])
        assert await forget_events(store, "c-1") == 5
        async with store.connection.execute(
            "SELECT seq, contact_id, payload FROM events ORDER BY seq"
        ) as cursor:
            rows = [(s, c, json.loads(p)) async for s, c, p in cursor]
        assert [(s, c) for s, c, _ in rows] == [(3, "c-2"), (4, "c-1"), (5, "c-1")]
        assert rows[1][2]["contact"] == {"id": "c-1"}
        assert rows[2][2]["contact"] == {"id": "c-1"}
        assert await forget_events(store, "c-1") == 0  # nothing left to do
    data = database_bytes(path)
    assert data.count(b"Ada Lovelace") == 1  # c-2's arrival only


async def test_forgetting_waits_out_a_locked_database_instead_of_failing(tmp_path: Path) -> None:
    """Another process holds the write lock past the busy timeout: forget_events fails (and
    would have ended the daemon's task); forget_until_done retries until the events are gone."""
    path = tmp_path / "h.db"
    async with await SqliteStore.open(path) as store:
        await store.append_events([(1, 1.0, "arrived", "c-1", json.dumps(
            {"type": "arrived", "seq": 1, "contact": {"id": "c-1", "name": "Ada Lovelace"}}))])
        await store.connection.execute("PRAGMA busy_timeout = 50")
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError, match="locked"):
                await forget_events(store, "c-1")
            release = threading.Timer(0.6, lambda: holder.execute("COMMIT"))
            release.start()
            changed = await asyncio.wait_for(forget_until_done(store, "c-1"), 10)
            release.join()
        finally:
            holder.close()
        assert changed == 1
        assert await store.events_after(0) == []
