"""The composition root: builds the daemon's graph, owns its tasks, shuts down in order.

Start-up: store -> pipeline (contacts loaded) -> hub (seq restored) -> socket server ->
source -> mDNS announcement -> READY=1. Long-lived loops run in one TaskGroup, each named:
``pump`` (hand-off -> pipeline -> hub), ``ticker`` (timeouts, token-table upkeep), ``reloader``
(contacts changed by the CLI take effect within ``storage.reload_interval_s``), ``pruner``
(event retention), ``checkpointer`` (copies the SQLite WAL into the database file on a second
connection, so the event log's writes never wait for that), ``watchdog`` (WATCHDOG=1 only
while the source is healthy and the loop responsive; STATUS= with counts), and the source
itself. The pump runs in loop callbacks as advertisements arrive (``Handoff.drain``).

Shutdown (SIGTERM/SIGINT) is the reverse, each step bounded: STOPPING=1, mDNS goodbye, stop
accepting, stop the source, ``departed`` (reason ``shutdown``) for everyone present, flush the
event log, close the sockets and the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hallway import __version__
from hallway.announce import ZeroconfAnnouncer
from hallway.config import Config
from hallway.errors import HallwayError
from hallway.events import present_json
from hallway.hub import Hub
from hallway.lifecycle import bounded, close_edges, stop_front
from hallway.logs import get_logger
from hallway.models import (
    Advertisement,
    Contact,
    DepartReason,
    EventType,
    KeyKind,
    PresenceEvent,
)
from hallway.mqtt import MqttPublisher, follow_hub
from hallway.notify import SystemdNotifier
from hallway.pipeline import Pipeline
from hallway.server import EventServer, load_tokens
from hallway.sources import make_source
from hallway.sources.base import AdvertisementSource, Handoff, SourceState
from hallway.store import SqliteStore

log = get_logger(__name__)

PRUNE_INTERVAL_S = 600.0
CHECKPOINT_INTERVAL_S = 1.0
GIL_SWITCH_INTERVAL_S = 0.0005
"""The event log is written on the database thread; a busy loop must not keep it waiting for
the GIL for Python's default 5 ms (twice per write)."""
GC_THRESHOLDS = (7000, 10, 10)
"""The cyclic GC's thresholds while serving: each advertisement allocates short-lived containers
(in bleak and here), so the default young generation of 700 collects every few packets and
promotes objects that die soon after; 7,000 halves the CPU spent collecting (bench/latency.py)."""
STATUS_INTERVAL_S = 5.0
TICK_INTERVAL_S = 1.0


@dataclass
class _Rates:
    """Per-second rates from counters sampled at STATUS_INTERVAL_S."""

    last_at: float = field(default_factory=time.monotonic)
    last: dict[str, int] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)

    def sample(self, counters: dict[str, int]) -> None:
        now = time.monotonic()
        span = max(now - self.last_at, 1e-6)
        if self.last:
            self.rates = {k: (counters[k] - self.last.get(k, 0)) / span for k in counters}
        self.last, self.last_at = dict(counters), now


