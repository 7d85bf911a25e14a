"""The replay engine: a trace through the daemon's pipeline on the trace's own clock.

The same resolver -> tracker path as the daemon (``hallway.pipeline.Pipeline``), on a virtual
clock that follows the trace's ``ts``: the pipeline is ticked at every whole second of trace
time, as the daemon ticks it every second of wall time. As fast as the machine allows, or paced
to the trace (``realtime``). Events are written one per line, ``seq`` from 1; when the trace
ends everyone still present departs with reason ``shutdown``, as when the daemon stops.
Malformed lines are counted, the first few reported, never fatal.

The work is split in two halves that speak in ``Batch``es of typed items (``ClockMark``: the
clock moved; ``Seen``: a resolved advertisement): the reader parses and resolves (the trace's
time alone drives the resolver), the tracker ticks, tracks and writes. With
``reader_process`` the reader runs in a forked child process on the other core and the batches
come over a pipe: the same components in the same order, so the events are byte for byte
those of one process, in about two thirds of the time. ``hallway replay`` is the command.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, cast

from hallway import codec
from hallway.config import Config
from hallway.errors import SourceError
from hallway.events import event_json
from hallway.identity.resolver import Resolver
from hallway.models import Contact, KeyKind, PresenceEvent, Sighting
from hallway.pipeline import Pipeline
from hallway.proximity.receiver import ReceiverMonitor
from hallway.proximity.references import badge_contacts
from hallway.trace import TraceLineError, TraceParser

MAX_REPORTED_BAD_LINES = 10
PROGRESS_EVERY_S = 0.5


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
    radio: str = ""  # what the tracker learned of the receiver and the venue's path loss

    @property
    def rate(self) -> float:
        """Advertisements per second of wall time."""
        return self.advertisements / self.wall_time_s if self.wall_time_s > 0 else 0.0


_KINDS = tuple(KeyKind)
_KIND_INDEX = {kind: n for n, kind in enumerate(_KINDS)}
_BATCH_ADVERTISEMENTS = 4096


class ClockMark(NamedTuple):
    """The trace's clock reached ``ts`` (its first advertisement, or a new whole second): the
    tracker is ticked up to it. ``receiver``: at a new second, the receiver's counters as the
    reader has them from every advertisement, strangers' too (``ReceiverMonitor.snapshot``)."""

    ts: float
    receiver: tuple[float, ...] | None = None


class Seen(NamedTuple):
    """A resolved advertisement: a ``Sighting`` as it crosses the pipe (the key kind as its
    index in ``KeyKind``, so a batch pickles as tuples)."""

    ts: float
    contact_id: str
    kind: int
    rssi: int
    measured_power: int | None
    scanner: str



class Batch(NamedTuple):
    """A stretch of the trace, parsed and resolved by the reader."""

    items: list[ClockMark | Seen]
    advertisements: int  # valid advertisements so far
    bytes_read: int
    malformed: int  # malformed lines in this stretch
    bad_lines: list[tuple[int, str]]  # the first few of them overall
    last_ts: float


def _tick_times(next_tick: float, ts: float, longest: float) -> Iterator[float]:
    """The whole seconds to tick at before an advertisement at ``ts`` (none before
    ``next_tick``); over a long hole in the trace, only until every silence has played out."""
    if ts - next_tick > longest:
        stop = next_tick + longest
        while next_tick < stop:
            yield next_tick
            next_tick += 1.0
        next_tick = float(math.floor(ts))
    while ts >= next_tick:
        yield next_tick
        next_tick += 1.0


def _read(lines: Iterable[bytes], contacts: list[Contact], config: Config,
          longest: float) -> Iterator[Batch]:
    """Parse and resolve the trace: the reader's half of a replay (no tracker state)."""
    resolver = Resolver(config.identity)
    receiver = ReceiverMonitor()  # every advertisement's time, strangers' too: counters only
    heard = receiver.heard
    resolve = resolver.resolve
    maintain = resolver.maintain
    parse = TraceParser().parse
    kind_index = _KIND_INDEX
    items: list[ClockMark | Seen] = []
    bad_lines: list[tuple[int, str]] = []
    malformed = reported = count = bytes_read = 0
    next_tick = -math.inf
    last_ts = -math.inf
    flush_at = _BATCH_ADVERTISEMENTS
    for number, line in enumerate(lines, start=1):
        bytes_read += len(line)
        try:
            adv = parse(line)
        except TraceLineError as exc:
            if not line.strip():
                continue
            malformed += 1
            if reported < MAX_REPORTED_BAD_LINES:
                reported += 1
                bad_lines.append((number, str(exc)))
            continue
        ts = adv.ts
        if count == 0:
            resolver.set_contacts([c for c in contacts if c.active(ts)], now=ts)
            next_tick = math.floor(ts) + 1.0
            items.append(ClockMark(ts))
        count += 1
        last_ts = max(last_ts, ts)
        heard(ts)
        if ts >= next_tick:
            for t in _tick_times(next_tick, ts, longest):
                maintain(t)
            next_tick = float(math.floor(ts)) + 1.0
            items.append(ClockMark(ts, receiver.snapshot()))
        match = resolve(adv)
        if match is not None:
            items.append(Seen(ts, match.contact_id, kind_index[match.via], adv.rssi,
                              match.measured_power, adv.scanner))
        if count >= flush_at:
            flush_at = count + _BATCH_ADVERTISEMENTS
            yield Batch(items, count, bytes_read, malformed, bad_lines, last_ts)
            items, bad_lines, malformed = [], [], 0
    yield Batch(items, count, bytes_read, malformed, bad_lines, last_ts)


