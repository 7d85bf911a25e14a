#!/usr/bin/env python3
"""Proximity accuracy: hallway's tracker against two naive references, on simulated venues.

For each scenario: ``hallway simulate`` writes contacts, trace and truth; the contacts are
imported into a fresh database; ``hallway replay`` runs the trace through the daemon's own
pipeline (with the venue's ``venue.toml``: its path-loss exponent, as a site survey would give
it) and writes the events. The same trace is resolved once more here and fed to two reference
trackers, which get the same distance model and radius:

- ``fixed-120``: present while anything was heard in the last 120 s (no distance limit, as
  Theengs Gateway does); zone from the last raw RSSI.
- ``median-30``: the median RSSI of the last 15 s, turned into a distance; present while that
  distance is within the presence radius R and something was heard in the last 30 s (as an
  ESPresense-like tracker does); zone from the median.

Two more columns say where the radio model's floor lies (they are not held to the targets):

- ``hallway+cal``: hallway again, with every contact's ``calibration_db`` set to its device's
  true offset from the simulator's truth, as a venue that measured each phone at 1 m would.
- ``oracle-10``: not a tracker but a rough floor: the median of the truly calibrated levels
  over ±10 s around each second (it sees 10 s ahead), present while that is within R, held
  over silences of up to 30 s.

Scores (times in trace seconds, one sample per second, per contact):

- scope: the seconds a contact is in the venue (within radio reach) or reported present; the
  rest (not there, not claimed) is right by any tracker and left out.
- presence accuracy/error: reported == truth, excluding ±10 s around each true transition.
- ghost: the fraction of truly absent seconds reported present (same exclusion).
- missed: the fraction of truly present seconds reported absent (same exclusion).
- false departures per present contact-hour: a departure while truly present, not within
  ±10 s of a true transition (the end of the trace is not a departure).
- arrival latency p50/p95: true entry after ≥ 30 s absent -> first reported present (0 if it
  already was); entries never reported before the contact left again are counted as missed.
- departure latency p50/p95: true exit followed by ≥ 30 s absent -> first reported absent;
  if that never happens before the next entry or the end, the time until then (censored).
- zone exact / within one band: while both truly and reportedly present.
- where the truth is clear (NOTES.md): missed while clearly inside (≤ R/1.5), ghost while
  clearly outside (≥ 1.5 R, or gone from the venue for up to 10 minutes), and false
  departures while clearly inside (the same ±10 s exclusion).

- balanced accuracy: the mean of the share of truly present seconds reported present and of
  truly absent seconds reported absent (same exclusion), i.e. 1 - (ghost + missed) / 2.

The scenarios are the original three and the harder ones (``hallway.simulator.scenarios``:
listening windows, Wi-Fi losses, collisions with capture, fading, the wide spread of real
phones' powers, 2.5-3 m radii).

The check-in venue (``--checkin``): the booth where half the phones are iPhones with the app in
the background, which only check in over GATT (``checkin-booth``). It runs the daemon's own
pipeline in this process on the merged stream of advertisements and check-ins (a check-in is a
write to the scanner, not a line of the trace), ticked at every whole second like ``hallway
replay``, and scores hallway separately on the check-in phones and on the advertising phones;
the target is check-in phones' accuracy within 5 points of advertising phones'.

Usage: bench/accuracy.py [--scenarios booth,keynote,...] [--seed 7] [--duration S]
                         [--workdir DIR] [--checkin] [--checkin-duration SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from hallway.config import Config, load_config  # noqa: E402
from hallway.identity.resolver import Resolver  # noqa: E402
from hallway.models import Contact, KeyKind  # noqa: E402
from hallway.trace import TraceLineError, TraceParser  # noqa: E402

GRACE_S = 10
ABSENT_BEFORE_S = 30
GONE_GHOST_WINDOW_S = 600
ZONES = ("immediate", "near", "far")
TRACKERS = ("hallway", "fixed-120", "median-30", "hallway+cal", "oracle-10")
ORACLE_WINDOW_S = 10.0
ORACLE_HOLD_S = 30.0
DEFAULT_SCENARIOS = ("booth", "keynote", "corridor", "pocket-desk", "lossy-booth",
                     "crowd-keynote", "pi-corridor")


# -- per-second timelines ---------------------------------------------------------------------


@dataclass
class Timeline:
    """A tracker's view of one contact: present or not, and the zone index, each second."""

    present: list[bool]
    zone: list[int]
    departures: list[int] = field(default_factory=list)  # seconds at which it departed


def _zone_index(distance: float, config: Config) -> int:
    if distance < config.proximity.immediate_m:
        return 0
    if distance < config.proximity.near_m:
        return 1
    return 2


