"""``hallway tokens``: add (printed once), list (never secrets), revoke scoped tokens."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from hallway.commands._common import config_from_args


def _csv(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``tokens`` command tree."""
    parser = sub.add_parser("tokens", help="scoped subscriber tokens", parents=[common])
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = actions.add_parser("add", help="make a token (printed once) with a scope",
                           parents=[common])
    p.add_argument("name", help="a name for the app or person holding it")
    p.add_argument("--tags", type=_csv, metavar="T,...",
                   help="only contacts with one of these tags")
    p.add_argument("--contacts", type=_csv, metavar="ID,...", help="only these contacts")
    p.add_argument("--history", type=float, metavar="SECONDS",
                   help="a resume may reach at most this far back (else resync)")
    p.add_argument("--no-present", action="store_true",
                   help="refuse the 'present' request (forbidden)")
    p.add_argument("--fields", type=_csv, default=[], metavar="F,...",
                   help="extra contact fields it may see: display, knows (default: none)")
    p.add_argument("--enroll", action="store_true",
                   help="may also open the web enrollment page (default: kiosk and dashboard)")
    p.set_defaults(func=run_add)

    p = actions.add_parser("list", help="names and scopes (never secrets)", parents=[common])
    p.set_defaults(func=run_list)

    p = actions.add_parser("revoke", help="delete a token; its connections end within 2 s",
                           parents=[common])
    p.add_argument("name")
    p.set_defaults(func=run_revoke)


def _database(args: argparse.Namespace) -> Path:
    from hallway.store import SqliteStore

    config = config_from_args(args)
    db = Path(config.storage.database)

    async def migrate() -> None:
        store = await SqliteStore.open(db)
        await store.close()

    asyncio.run(migrate())
    return db


def run_add(args: argparse.Namespace) -> int:
    """Make a token and print it once."""
    from hallway.access import TokenError, add_token, scope_of

    try:
        scope = scope_of(args.name, tags=args.tags, contacts=args.contacts,
                         history_s=args.history, present=not args.no_present,
                         fields=args.fields, enroll=args.enroll)
        secret = add_token(_database(args), scope)
    except TokenError as exc:
        print(f"hallway: {exc}", file=sys.stderr)
        return 1
    print(secret)
    print(f"token {scope.name!r} made; it is shown only now: store it where its app reads it "
          "(a file with mode 0600), not on a command line", file=sys.stderr)
    return 0


def _limit(values: list[str] | None) -> str:
    return "all" if values is None else ",".join(values)


def run_list(args: argparse.Namespace) -> int:
    """One line per token: name, scope, creation time."""
    from hallway.access import TokenError, list_tokens

    try:
        tokens = list_tokens(_database(args))
    except TokenError as exc:
        print(f"hallway: {exc}", file=sys.stderr)
        return 1
    for info in tokens:
        shown = info.scope.describe()
        history = "all" if shown["history_s"] is None else f"{shown['history_s']:g}s"
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.created_at))
        print(f"{info.name}\ttags={_limit(shown['tags'])}\tcontacts={_limit(shown['contacts'])}"
              f"\thistory={history}\tpresent={'yes' if shown['present'] else 'no'}"
              f"\tfields={','.join(shown['fields']) or '-'}"
              f"\tenroll={'yes' if shown['enroll'] else 'no'}\tcreated={created}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    """Delete a token."""
    from hallway.access import TokenError, revoke_token

    try:
        revoke_token(_database(args), args.name)
    except TokenError as exc:
        print(f"hallway: {exc}", file=sys.stderr)
        return 1
    print(f"token {args.name!r} revoked; a running daemon ends its connections within 2 s",
          file=sys.stderr)
    return 0
