"""The ``present`` request (docs/protocol.md) on a running daemon: token first, filters as for
subscribe, live estimates; the connection may subscribe afterwards."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_env import (
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

ADA = "C4:7C:8D:6A:12:34"
BOB = "C4:7C:8D:6A:56:78"
CONTACTS = [
    {"id": "c-ada", "name": "Ada Lovelace", "tags": ["speaker"],
     "keys": [{"kind": "address", "address": ADA}]},
    {"id": "c-bob", "name": "Bob Babbage", "keys": [{"kind": "address", "address": BOB}]},
]


def _ask(port: int, **fields: object) -> dict[str, Any]:
    client = Client(port)
    try:
        client.send({"type": "present", **fields})
        return client.read()
    finally:
        client.close()


def test_present_request(tmp_path: Path) -> None:
    import_contacts(tmp_path, CONTACTS)
    start = time.time() + 0.5
    trace = tmp_path / "trace.jsonl"
    write_trace(trace, beacon_rows(ADA, start=start, duration_s=60)
                + beacon_rows(BOB, start=start, duration_s=60, rssi=-70))
    port = free_port()
    config = write_config(tmp_path, port=port, trace=trace)
    daemon = start_daemon(tmp_path, config, port=port)
    try:
        daemon.wait_for_notification("READY=1", 20)
        deadline = time.monotonic() + 15
        while len(_ask(port, token=TOKEN)["present"]) < 2:
            assert time.monotonic() < deadline, "both did not arrive"
            time.sleep(0.2)

        refused = Client(port)
        refused.send({"type": "present", "token": "wrong"})
        answer = refused.read()
        assert answer["type"] == "error"
        assert answer["code"] == "unauthorized"
        with pytest.raises(EOFError):
            refused.read()  # closed, and nothing about anyone was sent
        refused.close()

        everyone = _ask(port, token=TOKEN)["present"]
        assert [e["contact"]["id"] for e in everyone] == ["c-ada", "c-bob"]
        [ada, bob] = everyone
        assert ada["distance_m"] < bob["distance_m"]
        assert set(ada) >= {"contact", "zone", "distance_m", "rssi", "since"}
        speakers = _ask(port, token=TOKEN, tags=["speaker"])["present"]
        assert [e["contact"]["id"] for e in speakers] == ["c-ada"]
        only_bob = _ask(port, token=TOKEN, contacts=["c-bob"])["present"]
        assert [e["contact"]["id"] for e in only_bob] == ["c-bob"]
        assert _ask(port, token=TOKEN, contacts=[])["present"] == []
        bad = _ask(port, token=TOKEN, contacts="c-bob")
        assert bad["type"] == "error"
        assert bad["code"] == "bad_request"

        # The same connection can go on to subscribe.
        client = Client(port)
        client.send({"type": "present", "token": TOKEN})
        assert client.read()["type"] == "present"
        subscribed = client.subscribe()
        assert subscribed["type"] == "subscribed"
        client.close()
    finally:
        daemon.stop()
