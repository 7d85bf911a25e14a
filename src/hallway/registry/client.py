"""The venue registry's receiving side (in a scanner daemon with ``registry.enabled``): the
registry's contacts into the scanner's own store, and whether consent can be confirmed.

Theory of operation. On every connection the client subscribes to the registry's contact
topics and then to its head. The broker hands over every retained contact message of the first
subscription before the retained head of the second, so once the head has arrived the scanner
holds the whole snapshot: it is *current*. Until then (at start, and again after every
reconnect, since changes may have been missed while away) resolving is held: ``hold_reason``
says why, and the daemon resolves nothing. Each message is one contact's new state or
tombstone; they are written to the scanner's store in batches, each batch one transaction
(``apply_registry``), and then ``applied`` runs (the daemon takes the change log's news into its
tables before it resolves again). A version the scanner has already applied is skipped.

Fail closed: with no word from the registry (its head is republished every
``registry.heartbeat_s``) for ``registry.stale_after_s``, resolving is held again, scanning goes
on, and it resumes as soon as the registry is heard.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import aiomqtt

from hallway.config import Config
from hallway.errors import BrokerError, StoreError
from hallway.logs import get_logger
from hallway.models import Contact
from hallway.mqtt import BACKOFF_START_S, broker_error, make_client, topic_level
from hallway.registry.changes import apply_registry, registry_versions
from hallway.registry.wire import RegistryTopics, decode_head, decode_update, peek_version
from hallway.store import SqliteStore

log = get_logger(__name__)

BATCH = 512
"""Contact messages written to the store in one transaction at most."""
YIELD_EVERY = 64
"""Messages decoded between two turns of the event loop (a few ms)."""
MAX_INCOMING = 200_000
"""Messages the MQTT client buffers before we read them (a whole snapshot's worth)."""


class RegistryClient:
    """Keeps a scanner's store in step with the venue registry; ``run`` until cancelled."""

    def __init__(
        self,
        config: Config,
        store: SqliteStore,
        *,
        applied: Callable[[], Awaitable[None]],
        on_state: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._store = store
        self._applied = applied
        self._on_state = on_state
        self._clock = clock
        self._monotonic = monotonic
        self.topics = RegistryTopics.of(config.mqtt)
        name = topic_level(config.scanner.name)
        self._client_id = f"hallway-{config.mqtt.venue}-{name}-registry"
        self._versions: dict[str, int] = {}
        self._pending: dict[str, tuple[int, Contact | None]] = {}
        self.current = False
        self.connected = False
        self.version = -1
        self._received = 0  # contact messages on this connection
        self._heard_at: float | None = None
        self._n = dict.fromkeys(
            ("contacts", "tombstones", "skipped", "malformed", "batches", "connects",
             "failures", "syncs"), 0)

    # -- what the daemon asks ------------------------------------------------------------------

    def hold_reason(self) -> str | None:
        """Why contacts must not be resolved now (None: consent is confirmed)."""
        if self._heard_at is None:
            return "the venue registry has not been heard yet"
        silent = self._monotonic() - self._heard_at
        if silent > self._config.registry.stale_after_s:
            return f"no word from the venue registry for {silent:.0f} s"
        if not self.current:
            return "catching up with the venue registry"
        return None

    def stats(self) -> dict[str, object]:
        """Counters and state for ``status`` (no contact data)."""
        silent = None if self._heard_at is None else self._monotonic() - self._heard_at
        return {"connected": self.connected, "current": self.current, "version": self.version,
                "heard_s_ago": None if silent is None else round(silent, 1),
                "hold": self.hold_reason(), **self._n}

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, catch up, follow; reconnect with capped backoff."""
        delay, streak = BACKOFF_START_S, 0
        self._versions = await registry_versions(self._store)
        while True:
            self.current = False
            client = make_client(self._config.mqtt, client_id=self._client_id,
                                 max_queued_incoming=MAX_INCOMING)
            try:
                async with client:
                    self.connected = True
                    self._n["connects"] += 1
                    streak, delay = 0, BACKOFF_START_S
                    self._received = 0
                    await client.subscribe(self.topics.contacts, qos=1)
                    await client.subscribe(self.topics.head, qos=1)
                    log.info("registry_connected", version=self.version)
                    await self._follow(client)
            except aiomqtt.MqttError as exc:
                self._fail(broker_error(exc), streak := streak + 1)
            except (BrokerError, StoreError) as exc:
                self._fail(exc, streak := streak + 1)
            finally:
                self.connected = False
                self.current = False
                self._pending.clear()
                self._on_state()
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self._config.mqtt.reconnect_max_s)

    def _fail(self, exc: BaseException, streak: int) -> None:
        self._n["failures"] += 1
        (log.warning if streak == 1 else log.debug)("registry_unavailable", error=str(exc),
                                                    attempts=streak)

    async def _follow(self, client: aiomqtt.Client) -> None:
        head = self.topics.head
        count = 0
        async for message in client.messages:
            count += 1
            if count % YIELD_EVERY == 0:
                # A snapshot arrives all at once and reading a queued message never waits:
                # hand the loop back now and then (decoding one takes tens of µs).
                await asyncio.sleep(0)
            topic = str(message.topic)
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if topic == head:
                await self._on_head(payload)
                continue
            self._on_contact(topic, payload)
            # Live changes are written at once; a snapshot in batches (the head ends it).
            if len(self._pending) >= BATCH or (self.current and not len(client.messages)):
                await self._flush()

    async def _on_head(self, payload: bytes) -> None:
        try:
            version, _ts, covered = decode_head(payload)
        except ValueError:
            self._n["malformed"] += 1
            return
        await self._flush()
        if not self.current and self._received < covered:
            # The broker dropped part of the snapshot (its queue limit): not current; retry.
            raise BrokerError(f"registry snapshot incomplete: {self._received} of at least "
                              f"{covered} contact messages arrived (raise the broker's "
                              "max_queued_messages)")
        self._heard_at = self._monotonic()
        self.version = max(self.version, version)
        if not self.current:
            self.current = True
            self._n["syncs"] += 1
            log.info("registry_current", version=self.version, contacts=len(self._versions))
        self._on_state()

    def _on_contact(self, topic: str, payload: bytes) -> None:
        self._received += 1
        contact_id = self.topics.contact_id(topic)
        if contact_id is None or not payload:
            self._n["malformed"] += 1
            return
        try:
            version, data = peek_version(payload)
            if self._versions.get(contact_id, -1) >= version:
                self._n["skipped"] += 1  # already applied (a restart re-reads the snapshot)
                return
            update = decode_update(contact_id, data)
        except ValueError as exc:
            self._n["malformed"] += 1
            log.warning("registry_message_refused", reason=str(exc))
            return
        self._pending[contact_id] = (update.version, update.contact)

    async def _flush(self) -> None:
        """Write the pending updates in one transaction, then let the daemon apply them."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        contacts = [c for _, c in pending.values() if c is not None]
        revoked = [cid for cid, (_, c) in pending.items() if c is None]
        versions = [(contact_id, version) for contact_id, (version, _) in pending.items()]
        await apply_registry(self._store, contacts, revoked, now=self._clock(),
                             versions=versions)
        self._versions.update(versions)
        self._n["contacts"] += len(contacts)
        self._n["tombstones"] += len(revoked)
        self._n["batches"] += 1
        await self._applied()

