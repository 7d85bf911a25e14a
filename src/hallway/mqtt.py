"""MQTT publishing for venue scale: events in order from the retained log, presence, status.

Topics, under ``<base>`` = ``<topic_prefix>/<venue>/scanners/<scanner>`` for a scanner daemon
and ``<topic_prefix>/<venue>`` for ``hallway venue``:

- ``<base>/events``: every SPEC §5 event in ``seq`` order, at the configured QoS, not retained.
- ``<base>/present/<contact id>``: retained, one per present contact (a SPEC §6 ``present``
  entry plus ``scanner`` and ``ts``); an empty retained message clears it.
- ``<base>/status``: retained ``online``; the broker publishes the last will ``offline`` when
  the connection dies, and a clean stop publishes ``offline`` itself.
- ``<base>/calibration`` (scanners with reference beacons): retained, what the scanner hears
  of the venue's reference badges, named by digest (``calibration_payload``), for the venue's
  per-scanner receive offsets (``hallway.proximity.scanners``); republished when it changes,
  at most every ``present_interval_s``.

Topic levels made from names and contact ids are escaped with ``topic_level`` (``%``, ``/``,
``+``, ``#`` become ``%25``, ``%2F``, ``%2B``, ``%23``).

Theory of operation. The publisher holds no events of its own: the hub writes each event to
the SQLite log before anyone sees it, and the publisher reads the log after its durable cursor.
A window of messages is published and acknowledged (QoS >= 1) before the cursor advances, in
one transaction with the set of contacts whose retained presence the broker holds. A broker
outage, a dropped connection or a daemon restart therefore resumes at the cursor: no event is
skipped, and some may be sent twice (at-least-once: a consumer drops a ``seq`` it has seen).
If more than ``backlog_max_events`` wait, the oldest are skipped and counted as dropped, as are
events pruned from the log before they could be published.

Whenever the log is caught up, the retained presence follows the live present set (the
``present`` callable): new or materially changed entries are published, and the entries of
contacts no longer present, including those left behind by a crash, are cleared.

Only public contact fields (id, name, org, title, handles, tags) ever leave: every payload is
rebuilt from a fixed list of fields, so keys or addresses cannot slip through.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import aiomqtt

from hallway import codec
from hallway.config import MqttConfig
from hallway.errors import BrokerError, StoreError
from hallway.logs import FailureStreak, get_logger
from hallway.proximity.scanners import reference_digest
from hallway.store import SqliteStore

log = get_logger(__name__)

WINDOW_EVENTS = 100
"""Events published (and acknowledged) before the cursor advances."""
OPERATION_TIMEOUT_S = 10.0
POLL_S = 0.5
"""The log is looked at this often even without ``notify``."""
REFRESH_SLICE = 32
"""Present contacts compared (and their messages built) between two turns of the event loop
in a presence refresh: 200 present took 6-10 ms of loop CPU in one step."""
EVENT_SLICE = 16
"""Logged events turned into messages between two turns of the event loop (a window holds up
to ``WINDOW_EVENTS``)."""
PUBLISH_SLICE = 32
"""Messages handed to the MQTT client between two turns of the event loop."""
OUTSTANDING = 32
"""Messages handed to the MQTT client and not yet acknowledged, at most. The client reads every
acknowledgement waiting on its socket in one loop callback, sending the next queued message
for each: with a whole window outstanding (up to 100 events, each with its presence and Home
Assistant messages) those callbacks took 5-6 ms (34 of them in 300 s, bench/registry.py)."""
BACKOFF_START_S = 0.5
GOODBYE_TIMEOUT_S = 2.0

CONTACT_FIELDS = ("id", "name", "org", "title", "handles", "tags", "display", "knows")
"""The contact fields carried to the venue (``display``/``knows``: its kiosk shows only people
who agreed, and greets them with whom they know)."""
EVENT_FIELDS = (
    "type", "seq", "ts", "scanner", "contact", "zone", "distance_m", "rssi", "via",
    "previous_zone", "dwell_s", "reason", "room", "previous_room",
)
PRESENT_FIELDS = ("contact", "zone", "distance_m", "rssi", "since", "via", "room")
ONLINE = b"online"
OFFLINE = b"offline"

_ESCAPES = {"%": "%25", "/": "%2F", "+": "%2B", "#": "%23", "\x00": "%00"}


def topic_level(text: str) -> str:
    """``text`` as one MQTT topic level: no ``/`` and no wildcard, reversibly escaped."""
    return "".join(_ESCAPES.get(ch, ch) for ch in text)


def unescape_level(level: str) -> str:
    """The text ``topic_level`` was made from."""
    out = level
    for raw, escaped in _ESCAPES.items():
        if raw != "%":
            out = out.replace(escaped, raw)
    return out.replace("%25", "%")


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic names of one publisher (a scanner daemon or the venue service)."""

    base: str

    @classmethod
    def for_scanner(cls, config: MqttConfig, scanner: str) -> Topics:
        """Topics of a scanner daemon: ``<prefix>/<venue>/scanners/<scanner>``."""
        return cls(f"{venue_base(config)}/scanners/{topic_level(scanner)}")

    @classmethod
    def for_venue(cls, config: MqttConfig) -> Topics:
        """Topics of the venue service: ``<prefix>/<venue>``."""
        return cls(venue_base(config))

    @property
    def events(self) -> str:
        """Where events go."""
        return f"{self.base}/events"

    @property
    def status(self) -> str:
        """Retained ``online``/``offline``."""
        return f"{self.base}/status"

    def present(self, contact_id: str) -> str:
        """The retained presence of one contact."""
        return f"{self.base}/present/{topic_level(contact_id)}"

    @property
    def calibration(self) -> str:
        """Retained: the scanner's reference beacon figures (``calibration_payload``)."""
        return f"{self.base}/calibration"


