"""Network exports built the way the services write them, for the network import tests.

LinkedIn's Connections.csv: a "Notes:" paragraph (quoted, one line), a blank line, then the
header ``First Name,Last Name,URL,Email Address,Company,Position,Connected On``; UTF-8, CRLF.
X's archive: ``data/following.js``/``data/follower.js`` in a zip, each
``window.YTD.<name>.part0 = [ {"<name>": {"accountId": ..., "userLink": ...}} ]``.
vCards: Apple Contacts' 3.0 (``itemN.`` groups, ``type=`` params, folded PHOTO), Android's
and Nextcloud's 4.0 (``VALUE=uri`` ``tel:`` numbers, quoted TYPE lists), CRLF and folded lines.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Sequence

LINKEDIN_NOTES = (
    'Notes:\r\n"Email addresses appear only for connections who allow their connections to '
    'download them; see https://www.linkedin.com/psettings/privacy/email for the setting."'
    "\r\n\r\n"
)
LINKEDIN_HEADER = "First Name,Last Name,URL,Email Address,Company,Position,Connected On\r\n"


def linkedin_csv(rows: list[tuple[str, str, str, str, str, str, str]]) -> str:
    """The text of a Connections.csv with these rows (cells quoted where they need it)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for row in rows:
        writer.writerow(row)
    return LINKEDIN_NOTES + LINKEDIN_HEADER + out.getvalue()


def ytd(name: str, accounts: list[tuple[str, str | None]]) -> str:
    """A ``window.YTD.<name>.part0`` file; each account ``(id, screen name or None)``."""
    items = []
    for account_id, screen_name in accounts:
        link = (f"https://twitter.com/{screen_name}" if screen_name
                else f"https://twitter.com/intent/user?user_id={account_id}")
        items.append({name: {"accountId": account_id, "userLink": link}})
    return f"window.YTD.{name}.part0 = " + json.dumps(items, indent=2)


def x_archive(following: str, follower: str) -> bytes:
    """An X archive zip: the two lists under data/, with other files around them."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Your archive.html", "<html><body>archive</body></html>")
        archive.writestr("data/account.js", 'window.YTD.account.part0 = [{"account": '
                         '{"username": "owner", "accountId": "1"}}]')
        archive.writestr("data/following.js", following)
        archive.writestr("data/follower.js", follower)
        archive.writestr("data/tweets_media/", "")
    return out.getvalue()


PHOTO = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0a" * 3


def fold(line: str, width: int = 75) -> str:
    """RFC 6350 line folding: CRLF plus one space every ``width`` octets."""
    parts = [line[i:i + width] for i in range(0, len(line), width)]
    return "\r\n ".join(parts)


def vcard3(name: str, *, emails: Sequence[str] = (), phones: Sequence[str] = ()) -> str:
    first, _, last = name.partition(" ")
    lines = ["BEGIN:VCARD", "VERSION:3.0", f"N:{last};{first};;;",
             f"FN:{name}", "ORG:Example\\, Inc.;"]
    for number, address in enumerate(emails, start=1):
        lines.append(f"item{number}.EMAIL;type=INTERNET;type=pref:{address}")
        lines.append(f"item{number}.X-ABLabel:_$!<Other>!$_")
    for phone in phones:
        lines.append(f"TEL;type=CELL;type=VOICE;type=pref:{phone}")
    lines.append(fold(f"PHOTO;ENCODING=b;TYPE=JPEG:{PHOTO}"))
    lines.append("END:VCARD")
    return "\r\n".join(lines) + "\r\n"


def vcard4(name: str, *, emails: Sequence[str] = (), phones: Sequence[str] = ()) -> str:
    lines = ["BEGIN:VCARD", "VERSION:4.0", f"FN:{name}", "KIND:individual"]
    for address in emails:
        lines.append(fold(f'EMAIL;TYPE=work;PREF=1;X-LONG-PARAMETER-FOR-FOLDING="{"x" * 40}":'
                          f"{address}", width=60))
    for phone in phones:
        lines.append(f'TEL;VALUE=uri;TYPE="voice,cell":tel:{phone}')
    lines.append("END:VCARD")
    return "\r\n".join(lines) + "\r\n"
