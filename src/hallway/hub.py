"""The event hub: sequence numbers, the retained event log, the present set, and fan-out.

Theory of operation. ``publish`` is synchronous and never blocks: it gives each event the next
``seq``, renders its SPEC §5 JSON once, and appends it to a bounded pending list. One owned
task, the flusher, takes the pending events in batches, writes each batch to the SQLite log in
one transaction and only then applies it: the present set is updated and every subscriber is
offered the event, serialised once: written straight to its connection when the server has
attached one (``Subscription.attach``) and that connection has nothing unsent, else put in its
bounded queue. So anything a subscriber was sent is in the log (durable before delivered), and
the snapshot a new subscriber gets (``seq`` and present set) is exactly the state after event
``seq``.

A subscriber's queue never grows past its size: when an event would not fit, the subscription
is marked lagged, its queue is dropped and its ``on_lagged`` callback runs; the client is cut
off and resumes from the log with ``since_seq``. A slow subscriber never slows the flusher or
anyone else.

Retention: the log keeps events newer than ``retention_s`` and at most ``retention_count`` of
them. The hub is the log's only pruner, and it measures age on one clock, the advertisements'
(``clock``: the daemon's stream clock, so a replayed trace keeps its own time; without one, or
until it knows the time, the newest event's own ``ts``). It prunes every ``prune_interval_s``,
also when no events come, and after many events. The horizon is the highest ``seq`` that may
have been pruned; a resume from below it gets ``resync``. Pruning waits while any subscriber is
being replayed to, so a replay never skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hallway import codec
from hallway.errors import StoreError
from hallway.events import contact_public, event_json, present_json
from hallway.filters import Filter
from hallway.logs import FailureStreak, get_logger
from hallway.models import Contact, EventType, PresenceEvent, PresentInfo
from hallway.store import SqliteStore

log = get_logger(__name__)

MAX_PENDING = 100_000
"""Events published but not yet logged; beyond this ``publish`` raises StoreError."""
MAX_BATCH = 2_000
"""Events written in one transaction."""
REPLAY_PAGE = 500
"""Logged events read per replay step."""
PRUNE_INTERVAL_S = 60.0
CLOSE_TIMEOUT_S = 5.0
RETRY_MAX_S = 2.0


@dataclass(frozen=True, slots=True)
class _Item:
    """One event as fanned out: ``tags`` is None when unknown (an id-only departure)."""

    seq: int
    contact_id: str
    tags: frozenset[str] | None
    line: bytes


@dataclass(slots=True)
class _Pending:
    seq: int
    event: PresenceEvent
    payload: dict[str, Any]
    tags: frozenset[str] | None
    _text: str | None = None  # the payload as logged and sent: serialised once

    def text(self) -> str:
        if self._text is None:
            self._text = codec.encode(self.payload)
        return self._text

    def redact(self) -> None:
        """Keep only the contact's id (serialised again, without the details)."""
        self.payload["contact"] = contact_public(None, self.event.contact_id)
        self._text = None
        self.tags = None


@dataclass(slots=True)
class _Present:
    info: PresentInfo
    tags: frozenset[str]


