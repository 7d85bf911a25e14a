"""MqttPublisher against a real Mosquitto on 127.0.0.1, configured as docs/venue.md recommends.

The broker runs the docs' own mosquitto.conf and ACL (moved into a temp folder), with hashed
passwords from mosquitto_passwd and a throw-away CA for the TLS listener; it is started and
stopped by PID. Events are written to a real SQLite store the way the hub writes them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from hallway.config import MqttConfig
from hallway.mqtt import (
    OUTSTANDING,
    MqttPublisher,
    PublisherState,
    Topics,
    topic_level,
    unescape_level,
)
from hallway.store import SqliteStore
from tests.mqtt_env import (
    IRK_HEX,
    KEY_HEX,
    PASSWORDS,
    VENUE,
    Collector,
    Log,
    Site,
    collecting,
    publishing,
    retained,
    retained_status,
    running_site,
    scanner_config,
)

pytestmark = pytest.mark.system


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with running_site(tmp_path) as running:
        yield running


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "scanner.db")
    try:
        yield store
    finally:
        await store.close()


def assert_in_order_without_gaps(seqs: list[int], expected: list[int]) -> None:
    """First deliveries in strictly increasing order, covering exactly ``expected``."""
    first: list[int] = []
    seen: set[int] = set()
    for seq in seqs:
        if seq not in seen:
            seen.add(seq)
            first.append(seq)
    assert first == sorted(first), "events arrived out of order"
    assert first == expected


# -- tests -----------------------------------------------------------------------------------


def test_topic_levels_escape_and_round_trip() -> None:
    for text in ("kiosk-a", "Hall 3/North", "a+b#c", "100%", "%2F"):
        level = topic_level(text)
        assert "/" not in level
        assert "+" not in level
        assert "#" not in level
        assert unescape_level(level) == text
    topics = Topics.for_scanner(MqttConfig(venue="expo"), "Hall 3/N")
    assert topics.events == "hallway/expo/scanners/Hall 3%2FN/events"
    assert topics.present("c/1") == "hallway/expo/scanners/Hall 3%2FN/present/c%2F1"


async def test_events_arrive_in_order_with_presence_and_status(
    site: Site, store: SqliteStore
) -> None:
    config = scanner_config(site)
    topics = Topics.for_scanner(config, "kiosk-a")
    log = Log(store)
    await log.write([log.arrived("c-1")])  # history before the first start is not published
    publisher = MqttPublisher(config, scanner="kiosk-a", store=store)
    collector = Collector(site.port, (f"{topics.base}/#",), clean=True)
    async with collecting(collector), publishing(publisher):
        await collector.until(lambda: any(m.payload == b"online" for m in collector.messages), 10)
        expected: list[int] = []
        for round_ in range(30):
            batch = [log.arrived(f"c-{2 + round_ % 4}", 1.0 + round_ % 5)]
            batch += [log.zone(f"c-{2 + round_ % 4}", "far", 6.0), log.departed(
                f"c-{2 + round_ % 4}")] * (round_ % 2)
            expected += await log.write(batch)
            publisher.notify()
        expected += await log.write([log.arrived("c-1", 3.0), log.arrived("c-2", 2.0)])
        publisher.notify()
        assert await publisher.flush(10)
        await collector.until(lambda: len(set(collector.event_seqs())) >= len(expected), 10)
    assert_in_order_without_gaps(collector.event_seqs(), expected)
    assert collector.event_seqs() == expected  # no broker trouble, so no duplicates either
    event = json.loads(collector.on("/events")[-1].payload)
    assert event["contact"] == {"id": "c-2", "name": "Person 2", "org": "Org",
                                "tags": ["speaker"]}
    stats = publisher.stats()
    assert stats["events"] == len(expected)
    assert stats["dropped"] == 0
    assert stats["state"] == PublisherState.STOPPED.value

    # Retained presence is what a late subscriber sees: the present set after the last event.
    held = await retained(site.port, f"{topics.base}/present/+", topics.status)
    present = {json.loads(p)["contact"]["id"]: json.loads(p) for p in held.values() if p}
    # c-3 and c-5 were last seen in odd rounds, which end in a departure.
    assert set(present) == {"c-1", "c-2", "c-4"}
    assert present["c-1"]["distance_m"] == 3.0
    assert present["c-1"]["scanner"] == "kiosk-a"
    assert present["c-1"]["zone"] == "near"
    assert present["c-1"]["via"] == "hallway-v1"
    # A clean stop says offline itself.
    assert await retained_status(site.port, topics.status) == b"offline"


async def test_no_key_or_stranger_data_is_ever_published(site: Site, store: SqliteStore) -> None:
    config = scanner_config(site)
    topics = Topics.for_scanner(config, "kiosk-a")
    log = Log(store)
    publisher = MqttPublisher(config, scanner="kiosk-a", store=store)
    collector = Collector(site.port, ("hallway/#",), clean=True)

    def tamper(payload: dict[str, Any]) -> None:
        # As if a bug upstream had put secrets into a logged event.
        payload["contact"]["keys"] = [{"kind": "irk", "irk": IRK_HEX}]
        payload["contact"]["enrollment_key"] = KEY_HEX
        payload["address"] = "70:81:94:0D:FB:AA"
        payload["strangers"] = ["C4:7C:8D:6A:12:34"]

    async with collecting(collector), publishing(publisher):
        await asyncio.sleep(0.3)
        seqs = await log.write([log.arrived("c-1"), log.departed("c-1")], tamper=tamper)
        publisher.notify()
        await collector.until(lambda: len(collector.event_seqs()) >= len(seqs), 10)
    everything = b"".join(m.topic.encode() + m.payload for m in collector.messages)
    for secret in (KEY_HEX, IRK_HEX, "70:81:94:0D:FB:AA", "C4:7C:8D:6A:12:34", "keys",
                   "enrollment_key"):
        assert secret.encode() not in everything.replace(b"-", b"")
    arrived = json.loads(collector.on("/events")[0].payload)
    assert arrived["contact"] == {"id": "c-1", "name": "Ada Lovelace",
                                  "handles": {"linkedin": "ada"}}
    assert topics.present("c-1") in {m.topic for m in collector.messages}


async def test_last_will_says_offline_when_the_daemon_dies(
    site: Site, store: SqliteStore, tmp_path: Path
) -> None:
    config = scanner_config(site, keepalive_s=5)
    topics = Topics.for_scanner(config, "kiosk-a")
    script = (
        "import asyncio, sys\n"
        "from hallway.config import MqttConfig\n"
        "from hallway.mqtt import MqttPublisher\n"
        "from hallway.store import SqliteStore\n"
        "async def main():\n"
        "    store = await SqliteStore.open(sys.argv[1])\n"
        "    config = MqttConfig.model_validate_json(sys.argv[2])\n"
        "    await MqttPublisher(config, scanner='kiosk-a', store=store).run()\n"
        "asyncio.run(main())\n"
    )
    collector = Collector(site.port, (topics.status,), clean=True)
    async with collecting(collector):
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(tmp_path / "child.db"), config.model_dump_json())
        try:
            await collector.until(lambda: bool(collector.on("/status")), 20)
            assert collector.on("/status")[-1].payload == b"online"
            child.send_signal(signal.SIGKILL)
            await child.wait()
            started = time.monotonic()
            await collector.until(lambda: collector.on("/status")[-1].payload == b"offline", 15)
            assert time.monotonic() - started < 10
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
    # ... and it is retained for late subscribers.
    assert await retained_status(site.port, topics.status) == b"offline"


async def test_presence_follows_the_live_set_and_crash_leftovers_are_cleared(
    site: Site, store: SqliteStore
) -> None:
    config = scanner_config(site)
    topics = Topics.for_scanner(config, "kiosk-a")
    log = Log(store)
    first = MqttPublisher(config, scanner="kiosk-a", store=store)
    async with publishing(first):
        await asyncio.sleep(0.2)
        await log.write([log.arrived("c-1"), log.arrived("c-2"), log.arrived("c-3")])
        assert await first.flush(10)
    # The daemon "crashed": no departures were logged, the broker still holds three entries.
    held = await retained(site.port, f"{topics.base}/present/+", topics.status)
    assert {json.loads(p)["contact"]["id"] for p in held.values() if p} == {"c-1", "c-2", "c-3"}

    live: list[dict[str, Any]] = [{
        "contact": {"id": "c-2", "name": "Person 2"}, "zone": "immediate", "distance_m": 0.6,
        "rssi": -55.0, "since": log.ts, "via": "hallway-v1",
    }]
    second = MqttPublisher(config, scanner="kiosk-a", store=store, present=lambda: live,
                           clock=lambda: 1_800_000_000.0)
    async with publishing(second):
        for _ in range(100):
            held = await retained(site.port, f"{topics.base}/present/+", topics.status)
            if len([p for p in held.values() if p]) == 1:
                break
            await asyncio.sleep(0.1)
        entries = [json.loads(p) for p in held.values() if p]
        assert [e["contact"]["id"] for e in entries] == ["c-2"]
        assert entries[0]["distance_m"] == 0.6
        assert entries[0]["ts"] == 1_800_000_000.0
        # A small change is not worth a message; a large one is.
        before = second.stats()["presence_updates"]
        live[0] = {**live[0], "distance_m": 0.62}
        await asyncio.sleep(0.6)
        assert second.stats()["presence_updates"] == before
        live[0] = {**live[0], "distance_m": 3.5, "zone": "near"}
        for _ in range(50):
            if second.stats()["presence_updates"] > before:
                break
            await asyncio.sleep(0.1)
        held = await retained(site.port, f"{topics.base}/present/+", topics.status)
        assert json.loads(held[topics.present("c-2")])["zone"] == "near"
        live.clear()
        for _ in range(50):
            held = await retained(site.port, f"{topics.base}/present/+", topics.status)
            if not any(held.values()):
                break
            await asyncio.sleep(0.1)
        assert not any(held.values())
    assert (await store.mqtt_progress())[1] == set()


def events_collector(site: Site, config: MqttConfig) -> Collector:
    """A subscriber to scanner kiosk-a's event topic, without a session."""
    return Collector(site.port, (Topics.for_scanner(config, "kiosk-a").events,), clean=True)