def hallway_timelines(events_path: Path, start: float, seconds: int) -> dict[str, Timeline]:
    """Timelines from SPEC §5 events (present from ``arrived`` to ``departed``)."""
    rows: dict[str, list[dict[str, object]]] = {}
    with events_path.open(encoding="utf-8") as handle:
        for line in handle:
            event = json.loads(line)
            contact = event["contact"]["id"]
            rows.setdefault(contact, []).append(event)
    out = {}
    for contact, events in rows.items():
        present = [False] * seconds
        zone = [2] * seconds
        departures = []
        since: int | None = None
        current = 2
        for event in events:
            k = max(0, math.ceil(float(event["ts"]) - start))  # type: ignore[arg-type]
            if event["type"] == "arrived":
                since = k
                current = ZONES.index(str(event["zone"]))
            elif since is not None:
                for s in range(since, min(k, seconds)):
                    present[s] = True
                    zone[s] = current
                since = k
                if event["type"] == "zone":
                    current = ZONES.index(str(event["zone"]))
                else:
                    since = None
                    if event["reason"] != "shutdown":
                        departures.append(k)
        if since is not None:
            for s in range(since, seconds):
                present[s] = True
                zone[s] = current
        out[contact] = Timeline(present, zone, departures)
    return out


Sightings = dict[str, list[tuple[float, int, float]]]  # contact -> (ts, rssi, 1 m power)


def resolve_trace(trace: Path, contacts: list[Contact], config: Config) -> Sightings:
    """Every matched advertisement of the trace, per contact, for the references."""
    resolver = Resolver(config.identity)
    parser = TraceParser()
    powers = {
        kind: float(config.proximity.measured_power_dbm.get(
            kind.value, config.proximity.default_measured_power_dbm))
        for kind in KeyKind
    }
    calibration = {c.id: c.calibration_db for c in contacts}
    out: Sightings = {}
    loaded = False
    with trace.open("rb") as handle:
        for line in handle:
            try:
                adv = parser.parse(line)
            except TraceLineError:
                continue
            if not loaded:
                resolver.set_contacts([c for c in contacts if c.active(adv.ts)], now=adv.ts)
                loaded = True
            match = resolver.resolve(adv)
            if match is None or adv.rssi <= -127:
                continue
            power = powers[match.via] if match.measured_power is None else match.measured_power
            power += calibration.get(match.contact_id, 0.0)
            out.setdefault(match.contact_id, []).append((adv.ts, adv.rssi, power))
    return out


def _distance(rssi: float, power: float, exponent: float) -> float:
    return float(10.0 ** ((power - rssi) / (10.0 * exponent)))


def fixed120_timelines(sightings: Sightings, start: float, seconds: int,
                       config: Config) -> dict[str, Timeline]:
    """Present while anything was heard in the last 120 s; zone from the last raw RSSI."""
    exponent = config.proximity.path_loss_exponent
    out = {}
    for contact, rows in sightings.items():
        present = [False] * seconds
        zone = [2] * seconds
        index = 0
        last: tuple[float, int, float] | None = None
        for k in range(seconds):
            t = start + k
            while index < len(rows) and rows[index][0] <= t:
                last = rows[index]
                index += 1
            if last is not None and t - last[0] <= 120.0:
                present[k] = True
                zone[k] = _zone_index(_distance(last[1], last[2], exponent), config)
        out[contact] = Timeline(present, zone, _departures(present))
    return out


def median30_timelines(sightings: Sightings, start: float, seconds: int,
                       config: Config) -> dict[str, Timeline]:
    """Median RSSI over 15 s -> distance; present while within R and heard in the last 30 s."""
    exponent = config.proximity.path_loss_exponent
    radius = config.proximity.presence_radius_m
    out = {}
    for contact, rows in sightings.items():
        present = [False] * seconds
        zone = [2] * seconds
        window: deque[tuple[float, float]] = deque()
        index = 0
        last_ts = -math.inf
        distance = math.inf
        for k in range(seconds):
            t = start + k
            while index < len(rows) and rows[index][0] <= t:
                ts, rssi, power = rows[index]
                window.append((ts, rssi - power))
                last_ts = ts
                index += 1
            while window and window[0][0] <= t - 15.0:
                window.popleft()
            if window:
                level = statistics.median(v for _, v in window)
                distance = _distance(level, 0.0, exponent)
            if t - last_ts <= 30.0 and distance <= radius:
                present[k] = True
                zone[k] = _zone_index(distance, config)
        out[contact] = Timeline(present, zone, _departures(present))
    return out


