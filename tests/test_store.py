"""SqliteStore on real files: schema, WAL, generation, event log, revocation."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from hallway.errors import ContactNotFound, StoreError
from hallway.models import Contact, ContactKey, KeyKind
from hallway.store import MIGRATIONS, SCHEMA_VERSION, SqliteStore


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


def event_rows(first: int, count: int) -> list[tuple[int, float, str, str | None, str]]:
    return [(seq, float(seq), "zone", "c-1", f'{{"seq": {seq}}}')
            for seq in range(first, first + count)]


@pytest.mark.parametrize("count", [1, 7, 2500])  # one INSERT, and the chunked transaction
async def test_append_events_logs_every_row_and_moves_last_seq(tmp_path: Path,
                                                               count: int) -> None:
    db = tmp_path / "h.db"
    async with await SqliteStore.open(db) as store:
        await store.append_events(event_rows(5, count))
        assert await store.last_seq() == 4 + count
        logged = await store.events_after(0, limit=count + 10)
        assert [e.seq for e in logged] == list(range(5, 5 + count))
        assert logged[-1].payload == f'{{"seq": {4 + count}}}'
    with sqlite3.connect(db) as conn:  # the same rule holds for any writer of the log
        conn.execute("INSERT INTO events VALUES (9999, 1.0, 'zone', NULL, '{}')")
        conn.execute("INSERT INTO events VALUES (9000, 1.0, 'zone', NULL, '{}')")
        assert conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone() == (9999,)


async def test_a_failed_batch_logs_nothing(tmp_path: Path) -> None:
    async with await SqliteStore.open(tmp_path / "h.db") as store:
        await store.append_events(event_rows(1, 3))
        with pytest.raises(StoreError, match="nothing was changed"):
            await store.append_events(event_rows(4, 5) + event_rows(2, 1))  # seq 2 again
        assert [e.seq for e in await store.events_after(0)] == [1, 2, 3]
        assert await store.last_seq() == 3


async def test_version_2_store_is_migrated_and_keeps_its_log(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    with sqlite3.connect(db) as conn:
        for script in MIGRATIONS[:2]:
            conn.executescript(script)
        conn.execute("PRAGMA user_version = 2")
        conn.execute("INSERT INTO events VALUES (41, 1.0, 'arrived', 'c-1', '{}')")
        conn.execute("UPDATE meta SET value = 41 WHERE key = 'last_seq'")
    async with await SqliteStore.open(db) as store:
        assert await store.schema_version() == SCHEMA_VERSION
        assert await store.last_seq() == 41
        await store.append_events(event_rows(42, 2))
        assert await store.last_seq() == 43


def rows_in_main_file(db: Path, tmp_path: Path) -> int:
    """Events in the database file itself, leaving out what only the WAL holds."""
    copy = tmp_path / "main-file-only.db"
    copy.write_bytes(db.read_bytes())
    with sqlite3.connect(copy) as conn:
        has_log = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'events'")
        count: int = (conn.execute("SELECT count(*) FROM events").fetchone()[0]
                      if has_log.fetchone()[0] else 0)
    copy.unlink()
    return count


async def test_background_checkpoints_leave_writes_alone(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    async with await SqliteStore.open(db) as store:
        await store.checkpoint_in_background()
        for first in range(1, 1501, 5):  # far past SQLite's automatic checkpoint (1000 pages)
            await store.append_events(event_rows(first, 5))
        assert rows_in_main_file(db, tmp_path) == 0  # no commit copied the WAL back
        await store.checkpoint()
        assert rows_in_main_file(db, tmp_path) == 1500
        await store.append_events(event_rows(1501, 1))
        assert await store.last_seq() == 1501
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (1501,)


async def test_transaction_in_thread_is_one_atomic_trip_off_the_loop(tmp_path: Path) -> None:
    async with await SqliteStore.open(tmp_path / "h.db") as store:
        loop_thread = threading.get_ident()
        seen: list[int] = []

        def write(db: sqlite3.Connection) -> int:
            seen.append(threading.get_ident())
            db.execute("INSERT INTO events VALUES (1, 1.0, 'zone', NULL, '{}')")
            return int(db.execute("SELECT count(*) FROM events").fetchone()[0])

        assert await store.transaction_in_thread(write) == 1
        assert len(seen) == 1
        assert seen[0] != loop_thread  # ran on the database thread

        def half_then_fail(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO events VALUES (2, 2.0, 'zone', NULL, '{}')")
            db.execute("INSERT INTO events VALUES (1, 1.0, 'zone', NULL, '{}')")  # seq again

        with pytest.raises(StoreError, match="nothing was changed"):
            await store.transaction_in_thread(half_then_fail)
        assert [e.seq for e in await store.events_after(0)] == [1]

        def fail_in_python(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO events VALUES (3, 3.0, 'zone', NULL, '{}')")
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await store.transaction_in_thread(fail_in_python)
        assert [e.seq for e in await store.events_after(0)] == [1]

        # It takes turns with the other writers: both land, neither inside the other.
        def two(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO events VALUES (10, 4.0, 'zone', NULL, '{}')")

        await asyncio.gather(store.transaction_in_thread(two),
                             store.append_events(event_rows(11, 3)))
        assert [e.seq for e in await store.events_after(0)] == [1, 10, 11, 12, 13]
        assert not store.connection.in_transaction

        # A caller cancelled mid-write does not cancel the write: it lands whole.
        def slow(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO events VALUES (20, 5.0, 'zone', NULL, '{}')")
            threading.Event().wait(0.2)
            db.execute("INSERT INTO events VALUES (21, 5.0, 'zone', NULL, '{}')")

        task = asyncio.ensure_future(store.transaction_in_thread(slow))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.append_events(event_rows(22, 1))  # takes its turn after it
        assert [e.seq for e in await store.events_after(13)] == [20, 21, 22]
        assert not store.connection.in_transaction
