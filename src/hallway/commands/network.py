"""``hallway contacts network``: import a person's network export into their ``knows``; clear it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from hallway.commands._common import config_from_args
from hallway.errors import HallwayError


def register(actions: Any, common: argparse.ArgumentParser) -> None:
    """Add ``network import`` and ``network clear`` under ``hallway contacts``."""
    parser = actions.add_parser(
        "network", help="match a person's LinkedIn/X/address-book export to enrolled contacts",
        parents=[common])
    sub = parser.add_subparsers(dest="network_action", metavar="ACTION", required=True)

    p = sub.add_parser(
        "import", parents=[common],
        help="add the enrolled people found in a network export to a person's knows "
        "(only the matches are stored)")
    p.add_argument("id", help="the person whose export this is")
    p.add_argument("file", help="LinkedIn Connections.csv, X archive zip or following.js/"
                   "follower.js, vCard file, or a CSV of handles/emails; '-' reads stdin")
    p.add_argument("--format", choices=("linkedin", "x", "vcard", "csv"),
                   help="default: detected from the content")
    p.add_argument("--mutual-only", action="store_true",
                   help="keep only people who list this person too")
    p.add_argument("--replace", action="store_true",
                   help="replace the person's knows instead of adding to it")
    p.add_argument("--region", metavar="CC",
                   help="country phone numbers without a country code were written in "
                   "(e.g. GB); without it such numbers are ignored")
    p.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    p.set_defaults(func=run_import)

    p = sub.add_parser("clear", parents=[common], help="empty a person's knows")
    p.add_argument("id")
    p.set_defaults(func=run_clear)


def _read(file: str) -> tuple[str, bytes]:
    from hallway.network.formats import MAX_FILE_BYTES

    if file == "-":
        data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        name = "<stdin>"
    else:
        name = file
        try:
            with Path(file).open("rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise HallwayError(f"{file}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise HallwayError(f"{name}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    return name, data


def run_import(args: argparse.Namespace) -> int:
    """Match the file in memory and store only the matched ids; print the counts."""
    from hallway.errors import NetworkFileError
    from hallway.network.normalise import valid_region
    from hallway.network_import import import_network
    from hallway.store import SqliteStore

    if args.region is not None and not valid_region(args.region):
        raise HallwayError(f"--region: {args.region!r} is not a country code such as GB or US")
    name, data = _read(args.file)
    config = config_from_args(args)

    async def work() -> Any:
        store = await SqliteStore.open(config.storage.database, create=False)
        async with store:
            return await import_network(
                store, args.id, data, fmt=args.format,
                filename=None if args.file == "-" else args.file, region=args.region,
                mutual_only=args.mutual_only, replace=args.replace,
            )

    try:
        outcome = asyncio.run(work())
    except NetworkFileError as exc:
        print(f"hallway: {name}: {exc}; nothing was stored", file=sys.stderr)
        return 65  # EX_DATAERR
    counts = outcome.result.counts()
    if args.json:
        print(json.dumps({**counts, "knows": outcome.knows_total}))
    else:
        print(", ".join(f"{key} {value}" for key, value in counts.items()))
        print(f"{args.id} now knows {outcome.knows_total} enrolled people", file=sys.stderr)
    return 0


def run_clear(args: argparse.Namespace) -> int:
    """Empty the person's ``knows`` (their consent to be matched withdrawn)."""
    from hallway.store import SqliteStore

    config = config_from_args(args)

    async def work() -> int:
        store = await SqliteStore.open(config.storage.database, create=False)
        async with store:
            return await store.clear_knows(args.id)

    removed = asyncio.run(work())
    print(f"cleared {args.id}'s knows ({removed} entries removed)", file=sys.stderr)
    return 0
