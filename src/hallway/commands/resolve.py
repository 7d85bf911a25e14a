"""``hallway resolve TRACE``: label every line of a SPEC §2 trace with the contact it is from.

Each line is resolved with its own ``ts`` as the clock, so rotating identifiers resolve as
they did when recorded. Output is one JSON object per line:
``{"line": N, "contact": "<id>" | null, "via": "<kind>" | null}``, or ``{"line": N,
"error": "<reason>"}`` for a malformed line (N counts lines from 1, blank lines included). A
summary goes to standard error. Contacts are read from the store (``--db``); nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import IO, Any

from hallway.commands._common import config_from_args
from hallway.errors import SourceError
from hallway.models import Contact


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``resolve``."""
    parser = sub.add_parser(
        "resolve",
        help="label each line of a trace file with the contact it resolves to",
        parents=[common],
    )
    parser.add_argument("trace", metavar="TRACE", help="trace file (SPEC §2); '-' reads stdin")
    parser.add_argument("--out", metavar="FILE", help="write the labels here (default: stdout)")
    parser.set_defaults(func=run)


async def _load_contacts(database: str) -> list[Contact]:
    from hallway.store import SqliteStore

    store = await SqliteStore.open(database, create=False)
    async with store:
        return await store.list_contacts()


@contextlib.contextmanager
def _open_trace(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the context manager below
    except OSError as exc:
        raise SourceError(f"{path}: cannot read trace: {exc.strerror}") from None
    with handle:
        yield handle


@contextlib.contextmanager
def _open_out(path: str | None) -> Iterator[IO[str]]:
    if path is None or path == "-":
        yield sys.stdout
        return
    try:
        handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise SourceError(f"{path}: cannot write: {exc.strerror}") from None
    with handle:
        yield handle


def run(args: argparse.Namespace) -> int:
    """Resolve every trace line; exit 0 even when lines are malformed (they are reported)."""
    from hallway.identity.resolver import Resolver
    from hallway.trace import read_trace

    config = config_from_args(args)
    contacts = asyncio.run(_load_contacts(config.storage.database))
    resolver = Resolver(config.identity)
    loaded = False
    lines = errors = 0
    with _open_trace(args.trace) as trace, _open_out(args.out) as out:
        write = out.write
        for number, item in read_trace(trace):
            lines += 1
            if isinstance(item, str):
                errors += 1
                write(json.dumps({"line": number, "error": item}) + "\n")
                continue
            if not loaded:
                resolver.set_contacts(contacts, now=item.ts)
                loaded = True
            match = resolver.resolve(item)
            record: dict[str, object]
            if match is None:
                record = {"line": number, "contact": None, "via": None}
            else:
                record = {"line": number, "contact": match.contact_id, "via": match.via.value}
            write(json.dumps(record) + "\n")
    stats = resolver.stats()
    kinds = ", ".join(
        f"{name.removeprefix('matched_')} {count}"
        for name, count in stats.items()
        if name.startswith("matched_") and count
    )
    print(
        f"hallway resolve: {lines} lines, {stats['matched']} matched"
        f"{f' ({kinds})' if kinds else ''}, {stats['advertisements'] - stats['matched']} "
        f"unmatched, {errors} malformed lines, {stats['malformed']} with malformed frames; "
        f"{len(contacts)} contacts, {stats['aes_ops']} AES operations, IRK cache "
        f"{stats['irk_cache_hits']} hits / {stats['irk_cache_misses']} misses",
        file=sys.stderr,
    )
    return 0