def oracle_timelines(sightings: Sightings, start: float, seconds: int, config: Config,
                     offsets: dict[str, float]) -> dict[str, Timeline]:
    """Median of the truly calibrated levels over ±10 s (non-causal); present while within R,
    held over silences of up to 30 s."""
    exponent = config.proximity.path_loss_exponent
    radius_level = -10.0 * exponent * math.log10(config.proximity.presence_radius_m)
    out = {}
    for contact, rows in sightings.items():
        times = [ts for ts, _, _ in rows]
        offset = offsets.get(contact, 0.0)
        levels = [rssi - power - offset for _, rssi, power in rows]
        present = [False] * seconds
        zone = [2] * seconds
        for k in range(seconds):
            t = start + k
            low = bisect.bisect_left(times, t - ORACLE_WINDOW_S)
            high = bisect.bisect_right(times, t + ORACLE_WINDOW_S)
            if low == high:
                if k and present[k - 1] and low and t - times[low - 1] <= ORACLE_HOLD_S:
                    present[k] = True
                    zone[k] = zone[k - 1]
                continue
            level = statistics.median(levels[low:high])
            if level >= radius_level:
                present[k] = True
                zone[k] = _zone_index(_distance(level, 0.0, exponent), config)
        out[contact] = Timeline(present, zone, _departures(present))
    return out


def _departures(present: Sequence[bool]) -> list[int]:
    return [k for k in range(1, len(present)) if present[k - 1] and not present[k]]


# -- truth --------------------------------------------------------------------------------------


@dataclass
class Truth:
    """One contact's ground truth, per second."""

    present: list[bool]
    distance: list[float | None]
    intervals: list[tuple[float, float]]
    grace: list[bool]  # within ±GRACE_S of a true transition


def load_truth(path: Path, start: float, seconds: int) -> dict[str, Truth]:
    """truth.jsonl -> per-contact per-second truth."""
    out = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            present = [False] * seconds
            grace = [False] * seconds
            intervals = [(float(a), float(b)) for a, b in row["present"]]
            for a, b in intervals:
                for k in range(max(0, math.ceil(a - start)), min(seconds, math.ceil(b - start))):
                    present[k] = True
                for edge in (a, b):
                    centre = edge - start
                    low = max(0, math.ceil(centre - GRACE_S))
                    for k in range(low, min(seconds, math.floor(centre + GRACE_S) + 1)):
                        grace[k] = True
            out[row["id"]] = Truth(present, row["distance_m"][:seconds], intervals, grace)
    return out


# -- scores -------------------------------------------------------------------------------------


@dataclass
class Score:
    """The figures of one tracker on one scenario."""

    scored_s: int = 0
    correct_s: int = 0
    absent_s: int = 0
    ghost_s: int = 0
    true_s: int = 0
    missed_s: int = 0
    present_hours: float = 0.0
    false_departures: int = 0
    arrivals: list[float] = field(default_factory=list)
    arrivals_missed: int = 0
    departures: list[float] = field(default_factory=list)
    zone_s: int = 0
    zone_exact_s: int = 0
    zone_within_s: int = 0
    clear_in_s: int = 0
    clear_in_missed_s: int = 0
    clear_out_s: int = 0
    clear_out_ghost_s: int = 0
    clear_false_departures: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct_s / self.scored_s if self.scored_s else 1.0

    @property
    def ghost(self) -> float:
        return self.ghost_s / self.absent_s if self.absent_s else 0.0

    @property
    def balanced(self) -> float:
        """Mean of the share of present time reported present and of absent time reported
        absent (the same exclusion as accuracy)."""
        return 1.0 - (self.ghost + self.missed) / 2.0

    @property
    def clear_missed(self) -> float:
        return self.clear_in_missed_s / self.clear_in_s if self.clear_in_s else 0.0

    @property
    def clear_ghost(self) -> float:
        return self.clear_out_ghost_s / self.clear_out_s if self.clear_out_s else 0.0

    @property
    def clear_false_departures_per_hour(self) -> float:
        hours = self.clear_in_s / 3600
        return self.clear_false_departures / hours if hours else 0.0

    @property
    def missed(self) -> float:
        return self.missed_s / self.true_s if self.true_s else 0.0

    @property
    def false_departures_per_hour(self) -> float:
        return self.false_departures / self.present_hours if self.present_hours else 0.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def score(truths: dict[str, Truth], timelines: dict[str, Timeline], *, seconds: int,
          start: float, radius: float, config: Config) -> Score:
    """Score one tracker's timelines against the truth."""
    result = Score()
    nobody = Timeline([False] * seconds, [2] * seconds)
    clear_in = radius / 1.5
    clear_out = radius * 1.5
    for contact, truth in truths.items():
        seen = timelines.get(contact, nobody)
        last_in_venue = -math.inf
        for k in range(seconds):
            distance = truth.distance[k]
            if distance is not None:
                last_in_venue = k
            reported = seen.present[k]
            actual = truth.present[k]
            if actual:
                result.present_hours += 1 / 3600
            recently_gone = k - last_in_venue <= GONE_GHOST_WINDOW_S
            if distance is None and not reported:
                if recently_gone and not truth.grace[k]:
                    result.clear_out_s += 1
                continue
            if truth.grace[k]:
                pass
            elif distance is not None and distance <= clear_in and actual:
                result.clear_in_s += 1
                result.clear_in_missed_s += not reported
            elif (distance is not None and distance >= clear_out) or (
                distance is None and recently_gone
            ):
                result.clear_out_s += 1
                result.clear_out_ghost_s += reported
            if actual and reported:
                result.zone_s += 1
                want = _zone_index(distance if distance is not None else math.inf, config)
                got = seen.zone[k]
                result.zone_exact_s += got == want
                result.zone_within_s += abs(got - want) <= 1
            if truth.grace[k]:
                continue
            result.scored_s += 1
            result.correct_s += reported == actual
            result.absent_s += not actual
            result.ghost_s += reported and not actual
            result.true_s += actual
            result.missed_s += actual and not reported
        for k in seen.departures:
            if 0 <= k < seconds and truth.present[k] and not truth.grace[k]:
                result.false_departures += 1
                distance = truth.distance[k]
                if distance is not None and distance <= clear_in:
                    result.clear_false_departures += 1
        _latencies(truth, seen, seconds, start, result)
    return result


