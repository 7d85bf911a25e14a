"""The MQTT publisher's cursor: the last event it published, and the contacts whose retained
presence it holds at the broker (to clear them after a crash)."""

from __future__ import annotations

from collections.abc import Iterable

from hallway.store.database import Database


class MqttCursor(Database):
    """The MQTT part of a hallway database."""

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
