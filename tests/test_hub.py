"""The event hub against a real SQLite file: seq, durable-before-delivered, present set,
retention, resume rules, bounded fan-out and revocation."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hallway.hub import Hub, Subscription
from hallway.models import Contact, DepartReason, EventType, KeyKind, PresenceEvent
from hallway.store import SqliteStore

CONTACTS = {
    "c-1": Contact(id="c-1", name="Ada Lovelace", org="Analytical Engines", tags=("speaker",)),
    "c-2": Contact(id="c-2", name="Grace Hopper", tags=("staff",)),
    "c-3": Contact(id="c-3", name="Alan Turing"),
}


def arrived(contact: str, ts: float, zone: str = "near", distance: float = 2.0) -> PresenceEvent:
    return PresenceEvent(EventType.ARRIVED, ts, contact, zone=zone, distance_m=distance,
                         rssi=-66.0, via=KeyKind.HALLWAY_V1)


def zone(contact: str, ts: float, new: str, old: str, distance: float) -> PresenceEvent:
    return PresenceEvent(EventType.ZONE, ts, contact, zone=new, previous_zone=old,
                         distance_m=distance, rssi=-60.0, via=KeyKind.HALLWAY_V1)


def departed(contact: str, ts: float, reason: DepartReason = DepartReason.TIMEOUT) -> PresenceEvent:
    return PresenceEvent(EventType.DEPARTED, ts, contact, zone="far", distance_m=9.0,
                         rssi=-80.0, via=KeyKind.HALLWAY_V1, dwell_s=30.0, reason=reason)


async def take(sub: Subscription, count: int, wait_s: float = 2.0) -> list[dict[str, Any]]:
    """Read exactly ``count`` events from a subscription (fails on timeout)."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(wait_s):
        while len(out) < count:
            lines = await sub.get(wait_s)
            assert lines is not None, "subscription ended early"
            out.extend(json.loads(line) for line in lines)
    return out


async def replay_all(hub: Hub, sub: Subscription) -> list[dict[str, Any]]:
    assert sub.since_seq is not None
    cursor, out = sub.since_seq, []
    while cursor < sub.seq:
        page = await hub.replay(sub, after=cursor)
        assert page is not None, "replay found a gap"
        cursor, lines = page
        out.extend(json.loads(line) for line in lines)
    sub.replay_done()
    return out


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    db = await SqliteStore.open(tmp_path / "hub.db")
    yield db
    await db.close()


def make_hub(store: SqliteStore, contacts: dict[str, Contact] | None = None, **kw: Any) -> Hub:
    table = CONTACTS if contacts is None else contacts
    options: dict[str, Any] = {"retention_s": 3600.0, "retention_count": 10_000}
    options.update(kw)
    return Hub(store, scanner="kiosk-a", contact_lookup=table.get, **options)


@pytest.fixture
async def hub(store: SqliteStore) -> AsyncIterator[Hub]:
    h = make_hub(store)
    await h.start()
    yield h
    await h.close()


async def test_seq_increases_and_events_are_logged_before_delivery(
    hub: Hub, store: SqliteStore
) -> None:
    sub = hub.subscribe()
    assert sub.seq == 0
    hub.publish([arrived("c-1", 100.0), arrived("c-2", 101.0)])
    hub.publish([zone("c-1", 102.0, "immediate", "near", 0.7)])
    got = await take(sub, 3)
    assert [e["seq"] for e in got] == [1, 2, 3]
    # Anything a subscriber saw is already in the log.
    logged = await store.events_after(0)
    assert [e.seq for e in logged] == [1, 2, 3]
    assert json.loads(logged[2].payload) == got[2]
    assert got[0]["contact"] == {"id": "c-1", "name": "Ada Lovelace",
                                 "org": "Analytical Engines", "tags": ["speaker"]}
    assert got[2]["type"] == "zone"
    assert got[2]["previous_zone"] == "near"
    assert got[0]["scanner"] == "kiosk-a"
    assert hub.last_seq == 3
    assert await store.last_seq() == 3