class Subscription:
    """One subscriber's view: a snapshot, then a bounded queue of event lines.

    ``seq`` and ``present`` are the snapshot at subscribe time; events after ``seq`` arrive
    through ``get``. ``needs_replay`` means the events in (``since_seq``, ``seq``] are to be
    read with ``Hub.replay`` first; ``resync`` means they are no longer all held.
    """

    def __init__(
        self,
        *,
        release: Callable[[Subscription, bool], None],
        seq: int,
        present: list[dict[str, Any]],
        filter_: Filter,
        since_seq: int | None,
        resync: bool,
        queue_size: int,
        on_lagged: Callable[[], None] | None,
        transform: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.seq = seq
        self.present = present
        self.filter = filter_
        self.since_seq = since_seq
        self.resync = resync
        self.needs_replay = since_seq is not None and not resync and since_seq < seq
        self.lagged = False
        self.closed = False
        self.finished = False
        self._release = release
        self._size = queue_size
        self._queue: deque[_Item] = deque()
        self._ready = asyncio.Event()
        self._on_lagged = on_lagged
        self._sink: Callable[[bytes], bool] | None = None
        self._transform = transform
        self._all = filter_.everything and transform is None

    def attach(self, sink: Callable[[bytes], bool]) -> None:
        """Hand later lines straight to ``sink`` while nothing is queued (no task wake-up).

        ``sink`` returns False when it cannot take a line now; the line is then queued for
        ``get`` as usual, so the order is kept and a slow reader still fills its bounded queue.
        """
        self._sink = sink

    def offer(self, items: list[_Item], joined: bytes) -> None:
        """Take a batch of events (``joined``: their lines in one buffer), in order.

        Per event per subscriber, so kept short: a live subscriber to everything with nothing
        queued takes the whole batch in one write; any other goes event by event.
        """
        sink = self._sink
        if sink is not None and self._all and not self._queue and sink(joined):
            return
        for item in items:
            self._offer(item)

    def _offer(self, item: _Item) -> None:
        if self.lagged or self.closed or self.finished:
            return
        if not self._all and not self.filter.matches(item.contact_id, item.tags):
            return
        if self._transform is not None:
            item = _Item(item.seq, item.contact_id, item.tags, self._transform(item.line))
        if self._sink is not None and not self._queue and self._sink(item.line):
            return
        if len(self._queue) >= self._size:
            self._lag()
            return
        self._queue.append(item)
        self._ready.set()

    def _lag(self) -> None:
        self.lagged = True
        self._sink = None
        self._queue.clear()
        self._ready.set()
        self._release(self, True)
        if self._on_lagged is not None:
            self._on_lagged()

    def redact(self, contact_id: str, redacted: dict[int, _Item]) -> None:
        """Strip ``contact_id``'s details from queued events (``redacted`` caches by seq)."""
        if not any(item.contact_id == contact_id for item in self._queue):
            return
        queue: deque[_Item] = deque()
        for item in self._queue:
            if item.contact_id != contact_id:
                queue.append(item)
                continue
            done = redacted.get(item.seq)
            if done is None:
                line = codec.line_of(codec.redact_contact(item.line, contact_id))
                done = redacted[item.seq] = _Item(item.seq, contact_id, None, line)
            queue.append(done)
        self._queue = queue

    @property
    def transform(self) -> Callable[[bytes], bytes] | None:
        """How each line is rewritten for this subscriber (None: sent as logged)."""
        return self._transform

    def replay_done(self) -> None:
        """The replay has been sent (or abandoned); the hub may prune again."""
        self.needs_replay = False

    async def get(self, wait_s: float, *, limit: int = 256) -> list[bytes] | None:
        """Up to ``limit`` queued lines, waiting at most ``wait_s`` (``[]`` if none came).

        Returns None once the subscription is lagged, closed, or finished and drained.
        """
        if not self._queue:
            if self.lagged or self.closed or self.finished:
                return None
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait_s, 0.0)):
                    await self._ready.wait()
        if self.lagged or self.closed:
            return None
        if not self._queue:
            return None if self.finished else []
        count = min(limit, len(self._queue))
        return [self._queue.popleft().line for _ in range(count)]

    def finish(self) -> None:
        """No more events will be offered; ``get`` drains what is queued, then returns None."""
        self.finished = True
        self.needs_replay = False
        self._sink = None
        self._ready.set()
        self._release(self, False)

    def close(self) -> None:
        """Stop this subscription and drop its queue (idempotent)."""
        self.closed = True
        self.needs_replay = False
        self._sink = None
        self._queue.clear()
        self._ready.set()
        self._release(self, False)

    @property
    def backlog(self) -> int:
        """How many lines wait in the queue."""
        return len(self._queue)


@dataclass(slots=True)
class _Counters:
    published: int = 0
    logged: int = 0
    batches: int = 0
    delivered: int = 0
    pruned: int = 0
    store_errors: int = 0
    lost_on_close: int = 0
    subscriptions_total: int = 0
    replays: int = 0
    resyncs: int = 0


