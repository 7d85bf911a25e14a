"""SPEC §1 ``display`` and ``knows`` through the model, the store, JSON Lines/CSV import and
export, ``contacts add/show``, the event's contact object and revocation (real SQLite files)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from hallway.cli import main
from hallway.contacts_io import parse_contacts
from hallway.events import contact_public
from hallway.models import Contact
from hallway.network.hashing import hash_id
from hallway.store import MIGRATIONS, SqliteStore
from hallway.store.migrations import statements


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


LINES = [
    {"id": "ada", "name": "Ada Lovelace", "display": True, "knows": ["bob", "zed", "ada"],
     "match": {"emails": ["Ada@Example.ORG"], "phones": ["+44 20 7946 0000"]}},
    {"id": "bob", "name": "Bob Babbage", "knows": ["ada"]},
    {"id": "cy", "name": "Cy Clone", "display": False},
]


def write_jsonl(path: Path, lines: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def all_bytes(db: Path) -> bytes:
    data = db.read_bytes()
    wal = db.with_name(db.name + "-wal")
    return data + (wal.read_bytes() if wal.exists() else b"")


def test_jsonl_round_trip_ignores_unenrolled_and_hides_match(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "h.db"
    src = write_jsonl(tmp_path / "c.jsonl", LINES)
    assert run_cli(capsys, "contacts", "import", str(src), "--db", str(db))[0] == 0
    code, out, _ = run_cli(capsys, "contacts", "export", "--db", str(db))
    assert code == 0
    exported = {obj["id"]: obj for obj in map(json.loads, out.splitlines())}
    # "zed" is not enrolled (ignored), "ada" knowing herself is dropped.
    assert exported["ada"]["display"] is True
    assert exported["ada"]["knows"] == ["bob"]
    assert exported["bob"]["knows"] == ["ada"]
    assert "display" not in exported["cy"]
    assert "knows" not in exported["cy"]
    assert "example" not in out.lower()
    assert "7946" not in out
    assert "match" not in out
    # Enrolling "zed" later makes the stored id count.
    extra = write_jsonl(tmp_path / "z.jsonl", [{"id": "zed", "name": "Zed"}])
    assert run_cli(capsys, "contacts", "import", str(extra), "--db", str(db))[0] == 0
    _, out, _ = run_cli(capsys, "contacts", "export", "--db", str(db))
    exported = {obj["id"]: obj for obj in map(json.loads, out.splitlines())}
    assert exported["ada"]["knows"] == ["bob", "zed"]
    # Re-importing the export (which has no match field) keeps the match hashes.
    again = tmp_path / "export.jsonl"
    again.write_text(out, encoding="utf-8")
    assert run_cli(capsys, "contacts", "import", str(again), "--db", str(db))[0] == 0
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT contact_id FROM match_ids WHERE hashed = 1").fetchall()
    assert rows == [("ada",), ("ada",)]


def test_match_values_are_stored_only_as_salted_hashes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_jsonl(tmp_path / "c.jsonl", LINES)
    hashes = []
    for name in ("one.db", "two.db"):
        db = tmp_path / name
        assert run_cli(capsys, "contacts", "import", str(src), "--db", str(db))[0] == 0
        blob = all_bytes(db)
        for needle in (b"ada@example.org", b"Ada@Example.ORG", b"442079460000", b"7946"):
            assert needle not in blob
        with sqlite3.connect(db) as conn:
            (salt,) = conn.execute("SELECT salt FROM network_salt").fetchone()
            stored = {h for (h,) in conn.execute("SELECT ident FROM match_ids WHERE hashed = 1")}
        assert len(salt) == 32
        assert stored == {"h:" + hash_id(salt, "email:ada@example.org").hex(),
                          "h:" + hash_id(salt, "phone:+442079460000").hex()}
        hashes.append(stored)
    assert hashes[0].isdisjoint(hashes[1])  # the same email hashes differently per database


def test_csv_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "h.db"
    src = tmp_path / "c.csv"
    src.write_text(
        "id,name,display,knows,emails,phones\n"
        'ada,"Lovelace, Ada",yes,bob;cy,ada@example.org,+1 415 555 0100\n'
        "bob,Bob,,ada,,\n"
        "cy,Cy,false,,,\n",
        encoding="utf-8",
    )
    assert run_cli(capsys, "contacts", "import", str(src), "--db", str(db))[0] == 0
    _, out, _ = run_cli(capsys, "contacts", "export", "--db", str(db))
    exported = {obj["id"]: obj for obj in map(json.loads, out.splitlines())}
    assert exported["ada"]["display"] is True
    assert exported["ada"]["knows"] == ["bob", "cy"]
    assert exported["bob"].get("display") is None
    assert exported["bob"]["knows"] == ["ada"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM match_ids WHERE hashed = 1").fetchone() == (2,)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name,display,phones\nada,Ada,maybe,\nbob,Bob,,0123 456\n",
                   encoding="utf-8")
    code, _, err = run_cli(capsys, "contacts", "import", str(bad), "--db", str(db))
    assert code == 65
    assert "bad.csv:2: display must be true or false" in err
    assert "bad.csv:3: match.phones[0]" in err
    assert "0123" not in err


def test_bad_match_values_are_named_not_quoted() -> None:
    text = json.dumps({"id": "a", "name": "A", "match": {"emails": ["not-an-address"]}})
    with pytest.raises(Exception, match=r"match\.emails\[0\]: not an email address") as info:
        parse_contacts(text)
    assert "not-an-address" not in str(info.value)
    text = json.dumps({"id": "a", "name": "A", "knows": [""]})
    with pytest.raises(Exception, match=r"knows\[0\]"):
        parse_contacts(text)


def test_add_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "h.db"
    assert run_cli(capsys, "contacts", "add", "--name", "Bob", "--id", "bob",
                   "--db", str(db))[0] == 0
    code, _, _ = run_cli(capsys, "contacts", "add", "--name", "Ada", "--id", "ada", "--display",
                         "--knows", "bob, ghost", "--email", "ada@example.org",
                         "--phone", "+33 1 23 45 67 89", "--db", str(db))
    assert code == 0
    code, out, _ = run_cli(capsys, "contacts", "show", "ada", "--db", str(db))
    shown = json.loads(out)
    assert shown["match_hashes"] == 2
    assert shown["display"] is True
    assert shown["knows"] == ["bob"]
    assert "example" not in out
    assert "45 67" not in out
    code, _, err = run_cli(capsys, "contacts", "add", "--name", "Cy", "--phone", "01 23 45 67 89",
                           "--db", str(db))
    assert code == 1
    assert "--phone" in err
    assert "45 67" not in err


async def test_revocation_removes_from_every_knows(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    contacts = [
        Contact(id="ada", name="Ada", knows=frozenset({"bob", "cy"})),
        Contact(id="bob", name="Bob", knows=frozenset({"ada", "cy"})),
        Contact(id="cy", name="Cy", knows=frozenset({"ada"})),
    ]
    async with await SqliteStore.open(db) as store:
        await store.import_contacts(contacts)
        generation = await store.generation()
        await store.revoke("cy", now=1.0)
        assert await store.generation() > generation
        loaded = {c.id: c.knows for c in await store.list_contacts()}
        assert loaded == {"ada": {"bob"}, "bob": {"ada"}}
        assert (await store.get_contact("ada")).knows == {"bob"}
        # A file still naming the revoked id does not put it back, even after a readmit.
        await store.import_contacts([Contact(id="ada", name="Ada", knows=frozenset({"cy"}))])
        await store.import_contacts([Contact(id="cy", name="Cy")], readmit=True)
        assert (await store.get_contact("ada")).knows == frozenset()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM knows WHERE known_id = 'cy'").fetchone() == (0,)


async def test_version_3_database_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        for script in MIGRATIONS[:3]:
            conn.executescript(script)
        conn.execute("PRAGMA user_version = 3")
        conn.execute("INSERT INTO contacts (id, name, handles) VALUES ('old', 'Old Timer', "
                     "'{\"linkedin\": \"https://www.linkedin.com/in/old-timer\"}')")
    async with await SqliteStore.open(db) as store:
        (old,) = await store.list_contacts()
        assert old.display is False
        assert old.knows == frozenset()
        assert len(await store.network_salt()) == 32
        # Handles stored before the migration become match identifiers on first use.
        assert await store.match_rows({"linkedin:old-timer"}) == []
        assert await store.ensure_match_ids() is True
        assert await store.match_rows({"linkedin:old-timer"}) == [("linkedin:old-timer", "old")]
        assert await store.ensure_match_ids() is False


def test_event_contact_object_carries_display_and_knows() -> None:
    ada = Contact(id="ada", name="Ada", display=True, knows=frozenset({"cy", "bob"}),
                  match=("email:ada@example.org",))
    assert contact_public(ada, "ada") == {"id": "ada", "name": "Ada", "display": True,
                                         "knows": ["bob", "cy"]}
    assert contact_public(Contact(id="bob", name="Bob"), "bob") == {"id": "bob", "name": "Bob"}


async def test_version_4_match_hashes_move_to_match_ids(tmp_path: Path) -> None:
    db = tmp_path / "v4.db"
    with sqlite3.connect(db) as conn:
        for script in MIGRATIONS[:4]:
            for statement in statements(script):
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 4")
        conn.execute("INSERT INTO contacts (id, name, handles) VALUES ('bob', 'Bob', "
                     "'{\"x\": \"@bobby\"}')")
        (salt,) = conn.execute("SELECT salt FROM network_salt").fetchone()
        digest = hash_id(salt, "email:bob@babbage.example")
        conn.execute("INSERT INTO match_hashes VALUES (?, 'bob')", (digest,))
    async with await SqliteStore.open(db) as store:
        rows = await store.match_rows({"h:" + digest.hex(), "x:bobby"})
        assert rows == [("h:" + digest.hex(), "bob")]  # handles wait for ensure_match_ids
        assert await store.ensure_match_ids() is True
        rows = await store.match_rows({"h:" + digest.hex(), "x:bobby"})
        assert sorted(rows) == [("h:" + digest.hex(), "bob"), ("x:bobby", "bob")]
    with sqlite3.connect(db) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert "match_hashes" not in tables