async def test_seq_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "restart.db"
    for round_ in range(3):
        db = await SqliteStore.open(path)
        hub = make_hub(db)
        await hub.start()
        sub = hub.subscribe()
        hub.publish([arrived("c-1", 10.0 * round_), departed("c-1", 10.0 * round_ + 5)])
        got = await take(sub, 2)
        assert [e["seq"] for e in got] == [2 * round_ + 1, 2 * round_ + 2]
        await hub.close()
        await hub.close()  # idempotent
        await db.close()


async def test_close_flushes_pending_events(store: SqliteStore) -> None:
    hub = make_hub(store, batch_window_s=0.5)
    await hub.start()
    hub.publish([arrived("c-1", 1.0), arrived("c-2", 2.0)])
    await hub.close()
    assert [e.seq for e in await store.events_after(0)] == [1, 2]
    with pytest.raises(RuntimeError):
        hub.publish([departed("c-1", 3.0)])


async def test_present_set_follows_events(hub: Hub) -> None:
    sub = hub.subscribe()
    hub.publish([arrived("c-1", 100.0), arrived("c-2", 101.0, zone="far", distance=8.0)])
    hub.publish([zone("c-1", 105.0, "immediate", "near", 0.5), departed("c-2", 110.0)])
    await take(sub, 4)
    present = hub.present()
    assert len(present) == 1
    entry = present[0]
    assert entry["contact"]["id"] == "c-1"
    assert entry["zone"] == "immediate"
    assert entry["distance_m"] == 0.5
    assert entry["since"] == 100.0
    assert entry["via"] == "hallway-v1"
    # A new subscriber's snapshot is the state after its seq.
    late = hub.subscribe()
    assert late.seq == 4
    assert late.present == present


async def test_filters_on_contacts_and_tags(hub: Hub) -> None:
    by_id = hub.subscribe(contacts=["c-2"])
    by_tag = hub.subscribe(tags=["speaker"])
    both = hub.subscribe(contacts=["c-2"], tags=["speaker"])
    nothing = hub.subscribe(contacts=[])
    everyone = hub.subscribe()
    hub.publish([arrived("c-1", 1.0), arrived("c-2", 2.0), arrived("c-3", 3.0)])
    assert [e["contact"]["id"] for e in await take(everyone, 3)] == ["c-1", "c-2", "c-3"]
    assert [e["contact"]["id"] for e in await take(by_id, 1)] == ["c-2"]
    assert [e["contact"]["id"] for e in await take(by_tag, 1)] == ["c-1"]
    assert both.backlog == 0
    assert nothing.backlog == 0
    assert [p["contact"]["id"] for p in hub.subscribe(tags=["staff"]).present] == ["c-2"]


async def test_bounded_queue_marks_lagged_without_touching_others(hub: Hub) -> None:
    calls: list[str] = []
    slow = hub.subscribe(queue_size=8, on_lagged=lambda: calls.append("lagged"))
    fast = hub.subscribe(queue_size=1000)
    received: list[dict[str, Any]] = []
    for i in range(5):
        hub.publish([arrived(f"x-{j}", float(i * 10 + j)) for j in range(10)])
        received.extend(await take(fast, 10))
    assert [e["seq"] for e in received] == list(range(1, 51))
    assert slow.lagged
    assert calls == ["lagged"]
    assert await slow.get(0.1) is None
    assert hub.stats()["lagged"] == 1
    assert hub.stats()["subscribers"] == 1


