"""The contacts CLI against real SQLite files: import/export round trip, bad lines, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hallway.cli import main

SPEC_CONTACT = (
    '{"id": "c-0001", "name": "Ada Lovelace", "org": "Analytical Engines", "title": "CTO", '
    '"handles": {"linkedin": "ada-lovelace", "twitter": "ada"}, "tags": ["speaker"], '
    '"consent": {"granted_at": "2026-11-21T09:00:00Z", "expires_at": "2026-11-23T00:00:00Z"}, '
    '"keys": [{"kind": "hallway-v1", "key": "75c734c6dd1a782de7a965da5eb93125"}, '
    '{"kind": "irk", "irk": "ec0234a357c8ad05341010a60a397d9b"}, '
    '{"kind": "ibeacon", "uuid": "426c7565-4368-6172-6d42-6561636f6e73", "major": 3838, '
    '"minor": 4949}, {"kind": "eddystone-uid", "namespace": "12345678901234678901", '
    '"instance": "000000000001"}, {"kind": "address", "address": "C4:7C:8D:6A:12:34"}]}'
)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def db_rows(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        contacts = conn.execute("SELECT * FROM contacts ORDER BY id").fetchall()
        keys = conn.execute("SELECT contact_id, kind, value FROM keys ORDER BY id").fetchall()
        consent = conn.execute("SELECT * FROM consent ORDER BY contact_id").fetchall()
    return [*contacts, *keys, *consent]


def test_spec_contact_round_trips_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "contacts.jsonl"
    src.write_text(SPEC_CONTACT + "\n")
    db1, db2 = tmp_path / "one.db", tmp_path / "two.db"
    assert run_cli(capsys, "contacts", "import", str(src), "--db", str(db1))[0] == 0
    code, out, _ = run_cli(capsys, "contacts", "list", "--db", str(db1))
    assert code == 0
    assert out.startswith("c-0001\tAda Lovelace (Analytical Engines)\t")
    code, out, _ = run_cli(capsys, "contacts", "show", "c-0001", "--db", str(db1))
    shown = json.loads(out)
    assert shown["name"] == "Ada Lovelace"
    assert "75c734c6dd1a782de7a965da5eb93125" not in out
    assert "ec0234a357c8ad05341010a60a397d9b" not in out
    code, revealed, _ = run_cli(
        capsys, "contacts", "show", "c-0001", "--db", str(db1), "--reveal-keys"
    )
    assert "ec0234a357c8ad05341010a60a397d9b" in revealed

    code, export1, _ = run_cli(capsys, "contacts", "export", "--db", str(db1))
    assert code == 0
    # The SPEC example is already in canonical form: the export is the very same object.
    assert json.loads(export1) == json.loads(SPEC_CONTACT)
    (tmp_path / "export1.jsonl").write_text(export1)
    assert run_cli(capsys, "contacts", "import", str(tmp_path / "export1.jsonl"),
                   "--db", str(db2))[0] == 0
    code, export2, _ = run_cli(capsys, "contacts", "export", "--db", str(db2))
    assert export2 == export1


@pytest.mark.parametrize(
    "irk",
    [
        '"irk": "ec0234a357c8ad05341010a60a397d9b"',
        '"irk": "irk:ec0234a357c8ad05341010a60a397d9b"',
        '"irk": "9b7d390aa610103405adc857a33402ec", "order": "lsb"',
        '"irk": "m305CqYQEDQFrchXozQC7A=="',
    ],
)
def test_irk_forms_are_stored_identically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], irk: str
) -> None:
    src = tmp_path / "c.jsonl"
    src.write_text('{"id": "x", "name": "X", "keys": [{"kind": "irk", ' + irk + "}]}\n")
    db = tmp_path / "h.db"
    assert run_cli(capsys, "contacts", "import", str(src), "--db", str(db))[0] == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM keys").fetchall() == [
            ("ec0234a357c8ad05341010a60a397d9b",)
        ]


def _contact(i: int, key: str | None = None) -> str:
    key = key or f"{i:032x}"
    return json.dumps({"id": f"c-{i}", "name": f"Person {i}",
                       "keys": [{"kind": "hallway-v1", "key": key}]})


def test_bad_lines_are_named_and_nothing_is_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "h.db"
    first = tmp_path / "first.jsonl"
    first.write_text(_contact(1) + "\n")
    assert run_cli(capsys, "contacts", "import", str(first), "--db", str(db))[0] == 0
    before = db_rows(db)

    lines = [
        _contact(2),
        '{"id": "c-3", "name": "No keys at all", "keys": [{"kind": "irk", "irk": "zz"}]}',
        _contact(4),
        _contact(2, key=f"{99:032x}"),  # duplicate id
        _contact(5, key=f"{4:032x}"),  # key claimed by line 3 (c-4)
        "{not json",
        _contact(6, key=f"{1:032x}"),  # key held by c-1 already in the store
        '{"id": "c-7"}',
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(capsys, "contacts", "import", str(bad), "--db", str(db))
    assert code != 0
    assert f"{bad}:2: keys[0]: irk must be" in err
    assert f"{bad}:4: id: duplicate id 'c-2'" in err
    assert f"{bad}:5: keys: a key of this contact is also claimed on line 3" in err
    assert f"{bad}:6: not valid JSON" in err
    assert f"{bad}:8: name: Field required" in err
    assert db_rows(db) == before

    # With the file-internal problems fixed, the clash with the stored contact still rejects.
    clash = tmp_path / "clash.jsonl"
    clash.write_text(_contact(2) + "\n" + _contact(6, key=f"{1:032x}") + "\n")
    code, _, err = run_cli(capsys, "contacts", "import", str(clash), "--db", str(db))
    assert code != 0
    assert f"{clash}:2: keys:" in err
    assert "held by contact 'c-1'" in err
    assert f"{1:032x}" not in err
    assert db_rows(db) == before


def test_csv_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "c.csv"
    src.write_text(
        "id,name,org,tags,handles,expires_at,irk,ibeacon\n"
        "c-1,Ada Lovelace,Engines,speaker;vip,linkedin=ada,2026-11-23T00:00:00Z,"
        "m305CqYQEDQFrchXozQC7A==,426c7565-4368-6172-6d42-6561636f6e73/3838/4949\n"
    )
    db = tmp_path / "h.db"
    assert run_cli(capsys, "contacts", "import", str(src), "--db", str(db))[0] == 0
    _, out, _ = run_cli(capsys, "contacts", "export", "--db", str(db))
    obj = json.loads(out)
    assert obj["tags"] == ["speaker", "vip"]
    assert obj["handles"] == {"linkedin": "ada"}
    assert obj["consent"] == {"expires_at": "2026-11-23T00:00:00Z"}
    assert obj["keys"][0] == {"kind": "irk", "irk": "ec0234a357c8ad05341010a60a397d9b"}
    assert obj["keys"][1]["major"] == 3838


def test_add_enroll_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "h.db"
    code, out, _ = run_cli(capsys, "contacts", "add", "--name", "Grace Hopper", "--org", "Navy",
                           "--handle", "linkedin=grace", "--tag", "speaker", "--db", str(db))
    assert code == 0
    assert out.strip() == "grace-hopper"
    png = tmp_path / "qr.png"
    code, out, _ = run_cli(capsys, "contacts", "enroll", "grace-hopper", "--db", str(db),
                           "--png", str(png))
    assert code == 0
    uri = out.strip().splitlines()[-1]
    assert uri.startswith("hallway://enroll?v=1&id=grace-hopper&k=")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import base64

    k = uri.rsplit("k=", 1)[1]
    key = base64.urlsafe_b64decode(k + "=" * (-len(k) % 4))
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM keys").fetchone() == (key.hex(),)
        conn.execute("INSERT INTO events VALUES (1, 1.0, 'arrived', 'grace-hopper', '{}')")
    assert run_cli(capsys, "contacts", "revoke", "grace-hopper", "--db", str(db))[0] == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM keys").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM contacts").fetchone() == (0,)
    code, _, err = run_cli(capsys, "contacts", "show", "grace-hopper", "--db", str(db))
    assert code != 0
    # A stale file cannot bring a revoked contact back by accident.
    again = tmp_path / "again.jsonl"
    again.write_text(_contact(1).replace("c-1", "grace-hopper") + "\n")
    code, _, err = run_cli(capsys, "contacts", "import", str(again), "--db", str(db))
    assert code != 0
    assert "was revoked" in err
    assert run_cli(capsys, "contacts", "import", str(again), "--db", str(db), "--readmit")[0] == 0


def test_sigkill_during_large_import_keeps_all_or_nothing(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    small = tmp_path / "small.jsonl"
    small.write_text(_contact(10_000_000) + "\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    cmd = [sys.executable, "-m", "hallway", "contacts", "import"]
    subprocess.run([*cmd, str(small), "--db", str(db)], check=True, env=env,
                   capture_output=True)
    big = tmp_path / "big.jsonl"
    count = 40_000
    big.write_text("".join(_contact(i) + "\n" for i in range(count)))
    outcomes = []
    for attempt in range(3):
        proc = subprocess.Popen([*cmd, str(big), "--db", str(db)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wal = tmp_path / "h.db-wal"
        deadline = time.monotonic() + 60
        # Wait until the import transaction is writing (the WAL grows), then kill mid-write.
        start_size = wal.stat().st_size if wal.exists() else 0
        while time.monotonic() < deadline and proc.poll() is None:
            if wal.exists() and wal.stat().st_size > start_size + 200_000 * (attempt + 1):
                break
            time.sleep(0.005)
        killed_mid_write = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            n = conn.execute("SELECT count(*) FROM contacts").fetchone()[0]
            k = conn.execute("SELECT count(*) FROM keys").fetchone()[0]
        assert (n, k) in ((1, 1), (count + 1, count + 1)), (n, k)
        outcomes.append((killed_mid_write, n))
        if n > 1:
            break
    assert any(mid and n == 1 for mid, n in outcomes), outcomes