class Hub:
    """Sequence numbers, the retained event log, the present set, and bounded fan-out."""

    def __init__(
        self,
        store: SqliteStore,
        *,
        scanner: str,
        contact_lookup: Callable[[str], Contact | None],
        retention_s: float,
        retention_count: int,
        batch_window_s: float = 0.01,
        prune_interval_s: float = PRUNE_INTERVAL_S,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
        give_up_after_s: float | None = None,
        clock: Callable[[], float | None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._scanner = scanner
        self._lookup = contact_lookup
        self._retention_s = retention_s
        self._retention_count = retention_count
        self._batch_window_s = batch_window_s
        self._give_up_after_s = give_up_after_s
        self._prune_interval_s = prune_interval_s
        self._close_timeout_s = close_timeout_s
        self._pending: deque[_Pending] = deque()
        self._next_seq = 0
        self._delivered_seq = 0
        self._logged_seq = 0
        self._horizon = 0
        self._newest_ts: float | None = None
        self._present: dict[str, _Present] = {}
        self._subs: set[Subscription] = set()
        self._wakeup = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        self._closed = False
        self._last_prune = float("-inf")
        self._since_prune = 0
        self._prune_timer: asyncio.TimerHandle | None = None
        self._lagged_total = 0
        self._write_failures = FailureStreak(log)
        self._n = _Counters()
        # From each event's ts to the end of its fan-out (for a live source: advertisement
        # received -> written to the last subscriber's socket, the daemon's own share of the
        # subscribers' latency): events past 10, 50 and 100 ms, and the longest (ms).
        self._late = [0, 0, 0]
        self._late_max_ms = 0.0

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the high-water ``seq`` and retention horizon; start the flusher task."""
        if self._started:
            return
        last = await self._store.last_seq()
        self._next_seq = last + 1
        self._delivered_seq = self._logged_seq = last
        newest = await self._store.events_after(last - 1, limit=1) if last else []
        with contextlib.suppress(codec.DecodeError):
            self._newest_ts = codec.event_ts(newest[0].payload) if newest else None
        await self._maybe_prune()  # before the flusher exists: nothing else writes yet
        self._last_prune = time.monotonic()
        first = await self._store.first_retained_seq()
        self._horizon = max(self._horizon, last if first is None else first - 1)
        self._flusher = asyncio.create_task(self._flush_loop(), name="hallway-hub-flusher")
        self._flusher.add_done_callback(_report_flusher_end)
        self._prune_timer = asyncio.get_running_loop().call_later(
            self._prune_interval_s, self._prune_due
        )
        self._started = True
        log.debug("hub_started", last_seq=last, horizon=self._horizon)

    async def close(self) -> None:
        """Flush pending events (bounded by a timeout), finish every subscription, stop."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        if self._prune_timer is not None:
            self._prune_timer.cancel()
        self._wakeup.set()
        if self._flusher is not None:
            done, _ = await asyncio.wait({self._flusher}, timeout=self._close_timeout_s)
            if not done:
                self._flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._flusher
        if self._pending:
            self._n.lost_on_close += len(self._pending)
            log.warning("hub_events_not_logged", count=len(self._pending))
            self._pending.clear()
        for sub in list(self._subs):
            sub.finish()

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, events: Sequence[PresenceEvent]) -> None:
        """Give each event the next ``seq`` and queue it for logging and delivery (no wait)."""
        if not self._started or self._closed:
            raise RuntimeError("hub is not running")
        flusher = self._flusher
        if flusher is not None and flusher.done():
            raise self.failure or StoreError("the event log writer stopped; see the log for why")
        if len(self._pending) + len(events) > MAX_PENDING:
            raise StoreError(
                f"event log writes are not keeping up: {len(self._pending)} events pending"
            )
        for event in events:
            seq = self._next_seq
            self._next_seq += 1
            contact = self._lookup(event.contact_id)
            payload = event_json(event, seq=seq, scanner=self._scanner, contact=contact)
            tags = self._tags_of(event.contact_id, contact)
            self._pending.append(_Pending(seq, event, payload, tags))
            self._n.published += 1
        if events:
            self._wakeup.set()

    def _tags_of(self, contact_id: str, contact: Contact | None) -> frozenset[str] | None:
        known = self._present.get(contact_id)
        if contact is None:
            return None if known is None else known.tags
        tags = frozenset(contact.tags)
        return tags if known is None else tags | known.tags

    async def _flush_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._pending and not self._closing and self._batch_window_s > 0:
                await asyncio.sleep(self._batch_window_s)
            while self._pending:
                batch = [self._pending[i] for i in range(min(MAX_BATCH, len(self._pending)))]
                await self._log_batch(batch)
                for _ in batch:
                    self._pending.popleft()
                self._deliver(batch)
            await self._maybe_prune()
            if self._closing and not self._pending:
                return

    async def _log_batch(self, batch: list[_Pending]) -> None:
        rows: list[tuple[int, float, str, str | None, str]] = [
            (p.seq, p.event.ts, p.event.type.value, p.event.contact_id, p.text()) for p in batch
        ]
        delay = 0.05
        failing_since = time.monotonic()
        while True:
            try:
                await self._store.append_events(rows)
            except StoreError as exc:
                failed_for = time.monotonic() - failing_since
                if self._give_up_after_s is not None and failed_for >= self._give_up_after_s:
                    # A full disk or a read-only store does not heal by itself: stop, so the
                    # daemon exits with the reason (and a supervisor restarts it).
                    raise StoreError(f"the event log could not be written for "
                                     f"{failed_for:.0f} s: {exc}") from None
                self._n.store_errors += 1
                self._write_failures.failed("event_log_write_failed", error=str(exc),
                                            events=len(rows))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                rows = await self._unlogged(rows)
                if not rows:
                    break
                continue
            break
        if failures := self._write_failures.ended():
            log.info("event_log_write_recovered", failures=failures)
        self._logged_seq = batch[-1].seq
        self._n.logged += len(batch)
        self._n.batches += 1

    async def _unlogged(
        self, rows: list[tuple[int, float, str, str | None, str]]
    ) -> list[tuple[int, float, str, str | None, str]]:
        """The rows a failed write did not leave in the log (a partial write is not redone)."""
        try:
            present = await self._store.events_after(rows[0][0] - 1, limit=len(rows))
        except StoreError:
            return rows
        done = {row.seq for row in present}
        return [row for row in rows if row[0] not in done]

    def _deliver(self, batch: list[_Pending]) -> None:
        items: list[_Item] = []
        for pending in batch:
            self._apply_present(pending)
            items.append(_Item(pending.seq, pending.event.contact_id, pending.tags,
                               codec.line_of(pending.text())))
            ts = pending.event.ts
            if self._newest_ts is None or ts > self._newest_ts:
                self._newest_ts = ts
        joined = items[0].line if len(items) == 1 else b"".join(item.line for item in items)
        for sub in list(self._subs):
            sub.offer(items, joined)
        now = time.time()
        late = self._late
        for pending in batch:
            lag = now - pending.event.ts
            if lag > 0.010:
                late[0] += 1
                if lag > 0.050:
                    late[1] += 1
                    if lag > 0.100:
                        late[2] += 1
                self._late_max_ms = max(self._late_max_ms, lag * 1000)
        self._n.delivered += len(batch)
        self._delivered_seq = batch[-1].seq
        self._since_prune += len(batch)

    def _apply_present(self, pending: _Pending) -> None:
        ev = pending.event
        old = self._present.get(ev.contact_id)
        if ev.type is EventType.DEPARTED or ev.type is EventType.REVOKED:
            self._present.pop(ev.contact_id, None)
            return
        if ev.type not in (EventType.ARRIVED, EventType.ZONE, EventType.MOVED):
            return
        via = ev.via if ev.via is not None else (old.info.via if old is not None else None)
        if via is None:
            return
        since = ev.ts if ev.type is EventType.ARRIVED or old is None else old.info.since
        info = PresentInfo(
            contact_id=ev.contact_id,
            zone=ev.zone or (old.info.zone if old is not None else "far"),
            distance_m=_first(ev.distance_m, old.info.distance_m if old else None, 0.0),
            rssi=_first(ev.rssi, old.info.rssi if old else None, -127.0),
            since=since,
            via=via,
            room=ev.room or (old.info.room if old is not None else None),
        )
        tags = pending.tags or frozenset()
        self._present[ev.contact_id] = _Present(info, tags | (old.tags if old else frozenset()))

    def _prune_due(self) -> None:
        """Wake the flusher every prune interval, so retention holds while no events come."""
        self._wakeup.set()
        self._prune_timer = asyncio.get_running_loop().call_later(
            self._prune_interval_s, self._prune_due
        )

    def _retention_now(self) -> float | None:
        """Now on the advertisements' clock (see Retention above); None before any event."""
        now = self._clock() if self._clock is not None else None
        if now is None:
            return self._newest_ts
        return now if self._newest_ts is None else max(now, self._newest_ts)

    async def _maybe_prune(self) -> None:
        now = self._retention_now()
        if now is None:
            return
        due = (
            time.monotonic() - self._last_prune >= self._prune_interval_s
            or self._since_prune >= max(100, self._retention_count // 10)
        )
        if not due or any(sub.needs_replay for sub in self._subs):
            return
        self._last_prune = time.monotonic()
        self._since_prune = 0
        try:
            removed = await self._store.prune_events(
                before_ts=now - self._retention_s, keep_count=self._retention_count
            )
            first = await self._store.first_retained_seq()
        except StoreError as exc:
            self._n.store_errors += 1
            log.warning("event_log_prune_failed", error=str(exc))
            return
        self._n.pruned += removed
        horizon = self._logged_seq if first is None else first - 1
        self._horizon = max(self._horizon, horizon)

    # -- reading ------------------------------------------------------------------------------

    @property
    def failure(self) -> StoreError | None:
        """Why the event log writer gave up (see ``give_up_after_s``), or None."""
        flusher = self._flusher
        if flusher is None or not flusher.done() or flusher.cancelled():
            return None
        exc = flusher.exception()
        return exc if isinstance(exc, StoreError) else None

    @property
    def writing(self) -> bool:
        """False while event log writes are failing (retried until ``give_up_after_s``)."""
        return self._write_failures.count == 0 and self.failure is None

    @property
    def delivered_all(self) -> bool:
        """True when every event published so far has been logged and offered to subscribers."""
        return not self._pending

    @property
    def running(self) -> bool:
        """True between ``start`` and ``close``."""
        return self._started and not self._closed

    @property
    def newest_ts(self) -> float | None:
        """The ``ts`` of the newest event delivered (the advertisements' clock), if any."""
        return self._newest_ts

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the newest event delivered (and so logged)."""
        return self._delivered_seq

    def present(self) -> list[dict[str, Any]]:
        """The present set as SPEC §6 ``present`` entries, oldest arrival first."""
        return self._present_for(Filter())

    def _present_for(self, filter_: Filter) -> list[dict[str, Any]]:
        entries = []
        for contact_id, entry in sorted(
            self._present.items(), key=lambda kv: (kv[1].info.since, kv[0])
        ):
            contact = self._lookup(contact_id)
            tags = entry.tags | frozenset(contact.tags) if contact is not None else entry.tags
            if filter_.matches(contact_id, tags):
                entries.append(present_json(entry.info, contact))
        return entries

    def contact(self, contact_id: str) -> Contact | None:
        """The current contact with this id (None: not or no longer enrolled)."""
        return self._lookup(contact_id)

    def filter_of(
        self,
        contacts: Iterable[str] | None,
        tags: Iterable[str] | None,
        knows_of: str | None = None,
    ) -> Filter:
        """A request's filter, its ``knows_of`` following this hub's contacts."""
        return Filter.of(contacts, tags, knows_of=knows_of, lookup=self._lookup)

    def subscribe(
        self,
        *,
        contacts: Sequence[str] | None = None,
        tags: Sequence[str] | None = None,
        knows_of: str | None = None,
        since_seq: int | None = None,
        queue_size: int = 1024,
        on_lagged: Callable[[], None] | None = None,
        filter_: Filter | None = None,
        max_replay: int | None = None,
        transform: Callable[[bytes], bytes] | None = None,
    ) -> Subscription:
        """A new subscription: snapshot now, live events after it, replay/resync by ``since_seq``.

        Resume rule: the events after ``since_seq`` can be replayed if ``since_seq`` is at or
        above the retention horizon, not beyond the latest ``seq``, and (with ``max_replay``)
        at most that many events back; otherwise ``resync``. ``filter_`` replaces
        ``contacts``/``tags``; ``transform`` rewrites each line this subscriber is sent.
        """
        if not self._started or self._closed:
            raise RuntimeError("hub is not running")
        if filter_ is None:
            filter_ = self.filter_of(contacts, tags, knows_of)
        seq = self._delivered_seq
        resync = since_seq is not None and (
            since_seq < self._horizon or since_seq > seq
            or (max_replay is not None and seq - since_seq > max_replay)
        )
        sub = Subscription(
            release=self._release,
            seq=seq,
            present=self._present_for(filter_),
            filter_=filter_,
            transform=transform,
            since_seq=since_seq,
            resync=resync,
            queue_size=queue_size,
            on_lagged=on_lagged,
        )
        self._subs.add(sub)
        self._n.subscriptions_total += 1
        if resync:
            self._n.resyncs += 1
        elif sub.needs_replay:
            self._n.replays += 1
        return sub

    def _release(self, sub: Subscription, lagged: bool) -> None:
        """A subscription ended (closed, finished, or cut off as lagged)."""
        if sub in self._subs:
            self._subs.discard(sub)
            if lagged:
                self._lagged_total += 1

    async def replay(
        self, sub: Subscription, *, after: int, not_before_ts: float | None = None
    ) -> tuple[int, list[bytes]] | None:
        """Logged events for ``sub`` in (``after``, ``sub.seq``], one page: (new cursor, lines).

        Call until the cursor reaches ``sub.seq``. None means the log no longer holds every
        event after ``after`` (pruned meanwhile, also by someone else): the caller resyncs.
        Events of revoked contacts are gone from the log and so are skipped. With
        ``not_before_ts``, a page that starts with an older event also gives None (a resume
        further back than the subscriber's history allows).
        """
        if after >= sub.seq:
            return sub.seq, []
        rows = await self._store.events_after(after, limit=REPLAY_PAGE)
        # Checked after the read: a prune before it shows here; one after it took nothing read.
        first = await self._store.first_retained_seq()
        if first is None or first > after + 1:
            self._horizon = max(self._horizon, (self._logged_seq if first is None else first - 1))
            return None
        if not_before_ts is not None and rows and rows[0].seq <= sub.seq:
            try:
                if codec.event_ts(rows[0].payload) < not_before_ts:
                    return None
            except codec.DecodeError:
                return None
        transform = sub.transform
        lines: list[bytes] = []
        cursor = after
        for row in rows:
            if row.seq > sub.seq:
                return sub.seq, lines
            cursor = row.seq
            try:
                contact_id, tags = codec.filter_keys(row.payload)
            except codec.DecodeError:
                log.warning("event_log_row_unreadable", seq=row.seq)
                continue
            if sub.filter.matches(contact_id, tags):
                line = codec.line_of(row.payload)
                lines.append(line if transform is None else transform(line))
        if len(rows) < REPLAY_PAGE:
            cursor = sub.seq
        return cursor, lines

    def fanout_lateness(self) -> dict[str, float]:
        """Events whose fan-out ended (the last subscriber's socket written) more than 10,
        50 and 100 ms after their ``ts``, and the most (ms); on a live source's clock that is
        the daemon's share of subscriber latency."""
        return {"over_10ms": self._late[0], "over_50ms": self._late[1],
                "over_100ms": self._late[2], "max_ms": round(self._late_max_ms, 1)}

    def stats(self) -> dict[str, int]:
        """Counters: published, logged, delivered, lagged, pruned, store errors, sizes."""
        n = self._n
        return {
            "last_seq": self._delivered_seq,
            "horizon_seq": self._horizon,
            "published": n.published,
            "logged": n.logged,
            "batches": n.batches,
            "delivered": n.delivered,
            "pending": len(self._pending),
            "present": len(self._present),
            "subscribers": len(self._subs),
            "subscriptions_total": n.subscriptions_total,
            "replays": n.replays,
            "resyncs": n.resyncs,
            "lagged": self._lagged_total,
            "pruned": n.pruned,
            "store_errors": n.store_errors,
            "lost_on_close": n.lost_on_close,
        }

    # -- revocation ---------------------------------------------------------------------------

    async def forget_contact(self, contact_id: str) -> None:
        """Drop a revoked contact from the present set and strip its details from queued events.

        Events still waiting to be logged or sent keep their ``seq`` but carry only the id.
        """
        self._present.pop(contact_id, None)
        redacted: dict[int, _Item] = {}
        for pending in self._pending:
            if pending.event.contact_id == contact_id:
                pending.redact()
        for sub in list(self._subs):
            sub.redact(contact_id, redacted)


def _report_flusher_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("hub_flusher_failed", error=repr(task.exception()))


def _first(*values: float | None) -> float:
    for value in values:
        if value is not None:
            return value
    return 0.0