async def test_resume_replays_exactly_the_missed_events(hub: Hub) -> None:
    first = hub.subscribe()
    hub.publish([arrived("c-1", 1.0), arrived("c-2", 2.0), arrived("c-3", 3.0)])
    seen = await take(first, 3)
    first.close()
    hub.publish([departed("c-1", 4.0), departed("c-2", 5.0)])
    watcher = hub.subscribe()
    hub.publish([departed("c-3", 6.0)])
    await take(watcher, 1)  # everything up to seq 6 is delivered
    resumed = hub.subscribe(since_seq=seen[-1]["seq"])
    assert resumed.needs_replay
    assert not resumed.resync
    assert resumed.seq == 6
    replayed = await replay_all(hub, resumed)
    assert [e["seq"] for e in replayed] == [4, 5, 6]
    # Replay honours filters.
    filtered = hub.subscribe(since_seq=0, tags=["staff"])
    assert [e["seq"] for e in await replay_all(hub, filtered)] == [2, 5]
    # Nothing missed: no replay, no resync. From the future: resync.
    assert not hub.subscribe(since_seq=6).needs_replay
    assert hub.subscribe(since_seq=99).resync


async def test_retention_by_count_moves_the_horizon(store: SqliteStore) -> None:
    hub = make_hub(store, retention_count=100)
    await hub.start()
    sub = hub.subscribe(queue_size=10_000)
    for i in range(30):
        hub.publish([arrived(f"x-{i}-{j}", float(i * 10 + j)) for j in range(10)])
    await take(sub, 300)
    await hub.close()
    first = await store.first_retained_seq()
    assert first is not None
    assert 201 <= first <= 250
    hub2 = make_hub(store, retention_count=100)
    await hub2.start()
    assert hub2.subscribe(since_seq=first - 1).needs_replay
    assert hub2.subscribe(since_seq=first - 2).resync
    assert hub2.stats()["horizon_seq"] == first - 1
    await hub2.close()


async def test_retention_by_age_uses_event_time(store: SqliteStore) -> None:
    hub = make_hub(store, retention_s=100.0, prune_interval_s=0.0)
    await hub.start()
    sub = hub.subscribe()
    hub.publish([arrived("c-1", 1000.0), departed("c-1", 1010.0)])
    await take(sub, 2)
    hub.publish([arrived("c-2", 1200.0)])
    await take(sub, 1)
    hub.publish([departed("c-2", 1201.0)])  # the flush after this one prunes seq 1-2
    await take(sub, 1)
    await hub.close()
    assert [e.seq for e in await store.events_after(0)] == [3, 4]


async def test_forget_contact_strips_queued_details(hub: Hub) -> None:
    sub = hub.subscribe()
    other = hub.subscribe()
    hub.publish([arrived("c-1", 1.0), arrived("c-2", 2.0)])
    await take(other, 2)  # delivered: now queued, unread, in `sub`
    await hub.forget_contact("c-1")
    assert [p["contact"]["id"] for p in hub.present()] == ["c-2"]
    got = await take(sub, 2)
    assert got[0]["contact"] == {"id": "c-1"}
    assert got[0]["seq"] == 1
    assert got[1]["contact"]["name"] == "Grace Hopper"


