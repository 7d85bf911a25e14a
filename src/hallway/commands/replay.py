"""``hallway replay TRACE --db DB --out EVENTS.jsonl``: a trace through the daemon's pipeline.

The engine is ``hallway.replay`` (the pipeline on the trace's clock, optionally with a reader
process); this module reads the contacts, opens the files, shows progress and prints the
summary. Where there are two cores and no ``--realtime``, the reader runs in a second process
(``--jobs 2``), with the same events as one process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from hallway.commands._common import config_from_args
from hallway.errors import SourceError, StoreError
from hallway.models import Contact


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``replay``."""
    parser = sub.add_parser(
        "replay", parents=[common],
        help="run a trace file through resolver and tracker and write the events",
    )
    parser.add_argument("trace", metavar="TRACE", help="SPEC §2 trace file (JSON Lines)")
    parser.add_argument("--out", required=True, metavar="EVENTS",
                        help="where to write the events, one JSON object per line ('-': stdout)")
    parser.add_argument("--realtime", action="store_true",
                        help="pace the replay to the trace's own timestamps")
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=None,
                        help="processes: 2 parses and resolves in a second process (default "
                             "where there are two cores and no --realtime), 1 does it all in one")
    parser.set_defaults(func=run)


async def _load_contacts(path: str) -> list[Contact]:
    from hallway.store import SqliteStore

    store = await SqliteStore.open(path, create=False)
    try:
        return await store.list_contacts()
    finally:
        await store.close()


def _progress_printer(total_bytes: int, stream: IO[str]) -> Callable[[Any, int], None]:
    def show(summary: Any, bytes_read: int) -> None:  # a hallway.replay.ReplaySummary
        done = bytes_read / total_bytes if total_bytes else 0.0
        stream.write(
            f"\rreplaying: {done:6.1%}  {summary.advertisements:,} advertisements  "
            f"{summary.rate:,.0f}/s"
        )
        stream.flush()

    return show


def run(args: argparse.Namespace) -> int:
    """Replay a trace file; print the summary; exit 0 (malformed lines are not errors)."""
    from hallway.replay import replay

    config = config_from_args(args)
    trace = Path(args.trace)
    try:
        contacts = asyncio.run(_load_contacts(config.storage.database))
    except StoreError as exc:
        raise StoreError(f"cannot read contacts: {exc}") from None
    try:
        handle = trace.open("rb")
    except OSError as exc:
        raise SourceError(f"cannot open trace {trace}: {exc.strerror or exc}") from None
    jobs = args.jobs
    if jobs is None:
        jobs = 2 if (os.cpu_count() or 1) > 1 and not args.realtime else 1
    tty = sys.stderr.isatty()
    progress = _progress_printer(trace.stat().st_size, sys.stderr) if tty else None
    out: IO[str]
    if args.out == "-":
        out = sys.stdout
    else:
        try:
            out = Path(args.out).open("w", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            handle.close()
            raise SourceError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    try:
        with handle:
            summary = replay(handle, contacts, config, out.write, realtime=args.realtime,
                             progress=progress, reader_process=jobs == 2)
    finally:
        if out is not sys.stdout:
            out.close()
    if tty:
        sys.stderr.write("\r" + " " * 72 + "\r")
    report = sys.stderr if args.out == "-" else sys.stdout
    for number, reason in summary.bad_lines:
        print(f"{trace}:{number}: skipped: {reason}", file=report)
    if summary.malformed > len(summary.bad_lines):
        print(f"... and {summary.malformed - len(summary.bad_lines)} more malformed lines",
              file=report)
    span = 0.0
    if summary.first_ts is not None and summary.last_ts is not None:
        span = summary.last_ts - summary.first_ts
    print(f"trace: {trace} ({span:.0f} s of trace time)", file=report)
    print(f"contacts: {len(contacts)}", file=report)
    print(f"advertisements: {summary.advertisements}", file=report)
    print(f"matched: {summary.matched}", file=report)
    print(f"malformed: {summary.malformed}", file=report)
    print(f"events: {summary.events}", file=report)
    print(f"wall_time_s: {summary.wall_time_s:.3f}", file=report)
    print(f"advertisements_per_s: {summary.rate:.0f}", file=report)
    return 0