def calibration_payload(status: Mapping[str, Any], beacon: str | None) -> dict[str, Any]:
    """What a scanner tells the venue of its references: its own beacon (``uuid/major/minor``,
    which it broadcasts for this purpose, or None), the receive offset its tracker uses, and
    its level of each badge reference it hears (the badge's ``reference_digest``, distance,
    level, state). References named by contact id are left out: no contact id and no badge
    key leaves this way."""
    refs = []
    for entry in status.get("references") or ():
        if "badge" in entry and isinstance(entry.get("level_db"), int | float):
            refs.append({"ref": reference_digest(str(entry["badge"])),
                         "distance_m": entry.get("distance_m"),
                         "level_db": entry["level_db"], "state": entry.get("state")})
    return {"beacon": beacon, "receive_offset_db": status.get("receive_offset_db", 0.0),
            "references": refs}


def venue_base(config: MqttConfig) -> str:
    """``<topic_prefix>/<venue>``."""
    return f"{config.topic_prefix}/{config.venue}"


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One message to publish."""

    topic: str
    payload: bytes
    retain: bool = False


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return codec.encode_bytes(obj)


def public_contact(contact: Any) -> dict[str, Any] | None:
    """Only the public fields of an event's contact object; None if it has no string id."""
    if not isinstance(contact, Mapping) or not isinstance(contact.get("id"), str):
        return None
    return {key: contact[key] for key in CONTACT_FIELDS if key in contact}


def public_event(payload: str | bytes | Mapping[str, Any]) -> dict[str, Any] | None:
    """A SPEC §5 event rebuilt from its known fields only; None if it is not one."""
    data: Any = payload
    if isinstance(payload, str | bytes):
        try:
            data = codec.decode(payload)
        except codec.DecodeError:
            return None
    if not isinstance(data, Mapping) or not isinstance(data.get("type"), str):
        return None
    seq = data.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    contact = public_contact(data.get("contact"))
    if contact is None:
        return None
    event = {key: data[key] for key in EVENT_FIELDS if key in data}
    event["contact"] = contact
    return event


def presence_payload(entry: Mapping[str, Any], *, scanner: str, ts: float) -> dict[str, Any] | None:
    """The retained presence message for a SPEC §6 ``present`` entry (or an arrival event)."""
    contact = public_contact(entry.get("contact"))
    if contact is None:
        return None
    data: dict[str, Any] = {"scanner": scanner, "ts": round(ts, 3), "contact": contact}
    for key in PRESENT_FIELDS[1:]:
        if key in entry:
            data[key] = entry[key]
    return data


