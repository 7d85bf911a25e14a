"""The pure parts of check-in (SPEC §3.1): the write's format, the guard, and check-ins as
sightings in the pipeline and tracker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hallway.checkin.guard import FLOOD_STRIKES, LINGER_S, CentralGuard, Verdict
from hallway.config import Config
from hallway.identity.crypto import derive_rpik, rpi_for_interval
from hallway.models import (
    CHECKIN,
    Advertisement,
    Contact,
    ContactKey,
    EventType,
    KeyKind,
    PresenceEvent,
)
from hallway.parsing.checkin import (
    FRAME_LENGTH,
    CheckinFrame,
    Refusal,
    encode_checkin,
    parse_checkin,
)
from hallway.pipeline import Pipeline

KEY = bytes.fromhex("75c734c6dd1a782de7a965da5eb93125")
TS0 = 1585785600.0  # the SPEC §3 test vector's first interval, i = 2642976
RPI0 = bytes.fromhex("8be6cd371c5c891604bfbe49df845096")
WORKED = bytes.fromhex("4857028be6cd371c5c891604bfbe49df845096bfc4")


def test_worked_example_of_the_docs() -> None:
    assert rpi_for_interval(derive_rpik(KEY), 2642976) == RPI0
    data = encode_checkin(RPI0, heard_rssi=-65, tx_power=-60)
    assert data == WORKED
    assert len(data) == FRAME_LENGTH == 21
    assert parse_checkin(data) == CheckinFrame(RPI0, -65, -60)


def test_unknown_fields_and_refusals() -> None:
    unknown = encode_checkin(RPI0, heard_rssi=None, tx_power=None)
    assert unknown[-2:] == b"\x7f\x7f"
    assert parse_checkin(unknown) == CheckinFrame(RPI0, None, None)
    assert parse_checkin(WORKED[:-1]) is Refusal.LENGTH
    assert parse_checkin(WORKED + b"\x00") is Refusal.LENGTH
    assert parse_checkin(b"") is Refusal.LENGTH
    assert parse_checkin(b"XW" + WORKED[2:]) is Refusal.MAGIC
    assert parse_checkin(b"HW\x01" + WORKED[3:]) is Refusal.VERSION
    with pytest.raises(ValueError, match="16 bytes"):
        encode_checkin(RPI0[:15], heard_rssi=-60, tx_power=None)
    with pytest.raises(ValueError, match="heard_rssi"):
        encode_checkin(RPI0, heard_rssi=127, tx_power=None)


@given(st.binary(max_size=64))
def test_parse_never_raises(data: bytes) -> None:
    result = parse_checkin(data)
    assert isinstance(result, CheckinFrame | Refusal)
    if isinstance(result, CheckinFrame):
        assert len(data) == 21
        assert data[:3] == b"HW\x02"


def test_guard_caps_rate_centrals_and_time() -> None:
    guard = CentralGuard(max_centrals=2, writes_per_s=1.0, idle_s=10.0)
    admit = Verdict.ADMIT, None
    assert guard.admit("a", 0.0) == admit
    assert guard.admit("a", 0.0) == admit  # burst of 2
    assert guard.admit("a", 0.0) == (Verdict.RATE_LIMITED, None)
    assert guard.admit("a", 1.0) == admit  # one token a second
    assert guard.admit("b", 1.0) == admit
    assert guard.admit("c", 1.0) == (Verdict.TOO_MANY, None)  # nobody is done: no room
    assert len(guard) == 2
    assert guard.admit("b", 1.0) == admit  # its burst's second token
    for _ in range(FLOOD_STRIKES - 1):
        assert guard.admit("b", 1.0) == (Verdict.RATE_LIMITED, None)
    assert not guard.flooding("b")
    guard.admit("b", 1.0)
    assert guard.flooding("b")
    guard.checked_in("a", 1.0)
    assert guard.idle(1.0 + LINGER_S - 0.01) == []
    assert guard.idle(1.0 + LINGER_S) == ["a"]
    assert guard.idle(10.9) == []
    assert guard.idle(11.0) == ["b"]  # never checked in: gone idle_s after its first write
    assert len(guard) == 0


def test_guard_gives_a_done_centrals_slot_to_a_newcomer() -> None:
    guard = CentralGuard(max_centrals=2, writes_per_s=1.0, idle_s=10.0)
    guard.admit("a", 0.0)
    guard.admit("b", 0.1)
    guard.checked_in("b", 0.2)
    guard.checked_in("a", 0.3)
    assert guard.admit("c", 0.4) == (Verdict.ADMIT, "b")  # the one done longest goes
    assert guard.admit("d", 0.5) == (Verdict.ADMIT, "a")
    assert guard.admit("e", 0.6) == (Verdict.TOO_MANY, None)
    assert len(guard) == 2


def test_guard_remembers_a_budget_across_reconnects() -> None:
    guard = CentralGuard(max_centrals=4, writes_per_s=1.0, idle_s=10.0)
    for _ in range(2):
        assert guard.admit("x", 0.0)[0] is Verdict.ADMIT
    guard.forget("x", now=0.1)  # disconnected; it connects again at once
    assert guard.admit("x", 0.2)[0] is Verdict.RATE_LIMITED
    guard.forget("x", now=0.3)
    assert guard.admit("x", 1.3)[0] is Verdict.ADMIT  # a second later: one token more
    guard.forget("x", now=1.4)
    assert guard.admit("x", 12.0)[0] is Verdict.ADMIT  # long gone: a fresh budget
    assert guard.admit("x", 12.0)[0] is Verdict.ADMIT


def _pipeline(hold_s: float = 65.0) -> Pipeline:
    config = Config.model_validate({"checkin": {"hold_s": hold_s}})
    pipeline = Pipeline(config)
    pipeline.load_contacts(
        [Contact(id="c-ada", name="Ada", keys=(ContactKey(KeyKind.HALLWAY_V1, KEY.hex()),))],
        now=TS0)
    return pipeline


def _checkin(pipeline: Pipeline, ts: float, heard: int) -> list[PresenceEvent]:
    rpi = rpi_for_interval(derive_rpik(KEY), int(ts // 600))
    result = pipeline.checkin(CheckinFrame(rpi, heard, -60), ts=ts, scanner="hci0",
                              power_dbm=-59)
    assert not isinstance(result, Refusal)
    return result


def test_checkin_only_phone_stays_between_checkins_and_departs_when_overdue() -> None:
    pipeline = _pipeline()
    events = _checkin(pipeline, TS0 + 1, -65)  # about 2 m against -59 at 1 m
    assert [e.type for e in events] == [EventType.ARRIVED]
    arrived = events[0]
    assert arrived.carrier == CHECKIN
    assert arrived.via is KeyKind.HALLWAY_V1
    assert 1.5 < arrived.distance_m < 2.5
    # Check-ins every 30 s for ten minutes: ticked every second, it never departs.
    ts = TS0 + 1
    for _ in range(20):
        for second in range(1, 31):
            assert pipeline.tick(ts + second) == []
        ts += 30
        assert _checkin(pipeline, ts, -65) == []
    # Then nothing: held until twice its gap plus 5 s (65 s), departs (timeout) then.
    departed = []
    for second in range(1, 70):
        departed += pipeline.tick(ts + second)
    assert [(e.type, e.ts - ts, e.reason.value, e.carrier) for e in departed] == [
        (EventType.DEPARTED, 65.0, "timeout", CHECKIN)]
    assert pipeline.stats()["checkins"] == 21


def test_checkin_resolves_by_table_and_refuses_unknown() -> None:
    pipeline = _pipeline()
    stranger = CheckinFrame(bytes(16), -60, None)
    assert pipeline.checkin(stranger, ts=TS0, scanner="hci0", power_dbm=-59) is \
        Refusal.UNKNOWN_RPI
    aes_before = pipeline.stats()["aes_ops"]
    for n in range(1000):
        frame = CheckinFrame(n.to_bytes(16, "big"), -60, None)
        assert pipeline.checkin(frame, ts=TS0, scanner="hci0", power_dbm=-59) is \
            Refusal.UNKNOWN_RPI
    assert pipeline.stats()["aes_ops"] == aes_before  # no key tried per bad write
    # An RPI of an interval outside the window (i-2 .. i+1) is not accepted either.
    old = rpi_for_interval(derive_rpik(KEY), 2642976 - 3)
    assert pipeline.checkin(CheckinFrame(old, -60, None), ts=TS0, scanner="hci0",
                            power_dbm=-59) is Refusal.UNKNOWN_RPI
    # Without heard_rssi: accepted and counted, no sighting.
    assert pipeline.checkin(CheckinFrame(RPI0, None, None), ts=TS0 + 5, scanner="hci0",
                            power_dbm=-59) == []
    assert pipeline.stats()["no_rssi"] == 1


def test_phone_advertising_and_checking_in_is_one_contact() -> None:
    pipeline = _pipeline()
    events = []
    for k in range(100):
        ts = TS0 + 1 + k * 0.5
        adv = Advertisement(ts=ts, address="5A:12:34:AB:CD:EF", address_type="random",
                            rssi=-66, manufacturer_data={0xFFFF: b"HW\x01" + RPI0 + b"\xc5"})
        events += pipeline.feed(adv)
        if k % 20 == 10:
            events += _checkin(pipeline, ts + 0.1, -64)
        events += pipeline.tick(ts)
    assert [e.type for e in events] == [EventType.ARRIVED]
    assert len(pipeline.present()) == 1
    # It stops advertising but keeps checking in: still present, the check-ins hold it.
    ts = TS0 + 51
    for k in range(6):
        events += _checkin(pipeline, ts + k * 20, -64)
        for second in range(20):
            events += pipeline.tick(ts + k * 20 + second)
    assert [e.type for e in events] == [EventType.ARRIVED]
    assert pipeline.present()[0].carrier == CHECKIN
