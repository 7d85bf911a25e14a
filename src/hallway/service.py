"""The composition root: builds the daemon's graph, owns its tasks, shuts down in order.

Start-up: store -> pipeline (contacts loaded) -> hub (seq restored) -> socket server ->
source -> mDNS announcement -> READY=1. The store, hub, server, announcer, notifier,
checkpointer and watchdog are the ``Edges`` the venue service builds alike
(``hallway.edges``); the hub prunes the event log on the advertisements' clock. Long-lived
loops run in one TaskGroup, each named: ``pump`` (hand-off -> pipeline -> hub), ``ticker``
(timeouts, token-table upkeep), ``reloader`` (contacts changed by the CLI take effect within
``storage.reload_interval_s``), ``checkpointer``, ``watchdog`` (WATCHDOG=1 only while the
source is healthy, the pump keeps up, the event log is written and the loop is responsive;
STATUS= with counts), and the source itself. The pump runs in loop callbacks as
advertisements arrive (``Handoff.drain``).

Shutdown (SIGTERM/SIGINT) is the reverse, each step bounded: STOPPING=1, mDNS goodbye, stop
accepting, stop the source, ``departed`` (reason ``shutdown``) for everyone present, flush the
event log, close the sockets and the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hallway import __version__, codec
from hallway.config import Config
from hallway.edges import Edges, EdgesFacade, raise_fatal
from hallway.errors import HallwayError
from hallway.events import present_json
from hallway.hub import Hub
from hallway.lanes import TrialLane
from hallway.lifecycle import bounded
from hallway.logs import get_logger
from hallway.loopwatch import CallbackTimer
from hallway.models import (
    Advertisement,
    Contact,
    DepartReason,
    EventType,
    KeyKind,
    PresenceEvent,
)
from hallway.mqtt import MqttPublisher, calibration_payload, follow_hub
from hallway.notify import SystemdNotifier
from hallway.parsing.checkin import CheckinFrame, Refusal
from hallway.pipeline import Pipeline
from hallway.registry.changes import (
    PAGE,
    applied_change,
    changes_after,
    contacts_page,
    forget_until_done,
    latest_change,
    revoked_after,
    save_applied_change,
)
from hallway.registry.client import RegistryClient
from hallway.sources import make_source
from hallway.sources.base import AdvertisementSource, Handoff, SourceState
from hallway.store import SqliteStore

if TYPE_CHECKING:
    from hallway.checkin.peripheral import BluezPeripheral
    from hallway.sources.beacon import BeaconAdvertiser

log = get_logger(__name__)

GIL_SWITCH_INTERVAL_S = 0.0005
"""The event log is written on the database thread; a busy loop must not keep it waiting for
the GIL for Python's default 5 ms (twice per write)."""
GC_THRESHOLDS = (7000, 10, 10)
"""The cyclic GC's thresholds while serving: each advertisement allocates short-lived containers
(in bleak and here), so the default young generation of 700 collects every few packets and
promotes objects that die soon after; 7,000 halves the CPU spent collecting (bench/latency.py)."""
TICK_INTERVAL_S = 1.0


@dataclass
class _Rates:
    """Per-second rates from counters sampled at each STATUS= (``edges.STATUS_INTERVAL_S``)."""

    last_at: float = field(default_factory=time.monotonic)
    last: dict[str, int] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)

    def sample(self, counters: dict[str, int]) -> None:
        now = time.monotonic()
        span = max(now - self.last_at, 1e-6)
        if self.last:
            self.rates = {k: (counters[k] - self.last.get(k, 0)) / span for k in counters}
        self.last, self.last_at = dict(counters), now