def materially_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True when a presence update is worth publishing: zone or room changed, or the
    distance moved by 10 % (at least 0.25 m), or the RSSI by 3 dB."""
    if old.get("zone") != new.get("zone") or old.get("room") != new.get("room"):
        return True
    if old.get("contact") != new.get("contact"):
        return True
    d_old, d_new = old.get("distance_m"), new.get("distance_m")
    if isinstance(d_old, int | float) and isinstance(d_new, int | float):
        if abs(d_new - d_old) >= max(0.25, 0.1 * d_old):
            return True
    elif d_old != d_new:
        return True
    r_old, r_new = old.get("rssi"), new.get("rssi")
    if isinstance(r_old, int | float) and isinstance(r_new, int | float):
        return abs(r_new - r_old) >= 3.0
    return r_old != r_new


def make_client(
    config: MqttConfig,
    *,
    client_id: str,
    will: aiomqtt.Will | None = None,
    clean_session: bool = True,
    max_queued_incoming: int = 0,
) -> aiomqtt.Client:
    """An aiomqtt client for the configured broker (TLS, password or client certificate)."""
    tls = None
    if config.tls:
        tls = aiomqtt.TLSParameters(
            ca_certs=config.ca_file, certfile=config.cert_file, keyfile=config.key_file
        )
    client = aiomqtt.Client(
        config.host,
        config.port,
        username=config.username,
        password=config.password,
        identifier=client_id,
        will=will,
        clean_session=clean_session,
        keepalive=config.keepalive_s,
        timeout=OPERATION_TIMEOUT_S,
        tls_params=tls,
        max_queued_incoming_messages=max_queued_incoming,
        max_inflight_messages=WINDOW_EVENTS,
    )
    # aiomqtt warns about more than 10 calls awaiting acknowledgement; a window has more.
    client.pending_calls_threshold = WINDOW_EVENTS * 8
    return client


def broker_error(exc: BaseException) -> BrokerError:
    """Our error for a library failure (the message never holds credentials)."""
    return BrokerError(f"MQTT broker: {exc}" if str(exc) else f"MQTT broker: {type(exc).__name__}")


def first_failure(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first leaf of a task group's exception group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class PublisherState(StrEnum):
    """Where the publisher's connection is."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"


PresentProvider = Callable[[], Iterable[Mapping[str, Any]]]
ExtraMessages = Callable[[Mapping[str, Any]], Sequence[OutMessage]]


