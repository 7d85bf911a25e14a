"""The retained event log: every published event, by sequence number, for resume and recovery.

``meta.last_seq`` is the high-water mark of sequence numbers, so ``seq`` never repeats even
after the log is pruned or rows are deleted; a trigger keeps it (migration 3), so a batch of
events is one INSERT.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from hallway.store.database import Database

_ROWS_PER_INSERT = 1000
"""Events written by one multi-row INSERT (5 parameters each, well under SQLite's limit)."""
_EVENT_COLUMNS = "INSERT INTO events (seq, ts, type, contact_id, payload) VALUES "


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One row of the event log: its sequence number and its event JSON text."""

    seq: int
    payload: str


class EventLog(Database):
    """The event-log part of a hallway database."""

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


@functools.lru_cache(maxsize=64)
def _insert_events_sql(count: int) -> str:
    """``INSERT INTO events ... VALUES (?, ?, ?, ?, ?), ...`` for ``count`` rows."""
    return _EVENT_COLUMNS + ", ".join(["(?, ?, ?, ?, ?)"] * count)