def _latencies(truth: Truth, seen: Timeline, seconds: int, start: float, result: Score) -> None:
    intervals = truth.intervals
    for n, (a, b) in enumerate(intervals):
        previous_end = intervals[n - 1][1] if n else -math.inf
        if a - previous_end >= ABSENT_BEFORE_S and a - start >= ABSENT_BEFORE_S:
            first = max(0, math.ceil(a - start))
            last = min(seconds - 1, math.ceil(b - start))
            hit = next((k for k in range(first, last + 1) if seen.present[k]), None)
            if hit is None:
                result.arrivals_missed += 1
            else:
                result.arrivals.append(max(0.0, hit - (a - start)))
        next_start = intervals[n + 1][0] if n + 1 < len(intervals) else math.inf
        if next_start - b >= ABSENT_BEFORE_S and start + seconds - b >= ABSENT_BEFORE_S:
            first = max(0, math.ceil(b - start))
            limit = min(seconds - 1, math.floor(min(next_start, start + seconds) - start))
            hit = next((k for k in range(first, limit + 1) if not seen.present[k]), limit)
            result.departures.append(max(0.0, hit - (b - start)))


# -- running ------------------------------------------------------------------------------------


def _hallway(*args: str) -> str:
    command = [sys.executable, "-m", "hallway", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def _summary_value(text: str, key: str) -> str:
    for line in text.splitlines():
        if line.startswith(f"{key}:"):
            return line.split(":", 1)[1].strip()
    return "?"


async def _store(db: Path, contacts: list[Contact], *,
                 lines: list[int] | None = None) -> list[Contact]:
    """Import ``contacts`` into ``db`` (created if need be); the contacts as stored."""
    from hallway.store import SqliteStore

    store = await SqliteStore.open(db)
    try:
        await store.import_contacts(contacts, lines=lines)
        return await store.list_contacts()
    finally:
        await store.close()


async def _import(db: Path, text: str, file: str) -> list[Contact]:
    from hallway.contacts_io import parse_contacts

    contacts, lines = parse_contacts(text, file=file)
    return await _store(db, contacts, lines=lines)


@dataclass
class Outcome:
    """One scenario's results."""

    scenario: str
    scores: dict[str, Score]
    replay_rate: str
    advertisements: str
    contacts: int
    radio: str = ""


def run_scenario(name: str, seed: int, workdir: Path, *, duration: float | None = None,
                 simulate: Sequence[str] = (), exponent: float | None = None,
                 label: str | None = None) -> Outcome:
    """Simulate, replay and score one scenario (``simulate``: more simulate options;
    ``exponent``: the path-loss exponent venue.toml says, instead of the scenario's)."""
    label = label or name
    out = workdir / label
    print(f"[{label}] simulating (seed {seed}) ...", file=sys.stderr, flush=True)
    extra = () if duration is None else ("--duration", str(duration))
    _hallway("simulate", "--scenario", name, "--seed", str(seed), "--out", str(out), *extra,
             *simulate)
    if exponent is not None:
        venue = out / "venue.toml"
        lines = venue.read_text(encoding="utf-8").splitlines()
        venue.write_text("\n".join(
            f"path_loss_exponent = {exponent}" if line.startswith("path_loss_exponent") else line
            for line in lines) + "\n", encoding="utf-8")
    db = out / "hallway.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    contacts_file = out / "contacts.jsonl"
    contacts = asyncio.run(_import(db, contacts_file.read_text(encoding="utf-8"),
                                   str(contacts_file)))
    offsets = {
        row["id"]: float(row["offset_db"])
        for row in map(json.loads, (out / "truth.jsonl").read_text().splitlines())
    }
    calibrated_db = out / "hallway-cal.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{calibrated_db}{suffix}").unlink(missing_ok=True)
    asyncio.run(_store(calibrated_db, [
        dataclasses.replace(c, calibration_db=offsets.get(c.id, 0.0)) for c in contacts
    ]))
    print(f"[{label}] replaying ...", file=sys.stderr, flush=True)
    summary = _hallway("replay", str(out / "trace.jsonl"), "--db", str(db), "--config",
                       str(out / "venue.toml"), "--out", str(out / "events.jsonl"))
    _hallway("replay", str(out / "trace.jsonl"), "--db", str(calibrated_db), "--config",
             str(out / "venue.toml"), "--out", str(out / "events-cal.jsonl"))
    config = load_config(out / "venue.toml")
    first = json.loads((out / "truth.jsonl").open(encoding="utf-8").readline())
    start = float(first["start_ts"])
    seconds = len(first["distance_m"])
    radius = float(first["radius_m"])
    print(f"[{label}] scoring ...", file=sys.stderr, flush=True)
    truths = load_truth(out / "truth.jsonl", start, seconds)
    sightings = resolve_trace(out / "trace.jsonl", contacts, config)
    timelines = {
        "hallway": hallway_timelines(out / "events.jsonl", start, seconds),
        "fixed-120": fixed120_timelines(sightings, start, seconds, config),
        "median-30": median30_timelines(sightings, start, seconds, config),
        "hallway+cal": hallway_timelines(out / "events-cal.jsonl", start, seconds),
        "oracle-10": oracle_timelines(sightings, start, seconds, config, offsets),
    }
    scores = {
        tracker: score(truths, timelines[tracker], seconds=seconds, start=start, radius=radius,
                       config=config)
        for tracker in TRACKERS
    }
    return Outcome(label, scores, _summary_value(summary, "advertisements_per_s"),
                   _summary_value(summary, "advertisements"), len(contacts),
                   _summary_value(summary, "radio"))


