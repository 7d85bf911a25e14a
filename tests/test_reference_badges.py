"""Reference beacons named by badge (``[[proximity.reference]]`` with ``address``, ``ibeacon``
or ``eddystone_uid``): config checks, and a badge nobody imported calibrating the venue through
the real resolver."""

from __future__ import annotations

import json
import math
import random
import uuid
from pathlib import Path

import pytest

from hallway.cli import EX_CONFIG, main
from hallway.config import Config, parse_config
from hallway.errors import ConfigError
from hallway.models import Advertisement, Contact, ContactKey, KeyKind
from hallway.pipeline import Pipeline

T0 = 1_790_000_000.0
BEACON_UUID = "426c7565-4368-6172-6d42-6561636f6e73"


def ibeacon_payload(major: int, minor: int, power: int) -> bytes:
    return (b"\x02\x15" + uuid.UUID(BEACON_UUID).bytes + major.to_bytes(2, "big")
            + minor.to_bytes(2, "big") + (power & 0xFF).to_bytes(1, "big"))


def test_badge_references_parse_to_canonical_keys() -> None:
    config = parse_config(
        "[[proximity.reference]]\naddress = \"c0:11:22:33:44:55\"\ndistance_m = 1.5\n"
        f"[[proximity.reference]]\nibeacon = \"{BEACON_UUID.upper()}/3838/4949\"\n"
        "distance_m = 8\n"
        "[[proximity.reference]]\neddystone_uid = \"12345678901234678901/000000000001\"\n"
        "distance_m = 4\n"
        "[[proximity.reference]]\ncontact = \"badge-ref\"\ndistance_m = 2\n"
    )
    keys = [r.key for r in config.proximity.reference]
    assert keys == ["address:C0:11:22:33:44:55", f"ibeacon:{BEACON_UUID}/3838/4949",
                    "eddystone-uid:12345678901234678901/000000000001", "contact:badge-ref"]


@pytest.mark.parametrize(("body", "key", "reason"), [
    ('address = "C0:11:22:33:44"\ndistance_m = 1', "proximity.reference.0.address",
     "AA:BB:CC:DD:EE:FF"),
    (f'ibeacon = "{BEACON_UUID}/3838"\ndistance_m = 1', "proximity.reference.0.ibeacon",
     "uuid/major/minor"),
    (f'ibeacon = "{BEACON_UUID}/70000/1"\ndistance_m = 1', "proximity.reference.0.ibeacon",
     "0-65535"),
    ('eddystone_uid = "1234/0001"\ndistance_m = 1', "proximity.reference.0.eddystone_uid",
     "eddystone namespace"),
    ('contact = "a"\naddress = "C0:11:22:33:44:55"\ndistance_m = 1', "proximity.reference.0",
     "exactly one of contact, address, ibeacon or eddystone_uid (this one names contact, "
     "address)"),
    ("distance_m = 1", "proximity.reference.0", "(this one names none)"),
    ('address = "C0:11:22:33:44:55"', "proximity.reference.0.distance_m", "required"),
])
def test_bad_badge_references_are_named(body: str, key: str, reason: str) -> None:
    good = '[[proximity.reference]]\ncontact = "fine"\ndistance_m = 2\n'
    key = key.replace("reference.0", "reference.1")
    with pytest.raises(ConfigError) as info:
        parse_config(f"{good}[[proximity.reference]]\n{body}\n", file="venue.toml")
    problems = [(p.key, p.reason, p.line) for p in info.value.problems]
    assert any(k == key and reason in r for k, r, _ in problems), problems
    # The line: the key's own, or the entry's header (line 4) for the entry as a whole.
    (line,) = [n for k, _, n in problems if k == key]
    body_lines = body.splitlines()
    field = key.rsplit(".", 1)[1]
    own = [i for i, text in enumerate(body_lines) if text.startswith(f"{field} =")]
    assert line == (5 + own[0] if own else 4), problems


