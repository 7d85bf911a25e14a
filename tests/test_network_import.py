"""Network import: exports built as the services write them, matched against a real store
through the CLI; exact counts, and nothing of a non-match anywhere (database, WAL, output)."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hallway.cli import main
from hallway.errors import NetworkFileError
from hallway.network import normalise
from hallway.network.formats import (
    MAX_ZIP_MEMBER_BYTES,
    decode_text,
    detect_format,
    read_entries,
)
from hallway.network.match import MatchIndex, match_entries, match_network
from tests.network_files import linkedin_csv, vcard3, vcard4, x_archive, ytd

CONTACTS = [
    {"id": "ada", "name": "Ada Lovelace", "handles": {"linkedin": "ada-lovelace", "x": "id:1001"}},
    {"id": "bob", "name": "Bob Babbage", "knows": ["me"],
     "match": {"emails": ["bob@babbage.example"], "phones": ["+44 20 7946 0001"]}},
    {"id": "cy", "name": "Cy Clone",
     "handles": {"linkedin": "https://www.linkedin.com/in/cy-clone/", "twitter": "@CyC"}},
    {"id": "dup1", "name": "Dup One", "handles": {"linkedin": "shared-name"}},
    {"id": "dup2", "name": "Dup Two", "handles": {"linkedin": "linkedin.com/in/shared-name"}},
    {"id": "dee", "name": "Dee Dial", "match": {"phones": ["+1 415 555 0100"]},
     "handles": {"twitter": "https://twitter.com/intent/user?user_id=2002"}},
    {"id": "me", "name": "Me Myself", "handles": {"linkedin": "me-myself"},
     "match": {"emails": ["me@example.org"]}},
    {"id": "charles", "name": "Charles Babbage"},
]

LINKEDIN_ROWS = [
    ("Ada", "Lovelace", "https://www.linkedin.com/in/ada-lovelace/", "", "Analytical Engines",
     "CTO, Founder", "01 Mar 2024"),
    ("Bob", "Babbage", "https://www.linkedin.com/in/bob-not-enrolled-9f", "BOB@Babbage.example",
     "Difference Ltd", "Engineer", "02 Mar 2024"),
    ("Grace", "Hopper", "https://www.linkedin.com/in/grace-hopper-x1", "grace@navy.example",
     "Navy, Reserve", "Rear Admiral", "03 Mar 2024"),
    ("Charles", "Babbage", "https://www.linkedin.com/in/charles-b-77", "", "Cambridge",
     "Professor", "04 Mar 2024"),
    ("Cy", "Clone", "https://linkedin.com/in/CY-CLONE?trk=people", "", "", "", "05 Mar 2024"),
    ("Shared", "Name", "https://www.linkedin.com/in/shared-name", "", "", "", "06 Mar 2024"),
    ("Me", "Myself", "https://www.linkedin.com/in/me-myself", "", "", "", "07 Mar 2024"),
    ("Zoë", "Ünicode", "", "", "Société Générale", "Directrice", "08 Mar 2024"),
]
LINKEDIN_SECRETS = ["Grace", "Hopper", "grace-hopper-x1", "grace@navy.example", "charles-b-77",
                    "bob-not-enrolled-9f", "Zoë", "Ünicode", "Société", "Analytical",
                    "Rear Admiral", "Navy"]


def run_cli(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capfd.readouterr()
    return code, out, err


@pytest.fixture
def db(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "h.db"
    src = tmp_path / "contacts.jsonl"
    src.write_text("".join(json.dumps(c) + "\n" for c in CONTACTS), encoding="utf-8")
    assert run_cli(capfd, "contacts", "import", str(src), "--db", str(path))[0] == 0
    return path


def knows(db: Path, person: str) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute(
            "SELECT known_id FROM knows WHERE contact_id = ? ORDER BY known_id", (person,))]


def assert_nowhere(db: Path, texts: list[str], *outputs: str) -> None:
    """None of ``texts`` in the database file, its WAL, or the outputs (any case)."""
    blob = db.read_bytes()
    wal = db.with_name(db.name + "-wal")
    if wal.exists():
        blob += wal.read_bytes()
    for text in texts:
        for encoding in ("utf-8", "utf-16-le", "cp1252"):
            try:
                needle = text.encode(encoding)
            except UnicodeEncodeError:
                continue
            assert needle not in blob, (text, encoding)
            assert text.lower().encode(encoding) not in blob.lower(), (text, encoding)
        for output in outputs:
            assert text.lower() not in output.lower(), text


def import_file(capfd: pytest.CaptureFixture[str], db: Path, path: Path, *extra: str,
                person: str = "me") -> tuple[dict[str, int], str]:
    code, out, err = run_cli(capfd, "contacts", "network", "import", person, str(path),
                             "--db", str(db), "--json", *extra)
    assert code == 0, err
    counts: dict[str, int] = json.loads(out)
    return counts, out + err


# -- LinkedIn ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("encoding", "bom"), [
    ("utf-8", b""), ("utf-8", b"\xef\xbb\xbf"), ("cp1252", b""), ("utf-16-le", b"\xff\xfe"),
    ("utf-16-le", b""),
])
def test_linkedin_connections_exact_counts_and_no_trace(
    tmp_path: Path, db: Path, capfd: pytest.CaptureFixture[str], encoding: str, bom: bytes
) -> None:
    path = tmp_path / "Connections.csv"
    path.write_bytes(bom + linkedin_csv(LINKEDIN_ROWS).encode(encoding))
    counts, output = import_file(capfd, db, path)
    assert counts == {"read": 8, "matched": 3, "ambiguous": 1, "ignored": 4, "knows": 3}
    assert knows(db, "me") == ["ada", "bob", "cy"]
    assert_nowhere(db, LINKEDIN_SECRETS, output)


def test_linkedin_never_matches_by_name(db: Path) -> None:
    rows = [("Charles", "Babbage", "", "", "", "", "")]
    text = linkedin_csv(rows).encode()
    index = MatchIndex.build(b"salt", handles=[("charles", {"linkedin": "x"})])
    result = match_network(text, index, person_id="me", fmt="linkedin")
    assert (result.read, result.matched, result.ignored) == (1, 0, 1)


def test_mutual_only_keeps_people_who_list_each_other(
    tmp_path: Path, db: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "Connections.csv"
    path.write_text(linkedin_csv(LINKEDIN_ROWS), encoding="utf-8")
    counts, _ = import_file(capfd, db, path, "--mutual-only")
    # bob lists me; ada and cy do not.
    assert counts == {"read": 8, "matched": 1, "ambiguous": 1, "ignored": 6, "knows": 1}
    assert knows(db, "me") == ["bob"]


def test_clear_and_revocation(tmp_path: Path, db: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "Connections.csv"
    path.write_text(linkedin_csv(LINKEDIN_ROWS), encoding="utf-8")
    import_file(capfd, db, path)
    assert run_cli(capfd, "contacts", "revoke", "cy", "--db", str(db))[0] == 0
    assert knows(db, "me") == ["ada", "bob"]
    code, _, err = run_cli(capfd, "contacts", "network", "clear", "me", "--db", str(db))
    assert code == 0
    assert "2 entries" in err
    assert knows(db, "me") == []
    assert knows(db, "bob") == ["me"]  # someone else's knows is theirs
    code, _, err = run_cli(capfd, "contacts", "network", "clear", "nobody", "--db", str(db))
    assert code == 1


def test_import_adds_and_replace_replaces(
    tmp_path: Path, db: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    first = tmp_path / "a.csv"
    first.write_text("email\nbob@babbage.example\n", encoding="utf-8")
    second = tmp_path / "b.csv"
    second.write_text("x\n@cyc\n", encoding="utf-8")
    assert import_file(capfd, db, first)[0]["knows"] == 1
    assert import_file(capfd, db, second)[0]["knows"] == 2
    assert knows(db, "me") == ["bob", "cy"]
    assert import_file(capfd, db, second, "--replace")[0]["knows"] == 1
    assert knows(db, "me") == ["cy"]


# -- X archive -----------------------------------------------------------------------------------

FOLLOWING = [("1001", None), ("2002", None), ("3003", "CyC"), ("4004", None)]
FOLLOWERS = [("1001", None), ("5005", "stranger_x"), ("3003", "cyc")]


def test_x_archive_zip(tmp_path: Path, db: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "twitter-2026-11-30-abc.zip"
    path.write_bytes(x_archive(ytd("following", FOLLOWING), ytd("follower", FOLLOWERS)))
    counts, output = import_file(capfd, db, path)
    # Distinct accounts 1001, 2002, 3003, 4004, 5005: ada by id, dee by id, cy by screen name.
    assert counts == {"read": 5, "matched": 3, "ambiguous": 0, "ignored": 2, "knows": 3}
    assert knows(db, "me") == ["ada", "cy", "dee"]
    assert_nowhere(db, ["4004", "5005", "stranger_x"], output)


def test_x_following_js_alone(tmp_path: Path, db: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "following.js"
    path.write_bytes(b"\xef\xbb\xbf" + ytd("following", FOLLOWING).encode())
    counts, _ = import_file(capfd, db, path)
    assert counts == {"read": 4, "matched": 3, "ambiguous": 0, "ignored": 1, "knows": 3}


def test_x_archive_without_lists_is_refused(
    tmp_path: Path, db: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("data/tweets.js", "window.YTD.tweets.part0 = []")
    path = tmp_path / "archive.zip"
    path.write_bytes(out.getvalue())
    code, _, err = run_cli(capfd, "contacts", "network", "import", "me", str(path),
                           "--db", str(db))
    assert code == 65
    assert "no following.js or follower.js" in err
    assert knows(db, "me") == []


# -- vCard ---------------------------------------------------------------------------------------

VCARD_SECRETS = ["stranger@nowhere.example", "+33612345678", "612345678", "Stranger",
                 "Nobody Known", "+442079460999", "79460999"]


def test_vcard_3_apple(tmp_path: Path, db: Path, capfd: pytest.CaptureFixture[str]) -> None:
    text = (
        vcard3("Bob Babbage", emails=["Bob@Babbage.example"], phones=["+44 20 7946 0001"])
        + vcard3("Dee Dial", phones=["+1 (415) 555-0100"])
        + vcard3("Stranger Danger", emails=["stranger@nowhere.example"],
                 phones=["+33 6 12 34 56 78"])
        + vcard3("Me Myself", emails=["me@example.org"])
        + vcard3("Nobody Known", phones=["020 7946 0999"])
        + vcard3("Both Ways", emails=["bob@babbage.example"], phones=["+14155550100"])
    )
    path = tmp_path / "contacts.vcf"
    path.write_text(text, encoding="utf-8")
    counts, output = import_file(capfd, db, path, "--region", "GB")
    assert counts == {"read": 6, "matched": 2, "ambiguous": 1, "ignored": 3, "knows": 2}
    assert knows(db, "me") == ["bob", "dee"]
    assert_nowhere(db, VCARD_SECRETS, output)


def test_vcard_4_national_numbers_need_a_region(
    tmp_path: Path, db: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    text = (
        vcard4("Dee Dial", phones=["+1-415-555-0100"])
        + vcard4("Bob National", phones=["020 7946 0001"])
        + vcard4("Stranger Danger", emails=["stranger@nowhere.example"])
    )
    path = tmp_path / "export.vcf"
    path.write_bytes(text.encode("cp1252"))
    counts, output = import_file(capfd, db, path)
    assert counts == {"read": 3, "matched": 1, "ambiguous": 0, "ignored": 2, "knows": 1}
    counts, output = import_file(capfd, db, path, "--region", "gb")
    assert counts == {"read": 3, "matched": 2, "ambiguous": 0, "ignored": 1, "knows": 2}
    assert_nowhere(db, ["stranger@nowhere.example", "Stranger"], output)
    code, _, err = run_cli(capfd, "contacts", "network", "import", "me", str(path),
                           "--db", str(db), "--region", "ZZ")
    assert code == 1
    assert "--region" in err


def test_vcard_folding_is_undone() -> None:
    card = (b"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:X\r\nEMAIL;TYPE=INTERNET:bob@babb\r\n"
            b" age.example\r\nEND:VCARD\r\n")
    index = MatchIndex.build(b"s")
    index.add_hashed("bob", "email:bob@babbage.example")
    result = match_network(card, index, person_id="me")
    assert (result.read, result.matched, result.knows) == (1, 1, frozenset({"bob"}))


def test_broken_vcard_is_refused_without_quoting(
    tmp_path: Path, db: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cut.vcf"
    path.write_text("BEGIN:VCARD\r\nVERSION:3.0\r\nEMAIL:secret.person@hidden.example\r\n",
                    encoding="utf-8")
    code, out, err = run_cli(capfd, "contacts", "network", "import", "me", str(path),
                             "--db", str(db))
    assert code == 65
    assert "no END:VCARD" in err
    assert "secret.person" not in out + err


# -- plain CSV -----------------------------------------------------------------------------------

def test_plain_csv_with_header(tmp_path: Path, db: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "people.csv"
    path.write_text('name,email,twitter\r\n"Clone, Cy",,@CYC\r\n'
                    "Bob,bob@babbage.example,\r\nNobody,nobody@x.example,@nobody_here\r\n",
                    encoding="utf-8-sig")
    counts, output = import_file(capfd, db, path)
    assert counts == {"read": 3, "matched": 2, "ambiguous": 0, "ignored": 1, "knows": 2}
    assert_nowhere(db, ["nobody@x.example", "nobody_here", "Nobody"], output)


def test_plain_csv_without_header(
    tmp_path: Path, db: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "list.txt"
    path.write_text("bob@babbage.example\nhttps://x.com/cyc\n"
                    "https://www.linkedin.com/in/ada-lovelace\nunknown@z.example\n@cyc\n\n",
                    encoding="utf-8")
    counts, output = import_file(capfd, db, path, "--format", "csv")
    assert counts == {"read": 5, "matched": 3, "ambiguous": 0, "ignored": 2, "knows": 3}
    assert_nowhere(db, ["unknown@z.example"], output)


# -- pieces ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("ada-lovelace", "linkedin:ada-lovelace"),
    ("https://www.linkedin.com/in/ada-lovelace/", "linkedin:ada-lovelace"),
    ("http://uk.linkedin.com/in/Ada-Lovelace?trk=x#top", "linkedin:ada-lovelace"),
    ("linkedin.com/in/j%C3%BCrgen-m", "linkedin:jürgen-m"),
    ("https://www.linkedin.com/company/acme", None),
    ("https://evil.example/in/ada-lovelace", None),
])
def test_linkedin_forms(value: str, expected: str | None) -> None:
    assert normalise.linkedin(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("@Ada_L", "x:ada_l"), ("ada_l", "x:ada_l"), ("https://x.com/Ada_L", "x:ada_l"),
    ("https://twitter.com/ada_l/status/1", "x:ada_l"),
    ("https://twitter.com/intent/user?user_id=1001", "xid:1001"), ("id:1001", "xid:1001"),
    ("https://x.com/i/user/1001", "xid:1001"), ("https://x.com/home", None),
    ("https://example.com/ada", None), ("not a handle!", None),
])
def test_x_forms(value: str, expected: str | None) -> None:
    assert normalise.x_account(value) == expected


@pytest.mark.parametrize(("value", "region", "expected"), [
    ("+44 20 7946 0001", None, "phone:+442079460001"),
    ("0044 (0)20 7946 0001", None, "phone:+442079460001"),
    ("020 7946 0001", "GB", "phone:+442079460001"),
    ("020 7946 0001", None, None),
    ("tel:+1-415-555-0100", None, "phone:+14155550100"),
    ("not a number", "GB", None),
    ("+1 2", None, None),
])
def test_phone_forms(value: str, region: str | None, expected: str | None) -> None:
    assert normalise.phone(value, region) == expected


def test_emails() -> None:
    assert normalise.email(" MAILTO:Ada@Example.ORG ") == "email:ada@example.org"
    assert normalise.email("<ada@example.org>") == "email:ada@example.org"
    assert normalise.email("ada at example") is None


def test_decoding_and_detection() -> None:
    text = "First Name,Last Name\r\nZoë,Ünicode\r\n"
    for data in (text.encode("utf-16-le"), text.encode("utf-16-be"), text.encode("cp1252"),
                 b"\xfe\xff" + text.encode("utf-16-be")):
        assert decode_text(data) == text
        assert detect_format(data) == "linkedin"
    assert detect_format(b"BEGIN:VCARD\r\n") == "vcard"
    assert detect_format(b"window.YTD.following.part0 = []") == "x"
    assert detect_format(b"email\nx@y.example\n") == "csv"


def test_unknown_format_and_garbage_are_refused() -> None:
    with pytest.raises(NetworkFileError, match="unknown format"):
        read_entries(b"", fmt="myspace")
    with pytest.raises(NetworkFileError, match="no LinkedIn Connections header"):
        read_entries(b"a,b,c\n1,2,3\n", fmt="linkedin")
    with pytest.raises(NetworkFileError, match="not the JSON list") as info:
        read_entries(b"window.YTD.following.part0 = [secret-stuff", fmt="x")
    assert "secret" not in str(info.value)
    with pytest.raises(NetworkFileError, match="not a readable zip"):
        read_entries(b"PK\x03\x04garbage", fmt="x")


def test_ambiguity_is_per_tier() -> None:
    index = MatchIndex.build(b"s", handles=[("a", {"linkedin": "same"}),
                                            ("b", {"linkedin": "same"})])
    index.add_hashed("c", "email:c@example.org")
    entries = read_entries(linkedin_csv([
        ("A", "B", "https://www.linkedin.com/in/same", "c@example.org", "", "", ""),
        ("C", "D", "https://www.linkedin.com/in/other", "c@example.org", "", "", ""),
    ]).encode(), fmt="linkedin")
    result = match_entries(entries, index, person_id="me")
    assert (result.matched, result.ambiguous, result.knows) == (1, 1, frozenset({"c"}))


# -- hostile input -------------------------------------------------------------------------------

@given(data=st.binary(max_size=2000), fmt=st.sampled_from(["linkedin", "x", "vcard", "csv"]))
@settings(max_examples=300, deadline=None)
def test_any_bytes_give_entries_or_a_clear_error(data: bytes, fmt: str) -> None:
    try:
        entries = read_entries(data, fmt=fmt, region="GB")
    except NetworkFileError:
        return
    assert all(isinstance(ident, str) for e in entries for tier in e.tiers for ident in tier)


@given(text=st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_text_in_known_shapes_gives_entries_or_a_clear_error(text: str) -> None:
    shapes = [
        linkedin_csv([(text, text, text, text, text, text, text)]),
        ytd("following", [(text, text)]),
        "BEGIN:VCARD\r\nEMAIL:" + text + "\r\nTEL:" + text + "\r\nEND:VCARD\r\n",
        "email,x,phone\n" + text,
    ]
    for shape, fmt in zip(shapes, ["linkedin", "x", "vcard", "csv"], strict=True):
        with contextlib.suppress(NetworkFileError):
            read_entries(shape.encode("utf-8", "surrogatepass"), fmt=fmt, region="US")


def test_zip_bomb_member_is_refused() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data/following.js", b" " * (MAX_ZIP_MEMBER_BYTES + 1))
    with pytest.raises(NetworkFileError, match="larger than"):
        read_entries(out.getvalue(), fmt="x")
