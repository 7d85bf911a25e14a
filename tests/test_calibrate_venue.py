"""``hallway calibrate --venue`` against a running daemon on a replayed trace: two reference
badges at 1 m and 4 m in a venue whose path-loss exponent is 2.6 and whose receiver reads 3 dB
low; the survey fits both, refuses when a reference is not heard, and writes the config
atomically, keeping the rest of the file."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hallway.commands.survey import survey_text, write_survey
from hallway.config import ReferenceConfig, load_config
from hallway.errors import ConfigError
from tests.daemon_env import (
    ROOT,
    TOKEN,
    beacon_rows,
    free_port,
    import_contacts,
    start_daemon,
    write_config,
    write_trace,
)

pytestmark = pytest.mark.timeout(120)

NEAR, FAR, ABSENT, STRANGER = ("C4:7C:8D:6A:00:01", "C4:7C:8D:6A:00:04", "C4:7C:8D:6A:00:09",
                               "C4:7C:8D:6A:00:0A")
CONTACTS = [
    {"id": "ref-near", "name": "Reference near", "keys": [{"kind": "address", "address": NEAR}]},
    {"id": "ref-far", "name": "Reference far", "keys": [{"kind": "address", "address": FAR}]},
    {"id": "ref-absent", "name": "Reference off",
     "keys": [{"kind": "address", "address": ABSENT}]},
]
TRUE_N, TRUE_OFFSET = 2.6, -3.0


def _rssi(distance: float) -> int:
    return round(-59 + TRUE_OFFSET - 10 * TRUE_N * math.log10(distance))


def survey(config: Path, answers: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hallway", "calibrate", "--venue", "--config", str(config),
         "--answers", str(answers), *args],
        capture_output=True, text=True, timeout=90, check=False, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "HALLWAY_TOKEN": TOKEN},
    )


def _daemon_config(tmp: Path) -> Path:
    import_contacts(tmp, CONTACTS)
    trace = tmp / "trace.jsonl"
    start = time.time() + 0.5
    write_trace(trace, beacon_rows(NEAR, start=start, duration_s=90, rssi=_rssi(1.0))
                + beacon_rows(FAR, start=start, duration_s=90, rssi=_rssi(4.0)))
    port = free_port()
    return write_config(tmp, port=port, trace=trace,
                          extra="# the organiser's own note, kept\n[proximity]\nnear_m = 3.0\n"
                          "path_loss_exponent = 2.0 # the default\n")


def test_a_survey_fits_the_venue_and_writes_the_config(tmp_path: Path) -> None:
    config = _daemon_config(tmp_path)
    before = config.read_text()
    answers = tmp_path / "answers.toml"
    answers.write_text('[[reference]]\ncontact = "ref-near"\ndistance_m = 1\n'
                       f'[[reference]]\naddress = "{FAR.lower()}"\ndistance_m = 4\n')
    daemon = start_daemon(tmp_path, config, port=0)
    try:
        daemon.wait_for_notification("READY=1", 20)
        time.sleep(3)  # both arrived and settled
        dry = survey(config, answers, "--seconds", "3", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "not written (--dry-run)" in dry.stdout
        assert config.read_text() == before
        # On a terminal's stead, the questions answered through stdin: one typo corrected.
        asked = subprocess.run(
            [sys.executable, "-m", "hallway", "calibrate", "--venue", "--config", str(config),
             "--seconds", "2", "--dry-run"],
            input=f"ref-near\n1\nibeacon=nope\n3\naddress={FAR}\n4\n\n\n\n",
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "HALLWAY_TOKEN": TOKEN})
        assert asked.returncode == 0, asked.stdout + asked.stderr
        assert "reference 1: " in asked.stdout
        assert "ibeacon: Value error" in asked.stderr
        assert "again, please" in asked.stderr
        assert f"[2/2] put address {FAR} at 4 m from the scanner" in asked.stdout
        assert "fit: fitted" in asked.stdout
        done = survey(config, answers, "--seconds", "4", "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        daemon.stop()
    out = done.stdout
    assert "contact ref-near at 1 m: level" in out
    assert f"address {FAR} at 4 m: level" in out  # the badge, found among the contacts
    measured = out.split("measured: path-loss exponent ")[1]
    assert abs(float(measured.split(",")[0]) - TRUE_N) < 0.3, out
    assert abs(float(measured.split("receive offset ")[1].split(" dB")[0]) - TRUE_OFFSET) < 1.5
    written = config.read_text()
    # The rest of the file is kept line for line; the old exponent line is replaced.
    assert "# the organiser's own note, kept" in written
    assert "near_m = 3.0" in written
    assert before.split("[proximity]")[0] == written.split("[proximity]")[0]
    loaded = load_config(config)
    refs = loaded.proximity.reference
    assert [(r.key, r.distance_m) for r in refs] == [("contact:ref-near", 1.0),
                                                    (f"address:{FAR}", 4.0)]
    assert 2.0 < loaded.proximity.path_loss_exponent <= TRUE_N + 0.3
    assert TRUE_OFFSET - 1.5 < loaded.proximity.receive_offset_db < 0.0
    assert loaded.proximity.near_m == 3.0
    assert sorted(p.name for p in tmp_path.glob(".hallway.toml.*")) == []  # no leftovers


def test_a_reference_not_heard_or_unknown_refuses_to_write(tmp_path: Path) -> None:
    config = _daemon_config(tmp_path)
    before = config.read_text()
    answers = tmp_path / "answers.toml"
    answers.write_text('[[reference]]\ncontact = "ref-near"\ndistance_m = 1\n'
                       '[[reference]]\ncontact = "ref-absent"\ndistance_m = 6\n'
                       f'[[reference]]\naddress = "{STRANGER}"\ndistance_m = 4\n')
    daemon = start_daemon(tmp_path, config, port=0)
    try:
        daemon.wait_for_notification("READY=1", 20)
        time.sleep(3)
        done = survey(config, answers, "--seconds", "2", "--yes")
    finally:
        daemon.stop()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "contact ref-absent was not heard (not present" in done.stderr
    assert f"address {STRANGER} was not heard (the daemon knows it neither" in done.stderr
    assert "NOT HEARD" in done.stdout
    assert config.read_text() == before
    gone = survey(config, answers, "--seconds", "1", "--yes")
    assert gone.returncode == 69
    assert config.read_text() == before


def test_bad_answers_are_named(tmp_path: Path) -> None:
    config = write_config(tmp_path, port=free_port())
    answers = tmp_path / "answers.toml"
    answers.write_text('[[reference]]\nibeacon = "not-a-uuid/1/2"\ndistance_m = 1\n')
    done = survey(config, answers)
    assert done.returncode == 2
    assert "reference 1: ibeacon: Value error, ibeacon uuid is not a UUID" in done.stderr
    answers.write_text('[[reference]]\ncontact = "a"\ndistance_m = 1\n'
                       '[[reference]]\ncontact = "a"\ndistance_m = 2\n')
    done = survey(config, answers)
    assert done.returncode == 2
    assert "contact a is named twice" in done.stderr


def test_the_config_text_keeps_everything_else(tmp_path: Path) -> None:
    refs = [ReferenceConfig(ibeacon="48570000-5c7a-4e0b-9b8e-3f1d2a6c9eaa/7/2", distance_m=8),
            ReferenceConfig(contact="badge-desk", distance_m=1.5)]
    text = ('# top\n[scanner]\nname = "hall"\n\n[[proximity.reference]]\ncontact = "old"\n'
            'distance_m = 2\n\n[storage]\ndatabase = "x.db"\n')
    new = survey_text(text, refs, exponent=2.345, offset_db=-2.04)
    assert new.startswith('# top\n[scanner]\nname = "hall"\n\n[storage]\ndatabase = "x.db"\n')
    assert '"old"' not in new
    assert "[proximity]\npath_loss_exponent = 2.35\nreceive_offset_db = -2.0\n" in new
    config = tmp_path / "c.toml"
    config.write_text(new)
    loaded = load_config(config)
    assert [r.key for r in loaded.proximity.reference] == [
        "ibeacon:48570000-5c7a-4e0b-9b8e-3f1d2a6c9eaa/7/2", "contact:badge-desk"]
    # An inline reference list is not rewritten behind the organiser's back.
    config.write_text('[proximity]\nreference = [{ contact = "a", distance_m = 1 }]\n')
    config.chmod(0o640)
    with pytest.raises(ConfigError) as info:
        write_survey(config, refs, exponent=2.0, offset_db=0.0)
    assert "inline" in str(info.value)
    assert config.read_text() == '[proximity]\nreference = [{ contact = "a", distance_m = 1 }]\n'
    config.write_text("[proximity]\n")
    write_survey(config, refs, exponent=2.0, offset_db=0.0)
    assert config.stat().st_mode & 0o777 == 0o640
