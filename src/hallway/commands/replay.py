"""``hallway replay TRACE --db DB --out EVENTS.jsonl``: a trace through the daemon's pipeline.

The same resolver -> tracker path as the daemon (``hallway.pipeline.Pipeline``), on a virtual
clock that follows the trace's ``ts``: the pipeline is ticked at every whole second of trace
time, as the daemon ticks it every second of wall time. As fast as the machine allows, or paced
to the trace with ``--realtime``. Events are SPEC §5 objects, one per line, ``seq`` from 1;
when the trace ends everyone still present departs with reason ``shutdown``, as when the daemon
stops. Malformed lines are counted, the first few reported, never fatal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hallway.commands._common import config_from_args
from hallway.config import Config
from hallway.errors import SourceError, StoreError
from hallway.models import Contact, PresenceEvent

MAX_REPORTED_BAD_LINES = 10
PROGRESS_EVERY_S = 0.5


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
    parser.set_defaults(func=run)


@dataclass(slots=True)
class ReplaySummary:
    """What a replay did."""

    advertisements: int = 0
    matched: int = 0
    malformed: int = 0
    events: int = 0
    wall_time_s: float = 0.0
    first_ts: float | None = None
    last_ts: float | None = None
    bad_lines: list[tuple[int, str]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Advertisements per second of wall time."""
        return self.advertisements / self.wall_time_s if self.wall_time_s > 0 else 0.0


async def _load_contacts(path: str) -> list[Contact]:
    from hallway.store import SqliteStore

    store = await SqliteStore.open(path, create=False)
    try:
        return await store.list_contacts()
    finally:
        await store.close()


def replay(
    lines: Iterable[bytes],
    contacts: list[Contact],
    config: Config,
    write: Callable[[str], object],
    *,
    realtime: bool = False,
    progress: Callable[[ReplaySummary, int], None] | None = None,
) -> ReplaySummary:
    """Feed trace lines through a fresh pipeline on the trace's clock; write SPEC §5 lines."""
    from hallway.events import event_json
    from hallway.pipeline import Pipeline
    from hallway.trace import TraceLineError, TraceParser

    pipeline = Pipeline(config)
    scanner = config.scanner.name
    summary = ReplaySummary()
    seq = 0
    contact_of = pipeline.contact
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode

    def emit(events: list[PresenceEvent]) -> None:
        nonlocal seq
        for event in events:
            seq += 1
            obj = event_json(event, seq=seq, scanner=scanner, contact=contact_of(event.contact_id))
            write(dumps(obj) + "\n")

    parse_trace_line = TraceParser().parse
    feed = pipeline.feed
    tick = pipeline.tick
    longest = pipeline.tracker.longest_silence_s + 2.0
    next_tick = math.inf
    started = time.perf_counter()
    wall_zero = 0.0
    trace_zero = 0.0
    count = 0
    last_ts = -math.inf
    bytes_read = 0
    next_progress = started + PROGRESS_EVERY_S
    for number, line in enumerate(lines, start=1):
        bytes_read += len(line)
        try:
            adv = parse_trace_line(line)
        except TraceLineError as exc:
            if not line.strip():
                continue
            summary.malformed += 1
            if len(summary.bad_lines) < MAX_REPORTED_BAD_LINES:
                summary.bad_lines.append((number, str(exc)))
            continue
        ts = adv.ts
        last_ts = max(last_ts, ts)
        if count == 0:
            summary.first_ts = ts
            emit(pipeline.load_contacts(contacts, now=ts))
            next_tick = math.floor(ts) + 1.0
            wall_zero = time.monotonic()
            trace_zero = ts
        count += 1
        if ts >= next_tick:
            if ts - next_tick > longest:
                # A long hole in the trace: tick until every silence has played out, then jump.
                stop = next_tick + longest
                while next_tick < stop:
                    emit(tick(next_tick))
                    next_tick += 1.0
                next_tick = float(math.floor(ts))
            while ts >= next_tick:
                emit(tick(next_tick))
                next_tick += 1.0
        if realtime:
            ahead = (ts - trace_zero) - (time.monotonic() - wall_zero)
            if ahead > 0.005:
                time.sleep(ahead)
        events = feed(adv)
        if events:
            emit(events)
        if progress is not None and count % 8192 == 0 and time.perf_counter() >= next_progress:
            next_progress = time.perf_counter() + PROGRESS_EVERY_S
            summary.advertisements = count
            summary.wall_time_s = time.perf_counter() - started
            progress(summary, bytes_read)
    summary.advertisements = count
    summary.matched = pipeline.stats()["matched"]
    if count:
        emit(pipeline.shutdown(last_ts))
        summary.last_ts = last_ts
    summary.events = seq
    summary.wall_time_s = time.perf_counter() - started
    return summary


def _progress_printer(total_bytes: int, stream: IO[str]) -> Callable[[ReplaySummary, int], None]:
    def show(summary: ReplaySummary, bytes_read: int) -> None:
        done = bytes_read / total_bytes if total_bytes else 0.0
        stream.write(
            f"\rreplaying: {done:6.1%}  {summary.advertisements:,} advertisements  "
            f"{summary.rate:,.0f}/s"
        )
        stream.flush()

    return show


def run(args: argparse.Namespace) -> int:
    """Replay a trace file; print the summary; exit 0 (malformed lines are not errors)."""
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
                             progress=progress)
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
