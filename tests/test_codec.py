"""hallway.codec: one byte form per event, wherever it is read (socket, log, replay file)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hallway import codec
from hallway.cli import main
from hallway.contacts_io import parse_contacts
from hallway.hub import Hub
from hallway.models import (
    Contact,
    DepartReason,
    EventType,
    KeyKind,
    PresenceEvent,
)
from hallway.store import SqliteStore


def test_encode_is_compact_and_keeps_non_ascii() -> None:
    obj = {"a": 1, "name": "Zoë Ångström", "list": [1.5, None, True]}
    text = codec.encode(obj)
    assert text == '{"a":1,"name":"Zoë Ångström","list":[1.5,null,true]}'
    assert codec.encode_line(obj) == (text + "\n").encode()
    assert codec.encode_bytes(obj) == text.encode()
    assert codec.decode(text) == obj
    assert codec.decode(text.encode() + b"\r\n") == obj


@pytest.mark.parametrize("data", [
    b"\xff\xfe", "not json", "[1, 2]", '"text"', "", "[" * 100_000 + "]" * 100_000,
    '{"a": 1} trailing',
])
def test_decode_refuses_anything_but_one_object(data: str | bytes) -> None:
    with pytest.raises(codec.DecodeError) as caught:
        codec.decode(data)
    assert isinstance(caught.value, ValueError)
    assert "trailing" not in str(caught.value)  # the input is not echoed


def test_event_field_readers_and_redaction() -> None:
    full = codec.encode({"type": "arrived", "seq": 3, "ts": 12.5,
                         "contact": {"id": "c-1", "name": "Ada", "tags": ["speaker", 7]}})
    assert codec.filter_keys(full) == ("c-1", frozenset({"speaker"}))
    assert codec.event_ts(full) == 12.5
    redacted = codec.redact_contact(full, "c-1")
    assert redacted == '{"type":"arrived","seq":3,"ts":12.5,"contact":{"id":"c-1"}}'
    assert codec.filter_keys(redacted) == ("c-1", None)
    assert codec.filter_keys('{"contact": {"id": "c-2", "name": "G"}}') == ("c-2", frozenset())
    with pytest.raises(codec.DecodeError):
        codec.event_ts('{"ts": true}')


def _event_of(obj: dict[str, object]) -> PresenceEvent:
    """The tracker decision behind a SPEC §5 event object (inverse of events.event_json)."""

    def num(key: str) -> float | None:
        value = obj.get(key)
        return None if value is None else float(value)  # type: ignore[arg-type]

    contact = obj["contact"]
    assert isinstance(contact, dict)
    reason = obj.get("reason")
    return PresenceEvent(
        EventType(obj["type"]), float(obj["ts"]), contact["id"],  # type: ignore[arg-type]
        zone=obj.get("zone"), distance_m=num("distance_m"),  # type: ignore[arg-type]
        rssi=num("rssi"), via=KeyKind(obj["via"]),  # type: ignore[arg-type]
        previous_zone=obj.get("previous_zone"), dwell_s=num("dwell_s"),  # type: ignore[arg-type]
        reason=None if reason is None else DepartReason(reason),  # type: ignore[arg-type]
    )


def test_replay_output_is_byte_identical_to_what_a_subscriber_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    venue = tmp_path / "booth"
    assert main(["simulate", "--scenario", "booth", "--seed", "5", "--duration", "400",
                 "--out", str(venue)]) == 0
    contacts, _ = parse_contacts((venue / "contacts.jsonl").read_text(), file="contacts")
    # Names with characters outside ASCII, which an escaping encoder would write otherwise.
    contacts = [Contact(id=c.id, name=f"Zoë “{c.name}”", org=c.org, handles=c.handles,
                        tags=c.tags, keys=c.keys) for c in contacts]
    db = tmp_path / "hallway.db"
    out = tmp_path / "events.jsonl"

    async def import_contacts() -> None:
        store = await SqliteStore.open(db)
        try:
            await store.import_contacts(contacts)
        finally:
            await store.close()

    asyncio.run(import_contacts())
    assert main(["replay", str(venue / "trace.jsonl"), "--db", str(db), "--config",
                 str(venue / "venue.toml"), "--out", str(out)]) == 0
    capsys.readouterr()
    replayed = out.read_bytes()
    lines = replayed.splitlines(keepends=True)
    assert len(lines) >= 4
    assert "Zoë".encode() in replayed

    async def through_the_hub() -> bytes:
        store = await SqliteStore.open(tmp_path / "hub.db")
        table = {c.id: c for c in contacts}
        hub = Hub(store, scanner="hallway", contact_lookup=table.get, retention_s=1e9,
                  retention_count=100_000)
        await hub.start()
        try:
            sub = hub.subscribe()
            hub.publish([_event_of(codec.decode(line)) for line in lines])
            got: list[bytes] = []
            async with asyncio.timeout(10):
                while len(got) < len(lines):
                    batch = await sub.get(5.0)
                    assert batch is not None
                    got.extend(batch)
            logged = await store.events_after(0, limit=len(lines) + 1)
            assert b"".join(codec.line_of(row.payload) for row in logged) == b"".join(got)
            return b"".join(got)
        finally:
            await hub.close()
            await store.close()

    assert asyncio.run(through_the_hub()) == replayed


async def test_a_redacted_log_row_keeps_the_wire_form(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "redact.db")
    try:
        payload = codec.encode({"type": "arrived", "seq": 1, "ts": 1.0,
                                "contact": {"id": "c-1", "name": "Zoë"}, "zone": "near"})
        await store.append_events([(1, 1.0, "arrived", "c-1", payload)])
        assert await store.redact_contact_events("c-1") == 1
        (row,) = await store.events_after(0)
        assert row.payload == codec.redact_contact(payload, "c-1")
        assert "Zoë" not in row.payload
    finally:
        await store.close()