def test_the_same_badge_twice_is_an_error_in_any_spelling(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "twice.toml"
    bad.write_text('[[proximity.reference]]\naddress = "c0:11:22:33:44:55"\ndistance_m = 1\n'
                   '[[proximity.reference]]\naddress = "C0:11:22:33:44:55"\ndistance_m = 3\n')
    assert main(["check-config", str(bad)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert f"{bad}" in err
    assert "proximity.reference" in err
    assert "reference address:C0:11:22:33:44:55 is listed twice" in err


def _feed(pipeline: Pipeline, seconds: int, *, true_n: float, offset: float,
          near_moved_to: float | None = None, start: float = T0, seed: int = 1) -> float:
    """Twice a second: an iBeacon badge at 1.5 m, an address badge at 8 m (neither imported),
    and an imported attendee's iBeacon at 3 m."""
    rng = random.Random(seed)
    t = start
    near = 1.5 if near_moved_to is None else near_moved_to
    for step in range(seconds * 2):
        t = start + step * 0.5
        def rssi(d: float, power: int) -> int:
            return round(power + offset - 10 * true_n * math.log10(d) + rng.gauss(0, 3))
        ads = [
            Advertisement(t, "11:22:33:44:55:66", rssi=rssi(near, -59),
                          manufacturer_data={76: ibeacon_payload(1, 2, -59)}),
            Advertisement(t, "C0:11:22:33:44:55", address_type="random", rssi=rssi(8.0, -59)),
            Advertisement(t, "22:33:44:55:66:77", rssi=rssi(3.0, -59),
                          manufacturer_data={76: ibeacon_payload(9, 9, -59)}),
        ]
        for ad in ads:
            assert not [e for e in pipeline.feed(ad) if e.contact_id.startswith("reference")]
        if step % 2 == 0:
            pipeline.tick(t)
    return t


def _config() -> Config:
    return parse_config(
        "[proximity]\npath_loss_exponent = 2.0\n"
        f"[[proximity.reference]]\nibeacon = \"{BEACON_UUID}/1/2\"\ndistance_m = 1.5\n"
        "[[proximity.reference]]\naddress = \"C0:11:22:33:44:55\"\ndistance_m = 8\n"
    )


def test_badges_nobody_imported_fit_the_venue_and_are_no_attendees() -> None:
    pipeline = Pipeline(_config())
    attendee = Contact("c-1", "Ada", keys=(ContactKey(KeyKind.IBEACON,
                                                      f"{BEACON_UUID}/9/9"),))
    pipeline.load_contacts([attendee], now=T0)
    status = pipeline.tracker.calibration_status(T0)
    assert [r["state"] for r in status["references"]] == [  # type: ignore[union-attr]
        "never heard (is the badge on, and within reach?)"] * 2
    end = _feed(pipeline, 900, true_n=2.8, offset=-4.0)
    status = pipeline.tracker.calibration_status(end)
    refs = status["references"]
    assert [(r["badge"], r["state"]) for r in refs] == [  # type: ignore[union-attr,index]
        (f"ibeacon:{BEACON_UUID}/1/2", "ok"), ("address:C0:11:22:33:44:55", "ok")]
    assert status["state"] == "fitted"
    assert abs(float(status["fitted_exponent"]) - 2.8) < 0.4  # type: ignore[arg-type]
    assert abs(float(status["fitted_offset_db"]) + 4.0) < 2.5  # type: ignore[arg-type]
    # The references are nobody: only the imported attendee is present, and counted.
    assert [p.contact_id for p in pipeline.present()] == ["c-1"]
    assert pipeline.stats()["contacts"] == 1
    # Reloading the contacts keeps the badges resolving.
    pipeline.load_contacts([attendee], now=end)
    later = _feed(pipeline, 120, true_n=2.8, offset=-4.0, start=end + 0.5, seed=2)
    refs = pipeline.tracker.calibration_status(later)["references"]
    assert [r["state"] for r in refs] == ["ok", "ok"]  # type: ignore[union-attr,index]


def test_a_moved_badge_is_said_and_left_out() -> None:
    pipeline = Pipeline(_config())
    end = _feed(pipeline, 900, true_n=2.0, offset=0.0)
    end = _feed(pipeline, 400, true_n=2.0, offset=0.0, near_moved_to=12.0, start=end + 0.5,
                seed=3)
    status = pipeline.tracker.calibration_status(end)
    states = {r["badge"]: r["state"] for r in status["references"]}  # type: ignore[union-attr,index]
    assert states[f"ibeacon:{BEACON_UUID}/1/2"] == "moved: left out until it reads as before"
    assert states["address:C0:11:22:33:44:55"] == "ok"
    assert status["state"] == "offset only"


@pytest.mark.parametrize("reader_process", [False, True])
def test_a_replay_reader_resolves_badge_references_too(reader_process: bool) -> None:
    """``hallway replay``'s reader resolves in its own resolver (in a child process by
    default): badge references must reach the calibrator there too. A venue with exponent 3.0
    configured as 2.0: an attendee 9 m away reads 27 m (outside R = 12 m) until the two badges
    fit the exponent; then it arrives."""
    from hallway.replay import replay
    from hallway.trace import advertisement_json

    config = parse_config(
        "[proximity]\npath_loss_exponent = 2.0\n"
        f"[[proximity.reference]]\nibeacon = \"{BEACON_UUID}/1/2\"\ndistance_m = 1.0\n"
        "[[proximity.reference]]\naddress = \"C0:11:22:33:44:55\"\ndistance_m = 8\n")
    attendee = Contact("c-1", "Ada", keys=(ContactKey(KeyKind.ADDRESS, "C0:AA:BB:CC:DD:EE"),))
    rng = random.Random(4)
    lines = []
    for step in range(2 * 1500):
        t = T0 + step * 0.5

        def rssi(d: float) -> int:
            return round(-59 - 30 * math.log10(d) + rng.gauss(0, 2))

        for ad in (
            Advertisement(t, "11:22:33:44:55:66", rssi=rssi(1.0),
                          manufacturer_data={76: ibeacon_payload(1, 2, -59)}),
            Advertisement(t, "C0:11:22:33:44:55", address_type="random", rssi=rssi(8.0)),
            Advertisement(t, "C0:AA:BB:CC:DD:EE", address_type="random", rssi=rssi(9.0)),
        ):
            lines.append((json.dumps(advertisement_json(ad)) + "\n").encode())
    out: list[str] = []
    summary = replay(lines, [attendee], config, out.append, reader_process=reader_process)
    assert summary.advertisements == len(lines)
    events = [json.loads(line) for line in out]
    assert {e["contact"]["id"] for e in events} == {"c-1"}  # the badges are nobody
    assert events[0]["type"] == "arrived"
    assert events[0]["ts"] > T0 + 60  # once the fit had two minute medians of each
    # Without the references, the attendee never reads inside the radius.
    plain = parse_config("[proximity]\npath_loss_exponent = 2.0\n")
    unfitted: list[str] = []
    replay(lines, [attendee], plain, unfitted.append, reader_process=reader_process)
    assert unfitted == []


def test_a_badge_also_imported_as_a_contact_is_said_and_given_back_when_revoked() -> None:
    pipeline = Pipeline(_config())
    holder = Contact("c-badge", "Front desk badge",
                     keys=(ContactKey(KeyKind.ADDRESS, "C0:11:22:33:44:55"),))
    pipeline.load_contacts([holder], now=T0)
    end = _feed(pipeline, 400, true_n=2.0, offset=0.0)
    refs = pipeline.tracker.calibration_status(end)["references"]
    states = {r["badge"]: r["state"] for r in refs}  # type: ignore[union-attr,index]
    assert states["address:C0:11:22:33:44:55"].startswith(
        'taken: contact c-badge holds this badge\'s key')
    assert 'contact = "c-badge"' in states["address:C0:11:22:33:44:55"]
    assert [p.contact_id for p in pipeline.present()] == ["c-badge"]  # the contact's now
    # Revoked: the badge is the reference's again, and is heard as such.
    pipeline.remove_contact("c-badge", now=end)
    later = _feed(pipeline, 400, true_n=2.0, offset=0.0, start=end + 0.5, seed=5)
    refs = pipeline.tracker.calibration_status(later)["references"]
    assert [r["state"] for r in refs] == ["ok", "ok"]  # type: ignore[union-attr,index]
