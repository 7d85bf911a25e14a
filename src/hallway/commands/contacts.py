"""``hallway contacts``: import, export, list, show, add, enroll, revoke, network."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hallway.commands._common import config_from_args
from hallway.errors import ContactNotFound, HallwayError, ImportRejected

if TYPE_CHECKING:
    from hallway.store import SqliteStore

def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``contacts`` command tree."""
    parser = sub.add_parser("contacts", help="manage the contact store", parents=[common])
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = actions.add_parser("import", help="import a contacts file (all or nothing)",
                           parents=[common])
    p.add_argument("file", help="JSON Lines (SPEC §1) or CSV file; '-' reads standard input")
    p.add_argument("--format", choices=("jsonl", "csv"), help="default: by file extension")
    p.add_argument("--readmit", action="store_true",
                   help="allow ids that were revoked before (they opted in again)")
    p.set_defaults(func=run_import)

    p = actions.add_parser("export", help="write every contact as JSON Lines", parents=[common])
    p.add_argument("--out", metavar="FILE", help="file to write (default: standard output)")
    p.set_defaults(func=run_export)

    p = actions.add_parser("list", help="one line per contact", parents=[common])
    p.add_argument("--json", action="store_true", help="JSON Lines without keys")
    p.set_defaults(func=run_list)

    p = actions.add_parser("show", help="one contact in full (keys masked)", parents=[common])
    p.add_argument("id")
    p.add_argument("--reveal-keys", action="store_true", help="print key material")
    p.set_defaults(func=run_show)

    p = actions.add_parser("add", help="add a contact with a new hallway-v1 key",
                           parents=[common])
    p.add_argument("--name", required=True)
    p.add_argument("--id", dest="contact_id", help="default: derived from the name")
    p.add_argument("--org")
    p.add_argument("--title")
    p.add_argument("--handle", action="append", default=[], metavar="SERVICE=HANDLE")
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--expires", metavar="ISO8601", help="consent expiry, e.g. 2026-11-23T00:00:00Z")
    p.add_argument("--display", action="store_true",
                   help="the person agreed to be shown by name on public screens")
    p.add_argument("--knows", metavar="ID,...", default="",
                   help="ids of enrolled people this person knows")
    p.add_argument("--email", action="append", default=[],
                   help="an address network imports may match them by (stored only as a "
                   "salted hash)")
    p.add_argument("--phone", action="append", default=[],
                   help="a number (+ and country code) network imports may match them by "
                   "(stored only as a salted hash)")
    p.set_defaults(func=run_add)

    p = actions.add_parser("enroll", help="print the enrollment URI and QR code",
                           parents=[common])
    p.add_argument("id")
    p.add_argument("--png", metavar="FILE", help="also write the QR code as PNG")
    p.add_argument("--svg", metavar="FILE", help="also write the QR code as SVG")
    p.add_argument("--no-qr", action="store_true", help="print only the URI")
    p.add_argument("--new-key", action="store_true",
                   help="replace the contact's hallway-v1 key with a fresh one")
    p.set_defaults(func=run_enroll)

    p = actions.add_parser("revoke", help="forget a contact's keys and events at once",
                           parents=[common])
    p.add_argument("id")
    p.set_defaults(func=run_revoke)

    from hallway.commands import network

    network.register(actions, common)


async def _open(args: argparse.Namespace, *, create: bool = True) -> SqliteStore:
    from hallway.store import SqliteStore

    config = config_from_args(args)
    database = config.storage.database
    _check_access(Path(database))
    return await SqliteStore.open(database, create=create)


def _check_access(database: Path) -> None:
    """A database (or its folder) this user may not use: say whose it is and how to act as
    them, instead of "does not exist" or SQLite's "unable to open database file"."""
    import os

    folder = database.parent
    blocked = None
    if folder.is_dir() and not os.access(folder, os.X_OK):
        blocked = folder
    elif database.exists() and not os.access(database, os.R_OK | os.W_OK):
        blocked = database
    if blocked is None:
        return
    if database.exists() and os.access(database, os.R_OK) and _read_only_mount(database):
        return  # not a permission: the store says "read-only file system" itself
    owner = _owner(blocked)
    who = f"sudo -u {owner} " if owner and owner != "root" else "sudo "
    raise HallwayError(
        f"{database}: permission denied ({blocked} belongs to {owner or 'another user'}). "
        f"The service's database is its user's alone: run the command as that user, e.g. "
        f"`{who}hallway contacts list` (a file to import goes on stdin: "
        f"`{who}hallway contacts import - < contacts.jsonl`)")


