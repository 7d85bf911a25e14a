"""Frame parsers of hallway.parsing.frames: SPEC §3/§4 vectors, rejects, and no exceptions."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hallway.parsing import frames
from hallway.parsing.frames import (
    EddystoneOtherFrame,
    EddystoneUidFrame,
    EnFrame,
    HallwayFrame,
    IBeaconFrame,
    Malformed,
)

RPI = bytes.fromhex("8be6cd371c5c891604bfbe49df845096")
IBEACON = bytes.fromhex("0215426c7565436861726d426561636f6e730efe1355c5")
EDDYSTONE = bytes.fromhex("00e3123456789012346789010000000000010000")


def test_hallway_mfr_with_and_without_power() -> None:
    assert frames.parse_hallway_mfr(b"HW\x01" + RPI) == HallwayFrame(RPI, None)
    assert frames.parse_hallway_mfr(b"HW\x01" + RPI + b"\xc5") == HallwayFrame(RPI, -59)
    assert frames.parse_hallway_mfr(b"HW\x01" + RPI + b"\x05") == HallwayFrame(RPI, 5)


@pytest.mark.parametrize(
    "payload", [b"HW\x01", b"HW\x01" + RPI[:15], b"HW\x01" + RPI + b"\x00\x00"]
)
def test_hallway_mfr_wrong_size_is_malformed(payload: bytes) -> None:
    assert isinstance(frames.parse_hallway_mfr(payload), Malformed)


@pytest.mark.parametrize("payload", [b"", b"H", b"HW", b"HW\x02" + RPI, b"\x00" * 19, RPI])
def test_hallway_mfr_other_data_is_not_ours(payload: bytes) -> None:
    assert frames.parse_hallway_mfr(payload) is None


def test_en_service_data() -> None:
    aem = bytes.fromhex("72033874")
    assert frames.parse_en_service_data(RPI + aem) == EnFrame(RPI, aem)
    for size in (0, 16, 19, 21):
        assert isinstance(frames.parse_en_service_data(bytes(size)), Malformed)


def test_ibeacon_vector() -> None:
    frame = frames.parse_ibeacon(IBEACON)
    assert isinstance(frame, IBeaconFrame)
    assert frame.uuid.hex() == "426c7565436861726d426561636f6e73"
    assert (frame.major, frame.minor, frame.measured_power) == (3838, 4949, -59)
    assert frame.beacon_id == IBEACON[2:22]


@pytest.mark.parametrize(
    "payload",
    [
        bytes.fromhex("1005031c1a2b3c"),  # Nearby Info
        bytes.fromhex("0c0e00a1b2c3d4e5f6a7b8c9d0e1f2"),  # Handoff
        bytes.fromhex("1219005a8e9f0123456789abcdef0123456789abcdef012345678901"),  # Find My
        bytes.fromhex("0216" + "00" * 22),  # type 02 with another length is not an iBeacon
        b"",
    ],
)
def test_apple_continuity_frames_are_not_ibeacons(payload: bytes) -> None:
    assert frames.parse_ibeacon(payload) is None


@pytest.mark.parametrize("size", [2, 10, 22, 24])
def test_truncated_or_long_ibeacon_is_malformed(size: int) -> None:
    payload = (IBEACON + b"\x00")[:size]
    assert isinstance(frames.parse_ibeacon(payload), Malformed)


def test_eddystone_uid_vector() -> None:
    frame = frames.parse_eddystone(EDDYSTONE)
    assert isinstance(frame, EddystoneUidFrame)
    assert frame.tx_power_0m == -29
    assert frame.measured_power == -70
    assert frame.namespace.hex() == "12345678901234678901"
    assert frame.instance.hex() == "000000000001"
    assert frames.parse_eddystone(EDDYSTONE[:18]) == frame  # without the reserved bytes


@pytest.mark.parametrize(
    ("payload", "frame_type"),
    [
        (bytes.fromhex("10f803676f6f676c6507"), 0x10),  # URL https://google.com
        (bytes.fromhex("20000bb81800000000010000000a"), 0x20),  # TLM
        (bytes.fromhex("30f80102030405060708"), 0x30),  # EID
    ],
)
def test_other_eddystone_frames_are_tolerated(payload: bytes, frame_type: int) -> None:
    assert frames.parse_eddystone(payload) == EddystoneOtherFrame(frame_type)


def test_eddystone_rejects() -> None:
    assert isinstance(frames.parse_eddystone(b""), Malformed)
    assert isinstance(frames.parse_eddystone(EDDYSTONE[:17]), Malformed)
    assert isinstance(frames.parse_eddystone(EDDYSTONE + b"\x00"), Malformed)
    assert frames.parse_eddystone(b"\x50\x01\x02") is None


def test_service_uuid_rpi() -> None:
    assert frames.uuid_rpi("8be6cd37-1c5c-8916-04bf-be49df845096") == RPI
    assert frames.uuid_rpi("8BE6CD37-1C5C-8916-04BF-BE49DF845096") == RPI
    assert frames.uuid_rpi(frames.EN_SERVICE_UUID) is None
    assert frames.uuid_rpi("0000180f-0000-1000-8000-00805f9b34fb") is None
    assert isinstance(frames.uuid_rpi("180f"), Malformed)
    assert isinstance(frames.uuid_rpi("8be6cd37-1c5c-8916-04bf-be49df84509z"), Malformed)
    assert isinstance(frames.uuid_rpi("8be6cd37+1c5c-8916-04bf-be49df845096"), Malformed)


@pytest.mark.parametrize(
    ("address", "subtype"),
    [
        ("70:81:94:0D:FB:AA", "resolvable"),
        ("4F:00:00:00:00:00", "resolvable"),
        ("C4:7C:8D:6A:12:34", "static"),
        ("FF:FF:FF:FF:FF:FF", "static"),
        ("3A:00:00:00:00:01", "non-resolvable"),
        ("80:00:00:00:00:01", None),
        ("70-81-94-0D-FB-AA", None),
        ("70:81:94:0D:FB", None),
        ("ZZ:81:94:0D:FB:AA", None),
    ],
)
def test_random_address_subtype(address: str, subtype: str | None) -> None:
    assert frames.random_address_subtype(address) == subtype


@given(st.binary(max_size=64))
def test_parsers_never_raise_on_any_bytes(payload: bytes) -> None:
    for parse in (
        frames.parse_hallway_mfr,
        frames.parse_en_service_data,
        frames.parse_ibeacon,
        frames.parse_eddystone,
    ):
        parse(payload)
    # the same bytes behind each frame's own magic
    frames.parse_hallway_mfr(b"HW\x01" + payload)
    frames.parse_ibeacon(b"\x02\x15" + payload)
    for frame_type in (0x00, 0x10, 0x20, 0x30):
        frames.parse_eddystone(bytes([frame_type]) + payload)


@given(st.text(max_size=40))
def test_text_parsers_never_raise(text: str) -> None:
    frames.uuid_rpi(text)
    frames.random_address_subtype(text)
    frames.address_bytes(text)


def test_core_modules_import_no_adapters() -> None:
    code = (
        "import sys, hallway.parsing.frames, hallway.identity.resolver, hallway.identity.crypto;"
        "bad = {'asyncio', 'structlog', 'bleak', 'aiosqlite', 'zeroconf', 'dbus_fast'};"
        "print(sorted(bad & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