class Service(EdgesFacade):
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
        self._edges = Edges(config, notifier=notifier or SystemdNotifier.from_environment(),
                            state_dir=state_dir, note_error=self._note_error)
        self._on_ready = on_ready
        self._started_at = time.monotonic()
        self._reload_requested = asyncio.Event()
        self._wedged = asyncio.Event()
        self._last_drain = time.monotonic()
        self._last_error: str | None = None
        self._rates = _Rates()
        # Measurement aid ($HALLWAY_LOOP_PROBE_S, e.g. 0.005): a task that sleeps that long
        # and records how late it wakes, i.e. the longest the loop was held meanwhile.
        probe = os.environ.get("HALLWAY_LOOP_PROBE_S")
        self._probe_s = float(probe) if probe else None
        self._stall_max_s = 0.0
        self._stalls_over_10ms = 0
        # The same windows by the loop thread's own CPU time: what we did, not what the OS
        # did to us (on a busy machine a wall-clock stall is mostly waiting for a core).
        self._busy_max_s = 0.0
        self._busy_over_10ms = 0
        # And each callback's own CPU (hallway.loopwatch): the 10 ms target is per callback.
        self._callbacks: CallbackTimer | None = None
        if self._probe_s is not None:
            self._callbacks = CallbackTimer()
            self._callbacks.install()
        self._clock_offset_s = 0.0
        self._clock_known = False
        self._clamped = 0  # advertisements whose timestamp ran away from the wall clock
        self._clock_runaway_s: float | None = None  # the latest such offset (source - wall)
        # Built in run():
        self._pipeline: Pipeline | None = None
        self._mqtt: MqttPublisher | None = None
        self._mqtt_task: asyncio.Task[None] | None = None
        self._source: AdvertisementSource | None = None
        self._handoff: Handoff | None = None
        self._lane: TrialLane | None = None  # the pump's IRK trial lane, while it runs
        self._generation = -1
        self._peripheral: BluezPeripheral | None = None  # with [checkin] enabled
        self._beacon: BeaconAdvertiser | None = None  # with [scanner.beacon]
        self._applied: int | None = None  # the last contact change applied (None: none yet)
        self._registry: RegistryClient | None = None
        self._loaded = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._load_from = (0, 0)  # (generation, latest change) when the first load began
        self._contacts_loaded_s: float | None = None

    # -- the built graph (valid between _build and _close_all) ---------------------------------

    @property
    def store(self) -> SqliteStore:
        """The open store."""
        if self._edges.store is None:
            raise RuntimeError("service not started")
        return self._edges.store

    @property
    def pipeline(self) -> Pipeline:
        """The resolver -> tracker pipeline."""
        if self._pipeline is None:
            raise RuntimeError("service not started")
        return self._pipeline

    @property
    def hub(self) -> Hub:
        """The event hub."""
        if self._edges.hub is None:
            raise RuntimeError("service not started")
        return self._edges.hub

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
        source = self._source
        edges = self._edges
        hub_stats = edges.hub.stats() if edges.hub is not None else {}
        server_stats = edges.server.stats() if edges.server is not None else {}
        return {
            "version": __version__,
            "scanner": self.config.scanner.name,
            "uptime_s": round(time.monotonic() - self._started_at, 1),
            "source": self.config.scanner.source,
            **self._headline(hub_stats, server_stats),
            "contacts": int(self._pipeline.stats()["contacts"]) if self._pipeline else 0,
            # False until the first load of every contact is done (the daemon serves meanwhile).
            "contacts_loaded": self._applied is not None,
            "registry": self._registry.stats() if self._registry is not None else None,
            "contacts_load_s": None if self._contacts_loaded_s is None
            else round(self._contacts_loaded_s, 3),
            "connections": int(server_stats.get("connections", 0)),
            "last_seq": int(hub_stats.get("last_seq", 0)),
            "loop_lag_ms": round(self._edges.loop_lag_s * 1000, 1),
            **({} if self._probe_s is None else {
                "loop_stall_max_ms": round(self._stall_max_s * 1000, 2),
                "loop_stalls_over_10ms": self._stalls_over_10ms,
                "loop_busy_max_ms": round(self._busy_max_s * 1000, 2),
                "loop_busy_over_10ms": self._busy_over_10ms,
                **(self._callbacks.figures() if self._callbacks is not None else {})}),
            # A source whose clock ran away from the wall clock: how many timestamps were
            # clamped, and the latest offset seen (seconds, source minus wall).
            "clock_clamped": self._clamped,
            "clock_runaway_s": self._clock_runaway_s,
            # The IRK trial budget under a flood of new resolvable addresses, and the lane
            # where advertisements that may cost a trial wait for the loop to be free.
            "resolver": self._resolver_figures(),
            "trial_lane": self._lane.stats() if self._lane is not None else {},
            # Events delivered late (from their advertisement's reception to the fan-out).
            "fanout": edges.hub.fanout_lateness() if edges.hub is not None else {},
            # Counters behind the figures above: refused and cut-off clients, radio faults.
            "sockets": server_stats,
            "source_stats": source.stats() if source is not None else {},
            # Check-ins (GATT) and refused writes by kind; no central is ever named.
            **({"checkin": self._peripheral.stats()} if self._peripheral is not None else {}),
            # The reference beacon this scanner advertises for the others ([scanner.beacon]).
            **({"scanner_beacon": self._beacon.stats()} if self._beacon is not None else {}),
            **({"web": self._edges.web.stats()} if self._edges.web is not None else {}),
            # What the tracker knows of its receiver, and the venue's fitted path loss.
            "proximity": self._proximity_status(),
        }

    def _proximity_status(self) -> dict[str, Any]:
        pipeline = self._pipeline
        if pipeline is None:
            return {}
        tracker = pipeline.tracker
        return {
            "receiver": tracker.receiver_status(),
            "calibration": tracker.calibration_status(self._now()),
        }

    def _calibration_payload(self) -> dict[str, Any]:
        """What this scanner tells the venue of its reference beacons (MQTT, retained)."""
        beacon = self.config.scanner.beacon
        return calibration_payload(self.pipeline.tracker.calibration_status(self._now()),
                                   None if beacon is None else beacon.ibeacon)

    def _socket_status(self) -> dict[str, Any]:
        """``status`` for a socket client; the loop probe's maximum starts again after it."""
        result = self.status()
        self._stall_max_s = self._busy_max_s = 0.0
        return result

    async def _loop_probe(self, period_s: float) -> None:
        while True:
            before, cpu_before = time.monotonic(), time.thread_time()
            await asyncio.sleep(period_s)
            late = time.monotonic() - before - period_s
            busy = time.thread_time() - cpu_before
            self._stall_max_s = max(self._stall_max_s, late)
            self._busy_max_s = max(self._busy_max_s, busy)
            if late > 0.010:
                self._stalls_over_10ms += 1
            if busy > 0.010:
                self._busy_over_10ms += 1

    def _resolver_figures(self) -> dict[str, int | str]:
        stats = self._pipeline.stats() if self._pipeline is not None else {}
        figures: dict[str, int | str] = {key: int(stats.get(key, 0)) for key in (
            "irk_keys", "irk_cache_misses", "irk_deferred", "irk_pending", "irk_pending_dropped",
            "irk_trials_per_s")}
        # aes-ni, portable (C) or python: which IRK scan runs (docs/performance.md)
        figures["irk_backend"] = (self._pipeline.irk_backend if self._pipeline is not None
                                  else "")
        return figures

    def _headline(self, hub_stats: Mapping[str, Any], server_stats: Mapping[str, Any]
                  ) -> dict[str, Any]:
        """The figures of systemd's STATUS= line, which ``status`` shows with the rest."""
        source, pipeline = self._source, self._pipeline
        return {
            "source_state": source.state.value if source is not None else "stopped",
            "advertisements_per_s": round(self._rates.rates.get("advertisements", 0.0), 1),
            "matched_per_s": round(self._rates.rates.get("matched", 0.0), 2),
            "present": int(hub_stats.get("present", 0)),
            **self._counters(),
            # Why contacts are not being resolved (None: they are); see registry.stale_after_s.
            "resolving_held": pipeline.hold_reason if pipeline is not None else None,
            "subscribers": int(server_stats.get("subscribers", 0)),
            "last_error": self._last_error or (source.last_error if source is not None else None),
        }

    def _status_line(self) -> str:
        """systemd's STATUS= line, every 5 s: only the figures it shows (the whole ``status``
        took up to 10.5 ms of loop CPU in bench/registry.py, once in 300 s)."""
        edges = self._edges
        s = self._headline(edges.hub.stats() if edges.hub is not None else {},
                           edges.server.stats() if edges.server is not None else {})
        return (
            f"{s['source_state']}; {s['advertisements_per_s']:.0f} adv/s, "
            f"{s['matched_per_s']:.1f} matched/s; {s['present']} present; "
            f"{s['subscribers']} subscriber(s); malformed {s['malformed']}, "
            f"dropped {s['dropped']}"
            + (f"; last error: {s['last_error']}" if s["last_error"] else "")
            + (f"; NOT resolving: {s['resolving_held']}" if s["resolving_held"] else "")
        )

    # -- the graph ----------------------------------------------------------------------------

    def _contact(self, contact_id: str) -> Contact | None:
        result: Contact | None = self.pipeline.contact(contact_id)
        return result

    def _present_json(self) -> list[dict[str, Any]]:
        return list(self._present_entries())

    def _present_entries(self) -> Iterator[dict[str, Any]]:
        """The present contacts' entries one at a time: the MQTT refresh builds them between
        its turns of the event loop (each rebuilds a contact from the book; 200 at once held
        the loop for 11-12 ms)."""
        for info in self.pipeline.present():
            contact = self._contact(info.contact_id)
            if contact is not None:  # None: revoked since the list was taken
                yield present_json(info, contact)

    def _now(self) -> float:
        """Now on the advertisements' clock."""
        return time.time() + self._clock_offset_s

    def _stream_now(self) -> float | None:
        """Now on the advertisements' clock, or None before this run's first advertisement
        (a replayed trace's time is unknown until then)."""
        return self._now() if self._clock_known else None

    def _publish(self, events: list[PresenceEvent]) -> None:
        if events:
            self.hub.publish(events)

    async def _build(self) -> None:
        config = self.config
        edges = self._edges
        await edges.open_store()
        if config.scanner.source == "simulator" and config.scanner.simulator_contacts:
            await self._import_simulated()
        self._pipeline = Pipeline(config)
        # Retention on the advertisements' clock, like every decision.
        await edges.start_hub(contact_lookup=self._contact, clock=self._stream_now)
        await self._depart_left_over()
        await self._owe_tombstones()
        if config.mqtt.enabled and config.mqtt.plaintext_password_off_host:
            log.warning("mqtt_password_in_clear", host=config.mqtt.host,
                        hint="mqtt.allow_plaintext_password is set: use tls = true")
        if config.registry.enabled:
            self._registry = RegistryClient(config, self.store, applied=self._registry_applied,
                                            on_state=self._registry_state)
            self._registry_state()
        if config.mqtt.enabled:
            self._mqtt = MqttPublisher(
                config.mqtt,
                scanner=config.scanner.name,
                store=self.store,
                present=self._present_entries,
                clock=self._now,  # the advertisements' clock, like every other decision
                # With the venue registry: nothing goes out until it has caught up (a contact
                # revoked meanwhile has its logged events purged first).
                ready=self._registry_current if config.registry.enabled else None,
                calibration=self._calibration_payload if (
                    config.proximity.reference or config.scanner.beacon) else None,
            )
        await edges.start_server(status_provider=self._socket_status,
                                 present_provider=self._present_json, clock=self._now)
        await edges.start_web(lookup=self._contact, status=self.status, clock=self._now,
                              contacts=self.store, on_contacts_changed=self.request_reload)
        self._source = self._source_override or make_source(config)
        # The pipeline's screen lets the bleak source skip strangers before building records.
        self._handoff = Handoff(config.scanner.queue_size, screen=self.pipeline.screen,
                                heard=self.pipeline.tracker.heard)
        if config.checkin.enabled:
            from hallway.checkin.peripheral import BluezPeripheral  # noqa: PLC0415 - dbus-fast

            self._peripheral = BluezPeripheral(config.checkin, adapter=config.scanner.adapter,
                                               sink=self._on_checkin)
        if config.scanner.beacon is not None:
            from hallway.sources.beacon import BeaconAdvertiser  # noqa: PLC0415 - dbus-fast

            self._beacon = BeaconAdvertiser(config.scanner.beacon, adapter=config.scanner.adapter)

    def _on_checkin(self, frame: CheckinFrame) -> Refusal | None:
        """A well-formed check-in from the peripheral: resolved, tracked, published."""
        config = self.config
        result = self.pipeline.checkin(frame, ts=self._now(), scanner=config.scanner.adapter,
                                       power_dbm=config.checkin.measured_power_dbm)
        if isinstance(result, Refusal):
            return result
        self._publish(result)
        return None

    async def _import_simulated(self) -> None:
        """The simulated venue's contacts into the store (scanner.simulator_contacts), except
        those revoked: the simulated source brings its own people."""
        simulator = importlib.import_module("hallway.simulator")  # as the simulated source
        scanner = self.config.scanner
        revoked = await self.store.revoked_ids()
        contacts = [c for c in simulator.scenario_contacts(scanner.scenario, seed=scanner.seed)
                    if c.id not in revoked]
        if contacts:
            await self.store.import_contacts(contacts)
        log.info("simulator_contacts_imported", contacts=len(contacts), scenario=scanner.scenario,
                 seed=scanner.seed)

    async def _depart_left_over(self) -> None:
        """Close presences an unclean stop left open, so arrive/depart keep alternating."""
        now = self._now()
        events = []
        for contact_id, payload, arrived_ts in await self.store.present_in_log():
            try:
                last = codec.decode(payload)
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
        """Apply what the change log says changed since the last look, a page at a time
        (work proportional to the changes; ``hallway.registry.changes``)."""
        if self._applied is None:
            return  # the first load is still running
        async with self._reload_lock:  # the reloader and the registry client both call this
            await self._apply_changes(force=force)

    async def _apply_changes(self, *, force: bool) -> None:
        assert self._applied is not None
        generation = await self.store.generation()
        if generation == self._generation and not force:
            return
        applied, changes = self._applied, 0
        while page := await changes_after(self.store, applied):
            now = self._now()
            events: list[PresenceEvent] = []
            # A contact appears once in a page: its upserts go in one batch (one pass over
            # the tables), its removals one by one.
            events.extend(self.pipeline.upsert_contacts(
                [change.contact for change in page if change.contact is not None], now=now))
            if self._lane is not None:
                self._lane.forget_hints()  # a changed contact's IRKs: see hallway.lanes
            for change in page:
                if change.contact is None:
                    events.extend(self.pipeline.remove_contact(
                        change.contact_id, now=now, tombstone=change.revoked))
            self._publish(events)
            await self._forget_removed()
            applied, changes = page[-1].change_id, changes + len(page)
            if len(page) == PAGE:
                gc.freeze()  # a bulk change (a registry snapshot): see _load_all
            await asyncio.sleep(0)  # one page per loop turn: the pump keeps running
        self._generation, self._applied = generation, applied
        if changes:
            if self._edges.web is not None:
                self._edges.web.contacts_changed()
            await save_applied_change(self.store, applied)
            log.info("contacts_changed", changes=changes, generation=generation,
                     contacts=self.pipeline.stats()["contacts"])

    async def _owe_tombstones(self) -> None:
        """Revocations made while we were down: tombstones now (their events are gone)."""
        store = self.store
        self._load_from = (await store.generation(), await latest_change(store))
        owed = await revoked_after(store, await applied_change(store))
        for contact_id in owed:
            self._publish(self.pipeline.remove_contact(contact_id, now=self._now(),
                                                       tombstone=True))
        await self._forget_removed()
        if owed:
            log.info("revoked_while_down", contacts=len(owed))

    async def _load_all(self) -> None:
        """The first load, while already serving: every contact, a page per loop turn, so
        no step holds the loop for long; then changes made meanwhile, from the change log."""
        started = time.monotonic()
        generation, latest = self._load_from
        store, pipeline = self.store, self.pipeline
        after, count = "", 0
        while page := await contacts_page(store, after):
            self._publish(pipeline.upsert_contacts(page, now=self._now()))
            after, count = page[-1].id, count + len(page)
            # The contacts live as long as the daemon: out of the cyclic GC's reach, or its
            # full collections walk all of them (tens of ms at 100k) while we load.
            gc.freeze()
            await asyncio.sleep(0)
        await self._forget_removed()
        self._generation, self._applied = generation, latest
        await save_applied_change(store, latest)
        self._contacts_loaded_s = time.monotonic() - started
        self._loaded.set()
        if self._edges.web is not None:
            self._edges.web.contacts_changed()
        log.info("contacts_loaded", contacts=count, generation=generation,
                 seconds=round(self._contacts_loaded_s, 3))
        await self._reload(force=True)

    async def _registry_applied(self) -> None:
        """The registry client wrote changes to the store: take them in before it goes on."""
        await self._loaded.wait()
        await self._reload(force=True)

    def _registry_current(self) -> bool:
        return self._registry is not None and self._registry.current

    def _registry_state(self) -> None:
        """Hold resolving while the registry cannot confirm consent (see RegistryClient)."""
        if self._registry is not None and self._pipeline is not None:
            reason = self._registry.hold_reason()
            if (reason is None) != (self._pipeline.hold_reason is None):
                if reason is not None:
                    log.warning("resolving_held", reason=reason)
                else:
                    log.info("resolving_resumed")
            self._pipeline.hold(reason)

    async def _forget_removed(self) -> None:
        """Revoked or expired contacts: out of the hub's queues and the event log."""
        forgotten = self.pipeline.take_forgotten()
        if forgotten and self._lane is not None:
            self._lane.forget_hints()
        for contact_id in forgotten:
            await self.hub.forget_contact(contact_id)
            await forget_until_done(self.store, contact_id)

    # -- loops --------------------------------------------------------------------------------

    async def _pump(self) -> None:
        """Hand-off -> pipeline -> hub, in loop callbacks as advertisements arrive; those
        that may cost an IRK trial through the trial lane (``hallway.lanes``), after the rest."""
        handoff = self._handoff
        assert handoff is not None
        pipeline = self.pipeline
        feed, publish = pipeline.feed, self._publish
        skew = self.config.scanner.max_clock_skew_s

        def busy() -> bool:
            return handoff.queued > 0 or not self.hub.delivered_all

        lane = self._lane = TrialLane(feed, lambda: pipeline.last_via, publish, busy=busy)
        wants, put = lane.wants, lane.put

        def consume(batch: list[Advertisement]) -> None:
            self._last_drain = time.monotonic()
            events: list[PresenceEvent] = []
            wall = time.time()
            low, high = wall - skew, wall + skew
            last = wall
            trials = pipeline.irk_keys > 0
            for adv in batch:
                if not low <= (last := adv.ts) <= high:  # also NaN
                    adv = self._clamp(adv, wall)  # noqa: PLW2901 - the clamped record goes on
                    last = wall
                if trials and wants(adv):
                    put(adv)
                elif found := feed(adv):
                    events.extend(found)
            # The pipeline's clock is the advertisements' clock (a replayed trace keeps its own
            # time) within max_clock_skew_s of the wall clock; timeouts tick on the same clock.
            self._clock_offset_s = last - wall
            self._clock_known = True
            if events:
                publish(events)

        try:
            if not self._wedged.is_set():
                await handoff.drain(consume, max_items=512)
            await asyncio.Future()  # stuck on purpose (debug wedge): never drains again
        finally:
            lane.close()

    def _clamp(self, adv: Advertisement, wall: float) -> Advertisement:
        """An advertisement stamped too far from the wall clock, moved onto it (and flagged).

        Without this a replayed trace with a far-future ``ts`` would move the daemon's clock
        and expire time-limited consent; one from the far past would revive expired consent.
        """
        offset = adv.ts - wall
        self._clamped += 1
        self._clock_runaway_s = round(offset, 3) if math.isfinite(offset) else None
        if self._clamped == 1 or self._clamped % 10_000 == 0:
            log.warning("source_clock_clamped",
                        source=self.config.scanner.source, offset_s=self._clock_runaway_s,
                        clamped=self._clamped,
                        max_clock_skew_s=self.config.scanner.max_clock_skew_s)
        return adv._replace(ts=wall)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            self._publish(self.pipeline.tick(self._now()))
            await self._forget_removed()  # consent that expired this tick
            self._registry_state()  # a registry gone silent: fail closed

    async def _reloader(self) -> None:
        interval = self.config.storage.reload_interval_s
        while self._applied is None:
            try:
                await self._load_all()
            except HallwayError as exc:
                self._note_error("contacts_load_failed", exc)
                await asyncio.sleep(interval)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload_requested.wait(), timeout=interval)
            forced = self._reload_requested.is_set()
            self._reload_requested.clear()
            try:
                await self._reload(force=forced)
            except HallwayError as exc:
                self._note_error("contacts_reload_failed", exc)

    def _healthy(self, now: float, interval: float) -> bool:
        """For the watchdog: the source is healthy and the pump keeps up."""
        source = self._source
        return (
            source is not None
            and source.healthy(now)
            and self._pipeline_healthy(now, max(2.0, interval))
        )

    def _sample_rates(self) -> None:
        self._rates.sample(self._counters())

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
                 tcp_port=self.tcp_port, unix_socket=self.config.server.unix_socket,
                 irk_backend=self._pipeline.irk_backend if self._pipeline is not None else None)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._source.run(self._handoff), name="source"),
                    group.create_task(self._pump(), name="pump"),
                    group.create_task(self._ticker(), name="ticker"),
                    group.create_task(self._reloader(), name="reloader"),
                    *([group.create_task(self._registry.run(), name="registry")]
                      if self._registry is not None else []),
                    *([group.create_task(self._loop_probe(self._probe_s), name="loop-probe")]
                      if self._probe_s is not None else []),
                    group.create_task(self._edges.checkpointer(), name="checkpointer"),
                    group.create_task(self._edges.watchdog(
                        healthy=self._healthy, status_line=self._status_line,
                        on_status=self._sample_rates,
                    ), name="watchdog"),
                ]
                if self._peripheral is not None:
                    tasks.append(group.create_task(self._peripheral.run(), name="checkin"))
                if self._beacon is not None:
                    tasks.append(group.create_task(self._beacon.run(), name="beacon"))
                if self._mqtt is not None:
                    # The publisher outlives the other loops: it drains the log after the
                    # shutdown departures are flushed (see _shutdown).
                    self._mqtt_task = asyncio.create_task(self._mqtt.run(), name="mqtt")
                    hub = self.hub
                    tasks.append(group.create_task(
                        follow_hub(self._mqtt, lambda: hub.subscribe(queue_size=4096)),
                        name="mqtt-follow",
                    ))
                await self._edges.announce()
                await self._wait_scanning(stop)
                self._edges.notifier.send(ready=1, status=self._status_line())
                log.info("ready", tcp_port=self.tcp_port, mdns_name=self.announced_name)
                if self._on_ready is not None:
                    result = self._on_ready(self)
                    if asyncio.iscoroutine(result):
                        await result
                await stop.wait()
                await self._shutdown(tasks)
        except BaseExceptionGroup as group:
            raise_fatal(group)
            raise
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
        await self._edges.stop_front(tasks)
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
        await self._edges.close()


def install_signal_handlers(service: Service, stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT stop, SIGHUP reloads contacts, SIGUSR2 wedges (HALLWAY_DEBUG_WEDGE=1)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, service.request_reload)
    if os.environ.get("HALLWAY_DEBUG_WEDGE") == "1":
        loop.add_signal_handler(signal.SIGUSR2, service.wedge)
