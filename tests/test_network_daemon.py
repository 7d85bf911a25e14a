"""``knows_of`` subscriptions on a real ``hallway run``: exactly the known people's events, and
a network import while it runs takes effect for the next arrival; the present request too."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

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

BADGES = {
    "ada": "C4:7C:8D:6A:00:01",
    "bob": "C4:7C:8D:6A:00:02",
    "cy": "C4:7C:8D:6A:00:03",
    "dee": "C4:7C:8D:6A:00:04",
}
CONTACTS = [
    {"id": "me", "name": "Me Myself", "knows": ["ada", "cy"]},
    {"id": "ada", "name": "Ada", "display": True,
     "keys": [{"kind": "address", "address": BADGES["ada"]}]},
    {"id": "bob", "name": "Bob", "match": {"emails": ["bob@babbage.example"]},
     "keys": [{"kind": "address", "address": BADGES["bob"]}]},
    {"id": "cy", "name": "Cy", "keys": [{"kind": "address", "address": BADGES["cy"]}]},
    {"id": "dee", "name": "Dee", "keys": [{"kind": "address", "address": BADGES["dee"]}]},
]
BOB_LATE_S = 10.0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hallway", *args], check=True, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


def test_knows_of_delivers_exactly_the_known_people(tmp_path: Path) -> None:
    import_contacts(tmp_path, CONTACTS)
    start = time.time() + 0.5
    rows = []
    for name, address in BADGES.items():
        offset = BOB_LATE_S if name == "bob" else 0.0
        rows += beacon_rows(address, start=start + offset, duration_s=60.0, every_s=0.25)
    trace = tmp_path / "trace.jsonl"
    write_trace(trace, rows)
    port = free_port()
    config = write_config(tmp_path, port=port, trace=trace)
    daemon = start_daemon(tmp_path, config, port=port)
    try:
        daemon.wait_for_notification("READY=1", 20)
        everyone = Client(port)
        assert everyone.subscribe()["type"] == "subscribed"
        known = Client(port)
        subscribed = known.subscribe(knows_of="me")
        assert subscribed["type"] == "subscribed"
        assert {p["contact"]["id"] for p in subscribed["present"]} <= {"ada", "cy"}

        seen_all: set[str] = set()
        for event in everyone.events(20):
            if event["type"] == "arrived":
                seen_all.add(event["contact"]["id"])
            if seen_all >= {"ada", "cy", "dee"}:
                break
        assert seen_all == {"ada", "cy", "dee"}, daemon.log()

        # The network import lands before Bob's badge shows up.
        people = tmp_path / "people.csv"
        people.write_text("email\nbob@babbage.example\nstranger@nowhere.example\n")
        result = _cli("contacts", "network", "import", "me", str(people), "--json",
                      "--db", str(tmp_path / "hallway.db"))
        assert '"matched": 1' in result.stdout

        got: list[dict[str, object]] = []
        deadline = time.monotonic() + BOB_LATE_S + 15
        arrived: set[str] = {p["contact"]["id"] for p in subscribed["present"]}
        for event in known.events(max(deadline - time.monotonic(), 0.1)):
            got.append(event)
            if event["type"] == "arrived":
                contact = event["contact"]
                assert isinstance(contact, dict)
                arrived.add(str(contact["id"]))
            if arrived == {"ada", "cy", "bob"}:
                break
        assert arrived == {"ada", "cy", "bob"}, (got, daemon.log())
        ids = {event["contact"]["id"] for event in got}  # type: ignore[index]
        assert ids <= {"ada", "cy", "bob"}
        contacts = [p["contact"] for p in subscribed["present"]]
        contacts += [e["contact"] for e in got]
        assert all(c["display"] is True for c in contacts if c["id"] == "ada")  # type: ignore[index]
        assert any(c["id"] == "ada" for c in contacts)  # type: ignore[index]

        # The present request takes the same filter: dee is present, and left out.
        asker = Client(port)
        asker.send({"type": "present", "token": TOKEN, "knows_of": "me"})
        present = asker.read()
        assert present["type"] == "present"
        assert {p["contact"]["id"] for p in present["present"]} == {"ada", "cy", "bob"}
        asker.close()

        # A resume replays the log through the same filter (with the knows of now).
        resumed = Client(port)
        assert resumed.subscribe(knows_of="me", since_seq=0)["type"] == "subscribed"
        replayed = [e for e in resumed.events(2.0) if e.get("type") == "arrived"]
        assert {e["contact"]["id"] for e in replayed} == {"ada", "cy", "bob"}
        resumed.close()

        # A knows_of that is not a contact id is a bad request.
        bad = Client(port)
        reply = bad.subscribe(knows_of=42)
        assert reply["type"] == "error"
        assert reply["code"] == "bad_request"
        for client in (everyone, known, bad):
            client.close()
    finally:
        daemon.stop()
    assert "stranger" not in daemon.log()
