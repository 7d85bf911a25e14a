"""The venue service: scanners' MQTT topics in, one room per contact out (MQTT and SPEC §6).

The graph: an MQTT subscriber (persistent session, QoS 1) reads every scanner's events,
retained presence and status under ``<prefix>/<venue>/scanners/+/...``; the pure ``Arbiter``
turns them into venue events (``arrived``/``moved``/``zone``/``departed`` with ``room``); a
``Hub`` gives them ``seq``, logs them in the venue's own SQLite store and fans them out to the
``EventServer`` (the same socket protocol as a scanner, announced by mDNS with ``role=venue``);
store, hub, server, announcer, notifier, checkpointer and watchdog are the daemon's own
``Edges`` (so ``storage.write_failure_exit_s``, background WAL checkpoints and a watchdog fed
only while healthy hold here too);
an ``MqttPublisher`` publishes the logged events, the retained present set and Home Assistant
discovery under ``<prefix>/<venue>/``. Teardown is the reverse of start-up.

A scanner's events may arrive twice (at-least-once delivery): one whose ``seq`` is not above
the last seen from that scanner is dropped, unless its ``ts`` is newer (the scanner's database
was replaced and ``seq`` started over).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt

from hallway import __version__, codec
from hallway.config import Config
from hallway.edges import Edges, EdgesFacade, raise_fatal
from hallway.errors import BrokerError, HallwayError
from hallway.hub import Hub
from hallway.lifecycle import bounded
from hallway.logs import FailureStreak, get_logger
from hallway.models import Contact, DepartReason, EventType, PresenceEvent
from hallway.mqtt import (
    BACKOFF_START_S,
    MqttPublisher,
    Topics,
    broker_error,
    follow_hub,
    make_client,
    public_contact,
    public_event,
    unescape_level,
    venue_base,
)
from hallway.notify import SystemdNotifier
from hallway.registry.changes import forget_until_done
from hallway.registry.publisher import RegistryPublisher
from hallway.store import SqliteStore
from hallway.venue.arbiter import Arbiter
from hallway.venue.homeassistant import HomeAssistantDiscovery
from hallway.venue.offsets import ScannerOffsets

log = get_logger(__name__)

TICK_S = 1.0
FLUSH_TIMEOUT_S = 3.0
MAX_INCOMING = 50_000
"""Messages the MQTT client buffers before we read them; beyond it they are dropped (logged)."""
MAX_PAYLOAD_BYTES = 65_536
_REASONS = {reason.value: reason for reason in DepartReason}


class VenueService(EdgesFacade):
    """``hallway venue``: one instance per process; ``await run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        config: Config,
        *,
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        notifier: SystemdNotifier | None = None,
        on_ready: Callable[[VenueService], Awaitable[None] | None] | None = None,
    ) -> None:
        self.config = config
        self._state_dir = state_dir
        self._clock = clock
        self._edges = Edges(config, notifier=notifier or SystemdNotifier.from_environment(),
                            state_dir=state_dir, role="venue")
        self._on_ready = on_ready
        mqtt = config.mqtt
        self._base = venue_base(mqtt)
        self.topics = Topics.for_venue(mqtt)
        self.arbiter = Arbiter(config.venue, path_loss_exponent=config.proximity.path_loss_exponent)
        # Per-scanner receive offsets from the scanners' reference beacons (their
        # <scanner>/calibration messages), applied to their levels by the arbiter.
        self.offsets = ScannerOffsets(exponent=config.proximity.path_loss_exponent,
                                      positions=config.venue.positions)
        self._contacts: dict[str, Contact] = {}
        self._forgetting: list[str] = []  # revoked: still to forget in the hub and the log
        self._forget_wake = asyncio.Event()
        self._tombstoned: set[str] = set()  # ids whose tombstone the venue has sent
        self._last: dict[str, tuple[int, float]] = {}  # scanner -> (seq, ts) of its last event
        self._scanners: dict[str, bool] = {}  # scanner -> online
        # A scanner that stopped cleanly (its "departed ... shutdown" events): the contacts it
        # let go of, with when. Its readings stay for venue.offline_grace_s like a lost
        # scanner's; when it is back online, what it no longer holds is let go of then.
        self._stopped: dict[str, dict[str, float]] = {}
        self._connected = False
        self._offset_s: float | None = None
        self._started_at = time.monotonic()
        self._n: dict[str, int] = dict.fromkeys(
            ("messages", "events_in", "duplicates", "malformed", "events_out", "connects",
             "failures", "revoked"),
            0,
        )
        self.publisher: MqttPublisher | None = None
        self.registry: RegistryPublisher | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def store(self) -> SqliteStore:
        """The venue's open store."""
        if self._edges.store is None:
            raise RuntimeError("venue service not started")
        return self._edges.store

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Operational figures (no contact data)."""
        edges = self._edges
        hub = edges.hub.stats() if edges.hub is not None else {}
        publisher = self.publisher.stats() if self.publisher is not None else {}
        server = edges.server.stats() if edges.server is not None else {}
        return {
            "version": __version__,
            "role": "venue",
            "scanner": self.config.scanner.name,
            "venue": self.config.mqtt.venue,
            "uptime_s": round(time.monotonic() - self._started_at, 1),
            "broker_connected": self._connected,
            "scanners_online": sorted(s for s, up in self._scanners.items() if up),
            "scanners_offline": sorted(s for s, up in self._scanners.items() if not up),
            "present": len(self.arbiter.present()),
            "last_seq": int(hub.get("last_seq", 0)),
            "subscribers": int(server.get("subscribers", 0)),
            "mqtt_published_seq": publisher.get("published_seq"),
            "mqtt_dropped": publisher.get("dropped", 0),
            "registry": self.registry.stats() if self.registry is not None else None,
            **self._n,
            **{f"decisions_{k}": v for k, v in self.arbiter.counts.items()},
            "scanner_offsets": self.offsets.status(),
        }

    def _status_line(self) -> str:
        s = self.status()
        return (f"broker {'connected' if s['broker_connected'] else 'unreachable'}; "
                f"{len(s['scanners_online'])} scanner(s) online; {s['present']} present; "
                f"{s['subscribers']} subscriber(s)")

    # -- the graph ----------------------------------------------------------------------------

    async def _build(self) -> None:
        config = self.config
        edges = self._edges
        store = await edges.open_store()
        # Retention on the venue's clock (the scanners' clock), like its decisions.
        hub = await edges.start_hub(contact_lookup=self._contacts.get, clock=self._known_now,
                                    batch_window_s=0.01)
        extra = None
        if config.mqtt.homeassistant:
            extra = HomeAssistantDiscovery(config.mqtt, status_topic=self.topics.status).messages
        self.publisher = MqttPublisher(
            config.mqtt,
            scanner=config.scanner.name,
            store=store,
            present=hub.present,
            topics=self.topics,
            client_id=f"{self._client_id()}-pub",
            extra=extra,
            clock=self._clock,
        )
        if config.registry.enabled:
            # The venue's contacts (``hallway venue contacts``) out to its scanners.
            self.registry = RegistryPublisher(config, self.store)
        await edges.start_server(status_provider=self.status, clock=self.now)
        # The kiosk and the dashboard over the venue's hub; no enrollment (no contact store).
        await edges.start_web(lookup=self._contacts.get, status=self.status, clock=self.now,
                              role="venue")

    def now(self) -> float:
        """The venue's clock: ``clock`` plus the lead of the most advanced scanner's clock.

        Scanners stamp events and readings on their advertisements' clock (a replayed trace
        keeps its own time); decisions follow that clock, so they line up with the readings.
        Live, the offset is the scanners' clock skew, about zero.
        """
        return self._clock() + (self._offset_s or 0.0)

    def _known_now(self) -> float | None:
        """``now`` once a scanner's clock was seen, else None (a replay's time is unknown)."""
        return self.now() if self._offset_s is not None else None

    def _follow(self, ts: float) -> None:
        skew = ts - self._clock()
        if self._offset_s is None or skew > self._offset_s:
            self._offset_s = skew

    def _running_hub(self) -> Hub:
        assert self._edges.hub is not None, "the hub is built in run()"
        return self._edges.hub

    def _client_id(self) -> str:
        return self.config.mqtt.client_id or f"hallway-venue-{self.config.mqtt.venue}"

    def _publish(self, events: list[PresenceEvent]) -> None:
        if not events:
            return
        for event in events:
            if event.type is EventType.REVOKED or event.reason is DepartReason.REVOKED:
                # Out before the hub renders it: the departure and tombstone carry the id only.
                self._contacts.pop(event.contact_id, None)
                if event.contact_id not in self._forgetting:
                    self._forgetting.append(event.contact_id)
                continue
            contact = self.arbiter.contact(event.contact_id)
            if contact is not None:
                self._contacts[event.contact_id] = contact
                self._tombstoned.discard(event.contact_id)  # enrolled again since
        self._running_hub().publish(events)
        self._n["events_out"] += len(events)
        if self._forgetting:
            self._forget_wake.set()

    async def _forgetter(self) -> None:
        """Revoked contacts: out of the hub's queues and the venue's event log."""
        hub, store = self._running_hub(), self.store
        while True:
            await self._forget_wake.wait()
            self._forget_wake.clear()
            while self._forgetting:
                contact_id = self._forgetting.pop(0)
                await hub.forget_contact(contact_id)
                await forget_until_done(store, contact_id)
                self._n["revoked"] += 1

    # -- MQTT in ------------------------------------------------------------------------------

    async def _subscribe(self) -> None:
        """Read the scanners' topics for ever, reconnecting with capped backoff."""
        mqtt = self.config.mqtt
        delay = BACKOFF_START_S
        failures = FailureStreak(log)
        while True:
            client = make_client(mqtt, client_id=self._client_id(), clean_session=False,
                                 max_queued_incoming=MAX_INCOMING)
            try:
                async with client:
                    self._connected = True
                    self._n["connects"] += 1
                    log.info("venue_broker_connected", host=mqtt.host, port=mqtt.port)
                    failures.ended()
                    delay = BACKOFF_START_S
                    scanners = f"{self._base}/scanners/+"
                    for topic in (f"{scanners}/status", f"{scanners}/present/+",
                                  f"{scanners}/events", f"{scanners}/calibration"):
                        await client.subscribe(topic, qos=1)
                    async for message in client.messages:
                        payload = message.payload
                        if not isinstance(payload, bytes | bytearray):
                            payload = b"" if payload is None else str(payload).encode()
                        self.receive(str(message.topic), bytes(payload))
            except aiomqtt.MqttError as exc:
                error: BrokerError = broker_error(exc)
                self._n["failures"] += 1
                failures.failed("venue_broker_unavailable", error=str(error))
            finally:
                self._connected = False
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, mqtt.reconnect_max_s)

    def receive(self, topic: str, payload: bytes) -> None:
        """One message from a scanner's topics in; the venue events it causes published."""
        self._publish(self.handle(topic, payload))

    def handle(self, topic: str, payload: bytes) -> list[PresenceEvent]:
        """One message from a scanner's topics -> the venue events it causes."""
        self._n["messages"] += 1
        prefix = f"{self._base}/scanners/"
        if not topic.startswith(prefix) or len(payload) > MAX_PAYLOAD_BYTES:
            self._n["malformed"] += 1
            return []
        parts = topic[len(prefix):].split("/")
        scanner = unescape_level(parts[0])
        now = self.now()
        if parts[1:] == ["status"]:
            online = payload == b"online"
            if self._scanners.get(scanner) != online:
                log.info("scanner_status", scanner=scanner, online=online)
            self._scanners[scanner] = online
            events = self.arbiter.scanner_status(scanner, online=online, now=now)
            if online:
                for cid, ts in sorted(self._stopped.pop(scanner, {}).items()):
                    events.extend(self.arbiter.lost(scanner, cid, ts=ts, now=now))
            return events
        if parts[1:] == ["events"]:
            return self._on_event(scanner, payload, now)
        if parts[1:] == ["calibration"]:
            if not self.offsets.receive(scanner, payload):
                self._n["malformed"] += 1
            self.arbiter.corrections = self.offsets.corrections
            return []
        if len(parts) == 3 and parts[1] == "present":
            return self._on_present(scanner, unescape_level(parts[2]), payload, now)
        self._n["malformed"] += 1
        return []

    def _on_event(self, scanner: str, payload: bytes, now: float) -> list[PresenceEvent]:
        event = public_event(payload)
        ts = event.get("ts") if event is not None else None
        if event is None or not isinstance(ts, int | float):
            self._n["malformed"] += 1
            return []
        self._follow(float(ts))
        now = self.now()
        seq = int(event["seq"])
        last = self._last.get(scanner)
        if last is not None and seq <= last[0] and ts <= last[1]:
            self._n["duplicates"] += 1
            return []
        self._last[scanner] = (seq, float(ts))
        self._n["events_in"] += 1
        contact = event["contact"]
        kind = event["type"]
        if kind == "revoked":
            # A scanner's tombstone: the contact's consent ended (present here or not).
            # Every scanner sends one; the venue passes it on once (until the id is seen again).
            cid = contact["id"]
            events = self.arbiter.forget(cid, now=now)
            if cid not in self._tombstoned:
                self._tombstoned.add(cid)
                events.append(PresenceEvent(EventType.REVOKED, now, cid))
            return events
        if kind == "departed":
            reason = _REASONS.get(str(event.get("reason")))
            if reason is DepartReason.REVOKED:
                return self.arbiter.forget(contact["id"], now=now)
            if reason is DepartReason.SHUTDOWN:
                # A clean stop is the scanner going offline, not the person leaving.
                self._stopped.setdefault(scanner, {})[str(contact["id"])] = float(ts)
                return self.arbiter.scanner_status(scanner, online=False, now=now)
            return self.arbiter.lost(scanner, contact["id"], ts=float(ts), reason=reason,
                                     now=now)
        distance = event.get("distance_m")
        if kind not in ("arrived", "zone") or not isinstance(distance, int | float):
            return []
        return self.arbiter.seen(
            scanner, contact, ts=float(ts), distance_m=float(distance), now=now,
            zone=_text(event.get("zone")), rssi=_number(event.get("rssi")),
            via=_text(event.get("via")),
        )

    def _on_present(self, scanner: str, contact_id: str, payload: bytes, now: float
                    ) -> list[PresenceEvent]:
        if not payload:
            held = self._stopped.get(scanner)
            if held is not None:  # cleared by a clean stop: kept for the offline grace
                held.setdefault(contact_id, now)
                return []
            return self.arbiter.lost(scanner, contact_id, now=now)
        try:
            data: dict[str, Any] | None = codec.decode(payload)
        except codec.DecodeError:
            data = None
        contact = public_contact(data.get("contact")) if isinstance(data, dict) else None
        if not isinstance(data, dict) or contact is None or contact["id"] != contact_id:
            self._n["malformed"] += 1
            return []
        ts, distance = data.get("ts"), data.get("distance_m")
        if not isinstance(ts, int | float) or not isinstance(distance, int | float):
            self._n["malformed"] += 1
            return []
        self._follow(float(ts))
        now = self.now()
        return self.arbiter.seen(
            scanner, contact, ts=float(ts), distance_m=float(distance), now=now,
            zone=_text(data.get("zone")), rssi=_number(data.get("rssi")),
            via=_text(data.get("via")),
        )

    # -- loops --------------------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._publish(self.arbiter.tick(self.now()))

    async def _relay(self) -> None:
        """Wake the MQTT publisher whenever the hub has logged new events."""
        assert self.publisher is not None
        await follow_hub(self.publisher, lambda: self._running_hub().subscribe(queue_size=4096))

    def _healthy(self, now: float, interval: float) -> bool:
        """For the watchdog, beside the shared checks (event log written, loop on time): the
        MQTT reader is running (it reconnects by itself; a broker that is down is not ours to
        fix by a restart)."""
        reader = self._reader
        return reader is not None and not reader.done()

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set; return the process exit code."""
        try:
            await self._build()
        except HallwayError:
            await self._close_all()
            raise
        assert self.publisher is not None
        log.info("venue_starting", venue=self.config.mqtt.venue, tcp_port=self.tcp_port,
                 broker=f"{self.config.mqtt.host}:{self.config.mqtt.port}")
        tasks: list[asyncio.Task[None]] = []
        try:
            async with asyncio.TaskGroup() as group:
                publisher = group.create_task(self.publisher.run(), name="venue-mqtt-out")
                tasks = [
                    group.create_task(self._subscribe(), name="venue-mqtt-in"),
                    group.create_task(self._ticker(), name="venue-ticker"),
                    group.create_task(self._forgetter(), name="venue-forgetter"),
                    *([group.create_task(self.registry.run(), name="venue-registry")]
                      if self.registry is not None else []),
                    group.create_task(self._relay(), name="venue-relay"),
                    group.create_task(self._edges.checkpointer(), name="venue-checkpointer"),
                    group.create_task(self._edges.watchdog(
                        healthy=self._healthy, status_line=self._status_line,
                    ), name="venue-watchdog"),
                ]
                self._reader = tasks[0]
                await self._edges.announce()
                self._edges.notifier.send(ready=1, status=self._status_line())
                log.info("venue_ready", tcp_port=self.tcp_port, mdns_name=self.announced_name)
                if self._on_ready is not None:
                    result = self._on_ready(self)
                    if asyncio.iscoroutine(result):
                        await result
                await stop.wait()
                await self._shutdown(tasks, publisher)
        except BaseExceptionGroup as group:
            raise_fatal(group)
            raise
        finally:
            await self._close_all()
        return 0

    async def _shutdown(self, tasks: list[asyncio.Task[None]],
                        publisher: asyncio.Task[None]) -> None:
        log.info("venue_stopping")
        await self._edges.stop_front(tasks)
        self._publish(self.arbiter.shutdown(self.now()))
        await bounded(self._running_hub().close(), "flush_events")
        if self.publisher is not None:
            with contextlib.suppress(HallwayError):
                await self.publisher.flush(FLUSH_TIMEOUT_S)
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)

    async def _close_all(self) -> None:
        await self._edges.close()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
