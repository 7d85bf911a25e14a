"""The pump's IRK trial lane with a real pipeline: what goes through it, in what order, when
it waits for the loop to be free, and what it sheds."""

from __future__ import annotations

import asyncio

from hallway.config import Config
from hallway.identity.crypto import make_rpa
from hallway.lanes import TrialLane
from hallway.models import Advertisement, Contact, ContactKey, EventType, KeyKind, PresenceEvent
from hallway.pipeline import Pipeline

START = 1_795_251_000.0
IRK = bytes.fromhex("ec0234a357c8ad05341010a60a397d9b")
PHONE = make_rpa(IRK, b"\x45\x67\x89")  # the contact's resolvable address
ADA = Contact(id="c-1", name="Ada", keys=(ContactKey(KeyKind.IRK, IRK.hex()),))
BADGE = Contact(id="c-2", name="Badge", keys=(ContactKey(KeyKind.ADDRESS, "C0:DE:00:00:00:01"),))


def adv(address: str, ts: float, *, kind: str = "random", rssi: int = -60) -> Advertisement:
    return Advertisement(ts=ts, address=address, address_type=kind, rssi=rssi)


def stranger(n: int, ts: float) -> Advertisement:
    return adv(make_rpa(bytes([n]) * 16, bytes([0x40 | n % 64, 1, 2])), ts)


class Rig:
    def __init__(self, *, busy: bool = False, **lane_args: float) -> None:
        self.pipeline = Pipeline(Config())
        self.pipeline.load_contacts([ADA, BADGE], now=START)
        self.busy = busy
        self.published: list[tuple[int, list[PresenceEvent]]] = []  # (fed so far, events)
        self.lane = TrialLane(self.pipeline.feed, lambda: self.pipeline.last_via,
                              self._publish, busy=lambda: self.busy, **lane_args)  # type: ignore[arg-type]

    def _publish(self, events: list[PresenceEvent]) -> None:
        self.published.append((self.lane.fed, events))

    async def settle(self, seconds: float = 0.05) -> None:
        """Let the loop run ``seconds``, then until the lane is empty."""
        await asyncio.sleep(seconds)
        for _ in range(1000):
            if not len(self.lane):
                return
            await asyncio.sleep(0.002)


def test_only_resolvable_addresses_not_known_to_resolve_go_through_the_lane() -> None:
    rig = Rig()
    assert rig.lane.wants(adv(PHONE, START))
    assert rig.lane.wants(stranger(1, START))
    assert not rig.lane.wants(adv("C0:DE:00:00:00:01", START, kind="public"))
    assert not rig.lane.wants(adv("C1:00:00:00:00:01", START))  # static random
    assert not rig.lane.wants(adv("01:00:00:00:00:01", START))  # non-resolvable random


async def test_a_contacts_phone_resolves_in_the_lane_then_goes_straight_through() -> None:
    rig = Rig()
    for n in range(40):
        rig.lane.put(stranger(n, START + n * 0.25))
        rig.lane.put(adv(PHONE, START + n * 0.25 + 0.1))
    await rig.settle()
    assert rig.lane.fed == 80
    arrived = [e for _fed, events in rig.published for e in events
               if e.type is EventType.ARRIVED]
    assert [e.contact_id for e in arrived] == ["c-1"]
    assert arrived[0].via is KeyKind.IRK
    # Known now: its next advertisements need no lane; a stranger's still do.
    assert not rig.lane.wants(adv(PHONE, START + 20))
    assert rig.lane.wants(stranger(99, START + 20))
    rig.lane.forget_hints()  # contacts changed
    assert rig.lane.wants(adv(PHONE, START + 20))


async def test_events_are_published_as_soon_as_they_are_caused() -> None:
    rig = Rig()
    for n in range(40):
        rig.lane.put(adv(PHONE, START + n * 0.25))
    for n in range(200):
        rig.lane.put(stranger(n, START + 10 + n * 0.001))
    await rig.settle()
    assert rig.lane.fed == 240
    ((fed_then, events),) = rig.published
    assert [e.type for e in events] == [EventType.ARRIVED]
    assert fed_then < 40  # published before the strangers behind it were fed
    assert rig.lane.stats()["slices"] >= 2


async def test_the_lane_waits_while_the_loop_has_other_work_but_never_for_long() -> None:
    rig = Rig(busy=True, max_wait_s=0.2)
    rig.lane.put(stranger(1, START))
    await asyncio.sleep(0.05)
    assert rig.lane.fed == 0  # the hand-off or the hub has work: it waits
    rig.busy = False
    await rig.settle(0.0)
    assert rig.lane.fed == 1
    assert rig.lane.stats()["forced"] == 0
    rig.busy = True
    rig.lane.put(stranger(2, START + 1))
    await asyncio.sleep(0.4)
    assert rig.lane.fed == 2  # fed anyway once it waited max_wait_s
    assert rig.lane.stats()["forced"] == 1


async def test_a_full_lane_sheds_its_oldest_and_counts_them() -> None:
    rig = Rig(busy=True, max_wait_s=10.0, max_items=3)
    for n in range(5):
        rig.lane.put(stranger(n, START + n))
    assert len(rig.lane) == 3
    assert rig.lane.stats()["shed"] == 2
    rig.lane.close()
    assert len(rig.lane) == 0
    await asyncio.sleep(0.01)
    assert rig.lane.fed == 0  # closed: nothing more is fed