def _fmt(value: float, kind: str) -> str:
    if math.isnan(value):
        return "-"
    if kind == "%":
        return f"{100 * value:.1f} %"
    if kind == "s":
        return f"{value:.0f} s"
    return f"{value:.2f}"


def print_table(outcome: Outcome) -> None:
    """The side-by-side table of one scenario."""
    s = outcome.scores
    rows: list[tuple[str, list[str]]] = [
        ("presence accuracy", [_fmt(s[t].accuracy, "%") for t in TRACKERS]),
        ("balanced accuracy", [_fmt(s[t].balanced, "%") for t in TRACKERS]),
        ("ghost fraction", [_fmt(s[t].ghost, "%") for t in TRACKERS]),
        ("missed fraction", [_fmt(s[t].missed, "%") for t in TRACKERS]),
        ("false departures / present h", [_fmt(s[t].false_departures_per_hour, "n")
                                          for t in TRACKERS]),
        ("arrival latency p50", [_fmt(_pct(s[t].arrivals, 0.5), "s") for t in TRACKERS]),
        ("arrival latency p95", [_fmt(_pct(s[t].arrivals, 0.95), "s") for t in TRACKERS]),
        ("arrivals never reported", [f"{s[t].arrivals_missed}/"
                                     f"{s[t].arrivals_missed + len(s[t].arrivals)}"
                                     for t in TRACKERS]),
        ("departure latency p50", [_fmt(_pct(s[t].departures, 0.5), "s") for t in TRACKERS]),
        ("departure latency p95", [_fmt(_pct(s[t].departures, 0.95), "s") for t in TRACKERS]),
        ("zone exact", [_fmt(s[t].zone_exact_s / max(1, s[t].zone_s), "%") for t in TRACKERS]),
        ("zone within one band", [_fmt(s[t].zone_within_s / max(1, s[t].zone_s), "%")
                                  for t in TRACKERS]),
        ("missed, clearly inside", [_fmt(s[t].clear_in_missed_s / max(1, s[t].clear_in_s), "%")
                                    for t in TRACKERS]),
        ("ghost, clearly outside", [_fmt(s[t].clear_out_ghost_s / max(1, s[t].clear_out_s), "%")
                                    for t in TRACKERS]),
        ("false departures, clearly inside", [str(s[t].clear_false_departures)
                                              for t in TRACKERS]),
        ("  per clearly-inside hour", [_fmt(s[t].clear_false_departures_per_hour, "n")
                                       for t in TRACKERS]),
    ]
    hours = s["hallway"].present_hours
    print(f"\n== {outcome.scenario}: {outcome.contacts} contacts, {outcome.advertisements} "
          f"advertisements, {hours:.1f} present contact-hours; replay "
          f"{outcome.replay_rate} adv/s")
    print(f"{'':34}" + "".join(f"{t:>14}" for t in TRACKERS))
    for label, cells in rows:
        print(f"{label:34}" + "".join(f"{c:>14}" for c in cells))


