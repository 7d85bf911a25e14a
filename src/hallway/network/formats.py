"""Network exports to entries: LinkedIn connections, X archives, vCards, plain CSV (pure).

Each reader takes the file's bytes and returns one ``Entry`` per person in it. An entry holds
the person's match identifiers (``hallway.network.normalise``) in tiers: a later tier is tried
only when no earlier one matched (LinkedIn: the profile URL first, then the email address).
An entry with no usable identifier is still counted as read. Nothing here keeps, logs or
quotes the content: errors name a line and a reason only.

Text is decoded by its byte order mark (UTF-8, UTF-16 LE/BE), else as UTF-8, else as UTF-16
without a mark (every other byte NUL), else as Windows-1252 (what Excel and Outlook write on
Western Windows; it maps every byte, so nothing is dropped).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

from hallway.errors import NetworkFileError
from hallway.network import normalise

MAX_FILE_BYTES = 128 * 1024 * 1024
"""Largest export read (an address book with photos is the big case)."""
MAX_ZIP_MEMBER_BYTES = 64 * 1024 * 1024
"""Largest following/follower file taken out of an X archive (a zip bomb stops here)."""
FORMATS = ("linkedin", "x", "vcard", "csv")


@dataclass(frozen=True, slots=True)
class Entry:
    """One person of an export: identifier tiers, tried in order."""

    tiers: tuple[tuple[str, ...], ...] = ()


def decode_text(data: bytes) -> str:
    """The text of an export's bytes (see the module docstring for the rule)."""
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                          (codecs.BOM_UTF16_BE, "utf-16-be")):
        if data.startswith(bom):
            return data[len(bom):].decode(encoding, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    sample = data[:4096]
    if len(sample) >= 4:
        odd_nuls = sample[1::2].count(0)
        even_nuls = sample[0::2].count(0)
        if odd_nuls > len(sample) // 4 and even_nuls == 0:
            return data.decode("utf-16-le", errors="replace")
        if even_nuls > len(sample) // 4 and odd_nuls == 0:
            return data.decode("utf-16-be", errors="replace")
    return data.decode("cp1252", errors="replace")


def detect_format(data: bytes, filename: str | None = None) -> str:
    """The format of an export: by content first, then by the file name's extension."""
    if data.startswith(b"PK\x03\x04"):
        return "x"
    head = decode_text(data[:65536]).lstrip("\ufeff \r\n\t")
    if head.startswith("window.YTD.") or (head.startswith("[") and '"accountId"' in head):
        return "x"
    if head[:11].upper() == "BEGIN:VCARD":
        return "vcard"
    name = (filename or "").lower()
    if name.endswith((".vcf", ".vcard")):
        return "vcard"
    if name.endswith((".js", ".zip")):
        return "x"
    try:
        if _linkedin_header(csv.reader(io.StringIO(head)), limit=20) is not None:
            return "linkedin"
    except csv.Error:
        pass
    return "csv"


def read_entries(data: bytes, *, fmt: str, region: str | None = None) -> list[Entry]:
    """Every person in an export of format ``fmt`` (one of ``FORMATS``); NetworkFileError
    when the file is not of that format. ``region`` (ISO 3166, e.g. ``GB``) is the country
    phone numbers written without a country code are read in."""
    if len(data) > MAX_FILE_BYTES:
        raise NetworkFileError(f"file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    if fmt == "linkedin":
        return read_linkedin(data)
    if fmt == "x":
        return read_x(data)
    if fmt == "vcard":
        return read_vcard(data, region=region)
    if fmt == "csv":
        return read_csv(data, region=region)
    raise NetworkFileError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")


# -- LinkedIn ------------------------------------------------------------------------------------

def _fold(cell: str) -> str:
    return cell.strip().lstrip("\ufeff").strip().lower()


def _linkedin_header(rows: Iterator[list[str]], *, limit: int | None = None) -> list[str] | None:
    """Consume rows up to and including the Connections header; its folded cells, or None."""
    for number, row in enumerate(rows):
        if limit is not None and number >= limit:
            return None
        folded = [_fold(cell) for cell in row]
        if "first name" in folded and "last name" in folded:
            return folded
    return None


def read_linkedin(data: bytes) -> list[Entry]:
    """LinkedIn's "Connections" export: notes lines, then ``First Name, Last Name, URL,
    Email Address, Company, Position, Connected On``. Matched by profile URL, then email."""
    reader = csv.reader(io.StringIO(decode_text(data), newline=""))
    try:
        header = _linkedin_header(reader)
        if header is None:
            raise NetworkFileError("no LinkedIn Connections header (First Name, Last Name, "
                                   "URL, ...) found")
        url_at = header.index("url") if "url" in header else None
        email_at = next((header.index(name) for name in ("email address", "email", "e-mail")
                         if name in header), None)
        entries = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            tiers: list[tuple[str, ...]] = []
            for at, parse in ((url_at, normalise.linkedin), (email_at, normalise.email)):
                if at is not None and at < len(row) and row[at].strip():
                    ident = parse(row[at])
                    if ident is not None:
                        tiers.append((ident,))
            entries.append(Entry(tuple(tiers)))
    except csv.Error as exc:
        raise NetworkFileError(f"line {reader.line_num}: not valid CSV ({exc})") from None
    return entries


# -- X / Twitter ---------------------------------------------------------------------------------

_X_MEMBER = re.compile(r"(?:^|/)(following|follower)(?:-part\d+)?\.js$")


def read_x(data: bytes) -> list[Entry]:
    """An X/Twitter archive (the zip) or its ``following.js``/``follower.js``: one entry per
    account, matched by account id or screen name. An account in both lists counts once."""
    if data.startswith(b"PK\x03\x04"):
        texts = list(_x_archive_members(data))
        if not texts:
            raise NetworkFileError("the archive holds no following.js or follower.js")
    else:
        texts = [("file", decode_text(data))]
    accounts: dict[str, tuple[str, ...]] = {}
    for where, text in texts:
        for item in _ytd_items(text, where):
            ids = _x_ids(item)
            key = ids[0] if ids else f"#{len(accounts)}"
            accounts[key] = tuple(dict.fromkeys([*accounts.get(key, ()), *ids]))
    return [Entry((ids,) if ids else ()) for ids in accounts.values()]


def _x_archive_members(data: bytes) -> Iterator[tuple[str, str]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise NetworkFileError(f"not a readable zip archive ({exc})") from None
    with archive:
        for info in archive.infolist():
            if info.is_dir() or not _X_MEMBER.search(info.filename):
                continue
            if info.file_size > MAX_ZIP_MEMBER_BYTES:
                raise NetworkFileError(f"{info.filename}: larger than "
                                       f"{MAX_ZIP_MEMBER_BYTES // (1024 * 1024)} MiB")
            try:
                with archive.open(info) as member:
                    raw = member.read(MAX_ZIP_MEMBER_BYTES + 1)
            except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as exc:
                raise NetworkFileError(f"{info.filename}: cannot be extracted ({exc})") from None
            if len(raw) > MAX_ZIP_MEMBER_BYTES:
                raise NetworkFileError(f"{info.filename}: larger than it claims")
            yield info.filename, decode_text(raw)


def _ytd_items(text: str, where: str) -> list[object]:
    """The list of a ``window.YTD.<name>.partN = [...]`` file (or a bare JSON list)."""
    body = text.lstrip("\ufeff \r\n\t")
    if body.startswith("window."):
        _, sep, body = body.partition("=")
        if not sep:
            raise NetworkFileError(f"{where}: no '=' after the window.YTD name")
    body = body.strip().rstrip(";")
    try:
        items = json.loads(body)
    except (ValueError, RecursionError):
        raise NetworkFileError(f"{where}: not the JSON list of an X archive file") from None
    if not isinstance(items, list):
        raise NetworkFileError(f"{where}: not the JSON list of an X archive file")
    return items


def _x_ids(item: object) -> tuple[str, ...]:
    if not isinstance(item, dict) or not item:
        return ()
    inner = item.get("following", item.get("follower", item))
    if not isinstance(inner, dict):
        return ()
    ids: list[str] = []
    account = inner.get("accountId")
    if isinstance(account, str | int) and not isinstance(account, bool):
        ident = normalise.x_account(f"id:{account}")
        if ident:
            ids.append(ident)
    for field in ("userLink", "screenName", "screen_name", "username"):
        value = inner.get(field)
        if isinstance(value, str):
            ident = normalise.x_account(value)
            if ident and ident not in ids:
                ids.append(ident)
    return tuple(ids)


# -- vCard ---------------------------------------------------------------------------------------

_VCARD_ESCAPE = re.compile(r"\\(.)")
_UNFOLD = re.compile(r"\r?\n[ \t]")


def _unescape(value: str) -> str:
    return _VCARD_ESCAPE.sub(lambda m: "\n" if m.group(1) in "nN" else m.group(1), value)


def read_vcard(data: bytes, *, region: str | None = None) -> list[Entry]:
    """vCard 3.0/4.0 (2.1 read alike): one entry per card, its emails and phone numbers (E.164;
    numbers without a country code are read in ``region``, or ignored without one)."""
    text = _UNFOLD.sub("", decode_text(data).replace("\r\n", "\n").replace("\r", "\n"))
    entries: list[Entry] = []
    ids: list[str] | None = None
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue  # a vCard 2.1 quoted-printable continuation or stray line: no identifier
        prop = name.split(";", 1)[0].rsplit(".", 1)[-1].strip().upper()
        if prop == "BEGIN" and value.strip().upper() == "VCARD":
            if ids is not None:
                raise NetworkFileError(f"line {number}: BEGIN:VCARD inside a card")
            ids = []
        elif prop == "END" and value.strip().upper() == "VCARD":
            if ids is None:
                raise NetworkFileError(f"line {number}: END:VCARD without BEGIN")
            entries.append(Entry((tuple(dict.fromkeys(ids)),) if ids else ()))
            ids = None
        elif ids is not None and prop in ("EMAIL", "TEL"):
            for part in _unescape(value).split(","):
                ident = (normalise.email(part) if prop == "EMAIL"
                         else normalise.phone(part, region))
                if ident is not None:
                    ids.append(ident)
    if ids is not None:
        raise NetworkFileError("the last card has no END:VCARD")
    if not entries:
        raise NetworkFileError("no BEGIN:VCARD found")
    return entries


# -- plain CSV -----------------------------------------------------------------------------------

_COLUMNS = {
    "email": "email", "e-mail": "email", "email address": "email", "mail": "email",
    "phone": "phone", "mobile": "phone", "tel": "phone", "telephone": "phone",
    "phone number": "phone",
    "linkedin": "linkedin", "linkedin url": "linkedin",
    "x": "x", "twitter": "x", "x handle": "x", "twitter handle": "x",
    "handle": "any", "url": "any", "profile": "any", "link": "any",
}


def _by_form(cell: str) -> str | None:
    """The identifier a cell's form shows: an email, a LinkedIn or X link, or a phone number
    written with its country code."""
    text = cell.strip()
    if "@" in text and "/" not in text:
        return normalise.email(text)
    if "linkedin." in text.lower():
        return normalise.linkedin(text)
    if "/" in text:
        return normalise.x_account(text)
    if text.startswith(("+", "00")) or text[:4].lower() == "tel:":
        return normalise.phone(text)
    return None


def read_csv(data: bytes, *, region: str | None = None) -> list[Entry]:
    """A plain CSV of handles or emails: one entry per row. With a header naming columns
    (``email``, ``phone``, ``linkedin``, ``x``/``twitter``, ``handle``/``url``) cells are read
    as their column says; without one, each cell by its form (an email, a LinkedIn or X
    link, an international phone number). A bare ``@name`` needs its column named."""
    text = decode_text(data)
    sample = text[:4096]
    delimiter = ";" if sample.count(";") > sample.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    entries: list[Entry] = []
    kinds: list[str] | None = None
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if kinds is None and not entries:
                folded = [_fold(cell) for cell in row]
                if any(cell in _COLUMNS for cell in folded):
                    kinds = [_COLUMNS.get(cell, "none") for cell in folded]
                    continue
            ids: list[str] = []
            for at, cell in enumerate(row):
                if not cell.strip():
                    continue
                kind = kinds[at] if kinds is not None and at < len(kinds) else "any"
                ident = _cell(cell, kind, region)
                if ident is not None:
                    ids.append(ident)
            entries.append(Entry((tuple(dict.fromkeys(ids)),) if ids else ()))
    except csv.Error as exc:
        raise NetworkFileError(f"line {reader.line_num}: not valid CSV ({exc})") from None
    return entries


def _cell(cell: str, kind: str, region: str | None) -> str | None:
    if kind == "email":
        return normalise.email(cell)
    if kind == "phone":
        return normalise.phone(cell, region)
    if kind == "linkedin":
        return normalise.linkedin(cell)
    if kind == "x":
        return normalise.x_account(cell)
    if kind == "any":
        return _by_form(cell)
    return None