async def test_forget_contact_during_the_log_write_strips_the_sent_line(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event already serialised for the log when its contact is revoked is still sent with
    the id only (its serialised text is not reused)."""
    gate = asyncio.Event()
    writing = asyncio.Event()
    real_append = store.append_events

    async def held_append(rows: Any) -> None:
        writing.set()
        await gate.wait()  # the write is in flight while the contact is revoked
        await real_append(rows)

    monkeypatch.setattr(store, "append_events", held_append)
    hub = make_hub(store)
    await hub.start()
    sub = hub.subscribe()
    hub.publish([arrived("c-1", 1.0), arrived("c-2", 2.0)])
    await asyncio.wait_for(writing.wait(), 2.0)
    await hub.forget_contact("c-1")
    gate.set()
    got = await take(sub, 2)
    assert got[0]["contact"] == {"id": "c-1"}
    assert got[1]["contact"]["name"] == "Grace Hopper"
    await hub.close()


async def test_revoked_departure_reaches_tag_filtered_subscriber(store: SqliteStore) -> None:
    contacts = dict(CONTACTS)
    hub = make_hub(store, contacts)
    await hub.start()
    speakers = hub.subscribe(tags=["speaker"])
    hub.publish([arrived("c-1", 1.0)])
    await take(speakers, 1)
    del contacts["c-1"]  # revoked: lookups now return None
    hub.publish([departed("c-1", 2.0, DepartReason.REVOKED)])
    got = await take(speakers, 1)
    assert got[0]["contact"] == {"id": "c-1"}
    assert got[0]["reason"] == "revoked"
    await hub.close()


async def test_close_finishes_subscriptions_after_draining(hub: Hub) -> None:
    sub = hub.subscribe()
    hub.publish([arrived("c-1", 1.0)])
    await hub.close()
    lines = await sub.get(0.1)
    assert lines is not None
    assert len(lines) == 1
    assert await sub.get(0.1) is None


async def test_replay_notices_pruning_done_behind_its_back(hub: Hub, store: SqliteStore) -> None:
    sub = hub.subscribe()
    hub.publish([arrived(f"x-{i}", float(i)) for i in range(10)])
    await take(sub, 10)
    await store.prune_events(before_ts=-1.0, keep_count=3)  # not through the hub
    stale = hub.subscribe(since_seq=2)
    assert stale.needs_replay  # the hub cannot know yet ...
    assert await hub.replay(stale, after=2) is None  # ... but the replay finds out
    assert hub.subscribe(since_seq=2).resync
    assert hub.subscribe(since_seq=7).needs_replay


async def test_attached_sink_takes_lines_directly_and_queues_when_it_refuses(hub: Hub) -> None:
    written: list[bytes] = []
    accepting = [True]

    def sink(data: bytes) -> bool:
        if not accepting[0]:
            return False
        written.append(data)
        return True

    filtered: list[bytes] = []
    sub = hub.subscribe(queue_size=4)
    sub.attach(sink)
    speakers = hub.subscribe(tags=["speaker"])
    speakers.attach(lambda data: filtered.append(data) is None)
    plain = hub.subscribe()
    hub.publish([arrived("c-1", 1.0), arrived("c-2", 2.0)])
    got = await take(plain, 2)
    # One batch of events goes to the sink in one piece, the lines in order.
    assert b"".join(written) == b"".join(
        (json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n").encode() for e in got)
    assert [json.loads(line)["contact"]["id"] for line in filtered] == ["c-1"]
    assert sub.backlog == 0
    # A sink that cannot take more now: the lines wait in the bounded queue, in order, and
    # later ones queue behind them even once the sink would accept again.
    accepting[0] = False
    hub.publish([arrived("c-3", 3.0)])
    await take(plain, 1)
    accepting[0] = True
    hub.publish([departed("c-3", 4.0)])
    await take(plain, 1)
    assert sub.backlog == 2
    assert [json.loads(line)["seq"] for line in await sub.get(0.1) or []] == [3, 4]
    # A refusing sink still ends in lagged once the queue is full.
    accepting[0] = False
    hub.publish([arrived(f"x-{i}", 10.0 + i) for i in range(5)])
    await take(plain, 5)
    assert sub.lagged
    assert await sub.get(0.1) is None


async def test_fanout_lateness_counts_events_delivered_long_after_their_time(hub: Hub) -> None:
    sub = hub.subscribe()
    assert hub.delivered_all
    now = time.time()
    # on time (stamped ahead: the log write itself takes a few ms), 70 ms and 500 ms late
    hub.publish([arrived("c-1", now + 5), arrived("c-2", now - 0.07), departed("c-1", now - 0.5)])
    assert not hub.delivered_all  # published, not yet logged and offered
    await take(sub, 3)
    assert hub.delivered_all
    late = hub.fanout_lateness()
    assert (late["over_10ms"], late["over_50ms"], late["over_100ms"]) == (2, 2, 1)
    assert late["max_ms"] >= 500