def print_summary(outcomes: list[Outcome]) -> None:
    """One line per scenario: balanced accuracy of every tracker and the clear-truth figures."""
    print("\nSummary (balanced accuracy; hallway's missed clearly inside, ghost clearly outside, "
          "false departures per clearly-inside hour, departure p50):")
    print(f"{'':16}" + "".join(f"{t:>13}" for t in TRACKERS)
          + f"{'missed':>9}{'ghost':>8}{'fd/h':>7}{'dep':>6}")
    for outcome in outcomes:
        s = outcome.scores
        ours = s["hallway"]
        print(f"{outcome.scenario:16}" + "".join(f"{_fmt(s[t].balanced, '%'):>13}"
                                                 for t in TRACKERS)
              + f"{100 * ours.clear_missed:8.1f}%{100 * ours.clear_ghost:7.1f}%"
              + f"{ours.clear_false_departures_per_hour:7.2f}"
              + f"{_pct(ours.departures, 0.5):5.0f}s")


CALIBRATION_EXPONENTS = (1.6, 2.0, 2.4, 3.0)
CALIBRATION_REFERENCES = "1.5,8"


def calibration_study(name: str, seed: int, workdir: Path, duration: float | None) -> None:
    """A venue whose true exponent is 1.6-3.0, configured with the scenario's own: with two
    reference beacons, against being configured with the true exponent, and with neither."""
    configured = _configured_exponent(name)
    print(f"\nSelf-calibration ({name}, configured exponent {configured}, references at "
          f"{CALIBRATION_REFERENCES} m): hallway's balanced accuracy / missed clearly inside / "
          "ghost clearly outside / false departures per clearly-inside hour")
    print(f"{'true n':>7}  {'configured true n':>34}  {'two references':>34}  "
          f"{'neither':>34}   fitted")
    for true_n in CALIBRATION_EXPONENTS:
        cells = []
        radio = ""
        for variant, simulate, exponent in (
            ("true", ("--true-exponent", str(true_n)), true_n),
            ("refs", ("--true-exponent", str(true_n), "--references", CALIBRATION_REFERENCES),
             None),
            ("none", ("--true-exponent", str(true_n)), None),
        ):
            outcome = run_scenario(name, seed, workdir, duration=duration, simulate=simulate,
                                   exponent=exponent, label=f"{name}-n{true_n}-{variant}")
            ours = outcome.scores["hallway"]
            cells.append(f"{100 * ours.balanced:5.1f} % / {100 * ours.clear_missed:4.1f} % / "
                         f"{100 * ours.clear_ghost:4.1f} % / "
                         f"{ours.clear_false_departures_per_hour:5.2f}")
            if variant == "refs":
                radio = outcome.radio.split("; ", 1)[-1]
        print(f"{true_n:7.1f}  " + "  ".join(f"{c:>34}" for c in cells) + f"   {radio}")


def _configured_exponent(name: str) -> float:
    from hallway.simulator import scenario

    return scenario(name).radio.path_loss_exponent