def _reader_process(lines: Iterable[bytes], contacts: list[Contact], config: Config,
                    longest: float) -> Iterator[Batch]:
    """``_read`` in a forked child process (the other core parses and resolves while this one
    tracks); the batches come back over a pipe."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child() -> None:
        receive.close()
        try:
            for batch in _read(lines, contacts, config, longest):
                send.send(batch)
            send.send(None)
        except Exception as exc:  # noqa: BLE001 - the parent reports it; no traceback here
            send.send(f"{type(exc).__name__}: {exc}")
        finally:
            send.close()

    process = context.Process(target=child, name="hallway-replay-reader", daemon=True)
    process.start()
    send.close()
    try:
        while True:
            try:
                batch = receive.recv()
            except EOFError:
                process.join()
                raise SourceError(
                    f"the trace reader process ended early (exit code {process.exitcode})"
                ) from None
            if batch is None:
                break
            if isinstance(batch, str):
                raise SourceError(f"reading the trace failed: {batch}")
            yield batch
    finally:
        receive.close()
        if process.is_alive():
            process.terminate()
        process.join()


def _pace(trace_elapsed: float, wall_zero: float) -> None:
    """Sleep until ``trace_elapsed`` seconds of wall time have passed since ``wall_zero``."""
    ahead = trace_elapsed - (time.monotonic() - wall_zero)
    if ahead > 0.005:
        time.sleep(ahead)


def replay(
    lines: Iterable[bytes],
    contacts: list[Contact],
    config: Config,
    write: Callable[[str], object],
    *,
    realtime: bool = False,
    progress: Callable[[ReplaySummary, int], None] | None = None,
    reader_process: bool = False,
) -> ReplaySummary:
    """Feed trace lines through the pipeline on the trace's clock; write event lines.

    The reader (parse, resolve) and the tracker are the daemon's; with ``reader_process``
    the reader runs in a child process, with the same results.
    """
    pipeline = Pipeline(config, resolving=False)
    scanner = config.scanner.name
    summary = ReplaySummary()
    seq = 0
    contact_of = pipeline.contact
    dumps = codec.encode

    def emit(events: list[PresenceEvent]) -> None:
        nonlocal seq
        for event in events:
            seq += 1
            obj = event_json(event, seq=seq, scanner=scanner, contact=contact_of(event.contact_id))
            write(dumps(obj) + "\n")

    sighted = pipeline.sighted
    receiver_state = pipeline.tracker.heard_elsewhere
    tick = pipeline.tick
    kinds = _KINDS
    longest = pipeline.tracker.longest_silence_s + 2.0
    read = _reader_process if reader_process else _read
    next_tick = math.inf
    started = time.perf_counter()
    wall_zero = trace_zero = 0.0
    last_ts: float | None = None
    next_progress = started + PROGRESS_EVERY_S
    # Reference beacons named by badge are resolved by the reader like contacts (never shown).
    resolvable = [*contacts, *badge_contacts(config.proximity.reference)]
    for batch in read(lines, resolvable, config, longest):
        for item in batch.items:
            ts = item[0]
            if summary.first_ts is None:
                summary.first_ts = ts
                emit(pipeline.load_contacts(contacts, now=ts))
                next_tick = math.floor(ts) + 1.0
                wall_zero = time.monotonic()
                trace_zero = ts
            if ts >= next_tick:
                for t in _tick_times(next_tick, ts, longest):
                    emit(tick(t))
                next_tick = float(math.floor(ts)) + 1.0
            if realtime:
                _pace(ts - trace_zero, wall_zero)
            if type(item) is ClockMark:
                counters = item.receiver
                if counters is not None:
                    receiver_state(counters)
                continue
            seen = cast(Seen, item)
            events = sighted(Sighting(ts, seen.contact_id, kinds[seen.kind], seen.rssi,
                                      seen.measured_power, seen.scanner))
            if events:
                emit(events)
        summary.advertisements = batch.advertisements
        summary.malformed += batch.malformed
        summary.bad_lines.extend(batch.bad_lines)
        if batch.advertisements:
            last_ts = batch.last_ts
        if progress is not None and time.perf_counter() >= next_progress:
            next_progress = time.perf_counter() + PROGRESS_EVERY_S
            summary.wall_time_s = time.perf_counter() - started
            progress(summary, batch.bytes_read)
    summary.matched = pipeline.stats()["matched"]
    if last_ts is not None:
        if realtime:
            _pace(last_ts - trace_zero, wall_zero)
        emit(pipeline.shutdown(last_ts))
        summary.last_ts = last_ts
    summary.events = seq
    summary.wall_time_s = time.perf_counter() - started
    tracker = pipeline.tracker
    receiver = tracker.receiver_status()
    summary.radio = (
        f"listening {receiver['listening_share']}, lossy {receiver['lossy']}, reception rule "
        f"{receiver['reception_rule']}"
    )
    if last_ts is not None:
        fit = tracker.calibration_status(last_ts)
        summary.radio += (
            f"; calibration {fit['state']}: exponent {fit['path_loss_exponent']}, receive "
            f"offset {fit['receive_offset_db']} dB, confidence {fit['confidence']}"
        )
    return summary
