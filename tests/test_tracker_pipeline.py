"""The pipeline (resolver -> tracker) as the daemon and replay use it: contacts in and out,
consent expiry, identifier rotation, counters."""

from __future__ import annotations

from hallway.config import Config
from hallway.identity.crypto import derive_rpik, interval_number, rpi_for_interval
from hallway.models import Advertisement, Contact, ContactKey, DepartReason, EventType, KeyKind
from hallway.pipeline import Pipeline

KEY = bytes.fromhex("75c734c6dd1a782de7a965da5eb93125")
START = 1_795_251_590.0  # ten seconds before an interval boundary
BEACON_UUID = "426c7565-4368-6172-6d42-6561636f6e73"
BEACON = bytes.fromhex("0215426c7565436861726d426561636f6e730efe1355c5")


def phone(ts: float, *, rssi: int = -65) -> Advertisement:
    """The hallway-v1 app's frame at ``ts``: RPI and random address of that interval."""
    interval = interval_number(ts)
    rpi = rpi_for_interval(derive_rpik(KEY), interval)
    address = f"0{interval % 4}:11:22:33:44:55"
    return Advertisement(ts=ts, address=address, address_type="random", rssi=rssi,
                         manufacturer_data={0xFFFF: b"HW\x01" + rpi + bytes([0xC5])})


def badge(ts: float, *, rssi: int = -65) -> Advertisement:
    return Advertisement(ts=ts, address="C1:00:00:00:00:01", address_type="random", rssi=rssi,
                         manufacturer_data={76: BEACON})


ADA = Contact(id="c-1", name="Ada", keys=(ContactKey(KeyKind.HALLWAY_V1, KEY.hex()),))
GRACE = Contact(id="c-2", name="Grace",
                keys=(ContactKey(KeyKind.IBEACON, f"{BEACON_UUID}/3838/4949"),))


def run(pipeline: Pipeline, advs: list[Advertisement], *, start: float) -> list:  # type: ignore[type-arg]
    events = []
    next_tick = start + 1
    for adv in advs:
        while next_tick <= adv.ts:
            events += pipeline.tick(next_tick)
            next_tick += 1
        events += pipeline.feed(adv)
    return events


def test_a_phone_stays_present_across_its_identifier_rotation() -> None:
    pipeline = Pipeline(Config())
    assert pipeline.load_contacts([ADA], now=START) == []
    advs = [phone(START + n * 0.25) for n in range(240)]  # 60 s, across the 600 s boundary
    assert advs[0].address != advs[-1].address
    events = run(pipeline, advs, start=START)
    assert [e.type for e in events] == [EventType.ARRIVED]
    assert events[0].via is KeyKind.HALLWAY_V1
    assert pipeline.tracker.interval_s("c-1") == 0.25
    stats = pipeline.stats()
    assert stats["advertisements"] == 240
    assert stats["matched"] == 240
    assert stats["present"] == 1
    assert stats["contacts"] == 1


def test_a_contact_dropped_from_the_list_departs_as_revoked() -> None:
    pipeline = Pipeline(Config())
    pipeline.load_contacts([ADA, GRACE], now=START)
    events = run(pipeline, [badge(START + n * 0.5) for n in range(20)], start=START)
    assert [e.type for e in events] == [EventType.ARRIVED]
    departed, tombstone = pipeline.load_contacts([ADA], now=START + 11)
    assert departed.contact_id == "c-2"
    assert departed.reason is DepartReason.REVOKED
    assert (tombstone.type, tombstone.contact_id) == (EventType.REVOKED, "c-2")
    assert pipeline.contact("c-2") is None
    assert pipeline.feed(badge(START + 12)) == []  # no longer resolved
    assert pipeline.present() == []


def test_a_revoked_or_expired_contact_in_the_list_departs_too() -> None:
    pipeline = Pipeline(Config())
    expiring = Contact(id="c-2", name="Grace", keys=GRACE.keys, expires_at=START + 30)
    pipeline.load_contacts([expiring], now=START)
    events = run(pipeline, [badge(START + n * 0.5) for n in range(40)], start=START)
    assert [e.type for e in events] == [EventType.ARRIVED]
    events = pipeline.tick(START + 30)
    assert [(e.type, e.reason) for e in events] == [
        (EventType.DEPARTED, DepartReason.REVOKED), (EventType.REVOKED, None)]
    assert pipeline.contact("c-2") is None
    pipeline.load_contacts([GRACE], now=START + 40)
    run(pipeline, [badge(START + 40 + n * 0.5) for n in range(20)], start=START + 40)
    revoked = Contact(id="c-2", name="Grace", keys=GRACE.keys, revoked_at=START + 50)
    departed, tombstone = pipeline.load_contacts([revoked], now=START + 51)
    assert departed.reason is DepartReason.REVOKED
    assert tombstone.type is EventType.REVOKED
    assert pipeline.take_forgotten() == ["c-2", "c-2"]


def test_one_contact_at_a_time_add_change_revoke_and_absent_tombstones() -> None:
    pipeline = Pipeline(Config())
    pipeline.load_contacts([ADA], now=START)
    assert pipeline.feed(badge(START)) == []  # Grace's badge: not loaded yet
    assert pipeline.upsert_contact(GRACE, now=START + 1) == []
    events = run(pipeline, [badge(START + 1 + n * 0.5) for n in range(20)], start=START + 1)
    assert [e.type for e in events] == [EventType.ARRIVED]
    # Changed keys: the old badge stops resolving at once (no reload of anyone else).
    moved = Contact(id="c-2", name="Grace", keys=ADA.keys[:0])
    assert pipeline.upsert_contact(moved, now=START + 12) == []
    matched = pipeline.stats()["matched"]
    pipeline.feed(badge(START + 12.5))
    assert pipeline.stats()["matched"] == matched
    assert pipeline.stats()["contacts"] == 2
    departed, tombstone = pipeline.remove_contact("c-2", now=START + 13)
    assert (departed.type, departed.reason) == (EventType.DEPARTED, DepartReason.REVOKED)
    assert (tombstone.type, tombstone.contact_id) == (EventType.REVOKED, "c-2")
    # Someone absent: only the tombstone; someone never loaded: only when asked to.
    [absent] = pipeline.remove_contact("c-1", now=START + 14)
    assert absent.type is EventType.REVOKED
    assert pipeline.remove_contact("c-9", now=START + 15) == []
    [owed] = pipeline.remove_contact("c-9", now=START + 15, tombstone=True)
    assert owed.type is EventType.REVOKED
    assert pipeline.take_forgotten() == ["c-2", "c-1", "c-9"]
    assert pipeline.stats()["contacts"] == 0


def test_unknown_rssi_is_not_a_reading_and_shutdown_departs_everyone() -> None:
    pipeline = Pipeline(Config())
    pipeline.load_contacts([GRACE], now=START)
    assert run(pipeline, [badge(START + n, rssi=-127) for n in range(10)], start=START) == []
    assert pipeline.stats()["no_rssi"] == 10
    run(pipeline, [badge(START + 10 + n * 0.5) for n in range(20)], start=START + 10)
    [departed] = pipeline.shutdown(START + 25)
    assert departed.reason is DepartReason.SHUTDOWN
