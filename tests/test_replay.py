"""``hallway replay``: a simulated venue end to end against its truth, a hand-made trace with
exactly known events, malformed lines, pacing, and errors."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hallway.cli import main
from hallway.contacts_io import parse_contacts
from hallway.models import Advertisement, Contact, ContactKey, KeyKind
from hallway.store import SqliteStore
from hallway.trace import advertisement_json

START = 1_795_251_600.0
BEACON_UUID = "426c7565-4368-6172-6d42-6561636f6e73"
BEACON_PAYLOAD = "0215426c7565436861726d426561636f6e730efe1355c5"  # major 3838, minor 4949, -59


def _import(db: Path, contacts: list[Contact]) -> None:
    async def work() -> None:
        store = await SqliteStore.open(db)
        try:
            await store.import_contacts(contacts)
        finally:
            await store.close()

    asyncio.run(work())


def _summary(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_spec_shape(events: list[dict[str, Any]]) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    last_ts = -math.inf
    present: dict[str, bool] = {}
    for event in events:
        assert event["type"] in ("arrived", "zone", "departed")
        assert event["ts"] >= last_ts
        last_ts = event["ts"]
        assert event["scanner"] == "hallway"
        assert set(event["contact"]) >= {"id", "name"}
        assert event["zone"] in ("immediate", "near", "far")
        assert event["distance_m"] > 0
        assert -128 <= event["rssi"] <= 20
        assert event["via"] in {k.value for k in KeyKind}
        cid = event["contact"]["id"]
        if event["type"] == "arrived":
            assert not present.get(cid), f"{cid} arrived twice"
            present[cid] = True
        elif event["type"] == "zone":
            assert present.get(cid)
            assert event["previous_zone"] in ("immediate", "near", "far")
        else:
            assert present.get(cid)
            assert event["reason"] in ("timeout", "out_of_range", "revoked", "shutdown")
            assert event["dwell_s"] >= 0
            present[cid] = False
    assert not any(present.values()), "the end of the trace departs everyone"


def _simulated(tmp_path: Path, scenario: str, *, seed: int, duration_s: int) -> tuple[Path, Path]:
    """``hallway simulate`` into tmp_path/<scenario>, its contacts imported: (venue, db)."""
    venue = tmp_path / scenario
    assert main(["simulate", "--scenario", scenario, "--seed", str(seed), "--duration",
                 str(duration_s), "--out", str(venue)]) == 0
    contacts, _ = parse_contacts((venue / "contacts.jsonl").read_text(), file="contacts")
    db = tmp_path / "hallway.db"
    _import(db, contacts)
    return venue, db


def test_a_simulated_booth_replays_into_spec_events_that_match_the_truth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    venue, db = _simulated(tmp_path, "booth", seed=21, duration_s=1200)
    capsys.readouterr()
    out = tmp_path / "events.jsonl"
    assert main(["replay", str(venue / "trace.jsonl"), "--db", str(db), "--config",
                 str(venue / "venue.toml"), "--out", str(out)]) == 0
    summary = _summary(capsys.readouterr().out)
    trace_lines = len((venue / "trace.jsonl").read_text().splitlines())
    assert int(summary["advertisements"]) == trace_lines
    assert 0 < int(summary["matched"]) < trace_lines
    assert summary["malformed"] == "0"
    events = _events(out)
    assert int(summary["events"]) == len(events)
    assert float(summary["advertisements_per_s"]) > 0
    _check_spec_shape(events)

    # Against the truth: clearly inside (<= 8 m, away from transitions) is reported present;
    # clearly outside (>= 18 m) is not.
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    opened: dict[str, float] = {}
    for event in events:
        cid = event["contact"]["id"]
        if event["type"] == "arrived":
            opened[cid] = event["ts"]
        elif event["type"] == "departed":
            spans[cid].append((opened.pop(cid), event["ts"]))
    inside = inside_hit = outside = outside_hit = 0
    for line in (venue / "truth.jsonl").read_text().splitlines():
        row = json.loads(line)
        edges = [t for interval in row["present"] for t in interval]
        for k, distance in enumerate(row["distance_m"]):
            t = START + k
            if distance is None or any(abs(t - edge) <= 10 for edge in edges):
                continue
            reported = any(a <= t < b for a, b in spans[row["id"]])
            if distance <= 8:
                inside += 1
                inside_hit += reported
            elif distance >= 18:
                outside += 1
                outside_hit += reported
    assert inside > 1000
    assert outside > 1000
    assert inside_hit / inside >= 0.9
    assert outside_hit / outside <= 0.1


def _line(ts: float, *, address: str, rssi: int, payload: str | None = None) -> str:
    adv = Advertisement(ts=ts, address=address, address_type="random", rssi=rssi,
                        manufacturer_data={} if payload is None else {76: bytes.fromhex(payload)},
                        scanner="hci0")
    return json.dumps(advertisement_json(adv))


def _beacon_contact() -> Contact:
    return Contact(id="c-7", name="Grace Hopper", org="Navy", tags=("speaker",),
                   keys=(ContactKey(KeyKind.IBEACON, f"{BEACON_UUID}/3838/4949"),))


def test_a_hand_made_trace_gives_exactly_the_expected_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "hallway.db"
    _import(db, [_beacon_contact()])
    lines = [
        _line(START + n * 0.5, address="C0:00:00:00:00:01", rssi=-65, payload=BEACON_PAYLOAD)
        for n in range(120)
    ]
    last = START + 119 * 0.5
    # A stranger keeps the clock going while the badge is silent.
    lines += [_line(START + 60 + n, address="C0:00:00:00:00:02", rssi=-70) for n in range(300)]
    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join(lines) + "\n")
    out = tmp_path / "events.jsonl"
    assert main(["replay", str(trace), "--db", str(db), "--out", str(out)]) == 0
    events = _events(out)
    _check_spec_shape(events)
    assert [e["type"] for e in events] == ["arrived", "departed"]
    arrived, departed = events
    assert arrived["contact"] == {"id": "c-7", "name": "Grace Hopper", "org": "Navy",
                                  "tags": ["speaker"]}
    assert arrived["via"] == "ibeacon"
    assert arrived["zone"] == "near"
    assert arrived["distance_m"] == pytest.approx(2.0, rel=0.05)
    assert arrived["ts"] - START == pytest.approx(2.0, abs=0.6)
    # A badge does not pause like a locked phone: silent, it has left (after the fade timeout).
    assert departed["reason"] == "out_of_range"
    assert departed["ts"] == pytest.approx(last + 20, abs=1.0)
    assert departed["dwell_s"] == pytest.approx(departed["ts"] - arrived["ts"], abs=0.1)
    assert _summary(capsys.readouterr().out)["events"] == "2"


def test_malformed_lines_are_counted_and_reported_never_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "hallway.db"
    _import(db, [_beacon_contact()])
    good = [_line(START + n, address="C0:00:00:00:00:01", rssi=-60, payload=BEACON_PAYLOAD)
            for n in range(10)]
    bad = ["{not json", '{"ts": 1.0, "address": "nope"}', '{"address": "C0:00:00:00:00:01"}',
           '{"ts": 5.0, "address": "C0:00:00:00:00:01", "manufacturer_data": {"²": "00"}}']
    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join([good[0], bad[0], *good[1:5], bad[1], "", bad[2], bad[3],
                                *good[5:]]) + "\n")
    out = tmp_path / "events.jsonl"
    assert main(["replay", str(trace), "--db", str(db), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    summary = _summary(text)
    assert summary["malformed"] == "4"
    assert summary["advertisements"] == "10"
    assert f"{trace}:2: skipped: not valid JSON" in text
    assert f"{trace}:7: skipped: address" in text
    assert [e["type"] for e in _events(out)] == ["arrived", "departed"]


def test_realtime_paces_the_replay_to_the_trace(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "hallway.db"
    _import(db, [])
    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join(_line(START + n * 0.1, address="C0:00:00:00:00:02", rssi=-70)
                               for n in range(16)) + "\n")
    began = time.monotonic()
    assert main(["replay", str(trace), "--db", str(db), "--out", str(tmp_path / "e.jsonl"),
                 "--realtime"]) == 0
    assert time.monotonic() - began >= 1.4
    assert _summary(capsys.readouterr().out)["advertisements"] == "16"


def test_a_missing_database_or_trace_is_an_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text("")
    assert main(["replay", str(trace), "--db", str(tmp_path / "none.db"), "--out",
                 str(tmp_path / "e.jsonl")]) == 1
    assert "does not exist" in capsys.readouterr().err
    db = tmp_path / "hallway.db"
    _import(db, [])
    assert main(["replay", str(tmp_path / "missing.jsonl"), "--db", str(db), "--out",
                 str(tmp_path / "e.jsonl")]) == 1
    assert "cannot open trace" in capsys.readouterr().err


def test_the_reader_process_gives_exactly_the_single_process_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    venue, db = _simulated(tmp_path, "corridor", seed=5, duration_s=600)
    trace = tmp_path / "trace.jsonl"
    lines = (venue / "trace.jsonl").read_text().splitlines()
    lines[100:100] = ["{not json", '{"ts": 1, "rssi": -50}', ""]  # two malformed, one blank
    trace.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    results = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"events-{jobs}.jsonl"
        assert main(["replay", str(trace), "--db", str(db), "--config",
                     str(venue / "venue.toml"), "--out", str(out), "--jobs", jobs]) == 0
        text = capsys.readouterr().out
        summary = _summary(text)
        for volatile in ("wall_time_s", "advertisements_per_s"):
            summary.pop(volatile)
        results[jobs] = (out.read_text(), summary, [x for x in text.splitlines() if "skipped" in x])
    assert results["1"] == results["2"]
    events, summary, skipped = results["2"]
    assert summary["malformed"] == "2"
    assert len(skipped) == 2
    assert int(summary["events"]) == len(events.splitlines()) > 10
    _check_spec_shape([json.loads(line) for line in events.splitlines()])


def test_a_read_error_in_the_reader_process_is_reported_not_hung(tmp_path: Path) -> None:
    from hallway.config import Config
    from hallway.errors import SourceError
    from hallway.replay import replay

    def failing() -> Iterator[bytes]:
        for n in range(5000):
            yield _line(START + n * 0.01, address="C0:00:00:00:00:02", rssi=-70).encode()
        raise OSError(5, "Input/output error")

    written: list[str] = []
    with pytest.raises(SourceError, match="reading the trace failed: OSError"):
        replay(failing(), [_beacon_contact()], Config(), written.append, reader_process=True)