def check_targets(outcome: Outcome) -> list[str]:
    """The issue's targets against the references in the same run: one line each."""
    s = outcome.scores
    ours, med, fix = s["hallway"], s["median-30"], s["fixed-120"]
    lines = []

    def check(label: str, ok: bool, detail: str) -> None:
        lines.append(f"  [{'ok' if ok else 'MISS'}] {label}: {detail}")

    check("balanced accuracy >= median-30 + 0.10", ours.balanced >= med.balanced + 0.10,
          f"{100 * ours.balanced:.1f} % vs {100 * med.balanced:.1f} % "
          f"(fixed-120 {100 * fix.balanced:.1f} %)")
    check("missed <= 10 % of clearly-inside time", ours.clear_missed <= 0.10,
          f"{100 * ours.clear_missed:.1f} %")
    check("ghost <= 3 % of clearly-outside time", ours.clear_ghost <= 0.03,
          f"{100 * ours.clear_ghost:.1f} %")
    check("false departures <= 2 per clearly-present hour",
          ours.clear_false_departures_per_hour <= 2.0,
          f"{ours.clear_false_departures_per_hour:.2f}")
    p50 = _pct(ours.departures, 0.5)
    check("departure latency p50 <= 15 s", p50 <= 15.0, f"{p50:.0f} s")
    lines.append("  (the earlier targets, against the references:)")
    err, med_err = 1 - ours.accuracy, 1 - med.accuracy
    check("presence error <= 1/2 median-30", err <= med_err / 2,
          f"{100 * err:.2f} % vs {100 * med_err:.2f} % (limit {50 * med_err:.2f} %)")
    check("ghost <= 1/3 median-30", ours.ghost <= med.ghost / 3,
          f"{100 * ours.ghost:.2f} % vs {100 * med.ghost:.2f} % "
          f"(limit {100 * med.ghost / 3:.2f} %)")
    check("missed <= median-30", ours.missed <= med.missed,
          f"{100 * ours.missed:.2f} % vs {100 * med.missed:.2f} %")
    fd, med_fd = ours.false_departures_per_hour, med.false_departures_per_hour
    check("false departures/h <= 1/5 median-30", fd <= med_fd / 5,
          f"{fd:.2f} vs {med_fd:.2f} (limit {med_fd / 5:.2f})")
    dep, fix_dep = _pct(ours.departures, 0.5), _pct(fix.departures, 0.5)
    check("departure latency p50 <= 1/2 fixed-120", dep <= fix_dep / 2,
          f"{dep:.0f} s vs {fix_dep:.0f} s")
    within = ours.zone_within_s / max(1, ours.zone_s)
    check("zone within one band >= 99 %", within >= 0.99, f"{100 * within:.2f} %")
    for floor in ("hallway+cal", "oracle-10"):
        f = s[floor]
        lines.append(f"  [info] {floor}: error {100 * (1 - f.accuracy):.2f} %, ghost "
                     f"{100 * f.ghost:.2f} %, missed {100 * f.missed:.2f} %, false "
                     f"departures/h {f.false_departures_per_hour:.2f}")
    if outcome.scenario == "keynote":
        check("keynote presence accuracy >= 90 %", ours.accuracy >= 0.90,
              f"{100 * ours.accuracy:.2f} %")
    return lines


# -- the check-in venue ------------------------------------------------------------------------

CHECKIN_VENUE = "checkin-booth"
CHECKIN_DEVICES = frozenset({"hallway-checkin"})
ADVERTISING_PHONES = frozenset({"hallway-mfr", "hallway-mfr-bare", "hallway-uuid", "hallway-en",
                                "irk-phone"})


