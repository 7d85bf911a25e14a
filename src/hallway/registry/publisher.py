"""The venue registry's publishing side (in ``hallway venue``): the venue store's contacts out
to the scanners through the broker.

Theory of operation. The venue's contacts live in its own store, written by ``hallway venue
contacts import/add/revoke`` (the same commands and checks as ``hallway contacts``). The store's
change log (``hallway.registry.changes``) says which contacts changed after the change id this
publisher saved (``meta.registry_published_change``). A page of them is published, each as its
retained ``registry/contacts/<id>`` message (the contact with its keys, or a tombstone), then
``registry/head`` with the newest version; once the broker has acknowledged all of them the
cursor moves. A restart or a broker outage therefore resumes at the cursor and loses nothing
(at least once; a scanner applies a version it already has as a no-op). The store is looked
at every ``POLL_S`` (its generation counter, one read) or at once after ``notify``; ``head`` is
republished every ``registry.heartbeat_s`` so scanners know the registry is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

import aiomqtt

from hallway.config import Config
from hallway.errors import BrokerError, StoreError
from hallway.logs import get_logger
from hallway.mqtt import BACKOFF_START_S, broker_error, make_client
from hallway.registry.changes import (
    changes_after,
    published_change,
    published_count,
    save_applied_change,
)
from hallway.registry.wire import (
    RegistryTopics,
    contact_payload,
    head_payload,
    tombstone_payload,
)
from hallway.store import SqliteStore

log = get_logger(__name__)

POLL_S = 0.2
"""The store's generation is read this often (changes from another process: the CLI)."""


class RegistryPublisher:
    """Publishes the venue store's contacts and their changes; ``run`` until cancelled."""

    def __init__(self, config: Config, store: SqliteStore, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self.topics = RegistryTopics.of(config.mqtt)
        self._client_id = f"hallway-venue-{config.mqtt.venue}-registry"
        self._wake = asyncio.Event()
        self._cursor: int | None = None
        self._generation = -1
        self.connected = False
        self._n = dict.fromkeys(("contacts", "tombstones", "heads", "connects", "failures"), 0)

    def notify(self) -> None:
        """Contacts may have changed: look now."""
        self._wake.set()

    @property
    def published_version(self) -> int:
        """The newest version the broker has acknowledged (-1 before the first look)."""
        return -1 if self._cursor is None else self._cursor

    def stats(self) -> dict[str, int | bool]:
        """Counters: messages published, connects, failures; the version published."""
        return {"connected": self.connected, "version": self.published_version, **self._n}

    async def run(self) -> None:
        """Connect, publish, reconnect with capped backoff."""
        delay, streak = BACKOFF_START_S, 0
        while True:
            try:
                if self._cursor is None:
                    self._cursor = await published_change(self._store)
                async with make_client(self._config.mqtt, client_id=self._client_id) as client:
                    self.connected = True
                    self._n["connects"] += 1
                    streak, delay = 0, BACKOFF_START_S
                    log.info("registry_publishing", version=self._cursor)
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                self._fail(broker_error(exc), streak := streak + 1)
            except (BrokerError, StoreError) as exc:
                self._fail(exc, streak := streak + 1)
            finally:
                self.connected = False
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self._config.mqtt.reconnect_max_s)

    def _fail(self, exc: BaseException, streak: int) -> None:
        self._n["failures"] += 1
        (log.warning if streak == 1 else log.debug)("registry_unavailable", error=str(exc),
                                                    attempts=streak)

    async def _serve(self, client: aiomqtt.Client) -> None:
        heartbeat = self._config.registry.heartbeat_s
        next_head = 0.0
        while True:
            self._wake.clear()
            sent = await self._publish_changes(client)
            now = time.monotonic()
            if sent or now >= next_head:
                covered = await published_count(self._store, self.published_version)
                await self._publish(client, [(self.topics.head, head_payload(
                    self.published_version, self._clock(), covered))])
                self._n["heads"] += 1
                next_head = now + heartbeat
            if sent:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(POLL_S, max(0.0, next_head - now))):
                    await self._wake.wait()

    async def _publish_changes(self, client: aiomqtt.Client) -> bool:
        """One page of changes out (acknowledged) and the cursor saved; False if none."""
        store = self._store
        generation = await store.generation()
        if generation == self._generation and not self._wake.is_set():
            return False
        assert self._cursor is not None
        page = await changes_after(store, self._cursor)
        if not page:
            self._generation = generation
            return False
        messages = []
        for change in page:
            topic = self.topics.contact(change.contact_id)
            if change.contact is not None:
                messages.append((topic, contact_payload(change.change_id, change.contact)))
                self._n["contacts"] += 1
            else:
                messages.append((topic, tombstone_payload(change.change_id, change.contact_id)))
                self._n["tombstones"] += 1
        await self._publish(client, messages)
        self._cursor = page[-1].change_id
        await save_applied_change(store, self._cursor, key="registry_published_change")
        return True

    async def _publish(self, client: aiomqtt.Client, messages: list[tuple[str, bytes]]) -> None:
        # Handed to the client in order (each task queues its message before its first wait).
        results = await asyncio.gather(
            *(client.publish(topic, payload, qos=1, retain=True) for topic, payload in messages),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
