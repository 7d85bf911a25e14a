"""``hallway calibrate`` against a running daemon: a badge 6 dB quieter than the default reads
2 m at 1 m; the measured calibration is stored and the daemon's live estimate (the ``present``
request) reads 1 m right after."""

from __future__ import annotations

import math
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hallway.proximity.distance import correction_db
from tests.daemon_env import (
    ROOT,
    TOKEN,
    Client,
    beacon_rows,
    free_port,
    import_contacts,
    start_daemon,
    write_config,
    write_trace,
)

pytestmark = pytest.mark.timeout(90)

BADGE = "C4:7C:8D:6A:9A:BC"
CONTACTS = [{"id": "c-quiet", "name": "Quiet Badge",
             "keys": [{"kind": "address", "address": BADGE}]}]


def calibrate(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hallway", "calibrate", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "HALLWAY_TOKEN": TOKEN},
    )


def test_the_correction_follows_the_log_distance_model() -> None:
    assert correction_db(0.0, true_m=1.0, read_m=2.0, exponent=2.0) == pytest.approx(
        -20 * math.log10(2))
    assert correction_db(-3.0, true_m=2.0, read_m=1.0, exponent=2.5) == pytest.approx(
        -3.0 + 25 * math.log10(2))
    assert correction_db(1.5, true_m=3.0, read_m=3.0, exponent=2.0) == 1.5


def test_calibrating_a_quiet_badge_at_one_metre(tmp_path: Path) -> None:
    import_contacts(tmp_path, CONTACTS)
    trace = tmp_path / "trace.jsonl"
    # -65 dBm steady (±1): 6 dB under the default -59 at 1 m, so 2 m at path-loss exponent 2.
    write_trace(trace, beacon_rows(BADGE, start=time.time() + 0.5, duration_s=120, rssi=-65))
    port = free_port()
    config = write_config(tmp_path, port=port, trace=trace)
    daemon = start_daemon(tmp_path, config, port=port)
    try:
        daemon.wait_for_notification("READY=1", 20)
        assert calibrate(config, "c-nobody").returncode == 65
        time.sleep(3)  # arrived and settled
        done = calibrate(config, "c-quiet", "--distance", "1", "--seconds", "3", "--save")
        assert done.returncode == 0, done.stderr
        found = re.search(r"calibration_db \+0\.0 -> ([-+][0-9.]+)", done.stdout)
        assert found is not None, done.stdout
        measured = float(found.group(1))
        assert measured == pytest.approx(-6.0, abs=0.5)
        assert "saved" in done.stdout
        with sqlite3.connect(tmp_path / "hallway.db") as db:
            [(stored,)] = db.execute("SELECT calibration_db FROM contacts WHERE id = 'c-quiet'")
        assert stored == measured
        # The daemon reloads within its reload interval (0.5 s) and reads 1 m from then on.
        deadline = time.monotonic() + 5
        while True:
            client = Client(port)
            client.send({"type": "present", "token": TOKEN, "contacts": ["c-quiet"]})
            live = client.read()
            client.close()
            assert live["type"] == "present"
            [entry] = live["present"]
            if entry["distance_m"] == pytest.approx(1.0, rel=0.1):
                break
            assert time.monotonic() < deadline, entry
            time.sleep(0.2)
    finally:
        daemon.stop()


def test_a_contact_that_is_not_there_gives_no_reading(tmp_path: Path) -> None:
    import_contacts(tmp_path, CONTACTS)
    trace = tmp_path / "trace.jsonl"
    write_trace(trace, beacon_rows("C4:7C:8D:00:00:01", start=time.time() + 0.5,
                                   duration_s=60))  # somebody else
    port = free_port()
    config = write_config(tmp_path, port=port, trace=trace)
    daemon = start_daemon(tmp_path, config, port=port)
    try:
        daemon.wait_for_notification("READY=1", 20)
        done = calibrate(config, "c-quiet", "--seconds", "2", "--save")
        assert done.returncode == 1
        assert "c-quiet was not present" in done.stderr
        with sqlite3.connect(tmp_path / "hallway.db") as db:
            [(stored,)] = db.execute("SELECT calibration_db FROM contacts WHERE id = 'c-quiet'")
        assert stored == 0.0
    finally:
        daemon.stop()
    gone = calibrate(config, "c-quiet", "--seconds", "1")
    assert gone.returncode == 69
    assert "cannot reach hallway" in gone.stderr