def run_checkin_venue(seed: int, workdir: Path, duration_s: float | None,
                      period_s: tuple[float, float] = (8.0, 12.0)) -> dict[str, Score]:
    """Simulate the check-in venue, run the pipeline on advertisements and check-ins, and
    score hallway on the check-in phones and on the advertising phones."""
    from hallway.config import parse_config
    from hallway.events import event_json
    from hallway.parsing.checkin import Refusal, parse_checkin
    from hallway.pipeline import Pipeline
    from hallway.simulator import Simulation

    out = workdir / CHECKIN_VENUE
    out.mkdir(parents=True, exist_ok=True)
    print(f"[{CHECKIN_VENUE}] simulating (seed {seed}) ...", file=sys.stderr, flush=True)
    sim = Simulation(CHECKIN_VENUE, seed=seed, start_ts=1_700_000_000.0, duration_s=duration_s)
    config = parse_config(sim.venue_config())
    pipeline = Pipeline(config)
    pipeline.load_contacts(sim.contacts, now=sim.start_ts)
    checkins = sim.checkins(period_s=period_s)
    power = config.checkin.measured_power_dbm
    events = []
    next_tick = math.floor(sim.start_ts) + 1.0
    refused = 0

    def tick_until(ts: float) -> None:
        nonlocal next_tick
        while ts >= next_tick:
            events.extend(pipeline.tick(next_tick))
            next_tick += 1.0

    pending = iter(checkins)
    upcoming = next(pending, None)
    print(f"[{CHECKIN_VENUE}] running the pipeline ({len(checkins)} check-ins) ...",
          file=sys.stderr, flush=True)
    for adv in sim.advertisements():
        while upcoming is not None and upcoming[0] <= adv.ts:
            tick_until(upcoming[0])
            frame = parse_checkin(upcoming[2])
            assert not isinstance(frame, Refusal)
            result = pipeline.checkin(frame, ts=upcoming[0], scanner="hci0", power_dbm=power)
            if isinstance(result, Refusal):
                refused += 1
            else:
                events.extend(result)
            upcoming = next(pending, None)
        tick_until(adv.ts)
        events.extend(pipeline.feed(adv))
    tick_until(sim.end_ts)
    assert refused == 0, f"{refused} simulated check-ins were refused"
    events_path = out / "events.jsonl"
    with events_path.open("w", encoding="utf-8") as handle:
        for seq, event in enumerate(events, start=1):
            handle.write(json.dumps(event_json(event, seq=seq, scanner="bench",
                                               contact=pipeline.contact(event.contact_id))) + "\n")
    truth_rows = sim.truth()
    truth_path = out / "truth.jsonl"
    truth_path.write_text("".join(json.dumps(row) + "\n" for row in truth_rows))
    seconds = len(truth_rows[0]["distance_m"])
    truths = load_truth(truth_path, sim.start_ts, seconds)
    timelines = hallway_timelines(events_path, sim.start_ts, seconds)
    device_of = {row["id"]: row["device"] for row in truth_rows}
    results = {}
    for label, kinds in (("check-in phones", CHECKIN_DEVICES),
                         ("advertising phones", ADVERTISING_PHONES)):
        subset = {cid: truth for cid, truth in truths.items() if device_of[cid] in kinds}
        results[label] = score(subset, timelines, seconds=seconds, start=sim.start_ts,
                               radius=sim.radius_m, config=config)
    carriers = sum(1 for e in events if e.carrier == "checkin")
    print(f"\n== {CHECKIN_VENUE} (seed {seed}, check-ins every {period_s[0]:g}-{period_s[1]:g} s):"
          f" {len(sim.contacts)} contacts "
          f"({sum(1 for d in device_of.values() if d in CHECKIN_DEVICES)} check in only), "
          f"{len(checkins)} check-ins, {len(events)} events ({carriers} from check-ins), "
          f"{sim.duration_s:.0f} s")
    labels = list(results)
    print(f"{'hallway on':34}" + "".join(f"{t:>20}" for t in labels))
    for name, fmt in (("presence accuracy", lambda r: _fmt(r.accuracy, "%")),
                      ("ghost fraction", lambda r: _fmt(r.ghost, "%")),
                      ("missed fraction", lambda r: _fmt(r.missed, "%")),
                      ("false departures / present h",
                       lambda r: _fmt(r.false_departures_per_hour, "n")),
                      ("arrival latency p50", lambda r: _fmt(_pct(r.arrivals, 0.5), "s")),
                      ("departure latency p50", lambda r: _fmt(_pct(r.departures, 0.5), "s")),
                      ("zone within one band",
                       lambda r: _fmt(r.zone_within_s / max(1, r.zone_s), "%")),
                      ("present contact-hours", lambda r: f"{r.present_hours:.1f}")):
        print(f"{name:34}" + "".join(f"{fmt(results[t]):>20}" for t in labels))
    gap = results["advertising phones"].accuracy - results["check-in phones"].accuracy
    ok = gap <= 0.05
    print(f"  [{'ok' if ok else 'MISS'}] check-in phones' accuracy within 5 points of "
          f"advertising phones': {100 * gap:+.1f} points behind")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--duration", type=float,
                        help="seconds of venue time per scenario (default: each one's own)")
    parser.add_argument("--calibration", metavar="SCENARIO", default="booth",
                        help="the scenario of the self-calibration study (default booth; "
                             "'none' to skip it)")
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: temporary)")
    parser.add_argument("--checkin", action="store_true",
                        help="run only the check-in venue (see the module docstring)")
    parser.add_argument("--checkin-duration", type=float, metavar="SECONDS",
                        help="length of the check-in venue run (default: the scenario's 3600)")
    parser.add_argument("--checkin-period", default="8,12", metavar="LOW,HIGH",
                        help="seconds between a background phone's check-ins, drawn uniformly "
                        "(default 8,12; the format allows up to 30)")
    args = parser.parse_args(argv)
    if args.checkin:
        low, high = (float(v) for v in args.checkin_period.split(","))
        with tempfile.TemporaryDirectory(prefix="hallway-accuracy-") as temp:
            workdir = args.workdir or Path(temp)
            run_checkin_venue(args.seed, workdir, args.checkin_duration, (low, high))
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hallway-accuracy-") as temp:
        workdir = args.workdir or Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        outcomes = [run_scenario(name, args.seed, workdir, duration=args.duration)
                    for name in args.scenarios.split(",")]
    for outcome in outcomes:
        print_table(outcome)
    print("\nTargets (hallway against the references in this run):")
    for outcome in outcomes:
        print(f" {outcome.scenario}:")
        for line in check_targets(outcome):
            print(line)
    print_summary(outcomes)
    if args.calibration != "none":
        with tempfile.TemporaryDirectory(prefix="hallway-accuracy-") as temp:
            calibration_study(args.calibration, args.seed, args.workdir or Path(temp),
                              args.duration)
    print(f"\n(bench wall time {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
