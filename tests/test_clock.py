"""Time that cannot be hijacked: the live daemon keeps wall time; ``hallway replay`` trace time.

A ``hallway run`` process plays a trace whose clock is ten years ahead. Without the clamp the
daemon followed the source's clock, so a contact whose consent runs for another hour was
already expired there: never arrived, and was dropped at the next tick. With it, the source
is flagged (status, WARNING log) and its timestamps are moved onto the wall clock, so the
contact arrives and stays, and events carry wall time. The same trace through ``hallway
replay`` keeps its own time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
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

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

ADA = "C4:7C:8D:6A:12:34"
TEN_YEARS_S = 10 * 365 * 86400.0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _status(config: Path) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "hallway", "status", "--config", str(config), "--json"],
        capture_output=True, text=True, timeout=30, check=False,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    reply: dict[str, object] = json.loads(result.stdout)
    return reply


def test_far_future_trace_is_clamped_and_consent_keeps_wall_time(tmp_path: Path) -> None:
    now = time.time()
    import_contacts(tmp_path, [{"id": "c-ada", "name": "Ada Lovelace",
                                "keys": [{"kind": "address", "address": ADA}],
                                "consent": {"expires_at": _iso(now + 3600)}}])
    trace = tmp_path / "future.jsonl"
    write_trace(trace, beacon_rows(ADA, start=now + TEN_YEARS_S, duration_s=60, rssi=-50))
    port = free_port()
    config = write_config(tmp_path, port=port, trace=trace)
    daemon = start_daemon(tmp_path, config, port=port)
    try:
        daemon.wait_for_notification("READY=1", 20)
        client = Client(port)
        client.subscribe()
        events = list(client.events(8.0))
        arrived = [e for e in events if e.get("type") == "arrived"]
        status = _status(config)
        client.close()
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert [e["contact"]["id"] for e in arrived] == ["c-ada"], [
        (e["type"], e.get("reason"), e["ts"]) for e in events]
    assert abs(arrived[0]["ts"] - time.time()) < 60  # wall time, not the trace's
    assert status["present"] == 1
    assert int(str(status["clock_clamped"])) > 10
    assert float(str(status["clock_runaway_s"])) > TEN_YEARS_S - 120
    log = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    flagged = [e for e in log if e.get("event") == "source_clock_clamped"]
    assert flagged, "the runaway clock was not logged"
    assert flagged[0]["level"] == "warning"
    assert not [e for e in log if e.get("reason") == "revoked" or "expired" in str(e)]


def test_replay_keeps_trace_time(tmp_path: Path) -> None:
    now = time.time()
    import_contacts(tmp_path, [{"id": "c-ada", "name": "Ada Lovelace",
                                "keys": [{"kind": "address", "address": ADA}]}])
    trace = tmp_path / "future.jsonl"
    write_trace(trace, beacon_rows(ADA, start=now + TEN_YEARS_S, duration_s=30, rssi=-50))
    out = tmp_path / "events.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "hallway", "replay", str(trace), "--db",
         str(tmp_path / "hallway.db"), "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    arrived = [e for e in events if e["type"] == "arrived"]
    assert arrived
    assert arrived[0]["ts"] > now + TEN_YEARS_S - 1
