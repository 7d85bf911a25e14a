"""A running daemon takes contact changes one contact at a time (single-scanner mode: the CLI
writes the store, the daemon reads the change log): a new contact resolves, a revoked absent
contact still gets its tombstone, expired consent purges like a revocation, and a revocation
made while the daemon was down is announced when it is back."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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

ADA, BOB, EVE = "C4:7C:8D:6A:12:34", "C4:7C:8D:6A:56:78", "C4:7C:8D:6A:9A:BC"


def _contact(cid: str, name: str, address: str, **extra: Any) -> dict[str, Any]:
    return {"id": cid, "name": name, "org": f"{name} Works",
            "keys": [{"kind": "address", "address": address}], **extra}


def _hallway(tmp: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "hallway", *args, "--db", str(tmp / "hallway.db")],
                   check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def _until(client: Client, want: set[tuple[str, str]], timeout_s: float,
           got: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Read events into ``got`` (everything so far) until it holds every wanted one."""
    def done() -> bool:
        return want <= {(e["type"], e["contact"]["id"]) for e in got}

    if not done():
        for event in client.events(timeout_s):
            got.append(event)
            if done():
                break
    return got


def test_contact_changes_reach_the_running_daemon_one_by_one(tmp_path: Path) -> None:
    expires = datetime.fromtimestamp(time.time() + 20, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    import_contacts(tmp_path, [
        _contact("c-ada", "Ada Lovelace", ADA),
        _contact("c-carl", "Carl Absent", "C4:7C:8D:6A:00:01"),
        _contact("c-eve", "Eve Expiring", EVE, consent={"expires_at": expires}),
    ])
    start = time.time() + 0.5
    rows = [*beacon_rows(ADA, start=start, duration_s=120),
            *beacon_rows(BOB, start=start, duration_s=120, every_s=0.3),
            *beacon_rows(EVE, start=start, duration_s=120, every_s=0.25)]
    trace = tmp_path / "trace.jsonl"
    write_trace(trace, rows)
    port = free_port()
    config = write_config(tmp_path, port=port, trace=trace)
    daemon = start_daemon(tmp_path, config, port=port)
    try:
        daemon.wait_for_notification("READY=1", 20)
        client = Client(port)
        client.subscribe()
        seen: list[dict[str, Any]] = []
        _until(client, {("arrived", "c-ada"), ("arrived", "c-eve")}, 20, seen)
        assert {("arrived", "c-ada"), ("arrived", "c-eve")} <= {
            (e["type"], e["contact"]["id"]) for e in seen}, daemon.log()

        # A new contact (Bob's badge was on the air all along) resolves within the interval.
        src = tmp_path / "bob.jsonl"
        src.write_text(json.dumps(_contact("c-bob", "Bob Babbage", BOB)) + "\n")
        _hallway(tmp_path, "contacts", "import", str(src))
        got = _until(client, {("arrived", "c-bob")}, 10, seen)
        assert ("arrived", "c-bob") in {(e["type"], e["contact"]["id"]) for e in got}

        # Carl is not present: his revocation still goes out, as a tombstone with his id only.
        _hallway(tmp_path, "contacts", "revoke", "c-carl")
        revoked_at = time.monotonic()  # the 2 s run from the revoke's return
        got = _until(client, {("revoked", "c-carl")}, 5, seen)
        assert time.monotonic() - revoked_at <= 2.0
        [tomb] = [e for e in got if e["contact"]["id"] == "c-carl"]
        assert tomb == {"type": "revoked", "seq": tomb["seq"], "ts": tomb["ts"],
                        "scanner": "test-kiosk", "contact": {"id": "c-carl"}}

        # Eve's consent ends: she departs (id only), a tombstone follows, her log is purged.
        got = _until(client, {("revoked", "c-eve")}, 40, seen)
        eve = [(e["type"], e.get("reason"), e["contact"]) for e in got
               if e["contact"]["id"] == "c-eve"]
        assert eve[-2:] == [("departed", "revoked", {"id": "c-eve"}),

                            ("revoked", None, {"id": "c-eve"})], eve
        last_seq = max(e["seq"] for e in got)
        client.close()
        time.sleep(0.5)
        with sqlite3.connect(tmp_path / "hallway.db") as db:
            rows_eve = db.execute("SELECT type FROM events WHERE contact_id = 'c-eve' "
                                  "ORDER BY seq").fetchall()
            payloads = [p for (p,) in db.execute("SELECT payload FROM events")]
        assert [kind for (kind,) in rows_eve] == ["departed", "revoked"]
        assert not any("Eve" in p or "Carl" in p for p in payloads)
        # Each change cost one contact's work: no reload of everyone.
        changed = [json.loads(line) for line in daemon.log().splitlines()
                   if '"contacts_changed"' in line]
        assert changed
        assert all(entry["changes"] == 1 for entry in changed), changed
        assert daemon.stop() == 0
    finally:
        daemon.stop()

    # Ada is revoked while the daemon is down; when it is back it says so first.
    _hallway(tmp_path, "contacts", "revoke", "c-ada")
    daemon = start_daemon(tmp_path, config, port=port)
    try:
        daemon.wait_for_notification("READY=1", 20)
        client = Client(port)
        client.subscribe(since_seq=last_seq)
        got = _until(client, {("revoked", "c-ada")}, 10, [])
        ada = [e for e in got if e["contact"]["id"] == "c-ada"]
        assert [e["type"] for e in ada] == ["revoked"], got
        assert ada[0]["contact"] == {"id": "c-ada"}
        client.close()
    finally:
        daemon.stop()