def _read_only_mount(path: Path) -> bool:
    import os

    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _owner(path: Path) -> str | None:
    import pwd

    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (KeyError, OSError):
        return None


def _explain_missing(args: argparse.Namespace, contact_id: str) -> HallwayError:
    """A clear message for an id the store does not hold: revoked, or unknown."""

    async def revoked() -> bool:
        store = await _open(args, create=False)
        async with store:
            return contact_id in await store.revoked_ids()

    database = config_from_args(args, setup_logging=False).storage.database
    if asyncio.run(revoked()):
        return HallwayError(
            f"contact {contact_id!r} was revoked: its keys and events are gone from "
            f"{database}; to enrol them again, import them with `hallway contacts import "
            "--readmit FILE`")
    return HallwayError(f"no contact {contact_id!r} in {database} (`hallway contacts list` "
                        "shows the ids)")


def _progress(done: int, total: int) -> None:
    print(f"\rimporting: {done}/{total} contacts", end="", file=sys.stderr, flush=True)


def run_import(args: argparse.Namespace) -> int:
    """Import a file in one transaction; every bad line is named and nothing is stored."""
    from hallway.contacts_io import parse_contacts

    name = "<stdin>" if args.file == "-" else args.file
    fmt = args.format or ("csv" if name.lower().endswith(".csv") else "jsonl")
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except OSError as exc:
        raise HallwayError(f"{name}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise HallwayError(f"{name}: not UTF-8 text") from None
    try:
        contacts, lines = parse_contacts(text, fmt=fmt, file=name)
    except ImportRejected as exc:
        return _rejected(exc)

    show_progress = sys.stderr.isatty() and len(contacts) >= 1000

    async def work() -> int:
        store = await _open(args)
        async with store:
            count: int = await store.import_contacts(
                contacts, file=name, lines=lines, readmit=args.readmit,
                progress=_progress if show_progress else None,
            )
            return count

    try:
        count = asyncio.run(work())
    except ImportRejected as exc:
        return _rejected(exc)
    if show_progress:
        print(file=sys.stderr)
    print(f"imported {count} contact(s) from {name}", file=sys.stderr)
    return 0


def _rejected(exc: ImportRejected) -> int:
    print(f"hallway: import rejected, nothing was stored ({len(exc.problems)} bad line(s)):",
          file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return 65  # EX_DATAERR


def run_export(args: argparse.Namespace) -> int:
    """Write every contact, SPEC §1, sorted by id."""
    from hallway.contacts_io import export_lines

    async def work() -> list[str]:
        store = await _open(args, create=False)
        async with store:
            return export_lines(await store.list_contacts())

    lines = asyncio.run(work())
    text = "".join(line + "\n" for line in lines)
    if args.out:
        from hallway.files import open_private

        # Every contact's keys and IRKs: 0600 from creation, whatever the umask.
        try:
            with open_private(args.out, "w", encoding="utf-8") as out:
                out.write(text)
        except OSError as exc:
            raise HallwayError(f"{args.out}: cannot write: {exc.strerror or exc}") from None
    else:
        sys.stdout.write(text)
    return 0


def run_list(args: argparse.Namespace) -> int:
    """One line per contact: id, name, org, key kinds, consent state."""
    from hallway.contacts_io import contact_to_obj

    async def work() -> list[Any]:
        store = await _open(args, create=False)
        async with store:
            result: list[Any] = await store.list_contacts()
            return result

    now = time.time()
    for contact in asyncio.run(work()):
        kinds = sorted({key.kind.value for key in contact.keys})
        if args.json:
            obj = contact_to_obj(contact)
            obj["keys"] = kinds
            obj["active"] = contact.active(now)
            print(json.dumps(obj, ensure_ascii=False))
            continue
        state = "active" if contact.active(now) else "consent expired"
        org = f" ({contact.org})" if contact.org else ""
        print(f"{contact.id}\t{contact.name}{org}\t{','.join(kinds) or '-'}\t{state}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """One contact, keys masked unless --reveal-keys."""
    from hallway.contacts_io import contact_to_obj
    from hallway.keys import key_to_json, mask

    async def work() -> tuple[Any, int]:
        store = await _open(args, create=False)
        async with store:
            return await store.get_contact(args.id), await store.match_count(args.id)

    try:
        contact, match_count = asyncio.run(work())
    except ContactNotFound:
        raise _explain_missing(args, args.id) from None
    obj = contact_to_obj(contact)
    if match_count:
        obj["match_hashes"] = match_count  # how many; the addresses are not stored
    if not args.reveal_keys:
        masked = []
        for key in contact.keys:
            item = key_to_json(key)
            for field in ("key", "irk", "uuid", "namespace", "instance", "address"):
                if field in item:
                    item[field] = mask(str(item[field]))
            item.pop("major", None)
            item.pop("minor", None)
            masked.append(item)
        obj["keys"] = masked
    obj["active"] = contact.active(time.time())
    print(json.dumps(obj, ensure_ascii=False, indent=2))
    return 0


def _parse_time(text: str) -> float:
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise HallwayError(f"--expires: not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def run_add(args: argparse.Namespace) -> int:
    """Add a contact with a freshly generated hallway-v1 key; prints its id."""
    from hallway.contacts_io import derive_id
    from hallway.models import Contact, ContactKey, KeyKind

    handles = {}
    for pair in args.handle:
        service, sep, handle = pair.partition("=")
        if not sep or not service:
            raise HallwayError(f"--handle must be SERVICE=HANDLE, got {pair!r}")
        handles[service] = handle
    contact_id = args.contact_id or derive_id(args.name)
    if not contact_id:
        raise HallwayError("cannot derive an id from that name; pass --id")
    knows = frozenset(part.strip() for part in args.knows.split(",") if part.strip())
    if any(len(known) > 64 for known in knows):
        raise HallwayError("--knows: a contact id is 1-64 characters")
    now = time.time()
    contact = Contact(
        id=contact_id, name=args.name, org=args.org, title=args.title, handles=handles,
        tags=tuple(args.tag), granted_at=float(int(now)),
        expires_at=_parse_time(args.expires) if args.expires else None,
        keys=(ContactKey(KeyKind.HALLWAY_V1, secrets.token_bytes(16).hex()),),
        display=args.display, knows=knows - {contact_id},
        match=_match_ids(args.email, args.phone) if args.email or args.phone else None,
    )

    async def work() -> None:
        store = await _open(args)
        async with store:
            await store.add_contact(contact)

    asyncio.run(work())
    print(contact_id)
    print(f"added {contact_id}; show the enrollment code with: hallway contacts enroll "
          f"{contact_id}", file=sys.stderr)
    return 0


def _match_ids(emails: list[str], phones: list[str]) -> tuple[str, ...]:
    from hallway.network import normalise

    ids = []
    for number, value in enumerate(emails, start=1):
        ident = normalise.email(value)
        if ident is None:
            raise HallwayError(f"--email (#{number}): not an email address")
        ids.append(ident)
    for number, value in enumerate(phones, start=1):
        ident = normalise.phone(value)
        if ident is None:
            raise HallwayError(f"--phone (#{number}): not an international number "
                               "(write it with + and the country code)")
        ids.append(ident)
    return tuple(ids)


def run_enroll(args: argparse.Namespace) -> int:
    """Print (and optionally save) the enrollment URI and its QR code."""
    import segno

    from hallway.contacts_io import enroll_uri
    from hallway.models import ContactKey, KeyKind

    async def work() -> str:
        store = await _open(args, create=False)
        async with store:
            contact = await store.get_contact(args.id)
            hallway_keys = [k for k in contact.keys if k.kind is KeyKind.HALLWAY_V1]
            if hallway_keys and not args.new_key:
                return hallway_keys[0].value
            fresh = ContactKey(KeyKind.HALLWAY_V1, secrets.token_bytes(16).hex())
            others = [k for k in contact.keys if k.kind is not KeyKind.HALLWAY_V1]
            await store.replace_keys(contact.id, [*others, fresh])
            return fresh.value

    try:
        key_hex = asyncio.run(work())
    except ContactNotFound:
        raise _explain_missing(args, args.id) from None
    uri = enroll_uri(args.id, key_hex)
    qr = segno.make(uri, error="m")
    if not args.no_qr:
        qr.terminal(out=sys.stdout, compact=True)
    print(uri)
    for path, kind in ((args.png, "png"), (args.svg, "svg")):
        if path:
            from hallway.files import open_private

            try:  # the QR code carries the enrollment key: 0600 from creation
                with open_private(path, "wb") as out:
                    qr.save(out, kind=kind, scale=8, border=4)
            except OSError as exc:
                raise HallwayError(f"{path}: cannot write: {exc.strerror}") from None
            print(f"wrote {path}", file=sys.stderr)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    """Revoke a contact: a running daemon departs them within its reload interval."""

    async def work() -> None:
        store = await _open(args, create=False)
        async with store:
            await store.revoke(args.id, now=time.time())

    try:
        asyncio.run(work())
    except ContactNotFound:
        raise _explain_missing(args, args.id) from None
    print(f"revoked {args.id}: keys and logged events deleted", file=sys.stderr)
    return 0