class MqttPublisher:
    """Publishes the event log, the retained present set and the status to an MQTT broker.

    ``present`` returns the live present set as SPEC §6 entries with current estimates; without
    it, retained presence follows the events alone. ``extra`` gives further messages to publish
    after each event, in order (Home Assistant state). ``topics`` defaults to the scanner's.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        scanner: str,
        store: SqliteStore,
        present: PresentProvider | None = None,
        topics: Topics | None = None,
        client_id: str | None = None,
        extra: ExtraMessages | None = None,
        clock: Callable[[], float] = time.time,
        ready: Callable[[], bool] | None = None,
        calibration: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._config = config
        # The scanner's reference figures (``calibration_payload``), published retained.
        self._calibration = calibration
        self._sent_calibration: dict[str, Any] | None = None
        # False while events must wait (a scanner catching up with the venue registry).
        self._ready = ready
        self._scanner = scanner
        self._store = store
        self._present_provider = present
        self._topics = topics or Topics.for_scanner(config, scanner)
        self._client_id = client_id or config.client_id or f"hallway-{config.venue}-{scanner}"
        self._extra = extra
        self._clock = clock
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._state = PublisherState.STOPPED
        self._loaded = False
        self._mark = -1
        self._held: set[str] = set()
        self._sent_present: dict[str, dict[str, Any]] = {}
        self._next_refresh = 0.0
        self._next_calibration = 0.0
        self._newest_seq = 0
        self._failures = FailureStreak(log)
        self._last_error: str | None = None
        self._n: dict[str, int] = dict.fromkeys(
            ("events", "messages", "dropped", "malformed", "connects", "failures",
             "presence_updates", "presence_clears"),
            0,
        )

    # -- control ----------------------------------------------------------------------------

    def notify(self) -> None:
        """New events were logged: look at the log now (never blocks)."""
        self._wake.set()

    @property
    def state(self) -> PublisherState:
        """The connection state."""
        return self._state

    @property
    def topics(self) -> Topics:
        """The topics this publisher writes."""
        return self._topics

    @property
    def published_seq(self) -> int:
        """The highest ``seq`` published and acknowledged (-1 before the first start)."""
        return self._mark

    def stats(self) -> dict[str, int | str | None]:
        """Counters: events and messages published, dropped, malformed, connects, backlog."""
        return {
            "state": self._state.value,
            "published_seq": self._mark,
            "backlog": max(0, self._newest_seq - self._mark) if self._mark >= 0 else 0,
            "present_held": len(self._held),
            "last_error": self._last_error,
            **self._n,
        }

    async def flush(self, timeout_s: float) -> bool:
        """Wait until everything logged so far is published; False if ``timeout_s`` passed."""
        target = await self._store.last_seq()
        self.notify()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._mark < target:
                    self._progress.clear()
                    await self._progress.wait()
        return self._mark >= target

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, publish, reconnect with capped backoff; runs until cancelled."""
        delay = BACKOFF_START_S
        try:
            while True:
                self._state = PublisherState.CONNECTING
                connected = False
                try:
                    await self._load()
                    connected = await self._session()
                except (BrokerError, StoreError) as exc:
                    self._fail(exc)
                if connected:
                    delay = BACKOFF_START_S
                self._state = PublisherState.BACKOFF
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self._config.reconnect_max_s)
        finally:
            self._state = PublisherState.STOPPED

    def _fail(self, exc: BaseException) -> None:
        self._n["failures"] += 1
        self._last_error = str(exc)
        self._failures.failed("mqtt_unavailable", error=str(exc), host=self._config.host,
                              port=self._config.port)

    async def _load(self) -> None:
        if self._loaded:
            return
        mark, held = await self._store.mqtt_progress()
        if mark < 0:
            # First start: publish what happens from now on, not the log's whole history.
            mark = await self._store.last_seq()
            await self._store.save_mqtt_progress(mark)
        self._mark, self._held, self._loaded = mark, held, True
        self._progress.set()

    async def _session(self) -> bool:
        """One connection; returns True if it was established (then it ended in an error)."""
        will = aiomqtt.Will(self._topics.status, OFFLINE, qos=1, retain=True)
        client = make_client(self._config, client_id=self._client_id, will=will)
        established = False
        try:
            async with client:
                established = True
                self._state = PublisherState.CONNECTED
                self._n["connects"] += 1
                if failures := self._failures.ended():
                    log.info("mqtt_connected", host=self._config.host, port=self._config.port,
                             after_attempts=failures)
                else:
                    log.info("mqtt_connected", host=self._config.host, port=self._config.port)
                self._last_error = None
                self._next_refresh = 0.0
                self._next_calibration = 0.0
                self._sent_calibration = None  # a new session says it again
                try:
                    await client.publish(self._topics.status, ONLINE, qos=1, retain=True)
                    async with asyncio.TaskGroup() as group:
                        group.create_task(_watch(client), name="mqtt-watch")
                        group.create_task(self._pump(client), name="mqtt-pump")
                except asyncio.CancelledError:
                    await self._goodbye(client)
                    raise
        except aiomqtt.MqttError as exc:
            raise broker_error(exc) from None
        except BaseExceptionGroup as group:
            failure = first_failure(group)
            if isinstance(failure, aiomqtt.MqttError):
                raise broker_error(failure) from None
            if isinstance(failure, StoreError):
                raise failure from None
            raise
        return established

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """A clean stop: say ``offline`` ourselves (the broker sends the will only on a crash)."""
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                await client.publish(self._topics.status, OFFLINE, qos=1, retain=True,
                                     timeout=GOODBYE_TIMEOUT_S)

    async def _pump(self, client: aiomqtt.Client) -> None:
        while True:
            self._wake.clear()
            if self._ready is not None and not self._ready():
                await asyncio.sleep(POLL_S)
                continue
            caught_up = await self._publish_window(client)
            if not caught_up:
                continue
            now = time.monotonic()
            if self._present_provider is not None and now >= self._next_refresh:
                self._next_refresh = now + self._config.present_interval_s
                await self._refresh_presence(client)
            if self._calibration is not None and now >= self._next_calibration:
                self._next_calibration = now + self._config.present_interval_s
                payload = self._calibration()
                if payload != self._sent_calibration:
                    await self._send(client, [OutMessage(self._topics.calibration,
                                                         dumps(payload), retain=True)])
                    self._sent_calibration = payload
            wait = POLL_S
            if self._present_provider is not None:
                wait = min(wait, max(0.0, self._next_refresh - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _publish_window(self, client: aiomqtt.Client) -> bool:
        """Publish the next window of logged events; True when there was nothing left."""
        store = self._store
        rows = await store.events_after(self._mark, limit=WINDOW_EVENTS)
        if not rows:
            return True
        newest = self._newest_seq = max(await store.last_seq(), rows[-1].seq)
        limit = self._config.backlog_max_events
        if newest - self._mark > limit:
            skip_to = newest - limit
            self._drop(skip_to - self._mark, reason="backlog_full")
            await self._advance(skip_to)
            return False
        if rows[0].seq > self._mark + 1 and self._mark >= 0:
            first = await store.first_retained_seq()
            if first is not None and rows[0].seq == first:
                self._drop(first - self._mark - 1, reason="pruned_before_publishing")
        messages: list[OutMessage] = []
        # Presence bookkeeping is done on copies and kept only once the window is acknowledged.
        held = set(self._held)
        sent = dict(self._sent_present)
        count = 0
        for n, row in enumerate(rows, 1):
            if n % EVENT_SLICE == 0:
                await asyncio.sleep(0)
            event = public_event(row.payload)
            if event is None:
                self._n["malformed"] += 1
                continue
            messages.append(OutMessage(self._topics.events, dumps(event)))
            count += 1
            presence = self._presence_from_event(event, held, sent)
            if presence is not None:
                messages.append(presence)
            if self._extra is not None:
                messages.extend(self._extra(event))
        await self._send(client, messages)
        self._n["events"] += count
        added, removed = held - self._held, self._held - held
        self._held, self._sent_present = held, sent
        await self._advance(rows[-1].seq, added=added, removed=removed)
        return False

    def _drop(self, count: int, *, reason: str) -> None:
        if count <= 0:
            return
        self._n["dropped"] += count
        log.warning("mqtt_events_dropped", count=count, reason=reason)

    def _presence_from_event(
        self, event: Mapping[str, Any], held: set[str], sent: dict[str, dict[str, Any]]
    ) -> OutMessage | None:
        """The retained presence message an event implies; updates ``held`` and ``sent``."""
        cid = str(event["contact"]["id"])
        topic = self._topics.present(cid)
        if event["type"] in ("departed", "revoked"):
            # A tombstone clears the retained presence whether or not it was held (a crash
            # may have left one behind that the store no longer knows about).
            sent.pop(cid, None)
            held.discard(cid)
            self._n["presence_clears"] += 1
            return OutMessage(topic, b"", retain=True)
        if event["type"] not in ("arrived", "zone", "moved"):
            return None
        previous = sent.get(cid)
        ts = event.get("ts")
        ts = float(ts) if isinstance(ts, int | float) else 0.0
        since = ts if event["type"] == "arrived" or previous is None else previous.get("since")
        payload = presence_payload({**event, "since": since}, scanner=self._scanner, ts=ts)
        if payload is None:
            return None
        sent[cid] = payload
        held.add(cid)
        self._n["presence_updates"] += 1
        return OutMessage(topic, dumps(payload), retain=True)

    async def _refresh_presence(self, client: aiomqtt.Client) -> None:
        """Make the retained presence match the live present set (log caught up)."""
        assert self._present_provider is not None
        now = self._clock()
        messages: list[OutMessage] = []
        added: set[str] = set()
        removed: set[str] = set()
        seen: set[str] = set()
        updates: dict[str, dict[str, Any]] = {}
        for n, entry in enumerate(self._present_provider(), 1):
            if n % REFRESH_SLICE == 0:
                # Hundreds present: hand the loop back now and then (about 20 µs each).
                await asyncio.sleep(0)
            payload = presence_payload(entry, scanner=self._scanner, ts=now)
            if payload is None:
                continue
            cid = str(payload["contact"]["id"])
            seen.add(cid)
            last = self._sent_present.get(cid)
            if cid in self._held and last is not None and not materially_changed(last, payload):
                continue
            updates[cid] = payload
            messages.append(OutMessage(self._topics.present(cid), dumps(payload), retain=True))
            if cid not in self._held:
                added.add(cid)
        gone = sorted(self._held - seen)
        for cid in gone:
            messages.append(OutMessage(self._topics.present(cid), b"", retain=True))
            removed.add(cid)
        if not messages:
            return
        await self._send(client, messages)
        self._sent_present.update(updates)
        for cid in gone:
            self._sent_present.pop(cid, None)
        self._n["presence_updates"] += len(updates)
        self._n["presence_clears"] += len(gone)
        self._held = (self._held | added) - removed
        if added or removed:
            await self._store.save_mqtt_progress(self._mark, added=added, removed=removed)

    async def _send(self, client: aiomqtt.Client, messages: Sequence[OutMessage]) -> None:
        """Publish in order and wait for every acknowledgement; raise on the first failure."""
        if not messages:
            return
        qos = self._config.qos
        # The tasks start in creation order, and each hands its message to the client before
        # its first wait, so the broker receives them in this order; they are made a slice at
        # a time, each slice has started before the next is made, and no more than
        # OUTSTANDING wait for their acknowledgement at once.
        tasks: list[asyncio.Task[None]] = []
        try:
            for n, m in enumerate(messages):
                if n >= OUTSTANDING:
                    earlier = tasks[n - OUTSTANDING]
                    await asyncio.wait((earlier,))
                    if (failed := earlier.exception()) is not None:
                        raise failed
                if n and n % PUBLISH_SLICE == 0:
                    await asyncio.sleep(0)
                tasks.append(asyncio.ensure_future(
                    client.publish(m.topic, m.payload, qos=qos, retain=m.retain)))
            results = await asyncio.gather(*tasks, return_exceptions=True)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for result in results:
            if isinstance(result, BaseException):
                raise result
        self._n["messages"] += len(messages)

    async def _advance(
        self, seq: int, *, added: Iterable[str] = (), removed: Iterable[str] = ()
    ) -> None:
        await self._store.save_mqtt_progress(seq, added=added, removed=removed)
        self._mark = seq
        self._progress.set()


class _Subscription(Protocol):
    async def get(self, timeout: float) -> list[bytes] | None: ...  # noqa: ASYNC109 - the hub's API

    def close(self) -> None: ...


async def follow_hub(publisher: MqttPublisher, subscribe: Callable[[], _Subscription]) -> None:
    """Wake ``publisher`` each time the hub has logged events; runs until cancelled.

    ``subscribe`` returns a hub subscription (``Hub.subscribe``); the hub offers events to it
    only once they are in the log, so the publisher finds them there. A lagged subscription is
    replaced (the publisher reads the log, so nothing is lost either way).
    """
    while True:
        subscription = subscribe()
        try:
            while (lines := await subscription.get(5.0)) is not None:
                if lines:
                    publisher.notify()
        finally:
            subscription.close()
        publisher.notify()
        await asyncio.sleep(0.1)


async def _watch(client: aiomqtt.Client) -> None:
    """Return never; raise MqttError as soon as the connection is lost."""
    async for _ in client.messages:
        pass
    raise aiomqtt.MqttError("message stream ended")