async def test_restart_resumes_from_the_durable_cursor(site: Site, store: SqliteStore) -> None:
    config = scanner_config(site)
    log = Log(store)
    collector = events_collector(site, config)
    async with collecting(collector):
        publisher = MqttPublisher(config, scanner="kiosk-a", store=store)
        async with publishing(publisher):
            await asyncio.sleep(0.2)
            early = await log.write([log.arrived(f"c-{i}") for i in range(1, 6)])
            assert await publisher.flush(10)
        late = await log.write([log.departed(f"c-{i}") for i in range(1, 6)])  # while stopped
        again = MqttPublisher(config, scanner="kiosk-a", store=store)
        async with publishing(again):
            assert await again.flush(10)
            await collector.until(lambda: len(collector.event_seqs()) >= 10, 10)
    assert collector.event_seqs() == early + late
    assert again.stats()["events"] == 5


async def test_a_full_window_keeps_few_messages_waiting_for_acknowledgement(
    site: Site, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window of 100 events is about 200 messages; the client reads every acknowledgement
    waiting on its socket in one loop callback, so only OUTSTANDING may wait at once."""
    waiting = peak = 0
    publish = aiomqtt.Client.publish

    async def counted(self: aiomqtt.Client, *args: Any, **kwargs: Any) -> None:
        nonlocal waiting, peak
        waiting += 1
        peak = max(peak, waiting)
        try:
            await publish(self, *args, **kwargs)
        finally:
            waiting -= 1

    monkeypatch.setattr(aiomqtt.Client, "publish", counted)
    config = scanner_config(site)
    log = Log(store)
    collector = events_collector(site, config)
    async with collecting(collector):
        publisher = MqttPublisher(config, scanner="kiosk-a", store=store)
        async with publishing(publisher):
            await asyncio.sleep(0.2)
            written = await log.write([log.arrived(f"c-{1 + i % 5}") for i in range(250)])
            publisher.notify()
            assert await publisher.flush(20)
            await collector.until(lambda: len(collector.event_seqs()) >= 250, 10)
    assert collector.event_seqs() == written  # in order, none lost, none twice
    assert publisher.stats()["messages"] >= 500  # each event with its presence message
    assert 1 < peak <= OUTSTANDING


async def test_backlog_beyond_the_bound_is_dropped_and_counted(
    site: Site, store: SqliteStore
) -> None:
    config = scanner_config(site, backlog_max_events=100)
    topics = Topics.for_scanner(config, "kiosk-a")
    log = Log(store)
    site.broker.stop()
    publisher = MqttPublisher(config, scanner="kiosk-a", store=store)
    collector = Collector(site.port, (topics.events,), clean=True)
    async with publishing(publisher):
        await asyncio.sleep(0.5)
        assert publisher.state in (PublisherState.CONNECTING, PublisherState.BACKOFF)
        seqs: list[int] = []
        for _ in range(5):
            seqs += await log.write([log.arrived("c-1"), log.departed("c-1")] * 25)
        site.broker.start()
        async with collecting(collector):
            assert await publisher.flush(20)
            await collector.until(lambda: len(collector.event_seqs()) >= 100, 10)
    assert collector.event_seqs() == seqs[-100:]
    assert publisher.stats()["dropped"] == 150
    assert publisher.stats()["failures"] >= 1


async def test_tls_with_a_client_certificate(site: Site, store: SqliteStore) -> None:
    cert, key = site.tls.clients["kiosk-c"]
    config = MqttConfig(
        enabled=True, host="127.0.0.1", port=site.tls_port, tls=True, ca_file=str(site.tls.ca),
        cert_file=str(cert), key_file=str(key), venue=VENUE, reconnect_max_s=0.5,
    )
    topics = Topics.for_scanner(config, "kiosk-c")
    log = Log(store, scanner="kiosk-c")
    publisher = MqttPublisher(config, scanner="kiosk-c", store=store)
    collector = Collector(site.port, (f"{topics.base}/#",), clean=True)
    async with collecting(collector), publishing(publisher):
        await collector.until(lambda: bool(collector.on("/status")), 10)
        seqs = await log.write([log.arrived("c-1"), log.zone("c-1", "far", 5.0)])
        publisher.notify()
        await collector.until(lambda: len(collector.event_seqs()) >= 2, 10)
    assert collector.event_seqs() == seqs
    assert publisher.stats()["failures"] == 0


async def test_broker_refuses_whoever_the_docs_do_not_let_in(site: Site) -> None:
    # No credentials on the plain listener.
    with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed"):
        async with aiomqtt.Client("127.0.0.1", site.port, timeout=5):
            pass
    # A wrong password.
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", site.port, username="venue",
                                  password="guess-guess-guess", timeout=5):
            pass
    # TLS without a client certificate.
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            "127.0.0.1", site.tls_port, timeout=3,
            tls_params=aiomqtt.TLSParameters(ca_certs=str(site.tls.ca)),
        ):
            pass
    # And the publisher reports it rather than crashing.
    config = MqttConfig(enabled=True, host="127.0.0.1", port=site.port, venue=VENUE,
                        reconnect_max_s=0.2)
    async with await SqliteStore.open(site.broker.directory / "anon.db") as anon_store:
        publisher = MqttPublisher(config, scanner="kiosk-a", store=anon_store)
        async with publishing(publisher):
            for _ in range(50):
                if publisher.stats()["failures"]:
                    break
                await asyncio.sleep(0.1)
        assert publisher.stats()["connects"] == 0
        assert "authori" in str(publisher.stats()["last_error"]).lower()


async def test_acl_keeps_each_scanner_in_its_own_topics(site: Site) -> None:
    collector = Collector(site.port, ("hallway/#",), clean=True)
    reader = Collector(site.port, ("hallway/+/scanners/#",), user="reader",
                       client_id="test-reader", clean=True)
    async with collecting(collector), collecting(reader):
        async with aiomqtt.Client("127.0.0.1", site.port, username="kiosk-a",
                                  password=PASSWORDS["kiosk-a"], timeout=5) as kiosk:
            await kiosk.publish(f"hallway/{VENUE}/scanners/kiosk-b/events", b"forged", qos=1)
            await kiosk.publish(f"hallway/{VENUE}/events", b"forged", qos=1)
            await kiosk.publish(f"hallway/{VENUE}/scanners/kiosk-a/events", b"mine", qos=1)
        await collector.until(lambda: bool(collector.messages), 5)
        await asyncio.sleep(0.3)
    assert [(m.topic, m.payload) for m in collector.messages] == [
        (f"hallway/{VENUE}/scanners/kiosk-a/events", b"mine")
    ]
    assert reader.messages == []  # readers see the venue's answer, not the scanners' raw data


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_broker_down_for_30_s_loses_no_event(site: Site, store: SqliteStore) -> None:
    config = scanner_config(site, reconnect_max_s=2.0)
    topics = Topics.for_scanner(config, "kiosk-a")
    log = Log(store)
    publisher = MqttPublisher(config, scanner="kiosk-a", store=store)
    collector = Collector(site.port, (topics.events,), client_id="test-venue-persistent")
    written: list[int] = []
    stop_writing = asyncio.Event()

    async def writer() -> None:
        i = 0
        while not stop_writing.is_set():
            i += 1
            cid = f"c-{1 + i % 5}"
            event = log.arrived(cid) if i % 2 else log.departed(cid)
            written.extend(await log.write([event]))
            publisher.notify()
            await asyncio.sleep(0.05)

    await store.save_mqtt_progress(0)  # publish from the first event on, however early
    async with collecting(collector), publishing(publisher):
        writing = asyncio.create_task(writer())
        await collector.until(lambda: len(collector.event_seqs()) >= 20, 10)
        site.broker.stop()
        down_at = time.monotonic()
        await asyncio.sleep(30)
        during = len(written)
        site.broker.start()
        restarted = time.monotonic()
        await asyncio.sleep(1)
        stop_writing.set()
        await writing
        assert await publisher.flush(30)
        await collector.until(lambda: set(collector.event_seqs()) >= set(written), 30)
        caught_up = time.monotonic()
    seqs = collector.event_seqs()
    assert_in_order_without_gaps(seqs, written)
    stats = publisher.stats()
    assert stats["dropped"] == 0
    assert stats["connects"] >= 2
    assert during > 400  # events kept coming while the broker was away
    duplicates = len(seqs) - len(set(seqs))
    print(f"\noutage {restarted - down_at:.1f} s, {len(written)} events, "
          f"caught up {caught_up - restarted:.1f} s after the restart, "
          f"{duplicates} delivered twice, collector connects {collector.connects}")
    assert caught_up - restarted < 20


def test_publisher_config_rejects_unsafe_topics() -> None:
    from hallway.config import ConfigError, parse_config

    for bad in ('venue = "a/b"', 'topic_prefix = "x/#"', 'topic_prefix = "/x"'):
        with pytest.raises(ConfigError):
            parse_config(f"[mqtt]\n{bad}\n")
    with pytest.raises(ConfigError, match="username"):
        parse_config('[mqtt]\npassword = "x"\n')
    with pytest.raises(ConfigError, match="tls"):
        parse_config('[mqtt]\ncert_file = "c.pem"\n')
