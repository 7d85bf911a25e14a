"""One hallway database file: its connection, schema migrations, and how writes take turns.

WAL journal, foreign keys on, schema versioned by ``PRAGMA user_version`` with forward-only
migrations (``hallway.store.migrations``). Every write is one transaction, so a crash (or
SIGKILL) mid-import leaves the store as it was before. The daemon moves WAL checkpoints to a
second connection (``checkpoint_in_background``) so its event log writes never wait for one.
The tables' own code lives in ``contacts``, ``events`` and ``mqtt_cursor``, each a subclass of
``Database``; ``hallway.store.SqliteStore`` combines them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import aiosqlite

from hallway.errors import StoreError
from hallway.files import create_private
from hallway.store.migrations import MIGRATIONS, SCHEMA_VERSION, statements

_T = TypeVar("_T")


def _connect_error(path: str, exc: BaseException) -> StoreError:
    reason = str(exc)
    if path != ":memory:":
        file = Path(path)
        if not os.access(file.parent, os.W_OK) or (file.exists() and not os.access(file, os.W_OK)):
            reason += " (the database or its folder is read-only)"
    return StoreError(f"{path}: {reason}")


class Database:
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
    async def open(cls, path: str | Path, *, create: bool = True) -> Self:
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
                for statement in statements(MIGRATIONS[number]):
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
        return await _shielded(self._write_serialised(work))

    @property
    def connection(self) -> aiosqlite.Connection:
        """The open connection, for modules that keep their own tables (``hallway.registry``):
        read with it; write only inside ``transaction``."""
        return self._db

    async def transaction(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` (a coroutine factory) in one write transaction, taking turns with
        every other writer (see ``_write``)."""
        return await self._write(work)

    async def transaction_in_thread(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work(connection)`` (plain, blocking sqlite3 calls) in one IMMEDIATE
        transaction, all of it in a single trip to the database thread.

        ``transaction`` costs a loop turn per statement, and holds the write turn across all
        of them: on a busy daemon each turn is a few ms, so a many-statement change (a registry
        update) kept the event log waiting for tens of ms. Here the turn is held only while
        SQLite works. Takes turns with every other writer; a cancelled caller does not cancel
        the write. Relies on aiosqlite running queued functions on its connection's thread
        (``Connection._execute``, locked with its hash in requirements/runtime.txt; tested).
        """
        db = self._db

        def one_trip() -> _T:
            connection = db._conn  # private: used only on its own thread, here
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection)
                connection.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
                raise
            return result

        async def serialised() -> _T:
            async with self._write_lock:
                self._unchecked = True
                try:
                    run: Callable[..., Awaitable[_T]] = db._execute  # private, see above
                    return await run(one_trip)
                except sqlite3.Error as exc:
                    raise StoreError(
                        f"{self.path}: write failed, nothing was changed: {exc}") from None

        return await _shielded(serialised())

    async def scrub(self) -> None:
        """Empty the WAL of old page copies (after deleting a contact's data); best effort."""
        await self._scrub()

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

    async def _scrub(self) -> None:
        """Checkpoint and empty the WAL, where old copies of rewritten pages (a revoked
        contact's data) would otherwise stay readable. Best effort: busy readers may defer it."""
        async with self._write_lock:
            with contextlib.suppress(sqlite3.Error):
                await self._scalar("PRAGMA wal_checkpoint(TRUNCATE)")

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            await self._db.execute("ROLLBACK")


async def _shielded(write: Coroutine[Any, Any, _T]) -> _T:
    """Await ``write`` in a task of its own: cancelling the caller does not cancel it."""
    task = asyncio.ensure_future(write)
    task.add_done_callback(_consume_outcome)
    return await asyncio.shield(task)


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
