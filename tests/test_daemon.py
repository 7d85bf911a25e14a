"""``hallway run`` as a subprocess: systemd notify, revocation while running, restart and resume."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.daemon_env import (
    ROOT,
    Client,
    beacon_rows,
    free_port,
    import_contacts,
    start_daemon,
    write_config,
    write_trace,
)

ADA = "C4:7C:8D:6A:12:34"
BOB = "C4:7C:8D:6A:56:78"
CONTACTS = [
    {"id": "c-ada", "name": "Ada Lovelace", "tags": ["speaker"],
     "keys": [{"kind": "address", "address": ADA}]},
    {"id": "c-bob", "name": "Bob Babbage", "keys": [{"kind": "address", "address": BOB}]},
]


def _venue(tmp: Path, *, duration_s: float = 120.0) -> Path:
    start = time.time() + 0.5
    rows = beacon_rows(ADA, start=start, duration_s=duration_s)
    rows += beacon_rows(BOB, start=start, duration_s=duration_s, rssi=-60, every_s=0.3)
    trace = tmp / "trace.jsonl"
    write_trace(trace, rows)
    return trace


def test_notify_ready_watchdog_status_wedge_and_stopping(tmp_path: Path) -> None:
    import_contacts(tmp_path, CONTACTS)
    port = free_port()
    config = write_config(tmp_path, port=port, trace=_venue(tmp_path))
    daemon = start_daemon(tmp_path, config, port=port, env_extra={"HALLWAY_DEBUG_WEDGE": "1"})
    try:
        daemon.wait_for_notification("READY=1", 20)
        # The socket is up by the time READY=1 is sent.
        client = Client(port)
        assert client.hello["type"] == "hello"
        client.close()
        pings = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            pings += sum(m.count("WATCHDOG=1") for m in daemon.notifications(0.2))
        assert pings >= 3, daemon.messages
        line = daemon.wait_for_notification("STATUS=", 10)
        assert re.fullmatch(r"STATUS=[a-z_]+; \d+ adv/s, [\d.]+ matched/s; \d+ present; "
                            r"\d+ subscriber\(s\); malformed \d+, dropped \d+(; .*)?",
                            line), line
        # Wedged pipeline: alive, but once the grace (2 s) is over no more WATCHDOG=1, so
        # systemd would kill and restart it.
        daemon.proc.send_signal(signal.SIGUSR2)
        time.sleep(2.5)
        daemon.notifications(0.1)
        later = []
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            later.extend(daemon.notifications(0.2))
        assert not any("WATCHDOG=1" in m for m in later), later
        assert daemon.proc.poll() is None
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.wait_for_notification("STOPPING=1", 10)
        assert daemon.stop() == 0
    finally:
        daemon.stop(signal.SIGKILL)


def test_revoked_contact_departs_within_two_seconds_and_never_returns(tmp_path: Path) -> None:
    import_contacts(tmp_path, CONTACTS)
    port = free_port()
    config = write_config(tmp_path, port=port, trace=_venue(tmp_path))
    daemon = start_daemon(tmp_path, config, port=port)
    try:
        daemon.wait_for_notification("READY=1", 20)
        client = Client(port)
        assert client.subscribe()["type"] == "subscribed"
        arrived = set()
        for event in client.events(30):
            if event["type"] == "arrived":
                arrived.add(event["contact"]["id"])
            if arrived == {"c-ada", "c-bob"}:
                break
        assert arrived == {"c-ada", "c-bob"}, daemon.log()
        revoked_at = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "hallway", "contacts", "revoke", "c-ada", "--db",
             str(tmp_path / "hallway.db")],
            check=True, capture_output=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        departure = None
        for event in client.events(5):
            if event["contact"]["id"] == "c-ada":
                departure = event
                break
        assert departure is not None
        assert time.monotonic() - revoked_at <= 2.0
        assert departure["type"] == "departed"
        assert departure["reason"] == "revoked"
        assert departure["contact"] == {"id": "c-ada"}
        # Ada's badge keeps advertising, but she is never resolved again: after her departure
        # only the tombstone (the id and nothing else) is about her.
        later = [e for e in client.events(4) if e["contact"]["id"] == "c-ada"]
        assert [(e["type"], e["contact"]) for e in later] == [("revoked", {"id": "c-ada"})]
        assert set(later[0]) == {"type", "seq", "ts", "scanner", "contact"}
        client.close()
        with sqlite3.connect(tmp_path / "hallway.db") as conn:
            rows = conn.execute(
                "SELECT type, payload FROM events WHERE contact_id = 'c-ada'").fetchall()
        # Her arrival and every reading are gone; what stays says only that she left.
        assert sorted(kind for kind, _ in rows) == ["departed", "revoked"], rows
        assert all(json.loads(p)["contact"] == {"id": "c-ada"} for _, p in rows), rows
    finally:
        daemon.stop()


def test_restart_keeps_seq_increasing_and_resume_is_exact(tmp_path: Path) -> None:
    import_contacts(tmp_path, CONTACTS)
    port = free_port()
    trace = _venue(tmp_path, duration_s=300)
    config = write_config(tmp_path, port=port, trace=trace)
    daemon = start_daemon(tmp_path, config, port=port)
    try:
        daemon.wait_for_notification("READY=1", 20)
        client = Client(port)
        client.subscribe()
        first = [e for e in client.events(6) if e["type"] == "arrived"]
        assert first, daemon.log()
        client.close()
        assert daemon.stop() == 0
    finally:
        daemon.stop(signal.SIGKILL)
    with sqlite3.connect(tmp_path / "hallway.db") as conn:
        logged = [row[0] for row in conn.execute("SELECT seq FROM events ORDER BY seq")]
    # Shutdown departed everyone present, and every event is in the log, gapless.
    assert logged == list(range(1, len(logged) + 1))
    last_before = logged[-1]

    daemon = start_daemon(tmp_path, config, port=port)
    try:
        daemon.wait_for_notification("READY=1", 20)
        client = Client(port)
        since = first[0]["seq"]
        ack = client.subscribe(since_seq=since)
        assert ack["type"] == "subscribed"
        got = list(client.events(5))
        seqs = [e["seq"] for e in got]
        # Exactly the events after `since`, then the new run's, all in order without a gap.
        assert seqs[: last_before - since] == list(range(since + 1, last_before + 1))
        assert seqs == sorted(seqs)
        assert seqs == list(range(since + 1, since + 1 + len(seqs)))
        assert any(e["type"] == "arrived" and e["seq"] > last_before for e in got), got
        client.close()
    finally:
        daemon.stop()


@pytest.mark.parametrize("bad", ['[server]\ntcp_port = "x"\n', "[nope]\n"])
def test_bad_config_exits_78(tmp_path: Path, bad: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(bad)
    result = subprocess.run(
        [sys.executable, "-m", "hallway", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert result.returncode == 78
    assert str(config) in result.stderr


def _assert_alternating(events: list[dict[str, object]]) -> None:
    state: dict[str, str] = {}
    for event in events:
        contact = event["contact"]
        assert isinstance(contact, dict)
        cid = str(contact["id"])
        kind = str(event["type"])
        if kind == "arrived":
            assert state.get(cid) != "arrived", f"two arrivals in a row for {cid}: {events}"
            state[cid] = "arrived"
        elif kind == "departed":
            assert state.get(cid) == "arrived", f"departure without arrival for {cid}"
            state[cid] = "departed"
        else:
            assert state.get(cid) == "arrived", f"{kind} while absent for {cid}"


def test_after_a_crash_presence_still_alternates(tmp_path: Path) -> None:
    import_contacts(tmp_path, CONTACTS)
    port = free_port()
    config = write_config(tmp_path, port=port, trace=_venue(tmp_path, duration_s=300))
    daemon = start_daemon(tmp_path, config, port=port)
    try:
        daemon.wait_for_notification("READY=1", 20)
        client = Client(port)
        client.subscribe()
        assert any(e["type"] == "arrived" for e in client.events(5))
        client.close()
    finally:
        daemon.stop(signal.SIGKILL)
    daemon = start_daemon(tmp_path, config, port=port)
    try:
        daemon.wait_for_notification("READY=1", 20)
        client = Client(port)
        client.subscribe(since_seq=0)
        events = list(client.events(5))
        client.close()
    finally:
        daemon.stop()
    assert any(e["type"] == "departed" and e["reason"] == "shutdown" for e in events), events
    assert any(e["type"] == "arrived" for e in events[1:]), events
    _assert_alternating(events)


def test_sighup_forces_a_contact_reload(tmp_path: Path) -> None:
    import_contacts(tmp_path, CONTACTS)
    port = free_port()
    config = write_config(tmp_path, port=port, trace=_venue(tmp_path))
    # The periodic look at the store is far off: only SIGHUP can make the change take effect.
    config.write_text(
        config.read_text().replace("reload_interval_s = 0.5", "reload_interval_s = 60")
    )
    daemon = start_daemon(tmp_path, config, port=port)
    try:
        daemon.wait_for_notification("READY=1", 20)
        client = Client(port)
        client.subscribe()
        assert any(e["type"] == "arrived" and e["contact"]["id"] == "c-bob"
                   for e in client.events(10))
        subprocess.run(
            [sys.executable, "-m", "hallway", "contacts", "revoke", "c-bob", "--db",
             str(tmp_path / "hallway.db")],
            check=True, capture_output=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        assert not any(e["contact"]["id"] == "c-bob" for e in client.events(2))
        daemon.proc.send_signal(signal.SIGHUP)
        departed = [e for e in client.events(3) if e["contact"]["id"] == "c-bob"]
        assert [(e["type"], e.get("reason")) for e in departed] == [
            ("departed", "revoked"), ("revoked", None)]
        client.close()
    finally:
        daemon.stop()