class Service:
    """The daemon: one instance per process; ``await run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        config: Config,
        *,
        source: AdvertisementSource | None = None,
        state_dir: Path | None = None,
        notifier: SystemdNotifier | None = None,
        on_ready: Callable[[Service], Awaitable[None] | None] | None = None,
    ) -> None:
        self.config = config
        self._source_override = source
        self._state_dir = state_dir
        self._notifier = notifier or SystemdNotifier.from_environment()
        self._on_ready = on_ready
        self._started_at = time.monotonic()
        self._reload_requested = asyncio.Event()
        self._wedged = asyncio.Event()
        self._last_drain = time.monotonic()
        self._last_error: str | None = None
        self._rates = _Rates()
        self._loop_lag_s = 0.0
        self._clock_offset_s = 0.0
        self._clamped = 0  # advertisements whose timestamp ran away from the wall clock
        self._clock_runaway_s: float | None = None  # the latest such offset (source - wall)
        self.tcp_port: int | None = None
        self.tokens: list[str] = []
        self.announced_name: str | None = None
        # Built in run():
        self._store: SqliteStore | None = None
        self._pipeline: Pipeline | None = None
        self._hub: Hub | None = None
        self._server: EventServer | None = None
        self._announcer: ZeroconfAnnouncer | None = None
        self._mqtt: MqttPublisher | None = None
        self._mqtt_task: asyncio.Task[None] | None = None
        self._source: AdvertisementSource | None = None
        self._handoff: Handoff | None = None
        self._generation = -1
        self._loaded_ids: set[str] = set()

    # -- the built graph (valid between _build and _close_all) ---------------------------------

    @property
    def store(self) -> SqliteStore:
        """The open store."""
        if self._store is None:
            raise RuntimeError("service not started")
        return self._store

    @property
    def pipeline(self) -> Pipeline:
        """The resolver -> tracker pipeline."""
        if self._pipeline is None:
            raise RuntimeError("service not started")
        return self._pipeline

    @property
    def hub(self) -> Hub:
        """The event hub."""
        if self._hub is None:
            raise RuntimeError("service not started")
        return self._hub

    # -- control from outside -----------------------------------------------------------------

    def request_reload(self) -> None:
        """Reload contacts now (SIGHUP)."""
        self._reload_requested.set()

    def wedge(self) -> None:
        """Debug aid: the pump stops draining the hand-off (the process stays alive), so the
        watchdog sees a stuck pipeline and stops WATCHDOG=1; proves systemd restarts us."""
        log.warning("pipeline_wedged_on_request")
        self._wedged.set()
        if self._handoff is not None:
            self._handoff.stop_draining()

    def _pipeline_healthy(self, now: float, grace_s: float) -> bool:
        """The pump keeps up: nothing queued, or it drained something within ``grace_s``."""
        handoff = self._handoff
        if handoff is None or handoff.stats()["queued"] == 0:
            return not self._wedged.is_set()
        return now - self._last_drain < grace_s

    # -- status -------------------------------------------------------------------------------

    def _counters(self) -> dict[str, int]:
        stats = self._pipeline.stats() if self._pipeline is not None else {}
        handoff = self._handoff.stats() if self._handoff is not None else {}
        source = self._source.stats() if self._source is not None else {}
        return {
            # The pipeline's count plus the strangers' a source screened out before a record.
            "advertisements": int(stats.get("advertisements", 0))
            + int(source.get("screened", 0)),
            "matched": int(stats.get("matched", 0)),
            "malformed": int(stats.get("malformed", 0)),
            "dropped": int(handoff.get("dropped", 0)),
        }

    def status(self) -> dict[str, Any]:
        """Operational figures for ``hallway status`` and STATUS= (no contact data)."""
        counters = self._counters()
        source = self._source
        hub_stats = self._hub.stats() if self._hub is not None else {}
        server_stats = self._server.stats() if self._server is not None else {}
        return {
            "version": __version__,
            "scanner": self.config.scanner.name,
            "uptime_s": round(time.monotonic() - self._started_at, 1),
            "source": self.config.scanner.source,
            "source_state": source.state.value if source is not None else "stopped",
            "advertisements_per_s": round(self._rates.rates.get("advertisements", 0.0), 1),
            "matched_per_s": round(self._rates.rates.get("matched", 0.0), 2),
            **counters,
            "present": int(hub_stats.get("present", 0)),
            "subscribers": int(server_stats.get("subscribers", 0)),
            "connections": int(server_stats.get("connections", 0)),
            "last_seq": int(hub_stats.get("last_seq", 0)),
            "loop_lag_ms": round(self._loop_lag_s * 1000, 1),
            "last_error": self._last_error
            or (source.last_error if source is not None else None),
            # A source whose clock ran away from the wall clock: how many timestamps were
            # clamped, and the latest offset seen (seconds, source minus wall).
            "clock_clamped": self._clamped,
            "clock_runaway_s": self._clock_runaway_s,
            # The IRK trial budget under a flood of new resolvable addresses.
            "resolver": self._resolver_figures(),
            # Counters behind the figures above: refused and cut-off clients, radio faults.
            "sockets": server_stats,
            "source_stats": source.stats() if source is not None else {},
        }

    def _resolver_figures(self) -> dict[str, int]:
        stats = self._pipeline.stats() if self._pipeline is not None else {}
        return {key: int(stats.get(key, 0)) for key in (
            "irk_keys", "irk_cache_misses", "irk_deferred", "irk_pending", "irk_pending_dropped")}

    def _status_line(self) -> str:
        s = self.status()
        return (
            f"{s['source_state']}; {s['advertisements_per_s']:.0f} adv/s, "
            f"{s['matched_per_s']:.1f} matched/s; {s['present']} present; "
            f"{s['subscribers']} subscriber(s); malformed {s['malformed']}, "
            f"dropped {s['dropped']}"
            + (f"; last error: {s['last_error']}" if s["last_error"] else "")
        )

    # -- the graph ----------------------------------------------------------------------------

    def _contact(self, contact_id: str) -> Contact | None:
        result: Contact | None = self.pipeline.contact(contact_id)
        return result

    def _present_json(self) -> list[dict[str, Any]]:
        return [present_json(i, self._contact(i.contact_id)) for i in self.pipeline.present()]

    def _now(self) -> float:
        """Now on the advertisements' clock."""
        return time.time() + self._clock_offset_s

    def _publish(self, events: list[PresenceEvent]) -> None:
        if events:
            self.hub.publish(events)

    async def _build(self) -> None:
        config = self.config
        self._store = await SqliteStore.open(config.storage.database)
        await self._store.checkpoint_in_background()
        self._pipeline = Pipeline(config)
        await self._reload(force=True)
        self._hub = Hub(
            self._store,
            scanner=config.scanner.name,
            contact_lookup=self._contact,
            retention_s=config.storage.event_retention_s,
            retention_count=config.storage.event_retention_count,
            # Group commit: events published while a write is in flight share the next one,
            # so no extra waiting window is needed.
            batch_window_s=0.0,
            give_up_after_s=config.storage.write_failure_exit_s,
        )
        await self.hub.start()
        await self._depart_left_over()
        if config.mqtt.enabled:
            self._mqtt = MqttPublisher(
                config.mqtt,
                scanner=config.scanner.name,
                store=self.store,
                present=self._present_json,
                clock=self._now,  # the advertisements' clock, like every other decision
            )
        self.tokens = list(load_tokens(config.server, state_dir=self._state_dir))
        self._server = EventServer(
            config.server,
            self._hub,
            scanner=config.scanner.name,
            version=__version__,
            tokens=self.tokens,
            status_provider=self.status,
            present_provider=self._present_json,
        )
        await self._server.start()
        self.tcp_port = self._server.tcp_port
        self._source = self._source_override or make_source(config)
        # The pipeline's screen lets the bleak source skip strangers before building records.
        self._handoff = Handoff(config.scanner.queue_size, screen=self.pipeline.screen)
        if config.mdns.enabled and self.tcp_port is not None:
            self._announcer = ZeroconfAnnouncer(
                config.mdns,
                scanner=config.scanner.name,
                port=self.tcp_port,
                auth="token" if self.tokens else "none",
                host=config.server.tcp_host,
            )

    async def _depart_left_over(self) -> None:
        """Close presences an unclean stop left open, so arrive/depart keep alternating."""
        now = self._now()
        events = []
        for contact_id, payload, arrived_ts in await self.store.present_in_log():
            try:
                last = json.loads(payload)
                via = KeyKind(last["via"]) if last.get("via") else None
            except (ValueError, KeyError, TypeError):
                last, via = {}, None
            events.append(PresenceEvent(
                EventType.DEPARTED, now, contact_id, zone=last.get("zone"),
                distance_m=last.get("distance_m"), rssi=last.get("rssi"), via=via,
                dwell_s=None if arrived_ts is None else max(0.0, now - arrived_ts),
                reason=DepartReason.SHUTDOWN,
            ))
        if events:
            log.info("departed_after_unclean_stop", contacts=len(events))
            self._publish(events)

    async def _reload(self, *, force: bool = False) -> None:
        generation = await self.store.generation()
        if generation == self._generation and not force:
            return
        contacts = await self.store.list_contacts()
        ids = {c.id for c in contacts}
        removed = self._loaded_ids - ids
        events = self.pipeline.load_contacts(contacts, now=self._now())
        self._generation, self._loaded_ids = generation, ids
        if self._hub is not None:
            self._publish(events)
            for contact_id in removed:
                # Revoked: strip it from queued events and from anything logged since the
                # revoke deleted its rows (the departure itself carries only the id).
                await self.hub.forget_contact(contact_id)
                await self.store.redact_contact_events(contact_id)
        log.info("contacts_loaded", contacts=len(contacts), generation=generation,
                 removed=len(removed), departed=len(events))

    # -- loops --------------------------------------------------------------------------------

    async def _pump(self) -> None:
        """Hand-off -> pipeline -> hub, in loop callbacks as advertisements arrive."""
        assert self._handoff is not None
        feed, publish = self.pipeline.feed, self._publish
        skew = self.config.scanner.max_clock_skew_s

        def consume(batch: list[Advertisement]) -> None:
            self._last_drain = time.monotonic()
            events: list[PresenceEvent] = []
            wall = time.time()
            low, high = wall - skew, wall + skew
            last = wall
            for adv in batch:
                if not low <= (last := adv.ts) <= high:  # also NaN
                    adv = self._clamp(adv, wall)  # noqa: PLW2901 - the clamped record goes on
                    last = wall
                if found := feed(adv):
                    events.extend(found)
            # The pipeline's clock is the advertisements' clock (a replayed trace keeps its own
            # time) within max_clock_skew_s of the wall clock; timeouts tick on the same clock.
            self._clock_offset_s = last - wall
            if events:
                publish(events)

        if not self._wedged.is_set():
            await self._handoff.drain(consume, max_items=512)
        await asyncio.Future()  # stuck on purpose (debug wedge): never drains again

    def _clamp(self, adv: Advertisement, wall: float) -> Advertisement:
        """An advertisement stamped too far from the wall clock, moved onto it (and flagged).

        Without this a replayed trace with a far-future ``ts`` would move the daemon's clock
        and expire time-limited consent; one from the far past would revive expired consent.
        """
        offset = adv.ts - wall
        self._clamped += 1
        self._clock_runaway_s = round(offset, 3) if math.isfinite(offset) else None
        if self._clamped == 1 or self._clamped % 10_000 == 0:
            log.warning("source clock runs away from the wall clock; its timestamps are clamped",
                        source=self.config.scanner.source, offset_s=self._clock_runaway_s,
                        clamped=self._clamped,
                        max_clock_skew_s=self.config.scanner.max_clock_skew_s)
        return adv._replace(ts=wall)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            self._publish(self.pipeline.tick(self._now()))

    async def _reloader(self) -> None:
        interval = self.config.storage.reload_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload_requested.wait(), timeout=interval)
            forced = self._reload_requested.is_set()
            self._reload_requested.clear()
            try:
                await self._reload(force=forced)
            except HallwayError as exc:
                self._note_error("contacts_reload_failed", exc)

    async def _pruner(self) -> None:
        storage = self.config.storage
        while True:
            try:
                removed = await self.store.prune_events(
                    before_ts=time.time() - storage.event_retention_s,
                    keep_count=storage.event_retention_count,
                )
                if removed:
                    log.info("events_pruned", removed=removed)
            except HallwayError as exc:
                self._note_error("events_prune_failed", exc)
            await asyncio.sleep(PRUNE_INTERVAL_S)

    async def _checkpointer(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_S)
            await self.store.checkpoint()

    async def _watchdog(self) -> None:
        notifier = self._notifier
        interval = notifier.watchdog_interval_s or STATUS_INTERVAL_S
        step = min(interval, STATUS_INTERVAL_S, 1.0)
        last_status = 0.0
        expected = time.monotonic() + step
        while True:
            await asyncio.sleep(step)
            if (failure := self.hub.failure) is not None:
                raise failure  # the event log cannot be written: exit with the reason
            now = time.monotonic()
            self._loop_lag_s = max(0.0, now - expected)
            expected = now + step
            source = self._source
            healthy = (
                source is not None
                and source.healthy(now)
                and self._pipeline_healthy(now, max(2.0, interval))
                and self._loop_lag_s < max(1.0, interval / 2)
            )
            if notifier.watchdog_interval_s is not None and healthy:
                notifier.send(watchdog=1)
            if now - last_status >= STATUS_INTERVAL_S:
                self._rates.sample(self._counters())
                notifier.send(status=self._status_line())
                last_status = now

    def _note_error(self, event: str, exc: BaseException) -> None:
        self._last_error = f"{event}: {exc}"
        log.warning(event, error=str(exc))

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set; return the process exit code."""
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, GIL_SWITCH_INTERVAL_S))
        try:
            return await self._run(stop)
        finally:
            sys.setswitchinterval(switch_interval)

    async def _run(self, stop: asyncio.Event) -> int:
        try:
            await self._build()
        except HallwayError:
            await self._close_all()
            raise
        # What start-up built lives as long as the daemon: spare the cyclic GC from walking it
        # again (a full collection of it paused the loop for ~20 ms).
        gc.collect()
        gc.freeze()
        thresholds = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)
        try:
            return await self._serve(stop)
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()

    async def _serve(self, stop: asyncio.Event) -> int:
        assert self._source is not None
        assert self._handoff is not None
        log.info("starting", scanner=self.config.scanner.name, source=self.config.scanner.source,
                 tcp_port=self.tcp_port, unix_socket=self.config.server.unix_socket)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._source.run(self._handoff), name="source"),
                    group.create_task(self._pump(), name="pump"),
                    group.create_task(self._ticker(), name="ticker"),
                    group.create_task(self._reloader(), name="reloader"),
                    group.create_task(self._pruner(), name="pruner"),
                    group.create_task(self._checkpointer(), name="checkpointer"),
                    group.create_task(self._watchdog(), name="watchdog"),
                ]
                if self._mqtt is not None:
                    # The publisher outlives the other loops: it drains the log after the
                    # shutdown departures are flushed (see _shutdown).
                    self._mqtt_task = asyncio.create_task(self._mqtt.run(), name="mqtt")
                    hub = self.hub
                    tasks.append(group.create_task(
                        follow_hub(self._mqtt, lambda: hub.subscribe(queue_size=4096)),
                        name="mqtt-follow",
                    ))
                if self._announcer is not None:
                    try:
                        await asyncio.wait_for(self._announcer.start(), timeout=15)
                        self.announced_name = self._announcer.name
                    except (TimeoutError, HallwayError, OSError) as exc:
                        self._note_error("mdns_failed", exc)
                await self._wait_scanning(stop)
                self._notifier.send(ready=1, status=self._status_line())
                log.info("ready", tcp_port=self.tcp_port, mdns_name=self.announced_name)
                if self._on_ready is not None:
                    result = self._on_ready(self)
                    if asyncio.iscoroutine(result):
                        await result
                await stop.wait()
                await self._shutdown(tasks)
        except BaseExceptionGroup as group:
            # A task's HallwayError (the store gave up) ends the daemon with that reason.
            fatal, others = group.split(HallwayError)
            if fatal is None or others is not None:
                raise
            first: BaseException = fatal
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        finally:
            await self._close_all()
        return 0

    async def _wait_scanning(self, stop: asyncio.Event) -> None:
        """READY=1 waits until the source is scanning (bounded by its start timeout)."""
        assert self._source is not None
        limit = time.monotonic() + self.config.scanner.start_timeout_s * 2
        while (  # noqa: ASYNC110 - sources expose a state, not an event to wait on
            self._source.state is not SourceState.SCANNING
            and time.monotonic() < limit
            and not stop.is_set()
        ):
            await asyncio.sleep(0.05)

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        log.info("stopping")
        self._notifier.send(stopping=1, status="stopping")
        await stop_front(announcer=self._announcer, server=self._server, tasks=tasks)
        self._announcer = None
        self._publish(self.pipeline.shutdown(self._now()))
        await bounded(self.hub.close(), "flush_events")
        if self._mqtt is not None and self._mqtt_task is not None:
            self._mqtt.notify()
            await bounded(self._mqtt.flush(3.0), "mqtt_flush")
            self._mqtt_task.cancel()
            await asyncio.gather(self._mqtt_task, return_exceptions=True)

    async def _close_all(self) -> None:
        if self._mqtt_task is not None and not self._mqtt_task.done():
            self._mqtt_task.cancel()
            await asyncio.gather(self._mqtt_task, return_exceptions=True)
        await close_edges(announcer=self._announcer, server=self._server, hub=self._hub,
                          store=self._store)
        self._notifier.close()


def install_signal_handlers(service: Service, stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT stop, SIGHUP reloads contacts, SIGUSR2 wedges (HALLWAY_DEBUG_WEDGE=1)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, service.request_reload)
    if os.environ.get("HALLWAY_DEBUG_WEDGE") == "1":
        loop.add_signal_handler(signal.SIGUSR2, service.wedge)
